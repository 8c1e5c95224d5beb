#!/usr/bin/env bash
# The driver the failure scenarios (scripts/scenarios/NN-*.sh) share: source it, do not run it.
#
# Each scenario runs against the scenarios' own stack (scripts/run-local.sh with their own
# ports, databases, exchange, queues, logs and pid files: .run/scenarios/), beside a
# developer's. When it is already running (all.sh starts it once for all of them) a scenario
# uses it and leaves it running; otherwise it starts it and stops it at exit. The services
# run with DEMO_FAULTS=1 (the teaching switches at /admin/faults), an ADMIN_TOKEN, and short
# retry delays, lease and reconciler intervals, so every recovery happens within seconds.
#
# A scenario prints what it does (`--- ...`), the rows it is about before and after (psql on
# each service's own database), and ends with `PASS: <invariant>` or `FAIL: <invariant>`
# (then a non-zero exit status); all.sh reads that last line.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || { echo "scripts/scenarios/scenario.sh: source it, do not run it" >&2 && exit 2; }
set -euo pipefail

SCENARIO="$(basename "$0" .sh)"
SCENARIOS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$SCENARIOS_DIR/../lib.sh"
cd "$LMT_ROOT"

own_stack scenarios "${SCENARIO_PORT_BASE:-19760}"
ORDER_URL="http://$ORDER_ADDR" PAY_URL="http://$PAY_ADDR"
# Recoveries in seconds, not minutes: retries, leases, reconnects and the reconciler.
export DEMO_FAULTS=1 OUTBOX_RETRY_BASE_MS=200 OUTBOX_RETRY_MAX_MS=1000 OUTBOX_CONFIRM_TIMEOUT_MS=1000
export OUTBOX_LEASE_MS=6000 INBOX_RETRY_BASE_MS=300 INBOX_RETRY_MAX_MS=1000 INBOX_MAX_ATTEMPTS=3
export AMQP_RECONNECT_BASE_MS=100 AMQP_RECONNECT_MAX_MS=1000 RECONCILER_INTERVAL_SECS=2 RECONCILER_PENDING_AFTER_SECS=8

# CLEANUPS: commands run at exit, last registered first (restore the broker, the database...).
TMP="$(mktemp -d "${TMPDIR:-/tmp}/scenario.XXXXXX")" FAILURES=() CLEANUPS=()
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
        ((rc != 0)) || rc=1
    fi
    exit "$rc"
}
trap scenario_exit EXIT
trap 'exit 130' INT TERM

# stack_up: the scenarios' stack is running (started here, and stopped at exit, when it was
# not; a service that a failed scenario left stopped is started again).
stack_up() {
    local name
    ensure_tool curl && ensure_tool jq && ensure_tool psql postgresql-client
    [[ -n "$(running_services)" ]] || { start_own_stack && return 0; } || die "the scenarios' stack did not start"
    for name in "${SERVICES[@]}"; do service_pid "$name" >/dev/null || restart_service "$name"; done
}

# reset_faults: every teaching switch off, on order and pay (between scenarios).
reset_faults() {
    local base switch
    for base in "$ORDER_URL" "$PAY_URL"; do
        for switch in pause_relay fail_handler lose_confirms drop_broker_connection stop_consumer deliver_twice hold_ack; do admin "$base" DELETE "/faults/$switch"; done
    done
}

# restart_service NAME: starts NAME again (after a kill), without building.
restart_service() { scripts/run-local.sh start-one "$1" >"$TMP/start-one.log" 2>&1 || die "$1 did not start again: $(cat "$TMP/start-one.log")"; }
# kill_service NAME: SIGKILL, as a crash would; waits until it is gone.
kill_service() {
    local pid
    pid="$(service_pid "$1")" || die "$1 is not running"
    kill -KILL "$pid"
    wait_until 10 pid_gone "$pid" || die "$1 (pid $pid) survived SIGKILL"
    rm -f "$(pid_file "$1")"
}

# stop_pay: pay stopped (SIGTERM); started again at exit if the scenario did not.
stop_pay() { on_exit_do "service_pid pay >/dev/null || restart_service pay" && scripts/run-local.sh stop-one pay >/dev/null 2>&1; }
# chaos ARGS...: the chaos tool (built with the services): what it does to the broker, a row published by hand.
chaos() { [[ -x "$BIN_DIR/chaos" ]] || { echo "$BIN_DIR/chaos is missing: ${BUILD[*]}" >&2 && return 1; } && "$BIN_DIR/chaos" "$@"; }
# rmq ARGS...: rabbitmqctl (as root when needed); the scenarios that use it need a local RabbitMQ.
rmq() { command -v rabbitmqctl >/dev/null || die "this scenario needs rabbitmqctl (a local RabbitMQ)" && as_root rabbitmqctl "$@"; }
# broker_start: RabbitMQ's app running again (the exit cleanup of the scenario that stops it).
broker_start() {
    local i
    for i in 1 2 3; do if rmq start_app >/dev/null 2>&1; then break; fi; sleep 2; done
    rmq await_startup --timeout 60 >/dev/null 2>&1
}

# queue_counts: pay's queue, ready and unacked messages (rabbitmqctl, when available).
queue_counts() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    rmq -q list_queues name messages_ready messages_unacknowledged 2>/dev/null |
        awk -v q="$PAY_QUEUE" '$1 == q { printf "ready=%s unacked=%s\n", $2, $3 }'
}
# queue_drained: pay's queue holds nothing (a quorum queue reports its counts every few seconds: wait_until it).
queue_drained() { [[ "$(queue_counts)" == "ready=0 unacked=0" ]]; }

