#!/usr/bin/env bash
# Scenario 10: the handler fails, then succeeds.
#
# A handler that fails (a dependency down, a deadlock) must not leave half its work behind,
# and must be tried again. pay runs its handler inside a savepoint of the inbox transaction:
# a failure rolls the debit and the payment back, records `failed` with attempts and a
# backed-off next attempt on the inbox row, and acks the delivery; the retry sweeper runs it
# again from the table. The teaching switch fail_handler makes the next 2 runs fail after
# they did their work.
. "$(dirname "$0")/scenario.sh"

step "pay's handler will fail its next 2 runs (their effect rolled back)"
fault "$PAY_URL" fail_handler '{"count": 2}'
BALANCE_BEFORE="$(pay_value "SELECT balance_cents FROM accounts WHERE user_id = 'alice'")"

step "POST /buy"
buy alice 1010
MID="$(message_of "$ORDER_ID")"
failed_once() { [[ -n "$(pay_value "SELECT 1 FROM inbox WHERE message_id = '$MID' AND (status = 'failed' OR attempts > 1)")" ]]; }
wait_for 15 failed_once || true

step "during the retries"
pay_sql "SELECT message_id, status, attempts, next_attempt_at - now() AS next_in, last_error FROM inbox WHERE message_id = '$MID'"
pay_sql "SELECT count(*) AS payments_so_far FROM payments WHERE order_id = '$ORDER_ID'"

wait_for 20 is_status "$ORDER_ID" PAID || true
step "after"
show_order "$ORDER_ID"
BALANCE_AFTER="$(pay_value "SELECT balance_cents FROM accounts WHERE user_id = 'alice'")"
note "alice: $BALANCE_BEFORE -> $BALANCE_AFTER cents"
expect "the third run succeeded (inbox processed, attempts 3)" \
    equals "$(pay_value "SELECT status || '/' || attempts FROM inbox WHERE message_id = '$MID'")" processed/3
expect_paid_once "$ORDER_ID"
expect "alice was debited once" equals "$((BALANCE_BEFORE - BALANCE_AFTER))" 1010

conclude "a failing handler is rolled back and retried with backoff until it succeeds: one payment, one debit"
