#!/usr/bin/env bash
# Scenario 01: the message is sent, then the local transaction rolls back (docs/scenarios.md,
# "01 Message sent, local transaction rolled back": why nothing is published before commit).
# The script makes /buy's transaction fail after the outbox insert (a CHECK constraint that
# only this scenario's user trips), and shows that neither the order nor its message exists
# and that pay never heard of it.
. "$(dirname "$0")/scenario.sh"

USER_ID="rollback-demo"
rows() {
    order_sql "SELECT count(*) AS orders FROM orders WHERE user_id = '$USER_ID'"
    order_sql "SELECT count(*) AS outbox_rows FROM outbox WHERE payload->>'user_id' = '$USER_ID'"
    pay_sql "SELECT count(*) AS payments FROM payments WHERE user_id = '$USER_ID'"
    pay_sql "SELECT count(*) AS inbox_rows FROM inbox WHERE payload->>'user_id' = '$USER_ID'"
}
step "sabotage: order's outbox refuses rows about user $USER_ID (the transaction fails after the outbox insert)"
order_sql "ALTER TABLE outbox DROP CONSTRAINT IF EXISTS scenario_01_sabotage"
order_sql "ALTER TABLE outbox ADD CONSTRAINT scenario_01_sabotage CHECK (payload->>'user_id' IS DISTINCT FROM '$USER_ID') NOT VALID"
on_exit_do order_sql "'ALTER TABLE outbox DROP CONSTRAINT IF EXISTS scenario_01_sabotage'"

step "before: rows about $USER_ID"
rows

step "POST /buy for $USER_ID: the order insert succeeds, the outbox insert fails, the transaction rolls back"
try_buy "$USER_ID" 4200
note "answer: $BODY"
expect "the client is told it failed (HTTP 500), no order id" equals "$STATUS:$ORDER_ID" "500:"

step "give the relay and pay time to do anything at all (2 s)"
sleep 2

step "after: rows about $USER_ID"
rows
expect "no order row" equals "$(order_value "SELECT count(*) FROM orders WHERE user_id = '$USER_ID'")" 0
expect "no outbox row" equals "$(order_value "SELECT count(*) FROM outbox WHERE payload->>'user_id' = '$USER_ID'")" 0
expect "pay saw nothing (no inbox row, no payment)" equals \
    "$(pay_value "SELECT (SELECT count(*) FROM inbox WHERE payload->>'user_id' = '$USER_ID') + (SELECT count(*) FROM payments WHERE user_id = '$USER_ID')")" 0

conclude "a rolled-back transaction leaves no order and no message; nothing was published, pay saw nothing"
