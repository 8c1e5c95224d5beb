#!/usr/bin/env bash
# Shared by the failure scenarios (scripts/scenarios/NN-*.sh). Source it, do not run it:
#
#   . "$(dirname "$0")/scenario.sh"
#
# Each scenario runs against its own local stack (scripts/run-local.sh with its own ports,
# databases, exchange, queues, logs and pid files: .run/scenarios/), so it never collides
# with a developer's stack, scripts/e2e.sh or scripts/chaos.sh. When that stack is already
# running (scripts/scenarios/all.sh starts it once for all of them), a scenario uses it and
# leaves it running; otherwise it starts it and stops it at exit.
#
# The services run with DEMO_FAULTS=1 (the teaching switches at /admin/faults), an
# ADMIN_TOKEN, and short retry delays, lease and reconciler intervals, so that every
# recovery happens within seconds.
#
# A scenario prints what it does (`--- ...`), the rows it is about before and after (psql on
# the service's own database), and ends with `PASS: <invariant>` or `FAIL: <invariant>`
# (then a non-zero exit status). SCENARIO_RESULT, when set, is a file that gets one line:
# `PASS|FAIL<TAB>invariant` (all.sh's table).

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/scenarios/scenario.sh holds functions for the scenarios: source it, do not run it" >&2
    exit 2
fi

set -euo pipefail

SCENARIO="$(basename "$0" .sh)"
SCENARIOS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$SCENARIOS_DIR/../lib.sh"
cd "$LMT_ROOT"

# ---------------------------------------------------------------------------------------------
# The scenarios' own stack

own_stack scenarios "${SCENARIO_PORT_BASE:-19760}"
ORDER_URL="http://$ORDER_ADDR"
PAY_URL="http://$PAY_ADDR"
export DEMO_FAULTS=1
# Recoveries in seconds, not minutes: retries, leases, reconnects and the reconciler.
export OUTBOX_RETRY_BASE_MS=200 OUTBOX_RETRY_MAX_MS=1000
export OUTBOX_CONFIRM_TIMEOUT_MS=1000 OUTBOX_LEASE_MS=6000
export INBOX_RETRY_BASE_MS=300 INBOX_RETRY_MAX_MS=1000 INBOX_MAX_ATTEMPTS=3
export AMQP_RECONNECT_BASE_MS=100 AMQP_RECONNECT_MAX_MS=1000
export RECONCILER_INTERVAL_SECS=2 RECONCILER_PENDING_AFTER_SECS=8

TMP="$(mktemp -d "${TMPDIR:-/tmp}/scenario.XXXXXX")"
FAILURES=()
# Commands run at exit, last registered first (restore the broker, the database, ...).
CLEANUPS=()

on_exit_do() { CLEANUPS+=("$*"); }

scenario_exit() {
    local rc=$? i
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUPS[$i]}" || warn "cleanup failed: ${CLEANUPS[$i]}"
    done
    stop_own_stack
    rm -rf "$TMP"
    if [[ -z "${SCENARIO_DONE:-}" ]]; then
        printf 'FAIL: %s aborted (exit status %s)\n' "$SCENARIO" "$rc"
        record_result FAIL "aborted (exit status $rc)"
        ((rc != 0)) || rc=1
    fi
    exit "$rc"
}
trap scenario_exit EXIT
trap 'exit 130' INT TERM

record_result() {
    if [[ -n "${SCENARIO_RESULT:-}" ]]; then printf '%s\t%s\n' "$1" "$2" >"$SCENARIO_RESULT"; fi
}

# stack_up: the scenarios' stack is running (started here, and stopped at exit, when it was
# not; a service that a failed scenario left stopped is started again).
stack_up() {
    ensure_tool curl
    ensure_tool jq
    ensure_tool psql postgresql-client
    local name
    if [[ -z "$(running_services)" ]]; then
        start_own_stack || die "the scenarios' stack did not start"
        return 0
    fi
    for name in "${SERVICES[@]}"; do
        service_pid "$name" >/dev/null || restart_service "$name"
    done
}

