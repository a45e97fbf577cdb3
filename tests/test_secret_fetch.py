"""Boot order: a replica's secret fetch retries with backoff, and the
service never starts without its secrets. Runs the rendered scripts against a stand-in
``aws`` CLI that fails a given number of times."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from components.startup import ReplicaBoot, _env, replica_files

FAKE_AWS = """#!/usr/bin/env bash
# Stand-in for `aws secretsmanager get-secret-value`: fails $FAIL_TIMES times, then prints.
count=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 ))
echo "$count" >"$COUNTER"
if [ "$count" -le "$FAIL_TIMES" ]; then echo "throttled" >&2; exit 255; fi
printf '%s\\n' "$SECRET_VALUE"
"""


#: Stand-in for curl: the instance metadata service and the controller answer locally, so
#: the script sends nothing to 169.254.169.254 or anywhere else off this machine.
FAKE_CURL = """#!/usr/bin/env bash
for arg in "$@"; do
  case "$arg" in
    */latest/api/token) echo imds-token; exit 0 ;;
    */meta-data/local-ipv4) echo 10.0.0.5; exit 0 ;;
    */meta-data/*) exit 22 ;;
    http://127.0.0.1:*) echo '{}'; exit 0 ;;
  esac
done
exit 22
"""


def _fake_aws(tmp_path: Path, fail_times: int, value: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "COUNTER": str(tmp_path / "count"),
            "FAIL_TIMES": str(fail_times), "SECRET_VALUE": value, "HOME": str(tmp_path),
            "SKYFORM_FETCH_BASE_DELAY": "0"}


def _fetch_fn() -> str:
    template = _env().from_string(
        '{% from "_secrets.sh.j2" import fetch_secret_fn %}'
        '{{ fetch_secret_fn("aws", "us-east-1") }}')
    return template.render()


def test_fetch_retries_until_the_store_answers(tmp_path: Path) -> None:
    env = _fake_aws(tmp_path, 3, "s3cret")
    done = subprocess.run(["bash", "-c", _fetch_fn() + "\nskyform_fetch_secret arn:x"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "s3cret\n"
    assert (tmp_path / "count").read_text().strip() == "4"
    assert done.stderr.count("retrying") == 3


def test_fetch_gives_up_after_its_attempts_and_prints_nothing(tmp_path: Path) -> None:
    env = {**_fake_aws(tmp_path, 100, "never"), "SKYFORM_FETCH_ATTEMPTS": "3"}
    done = subprocess.run(["bash", "-c", _fetch_fn() + "\nskyform_fetch_secret arn:x"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert (tmp_path / "count").read_text().strip() == "3"


def test_backoff_doubles_up_to_a_minute() -> None:
    fn = _fetch_fn()
    assert 'delay=$((delay * 2 > 60 ? 60 : delay * 2))' in fn
    assert 'sleep "$delay"' in fn


def _replica(tmp_path: Path) -> Path:
    boot = ReplicaBoot(
        cloud="aws", service_name="svc", group="ondemand", index=0, replica_id_base=1,
        spot=False, accelerator=None, num_gpus=0, service_port=8080,
        controller_url="http://127.0.0.1:9", credential_id="arn:credentials",
        secret_id="arn:secrets",
        region="us-east-1", setup="touch setup.ran", run="touch run.ran", heartbeat_seconds=1,
        workdir=str(tmp_path / "work"),
    )
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "work").mkdir()
    for name, text in replica_files(boot).items():
        (files / name).write_text(text)
    return files


def test_service_never_starts_without_its_secrets(tmp_path: Path) -> None:
    files = _replica(tmp_path)
    env = {**_fake_aws(tmp_path, 100, "{}"), "SKYFORM_FETCH_ATTEMPTS": "2",
           "SKYFORM_DIR": str(files), "SKYFORM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(["bash", str(files / "replica.sh"), "start"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "not starting the service" in done.stderr
    assert not (tmp_path / "work" / "setup.ran").exists()
    assert not (tmp_path / "work" / "run.ran").exists()
    assert not (tmp_path / "state" / "secrets.sh").exists()


def test_service_starts_once_the_secrets_arrive(tmp_path: Path) -> None:
    files = _replica(tmp_path)
    env = {**_fake_aws(tmp_path, 1, '{"HF_TOKEN": "hf_x"}'),
           "SKYFORM_DIR": str(files), "SKYFORM_STATE_DIR": str(tmp_path / "state")}
    subprocess.run(["bash", str(files / "replica.sh"), "start"], env=env,
                   capture_output=True, text=True, timeout=60, check=False)
    assert (tmp_path / "work" / "setup.ran").exists()
    assert "export HF_TOKEN=hf_x" in (tmp_path / "state" / "secrets.sh").read_text()


def _controller(tmp_path: Path) -> Path:
    from components.startup import ControllerBoot, render_controller_script
    from lb_agent.contract import AgentConfigFile

    script = render_controller_script(ControllerBoot(
        cloud="aws", service_name="svc", agent_config=AgentConfigFile(service={}),
        token_id="arn:token",
        pulumi_version="3.0.0", region="us-east-1", config_secret_id="arn:config",
    ))
    assert "bundle-" not in script  # the bundle is named in the config, not in user data
    path = tmp_path / "controller.sh"
    path.write_text(script)
    return path


def test_controller_takes_a_new_config_without_new_user_data(tmp_path: Path) -> None:
    """The per-commit controller config (agent config, project bundle) comes from the secret
    store: ``controller.sh config`` writes agent.json and the bundle's URL and sha256, and
    reports whether it changed (``sync``, run by a timer, then installs the bundle and restarts
    the agent: tests/test_controller_bundle.py)."""
    script = _controller(tmp_path)
    etc = tmp_path / "etc"

    def config(value: dict[str, object], fail: int = 0) -> subprocess.CompletedProcess[str]:
        (tmp_path / "count").unlink(missing_ok=True)
        env = {**_fake_aws(tmp_path, fail, json.dumps(value)), "SKYFORM_ETC_DIR": str(etc),
               "SKYFORM_FETCH_ATTEMPTS": "2"}
        return subprocess.run(["bash", str(script), "config"], env=env, capture_output=True,
                              text=True, timeout=30, check=False)

    def bundle(digest: str) -> dict[str, str]:
        return {"url": f"s3://files/controller/bundle-{digest}.tgz", "sha256": digest}

    first = {"agent": {"state_file": "/var/lib/skyform/agent.db"}, "bundle": bundle("a" * 64)}
    done = config(first)
    assert (done.returncode, done.stdout) == (0, "changed\n"), done.stderr
    assert json.loads((etc / "agent.json").read_text()) == first["agent"]
    assert (etc / "bundle").read_text() == (
        f"s3://files/controller/bundle-{'a' * 64}.tgz\n{'a' * 64}\n")
    assert config(first).stdout == "unchanged\n"
    second = {**first, "bundle": bundle("b" * 64)}
    assert config(second).stdout == "changed\n"
    assert (etc / "bundle").read_text().endswith(f"{'b' * 64}\n")
    failed = config({**first, "bundle": bundle("c" * 64)}, fail=100)
    assert failed.returncode == 1
    assert (etc / "bundle").read_text().endswith(f"{'b' * 64}\n")  # kept the last good one


def test_controller_writes_its_pulumi_credentials_as_0400_files(tmp_path: Path) -> None:
    """skyform:pulumiPassphrase / pulumiAccessToken reach a VM controller inside its config
    secret (never user data) and land as one 0400 file each, which the agent's deployer reads
    when it opens the stack (agent config ``deployer.env_files``)."""
    script = _controller(tmp_path)
    creds = tmp_path / "creds"
    value = {"agent": {}, "bundle": {"url": "s3://files/b.tgz", "sha256": "d" * 64},
             "pulumi_credentials": {"passphrase": "pass-phrase-1", "access-token": "pul-xyz"}}
    env = {**_fake_aws(tmp_path, 0, json.dumps(value)), "SKYFORM_ETC_DIR": str(tmp_path / "etc"),
           "SKYFORM_CREDENTIALS_DIR": str(creds)}
    done = subprocess.run(["bash", str(script), "config"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert (creds / "passphrase").read_text() == "pass-phrase-1"
    assert (creds / "access-token").read_text() == "pul-xyz"
    assert (creds / "passphrase").stat().st_mode & 0o777 == 0o400
    assert creds.stat().st_mode & 0o777 == 0o700
    assert "pass-phrase-1" not in (tmp_path / "etc" / "agent.json").read_text()
    assert "pass-phrase-1" not in done.stdout + done.stderr


def test_a_vm_replica_registers_with_its_groups_credential_only(tmp_path: Path) -> None:
    """The replica reads the ``{group: credential}`` secret, keeps its own group's (0600)
    and registers with it; the agent token is nowhere in its files."""
    files = _replica(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text("""#!/usr/bin/env bash
case "$*" in
  *arn:credentials*) echo '{"ondemand": "skr1.ondemand-cred", "spot": "skr1.spot-cred"}' ;;
  *) echo '{}' ;;
esac
""")
    (bin_dir / "curl").write_text(FAKE_CURL.replace(
        "for arg in", 'echo "$*" >>"$CURL_LOG"\nfor arg in'))
    for tool in ("aws", "curl"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "CURL_LOG": str(tmp_path / "curl.log"), "SKYFORM_FETCH_BASE_DELAY": "0",
           "SKYFORM_DIR": str(files), "SKYFORM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(["bash", str(files / "replica.sh"), "start"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (tmp_path / "work" / "run.ran").exists(), done.stderr
    calls = [c for c in (tmp_path / "curl.log").read_text().splitlines() if "127.0.0.1:9" in c]
    assert calls and all("Authorization: Bearer skr1.ondemand-cred" in c for c in calls)
    kept = tmp_path / "state" / "replica-credential"
    assert kept.read_text() == "skr1.ondemand-cred"
    assert kept.stat().st_mode & 0o077 == 0
