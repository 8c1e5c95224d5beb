#!/usr/bin/env bash
# Scenario 03: the broker is down when the order is taken.
#
# /buy never touches RabbitMQ: it commits the order and its message in one transaction and
# answers 201. The relay connects first and claims nothing without a broker, so the outage
# burns no attempts; when RabbitMQ is back the relay and the consumers reconnect (backoff up
# to AMQP_RECONNECT_MAX_MS) and the order is paid. The teaching switch closest to this is
# drop_broker_connection (the service's own connections only); this script stops RabbitMQ's
# app itself (`rabbitmqctl stop_app`, node-wide: other users of this broker notice), and its
# exit trap always starts it again.
. "$(dirname "$0")/scenario.sh"
command -v rabbitmqctl >/dev/null 2>&1 || die "this scenario needs rabbitmqctl (a local RabbitMQ)"

step "stop RabbitMQ (rabbitmqctl stop_app)"
on_exit_do "broker_start || warn 'start RabbitMQ again by hand: rabbitmqctl start_app'"
rmq stop_app >/dev/null
note "order /readyz: $(curl -s --max-time 3 "$ORDER_URL/readyz" | jq -c .checks 2>/dev/null || echo 'no answer')"

step "POST /buy while the broker is down"
buy alice 3300
expect "the order is taken (HTTP 201) although the broker is down" equals "$STATUS" 201
sleep 2

step "while the broker is down"
show_order "$ORDER_ID"
expect "its message is pending" is_outbox "$ORDER_ID" pending
expect "no publish attempt was burnt (attempts 0)" \
    equals "$(order_value "SELECT attempts FROM outbox WHERE aggregate_id = '$ORDER_ID'")" 0
expect "the order waits (PENDING_PAYMENT)" is_status "$ORDER_ID" PENDING_PAYMENT

step "start RabbitMQ again (rabbitmqctl start_app); the relay and the consumers reconnect"
broker_start || die "rabbitmqctl start_app failed"
wait_for 30 is_status "$ORDER_ID" PAID || true

step "after"
show_order "$ORDER_ID"
expect "the order is PAID" is_status "$ORDER_ID" PAID
expect "its message is sent" is_outbox "$ORDER_ID" sent
expect "exactly one payment" equals "$(payments_of "$ORDER_ID")" 1

conclude "an order taken while the broker is down is accepted at once and paid once the broker is back"
