#!/usr/bin/env bash
# Scenario 09: a poison message (one that can never be processed).
#
# A consumer that nacks an unreadable message with requeue gets it back at once, forever,
# and the messages behind it wait. pay's inbox records an unreadable delivery (not JSON, no
# message id, wrong content type, too large) `dead` with its reason and raw body, acks it,
# and goes on; an operator sees it at /admin/inbox/dead. The script publishes a message whose
# body is not JSON straight to pay's routing key (the chaos tool's `poison` command), then
# buys: the next order is paid as usual.
. "$(dirname "$0")/scenario.sh"

CHAOS="${CARGO_TARGET_DIR:-target}/release/chaos"
[[ -x "$CHAOS" ]] || die "$CHAOS is missing: cargo build --release --bins"

step "publish one message whose body is not JSON to order.created (pay's queue)"
"$CHAOS" poison --count 1 --out "$TMP/poison.ids" 2>"$TMP/poison.log" || {
    cat "$TMP/poison.log" >&2
    die "could not publish the poison message"
}
POISON_ID="$(head -n1 "$TMP/poison.ids")"
note "poison message id $POISON_ID"
is_dead() { [[ "$(pay_value "SELECT status FROM inbox WHERE message_id = '$POISON_ID'")" == dead ]]; }
wait_for 15 is_dead || true

step "pay's inbox: the poison message"
pay_sql "SELECT message_id, status, attempts, last_error, length(raw_body) AS raw_bytes, payload IS NULL AS unparsed
         FROM inbox WHERE message_id = '$POISON_ID'"
admin "$PAY_URL" GET /inbox/dead
note "GET /admin/inbox/dead on pay lists it: $(jq -c --arg id "$POISON_ID" '[.dead[] | select(.message_id == $id) | {message_id, last_error}]' <<<"$BODY" 2>/dev/null)"
note "pay's queue: $(queue_counts)"
expect "it is recorded dead, with its reason" is_dead
expect "it was acked (no message waiting in pay's queue)" equals "$(queue_counts)" "ready=0 unacked=0"

step "POST /buy: the next message is not blocked by it"
buy alice 990
wait_for 20 is_status "$ORDER_ID" PAID || true
show_order "$ORDER_ID"
expect "the next order is PAID" is_status "$ORDER_ID" PAID
expect "exactly one payment" equals "$(payments_of "$ORDER_ID")" 1

conclude "a poison message is recorded dead with its reason, acked, and does not block the next message"
