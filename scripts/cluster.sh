#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the main broker, with no Docker (lmt-a,
# lmt-b, lmt-c: own node names, ports and data folders, joined into one cluster), run by the
# `cluster` binary (tools/cluster). `scripts/cluster.sh --help` lists its commands (start, stop,
# status, start-node X, stop-node X, kill-node X, leader QUEUE, urls, wipe) and its variables;
# docs/cluster.md shows them in use. SKIP_BUILD=1 runs the binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --quiet -p cluster
CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}" exec "${CARGO_TARGET_DIR:-target}/release/cluster" "$@"
