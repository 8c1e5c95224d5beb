#!/usr/bin/env bash
# Scenario 07: the consumer commits, then dies before its ack (docs/scenarios.md, "07 The
# consumer dies between its commit and its ack"). The teaching switch hold_ack makes pay's
# consumer do exactly that for the next delivery: commit, then drop its broker connection
# without acking, as a crashed process would. RabbitMQ delivers the message again; pay's
# inbox drops the copy and counts it on that message's row (inbox.duplicates).
. "$(dirname "$0")/scenario.sh"

dup_of() { pay_value "SELECT coalesce(max(duplicates), -1) FROM inbox WHERE message_id = '$1'"; }
copy_dropped() { (($(dup_of "$1") >= 1)); }

D0="$(duplicates)"
step "pay's next delivery: commit, then drop the connection before the ack"
fault "$PAY_URL" hold_ack '{"count": 1}'

step "POST /buy: order publishes, pay commits the payment and its inbox row, and 'crashes'"
buy alice 7700
MID="$(message_of "$ORDER_ID")"
wait_until 20 copy_dropped "$MID" || true

step "the broker redelivered the unacked message; pay's inbox dropped the copy"
show_order "$ORDER_ID"
note "pay_db.inbox duplicates of $MID: $(dup_of "$MID")"
note "pay's queue: $(queue_counts)"
wait_until 20 is_status "$ORDER_ID" PAID || true
D1="$(duplicates)"
note "pay's inbox dropped $((D1 - D0)) duplicate(s) since the scenario began"
admin "$PAY_URL" GET /faults
note "hold_ack now: $(jq -c '.switches[] | select(.switch == "hold_ack") | {active, remaining_count}' <<<"$BODY")"

expect "the hold_ack switch acted (its one count is used)" \
    equals "$(jq -r '.switches[] | select(.switch == "hold_ack") | .remaining_count' <<<"$BODY")" 0
expect "the message is processed in pay's inbox" inbox_is "$MID" processed
expect "the redelivered copy was dropped as a duplicate (inbox.duplicates = 1)" equals "$(dup_of "$MID")" 1
expect_paid_once "$ORDER_ID"

conclude "a consumer that commits and dies before its ack gets the message again; the inbox drops the copy: one payment"
