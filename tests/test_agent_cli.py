"""`skyform agent` / `python -m lb_agent`: config errors, quick mode, TLS, no cloud SDK imports."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from agent_helpers import (
    Replica,
    agent_config,
    free_port,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)

from lb_agent.config import AgentConfig, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lb_agent", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )


def test_lb_agent_never_imports_cloud_providers() -> None:
    code = (
        "import sys, pkgutil, importlib, lb_agent\n"
        "for m in pkgutil.walk_packages(lb_agent.__path__, 'lb_agent.'):\n"
        "    if m.name != 'lb_agent.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "import components.commands.agent\n"
        "assert 'lb_agent.server' in sys.modules and 'lb_agent.control.scaler' in sys.modules\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pulumi_aws', 'pulumi_gcp', 'pulumi_kubernetes'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"token": "0123456789", "proxy": {"max_attempts": 0}}', "proxy.max_attempts"),
        ('{"token": "0123456789", "policy": "fastest"}', "policy"),
        ('{"public": {"port": 30001}}', "token"),
        ('{"token": "0123456789", "replicas": [{"url": "10.0.0.1:80"}]}', "replicas[0].url"),
        ('{"token": "0123456789", "bogus": 1}', "bogus"),
        ('{"token": "0123456789", "replicas": [{"url": "http://10.0.0.1:80", '
         '"replica_id": "a\\nb"}]}', "replicas[0].replica_id"),
        ("token: [unclosed", "line 1"),
    ],
)
def test_bad_config_file_is_a_clear_error_exit_2(tmp_path: Any, content: str, field: str) -> None:
    path = tmp_path / ("agent.json" if content.startswith("{") else "agent.yaml")
    path.write_text(content)
    out = _run("--config", str(path))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert str(path) in out.stderr and field in out.stderr, out.stderr


def test_config_from_service_spec() -> None:
    cfg = AgentConfig.from_dict({
        "token": "0123456789",
        "service": {
            "name": "svc", "load_balancing_policy": "round_robin",
            "service_spec": {
                "readiness_probe": {"path": "/v1/models", "initial_delay_seconds": 600,
                                    "timeout_seconds": 5, "post_data": {"a": 1},
                                    "headers": {"Authorization": "Bearer k"}},
                "replica_policy": {"min_replicas": 1, "target_qps_per_replica": {"A100": 2}},
            },
        },
        "probe": {"interval_seconds": 2},
        "autoscaler": {"enabled": False},
    })
    assert cfg.policy == "round_robin"
    assert (cfg.probe.path, cfg.probe.method, cfg.probe.initial_delay_seconds,
            cfg.probe.timeout_seconds, cfg.probe.interval_seconds) == (
        "/v1/models", "POST", 600, 5, 2)
    assert cfg.target_qps_per_replica == {"A100": 2.0}
    assert not cfg.autoscaler_enabled
    with pytest.raises(ConfigError, match=r"admin\.port"):
        AgentConfig.from_dict({"token": "0123456789", "public": {"port": 5},
                               "admin": {"port": 5}})


async def test_quick_mode_subprocess(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    port = _free_pair()  # quick mode puts the admin API on port + 1
    proc = subprocess.Popen(
        [sys.executable, "-c", "from components.cli import main; main()", "agent",
         "--replicas", rep.url, "--port", str(port), "--host", "127.0.0.1", "--probe", "/health",
         "--probe-interval", "0.1", "--state-file", str(tmp_path / "q.db")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline(), proc.stderr.readline()]
        token = re.search(r"admin token: (\S+)", "".join(lines))
        assert token, lines
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 15
            while True:
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/x")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, f"agent exited: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "quick-mode agent never served"
                await asyncio.sleep(0.1)
            assert r.json()["replica"] == "a"
            admin = f"http://127.0.0.1:{port + 1}/status"
            assert (await client.get(admin)).status_code == 401
            r = await client.get(admin, headers={"Authorization": f"Bearer {token.group(1)}"})
            assert r.json()["replicas"][0]["replica_id"] == "static-0"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        await rep.stop()


def _free_pair() -> int:
    """A port p such that p and p + 1 are both free on 127.0.0.1 right now."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    keyfile, certfile = tmp_path / "key.pem", tmp_path / "cert.pem"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(keyfile), str(certfile)


async def test_tls_on_public_port_from_spec(tmp_path: Any) -> None:
    keyfile, certfile = _self_signed(tmp_path)
    rep = await Replica("a").start()
    try:
        service = {"name": "s", "service_spec": {"tls": {"keyfile": keyfile, "certfile": certfile}}}
        cfg = agent_config(tmp_path, [rep.url], service=service)
        assert cfg.tls is not None
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            ctx = ssl.create_default_context(cafile=certfile)
            url = agent.url.replace("http://", "https://")
            async with httpx.AsyncClient(verify=ctx) as client:
                r = await client.get(url + "/x")
            assert r.status_code == 200
            assert r.json()["headers"]["x-forwarded-proto"] == "https"
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get(agent.url + "/x")  # plain HTTP is not served
    finally:
        await rep.stop()


