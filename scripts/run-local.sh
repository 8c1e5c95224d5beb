#!/usr/bin/env bash
# Runs the whole stack locally: order, pay and the gateway in front of them, in the background,
# with logs and pid files in .run/ at the repository root.
#
#   scripts/run-local.sh [start]        build, start all three, wait until ready, print a curl session
#   scripts/run-local.sh [start] --demo the same with the teaching switches on (DEMO_FAULTS=1):
#                                       prints the dashboard's address and the admin token
#   scripts/run-local.sh stop           stop the processes of .run/ (SIGTERM, SIGKILL after 15 s)
#   scripts/run-local.sh status         which services are running (exit 0 when all three are)
#   scripts/run-local.sh start-one SVC  start one service (pay, order or gateway), without building
#   scripts/run-local.sh stop-one SVC   stop one service
#
# Configuration comes from the services' own environment variables (ORDER_ADDR, PAY_ADDR,
# GATEWAY_ADDR, *_DATABASE_URL, AMQP_URL, ...). Unless GATEWAY_ROUTES is set, the gateway's
# routes follow ORDER_ADDR and PAY_ADDR. SKIP_BUILD=1 skips `cargo build`; RUN_LOCAL_PROFILE=dev
# builds and runs the debug binaries instead of the release ones.
# PostgreSQL and RabbitMQ are started when needed and never stopped. On a Debian or Ubuntu
# machine without them, they are installed first from the distribution's packages (it says so);
# elsewhere it names the packages to install.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

READY_DEADLINE_SECS="${READY_DEADLINE_SECS:-60}"
STOP_DEADLINE_SECS="${STOP_DEADLINE_SECS:-15}"
DEMO=0

# configure: the effective addresses and routes, exported so the services see exactly what
# this script checks and prints.
configure() {
    local name
    for name in ORDER PAY GATEWAY; do
        local addr="${name}_ADDR"
        [[ "${!addr##*:}" != 0 ]] || die "$addr=${!addr}: port 0 is not supported here (the scripts need to know the port)"
        printf -v "${name}_URL" '%s' "$(base_url "${!addr}")"
    done
    : "${GATEWAY_ROUTES:=/order=$ORDER_URL,/pay=$PAY_URL}"
    # The reconciler asks pay over HTTP: the pay started here.
    : "${ORDER_PAY_URL:=$PAY_URL}"
    export ORDER_ADDR PAY_ADDR GATEWAY_ADDR GATEWAY_ROUTES ORDER_PAY_URL
    # The admin API is on, with the caller's ADMIN_TOKEN or one kept in .run/.
    admin_token_in "$RUN_DIR/admin-token"
    # --demo: the teaching switches (/admin/faults; development only, never in production),
    # and the lane view's queue counts from the management API when it answers (ready and
    # unacknowledged; without it, from a passive declare: ready only).
    if ((DEMO == 1)); then
        export DEMO_FAULTS=1
        if [[ -z "${RABBITMQ_MANAGEMENT_URL:-}" ]] && tcp_open 127.0.0.1 15672; then export RABBITMQ_MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672"; fi
    fi
    # The logs go to files: no colour escapes in them unless asked for.
    export NO_COLOR="${NO_COLOR:-1}"
}

# addr NAME / url NAME: the service's listen address and its URL.
addr() { local v="${1^^}_ADDR" && printf '%s\n' "${!v}"; }
url() { local v="${1^^}_URL" && printf '%s\n' "${!v}"; }

# ensure_port_free NAME: dies when NAME's port is taken, naming who holds it.
ensure_port_free() {
    local port owner
    port="$(addr "$1")" && port="${port##*:}"
    port_in_use "$port" || return 0
    owner="$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n1)"
    die "port $port ($1, ${1^^}_ADDR=$(addr "$1")) is already in use${owner:+ by $owner}; free it or set ${1^^}_ADDR"
}

# launch NAME: starts NAME's binary in the background (its own session, so it outlives this
# script and the terminal) and records its pid.
launch() {
    local name="$1" bin="$BIN_DIR/$1" file log
    [[ -x "$bin" ]] || die "$bin is missing: run scripts/run-local.sh start (it builds) or ${BUILD[*]}"
    ensure_port_free "$name"
    file="$(pid_file "$name")" log="$(log_file "$name")"
    rm -f "$file"
    printf -- '----- %s: starting %s on %s -----\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$name" "$(addr "$name")" >>"$log"
    # The child writes its own pid and then becomes the service (exec keeps the pid), so the
    # pid file names the service's process even when setsid has to fork.
    # shellcheck disable=SC2016 # expanded by the child shell
    setsid bash -c 'echo "$$" >"$0.tmp" && mv "$0.tmp" "$0" && exec "$1"' "$file" "$bin" >>"$log" 2>&1 </dev/null &
    wait_until 5 test -s "$file" || die "$name did not start (see $log)"
    log "started $name (pid $(cat "$file")), log: $log"
}

# wait_ready NAME...: waits until each NAME's /readyz answers 200, failing early when one of
# them exits.
wait_ready() {
    local name deadline=$((SECONDS + READY_DEADLINE_SECS))
    for name in "$@"; do
        until [[ "$(http_status "$(url "$name")/readyz")" == 200 ]]; do
            if ! service_pid "$name" >/dev/null; then
                warn "$name exited during start-up; its log (without any backtrace):"
                awk '/^----- .*: starting /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$(log_file "$name")" |
                    sed '/^Stack backtrace:/,$d' | tail -n 30 >&2 || true
                return 1
            fi
            ((SECONDS < deadline)) || {
                warn "$name is not ready after ${READY_DEADLINE_SECS} s: GET $(url "$name")/readyz -> $(curl -s --max-time 3 "$(url "$name")/readyz" || echo 'no answer')"
                return 1
            }
            sleep 0.5
        done
    done
}

