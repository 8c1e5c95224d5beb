#!/usr/bin/env bash
# Shared shell functions for the scripts in this folder. Source it, do not run it:
#
#   . "$(dirname "$0")/lib.sh"
#
# It never stops PostgreSQL or RabbitMQ: ensure_services only starts them when they are installed
# locally and not answering.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/lib.sh holds functions for the other scripts: source it, do not run it" >&2
    exit 2
fi

if [[ -n "${LMT_LIB_SOURCED:-}" ]]; then
    return 0
fi
LMT_LIB_SOURCED=1

# Repository root, whatever the caller's working directory.
LMT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Defaults, the same as the services' own (`order --help`, `pay --help`, `gateway --help`).
# An empty variable counts as unset, as in the services. Used by the scripts sourcing this file.
# shellcheck disable=SC2034
{
    DEFAULT_ORDER_ADDR="127.0.0.1:8763"
    DEFAULT_PAY_ADDR="127.0.0.1:8762"
    DEFAULT_GATEWAY_ADDR="127.0.0.1:8769"
    DEFAULT_ORDER_DATABASE_URL="postgres://postgres@127.0.0.1:5432/order_db"
    DEFAULT_PAY_DATABASE_URL="postgres://postgres@127.0.0.1:5432/pay_db"
    DEFAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
    DEFAULT_GATEWAY_MAX_BODY_BYTES=10485760
}

# ---------------------------------------------------------------------------------------------
# Checks (e2e.sh, chaos.sh, compose-test.sh): one `ok - ...` / `not ok - ...` line per check,
# counted in PASSED and FAILED (each script sets both to 0 and prints `N passed, M failed`).

ok() {
    PASSED=$((PASSED + 1))
    printf 'ok - %s\n' "$1"
}

not_ok() {
    FAILED=$((FAILED + 1))
    printf 'not ok - %s (%s)\n' "$1" "$2"
}

# print_summary: the `N passed, M failed` line, once.
print_summary() {
    ((${SUMMARY_PRINTED:-0} == 0)) || return 0
    SUMMARY_PRINTED=1
    printf '%s passed, %s failed\n' "$PASSED" "$FAILED"
}

# exit_with_summary: the EXIT trap of e2e.sh and chaos.sh, which define `finish` (it sets
# FINISHED=1). An abort is a failed check; the summary comes last; a failed check makes the
# exit status non-zero.
exit_with_summary() {
    local rc=$?
    if ((FINISHED == 0)); then
        if ((rc != 0)); then not_ok "$(basename "$0") ran to the end" "aborted with exit status $rc"; fi
        finish
    fi
    print_summary
    if ((FAILED > 0 && rc == 0)); then rc=1; fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Messages

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Tools

# Runs a command as root: directly when we are root, through sudo otherwise (when present).
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

# ensure_tool COMMAND [APT_PACKAGE]: installs the package with apt-get when COMMAND is missing.
ensure_tool() {
    local cmd="$1" pkg="${2:-$1}"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "'$cmd' is missing and apt-get is not available: install $pkg"
    log "installing $pkg (for '$cmd')"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
        as_root apt-get update -qq >/dev/null 2>&1 || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null ||
            die "could not install $pkg (needed for '$cmd')"
    fi
    command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but '$cmd' is still missing"
}

# ---------------------------------------------------------------------------------------------
# Addresses and URLs

# Effective value of a variable: its value, or the default when unset or empty.
env_or_default() {
    local name="$1" default="$2"
    local value="${!name:-}"
    if [[ -n "$value" ]]; then printf '%s\n' "$value"; else printf '%s\n' "$default"; fi
}

# addr_host ADDR / addr_port ADDR: split HOST:PORT (IPv6 as [::1]:PORT).
addr_host() {
    local addr="$1"
    if [[ "$addr" =~ ^\[([^]]*)\]:([0-9]+)$ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    elif [[ "$addr" =~ ^([^:]*):([0-9]+)$ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    else
        return 1
    fi
}
addr_port() {
    local addr="$1"
    if [[ "$addr" =~ :([0-9]+)$ ]]; then printf '%s\n' "${BASH_REMATCH[1]}"; else return 1; fi
}

# base_url ADDR: the http:// URL a client uses to reach a listen address (a wildcard
# listen address is reached on the loopback interface).
base_url() {
    local addr="$1" host port
    host="$(addr_host "$addr")" || die "'$addr' is not HOST:PORT"
    port="$(addr_port "$addr")"
    case "$host" in
    "" | 0.0.0.0) host=127.0.0.1 ;;
    "::") host="[::1]" ;;
    *:*) host="[$host]" ;;
    esac
    printf 'http://%s:%s\n' "$host" "$port"
}

# url_host_port URL DEFAULT_PORT: prints "HOST|PORT" of scheme://[user[:pass]@]host[:port]/...
# (HOST is empty when the URL has none, e.g. a PostgreSQL socket URL).
url_host_port() {
    local url="$1" default_port="$2" rest hostport host port
    rest="${url#*://}"
    hostport="${rest%%[/?]*}"
    hostport="${hostport##*@}"
    if [[ "$hostport" =~ ^\[([^]]*)\](:([0-9]+))?$ ]]; then
        host="${BASH_REMATCH[1]}"
        port="${BASH_REMATCH[3]}"
    elif [[ "$hostport" =~ ^([^:]*)(:([0-9]+))?$ ]]; then
        host="${BASH_REMATCH[1]}"
        port="${BASH_REMATCH[3]}"
    else
        return 1
    fi
    printf '%s|%s\n' "$host" "${port:-$default_port}"
}

