#!/usr/bin/env bash
# The cluster run: starts the three-node cluster (scripts/cluster.sh), runs `chaos --cluster`
# (the services on quorum queues with the three nodes' addresses, orders through the gateway,
# then: stop the node most links are on, stop another, SIGKILL the leader of pay's queue,
# stop two of three at once), and stops the cluster whatever happened. The chaos binary's
# `--help` lists its CHAOS_* variables. SKIP_BUILD=1 runs the release binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_services
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release -p order -p pay -p gateway -p chaos -p cluster"
    cargo build --release --quiet -p order -p pay -p gateway -p chaos -p cluster
fi
export CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}"
trap 'SKIP_BUILD=1 scripts/cluster.sh stop' EXIT
SKIP_BUILD=1 scripts/cluster.sh start
"${CARGO_TARGET_DIR:-target}/release/chaos" --cluster "$@"
