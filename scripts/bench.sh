#!/usr/bin/env bash
# The benchmark: the machine's ceilings (PostgreSQL's order transaction, RabbitMQ's publish
# with confirms and consume + ack) and the system on the same scenarios (drain, steady, max,
# the relay and the inbox alone, the gateway's overhead, each service's footprint), measured
# side by side in one run on the local PostgreSQL and RabbitMQ, with the services as their own
# release binaries (the bench, tools/bench, runs them from the same target/ directory). It
# reports figures with their ratios and targets; it asserts nothing.
#
#   scripts/bench.sh           the full run (about 7 minutes on 2 cores)
#   scripts/bench.sh --smoke   a few seconds per section on the dev build (scripts/test.sh runs
#                              it so the benchmark keeps working); its figures mean nothing
#
# BENCH_SECTIONS picks sections (ceilings,drain,steady,max,halves,gateway,takeover,queue_type,cpu);
# results (JSON, markdown report, latency plot) go to .run/bench/<UTC timestamp>/, or BENCH_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
case "${1:-}" in
    # The dev build `cargo test` has just made: no release build inside scripts/test.sh.
    --smoke) mode=(--smoke) RUN_LOCAL_PROFILE=dev ;;
    "") ;;
    *) echo "usage: scripts/bench.sh [--smoke]" >&2 && exit 2 ;;
esac
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_services
# nginx is the gateway section's reference (one worker, keepalive upstreams); the section runs
# without it, so a failed install is only a warning. Not in --smoke, which scripts/test.sh runs.
if ((${#mode[@]} == 0)) && [[ ",${BENCH_SECTIONS:-gateway}," == *,gateway,* ]] &&
    ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    log "installing nginx for the gateway section's reference"
    (ensure_tool nginx 2>/dev/null) || [[ -x /usr/sbin/nginx ]] ||
        warn "nginx could not be installed: the gateway section runs without its reference"
fi
log "${BUILD[*]} -p bench -p order -p pay -p gateway"
"${BUILD[@]}" --quiet -p bench -p order -p pay -p gateway
export BENCH_OUT="${BENCH_OUT:-.run/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
log "running on $(nproc) cores; every figure below is from this run"
RUST_LOG="${RUST_LOG:-warn}" "$BIN_DIR/bench" "${mode[@]}"
