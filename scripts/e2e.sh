#!/usr/bin/env bash
# End-to-end test of the running system: starts the stack with scripts/run-local.sh, talks to
# it through the gateway with curl, and stops it at exit whatever happens. Refuses to run when
# the stack of .run/ is already running (it would have to stop it).
#
# Prints `ok - ...` / `not ok - ...` per check, then one line `N passed, M failed`; exits
# non-zero when a check failed. On failure it prints the end of each service log.
#
# Environment: the services' variables (GATEWAY_ADDR, GATEWAY_MAX_BODY_BYTES, ...) as for
# run-local.sh; E2E_PAYMENT_DEADLINE_SECS (default 15): how long an order may take to settle.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PAYMENT_DEADLINE_SECS="${E2E_PAYMENT_DEADLINE_SECS:-15}"

# The test owns its state: its own databases, recreated on every run, and its own exchange
# and queues (removed by the broker when unused). Nothing a developer left in order_db,
# pay_db or the demo queues can change the outcome, and the test leaves them alone.
use_own_state lmt_e2e_order lmt_e2e_pay lmt.e2e.events e2e
admin_token_in "$RUN_DIR/admin-token"
GW="$(base_url "$(env_or_default GATEWAY_ADDR "$DEFAULT_GATEWAY_ADDR")")"
MAX_BODY_BYTES="$(env_or_default GATEWAY_MAX_BODY_BYTES "$DEFAULT_GATEWAY_MAX_BODY_BYTES")"

ensure_tool curl
ensure_tool jq

running="$(running_services | paste -sd, - || true)"
if [[ -n "$running" ]]; then
    die "the local stack is already running ($running); e2e starts and stops its own stack, so stop it first: scripts/run-local.sh stop"
fi

PASSED=0
FAILED=0
STARTED=0
FINISHED=0
SUMMARY_PRINTED=0
TMP="$(mktemp -d "${TMPDIR:-/tmp}/e2e.XXXXXX")"
touch -d "@$(($(date +%s) - 1))" "$TMP/t0"

# check DESCRIPTION DETAILS COMMAND...: ok when COMMAND succeeds.
check() {
    local desc="$1" details="$2"
    shift 2
    if "$@"; then ok "$desc"; else not_ok "$desc" "$details"; fi
}

# Stops the stack (and shows the logs when something failed), once.
finish() {
    ((FINISHED == 0)) || return 0
    FINISHED=1
    if ((FAILED > 0)); then
        # Only the logs written by this run, not those of an earlier one.
        print_log_tails 40 "$TMP/t0"
    fi
    if ((STARTED == 1)); then
        scripts/run-local.sh stop >/dev/null 2>&1 || printf 'warning: scripts/run-local.sh stop failed\n' >&2
    fi
    rm -rf "$TMP"
}

trap exit_with_summary EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# HTTP through the gateway

STATUS=000
BODY=""

# req and header (scripts/lib.sh) send to $GW and keep the headers in $TMP.

# field JQ_PATH: a field of the last response's JSON body (empty when absent or not JSON).
field() {
    jq -r "$1 // empty" <<<"$BODY" 2>/dev/null || true
}

# What the last response was, for a failure message.
got() {
    printf 'HTTP %s: %s' "$STATUS" "$(head -c 300 <<<"$BODY")"
}

buy() {
    local user="$1" amount="$2"
    shift 2
    req POST /order/buy -H 'content-type: application/json' \
        --data-binary "{\"user_id\":\"$user\",\"item\":\"e2e book\",\"amount_cents\":$amount}" "$@"
}

# balance USER: sets BALANCE to USER's balance in cents (empty when it cannot be read).
BALANCE=""
balance() {
    req GET "/pay/accounts/$1"
    BALANCE=""
    if [[ "$STATUS" == 200 ]]; then BALANCE="$(field .balance_cents)"; fi
}

# wait_order ID: polls the order until it leaves PENDING_PAYMENT or the deadline passes; the
# last answer is in STATUS/BODY.
wait_order() {
    local deadline=$((SECONDS + PAYMENT_DEADLINE_SECS))
    while :; do
        req GET "/order/orders/$1"
        if [[ "$STATUS" == 200 && "$(field .status)" != PENDING_PAYMENT ]]; then return 0; fi
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}

# expect_order_settled DESCRIPTION ID STATUS [FAILURE_REASON]
expect_order_settled() {
    local desc="$1" id="$2" want="$3" reason="${4:-}"
    if [[ -z "$id" ]]; then
        not_ok "$desc" "no order id"
        return
    fi
    wait_order "$id" || true
    if [[ "$STATUS" == 200 && "$(field .status)" == "$want" && "$(field .failure_reason)" == "$reason" ]]; then
        ok "$desc"
    else
        not_ok "$desc" "after ${PAYMENT_DEADLINE_SECS} s: $(got)"
    fi
}

