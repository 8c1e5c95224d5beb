#!/usr/bin/env bash
# shellcheck disable=SC2317 # (functions called through wait_for and expect)
# Scenario 07: the consumer commits, then dies before its ack ("crash after commit").
#
# pay acks a delivery only after its outcome is committed. The window that matters is the one
# between the two: the payment and the inbox row are committed, the ack is not sent, and the
# process dies. RabbitMQ still holds the delivery unacked; when the connection goes it puts it
# back in the queue and delivers it again (marked redelivered). Without the inbox, pay would
# pay twice. With it, the copy's message id is already in pay's inbox: the copy is dropped as a
# duplicate, and counted on that message's row (inbox.duplicates).
#
# The teaching switch hold_ack makes pay's consumer do exactly that for the next delivery:
# commit, then drop its broker connection without acking, as a crashed process would.
# shellcheck source=scripts/scenarios/scenario.sh
. "$(dirname "$0")/scenario.sh"
stack_up

dup_of() { pay_value "SELECT coalesce(max(duplicates), -1) FROM inbox WHERE message_id = '$1'"; }
copy_dropped() { (($(dup_of "$1") >= 1)); }

D0="$(duplicates "$PAY_URL")"

step "pay's next delivery: commit, then drop the connection before the ack"
fault "$PAY_URL" hold_ack '{"count": 1}'

step "POST /buy: order publishes, pay commits the payment and its inbox row, and 'crashes'"
buy alice 7700
[[ -n "$ORDER_ID" ]] || die "no order: HTTP $STATUS $BODY"
MID="$(message_of "$ORDER_ID")"
wait_for 20 copy_dropped "$MID" || true

step "the broker redelivered the unacked message; pay's inbox dropped the copy"
show_order "$ORDER_ID"
note "pay_db.inbox duplicates of $MID: $(dup_of "$MID")"
note "pay's queue: $(queue_counts)"
wait_for 20 is_status "$ORDER_ID" PAID || true
D1="$(duplicates "$PAY_URL")"
note "pay's inbox dropped $((D1 - D0)) duplicate(s) since the scenario began"
admin "$PAY_URL" GET /faults
note "hold_ack now: $(jq -c '.switches[] | select(.switch == "hold_ack") | {active, remaining_count}' <<<"$BODY")"

expect "the hold_ack switch acted (its one count is used)" \
    equals "$(jq -r '.switches[] | select(.switch == "hold_ack") | .remaining_count' <<<"$BODY")" 0
expect "the message is processed in pay's inbox" \
    equals "$(pay_value "SELECT status FROM inbox WHERE message_id = '$MID'")" processed
expect "the redelivered copy was dropped as a duplicate (inbox.duplicates = 1)" equals "$(dup_of "$MID")" 1
expect "exactly one payment" equals "$(payments_of "$ORDER_ID")" 1
expect "the order is PAID" is_status "$ORDER_ID" PAID

conclude "a consumer that commits and dies before its ack gets the message again; the inbox drops the copy: one payment"
