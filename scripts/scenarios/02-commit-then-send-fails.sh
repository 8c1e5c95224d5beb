#!/usr/bin/env bash
# Scenario 02: the transaction commits, then the send fails (docs/scenarios.md, "02 Transaction
# committed, but the send failed"). The script makes RabbitMQ refuse every message for pay
# (the chaos tool's `refuse`: a classic queue with max-length 0 and reject-publish takes the
# binding of pay's queue, so each publish is nacked), buys, shows the row pending and
# retried, binds pay's queue again (`accept`), and shows it sent and paid once.
. "$(dirname "$0")/scenario.sh"

REFUSER="$PAY_QUEUE.refuser"
step "RabbitMQ refuses messages for pay: $REFUSER (max-length 0, overflow reject-publish) is bound instead of $PAY_QUEUE"
note "(RabbitMQ nacks a message any of its queues refuses, yet delivers it to the others: so $PAY_QUEUE is unbound meanwhile)"
chaos refuse 2>"$TMP/chaos.log" || die "could not make RabbitMQ refuse: $(cat "$TMP/chaos.log")"
on_exit_do "chaos accept >/dev/null 2>&1"

step "POST /buy: the order and its message commit; the publish is nacked"
buy alice 2200
refused_twice() {
    (($(order_value "SELECT count(*) FROM outbox WHERE aggregate_id = '$ORDER_ID' AND attempts >= 2 AND last_error LIKE '%nack%'") == 1))
}
wait_until 15 refused_twice || true

step "while the broker refuses: the row is pending, with attempts, its error and the next attempt"
show_order "$ORDER_ID"
order_sql "SELECT status, attempts, next_attempt_at - now() AS next_attempt_in FROM outbox WHERE aggregate_id = '$ORDER_ID'"
expect "the committed message is still pending (never sent while refused)" is_outbox "$ORDER_ID" pending
expect "it was tried and refused (nacked) at least twice" refused_twice
expect "the order waits (PENDING_PAYMENT)" is_status "$ORDER_ID" PENDING_PAYMENT

step "the broker accepts again ($PAY_QUEUE bound again, $REFUSER deleted); the resend scheduler brings the next attempt"
chaos accept 2>"$TMP/chaos.log" || die "could not make RabbitMQ accept again: $(cat "$TMP/chaos.log")"
after 20 "$ORDER_ID"
expect "the message is sent" is_outbox "$ORDER_ID" sent
expect_paid_once "$ORDER_ID"

conclude "a committed message whose publish fails stays pending and is published later by the retry; the order is paid once"
