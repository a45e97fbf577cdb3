#!/usr/bin/env bash
# Build the real Kubernetes control plane skyform's cluster tests run against, from the Go
# module proxy with the ordinary `go` client, pinned, into a cache outside the checkout (next
# to the Pulumi toolchain, under its own cache key):
#
#   kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes
#   etcd                                                       go.etcd.io/etcd/server/v3
#   kwok (simulated nodes: GPU capacity, zones, Running pods)  sigs.k8s.io/kwok/cmd/kwok
#
# Prints the bin directory on its last line (stdout); progress and each binary's build time go
# to stderr. A second run with the same pins finds the binaries in the cache and takes well
# under a second. `--cached` builds nothing: it prints the directory when everything is there
# and fails otherwise (what the tests ask, so a test run never starts a cold build). The cold
# build's cost: docs/deploying.md, "Real control plane in the tests".
set -euo pipefail

# --- pins ------------------------------------------------------------------------------------
KUBE_VERSION="1.34.3"
# k8s.io/kubernetes's go.mod points its 31 staging modules (k8s.io/api, apimachinery,
# client-go, ...) at ./staging/src/..., which is not in the module zip; the wrapper module
# points them at their published v0.<minor>.<patch> instead, the same source tree.
KUBE_STAGING_VERSION="0.34.3"
# etcd: the release line Kubernetes 1.34 is tested with. server/v3's own main package is the
# etcd binary; its go.mod replaces api/client/pkg with ../..., so the wrapper requires them at
# the same version.
ETCD_VERSION="3.6.17"
# kwok's go.mod has no replace directives, so `go install` builds it directly.
KWOK_VERSION="0.8.0"

CACHE_ROOT="${SKYFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skyform/toolchain}"
KEY="kubernetes-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN="$CACHE_ROOT/$KEY/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)
# kwok's stages (how a simulated node becomes Ready and keeps its lease, how a pod goes from
# Pending to Running and away), from the same kwok release: kwok runs none without them.
STAGES="$CACHE_ROOT/$KEY/share/kwok-stages.yaml"
KWOK_STAGE_FILES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/general/pod-create.yaml
  pod/general/pod-init-container-running.yaml
  pod/general/pod-init-container-completed.yaml
  pod/general/pod-ready.yaml
  pod/general/pod-complete.yaml
  pod/general/pod-delete.yaml
)

TOOLCHAIN_NAME=kube-toolchain
# shellcheck source=scripts/toolchain-steps.sh
. "$(dirname "${BASH_SOURCE[0]}")/toolchain-steps.sh"

command -v go >/dev/null 2>&1 || fail "the Go toolchain is needed (apt-get install golang, or go.dev); none on PATH"

all_built() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
  [ -s "$STAGES" ]
}
if all_built; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi
case "${1:-}" in
  --cached) fail "not built yet: $BIN (run: bash scripts/kube-toolchain.sh)" ;;
  "") ;;
  *) fail "unknown option $1 (valid: --cached)" ;;
esac

mkdir -p "$BIN"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/skyform-kube-toolchain.XXXXXX")"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

total_start=$SECONDS

# --- etcd ------------------------------------------------------------------------------------
if [ ! -x "$BIN/etcd" ]; then
  mod="$WORK/etcd"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<EOF
module skyform.local/toolchain/etcd

go 1.26

