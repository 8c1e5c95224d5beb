#!/usr/bin/env bash
# Scenario 13: a message lost outside the mechanism, repaired by the reconciler
# (docs/scenarios.md, "13 A message lost outside the mechanism: the reconciler"). pay's queue
# is purged by hand while pay is stopped, after the relay had (rightly) marked the message
# sent. order's reconciler asks pay about orders still pending after
# RECONCILER_PENDING_AFTER_SECS (8 s here, every 2 s): pay never saw this one, so its
# OrderCreated row goes back to pending and is published again, with the same message id.
. "$(dirname "$0")/scenario.sh"

step "stop pay (its queue stays, and keeps what is published to it)"
stop_pay

step "POST /buy: the message is published and confirmed: sent"
buy alice 1310
wait_until 15 is_outbox "$ORDER_ID" sent || true
SENT_AT="$(order_value "SELECT sent_at FROM outbox WHERE aggregate_id = '$ORDER_ID'")"
note "pay's queue: $(queue_counts)"

step "someone purges pay's queue by hand (rabbitmqctl purge_queue): the message is gone"
rmq -q purge_queue "$PAY_QUEUE" >/dev/null
note "pay's queue: $(queue_counts)"
show_order "$ORDER_ID"
expect "the lost message was marked sent (the mechanism did its part)" is_outbox "$ORDER_ID" sent
expect "pay never saw it" equals "$(pay_value "SELECT count(*) FROM inbox WHERE message_id = '$(message_of "$ORDER_ID")'")" 0
restart_service pay

step "the reconciler's next passes: pay answers UNKNOWN, the message is published again"
wait_until 40 is_status "$ORDER_ID" PAID || true
admin "$ORDER_URL" GET /reconciliation
note "GET /admin/reconciliation on order: $(jq -c '.since_start' <<<"$BODY" 2>/dev/null)"

step "after"
show_order "$ORDER_ID"
order_sql "SELECT status, attempts, sent_at FROM outbox WHERE aggregate_id = '$ORDER_ID'"
note "first sent at $SENT_AT"
expect "the message was published again (sent later than the first time)" \
    equals "$(order_value "SELECT status = 'sent' AND sent_at > '$SENT_AT' FROM outbox WHERE aggregate_id = '$ORDER_ID'")" t
expect_paid_once "$ORDER_ID"

conclude "a message lost outside the mechanism is found by the reconciler, published again, and paid once"
