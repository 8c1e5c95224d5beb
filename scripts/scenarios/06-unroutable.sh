#!/usr/bin/env bash
# Scenario 06: an unroutable message, no queue bound to its routing key (docs/scenarios.md, "06
# An unroutable message (no queue bound)"). The script stops pay and deletes pay's queue,
# buys, shows the row pending with "returned ... NO_ROUTE" (published mandatory), then
# starts pay, which declares and binds its queue again: the next retry is routed.
. "$(dirname "$0")/scenario.sh"

step "stop pay and delete its queue $PAY_QUEUE: no queue is bound to order.created"
stop_pay
rmq -q delete_queue "$PAY_QUEUE" >/dev/null

step "POST /buy: published mandatory, returned by the broker"
buy alice 6600
returned() { [[ "$(order_value "SELECT count(*) FROM outbox WHERE aggregate_id = '$ORDER_ID' AND attempts >= 2 AND last_error LIKE '%unroutable%'")" == 1 ]]; }
wait_until 15 returned || true

step "while no queue is bound"
show_order "$ORDER_ID"
expect "the returned message is not marked sent (pending)" is_outbox "$ORDER_ID" pending
expect "it was returned as unroutable at least twice" returned

step "start pay: it declares its queue and binds it; the next retry is routed"
restart_service pay
after 20 "$ORDER_ID"
expect "the message is sent" is_outbox "$ORDER_ID" sent
expect_paid_once "$ORDER_ID"

conclude "an unroutable message is returned (mandatory), never marked sent, and delivered once a queue is bound"
