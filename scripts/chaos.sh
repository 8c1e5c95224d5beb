#!/usr/bin/env bash
# Chaos test of the running system. Starts the real binaries (two order and two pay instances
# on the same databases and queues, the gateway in front), drives orders at a steady rate
# (users with enough money, carol without, an unknown user), and meanwhile injects faults:
#
#   kill-order       SIGKILL an order instance (the first, the second, both in turn), restart it;
#                    when both are hit, the first is killed again while catching up
#   kill-pay         the same for pay (both first)
#   pg-terminate     pg_terminate_backend on every connection to the two chaos databases
#   broker-restart   rabbitmqctl stop_app, a few seconds down, start_app (node-wide!)
#   rolling-restart  one instance at a time: SIGTERM, wait for its exit, start it, wait for /readyz
#
# Then it waits for the system to converge and checks, across both databases: every order
# answered 2xx exists and is PAID or PAYMENT_FAILED (as expected for its user); exactly one
# COMPLETED payment per PAID order and none for any other; balances + payments = the initial
# total (and per account); no outbox row pending or dead, no inbox row failed or dead except
# the poison messages injected on purpose; each graceful stop exited 0; no instance died on
# its own, none panicked. It prints the figures (orders, faults, duplicates dropped by the
# inbox as the instances count them, read before each kill or stop and at the end, retries,
# time to converge after the last fault) and `N passed, M failed`, and exits
# non-zero when a check failed (printing the end of each log).
#
#   scripts/chaos.sh            short run (CI): about 80 s of load at 30 orders/s, every fault
#                               kind once; about 1.5 minutes in all
#   scripts/chaos.sh --long     long run: 20,000 orders at 35/s, every fault kind at least 3
#                               times (7 in practice); about 10 minutes
#
# It owns its state: databases lmt_chaos_order and lmt_chaos_pay (recreated on every run, left
# for inspection), the exchange lmt.chaos.events with queues named per run (removed by the
# broker 10 minutes after last use), ports 18762-18769 (CHAOS_PORT_BASE), logs and results in .run/chaos/. It
# never stops PostgreSQL or RabbitMQ: if it stopped RabbitMQ's app, the exit trap starts it
# again whatever happens. The broker restart is node-wide: other users of this RabbitMQ see
# it (CHAOS_BROKER=0 leaves it out).
#
# Environment (default for the short run / the long run):
#   CHAOS_RATE               orders per second (30 / 35)
#   CHAOS_ORDERS             orders to place (0 = until the faults are done / 20000)
#   CHAOS_MIN_EACH           rounds of the fault list, i.e. injections per kind (1 / 3); the long
#                            run goes on with more rounds while orders are still being placed
#   CHAOS_FAULTS             the fault kinds, in order (kill-order kill-pay rolling-restart
#                            pg-terminate broker-restart)
#   CHAOS_BROKER             0: leave out broker-restart (1)
#   CHAOS_WARMUP_SECS        load before the first fault (5)
#   CHAOS_INTERVAL_SECS      load between two faults (10 / 15)
#   CHAOS_TAIL_SECS          load after the last fault (8 / 15)
#   CHAOS_KILL_DOWN_SECS     how long a killed instance stays down (1; 4 more when both are)
#   CHAOS_BROKER_DOWN_SECS   how long RabbitMQ's app stays stopped (5)
#   CHAOS_READY_SECS         how long an instance may take to be ready again (90)
#   CHAOS_STOP_SECS          how long a graceful stop may take before SIGKILL (30)
#   CHAOS_CONVERGE_SECS      deadline for convergence once the load has stopped (180)
#   CHAOS_POISON             unreadable messages published to pay on purpose (2)
#   CHAOS_PORT_BASE          pay1 +2, order1 +3, order2 +4, pay2 +5, gateway +9 (18760)
#   CHAOS_GATEWAY_MULTI      1: the gateway has both instances of each service behind its
#                            routes and the orders all go through it (1); 0: its routes name
#                            the first instances only, and the orders alternate between the
#                            gateway and the second order instance directly
#   CHAOS_DB_MAX_CONNECTIONS each instance's pool (8; four instances share the server)
#   CHAOS_RUN_DIR            logs and results (.run/chaos)
#   SKIP_BUILD=1             do not run cargo build (the binaries must exist)
#   ORDER_DATABASE_URL       only its server is used; AMQP_URL; RUST_LOG; CARGO_TARGET_DIR
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MODE=short
for arg in "$@"; do
    case "$arg" in
    --long) MODE=long ;;
    --short) MODE=short ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$arg' (--long, --short or --help)" ;;
    esac
