#!/usr/bin/env bash
# The cluster run (docs/cluster.md): starts the three-node cluster, runs `chaos --cluster` (the
# services on quorum queues with the three nodes' addresses, orders through the gateway, four node
# faults; `chaos --help` lists its CHAOS_* variables) and stops the cluster whatever happened.
# RUN_LOCAL_PROFILE=dev runs the dev build; SKIP_BUILD=1 the binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_services
[[ "${SKIP_BUILD:-0}" == 1 ]] || "${BUILD[@]}" --quiet -p order -p pay -p gateway -p chaos -p cluster
export CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}"
trap '"$BIN_DIR/cluster" stop' EXIT
"$BIN_DIR/cluster" start
"$BIN_DIR/chaos" --cluster "$@"
