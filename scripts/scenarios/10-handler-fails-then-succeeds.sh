#!/usr/bin/env bash
# Scenario 10: the handler fails, then succeeds (docs/scenarios.md, "10 The handler fails,
# then succeeds"). The teaching switch fail_handler makes pay's next 2 runs fail after they
# did their work: each is rolled back, recorded `failed` with a backed-off next attempt, and
# run again by the retry sweeper; the third succeeds, with one debit.
. "$(dirname "$0")/scenario.sh"

step "pay's handler will fail its next 2 runs (their effect rolled back)"
fault "$PAY_URL" fail_handler '{"count": 2}'
BALANCE_BEFORE="$(pay_value "SELECT balance_cents FROM accounts WHERE user_id = 'alice'")"

step "POST /buy"
buy alice 1010
MID="$(message_of "$ORDER_ID")"
failed_once() { [[ -n "$(pay_value "SELECT 1 FROM inbox WHERE message_id = '$MID' AND (status = 'failed' OR attempts > 1)")" ]]; }
wait_until 15 failed_once || true

step "during the retries"
pay_sql "SELECT message_id, status, attempts, next_attempt_at - now() AS next_in, last_error FROM inbox WHERE message_id = '$MID'"
pay_sql "SELECT count(*) AS payments_so_far FROM payments WHERE order_id = '$ORDER_ID'"

after 20 "$ORDER_ID"
BALANCE_AFTER="$(pay_value "SELECT balance_cents FROM accounts WHERE user_id = 'alice'")"
note "alice: $BALANCE_BEFORE -> $BALANCE_AFTER cents"
expect "the third run succeeded (inbox processed, attempts 3)" \
    equals "$(pay_value "SELECT status || '/' || attempts FROM inbox WHERE message_id = '$MID'")" processed/3
expect_paid_once "$ORDER_ID"
expect "alice was debited once" equals "$((BALANCE_BEFORE - BALANCE_AFTER))" 1010

conclude "a failing handler is rolled back and retried with backoff until it succeeds: one payment, one debit"
