#!/usr/bin/env bash
# Scenario 04: the relay dies between the broker's confirm and marking the row sent
# (docs/scenarios.md, "04 The relay dies between publish and mark-sent"). To stop the relay at
# exactly that point, the script makes the "mark sent" UPDATE of this scenario's order hang (a
# trigger that sleeps), waits until pay has the message, SIGKILLs order, ends the hanging
# statement, removes the trigger and starts order again: after the lease the row is
# published again and pay's inbox drops the copy.
. "$(dirname "$0")/scenario.sh"

ITEM="scenario $SCENARIO"
step "the relay's 'mark sent' will hang for this scenario's order (trigger on order's outbox)"
order_sql "CREATE OR REPLACE FUNCTION scenario_04_hang() RETURNS trigger LANGUAGE plpgsql AS
  \$\$ BEGIN PERFORM pg_sleep(600); RETURN NEW; END \$\$"
order_sql "DROP TRIGGER IF EXISTS scenario_04_hang ON outbox"
order_sql "CREATE TRIGGER scenario_04_hang BEFORE UPDATE ON outbox FOR EACH ROW
  WHEN (NEW.status = 'sent' AND OLD.status <> 'sent' AND NEW.payload->>'item' = '$ITEM')
  EXECUTE FUNCTION scenario_04_hang()"
on_exit_do order_sql "'DROP TRIGGER IF EXISTS scenario_04_hang ON outbox'"
DUPS_BEFORE="$(duplicates)"

step "POST /buy; the relay publishes, RabbitMQ confirms, pay processes; 'mark sent' hangs"
buy alice 4400
MID="$(message_of "$ORDER_ID")"
wait_until 15 inbox_is "$MID" processed || die "pay never processed the message"

step "SIGKILL order: the relay dies holding the claim, before marking the row sent"
kill_service order
order_value "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()" >/dev/null
order_sql "DROP TRIGGER scenario_04_hang ON outbox"
show_order "$ORDER_ID"
order_sql "SELECT status, attempts, claim_token, lease_expires_at - now() AS lease_left FROM outbox WHERE aggregate_id = '$ORDER_ID'"
expect "the row is still pending although the broker confirmed it" is_outbox "$ORDER_ID" pending
expect "the dead relay's claim is still on it" \
    equals "$(order_value "SELECT claim_token IS NOT NULL FROM outbox WHERE aggregate_id = '$ORDER_ID'")" t

step "start order again; after the lease (OUTBOX_LEASE_MS=$OUTBOX_LEASE_MS) the scheduler hands the row back"
restart_service order
wait_until 30 is_outbox "$ORDER_ID" sent || true
wait_until 10 dups_grew || true
after 20 "$ORDER_ID"
note "pay's inbox dropped $(($(duplicates) - DUPS_BEFORE)) duplicate(s) during this scenario"
expect "the row was published again and is sent" is_outbox "$ORDER_ID" sent
expect "pay's inbox dropped the second copy" dups_grew
expect_paid_once "$ORDER_ID"

conclude "a relay killed after the confirm and before marking sent: the row is published again after its lease, and paid once"
