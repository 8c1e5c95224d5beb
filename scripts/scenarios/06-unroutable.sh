#!/usr/bin/env bash
# Scenario 06: an unroutable message (no queue bound to its routing key).
#
# RabbitMQ confirms a message that no queue takes, and drops it, unless it is published
# `mandatory`: then it first returns it (basic.return). The relay publishes every message
# mandatory and never marks a returned one sent; it retries with backoff. The script stops
# pay and deletes pay's queue (so nothing is bound to order.created), buys, shows the row
# pending with "returned ... NO_ROUTE", then starts pay, which declares and binds its queue
# again: the next retry is routed, and the order is paid once.
. "$(dirname "$0")/scenario.sh"
command -v rabbitmqctl >/dev/null 2>&1 || die "this scenario needs rabbitmqctl (a local RabbitMQ)"

step "stop pay and delete its queue $PAY_QUEUE: no queue is bound to order.created"
on_exit_do "service_pid pay >/dev/null || restart_service pay"
SKIP_BUILD=1 scripts/run-local.sh stop-one pay >/dev/null 2>&1
rmq -q delete_queue "$PAY_QUEUE" >/dev/null

step "POST /buy: published mandatory, returned by the broker"
buy alice 6600
returned() { [[ "$(order_value "SELECT count(*) FROM outbox WHERE aggregate_id = '$ORDER_ID' AND attempts >= 2 AND last_error LIKE '%unroutable%'")" == 1 ]]; }
wait_for 15 returned || true

step "while no queue is bound"
show_order "$ORDER_ID"
expect "the returned message is not marked sent (pending)" is_outbox "$ORDER_ID" pending
expect "it was returned as unroutable at least twice" returned

step "start pay: it declares its queue and binds it; the next retry is routed"
restart_service pay
wait_for 20 is_status "$ORDER_ID" PAID || true

step "after"
show_order "$ORDER_ID"
expect "the message is sent" is_outbox "$ORDER_ID" sent
expect_paid_once "$ORDER_ID"

conclude "an unroutable message is returned (mandatory), never marked sent, and delivered once a queue is bound"