# reset_faults: every teaching switch off, on order and pay (between scenarios).
reset_faults() {
    local base switch
    for base in "$ORDER_URL" "$PAY_URL"; do
        for switch in pause_relay fail_handler lose_confirms drop_broker_connection stop_consumer deliver_twice hold_ack; do
            admin "$base" DELETE "/faults/$switch"
        done
    done
}

# restart_service NAME: starts NAME again (after a kill), without building.
restart_service() {
    SKIP_BUILD=1 scripts/run-local.sh start-one "$1" >"$TMP/start-one.log" 2>&1 || {
        cat "$TMP/start-one.log" >&2
        die "$1 did not start again"
    }
}

# kill_service NAME: SIGKILL, as a crash would; waits until it is gone.
kill_service() {
    local pid
    pid="$(service_pid "$1")" || die "$1 is not running"
    kill -KILL "$pid"
    wait_until 10 pid_gone "$pid" || die "$1 (pid $pid) survived SIGKILL"
    rm -f "$(pid_file "$1")"
}
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Telling the story

# step TEXT: what the scenario does next.
step() { printf '\n--- %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# expect DESCRIPTION COMMAND...: an expectation of the invariant; a failed one makes it FAIL.
expect() {
    local desc="$1"
    shift
    if "$@"; then
        printf '    ok: %s\n' "$desc"
    else
        printf '    NOT OK: %s\n' "$desc"
        FAILURES+=("$desc")
    fi
}

# conclude INVARIANT: PASS when every expectation held, FAIL (exit 1) otherwise.
conclude() {
    SCENARIO_DONE=1
    printf '\n'
    if ((${#FAILURES[@]} == 0)); then
        printf 'PASS: %s\n' "$1"
        record_result PASS "$1"
        exit 0
    fi
    printf 'FAIL: %s (not: %s)\n' "$1" "$(printf '%s; ' "${FAILURES[@]}" | sed 's/; $//')"
    record_result FAIL "$1"
    printf -- '----- last lines of the service logs -----\n'
    tail -n 15 "$(log_file order)" "$(log_file pay)" 2>/dev/null || true
    exit 1
}

# ---------------------------------------------------------------------------------------------
# The databases (each service's own)

order_sql() { psql "$ORDER_DATABASE_URL" -X -q -P pager=off -c "$1"; }
pay_sql() { psql "$PAY_DATABASE_URL" -X -q -P pager=off -c "$1"; }
order_value() { psql "$ORDER_DATABASE_URL" -XtAq -c "$1"; }
pay_value() { psql "$PAY_DATABASE_URL" -XtAq -c "$1"; }

# show_order ORDER_ID: the order, its OrderCreated row, pay's inbox row and payment, pay's reply.
show_order() {
    local id="$1" mid
    mid="$(order_value "SELECT message_id FROM orders WHERE id = '$id'")"
    note "order_db.orders"
    order_sql "SELECT id, user_id, amount_cents, status, failure_reason FROM orders WHERE id = '$id'"
    note "order_db.outbox (OrderCreated)"
    order_sql "SELECT id, status, attempts, claim_token IS NOT NULL AS claimed, last_error FROM outbox WHERE aggregate_id = '$id'"
    note "pay_db.inbox"
    pay_sql "SELECT message_id, status, attempts, last_error FROM inbox WHERE message_id = '${mid:-00000000-0000-0000-0000-000000000000}'"
    note "pay_db.payments"
    pay_sql "SELECT id, status, amount_cents, failure_reason FROM payments WHERE order_id = '$id'"
}

payments_of() { pay_value "SELECT count(*) FROM payments WHERE order_id = '$1'"; }
order_status() { order_value "SELECT status FROM orders WHERE id = '$1'"; }
message_of() { order_value "SELECT message_id FROM orders WHERE id = '$1'"; }
outbox_status() { order_value "SELECT status FROM outbox WHERE aggregate_id = '$1'"; }

# ---------------------------------------------------------------------------------------------
# HTTP

STATUS=000
BODY=""

# try_buy USER AMOUNT: POST /order/buy through the gateway; sets ORDER_ID (empty on failure).
try_buy() {
    req POST /order/buy -H 'content-type: application/json' \
        --data-binary "{\"user_id\":\"$1\",\"item\":\"scenario $SCENARIO\",\"amount_cents\":$2}"
    ORDER_ID="$(jq -r '.order_id // empty' <<<"$BODY" 2>/dev/null || true)"
    note "POST /order/buy {\"user_id\":\"$1\",\"amount_cents\":$2} -> HTTP $STATUS ${ORDER_ID:+order $ORDER_ID}"
}

# buy USER AMOUNT: try_buy; the scenario stops when no order was taken.
buy() {
    try_buy "$@"
    [[ -n "$ORDER_ID" ]] || die "no order: HTTP $STATUS $BODY"
}

# admin SERVICE_URL METHOD PATH [JSON]: an admin request with the token; sets STATUS and BODY.
admin() {
    local base="$1" method="$2" path="$3" data="${4:-}"
    local -a args=(-H "authorization: Bearer $ADMIN_TOKEN")
    if [[ -n "$data" ]]; then args+=(-H 'content-type: application/json' --data-binary "$data"); fi
    STATUS="$(curl -sS -o "$TMP/admin" -w '%{http_code}' --max-time 10 -X "$method" "${args[@]}" \
        "$base/admin$path" 2>/dev/null)" || STATUS=000
    BODY="$(cat "$TMP/admin")"
}

# fault SERVICE_URL SWITCH JSON: turns a teaching switch on (dies when refused).
fault() {
    admin "$1" POST "/faults/$2" "$3"
    [[ "$STATUS" == 200 ]] || die "POST /admin/faults/$2 $3 -> HTTP $STATUS $BODY"
    note "switch $2 on: $(jq -c '{active, remaining_count, remaining_seconds, scenario}' <<<"$BODY")"
}

fault_off() {
    admin "$1" DELETE "/faults/$2"
    [[ "$STATUS" == 200 ]] || die "DELETE /admin/faults/$2 -> HTTP $STATUS $BODY"
    note "switch $2 off"
}

# duplicates SERVICE_URL: duplicates the service's inbox dropped since it started.
duplicates() {
    admin "$1" GET /stats
    jq -r '.inbox_since_start.duplicates' <<<"$BODY"
}

# wait_for SECS COMMAND...: polls COMMAND until it succeeds (false after SECS).
wait_for() { wait_until "$@"; }

# expect_paid_once ORDER_ID [PREFIX]: the invariant most scenarios end with.
expect_paid_once() {
    expect "${2:-}the order is PAID" is_status "$1" PAID
    expect "${2:-}exactly one payment" equals "$(payments_of "$1")" 1
}

is_status() { [[ "$(order_status "$1")" == "$2" ]]; }
is_outbox() { [[ "$(outbox_status "$1")" == "$2" ]]; }
equals() { [[ "$1" == "$2" ]]; }

# queue_counts: pay's queue, ready and unacked messages (rabbitmqctl, when available).
queue_counts() {
    if command -v rabbitmqctl >/dev/null 2>&1; then
        as_root rabbitmqctl -q list_queues name messages_ready messages_unacknowledged 2>/dev/null |
            awk -v q="$PAY_QUEUE" '$1 == q { printf "ready=%s unacked=%s\n", $2, $3 }'
    fi
}

# rmq ARGS...: rabbitmqctl (as root when needed).
rmq() { as_root rabbitmqctl "$@"; }

# broker_start: RabbitMQ's app running again (the EXIT trap of the scenarios that stop it).
broker_start() {
    local i
    for i in 1 2 3; do
        if rmq start_app >/dev/null 2>&1; then
            timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
            return 0
        fi
        sleep 2
    done
    return 1
}

# A scenario script starts with its stack up (all.sh, which sources this too, starts it itself).
if [[ "$SCENARIO" == [0-9][0-9]-* ]]; then stack_up; fi