# step TEXT: what the scenario does next.
step() { printf '\n--- %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# expect DESCRIPTION COMMAND...: an expectation of the invariant; a failed one makes it FAIL.
expect() {
    local desc="$1" && shift
    if "$@"; then printf '    ok: %s\n' "$desc"; else printf '    NOT OK: %s\n' "$desc" && FAILURES+=("$desc"); fi
}

# conclude INVARIANT: PASS when every expectation held, FAIL (exit 1) otherwise.
conclude() {
    SCENARIO_DONE=1
    ((${#FAILURES[@]} > 0)) || { printf '\nPASS: %s\n' "$1" && exit 0; }
    printf -- '\n----- last lines of the service logs -----\n'
    tail -n 15 "$(log_file order)" "$(log_file pay)" 2>/dev/null || true
    printf 'FAIL: %s (not: %s)\n' "$1" "$(printf '%s; ' "${FAILURES[@]}" | sed 's/; $//')"
    exit 1
}

# The databases (each service's own).
order_sql() { psql "$ORDER_DATABASE_URL" -X -q -P pager=off -c "$1"; }
pay_sql() { psql "$PAY_DATABASE_URL" -X -q -P pager=off -c "$1"; }
order_value() { psql "$ORDER_DATABASE_URL" -XtAq -c "$1"; }
pay_value() { psql "$PAY_DATABASE_URL" -XtAq -c "$1"; }

# show_order ORDER_ID: the order, its OrderCreated row, pay's inbox row and payment.
show_order() {
    local id="$1" mid
    mid="$(message_of "$id")"
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
message_of() { order_value "SELECT message_id FROM orders WHERE id = '$1'"; }
is_status() { [[ "$(order_value "SELECT status FROM orders WHERE id = '$1'")" == "$2" ]]; }
is_outbox() { [[ "$(order_value "SELECT status FROM outbox WHERE aggregate_id = '$1'")" == "$2" ]]; }
equals() { [[ "$1" == "$2" ]]; }
inbox_is() { [[ "$(pay_value "SELECT status FROM inbox WHERE message_id = '$1'")" == "$2" ]]; }

# expect_paid_once ORDER_ID [PREFIX]: the invariant most scenarios end with.
expect_paid_once() {
    expect "${2:-}the order is PAID" is_status "$1" PAID
    expect "${2:-}exactly one payment" equals "$(payments_of "$1")" 1
}

# after SECS ORDER_ID: waits (up to SECS) for the order to be PAID, then shows its rows.
after() { wait_until "$1" is_status "$2" PAID || true; step "after"; show_order "$2"; }
# try_buy USER AMOUNT: POST /order/buy through the gateway; sets STATUS, BODY and ORDER_ID
# (empty on failure).
try_buy() {
    STATUS="$(curl -sS -o "$TMP/body" -w '%{http_code}' --max-time 30 -X POST -H 'content-type: application/json' \
        --data-binary "{\"user_id\":\"$1\",\"item\":\"scenario $SCENARIO\",\"amount_cents\":$2}" "$GW/order/buy")" || STATUS=000
    BODY="$(cat "$TMP/body")"
    ORDER_ID="$(jq -r '.order_id // empty' <<<"$BODY" 2>/dev/null || true)"
    note "POST /order/buy {\"user_id\":\"$1\",\"amount_cents\":$2} -> HTTP $STATUS ${ORDER_ID:+order $ORDER_ID}"
}

# buy USER AMOUNT: try_buy; the scenario stops when no order was taken.
buy() { try_buy "$@"; [[ -n "$ORDER_ID" ]] || die "no order: HTTP $STATUS $BODY"; }
# admin SERVICE_URL METHOD PATH [JSON]: an admin request with the token; sets STATUS and BODY.
admin() {
    local args=(-H "authorization: Bearer $ADMIN_TOKEN")
    [[ -z "${4:-}" ]] || args+=(-H 'content-type: application/json' --data-binary "$4")
    STATUS="$(curl -sS -o "$TMP/admin" -w '%{http_code}' --max-time 10 -X "$2" "${args[@]}" "$1/admin$3" 2>/dev/null)" || STATUS=000
    BODY="$(cat "$TMP/admin")"
}

# fault SERVICE_URL SWITCH JSON: a teaching switch on; fault_off SERVICE_URL SWITCH: off (both die when refused).
fault() { toggle "$1" POST "$2" "$3" && note "switch $2 on: $(jq -c '{active, remaining_count, remaining_seconds, scenario}' <<<"$BODY")"; }
fault_off() { toggle "$1" DELETE "$2" && note "switch $2 off"; }
toggle() { admin "$1" "$2" "/faults/$3" "${4:-}" && [[ "$STATUS" == 200 ]] || die "$2 /admin/faults/$3 ${4:-}-> HTTP $STATUS $BODY"; }

# duplicates: the duplicates pay's inbox dropped since it started; dups_at_least N: N or more.
duplicates() { admin "$PAY_URL" GET /stats && jq -r '.inbox_since_start.duplicates' <<<"$BODY"; }
dups_at_least() { (($(duplicates) >= $1)); }
# dups_grew: pay's inbox dropped a duplicate since DUPS_BEFORE (the scenario sets it).
dups_grew() { dups_at_least $((DUPS_BEFORE + 1)); }

# A scenario script starts with its stack up (all.sh, which sources this too, starts it itself).
if [[ "$SCENARIO" == [0-9][0-9]-* ]]; then stack_up; fi
