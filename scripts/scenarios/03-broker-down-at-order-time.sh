#!/usr/bin/env bash
# Scenario 03: the broker is down when the order is taken (docs/scenarios.md, "03 The broker is
# down when the order is taken"). The script stops RabbitMQ's app itself (`rabbitmqctl
# stop_app`, node-wide: other users of this broker notice; the teaching switch closest to it,
# drop_broker_connection, cuts the service's own connections only), and its exit cleanup
# always starts it again.
. "$(dirname "$0")/scenario.sh"

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
after 30 "$ORDER_ID"
expect "its message is sent" is_outbox "$ORDER_ID" sent
expect_paid_once "$ORDER_ID"

conclude "an order taken while the broker is down is accepted at once and paid once the broker is back"
