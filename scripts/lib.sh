#!/usr/bin/env bash
# Shared shell functions of the scripts in this folder: source it, do not run it. It never
# stops PostgreSQL or RabbitMQ: ensure_services starts them when they are local and not answering.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || { echo "scripts/lib.sh: source it, do not run it" >&2 && exit 2; }
[[ -z "${LMT_LIB_SOURCED:-}" ]] || return 0
LMT_LIB_SOURCED=1

# Repository root, whatever the caller's working directory.
LMT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The services' own defaults (`order --help`, `pay --help`, `gateway --help`); an empty
# variable counts as unset, as in the services. Not exported: a service unset gets its own.
: "${ORDER_ADDR:=127.0.0.1:8763}" "${PAY_ADDR:=127.0.0.1:8762}" "${GATEWAY_ADDR:=127.0.0.1:8769}"
: "${ORDER_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/order_db}"
: "${PAY_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/pay_db}"
: "${AMQP_URL:=amqp://guest:guest@127.0.0.1:5672/%2f}"

# Messages, and the checks of compose-test.sh, contract-test.sh and browser-test.sh: one
# `ok - ...` / `not ok - ...` line per check, counted, and `N passed, M failed` at the end.

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PASSED=0 FAILED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$1"; }
not_ok() { FAILED=$((FAILED + 1)); printf 'not ok - %s (%s)\n' "$1" "$2"; }
# check DESCRIPTION COMMAND...: ok when COMMAND succeeds, else not ok with the end of its output.
check() {
    local desc="$1" out
    shift
    if out="$("$@" 2>&1)"; then ok "$desc"; else not_ok "$desc" "$(tail -n 20 <<<"$out")"; fi
}

# exit_with_summary: the checking scripts' EXIT trap. An abort (unless STOPPED=1) is a failed
# check; then `finish RC` if the script has one, else stop_own_stack (logs when a check
# failed); the summary last; a failed check makes the exit status non-zero.
exit_with_summary() {
    local rc=$?
    if ((rc != 0 && ${STOPPED:-0} == 0)); then not_ok "$(basename "$0") ran to the end" "aborted with exit status $rc"; fi
    if declare -F finish >/dev/null; then finish "$rc"; else stop_own_stack $((FAILED > 0)); fi
    printf '%s passed, %s failed\n' "$PASSED" "$FAILED"
    if ((FAILED > 0 && rc == 0)); then rc=1; fi
    exit "$rc"
}

# Runs a command as root: directly when we are root, through sudo otherwise (when present).
as_root() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else command -v sudo >/dev/null && sudo "$@"; fi; }

# apt_install PACKAGE...: from the distribution's packages, with `apt-get update` only when
# the first try fails; waits for another apt-get's lock (a shared machine).
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    local -a install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300)
    as_root "${install[@]}" "$@" >/dev/null 2>&1 && return 0
    as_root apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 || true
    as_root "${install[@]}" "$@" >/dev/null
}

# ensure_tool COMMAND [APT_PACKAGE]: installs the package when COMMAND is missing.
ensure_tool() {
    local cmd="$1" pkg="${2:-$1}"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    log "installing $pkg (for '$cmd')"
    apt_install "$pkg" || die "'$cmd' is missing and installing $pkg failed (no apt-get, no root?): install $pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but '$cmd' is still missing"
}

# wait_until DEADLINE_SECS COMMAND...: polls COMMAND every half second.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do if ((SECONDS >= deadline)); then return 1; fi; sleep 0.5; done
}

# base_url ADDR: the http:// URL a client uses to reach a listen address HOST:PORT (IPv6 as
# [::1]:PORT; a wildcard listen address is reached on the loopback interface).
base_url() {
    local host="${1%:*}" port="${1##*:}"
    [[ "$1" == *:* && "$port" =~ ^[0-9]+$ ]] || die "'$1' is not HOST:PORT"
    [[ -n "$host" && "$host" != 0.0.0.0 ]] || host=127.0.0.1
    [[ "$host" != "[::]" ]] || host="[::1]"
    printf 'http://%s:%s\n' "$host" "$port"
}

