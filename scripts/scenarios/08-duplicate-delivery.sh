#!/usr/bin/env bash
# Scenario 08: the same message delivered twice, and several copies concurrently
# (docs/scenarios.md, "08 The same message twice, and concurrently"). Part 1: deliver_twice
# makes order's relay publish the next message twice. Part 2: pay's consumer is stopped while
# five copies of one message pile up (deliver_twice plus lose_confirms 3: published,
# re-published three times), then resumed: pay takes them together and processes them
# concurrently, the inbox's primary key serialising them.
. "$(dirname "$0")/scenario.sh"

step "part 1: order's relay publishes the next message twice"
D0="$(duplicates)"
fault "$ORDER_URL" deliver_twice '{"count": 1}'
buy alice 810
FIRST="$ORDER_ID"
wait_until 20 is_status "$FIRST" PAID || true
wait_until 10 dups_at_least $((D0 + 1)) || true
show_order "$FIRST"
D1="$(duplicates)"
note "pay's inbox dropped $((D1 - D0)) duplicate(s)"
expect_paid_once "$FIRST" "twice: "
expect "twice: pay's inbox dropped one copy" equals "$((D1 - D0))" 1

step "part 2: pay's consumer stops; one message is published five times"
fault "$PAY_URL" stop_consumer '{"seconds": 600}'
fault "$ORDER_URL" deliver_twice '{"count": 1}'
fault "$ORDER_URL" lose_confirms '{"count": 3}'
buy alice 820
SECOND="$ORDER_ID"
wait_until 20 is_outbox "$SECOND" sent || true
note "pay's queue: $(queue_counts)   (copies waiting, some held unacked by the stopped consumer)"
order_sql "SELECT status, attempts FROM outbox WHERE aggregate_id = '$SECOND'"

step "pay's consumer resumes: the copies are processed concurrently"
fault_off "$PAY_URL" stop_consumer
wait_until 20 is_status "$SECOND" PAID || true
wait_until 10 dups_at_least $((D1 + 4)) || true
show_order "$SECOND"
D2="$(duplicates)"
note "pay's inbox dropped $((D2 - D1)) duplicate(s)"
expect_paid_once "$SECOND" "concurrently: "
expect "concurrently: pay's inbox dropped the four other copies" equals "$((D2 - D1))" 4

conclude "the same message delivered twice, or five times at once, is processed once: one payment each"
