#!/usr/bin/env bash
# The project's test command: lint, type-check, the real Pulumi toolchain (built from Go
# modules, or reused from its cache), then the whole test suite. Each step says what it is
# doing as it starts (a cold mypy takes about two minutes, a cold toolchain build about 15).
# Extra arguments go to pytest; `bash scripts/check.sh -m 'not engine'` leaves out the
# real-engine tests and both toolchains, `-m 'not kube'` only the real control plane's tests
# and its toolchain (scripts/kube-toolchain.sh). Skipped tests are listed with their reason
# (-rs): the only ones that skip need reference material kept outside the repository
# (tests/external.py).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
if ! command -v cloud-init >/dev/null 2>&1; then
  echo "check: the tests need cloud-init (bash scripts/bootstrap.sh --tests, as root)" >&2
  exit 1
fi
step "ruff check ."
.venv/bin/ruff check .
step "mypy (cold: about 2 minutes)"
.venv/bin/mypy
if [[ " $* " != *"not engine"* ]]; then
  step "pulumi toolchain (scripts/pulumi-toolchain.sh: cached, or a cold build of 15-30 minutes on 2 cores)"
  SKYFORM_PULUMI_BIN="$(bash scripts/pulumi-toolchain.sh | tail -n 1)"
  export SKYFORM_PULUMI_BIN
  if [[ " $* " != *"not kube"* ]]; then
    step "kubernetes control plane (scripts/kube-toolchain.sh: cached, or a cold build of 10-60 minutes on 2 cores)"
    SKYFORM_KUBE_BIN="$(bash scripts/kube-toolchain.sh | tail -n 1)"
    export SKYFORM_KUBE_BIN
  fi
fi
step "pytest -q -rs $*"
.venv/bin/pytest -q -rs "$@"
