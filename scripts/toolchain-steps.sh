# Shared by scripts/pulumi-toolchain.sh and scripts/kube-toolchain.sh (sourced, not run):
# progress and failure lines under the script's own name, and one build step whose output is
# kept for a failure. The sourcing script sets TOOLCHAIN_NAME first.

log() { printf '%s: %s\n' "$TOOLCHAIN_NAME" "$*" >&2; }
fail() { printf '%s: error: %s\n' "$TOOLCHAIN_NAME" "$*" >&2; exit 1; }

run_step() {  # run_step LABEL LOGFILE CMD...: show the label, keep the output for a failure
  local label="$1" logfile="$2"
  shift 2
  local start=$SECONDS
  log "$label ..."
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    fail "$label failed (full log above: $logfile)"
  fi
  log "$label done in $((SECONDS - start)) s"
}
