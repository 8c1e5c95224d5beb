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

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

# Set by --demo: the teaching switches on, the token and the dashboard printed.
DEMO=0

# The effective addresses and routes, exported so the services see exactly what this script
# checks and prints.
configure() {
    ORDER_ADDR="$(env_or_default ORDER_ADDR "$DEFAULT_ORDER_ADDR")"
    PAY_ADDR="$(env_or_default PAY_ADDR "$DEFAULT_PAY_ADDR")"
    GATEWAY_ADDR="$(env_or_default GATEWAY_ADDR "$DEFAULT_GATEWAY_ADDR")"
    local name addr port
    for name in ORDER_ADDR PAY_ADDR GATEWAY_ADDR; do
        addr="${!name}"
        port="$(addr_port "$addr")" || die "$name=$addr is not HOST:PORT"
        [[ "$port" != 0 ]] || die "$name=$addr: port 0 is not supported here (the scripts need to know the port)"
    done
    ORDER_URL="$(base_url "$ORDER_ADDR")"
    PAY_URL="$(base_url "$PAY_ADDR")"
    GATEWAY_URL="$(base_url "$GATEWAY_ADDR")"
    if [[ -z "${GATEWAY_ROUTES:-}" ]]; then
        GATEWAY_ROUTES="/order=$ORDER_URL,/pay=$PAY_URL"
    fi
    # The reconciler asks pay over HTTP: the pay started here.
    ORDER_PAY_URL="${ORDER_PAY_URL:-$PAY_URL}"
    export ORDER_ADDR PAY_ADDR GATEWAY_ADDR GATEWAY_ROUTES ORDER_PAY_URL
    # The admin API is on, with the caller's ADMIN_TOKEN or one kept in .run/.
    admin_token_in "$RUN_DIR/admin-token"
    if ((DEMO == 1)); then
        # The teaching switches (/admin/faults): development only, never in production.
        export DEMO_FAULTS=1
        # The lane view's queue counts (ready and unacknowledged) come from the management
        # API when it answers; without it, from a passive declare (ready only).
        if [[ -z "${RABBITMQ_MANAGEMENT_URL:-}" ]] && tcp_open 127.0.0.1 15672; then
            export RABBITMQ_MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672"
        fi
    fi
    # The logs go to files: no colour escapes in them unless asked for.
    export NO_COLOR="${NO_COLOR:-1}"
}

service_addr() {
    case "$1" in
    order) printf '%s\n' "$ORDER_ADDR" ;;
    pay) printf '%s\n' "$PAY_ADDR" ;;
    gateway) printf '%s\n' "$GATEWAY_ADDR" ;;
    esac
}

service_url() {
    case "$1" in
    order) printf '%s\n' "$ORDER_URL" ;;
    pay) printf '%s\n' "$PAY_URL" ;;
    gateway) printf '%s\n' "$GATEWAY_URL" ;;
    esac
}

binary_path() {
    local target="${CARGO_TARGET_DIR:-target}"
    printf '%s/%s/%s\n' "$target" "$(profile_dir)" "$1"
}

# RUN_LOCAL_PROFILE=dev builds and runs the debug binaries (quicker to build on a machine
# without a release build yet); the default is release.
profile_dir() {
    if [[ "${RUN_LOCAL_PROFILE:-release}" == dev ]]; then echo debug; else echo release; fi
}

build() {
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        log "SKIP_BUILD=1: not building"
        return 0
    fi
    local -a profile=(--release)
    [[ "$(profile_dir)" == release ]] || profile=()
    log "cargo build ${profile[*]} --bins"
    cargo build "${profile[@]}" --bins || die "cargo build failed"
}

# Whatever listens on a port, for the error message.
port_owner() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null |
            sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n1
    fi
}

# ensure_port_free NAME: dies when NAME's port is taken, naming who holds it.
ensure_port_free() {
    local name="$1" addr port owner
    addr="$(service_addr "$name")"
    port="$(addr_port "$addr")"
    if port_in_use "$port" "$(addr_host "$addr")"; then
        owner="$(port_owner "$port")"
        die "port $port ($name, ${name^^}_ADDR=$addr) is already in use${owner:+ by $owner}; free it or set ${name^^}_ADDR"
    fi
}

