#!/usr/bin/env bash
# Install everything skyform needs on a fresh Debian machine: system packages (when root),
# a virtualenv in .venv, and the project with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's cloud-init validates the generated user data (`cloud-init schema`).
apt_packages=(cloud-init)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: please install ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
echo "bootstrap: ready (.venv/bin/skyform)"
