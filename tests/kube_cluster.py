"""A real Kubernetes control plane for the tests, on 127.0.0.1, made and torn down per session.

``scripts/kube-toolchain.sh`` builds the pieces from Go modules (pinned, cached):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok. ``KubeCluster.start``
runs them with certificates made for the run (a CA, the API server's serving certificate, a
client certificate per component and the admin's, the ServiceAccount signing key), waits for
``/readyz``, and adds what a cloud gives a cluster and a test machine cannot:

* nodes: kwok plays the kubelets of a few Node objects in two zones, some with GPUs
  (``nvidia.com/gpu`` capacity, the GKE accelerator label); the real scheduler places pods on
  them and kwok moves the pods to Running and Ready;
* storage: the controller manager's own host-path provisioner behind a default StorageClass
  (volumes are never mounted: no container runs);
* load balancers: a small loop that gives each ``LoadBalancer`` Service an ingress address,
  as a cloud's service controller does (nothing listens there, and nothing is sent to it).

Everything else is the real thing: authentication, RBAC, the TokenRequest API, admission
(Pod Security, ValidatingAdmissionPolicy), server-side apply and validation, the garbage
collector, the Deployment/StatefulSet/EndpointSlice controllers.

The toolchain: ``$SKYFORM_KUBE_BIN`` (set by scripts/check.sh), else the script's cache. A
missing toolchain is an error with the command that builds it, never a skip.
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
KUBE_BIN_ENV = "SKYFORM_KUBE_BIN"
SCRIPT = "scripts/kube-toolchain.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: The simulated nodes: (name, zone, GPUs).
NODES = (("kwok-a-cpu", "zone-a", 0), ("kwok-a-gpu", "zone-a", 4),
         ("kwok-b-cpu", "zone-b", 0), ("kwok-b-gpu", "zone-b", 4))
ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_RESOURCE = "nvidia.com/gpu"
#: What the load-balancer loop writes into a LoadBalancer Service's status (a documentation
#: address, RFC 5737: nothing is ever sent to it).
LB_INGRESS_IP = "192.0.2.10"
SERVICE_CIDR = "10.96.0.0/16"
STORAGE_CLASS = "standard"
#: Where the controller manager's host-path provisioner makes each volume's directory.
HOSTPATH_DIR = "/tmp/hostpath_pv"
#: How long the control plane may take to come up on a busy machine.
START_TIMEOUT = 300.0


class KubeToolchainMissing(RuntimeError):
    """The control plane's binaries are not built."""


def _how_to_build() -> str:
    return (f"build it with `bash {SCRIPT}` (a cold build takes 30-60 minutes on 2 cores; "
            f"then cached), and point ${KUBE_BIN_ENV} at the directory it prints; or leave "
            "these tests out with -m 'not kube'")


@functools.cache
def kube_toolchain_bin() -> Path:
    """The directory of the control plane's binaries: ``$SKYFORM_KUBE_BIN``, else the
    script's cache when it is complete (the script answers in well under a second then). It
    never starts a cold build from inside a test run: that is the script's job (and CI's,
    through scripts/check.sh)."""
    given = os.environ.get(KUBE_BIN_ENV)
    if given:
        path = Path(given)
    else:
        done = subprocess.run(["bash", str(ROOT / SCRIPT), "--cached"], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise KubeToolchainMissing(
                f"the Kubernetes control plane for the tests is not built: {_how_to_build()}\n"
                f"{done.stderr.strip()}")
        path = Path(done.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not (path / b).is_file()]
    if missing or not stages_file(path).is_file():
        raise KubeToolchainMissing(
            f"{path} lacks {', '.join(missing) or stages_file(path).name}: {_how_to_build()}")
    return path


def pinned_version(name: str) -> str:
    """A pin of scripts/kube-toolchain.sh (``KUBE_VERSION``, ``ETCD_VERSION``, ...)."""
    text = (ROOT / SCRIPT).read_text()
    match = re.search(rf'^{name}="([^"]+)"$', text, re.MULTILINE)
    if not match:
        raise ValueError(f"{SCRIPT} pins no {name}")
    return match.group(1)


def stages_file(bin_dir: Path) -> Path:
    """kwok's stages, which the script keeps next to the binaries."""
    return bin_dir.parent / "share" / "kwok-stages.yaml"


# --- certificates ---------------------------------------------------------------------------

def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _CA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> _CA:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skyform-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, common_name: str, *, groups: tuple[str, ...] = (), server: bool = False,
              ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()
              ) -> tuple[bytes, bytes]:
        """A leaf certificate and its key (PEM): a client's (CN = user, O = groups) or a
        server's (with the SANs)."""
        key = _key()
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                   *[x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]]
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(x509.Name(subject))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _pem_cert(builder.sign(self.key, hashes.SHA256())), _pem_key(key)


