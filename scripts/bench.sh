#!/usr/bin/env bash
# The benchmark (tools/bench; docs/benchmarks.md): the machine's ceilings, the system and a
# peer (RustStream) on the same scenarios, one after the other in one run on the local
# PostgreSQL and RabbitMQ, the services as their own release binaries. It reports figures
# with their ratios and targets; it asserts nothing.
#
#   scripts/bench.sh           the full run (long: the 1,000,000-order backlog alone is minutes)
#   scripts/bench.sh --smoke   a few seconds per section on the dev build (scripts/test.sh runs
#                              it so the benchmark keeps working); its figures mean nothing
#
# BENCH_SECTIONS picks sections, BENCH_PEERS=none leaves the peer out (docs/benchmarks.md has
# the rest); results (JSON, markdown report, plots) go to .run/bench/<UTC timestamp>/, or BENCH_OUT.
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
log "${BUILD[*]} -p bench -p peer-ruststream -p order -p pay -p gateway"
"${BUILD[@]}" --quiet -p bench -p peer-ruststream -p order -p pay -p gateway
export BENCH_OUT="${BENCH_OUT:-.run/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
log "running on $(nproc) cores; every figure below is from this run"
RUST_LOG="${RUST_LOG:-warn}" "$BIN_DIR/bench" "${mode[@]}"