require (
	go.etcd.io/etcd/api/v3 v${ETCD_VERSION}
	go.etcd.io/etcd/client/pkg/v3 v${ETCD_VERSION}
	go.etcd.io/etcd/client/v3 v${ETCD_VERSION}
	go.etcd.io/etcd/pkg/v3 v${ETCD_VERSION}
	go.etcd.io/etcd/server/v3 v${ETCD_VERSION}
)
EOF
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  (cd "$mod" && run_step "etcd ${ETCD_VERSION}: resolving modules" "$WORK/etcd-tidy.log" go mod tidy -e)
  (cd "$mod" && run_step "etcd ${ETCD_VERSION}: compiling" "$WORK/etcd-build.log" \
    go build -mod=mod -o "$BIN/etcd.tmp" \
    -ldflags "-s -w" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

# --- kwok ------------------------------------------------------------------------------------
if [ ! -x "$BIN/kwok" ]; then
  run_step "kwok ${KWOK_VERSION}: compiling" "$WORK/kwok-build.log" \
    env GOBIN="$WORK/kwok-bin" go install \
    -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@v${KWOK_VERSION}"
  mv "$WORK/kwok-bin/kwok" "$BIN/kwok"
fi
if [ ! -s "$STAGES" ]; then
  kwok_src="$(go mod download -json "sigs.k8s.io/kwok@v${KWOK_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$kwok_src/kustomize/stage" ] || fail "the module cache has no kwok stages for v${KWOK_VERSION}"
  mkdir -p "$(dirname "$STAGES")"
  for f in "${KWOK_STAGE_FILES[@]}"; do
    echo "---"
    cat "$kwok_src/kustomize/stage/$f"
  done >"$STAGES.tmp"
  mv "$STAGES.tmp" "$STAGES"
fi

# --- kube-apiserver, kube-controller-manager, kube-scheduler ----------------------------------
kube_missing=0
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$BIN/$b" ] || kube_missing=1
done
if [ "$kube_missing" = 1 ]; then
  run_step "kubernetes v${KUBE_VERSION}: downloading" "$WORK/kube-dl.log" \
    go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}"
  gomod="$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$gomod" ] || fail "the module cache has no go.mod for k8s.io/kubernetes@v${KUBE_VERSION}"
  staging="$(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$|\1|p' "$gomod")"
  [ -n "$staging" ] || fail "k8s.io/kubernetes@v${KUBE_VERSION}'s go.mod lists no staging modules"
  mod="$WORK/kube"
  mkdir -p "$mod"
  {
    echo "module skyform.local/toolchain/kubernetes"
    echo
    # The same language version and GODEBUG defaults as k8s.io/kubernetes's own go.mod.
    sed -n -e '/^go /p' -e '/^godebug /p' "$gomod"
    echo
    echo "require k8s.io/kubernetes v${KUBE_VERSION}"
    echo
    echo "replace ("
    for m in $staging; do
      printf '\t%s => %s v%s\n' "$m" "$m" "$KUBE_STAGING_VERSION"
    done
    echo ")"
  } >"$mod/go.mod"
  log "kubernetes wrapper module: $(echo "$staging" | wc -l) staging modules at v${KUBE_STAGING_VERSION}"
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
  (cd "$mod" && run_step "kubernetes v${KUBE_VERSION}: resolving modules" "$WORK/kube-tidy.log" go mod tidy -e)
  # Without the version stamp the binaries report v0.0.0-master, which clients read (the
  # Pulumi provider among them).
  vars=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    vars+=" -X ${pkg}.gitVersion=v${KUBE_VERSION}"
    vars+=" -X ${pkg}.gitMajor=${KUBE_VERSION%%.*}"
    minor="${KUBE_VERSION#*.}"
    vars+=" -X ${pkg}.gitMinor=${minor%%.*}"
    vars+=" -X ${pkg}.gitTreeState=clean"
  done
  # One `go build` for all three shares the compile of their common packages.
  (cd "$mod" && run_step "kubernetes v${KUBE_VERSION}: compiling kube-apiserver, kube-controller-manager, kube-scheduler (the slow part: tens of minutes on 2 cores)" \
    "$WORK/kube-build.log" \
    go build -mod=mod -o "$WORK/kube-bin/" -ldflags "-s -w${vars}" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    mv "$WORK/kube-bin/$b" "$BIN/$b"
  done
fi

version="$("$BIN/kube-apiserver" --version)" || fail "the built kube-apiserver does not run"
[ "$version" = "Kubernetes v${KUBE_VERSION}" ] || fail "kube-apiserver reports '$version', not v${KUBE_VERSION}"
"$BIN/etcd" --version >/dev/null || fail "the built etcd does not run"
log "built: $BIN ($version, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}) in $((SECONDS - total_start)) s"
echo "$BIN"
