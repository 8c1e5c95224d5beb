#!/usr/bin/env bash
# Scenario 05: the broker took the message, but its confirm is lost (docs/scenarios.md, "05 A
# lost confirm"). The teaching switch lose_confirms makes order's relay ignore the next
# confirm: the row stays pending and is published again; pay's inbox drops the copy.
. "$(dirname "$0")/scenario.sh"

step "before: duplicates pay's inbox has dropped since it started"
DUPS_BEFORE="$(duplicates)"
note "$DUPS_BEFORE"

step "order's relay will treat the next confirm as lost"
fault "$ORDER_URL" lose_confirms '{"count": 1}'

step "POST /buy"
buy alice 5500
sent_twice() { [[ "$(order_value "SELECT status || '/' || attempts FROM outbox WHERE aggregate_id = '$ORDER_ID'")" == sent/2 ]]; }
wait_until 20 sent_twice || true
wait_until 10 dups_grew || true
after 20 "$ORDER_ID"
order_sql "SELECT status, attempts FROM outbox WHERE aggregate_id = '$ORDER_ID'"
note "pay's inbox dropped $(($(duplicates) - DUPS_BEFORE)) duplicate(s) during this scenario"
expect "the row was published twice (attempts 2) and then marked sent" sent_twice
expect "pay's inbox dropped the copy" dups_grew
expect_paid_once "$ORDER_ID"

conclude "a lost confirm leaves the row pending; it is published again and pay's inbox drops the copy: one payment"