is_local_host() {
    case "$1" in
    "" | localhost | 127.* | ::1 | 0.0.0.0) return 0 ;;
    *) return 1 ;;
    esac
}

# tcp_open HOST PORT: true when something accepts TCP connections there.
tcp_open() {
    local host="${1:-127.0.0.1}" port="$2"
    # shellcheck disable=SC2016 # expanded by the child shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# port_in_use PORT [HOST]: true when something listens on PORT (any address).
port_in_use() {
    local port="$1" host="${2:-127.0.0.1}"
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
    else
        tcp_open "$host" "$port"
    fi
}

# pg_url_parts URL: prints "ADMIN_URL DBNAME", the admin URL being the same server's
# `postgres` database (query parameters kept).
pg_url_parts() {
    local url="$1"
    if [[ "$url" =~ ^(postgres(ql)?://[^/?]*)/([^?]+)(\?.*)?$ ]]; then
        printf '%s %s\n' "${BASH_REMATCH[1]}/postgres${BASH_REMATCH[4]}" "${BASH_REMATCH[3]}"
    else
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL and RabbitMQ

pg_answers() {
    local admin_url="$1"
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -d "$admin_url" >/dev/null 2>&1
    else
        psql "$admin_url" -XtAqc 'SELECT 1' >/dev/null 2>&1
    fi
}

start_local_postgres() {
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    local dir version cluster started=1
    for dir in /etc/postgresql/*/*/; do
        [[ -d "$dir" ]] || continue
        dir="${dir%/}"
        cluster="${dir##*/}"
        version="${dir%/*}"
        version="${version##*/}"
        log "starting PostgreSQL cluster $version/$cluster"
        # setsid: the server must not die with this script's process group.
        if as_root setsid pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start >/dev/null 2>&1; then
            started=0
        fi
    done
    return "$started"
}

start_local_rabbitmq() {
    command -v rabbitmq-server >/dev/null 2>&1 || return 1
    log "starting RabbitMQ"
    as_root setsid rabbitmq-server -detached >/dev/null 2>&1
}

# wait_until DEADLINE_SECS COMMAND...: polls COMMAND every half second.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# ensure_services: PostgreSQL (of ORDER_DATABASE_URL and PAY_DATABASE_URL) and RabbitMQ (of
# AMQP_URL) answer, starting them when they are installed here and not answering.
ensure_services() {
    local url admin_url db host port amqp_url
    local -a pg_admins=()
    for url in "$(env_or_default ORDER_DATABASE_URL "$DEFAULT_ORDER_DATABASE_URL")" \
        "$(env_or_default PAY_DATABASE_URL "$DEFAULT_PAY_DATABASE_URL")"; do
        read -r admin_url db < <(pg_url_parts "$url") || die "cannot parse database URL '$url'"
        pg_admins+=("$admin_url")
    done
    for admin_url in "${pg_admins[@]}"; do
        pg_answers "$admin_url" && continue
        IFS='|' read -r host port < <(url_host_port "$admin_url" 5432)
        if is_local_host "$host"; then
            start_local_postgres || warn "could not start PostgreSQL (is it installed?)"
        fi
        wait_until 60 pg_answers "$admin_url" ||
            die "PostgreSQL at ${host:-local socket}:$port does not answer (waited 60 s)"
        log "PostgreSQL at ${host:-local socket}:$port answers"
    done

    amqp_url="$(env_or_default AMQP_URL "$DEFAULT_AMQP_URL")"
    local default_port=5672
    [[ "$amqp_url" == amqps://* ]] && default_port=5671
    IFS='|' read -r host port < <(url_host_port "$amqp_url" "$default_port") || die "cannot parse AMQP_URL '$amqp_url'"
    host="${host:-127.0.0.1}"
    if ! tcp_open "$host" "$port"; then
        if is_local_host "$host"; then
            start_local_rabbitmq || warn "could not start RabbitMQ (is it installed?)"
        fi
        wait_until 90 tcp_open "$host" "$port" ||
            die "RabbitMQ at $host:$port does not answer (waited 90 s)"
        if is_local_host "$host" && command -v rabbitmqctl >/dev/null 2>&1; then
            timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
        fi
        log "RabbitMQ at $host:$port answers"
    fi
}

# ensure_database URL: creates URL's database when it does not exist.
ensure_database() {
    local url="$1" admin_url db exists
    read -r admin_url db < <(pg_url_parts "$url") || die "cannot parse database URL '$url'"
    [[ "$db" =~ ^[A-Za-z0-9_.-]+$ ]] || die "unsupported database name '$db' in '$url'"
    exists="$(psql "$admin_url" -XtAqc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ||
        die "cannot query PostgreSQL at '$admin_url'"
    [[ "$exists" == 1 ]] && return 0
    log "creating database $db"
    if ! psql "$admin_url" -XqAc "CREATE DATABASE \"$db\"" >/dev/null 2>&1; then
        # Someone else may have created it at the same moment.
        exists="$(psql "$admin_url" -XtAqc "SELECT 1 FROM pg_database WHERE datname = '$db'")" || true
        [[ "$exists" == 1 ]] || die "could not create database $db on '$admin_url'"
    fi
}

# admin_token_in FILE: exports ADMIN_TOKEN (the admin API's bearer token, docs/admin.md): the caller's if set, else the one saved in FILE, else a new random one saved there,
# so services restarted by a later run of a script get the same token.
admin_token_in() {
    local file="$1"
    if [[ -z "${ADMIN_TOKEN:-}" ]]; then
        if [[ -s "$file" ]]; then
            ADMIN_TOKEN="$(cat "$file")"
        else
            ADMIN_TOKEN="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
            mkdir -p "$(dirname "$file")"
            (umask 077 && printf '%s\n' "$ADMIN_TOKEN" >"$file")
        fi
    fi
    export ADMIN_TOKEN
}

# use_own_state ORDER_DB PAY_DB EXCHANGE QUEUE_PREFIX: exports the services' variables so
# that they use these databases (on ORDER_DATABASE_URL's server), this exchange and queues
# named QUEUE_PREFIX.* that the broker removes 10 minutes after their last use.
use_own_state() {
    local server
    server="$(pg_url_parts "$(env_or_default ORDER_DATABASE_URL "$DEFAULT_ORDER_DATABASE_URL")" | cut -d' ' -f1)"
    server="${server%/*}"
    export ORDER_DATABASE_URL="$server/$1"
    export PAY_DATABASE_URL="$server/$2"
    export AMQP_EXCHANGE="$3"
    export ORDER_QUEUE="$4.order.payment-results"
    export PAY_QUEUE="$4.pay.order-created"
    export AMQP_QUEUE_EXPIRES_MS=600000
}

# drop_database URL: drops URL's database (it may not exist), whoever is connected to it.
drop_database() {
    local admin_url db
    read -r admin_url db < <(pg_url_parts "$1") || die "cannot parse database URL '$1'"
    psql "$admin_url" -XqAc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
        die "cannot drop the database $db"
}

# ensure_databases: order's and pay's databases exist.
ensure_databases() {
    ensure_database "$(env_or_default ORDER_DATABASE_URL "$DEFAULT_ORDER_DATABASE_URL")"
    ensure_database "$(env_or_default PAY_DATABASE_URL "$DEFAULT_PAY_DATABASE_URL")"
}

# ---------------------------------------------------------------------------------------------
# HTTP

# http_status URL: prints the status code of GET URL (000 when nothing answers).
http_status() {
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 3 "$1" 2>/dev/null || true
}

# req METHOD PATH [CURL_ARGS...]: a request to "$GW$PATH" (GW: the caller's base URL); sets
# STATUS and BODY, the headers are in $TMP/headers (TMP: the caller's scratch directory).
req() {
    local method="$1" path="$2"
    shift 2
    : >"$TMP/body"
    : >"$TMP/headers"
    STATUS="$(curl -sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' --max-time 30 \
        -X "$method" "$@" "$GW$path" 2>"$TMP/curl.err")" || STATUS=000
    BODY="$(cat "$TMP/body")"
}

# header NAME: the last response's header NAME (empty when absent).
header() {
    { grep -i "^$1:" "$TMP/headers" || true; } | tail -n1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//; s/ *$//'
}

# ---------------------------------------------------------------------------------------------
# The local stack started by run-local.sh: pid files and logs in .run/ at the repository root,
# or in LMT_RUN_DIR (the failure scenarios and the contract test run their own stack beside a
# developer's).
RUN_DIR="${LMT_RUN_DIR:-$LMT_ROOT/.run}"
# Start order; stop goes the other way.
SERVICES=(pay order gateway)

is_service() {
    case "$1" in
    pay | order | gateway) return 0 ;;
    *) return 1 ;;
    esac
}

pid_file() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$RUN_DIR" "$1"; }

# service_pid NAME: prints the pid from NAME's pid file when that process is alive and is
# NAME's binary (not a recycled pid); fails otherwise.
service_pid() {
    local name="$1" file pid comm
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(head -n1 "$file" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/comm" ]]; then
        comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
        [[ "$comm" == "$name" ]] || return 1
    fi
    printf '%s\n' "$pid"
}

# running_services: prints the names of the services of .run/ that are alive.
running_services() {
    local name
    for name in "${SERVICES[@]}"; do
        if service_pid "$name" >/dev/null; then printf '%s\n' "$name"; fi
    done
}

# print_log_tails [LINES [NEWER_THAN]]: the end of each service log, for a failure report; with
# NEWER_THAN (a file), only the logs modified after it.
print_log_tails() {
    local lines="${1:-40}" newer="${2:-}" name file printed=0
    for name in "${SERVICES[@]}"; do
        file="$(log_file "$name")"
        [[ -f "$file" ]] || continue
        [[ -z "$newer" || "$file" -nt "$newer" ]] || continue
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file"
        tail -n "$lines" "$file"
        printed=1
    done
    if ((printed)); then printf -- '-----\n'; fi
}

# ---------------------------------------------------------------------------------------------
# A stack of a test script's own (e2e, the scenarios, the contract test), beside a developer's.

# own_stack NAME [PORT_BASE]: exports the variables of NAME's stack: databases lmt_NAME_order
# and lmt_NAME_pay, exchange lmt.NAME.events, queues NAME.*, the admin token; with PORT_BASE,
# ports PORT_BASE+2 (pay), +3 (order), +9 (gateway) and pid files and logs in .run/NAME/
# (without: run-local.sh's ports and .run/). Sets GW, the gateway's URL.
own_stack() {
    local name="$1" base="${2:-}"
    if [[ -n "$base" ]]; then
        export LMT_RUN_DIR="$LMT_ROOT/.run/$name" PAY_ADDR="127.0.0.1:$((base + 2))" \
            ORDER_ADDR="127.0.0.1:$((base + 3))" GATEWAY_ADDR="127.0.0.1:$((base + 9))"
        RUN_DIR="$LMT_RUN_DIR"
        unset GATEWAY_ROUTES ORDER_PAY_URL
    fi
    use_own_state "lmt_${name}_order" "lmt_${name}_pay" "lmt.$name.events" "$name"
    mkdir -p "$RUN_DIR"
    admin_token_in "$RUN_DIR/admin-token"
    GW="$(base_url "$(env_or_default GATEWAY_ADDR "$DEFAULT_GATEWAY_ADDR")")"
}

# start_own_stack: fresh databases, then scripts/run-local.sh start (output in
# RUN_DIR/start.out, its end printed on failure, then status 1). Refuses to start over a
# stack of RUN_DIR that runs already. stop_own_stack, from the caller's exit trap, stops it.
start_own_stack() {
    local running
    running="$(running_services | paste -sd, - || true)"
    [[ -z "$running" ]] || die "the stack of $RUN_DIR is running ($running): LMT_RUN_DIR=$RUN_DIR scripts/run-local.sh stop"
    ensure_services
    drop_database "$ORDER_DATABASE_URL"
    drop_database "$PAY_DATABASE_URL"
    delete_own_queues
    touch -d "@$(($(date +%s) - 1))" "$RUN_DIR/t0"
    log "starting the stack (gateway $GW, logs in $RUN_DIR)"
    OWN_STACK_STARTED=1
    "$LMT_ROOT/scripts/run-local.sh" start >"$RUN_DIR/start.out" 2>&1 && return 0
    tail -n 20 "$RUN_DIR/start.out" >&2
    return 1
}

# delete_own_queues: the queues of a throw-away stack (and their dead-letter queues) go
# before it starts: a queue left by an earlier run (within its 10 minutes of expiry) may have
# been declared with another type, and the broker refuses to redeclare it as a quorum queue.
# Needs rabbitmqctl (a local broker); otherwise the queues simply expire.
delete_own_queues() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    local queue
    for queue in "$ORDER_QUEUE" "$PAY_QUEUE" "$ORDER_QUEUE.dead" "$PAY_QUEUE.dead"; do
        as_root rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
}

# stop_own_stack [TAILS]: stops what start_own_stack started, once; TAILS=1 prints the end of
# the service logs this run wrote first.
stop_own_stack() {
    ((${OWN_STACK_STARTED:-0})) || return 0
    OWN_STACK_STARTED=0
    if ((${1:-0})); then print_log_tails 40 "$RUN_DIR/t0"; fi
    "$LMT_ROOT/scripts/run-local.sh" stop >/dev/null 2>&1 || warn "scripts/run-local.sh stop failed"
}

# e2e_tests GATEWAY_URL STOP_PAY START_PAY: the end-to-end tests (crates/system-tests/tests/api/e2e.rs)
# against a running stack whose admin token is ADMIN_TOKEN; STOP_PAY and START_PAY are the
# shell commands that stop pay and start it again.
e2e_tests() {
    E2E_GATEWAY_URL="$1" E2E_STOP_PAY="$2" E2E_START_PAY="$3" E2E_ADMIN_TOKEN="$ADMIN_TOKEN" \
        cargo test -p system-tests --test api e2e::
}