# stop_services NAME...: SIGTERM to each alive NAME of RUN_DIR, SIGKILL for those still alive
# after STOP_DEADLINE_SECS; removes their pid files. Never touches any other process.
stop_services() {
    local name pid
    local -A pids=()
    for name in "$@"; do
        pid="$(service_pid "$name")" || continue
        kill -TERM "$pid" 2>/dev/null || true
        pids[$name]="$pid"
        log "stopping $name (pid $pid)"
    done
    ((${#pids[@]} > 0)) || log "not running: $*"
    all_gone() { for pid in "${pids[@]}"; do pid_gone "$pid" || return 1; done; }
    wait_until "$STOP_DEADLINE_SECS" all_gone || true
    for name in "${!pids[@]}"; do
        if ! pid_gone "${pids[$name]}"; then
            warn "$name (pid ${pids[$name]}) still alive after ${STOP_DEADLINE_SECS} s: SIGKILL"
            kill -KILL "${pids[$name]}" 2>/dev/null || true
            wait_until 5 pid_gone "${pids[$name]}" || warn "pid ${pids[$name]} is still alive"
        fi
        log "stopped $name"
    done
    for name in "$@"; do service_pid "$name" >/dev/null || rm -f "$(pid_file "$name")"; done
}

cmd_start() {
    local running name
    running="$(running_services)"
    [[ -z "$running" ]] || die "already running ($running); scripts/run-local.sh stop"
    # Fail on a taken port before spending minutes on a build.
    for name in "${SERVICES[@]}"; do ensure_port_free "$name"; done
    ensure_tool curl
    ensure_tool psql postgresql-client
    INSTALL_SERVERS=1 ensure_services
    ensure_database "$ORDER_DATABASE_URL"
    ensure_database "$PAY_DATABASE_URL"
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        log "SKIP_BUILD=1: not building"
    else
        log "${BUILD[*]}"
        "${BUILD[@]}" || die "cargo build failed"
    fi
    for name in "${SERVICES[@]}"; do : >"$(log_file "$name")"; done
    # Whatever goes wrong from here on (including Ctrl-C), stop what was started.
    trap 'exit 130' INT TERM
    trap 'rc=$?; warn "start failed; stopping what was started"; stop_services gateway order pay; exit $rc' EXIT
    for name in "${SERVICES[@]}"; do launch "$name"; done
    log "waiting (up to ${READY_DEADLINE_SECS} s) until every /readyz answers 200"
    wait_ready "${SERVICES[@]}" || die "the stack did not become ready; logs in $RUN_DIR"
    trap - EXIT INT TERM
    cat <<EOF

The stack is ready.
  gateway  $GATEWAY_URL   (routes: $GATEWAY_ROUTES)
  order    $ORDER_URL
  pay      $PAY_URL
  logs     $RUN_DIR/{gateway,order,pay}.log
  stop     scripts/run-local.sh stop

Try it (through the gateway; needs jq):

GW=$GATEWAY_URL
EOF
    cat <<'EOF'
ORDER_ID=$(curl -sS -X POST "$GW/order/buy" -H 'content-type: application/json' \
  -d '{"user_id":"alice","item":"book","amount_cents":1250}' | jq -r .order_id); echo "$ORDER_ID"
sleep 1
curl -sS "$GW/order/orders/$ORDER_ID"; echo
curl -sS "$GW/pay/payments/$ORDER_ID"; echo
curl -sS "$GW/pay/accounts/alice"; echo

# The admin API (docs/admin.md); the token is in .run/admin-token.
curl -sS -H "Authorization: Bearer $(cat .run/admin-token)" "$GW/admin/pay/stats"; echo

EOF
    ((DEMO == 0)) || cat <<EOF
The demo is on (DEMO_FAULTS=1: the teaching switches). Development only, UNSAFE FOR PRODUCTION.
  dashboard    $GATEWAY_URL/
  admin token  $ADMIN_TOKEN   (enter it on the dashboard; also in $RUN_DIR/admin-token)

EOF
}

cmd_start_one() {
    ! service_pid "$1" >/dev/null || die "$1 is already running; scripts/run-local.sh stop-one $1"
    launch "$1"
    wait_ready "$1" || { stop_services "$1" && die "$1 did not become ready; log: $(log_file "$1")"; }
    log "$1 is ready at $(url "$1")"
}

cmd_status() {
    local name pid ready all=0
    for name in "${SERVICES[@]}"; do
        pid="$(service_pid "$name")" || { printf '%-8s stopped\n' "$name" && all=1 && continue; }
        ready="not ready" && [[ "$(http_status "$(url "$name")/readyz")" != 200 ]] || ready="ready"
        printf '%-8s running (pid %s) %s, %s\n' "$name" "$pid" "$(url "$name")" "$ready"
    done
    return "$all"
}

args=()
for arg in "$@"; do if [[ "$arg" == --demo ]]; then DEMO=1; else args+=("$arg"); fi; done
set -- "${args[@]}" start
mkdir -p "$RUN_DIR"
configure
case "$1" in
start) cmd_start ;;
stop) stop_services gateway order pay ;;
status) cmd_status ;;
start-one | stop-one)
    { [[ $# -eq 3 ]] && is_service "$2"; } || die "usage: scripts/run-local.sh $1 pay|order|gateway"
    if [[ "$1" == start-one ]]; then cmd_start_one "$2"; else stop_services "$2"; fi
    ;;
-h | --help | help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' ;;
*) printf "error: unknown command '%s'\n\n%s\n" "$1" "$(sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//')" >&2 && exit 2 ;;
esac
