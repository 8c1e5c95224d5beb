#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the main broker, with no Docker: three
# `rabbitmq-server` instances (lmt-a, lmt-b, lmt-c) with their own node names, ports and data
# folders, joined into one cluster. The work is done by the `cluster` binary (tools/cluster).
#
#   scripts/cluster.sh start            start A, B and C, join B and C to A, wait for three running nodes
#   scripts/cluster.sh stop             stop all three (their data stays: `start` brings the same cluster back)
#   scripts/cluster.sh status           each node's state and ports, and the running nodes the cluster sees
#   scripts/cluster.sh start-node X     start node X (a, b, c, lmt-a or lmt-a@localhost)
#   scripts/cluster.sh stop-node X      stop node X cleanly (rabbitmqctl stop)
#   scripts/cluster.sh kill-node X      SIGKILL node X's Erlang VM
#   scripts/cluster.sh leader QUEUE     the node that leads quorum queue QUEUE (virtual host /)
#   scripts/cluster.sh urls             the three nodes' AMQP URLs, comma-separated (for AMQP_URL)
#   scripts/cluster.sh wipe             stop all three and delete their data (the next start forms a new cluster)
#
# CLUSTER_DIR (default .run/cluster), CLUSTER_AMQP_PORT_BASE (5700), CLUSTER_MGMT_PORT_BASE
# (15700), CLUSTER_DIST_PORT_BASE (25700), START_DEADLINE_SECS (180), STOP_DEADLINE_SECS (60);
# `scripts/cluster.sh --help` says more. SKIP_BUILD=1 runs the binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release --quiet -p cluster
fi
CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}" exec "${CARGO_TARGET_DIR:-target}/release/cluster" "$@"
