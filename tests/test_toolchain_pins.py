"""The toolchain script, the Python SDK pins and the controller's CLI name one version each.

``scripts/pulumi-toolchain.sh`` builds the engine the real-engine tests run; the controller
installs the CLI named by ``PULUMI_CLI_VERSION``; pip installs the SDKs pinned in
pyproject.toml. A bump of one without the others would test one engine and ship another.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.clouds.common import PULUMI_CLI_VERSION

ROOT = Path(__file__).resolve().parent.parent


def _script_pin(name: str) -> str:
    text = (ROOT / "scripts" / "pulumi-toolchain.sh").read_text()
    match = re.search(rf'^{name}="([^"]+)"$', text, re.MULTILINE)
    assert match, name
    return match.group(1)


def _pyproject_pin(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}==([^"]+)"', text)
    assert match, f"{package} is not pinned with == in pyproject.toml"
    return match.group(1)


def test_cli_sdk_and_controller_versions_agree() -> None:
    assert _script_pin("PULUMI_VERSION") == _pyproject_pin("pulumi") == PULUMI_CLI_VERSION


def test_kubernetes_provider_build_matches_the_sdk_pin() -> None:
    sdk = _pyproject_pin("pulumi-kubernetes")
    assert _script_pin("K8S_SDK_VERSION") == f"v{sdk}"
    # The provider is built from the last commit before that release (see the script) and
    # reports the release's version with the commit as build metadata.
    commit = _script_pin("K8S_PROVIDER_PSEUDO")[-12:]
    assert _script_pin("K8S_PROVIDER_VERSION") == f"{sdk}+{commit}"


def test_pull_request_workflow_runs_ci_and_the_pinned_cli() -> None:
    """The preview workflow runs what CI runs and previews with the CLI the tests built."""
    workflow = (ROOT / ".github" / "workflows" / "preview.yml").read_text()
    assert "bash .ci/run" in workflow
    assert f'pulumi-version: "{PULUMI_CLI_VERSION}"' in workflow


def test_kubernetes_staging_modules_are_the_same_release() -> None:
    """k8s.io/kubernetes vX.Y.Z publishes its staging modules (k8s.io/api, client-go, ...) as
    v0.Y.Z: the control plane is built from one release, not a mix."""
    text = (ROOT / "scripts" / "kube-toolchain.sh").read_text()
    pins = dict(re.findall(r'^(KUBE_VERSION|KUBE_STAGING_VERSION)="([^"]+)"$', text, re.MULTILINE))
    major, minor, patch = pins["KUBE_VERSION"].split(".")
    assert major == "1"
    assert pins["KUBE_STAGING_VERSION"] == f"0.{minor}.{patch}"
