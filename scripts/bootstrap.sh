#!/usr/bin/env bash
# Install skyform on a fresh Debian/Ubuntu machine: a virtualenv in .venv and the project with
# its dev extras. Safe to run again.
#
#   bash scripts/bootstrap.sh           # what `skyform local/validate/synth` need: no root
#   bash scripts/bootstrap.sh --tests   # also the test-only system packages: cloud-init (its
#                                       # `cloud-init schema` checks generated user data), and
#                                       # gcc and the Python headers when missing (the data plane's
#                                       # C helpers: optional to run, tested to be built),
#                                       # and systemd's `systemd-analyze` when missing;
#                                       # installing them needs root (apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) with_tests=1 ;;
    *) echo "bootstrap: unknown option $arg (valid: --tests)" >&2; exit 2 ;;
  esac
done

if [ "$with_tests" = 1 ]; then
  apt_packages=(cloud-init)
  missing=()
  for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v gcc >/dev/null 2>&1 || missing+=(gcc)
  # systemd-analyze checks the controller's units.
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  py_include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  [ -f "$py_include/Python.h" ] || missing+=(python3-dev)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "bootstrap: installing ${missing[*]} from Debian (for the tests)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "bootstrap: the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: skyform needs Python >= 3.11; python3 is $(python3 --version 2>&1)" >&2
  exit 1
fi
echo "bootstrap: creating .venv and installing skyform (1-2 minutes the first time)"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
echo "bootstrap: ready. Put skyform on PATH with: source .venv/bin/activate"
