#!/usr/bin/env bash
# Scenario 11: attempts exhausted, the message is dead, an operator requeues it
# (docs/scenarios.md, "11 Attempts exhausted, dead, requeued"). The teaching switch
# fail_handler makes all INBOX_MAX_ATTEMPTS (3) runs fail: the message is `dead`, listed at
# GET /admin/inbox/dead; POST /admin/inbox/{id}/requeue puts it back and it is paid once.
. "$(dirname "$0")/scenario.sh"

step "pay's handler will fail its next $INBOX_MAX_ATTEMPTS runs (INBOX_MAX_ATTEMPTS=$INBOX_MAX_ATTEMPTS)"
fault "$PAY_URL" fail_handler "{\"count\": $INBOX_MAX_ATTEMPTS}"

step "POST /buy"
buy alice 1110
MID="$(message_of "$ORDER_ID")"
wait_until 20 inbox_is "$MID" dead || true

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
after 20 "$ORDER_ID"
expect "the message is processed" inbox_is "$MID" processed
expect_paid_once "$ORDER_ID"

conclude "a message whose attempts are exhausted is dead, visible, and paid once after an operator requeues it"