# launch NAME: starts NAME's binary in the background (its own session, so it outlives this
# script and the terminal) and records its pid.
launch() {
    local name="$1" bin addr file log
    bin="$(binary_path "$name")"
    [[ -x "$bin" ]] || die "$bin is missing: run scripts/run-local.sh start (it builds) or cargo build --release --bins"
    ensure_port_free "$name"
    addr="$(service_addr "$name")"
    file="$(pid_file "$name")"
    log="$(log_file "$name")"
    rm -f "$file"
    printf -- '----- %s: starting %s on %s -----\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$name" "$addr" >>"$log"
    # The child writes its own pid and then becomes the service (exec keeps the pid), so the
    # pid file names the service's process even when setsid has to fork.
    local -a detach=()
    if command -v setsid >/dev/null 2>&1; then detach=(setsid); else detach=(nohup); fi
    # shellcheck disable=SC2016 # expanded by the child shell
    "${detach[@]}" bash -c 'echo "$$" >"$0.tmp" && mv "$0.tmp" "$0" && exec "$1"' "$file" "$bin" \
        >>"$log" 2>&1 </dev/null &
    wait_until 5 test -s "$file" || die "$name did not start (see $log)"
    log "started $name (pid $(cat "$file")), log: $log"
}

# wait_ready NAME...: waits until each NAME's /readyz answers 200, failing early when one of
# them exits.
wait_ready() {
    local deadline=$((SECONDS + READY_DEADLINE_SECS)) name url pending
    while :; do
        pending=()
        for name in "$@"; do
            service_pid "$name" >/dev/null || {
                warn "$name exited during start-up; its log (without any backtrace):"
                awk '/^----- .*: starting /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$(log_file "$name")" |
                    sed '/^Stack backtrace:/,$d' | tail -n 30 >&2 || true
                return 1
            }
            url="$(service_url "$name")/readyz"
            [[ "$(http_status "$url")" == 200 ]] || pending+=("$name")
        done
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            for name in "${pending[@]}"; do
                url="$(service_url "$name")/readyz"
                warn "$name is not ready after ${READY_DEADLINE_SECS} s: GET $url -> $(curl -s --max-time 3 "$url" || echo 'no answer')"
            done
            return 1
        fi
        sleep 0.5
    done
}