done

if [[ "$MODE" == long ]]; then
    RATE="${CHAOS_RATE:-35}"
    ORDERS="${CHAOS_ORDERS:-20000}"
    MIN_EACH="${CHAOS_MIN_EACH:-3}"
    INTERVAL_SECS="${CHAOS_INTERVAL_SECS:-15}"
    TAIL_SECS="${CHAOS_TAIL_SECS:-15}"
else
    RATE="${CHAOS_RATE:-30}"
    ORDERS="${CHAOS_ORDERS:-0}"
    MIN_EACH="${CHAOS_MIN_EACH:-1}"
    INTERVAL_SECS="${CHAOS_INTERVAL_SECS:-10}"
    TAIL_SECS="${CHAOS_TAIL_SECS:-8}"
fi
WARMUP_SECS="${CHAOS_WARMUP_SECS:-5}"
KILL_DOWN_SECS="${CHAOS_KILL_DOWN_SECS:-1}"
BROKER_DOWN_SECS="${CHAOS_BROKER_DOWN_SECS:-5}"
READY_SECS="${CHAOS_READY_SECS:-90}"
STOP_SECS="${CHAOS_STOP_SECS:-30}"
CONVERGE_SECS="${CHAOS_CONVERGE_SECS:-180}"
POISON="${CHAOS_POISON:-2}"
PORT_BASE="${CHAOS_PORT_BASE:-18760}"
GATEWAY_MULTI="${CHAOS_GATEWAY_MULTI:-1}"
RUN="${CHAOS_RUN_DIR:-$LMT_ROOT/.run/chaos}"
read -r -a KINDS <<<"${CHAOS_FAULTS:-kill-order kill-pay rolling-restart pg-terminate broker-restart}"
if [[ "${CHAOS_BROKER:-1}" == 0 ]]; then
    kinds=()
    for k in "${KINDS[@]}"; do [[ "$k" == broker-restart ]] || kinds+=("$k"); done
    KINDS=("${kinds[@]}")
fi
for k in "${KINDS[@]}"; do
    case "$k" in
    kill-order | kill-pay | pg-terminate | broker-restart | rolling-restart) ;;
    *) die "CHAOS_FAULTS: unknown fault kind '$k'" ;;
    esac