# --- processes ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kubeconfig(server: str, ca: bytes, user: dict[str, str], name: str = "skyform-test"
                ) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    })


def _cert_user(cert: bytes, key: bytes) -> dict[str, str]:
    return {"client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode()}


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class ApiError(AssertionError):
    """An API request the test expected to succeed did not."""


@dataclass
class KubeCluster:
    """A running control plane: the admin's HTTP client (``api``), its kubeconfig, and a
    way to mint a ServiceAccount's own kubeconfig (``service_account_kubeconfig``)."""

    bin_dir: Path
    dir: Path
    server: str = ""
    ca_pem: bytes = b""
    admin_kubeconfig: Path = Path()
    processes: list[_Process] = field(default_factory=list)
    _client: httpx.Client | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _loops: list[threading.Thread] = field(default_factory=list)
    loop_errors: list[str] = field(default_factory=list)

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start(cls, directory: Path) -> KubeCluster:
        cluster = cls(kube_toolchain_bin(), directory)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        d = self.dir
        pki = d / "pki"
        pki.mkdir(parents=True)
        ca = _CA.create()
        self.ca_pem = _pem_cert(ca.cert)
        (pki / "ca.crt").write_bytes(self.ca_pem)
        serving = ca.issue("kube-apiserver", server=True,
                           ips=("127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CIDR)
                                                      .hosts()))),
                           dns=("localhost", "kubernetes", "kubernetes.default",
                                "kubernetes.default.svc",
                                "kubernetes.default.svc.cluster.local"))
        (pki / "apiserver.crt").write_bytes(serving[0])
        (pki / "apiserver.key").write_bytes(serving[1])
        sa_key = _key()
        (pki / "sa.key").write_bytes(_pem_key(sa_key))
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for path in pki.iterdir():
            path.chmod(0o600)

        etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        kubeconfigs: dict[str, Path] = {}
        for user, groups in (("admin", ("system:masters",)),
                             ("system:kube-controller-manager", ()),
                             ("system:kube-scheduler", ()),
                             ("kwok", ("system:masters",))):
            cert, key = ca.issue(user, groups=groups)
            path = d / f"{user.rsplit(':', 1)[-1]}.kubeconfig"
            path.write_text(_kubeconfig(self.server, self.ca_pem, _cert_user(cert, key)))
            path.chmod(0o600)
            kubeconfigs[user] = path
        self.admin_kubeconfig = kubeconfigs["admin"]
        admin_cert, admin_key = d / "pki" / "admin.crt", d / "pki" / "admin.key"
        admin = yaml.safe_load(self.admin_kubeconfig.read_text())["users"][0]["user"]
        admin_cert.write_bytes(base64.b64decode(admin["client-certificate-data"]))
        admin_key.write_bytes(base64.b64decode(admin["client-key-data"]))
        admin_key.chmod(0o600)
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(admin_cert), str(admin_key))
        self._client = httpx.Client(base_url=self.server, verify=context, timeout=30.0)

        b = self.bin_dir
        self._spawn("etcd", [
            str(b / "etcd"), "--name", "skyform-test", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"skyform-test=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{_free_port()}",
            # A throw-away store on a shared disk: no fsync per write.
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._wait("etcd", lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health",
                                             timeout=5).json().get("health") == "true")
        self._spawn("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoints would name 127.0.0.1, which EndpointSlice
            # validation refuses (loopback): nothing in the tests reaches the API that way.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # The cluster allows privileged pods: refusing one is Pod Security admission's job
            # on the service's namespace (what the tests prove), not a cluster-wide switch.
            "--allow-privileged=true",
            "--profiling=false",
            # Who wrote what: the tests read it to see which identity made a change.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking",
        ])
        self._wait("kube-apiserver", lambda: self._client is not None
                   and self._client.get("/readyz").status_code == 200)
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            f"--authentication-kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            f"--authorization-kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-hostpath-provisioner=true",
            # kwok renews the nodes' Leases; on a busy machine a renewal can come late, and a
            # node marked NotReady would have its pods evicted mid-test.
            "--node-monitor-grace-period=2m",
        ])
        self._spawn("kube-scheduler", [
            str(b / "kube-scheduler"),
            f"--kubeconfig={kubeconfigs['system:kube-scheduler']}",
            f"--authentication-kubeconfig={kubeconfigs['system:kube-scheduler']}",
            f"--authorization-kubeconfig={kubeconfigs['system:kube-scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
            "--leader-elect=false",
            # A StatefulSet pod created while its claim is being bound can be found
            # unschedulable a moment before the bind, and the wake-up for the bind missed: it
            # then waits for the scheduler's periodic retry of unschedulable pods, 5 min by
            # default, as long as wait_for's whole timeout (a CI run lost "3 ready replicas"
            # so: the scheduler bound hello-ondemand-1 at 19:27:03, its claim at 19:21:50).
            "--pod-max-in-unschedulable-pods-duration=20s",
        ])
        self._spawn("kwok", [
            str(b / "kwok"), f"--kubeconfig={kubeconfigs['kwok']}",
            f"--config={stages_file(b)}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1", "--cidr=10.244.0.1/16",
            # Without it kwok keeps no node Lease, and the controller manager marks the nodes
            # NotReady once their status heartbeat (every ten minutes or so) is overdue.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{_free_port()}",
        ])
        # What the nodes and the storage class need: the default namespace's ServiceAccount
        # (the controller manager makes it), then the objects.
        self.api("POST", "/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"})
        for name, zone, gpus in NODES:
            self.api("POST", "/api/v1/nodes", _node(name, zone, gpus))
        self._wait("kwok nodes Ready", lambda: all(
            condition(self.api("GET", f"/api/v1/nodes/{n}"), "Ready") for n, _, _ in NODES))
        self._loop("load balancers", self._assign_load_balancers)

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def _audit_policy(self) -> Path:
        """Metadata (user, verb, object, response code) of every write; reads are left out."""
        path = self.dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "None", "verbs": ["get", "list", "watch"]},
                      {"level": "None", "resources": [
                          {"group": "coordination.k8s.io", "resources": ["leases"]},
                          {"group": "", "resources": ["events"]}]},
                      {"level": "Metadata"}],
        }))
        return path

    def audit_events(self, **match: str) -> list[dict[str, Any]]:
        """The audited writes whose fields match: ``user`` (the username), ``verb``,
        ``resource``, ``namespace``, ``name``."""
        out = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef", {})
            fields = {"user": event["user"].get("username", ""), "verb": event["verb"],
                      "resource": ref.get("resource", ""), "namespace": ref.get("namespace", ""),
                      "name": ref.get("name", "")}
            if all(fields[k] == v for k, v in match.items()):
                out.append(event)
        return out

    def stop(self) -> None:
        """Stop every process (newest first) and remove the cluster's directory."""
        self._stop.set()
        for thread in self._loops:
            thread.join(timeout=10)
        if self._client is not None:
            # The host-path provisioner's directories of volumes still bound (a test that
            # stopped before its destroy): they live outside the cluster's directory.
            try:
                volumes = self.api("GET", "/api/v1/persistentvolumes")["items"]
            except (httpx.HTTPError, ApiError, ValueError):
                volumes = []
            for volume in volumes:
                path = volume["spec"].get("hostPath", {}).get("path", "")
                if path.startswith(HOSTPATH_DIR + "/"):
                    shutil.rmtree(path, ignore_errors=True)
            self._client.close()
        for proc in reversed(self.processes):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(_Process(name, popen, log))

    def _check_alive(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{tail}")

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT
              ) -> None:
        """Poll ``ready`` until it holds (start-up only: the processes have no event to wait
        on), failing at once when a process died."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if ready():
                    return
            except (httpx.HTTPError, ApiError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s ({last}); logs in {self.dir}")

    def _loop(self, name: str, step: Callable[[], None]) -> None:
        def run() -> None:
            while not self._stop.wait(0.5):
                try:
                    step()
                except Exception as exc:  # reported by the tests' checks, not swallowed
                    self.loop_errors.append(f"{name}: {exc}")
                    if len(self.loop_errors) > 100:
                        del self.loop_errors[:50]

        thread = threading.Thread(target=run, name=f"kube-{name}", daemon=True)
        thread.start()
        self._loops.append(thread)

    def _assign_load_balancers(self) -> None:
        """What a cloud's service controller does: an address for each LoadBalancer
        Service that has none."""
        for svc in self.api("GET", "/api/v1/services")["items"]:
            if svc["spec"].get("type") != "LoadBalancer":
                continue
            if svc.get("status", {}).get("loadBalancer", {}).get("ingress"):
                continue
            meta = svc["metadata"]
            self.api("PATCH", f"/api/v1/namespaces/{meta['namespace']}/services/"
                     f"{meta['name']}/status",
                     {"status": {"loadBalancer": {"ingress": [{"ip": LB_INGRESS_IP}]}}},
                     content_type="application/merge-patch+json")

    # --- API ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", token: str | None = None
                ) -> httpx.Response:
        """One request as the admin (client certificate), or as the bearer of ``token``."""
        assert self._client is not None
        headers = {"Content-Type": content_type}
        if token is None:
            return self._client.request(method, path, headers=headers,
                                        content=None if body is None else json.dumps(body))
        # A token alone, without the admin's client certificate.
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        with httpx.Client(base_url=self.server, verify=context, timeout=30.0) as client:
            return client.request(method, path, content=None if body is None
                                  else json.dumps(body),
                                  headers={**headers, "Authorization": f"Bearer {token}"})

    def api(self, method: str, path: str, body: Any = None, *,
            content_type: str = "application/json") -> Any:
        """A request as the admin that must succeed; its JSON body."""
        response = self.request(method, path, body, content_type=content_type)
        if response.status_code >= 300:
            raise ApiError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json()

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token for the ServiceAccount from the TokenRequest API (what the kubelet
        mounts into its pods)."""
        made = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": seconds}})
        token: str = made["status"]["token"]
        return token

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount and nothing else."""
        token = self.service_account_token(namespace, name)
        path.write_text(_kubeconfig(self.server, self.ca_pem, {"token": token},
                                    name=f"{namespace}-{name}"))
        path.chmod(0o600)
        return path

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 300.0, *,
                 namespace: str | None = None) -> None:
        """Wait for a state the cluster's controllers reach (a watch would do; polling the
        API keeps it simple). Fails at once when a control-plane process died; on a timeout
        the failure describes ``namespace`` (its pods, claims and events) and the nodes."""
        try:
            self._wait(what, ready, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.describe(namespace)}") from None

    def describe(self, namespace: str | None) -> str:
        """What a person would look at first when pods do not come up: each node's Ready
        condition and taints, and in ``namespace`` each pod's phase, node and unmet
        conditions, each claim's phase, and the latest events."""
        lines: list[str] = []
        try:
            for node in self.api("GET", "/api/v1/nodes")["items"]:
                taints = [t["key"] for t in node["spec"].get("taints", [])]
                lines.append(f"node {node['metadata']['name']}: Ready="
                             f"{condition(node, 'Ready')} taints={taints}")
            if namespace is None:
                return "\n".join(lines)
            ns = f"/api/v1/namespaces/{namespace}"
            for pod in self.api("GET", f"{ns}/pods")["items"]:
                unmet = [f"{c['type']}: {c.get('reason', '')} {c.get('message', '')}".strip()
                         for c in pod["status"].get("conditions", []) if c["status"] != "True"]
                lines.append(f"pod {pod['metadata']['name']}: {pod['status'].get('phase')} "
                             f"on {pod['spec'].get('nodeName')} "
                             f"deleting={bool(pod['metadata'].get('deletionTimestamp'))} "
                             f"unmet={unmet}")
            for claim in self.api("GET", f"{ns}/persistentvolumeclaims")["items"]:
                lines.append(f"claim {claim['metadata']['name']}: {claim['status'].get('phase')}")
            events = sorted(self.api("GET", f"{ns}/events")["items"],
                            key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            for event in events[-25:]:
                lines.append(f"event {event['involvedObject'].get('kind')}/"
                             f"{event['involvedObject'].get('name')}: {event.get('reason')} "
                             f"{event.get('message', '')[:300]}")
        except (httpx.HTTPError, ApiError, KeyError) as exc:
            lines.append(f"(describing the cluster failed: {exc})")
        return "\n".join(lines)

    def namespaced_objects(self, namespace: str) -> dict[str, list[str]]:
        """Every object in ``namespace`` by resource (``apps/statefulsets``, ``secrets``, ...),
        as the API server lists them, from its own discovery: what ``destroy`` must leave
        empty. Objects the cluster makes by itself in every namespace (the ServiceAccount
        ``default``, the ConfigMap ``kube-root-ca.crt``) are included: the namespace itself
        is expected to be gone."""
        out: dict[str, list[str]] = {}
        for group, prefix, listing in self._resources():
            for res in listing["resources"]:
                if not res.get("namespaced") or "/" in res["name"] or \
                        "list" not in res.get("verbs", []):
                    continue
                listed = self.request("GET", f"{prefix}/namespaces/{namespace}/{res['name']}")
                if listed.status_code != 200:
                    continue
                names = [o["metadata"]["name"] for o in listed.json().get("items", [])]
                if names:
                    out[f"{group}/{res['name']}" if group else res["name"]] = names
        return out

    def _resources(self) -> Iterator[tuple[str, str, Any]]:
        """(group, URL prefix, resource list) of every API group's preferred version."""
        yield "", "/api/v1", self.api("GET", "/api/v1")
        for group in self.api("GET", "/apis")["groups"]:
            version = group["preferredVersion"]["groupVersion"]
            yield group["name"], f"/apis/{version}", self.api("GET", f"/apis/{version}")


def _node(name: str, zone: str, gpus: int) -> dict[str, Any]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok", ZONE_LABEL: zone,
              "topology.kubernetes.io/region": "test-region"}
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
        labels["cloud.google.com/gke-accelerator"] = "nvidia-tesla-t4"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"kwok.x-k8s.io/node": "fake",
                                     "node.alpha.kubernetes.io/ttl": "0"}},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def condition(obj: dict[str, Any], kind: str) -> bool:
    """Whether ``obj``'s status has the condition ``kind`` set to True."""
    return any(c["type"] == kind and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))
