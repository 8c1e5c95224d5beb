#!/usr/bin/env bash
# The chaos run: the chaos binary (tools/chaos) starts two order and two pay instances and the
# gateway as its own processes, kills, restarts and cuts them off under load, then checks the
# invariants and prints `N passed, M failed`. Its module doc (and `scripts/chaos.sh --help`)
# lists the faults, the checks and the CHAOS_* variables.
#
#   scripts/chaos.sh            short run (CI): every fault kind once, about 1.5 minutes
#   scripts/chaos.sh --long     long run: 20,000 orders, every fault kind at least 3 times
#
# SKIP_BUILD=1 runs the release binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_services
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --quiet -p order -p pay -p gateway -p chaos
exec "${CARGO_TARGET_DIR:-target}/release/chaos" "$@"
