#!/usr/bin/env bash
# The cluster run: starts the three-node cluster (scripts/cluster.sh), runs `chaos --cluster`
# (the services on quorum queues with the three nodes' addresses, orders through the gateway,
# then: stop the node most links are on, stop another, SIGKILL the leader of pay's queue,
# stop two of three at once), and stops the cluster whatever happened. The chaos binary's
# `--help` lists its CHAOS_* variables. SKIP_BUILD=1 runs the binaries already built.
#
#   scripts/cluster-test.sh            the release build (scripts/test.sh has just made it for chaos.sh)
#   scripts/cluster-test.sh --debug    the dev build
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

profile=(--release)
bin_dir="${CARGO_TARGET_DIR:-target}/release"
if [[ "${1:-}" == --debug ]]; then
    shift
    profile=()
    bin_dir="${CARGO_TARGET_DIR:-target}/debug"
fi
ensure_services
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build ${profile[*]} -p order -p pay -p gateway -p chaos -p cluster"
    cargo build "${profile[@]}" --quiet -p order -p pay -p gateway -p chaos -p cluster
fi
export CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}"
trap '"$bin_dir/cluster" stop' EXIT
"$bin_dir/cluster" start
"$bin_dir/chaos" --cluster "$@"
