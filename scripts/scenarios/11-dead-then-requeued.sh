#!/usr/bin/env bash
# Scenario 11: attempts exhausted, the message is dead, an operator requeues it.
#
# Retrying forever hides a real problem and keeps burning work. After INBOX_MAX_ATTEMPTS
# runs (3 here) a failing message is `dead` with its last error: nothing retries it, and
# nothing is lost either. An operator looks at GET /admin/inbox/dead, fixes the cause, and
# puts it back with POST /admin/inbox/{id}/requeue; the retry sweeper runs it again. The
# teaching switch fail_handler makes all 3 runs fail.
. "$(dirname "$0")/scenario.sh"

step "pay's handler will fail its next $INBOX_MAX_ATTEMPTS runs (INBOX_MAX_ATTEMPTS=$INBOX_MAX_ATTEMPTS)"
fault "$PAY_URL" fail_handler "{\"count\": $INBOX_MAX_ATTEMPTS}"

step "POST /buy"
buy alice 1110
MID="$(message_of "$ORDER_ID")"
is_dead() { [[ "$(pay_value "SELECT status FROM inbox WHERE message_id = '$MID'")" == dead ]]; }
wait_for 20 is_dead || true

step "attempts exhausted"
show_order "$ORDER_ID"
admin "$PAY_URL" GET /inbox/dead
note "GET /admin/inbox/dead on pay: $(jq -c --arg id "$MID" '[.dead[] | select(.message_id == $id) | {message_id, status, attempts, last_error}]' <<<"$BODY")"
expect "the message is dead after $INBOX_MAX_ATTEMPTS attempts" \
    equals "$(pay_value "SELECT status || '/' || attempts FROM inbox WHERE message_id = '$MID'")" "dead/$INBOX_MAX_ATTEMPTS"
expect "nothing was paid" equals "$(payments_of "$ORDER_ID")" 0
expect "the order waits (PENDING_PAYMENT)" is_status "$ORDER_ID" PENDING_PAYMENT

step "the operator requeues it: POST /admin/inbox/$MID/requeue on pay"
admin "$PAY_URL" POST "/inbox/$MID/requeue"
note "HTTP $STATUS $BODY"
expect "the requeue is accepted" equals "$STATUS" 200
wait_for 20 is_status "$ORDER_ID" PAID || true

step "after"
show_order "$ORDER_ID"
expect "the message is processed" \
    equals "$(pay_value "SELECT status FROM inbox WHERE message_id = '$MID'")" processed
expect_paid_once "$ORDER_ID"

conclude "a message whose attempts are exhausted is dead, visible, and paid once after an operator requeues it"