done
((${#KINDS[@]} > 0)) || die "CHAOS_FAULTS is empty"

# The test's own state.
PG_ADMIN="$(pg_url_parts "$(env_or_default ORDER_DATABASE_URL "$DEFAULT_ORDER_DATABASE_URL")" | cut -d' ' -f1)"
ORDER_DB=lmt_chaos_order
PAY_DB=lmt_chaos_pay
RUN_ID="$(date +%Y%m%d%H%M%S)-$$"
# Queues per run: whatever an aborted run left in its queues cannot reach this one.
use_own_state "$ORDER_DB" "$PAY_DB" lmt.chaos.events "chaos.$RUN_ID"
export ORDER_DB_MAX_CONNECTIONS="${CHAOS_DB_MAX_CONNECTIONS:-8}"
export PAY_DB_MAX_CONNECTIONS="${CHAOS_DB_MAX_CONNECTIONS:-8}"
export NO_COLOR=1
# The services' admin API (the chaos binary reads /admin/stats with it).
admin_token_in "$RUN/admin-token"
AMQP="$(env_or_default AMQP_URL "$DEFAULT_AMQP_URL")"

# The instances: name -> port. Start order: pay first (its queue must exist for orders to be
# routable), the gateway last.
INSTANCES=(pay1 pay2 order1 order2 gateway)
ROLLING=(order1 order2 pay1 pay2 gateway)
declare -A PORT=(
    [pay1]=$((PORT_BASE + 2)) [order1]=$((PORT_BASE + 3)) [order2]=$((PORT_BASE + 4))
    [pay2]=$((PORT_BASE + 5)) [gateway]=$((PORT_BASE + 9))
)
declare -A PID=()
url_of() { printf 'http://127.0.0.1:%s\n' "${PORT[$1]}"; }
GW="$(url_of gateway)"

# The one place that knows the gateway's route syntax: a bare URL entry adds an instance to
# the preceding route, and the gateway spreads the load over the instances itself.
gateway_routes() {
    if [[ "$GATEWAY_MULTI" == 1 ]]; then
        printf '/order=%s,%s,/pay=%s,%s\n' "$(url_of order1)" "$(url_of order2)" "$(url_of pay1)" "$(url_of pay2)"
    else
        printf '/order=%s,/pay=%s\n' "$(url_of order1)" "$(url_of pay1)"
    fi
}
# Where the driver POSTs (`<base>/buy`), round robin; a retry goes to the next one.
driver_targets() {
    if [[ "$GATEWAY_MULTI" == 1 ]]; then
        printf '%s/order\n' "$GW"
    else
        printf '%s/order,%s\n' "$GW" "$(url_of order2)"
    fi
}

# NAME=URL of the order and pay instances, comma-separated: what `chaos check` asks for the
# state of the message tables and the inbox counters.
instance_urls() {
    local name urls=()
    for name in "${INSTANCES[@]}"; do
        [[ "$name" == gateway ]] || urls+=("$name=$(url_of "$name")")
    done
    (IFS=,; printf '%s\n' "${urls[*]}")
}

binary() { printf '%s/release/%s\n' "${CARGO_TARGET_DIR:-target}" "$1"; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Reporting

PASSED=0
FAILED=0
FINISHED=0
SUMMARY_PRINTED=0
BROKER_STOPPED=0
DRIVER_PID=""
# Problems seen along the way, reported as checks at the end.
UNEXPECTED_EXITS=()
UNCLEAN_STOPS=()
NOT_READY=()

note() { printf '# %s\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# Processes: children of this script, so that `wait` gives their exit status.

# alive PID: the process exists and is not a zombie.
alive() {
    local state
    [[ -n "$1" && -r "/proc/$1/stat" ]] || return 1
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z ]]
}

start_instance() {
    local name="$1" service="${1%%[0-9]*}" addr bin log
    addr="127.0.0.1:${PORT[$name]}"
    bin="$(binary "$service")"
    log="$RUN/$name.log"
    printf -- '----- %s: starting %s on %s -----\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$name" "$addr" >>"$log"
    case "$service" in
    order) ORDER_ADDR="$addr" "$bin" >>"$log" 2>&1 </dev/null & ;;
    pay) PAY_ADDR="$addr" "$bin" >>"$log" 2>&1 </dev/null & ;;
    gateway) GATEWAY_ADDR="$addr" GATEWAY_ROUTES="$(gateway_routes)" "$bin" >>"$log" 2>&1 </dev/null & ;;
    esac
    PID[$name]=$!
}

# reap NAME: waits for NAME's (dead) process; its exit status in REAPED. (Not in a command
# substitution: a subshell cannot wait for this shell's children.)
REAPED=0
reap() {
    REAPED=0
    wait "${PID[$1]}" 2>/dev/null || REAPED=$?
}

ready() { [[ "$(http_status "$(url_of "$1")/readyz")" == 200 ]]; }

