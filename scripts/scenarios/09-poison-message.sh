#!/usr/bin/env bash
# Scenario 09: a poison message, one that can never be processed (docs/scenarios.md, "09 A
# poison message"). The script publishes a message whose body is not JSON straight to pay's
# routing key (the chaos tool's `poison` command): pay's inbox records it `dead` with its
# reason and acks it; then it buys, and the next order is paid as usual.
. "$(dirname "$0")/scenario.sh"

step "publish one message whose body is not JSON to order.created (pay's queue)"
chaos poison --count 1 --out "$TMP/poison.ids" 2>"$TMP/poison.log" || die "could not publish the poison message: $(cat "$TMP/poison.log")"
POISON_ID="$(head -n1 "$TMP/poison.ids")"
note "poison message id $POISON_ID"
wait_until 15 inbox_is "$POISON_ID" dead || true

step "pay's inbox: the poison message"
pay_sql "SELECT message_id, status, attempts, last_error, length(raw_body) AS raw_bytes, payload IS NULL AS unparsed
         FROM inbox WHERE message_id = '$POISON_ID'"
admin "$PAY_URL" GET /inbox/dead
note "GET /admin/inbox/dead on pay lists it: $(jq -c --arg id "$POISON_ID" '[.dead[] | select(.message_id == $id) | {message_id, last_error}]' <<<"$BODY" 2>/dev/null)"
wait_until 15 queue_drained || true
note "pay's queue: $(queue_counts)"
expect "it is recorded dead, with its reason" inbox_is "$POISON_ID" dead
expect "it was acked (no message waiting in pay's queue)" queue_drained

step "POST /buy: the next message is not blocked by it"
buy alice 990
after 20 "$ORDER_ID"
expect_paid_once "$ORDER_ID" "the next message: "

conclude "a poison message is recorded dead with its reason, acked, and does not block the next message"
