#!/usr/bin/env bash
# Scenario 14: a paid order cancelled and refunded once, through the same outbox and inbox
# (docs/scenarios.md, "14 Cancel after payment: the refund"); money is conserved.
. "$(dirname "$0")/scenario.sh"
balance() { pay_value "SELECT balance_cents FROM accounts WHERE user_id = 'alice'"; }
BEFORE="$(balance)" && buy alice 1400 && after 20 "$ORDER_ID" && expect_paid_once "$ORDER_ID"
step "POST /order/orders/$ORDER_ID/cancel, twice with one Idempotency-Key"
for _ in 1 2; do note "HTTP $(curl -sS -o "$TMP/body" -w '%{http_code}' -X POST -H "idempotency-key: undo-$ORDER_ID" "$GW/order/orders/$ORDER_ID/cancel") $(cat "$TMP/body")"; done
wait_until 20 is_status "$ORDER_ID" REFUNDED || true
order_sql "SELECT event_type, status, attempts FROM outbox WHERE aggregate_id = '$ORDER_ID' ORDER BY created_at"
expect "the order is REFUNDED" is_status "$ORDER_ID" REFUNDED
expect "one refund of 1400" equals "$(pay_value "SELECT count(*) || '/' || sum(amount_cents) FROM refunds WHERE order_id = '$ORDER_ID'")" "1/1400"
expect "alice's balance is back where it was" equals "$(balance)" "$BEFORE"
conclude "a cancelled paid order is refunded once, through the same outbox and inbox; money is conserved"