# wait_ready NAME...: every NAME answers /readyz 200 within READY_SECS; records those that do not.
wait_ready() {
    local deadline=$((SECONDS + READY_SECS)) name pending
    while :; do
        pending=()
        for name in "$@"; do ready "$name" || pending+=("$name"); done
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            for name in "${pending[@]}"; do
                NOT_READY+=("$name after $CURRENT_FAULT: $(curl -s --max-time 3 "$(url_of "$name")/readyz" || echo 'no answer')")
            done
            return 1
        fi
        sleep 0.25
    done
}

# stop_graceful NAME: SIGTERM, wait for the exit (SIGKILL after STOP_SECS); records a stop
# that was not clean (timeout or exit status other than 0).
stop_graceful() {
    local name="$1" pid="${PID[$1]}" deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_SECS))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        reap "$name"
        UNCLEAN_STOPS+=("$name (pid $pid) still running ${STOP_SECS} s after SIGTERM")
        return
    fi
    reap "$name"
    if [[ "$REAPED" != 0 ]]; then
        UNCLEAN_STOPS+=("$name (pid $pid) exited with status $REAPED after SIGTERM")
    fi
}

# check_alive: an instance that died without being told is a failure; it is started again.
check_alive() {
    local name
    for name in "${INSTANCES[@]}"; do
        alive "${PID[$name]:-}" && continue
        reap "$name"
        UNEXPECTED_EXITS+=("$name (pid ${PID[$name]:-?}) exited with status $REAPED before $CURRENT_FAULT")
        start_instance "$name"
        wait_ready "$name" || true
    done
}

stop_everything() {
    local name pid
    if [[ -n "$DRIVER_PID" ]] && alive "$DRIVER_PID"; then
        kill -TERM "$DRIVER_PID" 2>/dev/null || true
        wait "$DRIVER_PID" 2>/dev/null || true
    fi
    for name in "${!PID[@]}"; do
        pid="${PID[$name]}"
        if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    local deadline=$((SECONDS + 20))
    for name in "${!PID[@]}"; do
        pid="${PID[$name]}"
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    PID=()
}

# rabbitmqctl runs as root (or the rabbitmq user) on Debian; through sudo when needed.
rmqctl() {
    if [[ "$(id -u)" -eq 0 ]]; then timeout 120 rabbitmqctl "$@"; else as_root timeout 120 rabbitmqctl "$@"; fi
}

broker_start() {
    local _attempt
    for _attempt in 1 2 3; do
        if rmqctl start_app >/dev/null 2>&1; then
            BROKER_STOPPED=0
            rmqctl await_startup >/dev/null 2>&1 || true
            return 0
        fi
        sleep 2
    done
    return 1
}

print_logs() {
    local name
    for name in "${INSTANCES[@]}" driver; do
        [[ -f "$RUN/$name.log" ]] || continue
        printf -- '----- last 30 lines of %s -----\n' "$RUN/$name.log"
        tail -n 30 "$RUN/$name.log"
    done
    printf -- '-----\n'
}

finish() {
    ((FINISHED == 0)) || return 0
    FINISHED=1
    if ((BROKER_STOPPED == 1)); then
        warn "RabbitMQ's app was left stopped: starting it"
        broker_start || warn "rabbitmqctl start_app failed: start RabbitMQ's app by hand (rabbitmqctl start_app)"
    fi
    stop_everything
    if ((FAILED > 0)); then print_logs; fi
}

# ---------------------------------------------------------------------------------------------
# Faults. Each appends "START_MS END_MS KIND DETAIL" to faults.txt; END is when the fault's
# action is over (the process restarted, the broker's app started), before readiness.

CURRENT_FAULT="start-up"
declare -A INJECTED=()

record_fault() {
    local start="$1" kind="$2" detail="$3" end
    end="$(now_ms)"
    printf '%s %s %s %s\n' "$start" "$end" "$kind" "$detail" >>"$RUN/faults.txt"
}