def test_json_output_of_config_error_names_file(tmp_path: Any) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"token": "short"}))
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(str(path))
    assert info.value.file == str(path) and info.value.field == "token"


def test_busy_port_is_a_clear_error(tmp_path: Any) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run("--replicas", "http://127.0.0.1:9", "--port", str(port), "--host",
                   "127.0.0.1", "--state-file", str(tmp_path / "b.db"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"cannot listen on 127.0.0.1:{port} (public port)" in out.stderr
    # Nothing is announced as listening (nor a token shown) before the sockets are bound.
    assert "listening" not in out.stderr and "admin token" not in out.stderr


def _listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on for ``port`` (from /proc/net/tcp)."""
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if int(port_hex, 16) == port and state == "0A":  # 0A = LISTEN
                raw = bytes.fromhex(host_hex)[::-1]
                return ".".join(str(b) for b in raw)
    return None


async def test_quick_mode_binds_loopback_unless_host_given(tmp_path: Any) -> None:
    port = _free_pair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lb_agent", "--replicas", "http://127.0.0.1:9", "--port",
         str(port), "--state-file", str(tmp_path / "q.db")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.strip() == (f"skyform agent: proxy listening on 127.0.0.1:{port}, "
                                 f"admin API on 127.0.0.1:{port + 1}")
        assert re.match(r"admin token: \S{20,}", proc.stderr.readline())
        assert _listening_address(port) == "127.0.0.1"
        assert _listening_address(port + 1) == "127.0.0.1"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


#: ``python -m lb_agent`` without prefix_aware's C helper (as bench/lb_bench.py --pure-python).
HIDE_NATIVE = ("import runpy, sys; "
               "sys.modules['lb_agent.dataplane.policies._prefix_native'] = None; "
               "runpy.run_module('lb_agent', run_name='__main__')")


@pytest.mark.parametrize("native", [True, False], ids=["c-helper", "pure-python"])
def test_prefix_aware_says_when_it_runs_without_its_c_helper(native: bool, tmp_path: Any) -> None:
    port = _free_pair()
    start = ["-m", "lb_agent"] if native else ["-c", HIDE_NATIVE]
    proc = subprocess.Popen(
        [sys.executable, *start, "--replicas", "http://127.0.0.1:9", "--port", str(port),
         "--policy", "prefix_aware", "--state-file", str(tmp_path / "q.db")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("skyform agent: proxy listening on 127.0.0.1:")
        second = proc.stderr.readline()
        if native:
            assert second.startswith("admin token: ")
        else:
            assert second.startswith("prefix_aware runs in pure Python: its C helper was not")
            assert proc.stderr.readline().startswith("admin token: ")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_config_file_admin_api_defaults_to_loopback() -> None:
    cfg = AgentConfig.from_dict({"token": "0123456789"})
    assert cfg.admin.host == "127.0.0.1"
    assert cfg.public.host == "0.0.0.0"  # the documented proxy default of a config file
    explicit = AgentConfig.from_dict({"token": "0123456789", "admin": {"host": "0.0.0.0"}})
    assert (explicit.admin.host, explicit.admin.port) == ("0.0.0.0", 20001)


def test_agent_entry_point_and_metrics_import_no_generator_and_no_circle() -> None:
    code = (
        "import sys, runpy\n"
        "import lb_agent.metrics\n"
        "assert 'lb_agent.runtime' not in sys.modules, 'metrics imports runtime'\n"
        "import lb_agent.__main__, lb_agent.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'components'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_all_config_errors_at_once(tmp_path: Any) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({
        "token": "0123456789", "replicas": ["10.0.0.1:80", {"url": "http://a", "spot": "yes"}],
        "proxy": {"max_attempts": 0, "idle_timeout_seconds": "5"}, "bogus": 1,
        "probe": {"interval_seconds": 0}, "policy": "fastest",
    }))
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(str(path))
    fields = [f for f, _ in info.value.issues]
    assert sorted(fields) == sorted([
        "replicas[0].url", "replicas[1].spot", "proxy.max_attempts",
        "proxy.idle_timeout_seconds", "bogus", "probe.interval_seconds", "policy",
    ])
    assert dict(info.value.issues)["replicas[1].spot"] == "expected true or false, got 'yes'"
    assert str(info.value).count(str(path)) == len(fields)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("token: '0123456789'\nrouting: {prefix_balance_rel: .inf}\n",
         "routing.prefix_balance_rel"),
        ("token: '0123456789'\nproxy: {connect_timeout_seconds: .nan}\n",
         "proxy.connect_timeout_seconds"),
        ('{"token": "0123456789", "service": {"service_spec": {"replica_policy": '
         '{"target_qps_per_replica": Infinity}}}}',
         "service.service_spec.replica_policy.target_qps_per_replica"),
    ],
)
def test_config_refuses_inf_and_nan(tmp_path: Any, content: str, field: str) -> None:
    path = tmp_path / ("agent.json" if content.startswith("{") else "agent.yaml")
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(str(path))
    assert [f for f, _ in info.value.issues] == [field]
    assert "expected a finite number" in str(info.value)
