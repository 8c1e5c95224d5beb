#!/usr/bin/env bash
# Scenario 15: an order's second message reaches pay before its first; pay parks it, then
# applies both in order (docs/scenarios.md, "15 Out of order: the early message parked").
. "$(dirname "$0")/scenario.sh"
fault "$ORDER_URL" pause_relay '{"seconds": 120}' && on_exit_do reset_faults
buy alice 900 && note "cancel: HTTP $(curl -sS -o /dev/null -w '%{http_code}' -X POST "$GW/order/orders/$ORDER_ID/cancel")"
row() { order_value "SELECT id FROM outbox WHERE aggregate_id = '$ORDER_ID' AND aggregate_seq = $1"; }
FIRST="$(row 1)" SECOND="$(row 2)" && step "OrderCancelled (#2) published by hand, before OrderCreated (#1)" && chaos publish --outbox-id "$SECOND"
expect "#2 is parked in pay's inbox, not applied" wait_until 10 inbox_is "$SECOND" parked
pay_sql "SELECT message_id, aggregate_seq, status FROM inbox WHERE aggregate_id = '$ORDER_ID'" && fault_off "$ORDER_URL" pause_relay
wait_until 20 is_status "$ORDER_ID" REFUNDED || true
step "after" && pay_sql "SELECT message_id, aggregate_seq, status, processed_at FROM inbox WHERE aggregate_id = '$ORDER_ID' ORDER BY processed_at"
expect "#1 then #2 applied: pay answered PaymentCompleted, then PaymentRefunded (not PaymentCancelled)" equals "$(pay_value "SELECT string_agg(status || ' ' || event_type, ', ' ORDER BY aggregate_seq) FROM inbox WHERE aggregate_id = '$ORDER_ID'") -> $(pay_value "SELECT string_agg(event_type, ' ' ORDER BY aggregate_seq) FROM outbox WHERE aggregate_id = '$ORDER_ID'")" "processed OrderCreated, processed OrderCancelled -> PaymentCompleted PaymentRefunded"
expect "the order is charged, then refunded once" equals "$(pay_value "SELECT count(*) FROM refunds WHERE order_id = '$ORDER_ID'")/$(order_value "SELECT status FROM orders WHERE id = '$ORDER_ID'")" "1/REFUNDED"
conclude "a message that arrives before its predecessor is parked, then applied after it, in order"