# expect_error DESCRIPTION HTTP_STATUS CODE: the last response is that JSON error.
expect_error() {
    local desc="$1" want="$2" code="$3"
    if [[ "$STATUS" == "$want" && "$(field .error.code)" == "$code" && -n "$(field .error.message)" ]]; then
        ok "$desc"
    else
        not_ok "$desc" "want HTTP $want with error code $code, got $(got)"
    fi
}

# ---------------------------------------------------------------------------------------------
# The stack

ensure_services
drop_database "$ORDER_DATABASE_URL"
drop_database "$PAY_DATABASE_URL"

log "starting the stack (scripts/run-local.sh start)"
STARTED=1
if ! scripts/run-local.sh start >"$TMP/start.out"; then
    not_ok "the stack starts and becomes ready" "scripts/run-local.sh start failed"
    finish
    print_summary
    exit 1
fi
ok "the stack starts and becomes ready"

# ---------------------------------------------------------------------------------------------
# A paid order

amount=$((RANDOM % 900 + 100))
balance alice
before="$BALANCE"
check "alice's balance is readable through the gateway" "$(got)" test -n "$before"

buy alice "$amount"
order_id="$(field .order_id)"
check "POST /order/buy as alice answers 201 PENDING_PAYMENT with an order id" "$(got)" \
    test "$STATUS" == 201 -a -n "$order_id" -a -n "$(field .message_id)" -a "$(field .status)" == PENDING_PAYMENT

expect_order_settled "alice's order reaches PAID within ${PAYMENT_DEADLINE_SECS} s" "$order_id" PAID
check "GET /order/orders/{id} shows the order as bought" "$(got)" \
    test "$(field .user_id)" == alice -a "$(field .amount_cents)" == "$amount" -a "$(field .order_id)" == "$order_id"

req GET "/pay/payments/$order_id"
check "GET /pay/payments/{id} is COMPLETED for $amount cents" "$(got)" \
    test "$STATUS" == 200 -a "$(field .status)" == COMPLETED -a "$(field .amount_cents)" == "$amount" -a "$(field .order_id)" == "$order_id"

balance alice
after="$BALANCE"
if [[ -n "$before" && -n "$after" ]] && ((before - after == amount)); then
    ok "alice's balance dropped by exactly $amount cents"
else
    not_ok "alice's balance dropped by exactly $amount cents" "before=${before:-?} after=${after:-?}"
fi

# ---------------------------------------------------------------------------------------------
# Idempotency

key="e2e-$(date +%s)-$RANDOM$RANDOM"
idem_amount=$((RANDOM % 900 + 100))
buy alice "$idem_amount" -H "Idempotency-Key: $key"
first_id="$(field .order_id)"
first_replayed="$(header idempotent-replayed)"
check "a buy with an Idempotency-Key answers 201 (not a replay)" "$(got), idempotent-replayed=${first_replayed:-absent}" \
    test "$STATUS" == 201 -a -n "$first_id" -a "$first_replayed" != true

buy alice "$idem_amount" -H "Idempotency-Key: $key"
replayed="$(header idempotent-replayed)"
check "the same key and body again answers 201 with the same order id" "$(got), first order id $first_id" \
    test "$STATUS" == 201 -a -n "$first_id" -a "$(field .order_id)" == "$first_id"
check "the replay carries idempotent-replayed: true" "idempotent-replayed=${replayed:-absent}" \
    test "$replayed" == true

buy alice "$((idem_amount + 1))" -H "Idempotency-Key: $key"
expect_error "the same key with another amount answers 422" 422 idempotency_key_reused

# ---------------------------------------------------------------------------------------------
# Payments that fail

balance carol
carol_before="$BALANCE"
buy carol 500
carol_order="$(field .order_id)"
check "POST /order/buy as carol (no money) answers 201" "$(got)" test "$STATUS" == 201 -a -n "$carol_order"
expect_order_settled "carol's order ends PAYMENT_FAILED with insufficient_funds" "$carol_order" PAYMENT_FAILED insufficient_funds
req GET "/pay/payments/$carol_order"
check "carol's payment is FAILED with insufficient_funds" "$(got)" \
    test "$STATUS" == 200 -a "$(field .status)" == FAILED -a "$(field .failure_reason)" == insufficient_funds
balance carol
carol_after="$BALANCE"
check "carol's balance is unchanged" "before=${carol_before:-?} after=${carol_after:-?}" \
    test -n "$carol_before" -a "$carol_before" == "$carol_after"

buy nobody 500
nobody_order="$(field .order_id)"
check "POST /order/buy as an unknown user answers 201" "$(got)" test "$STATUS" == 201 -a -n "$nobody_order"
expect_order_settled "the unknown user's order ends PAYMENT_FAILED with unknown_user" "$nobody_order" PAYMENT_FAILED unknown_user

