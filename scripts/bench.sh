#!/usr/bin/env bash
# Benchmarks, measured side by side in one run on the local PostgreSQL and RabbitMQ:
#   1. relay throughput: one confirm awaited per message vs this project's pipelined window;
#   2. end-to-end latency, order commit → PAID, with no backlog;
#   3. end-to-end throughput under concurrent POST /buy;
#   4. gateway overhead: GET /orders/{id} straight to order vs through the gateway.
# It reports figures; it asserts nothing. Sizes (defaults in parentheses):
#   BENCH_ROUNDS (3) BENCH_MESSAGES (3000) BENCH_SEQUENTIAL_ORDERS (200)
#   BENCH_ORDERS (2000) BENCH_CONCURRENCY (16) BENCH_GATEWAY_REQUESTS (5000)
# BENCH_SECTIONS (relay,latency,throughput,gateway) picks sections, e.g. BENCH_SECTIONS=gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_services
log "building the benchmark (release)"
cargo build --release --quiet -p system-tests --bin bench
log "running on $(nproc) cores; every figure below is from this run"
RUST_LOG="${RUST_LOG:-warn}" "${CARGO_TARGET_DIR:-target}/release/bench"
