#!/usr/bin/env bash
# The project's test command (docs/layout.md, "Tests"): the steps below, stopping at the first
# failing one; each step's duration at the end. Starts PostgreSQL and RabbitMQ when they are
# installed here and not running, and leaves them running; installs the tools it needs.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# SUMMARY: one line per step that ran (result, name, seconds); printed at exit, with the step
# that was interrupted (ABORT), if any.
SUMMARY=() CURRENT_STEP=""
summarize() { SUMMARY+=("$(printf '  %-6s %-45s %5ss' "$1" "$CURRENT_STEP" "$((SECONDS - CURRENT_START))")"); }
on_exit() {
    local rc=$?
    [[ -z "$CURRENT_STEP" ]] || summarize ABORT
    ((${#SUMMARY[@]} == 0)) || printf '\n==> summary\n%s\n' "$(printf '%s\n' "${SUMMARY[@]}")"
    if ((rc == 0)); then printf '\nall steps passed (%ss)\n' "$SECONDS"; fi
    [[ -z "$CURRENT_STEP" ]] || printf '\nFAILED: interrupted during step "%s"\n' "$CURRENT_STEP" >&2
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# step NAME COMMAND...: runs COMMAND (in a subshell, so a `die` inside ends only the step);
# stops everything at the first failure.
step() {
    local rc=0
    CURRENT_STEP="$1" CURRENT_START=$SECONDS
    shift
    printf '\n==> [%s] %s\n' "$CURRENT_STEP" "$*"
    ("$@") || rc=$?
    if ((rc == 0)); then summarize ok; else summarize FAIL; fi
    ((rc == 0)) || printf '\nFAILED: step "%s" (%s) exited with status %s\n' "$CURRENT_STEP" "$*" "$rc" >&2
    CURRENT_STEP=""
    ((rc == 0)) || exit "$rc"
}

preflight() {
    local running component
    running="$(running_services)"
    [[ -z "$running" ]] || die "the local stack is running ($running); the end-to-end step starts its own: scripts/run-local.sh stop"
    ensure_tool curl
    ensure_tool jq
    ensure_tool psql postgresql-client
    command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
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
step "ordering under faults, alone" cargo test -p system-tests --test api ordering -- --ignored
# A few seconds per section on the dev build just made: the benchmark keeps working.
step "benchmark, smoke (scripts/bench.sh --smoke)" scripts/bench.sh --smoke
step "end-to-end (scripts/e2e.sh)" scripts/e2e.sh
step "chaos, short (scripts/chaos.sh)" scripts/chaos.sh
step "API contract (scripts/contract-test.sh)" scripts/contract-test.sh
step "failure scenarios (scripts/scenarios/all.sh)" scripts/scenarios/all.sh
step "cluster, node faults (scripts/cluster-test.sh)" scripts/cluster-test.sh
step "browser (scripts/browser-test.sh)" scripts/browser-test.sh
step "docker compose, for real (scripts/compose-test.sh)" scripts/compose-test.sh
