#!/usr/bin/env bash
# Scenario 05: the broker took the message, but its confirm is lost.
#
# The relay cannot tell "the broker never got it" from "the broker got it, the answer was
# lost": both are a confirm that did not come. It must publish again (never mark a row sent
# without a confirm), so the receiver sees the message twice; pay's inbox knows the message
# id and drops the copy. The teaching switch lose_confirms makes order's relay ignore the
# next confirm: the row stays pending and is re-published.
. "$(dirname "$0")/scenario.sh"

step "before: duplicates pay's inbox has dropped since it started"
DUPS_BEFORE="$(duplicates "$PAY_URL")"
note "$DUPS_BEFORE"

step "order's relay will treat the next confirm as lost"
fault "$ORDER_URL" lose_confirms '{"count": 1}'

step "POST /buy"
buy alice 5500
sent_twice() { [[ "$(order_value "SELECT status || '/' || attempts FROM outbox WHERE aggregate_id = '$ORDER_ID'")" == sent/2 ]]; }
wait_for 20 sent_twice || true
wait_for 20 is_status "$ORDER_ID" PAID || true
dups_grew() { (($(duplicates "$PAY_URL") > DUPS_BEFORE)); }
wait_for 10 dups_grew || true

step "after"
show_order "$ORDER_ID"
order_sql "SELECT status, attempts FROM outbox WHERE aggregate_id = '$ORDER_ID'"
note "pay's inbox dropped $(($(duplicates "$PAY_URL") - DUPS_BEFORE)) duplicate(s) during this scenario"
expect "the row was published twice (attempts 2) and then marked sent" sent_twice
expect "pay's inbox dropped the copy" dups_grew
expect_paid_once "$ORDER_ID"

conclude "a lost confirm leaves the row pending; it is published again and pay's inbox drops the copy: one payment"
