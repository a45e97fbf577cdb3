#!/usr/bin/env bash
# Build the real Pulumi engine pieces skyform runs in its real-engine tests, from the Go module
# proxy with the ordinary `go` client, pinned, into a cache outside the checkout:
#
#   pulumi                       github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
#   pulumi-resource-kubernetes   github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/...
#
# Prints the bin directory on its last line (stdout); progress goes to stderr. A second run
# with the same pins finds the binaries in the cache and takes well under a second.
#
# What it does not build, and why (docs/deploying.md, "The toolchain"):
#   * pulumi-language-python (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3)
#     may be refused by the Go module proxy ("403 Forbidden: This module version is not
#     available"). skyform runs its
#     program through the Python Automation API as an inline program: the Python SDK serves the
#     language runtime itself and the CLI connects to it (`--client`), so no language plugin
#     is needed. Users with an installed Pulumi CLI run `pulumi up` as usual.
#   * pulumi-resource-aws/gcp/random are bridged from patched Terraform sources that are not
#     Go modules.
set -euo pipefail

# --- pins ------------------------------------------------------------------------------------
# The CLI matches the `pulumi` Python SDK pinned in pyproject.toml.
PULUMI_VERSION="3.260.0"
# pulumi-kubernetes tags only sdk/vX.Y.Z, never provider/v4.x.y, so the provider module is
# addressed by commit (pseudo-version). The proxy serves exactly one: f47bc2d6f199 of
# 2026-01-15, the last commit before the v4.25.0 release tag, which is the `pulumi-kubernetes`
# Python SDK pinned in pyproject.toml. Its go.mod replaces sdk/v4 => ../sdk; the build
# points that at the published sdk/v4 v4.25.0. The binary reports 4.25.0 with the commit as
# semver build metadata: the SDK asks the engine for ">= 4.25.0", which a pre-release label
# would fail (a warning on every operation).
K8S_PROVIDER_MODULE="github.com/pulumi/pulumi-kubernetes/provider/v4"
K8S_PROVIDER_PSEUDO="v4.0.0-20260115033456-f47bc2d6f199"
K8S_SDK_VERSION="v4.25.0"
K8S_PROVIDER_VERSION="4.25.0+f47bc2d6f199"

CACHE_ROOT="${SKYFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skyform/toolchain}"
KEY="pulumi-${PULUMI_VERSION}_kubernetes-${K8S_PROVIDER_VERSION}"
BIN="$CACHE_ROOT/$KEY/bin"

TOOLCHAIN_NAME=toolchain
# shellcheck source=scripts/toolchain-steps.sh
. "$(dirname "${BASH_SOURCE[0]}")/toolchain-steps.sh"

command -v go >/dev/null 2>&1 || fail "the Go toolchain is needed (apt-get install golang, or go.dev); none on PATH"

if [ -x "$BIN/pulumi" ] && [ -x "$BIN/pulumi-resource-kubernetes" ]; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/skyform-toolchain.XXXXXX")"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
export GOTOOLCHAIN=local


# --- the pulumi CLI ----------------------------------------------------------------------------
# pkg/v3's go.mod has replace directives (sdk/v3 => ../sdk, github.com/atotto/clipboard => a
# fork), which `go install module@version` refuses. So the CLI is built from a small wrapper
# module that requires pkg/v3 and sdk/v3 at the same version and repeats the fork replace.
if [ ! -x "$BIN/pulumi" ]; then
  cli="$WORK/pulumi-cli"
  mkdir -p "$cli"
  cat >"$cli/go.mod" <<EOF
module skyform.local/toolchain/pulumi

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v${PULUMI_VERSION}
	github.com/pulumi/pulumi/sdk/v3 v${PULUMI_VERSION}
)

// Repeated from pkg/v3's own go.mod: a fork of the clipboard module.
replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
  cat >"$cli/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
EOF
  (cd "$cli" && run_step "pulumi ${PULUMI_VERSION}: resolving modules" "$WORK/cli-tidy.log" \
    go mod tidy -e)
  (cd "$cli" && run_step "pulumi ${PULUMI_VERSION}: compiling (several minutes on 2 cores)" \
    "$WORK/cli-build.log" go build -mod=mod -o "$BIN/pulumi.tmp" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v${PULUMI_VERSION}" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  mv "$BIN/pulumi.tmp" "$BIN/pulumi"
fi

# --- the Kubernetes provider -----------------------------------------------------------------
# main.go embeds schema-embed.json, which the module's own `go generate` step writes
# (VERSION=... go run ./generate.go), so the provider is built from a writable copy of the
# module source after running that step there.
if [ ! -x "$BIN/pulumi-resource-kubernetes" ]; then
  run_step "kubernetes provider ${K8S_PROVIDER_PSEUDO}: downloading" "$WORK/k8s-dl.log" \
    go mod download -json "${K8S_PROVIDER_MODULE}@${K8S_PROVIDER_PSEUDO}"
  src="$(go mod download -json "${K8S_PROVIDER_MODULE}@${K8S_PROVIDER_PSEUDO}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$src" ] || fail "the module cache has no source for ${K8S_PROVIDER_MODULE}@${K8S_PROVIDER_PSEUDO}"
  prov="$WORK/provider"
  cp -r "$src" "$prov"
  chmod -R u+w "$prov"
  (
    cd "$prov"
    # The module's own replace (sdk/v4 => ../sdk) points outside the module zip.
    go mod edit -dropreplace github.com/pulumi/pulumi-kubernetes/sdk/v4 \
      -replace "github.com/pulumi/pulumi-kubernetes/sdk/v4=github.com/pulumi/pulumi-kubernetes/sdk/v4@${K8S_SDK_VERSION}"
    cd cmd/pulumi-resource-kubernetes
    run_step "kubernetes provider: go generate (schema-embed.json)" "$WORK/k8s-gen.log" \
      env VERSION="$K8S_PROVIDER_VERSION" go run -mod=mod ./generate.go
    run_step "kubernetes provider: compiling (several minutes on 2 cores)" "$WORK/k8s-build.log" \
      go build -mod=mod -o "$BIN/pulumi-resource-kubernetes.tmp" \
      -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=${K8S_PROVIDER_VERSION}" \
      .
  )
  mv "$BIN/pulumi-resource-kubernetes.tmp" "$BIN/pulumi-resource-kubernetes"
fi

"$BIN/pulumi" version >/dev/null || fail "the built pulumi CLI does not run"
log "built: $BIN ($("$BIN/pulumi" version))"
echo "$BIN"