# url_host_port URL DEFAULT_PORT: "HOST|PORT" of scheme://[user[:pass]@]host[:port]/... (HOST
# empty when the URL has none, e.g. a PostgreSQL socket URL).
url_host_port() {
    local rest="${1#*://}"
    rest="${rest%%[/?]*}"
    rest="${rest##*@}"
    [[ "$rest" =~ ^(\[([^]]*)\]|([^:]*))(:([0-9]+))?$ ]] || return 1
    printf '%s|%s\n' "${BASH_REMATCH[2]}${BASH_REMATCH[3]}" "${BASH_REMATCH[5]:-$2}"
}

is_local_host() { [[ "$1" =~ ^(|localhost|127\..*|::1|0\.0\.0\.0)$ ]]; }

# tcp_open HOST PORT: true when something accepts TCP connections there.
# shellcheck disable=SC2016 # expanded by the child shell
tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "${1:-127.0.0.1}" "$2" 2>/dev/null; }

# port_in_use PORT: true when something listens on PORT (any address).
port_in_use() { if command -v ss >/dev/null; then [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; else tcp_open 127.0.0.1 "$1"; fi; }

# pg_admin_url URL: the same server's `postgres` database (query parameters kept).
pg_admin_url() { sed -E 's#^(postgres(ql)?://[^/?]*)/[^?]*#\1/postgres#' <<<"$1"; }
pg_db_name() { sed -E 's#^postgres(ql)?://[^/?]*/([^?]*).*#\2#' <<<"$1"; }

start_local_postgres() {
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    local dir version cluster started=1
    for dir in /etc/postgresql/*/*/; do
        [[ -d "$dir" ]] || continue
        IFS=/ read -r version cluster _ <<<"${dir#/etc/postgresql/}"
        log "starting PostgreSQL cluster $version/$cluster"
        # setsid: the server must not die with this script's process group. One that runs already
        # (systemd started it on install) reloads, so a pg_hba.conf just written applies.
        { as_root setsid pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start ||
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" reload; } >/dev/null 2>&1 && started=0
    done
    return "$started"
}

# install_server PACKAGE: with INSTALL_SERVERS=1 (run-local.sh), a local PostgreSQL or RabbitMQ
# that is not installed (a fresh machine): on Debian or Ubuntu, installed from the
# distribution's packages, saying so first; elsewhere, the packages are named and it stops.
install_server() {
    [[ "${INSTALL_SERVERS:-0}" == 1 ]] || return 0
    { [[ -r /etc/debian_version ]] && command -v apt-get >/dev/null; } || die "not installed here: $1. Install it with your system's package manager
(the packages are usually called postgresql and rabbitmq-server; Homebrew: postgresql@17 and
rabbitmq), or point ORDER_DATABASE_URL, PAY_DATABASE_URL and AMQP_URL at running servers"
    log "not installed here: $1; installing it from the distribution's packages (apt-get)"
    apt_install "$1" || die "could not install $1 (root or sudo needed)"
    [[ "$1" == postgresql ]] || return 0
    # The URLs name the user postgres without a password, over TCP: a fresh cluster asks for
    # one. Trusted from this machine only, as on a development machine.
    local hba
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        log "letting postgres connect without a password from 127.0.0.1 and ::1 ($hba; local development only)"
        as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    done
}

# ensure_services: PostgreSQL (of ORDER_DATABASE_URL and PAY_DATABASE_URL) and RabbitMQ (of
# AMQP_URL) answer, starting them when they are local and not answering (install_server first
# when they are not installed either).
ensure_services() {
    local url host port
    for url in "$ORDER_DATABASE_URL" "$PAY_DATABASE_URL"; do
        pg_isready -q -d "$url" >/dev/null 2>&1 && continue
        IFS='|' read -r host port < <(url_host_port "$url" 5432) || die "cannot parse database URL '$url'"
        if is_local_host "$host"; then
            command -v pg_ctlcluster >/dev/null || install_server postgresql
            start_local_postgres || warn "could not start PostgreSQL (is it installed?)"
        fi
        wait_until 60 pg_isready -q -d "$url" || die "PostgreSQL at ${host:-local socket}:$port does not answer (waited 60 s)"
        log "PostgreSQL at ${host:-local socket}:$port answers"
    done
    port=5672
    [[ "$AMQP_URL" == amqps://* ]] && port=5671
    IFS='|' read -r host port < <(url_host_port "$AMQP_URL" "$port") || die "cannot parse AMQP_URL '$AMQP_URL'"
    host="${host:-127.0.0.1}"
    tcp_open "$host" "$port" && return 0
    if is_local_host "$host"; then
        command -v rabbitmq-server >/dev/null || install_server rabbitmq-server
        log "starting RabbitMQ"
        as_root setsid rabbitmq-server -detached >/dev/null 2>&1 || warn "could not start RabbitMQ (is it installed?)"
    fi
    wait_until 90 tcp_open "$host" "$port" || die "RabbitMQ at $host:$port does not answer (waited 90 s)"
    if is_local_host "$host" && command -v rabbitmqctl >/dev/null 2>&1; then
        timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
    fi
    log "RabbitMQ at $host:$port answers"
}

# ensure_database URL: creates URL's database when it does not exist (someone else may
# create it at the same moment).
ensure_database() {
    local admin db query
    admin="$(pg_admin_url "$1")" db="$(pg_db_name "$1")"
    [[ "$db" =~ ^[A-Za-z0-9_.-]+$ ]] || die "unsupported database name '$db' in '$1'"
    query="SELECT 1 FROM pg_database WHERE datname = '$db'"
    [[ "$(psql "$admin" -XtAqc "$query")" == 1 ]] && return 0
    log "creating database $db"
    psql "$admin" -XqAc "CREATE DATABASE \"$db\"" >/dev/null 2>&1 ||
        [[ "$(psql "$admin" -XtAqc "$query")" == 1 ]] || die "could not create database $db on '$admin'"
}

# drop_database URL: drops URL's database (it may not exist), whoever is connected to it.
drop_database() { psql "$(pg_admin_url "$1")" -XqAc "DROP DATABASE IF EXISTS \"$(pg_db_name "$1")\" WITH (FORCE)" >/dev/null || die "cannot drop $1"; }

# admin_token_in FILE: exports ADMIN_TOKEN (the admin API's bearer token, docs/admin.md): the
# caller's if set, else the one saved in FILE, else a new random one saved there, so services
# restarted by a later run of a script get the same token.
admin_token_in() {
    if [[ -z "${ADMIN_TOKEN:-}" && -s "$1" ]]; then
        ADMIN_TOKEN="$(cat "$1")"
    elif [[ -z "${ADMIN_TOKEN:-}" ]]; then
        ADMIN_TOKEN="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
        mkdir -p "$(dirname "$1")"
        (umask 077 && printf '%s\n' "$ADMIN_TOKEN" >"$1")
    fi
    export ADMIN_TOKEN
}

# http_status URL: the status code of GET URL (000 when nothing answers).
http_status() { curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 3 "$1" 2>/dev/null || true; }

# The local stack started by run-local.sh: pid files and logs in .run/ at the repository root,
# or in LMT_RUN_DIR (the test scripts run their own stack beside a developer's).
RUN_DIR="${LMT_RUN_DIR:-$LMT_ROOT/.run}"
# Start order; stop goes the other way.
SERVICES=(pay order gateway)
# The binaries run-local.sh builds and runs: release, or debug with RUN_LOCAL_PROFILE=dev.
# shellcheck disable=SC2034 # used by the scripts that source this file
if [[ "${RUN_LOCAL_PROFILE:-release}" == dev ]]; then BUILD=(cargo build --bins) BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"; else
    BUILD=(cargo build --release --bins) BIN_DIR="${CARGO_TARGET_DIR:-target}/release"; fi

is_service() { [[ " ${SERVICES[*]} " == *" $1 "* ]]; }
pid_file() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$RUN_DIR" "$1"; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# service_pid NAME: prints the pid from NAME's pid file when that process is alive and is
# NAME's binary (not a recycled pid); fails otherwise.
service_pid() {
    local pid
    pid="$(head -n1 "$(pid_file "$1")" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ ! -r "/proc/$pid/comm" || "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
    printf '%s\n' "$pid"
}

# running_services: the names of the services of RUN_DIR that are alive, on one line.
running_services() {
    local name running=()
    for name in "${SERVICES[@]}"; do service_pid "$name" >/dev/null && running+=("$name"); done
    printf '%s\n' "${running[*]}"
}

# own_stack NAME [PORT_BASE]: a test script's own stack (e2e, contract, browser, the scenarios),
# beside a developer's: exports its variables: databases lmt_NAME_order
# and lmt_NAME_pay, exchange lmt.NAME.events, queues NAME.* that the broker removes 10 minutes
# after their last use, the admin token; with PORT_BASE, ports PORT_BASE+2 (pay), +3 (order),
# +9 (gateway) and pid files and logs in .run/NAME/ (without: run-local.sh's ports and .run/).
# Sets GW, the gateway's URL.
own_stack() {
    local name="$1" base="${2:-}" server
    if [[ -n "$base" ]]; then
        export LMT_RUN_DIR="$LMT_ROOT/.run/$name" PAY_ADDR="127.0.0.1:$((base + 2))" \
            ORDER_ADDR="127.0.0.1:$((base + 3))" GATEWAY_ADDR="127.0.0.1:$((base + 9))"
        RUN_DIR="$LMT_RUN_DIR"
        unset GATEWAY_ROUTES ORDER_PAY_URL
    fi
    server="$(pg_admin_url "$ORDER_DATABASE_URL")"
    server="${server%/postgres*}"
    export ORDER_DATABASE_URL="$server/lmt_${name}_order" PAY_DATABASE_URL="$server/lmt_${name}_pay"
    export AMQP_EXCHANGE="lmt.$name.events" ORDER_QUEUE="$name.order.payment-results"
    export PAY_QUEUE="$name.pay.order-created" AMQP_QUEUE_EXPIRES_MS=600000
    mkdir -p "$RUN_DIR"
    admin_token_in "$RUN_DIR/admin-token"
    GW="$(base_url "$GATEWAY_ADDR")"
}

# start_own_stack [RUN_LOCAL_ARGS...]: fresh databases, then scripts/run-local.sh start ARGS
# (output in RUN_DIR/start.out, its end printed on failure, then status 1). Refuses to start
# over a stack of RUN_DIR that runs already. stop_own_stack, from the caller's exit trap, stops it.
start_own_stack() {
    local running
    running="$(running_services)"
    [[ -z "$running" ]] || die "the stack of $RUN_DIR is running ($running): LMT_RUN_DIR=$RUN_DIR scripts/run-local.sh stop"
    ensure_services
    drop_database "$ORDER_DATABASE_URL"
    drop_database "$PAY_DATABASE_URL"
    delete_own_queues
    touch -d "@$(($(date +%s) - 1))" "$RUN_DIR/t0"
    log "starting the stack (gateway $GW, logs in $RUN_DIR)"
    OWN_STACK_STARTED=1
    "$LMT_ROOT/scripts/run-local.sh" start "$@" >"$RUN_DIR/start.out" 2>&1 && return 0
    tail -n 20 "$RUN_DIR/start.out" >&2
    return 1
}

# delete_own_queues: an earlier run's queues (and dead-letter queues) may have another type, which
# the broker refuses to redeclare (a quorum queue over a classic one). Needs a local rabbitmqctl.
delete_own_queues() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    local q
    for q in "$ORDER_QUEUE" "$PAY_QUEUE" "$ORDER_QUEUE.dead" "$PAY_QUEUE.dead"; do as_root rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
}

# stop_own_stack [TAILS]: stops what start_own_stack started, once; TAILS=1 prints the end of
# the service logs this run wrote first.
stop_own_stack() {
    ((${OWN_STACK_STARTED:-0})) || return 0
    OWN_STACK_STARTED=0
    local name
    for name in "${SERVICES[@]}"; do
        [[ "${1:-0}" == 1 && "$(log_file "$name")" -nt "$RUN_DIR/t0" ]] || continue
        printf -- '----- last 40 lines of %s -----\n' "$(log_file "$name")"
        tail -n 40 "$(log_file "$name")"
    done
    "$LMT_ROOT/scripts/run-local.sh" stop >/dev/null 2>&1 || warn "scripts/run-local.sh stop failed"
}

# e2e_tests GATEWAY_URL STOP_PAY START_PAY [FILTERS...]: the end-to-end tests
# (crates/system-tests/tests/api/e2e.rs, and FILTERS' ignored ones) against a running stack
# whose admin token is ADMIN_TOKEN; STOP_PAY and START_PAY are the shell commands that stop
# pay and start it again.
e2e_tests() {
    E2E_GATEWAY_URL="$1" E2E_STOP_PAY="$2" E2E_START_PAY="$3" E2E_ADMIN_TOKEN="$ADMIN_TOKEN" \
        cargo test -p system-tests --test api -- --include-ignored e2e:: "${@:4}"
}