# Which instances a kill hits, in turn: order: the first (behind the gateway), the second,
# both; pay: both (the hardest case first, so that the short run has it), the first, the second.
kill_targets() {
    local service="$1" n="$2"
    if [[ "$service" == pay ]]; then n=$((n + 2)); fi
    case $((n % 3)) in
    0) printf '%s\n' "${service}1" ;;
    1) printf '%s\n' "${service}2" ;;
    2) printf '%s\n' "${service}1" "${service}2" ;;
    esac
}

# snapshot_counters NAME: saves NAME's inbox counters (they die with the process) for the
# figures; the gateway has none.
snapshot_counters() {
    [[ "$1" == gateway ]] && return 0
    "$CHAOS" snapshot --dir "$RUN" --instance "$1=$(url_of "$1")" >>"$RUN/snapshot.log" 2>&1 || true
}

kill_now() {
    snapshot_counters "$1"
    kill -KILL "${PID[$1]}" 2>/dev/null || true
    reap "$1"
    KILLED+="${KILLED:+,}$1(status=$REAPED)"
}

# SIGKILL, down for KILL_DOWN_SECS, started again. When both instances are hit, they stay down
# longer (a backlog builds up in the queue or the outbox), and the first one is killed once
# more as soon as it is ready again, in the middle of catching up: deliveries it held unacked
# come back, some of them already committed (duplicates for the inbox).
fault_kill() {
    local kind="$1" service="${1#kill-}" start name down="$KILL_DOWN_SECS"
    local -a names
    mapfile -t names < <(kill_targets "$service" "${INJECTED[$kind]:-0}")
    start="$(now_ms)"
    KILLED=""
    for name in "${names[@]}"; do kill_now "$name"; done
    if ((${#names[@]} > 1)); then down=$((KILL_DOWN_SECS + 4)); fi
    sleep "$down"
    for name in "${names[@]}"; do start_instance "$name"; done
    if ((${#names[@]} > 1)); then
        wait_ready "${names[0]}" || true
        kill_now "${names[0]}"
        KILLED+=" again while catching up"
        start_instance "${names[0]}"
    fi
    record_fault "$start" "$kind" "$KILLED"
    wait_ready "${names[@]}" || true
}

fault_pg_terminate() {
    local start n
    start="$(now_ms)"
    n="$(psql "$PG_ADMIN" -XtAqc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE datname IN ('$ORDER_DB', '$PAY_DB') AND pid <> pg_backend_pid()" 2>&1)" || n="error: $n"
    record_fault "$start" pg-terminate "terminated=$(tr -d ' \n' <<<"$n")"
}

fault_broker_restart() {
    local start
    start="$(now_ms)"
    BROKER_STOPPED=1
    rmqctl stop_app >/dev/null 2>&1 || warn "rabbitmqctl stop_app failed"
    sleep "$BROKER_DOWN_SECS"
    broker_start || die "rabbitmqctl start_app failed"
    record_fault "$start" broker-restart "down=${BROKER_DOWN_SECS}s"
}

fault_rolling_restart() {
    local start name
    start="$(now_ms)"
    for name in "${ROLLING[@]}"; do
        snapshot_counters "$name"
        stop_graceful "$name"
        start_instance "$name"
        wait_ready "$name" || true
    done
    record_fault "$start" rolling-restart "${ROLLING[*]}"
}

inject() {
    local kind="$1" t0=$SECONDS n
    CURRENT_FAULT="$kind #$((${INJECTED[$kind]:-0} + 1))"
    check_alive
    case "$kind" in
    kill-order | kill-pay) fault_kill "$kind" ;;
    pg-terminate) fault_pg_terminate ;;
    broker-restart) fault_broker_restart ;;
    rolling-restart) fault_rolling_restart ;;
    esac
    INJECTED[$kind]=$((${INJECTED[$kind]:-0} + 1))
    # Back to normal before the next one: every instance ready.
    wait_ready "${INSTANCES[@]}" || true
    n="$(grep -c . "$RUN/faults.txt")"
    note "fault $n: $CURRENT_FAULT, $(tail -n1 "$RUN/faults.txt" | cut -d' ' -f4-), all ready again after $((SECONDS - t0)) s"
}

driver_running() { [[ -n "$DRIVER_PID" ]] && alive "$DRIVER_PID"; }

# sleep_under_load SECS: sleeps, but returns early when the driver has finished.
sleep_under_load() {
    local until=$((SECONDS + $1))
    while ((SECONDS < until)) && driver_running; do sleep 0.5; done
}

# ---------------------------------------------------------------------------------------------
# Preparation

ensure_tool curl
ensure_tool psql postgresql-client
if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/lmt-chaos.lock"
    flock -n 9 || die "another scripts/chaos.sh is running on this machine (it uses the same databases and ports)"
fi
if [[ " ${KINDS[*]} " == *" broker-restart "* ]]; then
    IFS='|' read -r amqp_host _ < <(url_host_port "$AMQP" 5672)
    if ! is_local_host "${amqp_host:-127.0.0.1}" || ! command -v rabbitmqctl >/dev/null 2>&1; then
        die "broker-restart needs RabbitMQ on this machine and rabbitmqctl; CHAOS_BROKER=0 leaves that fault out"
    fi
fi
for name in "${INSTANCES[@]}"; do
    if port_in_use "${PORT[$name]}"; then
        die "port ${PORT[$name]} ($name) is in use (a chaos run killed hard leaves its processes: look for them, or set CHAOS_PORT_BASE)"
    fi
done

trap exit_with_summary EXIT
trap 'exit 130' INT TERM

ensure_services
if [[ " ${KINDS[*]} " == *" broker-restart "* ]]; then
    rmqctl status >/dev/null 2>&1 ||
        die "rabbitmqctl status fails (broker-restart needs rabbitmqctl, as root or through sudo); CHAOS_BROKER=0 leaves that fault out"
fi
mkdir -p "$RUN"
rm -f "$RUN"/{pay1,pay2,order1,order2,gateway,driver,poison,snapshot}.log "$RUN"/{faults.txt,accepted.csv,drive.json,poison.ids,counters.jsonl,check.txt,check.err}
: >"$RUN/faults.txt"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins || die "cargo build failed"
fi
for bin in order pay gateway chaos; do
    [[ -x "$(binary "$bin")" ]] || die "$(binary "$bin") is missing (cargo build --release --bins)"
done
CHAOS="$(binary chaos)"

drop_database "$ORDER_DATABASE_URL"
drop_database "$PAY_DATABASE_URL"
ensure_database "$ORDER_DATABASE_URL"
ensure_database "$PAY_DATABASE_URL"

log "$MODE run: logs and results in $RUN"
# One instance of each first (each migrates its database), then the second ones.
for name in pay1 order1; do start_instance "$name"; done
wait_ready pay1 order1 || die "pay1/order1 did not become ready (see $RUN/pay1.log, $RUN/order1.log)"
for name in pay2 order2 gateway; do start_instance "$name"; done
if wait_ready "${INSTANCES[@]}"; then
    ok "the stack starts: 2 order, 2 pay instances and the gateway ready (routes $(gateway_routes))"
else
    not_ok "the stack starts" "${NOT_READY[*]}"
    exit 1
fi

INITIAL="$(psql "$PAY_DATABASE_URL" -XtAqc "SELECT string_agg(user_id || '=' || balance_cents, ',' ORDER BY user_id) FROM accounts")"
[[ -n "$INITIAL" ]] || die "cannot read the initial balances"
note "initial balances: $INITIAL"

# ---------------------------------------------------------------------------------------------
# Load and faults

driver_args=(drive --targets "$(driver_targets)" --rate "$RATE" --out "$RUN" --run-id "chaos-$RUN_ID")
if ((ORDERS > 0)); then driver_args+=(--count "$ORDERS"); fi
"$CHAOS" "${driver_args[@]}" >"$RUN/driver.log" 2>&1 &
DRIVER_PID=$!
note "driving $RATE orders/s to $(driver_targets)$( ((ORDERS > 0)) && printf ', %s orders' "$ORDERS")"

if ((POISON > 0)); then
    if "$CHAOS" poison --count "$POISON" --out "$RUN/poison.ids" >"$RUN/poison.log" 2>&1; then
        note "published $POISON poison messages to pay (expected dead in pay's inbox)"
    else
        not_ok "poison messages published" "$(tail -n 3 "$RUN/poison.log" | paste -sd' ' -)"
    fi
fi

sleep_under_load "$WARMUP_SECS"
rounds=0
while :; do
    for kind in "${KINDS[@]}"; do
        inject "$kind"
        sleep_under_load "$INTERVAL_SECS"
    done
    rounds=$((rounds + 1))
    ((rounds < MIN_EACH)) && continue
    # Long run: more rounds while orders are still being placed.
    ((ORDERS > 0)) && driver_running && continue
    break
done
CURRENT_FAULT="the end of the load"
check_alive
if driver_running && ((ORDERS == 0)); then
    sleep_under_load "$TAIL_SECS"
    kill -TERM "$DRIVER_PID" 2>/dev/null || true
fi
driver_rc=0
wait "$DRIVER_PID" || driver_rc=$?
DRIVER_PID=""
if [[ "$driver_rc" == 0 && -f "$RUN/drive.json" ]]; then
    ok "the load generator ran to the end"
else
    not_ok "the load generator ran to the end" "exit status $driver_rc; $(tail -n 3 "$RUN/driver.log" | paste -sd' ' -)"
fi
tail -n 2 "$RUN/driver.log" | sed 's/^/# /'

if ((${#NOT_READY[@]} == 0)); then
    ok "after every fault, every instance was ready again within ${READY_SECS} s"
else
    not_ok "after every fault, every instance was ready again within ${READY_SECS} s" "${NOT_READY[*]}"
fi

# ---------------------------------------------------------------------------------------------
# Convergence and invariants (the chaos binary), while the stack still runs

kinds_csv="$(IFS=,; printf '%s' "${KINDS[*]}")"
log "waiting (up to ${CONVERGE_SECS} s) for the system to converge, then checking"
set +e
"$CHAOS" check --dir "$RUN" --instances "$(instance_urls)" --initial-balances "$INITIAL" \
    --deadline-secs "$CONVERGE_SECS" --min-each "$MIN_EACH" --kinds "$kinds_csv" \
    | tee "$RUN/check.txt"
check_rc="${PIPESTATUS[0]}"
set -e
PASSED=$((PASSED + $(grep -c '^ok - ' "$RUN/check.txt" || true)))
FAILED=$((FAILED + $(grep -c '^not ok - ' "$RUN/check.txt" || true)))
if ((check_rc > 1)); then
    not_ok "the invariant checks ran" "exit status $check_rc, see the error above"
fi

# ---------------------------------------------------------------------------------------------
# The processes themselves

CURRENT_FAULT="the final stop"
check_alive
for name in "${ROLLING[@]}"; do stop_graceful "$name"; done
PID=()
if ((${#UNEXPECTED_EXITS[@]} == 0)); then
    ok "no instance exited on its own"
else
    not_ok "no instance exited on its own" "${UNEXPECTED_EXITS[*]}"
fi
if ((${#UNCLEAN_STOPS[@]} == 0)); then
    ok "every graceful stop (SIGTERM) ended with exit status 0 within ${STOP_SECS} s"
else
    not_ok "every graceful stop (SIGTERM) ended with exit status 0 within ${STOP_SECS} s" "${UNCLEAN_STOPS[*]}"
fi
panics="$(grep -l 'panicked at' "$RUN"/{pay1,pay2,order1,order2,gateway}.log 2>/dev/null | xargs -r -n1 basename | paste -sd, - || true)"
if [[ -z "$panics" ]]; then
    ok "no instance panicked"
else
    not_ok "no instance panicked" "'panicked at' in $panics"
fi

finish
print_summary