remove_stale_pid_file() {
    local name="$1"
    if [[ -f "$(pid_file "$name")" ]] && ! service_pid "$name" >/dev/null; then
        rm -f "$(pid_file "$name")"
    fi
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# stop_services NAME...: SIGTERM to each alive NAME of .run/, SIGKILL for those still alive
# after STOP_DEADLINE_SECS; removes their pid files. Never touches any other process.
stop_services() {
    local name pid deadline
    local -a names=() pids=()
    for name in "$@"; do
        if pid="$(service_pid "$name")"; then
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
            pids+=("$pid")
            log "stopping $name (pid $pid)"
        else
            rm -f "$(pid_file "$name")"
        fi
    done
    if ((${#pids[@]} == 0)); then
        log "not running: $*"
        return 0
    fi
    deadline=$((SECONDS + STOP_DEADLINE_SECS))
    local i alive
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            if kill -0 "${pids[$i]}" 2>/dev/null && service_pid "${names[$i]}" >/dev/null; then
                alive=1
            fi
        done
        ((alive == 0 || SECONDS >= deadline)) && break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null && service_pid "${names[$i]}" >/dev/null; then
            warn "${names[$i]} (pid ${pids[$i]}) still alive after ${STOP_DEADLINE_SECS} s: SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
    for i in "${!pids[@]}"; do
        wait_until 5 pid_gone "${pids[$i]}" || warn "pid ${pids[$i]} is still alive"
        rm -f "$(pid_file "${names[$i]}")"
        log "stopped ${names[$i]}"
    done
}

print_session() {
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
}

on_start_exit() {
    local rc=$?
    if [[ "${START_DONE:-1}" != 1 ]]; then
        warn "start failed; stopping what was started"
        stop_services gateway order pay
    fi
    exit "$rc"
}

# install_missing_servers: PostgreSQL or RabbitMQ wanted on this machine, not answering and not
# installed (a fresh machine): on Debian or Ubuntu, installs them from the distribution's
# packages, saying so first; elsewhere, names the packages and stops.
install_missing_servers() {
    local admin_url db host port amqp_url
    local -a missing=()
    read -r admin_url db < <(pg_url_parts "$(env_or_default ORDER_DATABASE_URL "$DEFAULT_ORDER_DATABASE_URL")")
    IFS='|' read -r host port < <(url_host_port "$admin_url" 5432)
    if is_local_host "$host" && ! pg_answers "$admin_url" && ! command -v pg_ctlcluster >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    amqp_url="$(env_or_default AMQP_URL "$DEFAULT_AMQP_URL")"
    IFS='|' read -r host port < <(url_host_port "$amqp_url" 5672)
    host="${host:-127.0.0.1}"
    if is_local_host "$host" && ! tcp_open "$host" "$port" && ! command -v rabbitmq-server >/dev/null 2>&1; then
        missing+=(rabbitmq-server)
    fi
    ((${#missing[@]} > 0)) || return 0
    if [[ ! -r /etc/debian_version ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "not installed here: ${missing[*]}. Install them with your system's package manager
(the packages are usually called postgresql and rabbitmq-server; Homebrew: postgresql@17 and
rabbitmq), or point ORDER_DATABASE_URL, PAY_DATABASE_URL and AMQP_URL at running servers"
    fi
    log "not installed here: ${missing[*]}; installing from the distribution's packages (apt-get)"
    as_root apt-get update -qq >/dev/null || die "apt-get update failed (root or sudo needed)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}"
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        # The URLs name the user postgres without a password, over TCP: a fresh cluster asks
        # for one. Trusted from this machine only, as on a development machine.
        local hba
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            [[ -f "$hba" ]] || continue
            log "letting postgres connect without a password from 127.0.0.1 and ::1 ($hba; local development only)"
            as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
        done
    fi
    log "installed ${missing[*]}; starting them"
}

cmd_start() {
    local running
    running="$(running_services | paste -sd, -)"
    [[ -z "$running" ]] || die "already running ($running); scripts/run-local.sh stop"
    mkdir -p "$RUN_DIR"
    local name
    for name in "${SERVICES[@]}"; do remove_stale_pid_file "$name"; done
    # Fail on a taken port before spending minutes on a build.
    for name in "${SERVICES[@]}"; do ensure_port_free "$name"; done
    ensure_tool curl
    ensure_tool psql postgresql-client
    install_missing_servers
    ensure_services
    ensure_databases
    build
    for name in "${SERVICES[@]}"; do : >"$(log_file "$name")"; done
    # Whatever goes wrong from here on (including Ctrl-C), stop what was started.
    START_DONE=0
    trap 'exit 130' INT TERM
    trap on_start_exit EXIT
    for name in "${SERVICES[@]}"; do launch "$name"; done
    log "waiting (up to ${READY_DEADLINE_SECS} s) until every /readyz answers 200"
    wait_ready "${SERVICES[@]}" || die "the stack did not become ready; logs in $RUN_DIR"
    START_DONE=1
    trap - EXIT INT TERM
    print_session
    if ((DEMO == 1)); then print_demo; fi
}

print_demo() {
    cat <<EOF
The demo is on (DEMO_FAULTS=1: the teaching switches). Development only, UNSAFE FOR PRODUCTION.
  dashboard    $GATEWAY_URL/
  admin token  $ADMIN_TOKEN   (enter it on the dashboard; also in $RUN_DIR/admin-token)

EOF
}

cmd_start_one() {
    local name="$1"
    is_service "$name" || die "unknown service '$name' (pay, order or gateway)"
    if service_pid "$name" >/dev/null; then
        die "$name is already running; scripts/run-local.sh stop-one $name"
    fi
    mkdir -p "$RUN_DIR"
    remove_stale_pid_file "$name"
    launch "$name"
    if ! wait_ready "$name"; then
        stop_services "$name"
        die "$name did not become ready; log: $(log_file "$name")"
    fi
    log "$name is ready at $(service_url "$name")"
}

cmd_status() {
    local name pid ready all=0
    for name in "${SERVICES[@]}"; do
        if pid="$(service_pid "$name")"; then
            ready="not ready"
            [[ "$(http_status "$(service_url "$name")/readyz")" == 200 ]] && ready="ready"
            printf '%-8s running (pid %s) %s, %s\n' "$name" "$pid" "$(service_url "$name")" "$ready"
        else
            printf '%-8s stopped\n' "$name"
            all=1
        fi
    done
    return "$all"
}

main() {
    local -a args=()
    local arg
    for arg in "$@"; do
        if [[ "$arg" == --demo ]]; then DEMO=1; else args+=("$arg"); fi
    done
    set -- "${args[@]}"
    local cmd="${1:-start}"
    configure
    case "$cmd" in
    start) cmd_start ;;
    stop) stop_services gateway order pay ;;
    status) cmd_status ;;
    start-one)
        [[ $# -eq 2 ]] || die "usage: scripts/run-local.sh start-one pay|order|gateway"
        cmd_start_one "$2"
        ;;
    stop-one)
        [[ $# -eq 2 ]] || die "usage: scripts/run-local.sh stop-one pay|order|gateway"
        is_service "$2" || die "unknown service '$2' (pay, order or gateway)"
        stop_services "$2"
        ;;
    -h | --help | help) usage ;;
    *)
        printf "error: unknown command '%s'\n\n" "$cmd" >&2
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
