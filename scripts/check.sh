#!/usr/bin/env bash
# The project's test command: lint, type-check, then the whole test suite. Each step says
# what it is doing as it starts (a cold mypy takes about two minutes).
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
step "pytest -q $*"
.venv/bin/pytest -q "$@"
