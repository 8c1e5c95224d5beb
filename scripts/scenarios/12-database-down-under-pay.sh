#!/usr/bin/env bash
# Scenario 12: pay's database goes away while messages arrive (docs/scenarios.md, "12 The
# database goes down under pay"). The script does not stop the shared PostgreSQL: it refuses
# new connections to pay's database only (ALTER DATABASE ... ALLOW_CONNECTIONS false) and ends
# its sessions (pg_terminate_backend); the exit cleanup always allows connections again.
. "$(dirname "$0")/scenario.sh"

PG_ADMIN="$(pg_admin_url "$PAY_DATABASE_URL")" PAY_DB="$(pg_db_name "$PAY_DATABASE_URL")"
pg_admin() { psql "$PG_ADMIN" -XtAq -c "$1" >/dev/null; }
allow() { pg_admin "ALTER DATABASE \"$PAY_DB\" ALLOW_CONNECTIONS true"; }

step "pay's database refuses connections; its sessions are terminated"
on_exit_do allow
pg_admin "ALTER DATABASE \"$PAY_DB\" ALLOW_CONNECTIONS false"
pg_admin "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$PAY_DB' AND pid <> pg_backend_pid()"
sleep 1
note "pay /readyz: $(curl -s --max-time 3 "$PAY_URL/readyz" | jq -c .checks 2>/dev/null || echo 'no answer')"

step "POST /buy: order publishes; pay cannot record the delivery"
buy alice 1210
wait_until 15 is_outbox "$ORDER_ID" sent || true
sleep 3
note "order_db (order's own database is fine):"
order_sql "SELECT o.status, x.status AS message, x.attempts FROM orders o JOIN outbox x ON x.id = o.message_id WHERE o.id = '$ORDER_ID'"
note "pay's queue: $(queue_counts)   (the delivery is handed back and redelivered, never acked)"
expect "the message was delivered to the broker (sent)" is_outbox "$ORDER_ID" sent
expect "the order waits (PENDING_PAYMENT)" is_status "$ORDER_ID" PENDING_PAYMENT
if [[ -n "$(queue_counts)" ]]; then
    expect "the message is still the broker's (not acked)" wait_until 10 eval '! queue_drained'
fi

step "pay's database accepts connections again"
allow
after 30 "$ORDER_ID"
expect_paid_once "$ORDER_ID"
expect "pay is ready again" equals "$(http_status "$PAY_URL/readyz")" 200

conclude "deliveries that arrive while pay's database is down are not acked, and are paid once when it is back"