# ---------------------------------------------------------------------------------------------
# Client errors

req POST /order/buy -H 'content-type: application/json' --data-binary '{"user_id": "alice", "item":'
expect_error "malformed JSON answers 400 with a JSON error" 400 malformed_json

buy alice 0
expect_error "amount_cents 0 answers 422 validation_failed" 422 validation_failed

req GET "/order/orders/00000000-0000-0000-0000-000000000000"
expect_error "an unknown order answers 404" 404 not_found

# ---------------------------------------------------------------------------------------------
# Gateway

req GET /nope/anything
expect_error "an unknown prefix answers 404 no_route" 404 no_route
check "the gateway's own 404 carries x-request-id" "headers: $(tr -d '\r' <"$TMP/headers" | paste -sd' ' -)" \
    test -n "$(header x-request-id)"

# GATEWAY_INTERNAL_PATHS (default /healthz,/readyz,/admin,/internal,/metrics): a service's
# internal endpoints are not reachable from outside; the gateway's own /readyz is.
req GET /order/readyz
expect_error "a service's internal path (/order/readyz) answers 404 no_route" 404 no_route
req GET /order/metrics
expect_error "a service's /metrics (/order/metrics) answers 404 no_route" 404 no_route

# The admin API through the gateway (README, "Admin API"): with the bearer token only.
req GET /admin/pay/stats
expect_error "/admin/pay/stats without the admin token answers 401" 401 unauthorized
req GET /admin/pay/stats -H "Authorization: Bearer $ADMIN_TOKEN"
check "/admin/pay/stats with the admin token answers pay's stats" "$(got)" \
    test "$STATUS" == 200 -a "$(field '.outbox.dead')" != null

req GET /readyz
check "the gateway's /readyz shows each route's instances up" "$(got)" \
    test "$STATUS" == 200 -a "$(field '.instances.order[0].health')" == up -a "$(field '.instances.pay[0].health')" == up

head -c "$((MAX_BODY_BYTES + 1))" /dev/zero | tr '\0' 'a' >"$TMP/big"
req POST /order/buy -H 'content-type: application/json' --data-binary "@$TMP/big"
expect_error "a body of GATEWAY_MAX_BODY_BYTES+1 ($((MAX_BODY_BYTES + 1)) bytes) answers 413" 413 body_too_large
rm -f "$TMP/big"

request_id="e2e-$RANDOM$RANDOM"
req GET /pay/accounts/alice -H "x-request-id: $request_id"
check "a given x-request-id is echoed" "sent $request_id, got '$(header x-request-id)' ($(got))" \
    test "$(header x-request-id)" == "$request_id" -a "$STATUS" == 200

req GET /pay/accounts/alice
generated="$(header x-request-id)"
req GET /pay/accounts/alice
check "an x-request-id is generated when missing (and differs per request)" \
    "got '$generated' then '$(header x-request-id)'" \
    test -n "$generated" -a -n "$(header x-request-id)" -a "$generated" != "$(header x-request-id)"

# ---------------------------------------------------------------------------------------------
# pay down: the gateway answers 502, orders are still taken and are paid once pay is back

if scripts/run-local.sh stop-one pay >/dev/null 2>&1; then
    ok "pay stops (scripts/run-local.sh stop-one pay)"
else
    not_ok "pay stops (scripts/run-local.sh stop-one pay)" "stop-one failed"
fi

req GET /pay/accounts/alice
expect_error "with pay down, GET /pay/accounts/alice answers 502 bad_gateway" 502 bad_gateway

req GET /readyz
check "with pay down, the gateway's /readyz answers 503" "$(got)" test "$STATUS" == 503

buy alice 321
late_order="$(field .order_id)"
check "with pay down, POST /order/buy as alice still answers 201" "$(got)" test "$STATUS" == 201 -a -n "$late_order"

sleep 1
req GET "/order/orders/$late_order"
check "with pay down, the order stays PENDING_PAYMENT" "$(got)" \
    test "$STATUS" == 200 -a "$(field .status)" == PENDING_PAYMENT

if scripts/run-local.sh start-one pay >"$TMP/start-pay.out" 2>&1; then
    ok "pay starts again (scripts/run-local.sh start-one pay)"
else
    not_ok "pay starts again (scripts/run-local.sh start-one pay)" "$(tail -n 5 "$TMP/start-pay.out" | paste -sd' ' -)"
fi

expect_order_settled "the order bought while pay was down reaches PAID" "$late_order" PAID
req GET "/pay/payments/$late_order"
check "its payment is COMPLETED" "$(got)" test "$STATUS" == 200 -a "$(field .status)" == COMPLETED

# ---------------------------------------------------------------------------------------------

finish
print_summary
