#!/usr/bin/env bash
# The project's test command: lint, type-check, the real Pulumi toolchain (built from Go
# modules, or reused from its cache), then the whole test suite. Extra arguments go to pytest;
# `bash scripts/check.sh -m 'not engine'` leaves out the real-engine tests (and the toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "check: ruff" >&2
.venv/bin/ruff check .
echo "check: mypy" >&2
.venv/bin/mypy
if [[ " $* " != *"not engine"* ]]; then
  echo "check: pulumi toolchain" >&2
  SKYFORM_PULUMI_BIN="$(bash scripts/pulumi-toolchain.sh | tail -n 1)"
  export SKYFORM_PULUMI_BIN
fi
echo "check: pytest" >&2
.venv/bin/pytest -q "$@"
