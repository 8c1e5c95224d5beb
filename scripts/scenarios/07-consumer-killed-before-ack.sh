#!/usr/bin/env bash
# shellcheck disable=SC2317 # (functions called through wait_for and expect)
# Scenario 07: the consumer dies holding a delivery it has not acked.
#
# pay acks a delivery only after its outcome is committed. A consumer that dies before that
# leaves the delivery unacked, and RabbitMQ gives it back to the queue when the connection
# goes: the next consumer gets it (marked redelivered), and had the first one committed
# already, its inbox would drop the copy. The teaching switch stop_consumer makes pay's
# consumer hold its deliveries, unacked; the script then SIGKILLs pay and starts it again.
# shellcheck source=scripts/scenarios/scenario.sh
. "$(dirname "$0")/scenario.sh"
stack_up

step "pay's consumer stops taking deliveries (it holds what it receives, unacked)"
fault "$PAY_URL" stop_consumer '{"seconds": 600}'

step "POST /buy: order publishes, RabbitMQ delivers to pay, pay holds it"
buy alice 7700
[[ -n "$ORDER_ID" ]] || die "no order: HTTP $STATUS $BODY"
wait_for 15 is_outbox "$ORDER_ID" sent || true
sleep 1
show_order "$ORDER_ID"
note "pay's queue: $(queue_counts)"
expect "the message is the broker's (sent)" is_outbox "$ORDER_ID" sent
expect "pay has not processed it (no inbox row)" \
    equals "$(pay_value "SELECT count(*) FROM inbox WHERE message_id = '$(message_of "$ORDER_ID")'")" 0

step "SIGKILL pay before it acks"
kill_service pay
sleep 1
note "pay's queue: $(queue_counts)   (the unacked delivery is back, ready)"

step "start pay again: the delivery comes back (redelivered) and is processed"
restart_service pay
wait_for 20 is_status "$ORDER_ID" PAID || true

step "after"
show_order "$ORDER_ID"
note "pay's queue: $(queue_counts)"
expect "the order is PAID" is_status "$ORDER_ID" PAID
expect "exactly one payment" equals "$(payments_of "$ORDER_ID")" 1

conclude "a delivery not acked by a consumer that died is redelivered and processed once"
