#!/usr/bin/env bash
# The project's test command: formatting, lints, the cargo test suite (which talks to the real
# PostgreSQL and RabbitMQ), the benchmark's smoke run (scripts/bench.sh --smoke), the end-to-end
# test of the running stack (scripts/e2e.sh), the short chaos run (scripts/chaos.sh),
# schemathesis against the running stack (scripts/contract-test.sh), the failure scenarios
# (scripts/scenarios/all.sh), the node faults on a three-node RabbitMQ cluster
# (scripts/cluster-test.sh), the dashboard in headless Chromium (scripts/browser-test.sh) and
# the real docker compose run (scripts/compose-test.sh).
#
# Starts PostgreSQL and RabbitMQ when they are installed here and not running, and leaves them
# running. Installs the tools it needs (curl, jq, psql, rustfmt, clippy) when missing. Stops at
# the first failing step and says which one; prints each step's duration at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

STEP_NAMES=()
STEP_RESULTS=()
STEP_SECS=()
CURRENT_STEP=""
CURRENT_START=0

summary() {
    local i
    printf '\n==> summary\n'
    for i in "${!STEP_NAMES[@]}"; do
        printf '  %-6s %-45s %5ss\n' "${STEP_RESULTS[$i]}" "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}"
    done
}

on_exit() {
    local rc=$?
    if [[ -n "$CURRENT_STEP" ]]; then
        # Interrupted in the middle of a step.
        STEP_NAMES+=("$CURRENT_STEP")
        STEP_RESULTS+=("ABORT")
        STEP_SECS+=("$((SECONDS - CURRENT_START))")
    fi
    if ((${#STEP_NAMES[@]} > 0)); then summary; fi
    if ((rc == 0)); then
        printf '\nall steps passed (%ss)\n' "$SECONDS"
    elif [[ -n "$CURRENT_STEP" ]]; then
        printf '\nFAILED: interrupted during step "%s"\n' "$CURRENT_STEP" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# step NAME COMMAND...: runs COMMAND (in a subshell, so a `die` inside ends only the step);
# stops everything at the first failure.
step() {
    local name="$1" rc=0
    shift
    printf '\n==> [%s] %s\n' "$name" "$*"
    CURRENT_STEP="$name"
    CURRENT_START=$SECONDS
    ("$@") || rc=$?
    STEP_NAMES+=("$name")
    STEP_SECS+=("$((SECONDS - CURRENT_START))")
    CURRENT_STEP=""
    if ((rc != 0)); then
        STEP_RESULTS+=("FAIL")
        printf '\nFAILED: step "%s" (%s) exited with status %s\n' "$name" "$*" "$rc" >&2
        exit "$rc"
    fi
    STEP_RESULTS+=("ok")
}

preflight() {
    local running
    running="$(running_services | paste -sd, - || true)"
    [[ -z "$running" ]] ||
        die "the local stack is running ($running); the end-to-end step starts its own: scripts/run-local.sh stop"
    ensure_tool curl
    ensure_tool jq
    ensure_tool psql postgresql-client
    command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null 2>&1 || die "cargo $component is missing and rustup is not available"
            log "installing the $component component"
            rustup component add "$component"
        fi
    done
}

step "tools and preflight checks" preflight
step "PostgreSQL and RabbitMQ are up" ensure_services
step "cargo fmt" cargo fmt --all -- --check
step "model check (scripts/model-check.sh)" scripts/model-check.sh
step "docker-compose config" scripts/compose-test.sh config
# What a crate must not pull in: the gateway shares only `common` (no database driver, no
# broker client); the message table is the product, usable without a web framework or a CLI.
crate_lacks() {
    local crate="$1" pattern="$2" found
    found="$(cargo tree -p "$crate" -e normal --prefix none | grep -E "^($pattern) " | sort -u || true)"
    [[ -z "$found" ]] || die "$crate depends on: $found"
}

step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "gateway: neither sqlx nor lapin" crate_lacks gateway 'sqlx|lapin'
step "message-table: neither axum nor clap" crate_lacks message-table 'axum|clap'
step "cargo test" cargo test --workspace
# A few seconds per section on the dev build just made: the benchmark keeps working.
step "benchmark, smoke (scripts/bench.sh --smoke)" scripts/bench.sh --smoke
step "end-to-end (scripts/e2e.sh)" scripts/e2e.sh
step "chaos, short (scripts/chaos.sh)" scripts/chaos.sh
step "API contract (scripts/contract-test.sh)" scripts/contract-test.sh
step "failure scenarios (scripts/scenarios/all.sh)" scripts/scenarios/all.sh
step "cluster, node faults (scripts/cluster-test.sh)" scripts/cluster-test.sh
step "browser (scripts/browser-test.sh)" scripts/browser-test.sh
step "docker compose, for real (scripts/compose-test.sh)" scripts/compose-test.sh
