#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the main broker, with no Docker: three
# `rabbitmq-server` instances (lmt-a, lmt-b, lmt-c) with their own node names, ports and data
# folders, joined into one cluster, to try quorum queues and broker faults for real.
#
#   scripts/cluster.sh start            start A, B and C, join B and C to A, wait for three running nodes
#   scripts/cluster.sh stop             stop all three (their data stays: `start` brings the same cluster back)
#   scripts/cluster.sh status           each node's state and ports, and the running nodes the cluster sees
#   scripts/cluster.sh start-node X     start node X (a, b, c, lmt-a or lmt-a@localhost)
#   scripts/cluster.sh stop-node X      stop node X cleanly (rabbitmqctl stop)
#   scripts/cluster.sh kill-node X      SIGKILL node X's Erlang VM
#   scripts/cluster.sh leader QUEUE     the node that leads quorum queue QUEUE (virtual host /)
#   scripts/cluster.sh urls             the three nodes' AMQP URLs, comma-separated (for AMQP_URL)
#   scripts/cluster.sh wipe             stop all three and delete their data (the next start forms a new cluster)
#
# Node X listens on 127.0.0.1 only: AMQP on CLUSTER_AMQP_PORT_BASE+i (default 5701-5703),
# management on CLUSTER_MGMT_PORT_BASE+i (15701-15703), Erlang distribution on
# CLUSTER_DIST_PORT_BASE+i (25701-25703). Data, logs and configuration: CLUSTER_DIR/lmt-X
# (default .run/cluster/lmt-X). The main broker (rabbit@localhost) is never stopped, reset or joined.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

CLUSTER_DIR="${CLUSTER_DIR:-$RUN_DIR/cluster}"
CLUSTER_AMQP_PORT_BASE="${CLUSTER_AMQP_PORT_BASE:-5700}"
CLUSTER_MGMT_PORT_BASE="${CLUSTER_MGMT_PORT_BASE:-15700}"
CLUSTER_DIST_PORT_BASE="${CLUSTER_DIST_PORT_BASE:-25700}"
# Short node names on `localhost`, as the main node's: no DNS needed.
CLUSTER_HOST=localhost
NODES=(a b c)
# The node the others join (`leader` and `status` ask whichever node runs).
FIRST=a
START_DEADLINE_SECS="${START_DEADLINE_SECS:-180}"
STOP_DEADLINE_SECS="${STOP_DEADLINE_SECS:-60}"
# The nodes' plugins: the management API (status, `leader`) and the consistent-hash exchange
# (queues sharded by a routing key's hash).
PLUGINS='[rabbitmq_management,rabbitmq_consistent_hash_exchange].'

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------------------------
# Names, ports, folders

# node_id X: a, b or c from any of a, A, lmt-a, lmt-a@HOST.
node_id() {
    local x="${1,,}"
    x="${x%%@*}"
    x="${x#lmt-}"
    case "$x" in
    a | b | c) printf '%s\n' "$x" ;;
    *) die "unknown node '$1': a, b or c (or lmt-a, lmt-a@$CLUSTER_HOST, ...)" ;;
    esac
}

node_index() {
    case "$1" in
    a) echo 1 ;;
    b) echo 2 ;;
    c) echo 3 ;;
    esac
}

node_name() { printf 'lmt-%s@%s\n' "$1" "$CLUSTER_HOST"; }
node_dir() { printf '%s/lmt-%s\n' "$CLUSTER_DIR" "$1"; }
amqp_port() { echo $((CLUSTER_AMQP_PORT_BASE + $(node_index "$1"))); }
mgmt_port() { echo $((CLUSTER_MGMT_PORT_BASE + $(node_index "$1"))); }
dist_port() { echo $((CLUSTER_DIST_PORT_BASE + $(node_index "$1"))); }
amqp_url() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(amqp_port "$1")"; }

# The folder holding the RabbitMQ scripts themselves: the Debian and RPM packages put wrappers
# in /usr/sbin that switch to the `rabbitmq` user, whose files these nodes do not use.
rabbitmq_bin_dir() {
    local server
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        printf '/usr/lib/rabbitmq/bin\n'
        return 0
    fi
    server="$(command -v rabbitmq-server)" || die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    dirname "$(readlink -f "$server")"
}

# The Erlang cookie of the main node: the packaged server runs as the `rabbitmq` user, whose
# home holds it; a server run by hand uses the caller's. The nodes here and their CLI calls
# use the same one, so `rabbitmqctl -n lmt-a@localhost ...` works from anywhere on the machine.
main_cookie_file() {
    local home file
    home="$(getent passwd rabbitmq 2>/dev/null | cut -d: -f6)" || true
    for file in "${home:+$home/.erlang.cookie}" "${HOME:+$HOME/.erlang.cookie}"; do
        if [[ -n "$file" && -r "$file" ]]; then
            printf '%s\n' "$file"
            return 0
        fi
    done
    return 1
}

# The nodes' HOME: only the cookie is in it, a link to the main node's (no copy of the secret).
# Without a main cookie, Erlang writes a new one there on first start.
prepare_home() {
    local home="$CLUSTER_DIR/home" cookie
    mkdir -p "$home"
    if cookie="$(main_cookie_file)"; then
        ln -sfn "$cookie" "$home/.erlang.cookie"
    fi
}

# prepare_node X: X's folders and configuration, rewritten on every start so that a changed
# port base takes effect.
prepare_node() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
# Written by scripts/cluster.sh on each start.
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
log.console = false
log.file.level = info
EOF
    printf '%s\n' "$PLUGINS" >"$dir/enabled_plugins"
    # Read instead of the system's rabbitmq-env.conf, which names the main node.
    printf '# Written by scripts/cluster.sh: the settings are in its environment variables.\n' \
        >"$dir/rabbitmq-env.conf"
}

# in_node_env X COMMAND...: runs a RabbitMQ script with X's environment.
in_node_env() {
    local n="$1" dir
    shift
    dir="$(node_dir "$n")"
    env HOME="$CLUSTER_DIR/home" \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        RABBITMQ_NODENAME="$(node_name "$n")" \
        RABBITMQ_DIST_PORT="$(dist_port "$n")" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PID_FILE="$dir/pid" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        "$@"
}

# ctl X ARGS...: rabbitmqctl against node X, and only X (-n is always given).
ctl() {
    local n="$1"
    shift
    in_node_env "$n" timeout 120 "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

# ctl_quiet X ARGS...: ctl, its output shown only when it fails (joining prints harmless
# feature-flag warnings).
ctl_quiet() {
    local n="$1" out
    out="$(ctl "$@" 2>&1)" || die "rabbitmqctl -n $(node_name "$n") ${*:2} failed: $out"
}

queues_ctl() {
    local n="$1"
    shift
    in_node_env "$n" timeout 60 "$RMQ_BIN/rabbitmq-queues" -n "$(node_name "$n")" "$@"
}

# ---------------------------------------------------------------------------------------------
# Node state

# node_pid X: the pid of X's Erlang VM when it is alive: the pid its node wrote, checked to be an
# Erlang VM working in X's folder (`launch` starts it there), never a recycled pid.
node_pid() {
    local n="$1" file pid
    file="$(node_dir "$n")/pid"
    [[ -f "$file" ]] || return 1
    pid="$(head -n1 "$file" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == beam* ]] || return 1
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(cd "$(node_dir "$n")" && pwd -P)" ]] || return 1
    printf '%s\n' "$pid"
}

# node_up X: X's broker accepts AMQP connections (the listener opens once the node has booted).
node_up() { tcp_open 127.0.0.1 "$(amqp_port "$1")"; }

# running_nodes X: the running cluster members as node X sees them, one a line.
running_nodes() {
    ctl "$1" cluster_status --formatter json 2>/dev/null | jq -r '.running_nodes[]'
}

cluster_has_three() {
    [[ "$(running_nodes "$FIRST" | wc -l)" -eq 3 ]]
}

first_up_node() {
    local n
    for n in "${NODES[@]}"; do
        if node_up "$n"; then
            printf '%s\n' "$n"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Commands

# launch X: starts X's VM in the background (it boots on its own; `await_node` waits for it).
launch() {
    local n="$1" dir port
    dir="$(node_dir "$n")"
    if node_pid "$n" >/dev/null; then
        log "$(node_name "$n") is already running"
        return 0
    fi
    for port in "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(dist_port "$n")"; do
        if port_in_use "$port"; then
            die "port $port (for $(node_name "$n")) is taken by another process: pick other CLUSTER_*_PORT_BASE values"
        fi
    done
    prepare_home
    prepare_node "$n"
    log "starting $(node_name "$n") (AMQP $(amqp_port "$n"), management $(mgmt_port "$n"), distribution $(dist_port "$n"))"
    # setsid: the node must not die with this script's process group.
    (cd "$dir" && in_node_env "$n" setsid "$RMQ_BIN/rabbitmq-server" -detached) >>"$dir/log/launch.log" 2>&1 ||
        die "$(node_name "$n") did not start: see $dir/log/launch.log"
}

# await_node X: X has booted (a node of a cluster waits for its peers while booting).
await_node() {
    local n="$1"
    wait_until "$START_DEADLINE_SECS" node_up "$n" ||
        die "$(node_name "$n") did not open AMQP port $(amqp_port "$n") within $START_DEADLINE_SECS s: see $(node_dir "$n")/log"
}

# join X: makes X a member of the first node's cluster. Only a node that knows no other member is
# reset and joined: a member's data (its queue replicas) is never thrown away here.
join() {
    local n="$1" members
    members="$(ctl "$n" cluster_status --formatter json | jq -r '(.disk_nodes + (.ram_nodes // []))[]')" ||
        die "cannot read the cluster status of $(node_name "$n")"
    grep -qxF "$(node_name "$FIRST")" <<<"$members" && return 0
    [[ "$members" == "$(node_name "$n")" ]] ||
        die "$(node_name "$n") belongs to another cluster ($(paste -sd' ' <<<"$members")): run 'wipe' to start afresh"
    log "joining $(node_name "$n") to $(node_name "$FIRST")"
    ctl_quiet "$n" stop_app
    ctl_quiet "$n" reset
    ctl_quiet "$n" join_cluster "$(node_name "$FIRST")"
    ctl_quiet "$n" start_app
}

cmd_start() {
    local n
    if node_pid a >/dev/null && node_pid b >/dev/null && node_pid c >/dev/null && cluster_has_three; then
        log "the cluster is already running (3 nodes)"
        cmd_urls
        return 0
    fi
    # All at once: a node that was stopped with the others waits for them while it boots.
    for n in "${NODES[@]}"; do launch "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in "${NODES[@]}"; do
        [[ "$n" == "$FIRST" ]] || join "$n"
    done
    wait_until "$START_DEADLINE_SECS" cluster_has_three ||
        die "the cluster does not show three running nodes after $START_DEADLINE_SECS s: $(running_nodes "$FIRST" | paste -sd' ')"
    log "cluster running: $(running_nodes "$FIRST" | paste -sd' ')"
    cmd_urls
}

cmd_start_node() {
    local n
    n="$(node_id "$1")"
    launch "$n"
    await_node "$n"
    [[ "$n" == "$FIRST" ]] || join "$n"
    log "$(node_name "$n") is running"
}

cmd_stop_node() {
    local n pid
    n="$(node_id "$1")"
    if ! pid="$(node_pid "$n")"; then
        log "$(node_name "$n") is not running"
        return 0
    fi
    log "stopping $(node_name "$n")"
    # With the pid file, `stop` returns once the VM has exited.
    if ! ctl "$n" stop "$(node_dir "$n")/pid" >/dev/null 2>&1; then
        warn "rabbitmqctl stop failed for $(node_name "$n")"
    fi
    if ! wait_until "$STOP_DEADLINE_SECS" node_gone "$pid"; then
        warn "$(node_name "$n") still runs after $STOP_DEADLINE_SECS s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 10 node_gone "$pid" || die "$(node_name "$n") (pid $pid) does not exit"
    fi
}

node_gone() { ! kill -0 "$1" 2>/dev/null; }

cmd_kill_node() {
    local n pid
    n="$(node_id "$1")"
    pid="$(node_pid "$n")" || die "$(node_name "$n") is not running"
    log "SIGKILL $(node_name "$n") (pid $pid)"
    kill -KILL "$pid"
    wait_until 10 node_gone "$pid" || die "$(node_name "$n") (pid $pid) does not exit"
}

cmd_stop() {
    local n
    for n in c b a; do cmd_stop_node "$n"; done
}

cmd_wipe() {
    cmd_stop
    log "deleting $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
}

# status: one line per node, then the cluster's running nodes; exit 0 when all three run.
cmd_status() {
    local n pid state all=0 seen
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            if node_up "$n"; then state="running (pid $pid)"; else state="booting (pid $pid)" all=1; fi
        else
            state="stopped" all=1
        fi
        printf '%-18s %-22s amqp 127.0.0.1:%s  management http://127.0.0.1:%s  distribution %s\n' \
            "$(node_name "$n")" "$state" "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(dist_port "$n")"
    done
    if n="$(first_up_node)"; then
        seen="$(running_nodes "$n" | paste -sd' ')"
        printf 'running cluster members (as %s sees them): %s\n' "$(node_name "$n")" "${seen:-none}"
        [[ "$(wc -w <<<"$seen")" -eq 3 ]] || all=1
    fi
    return "$all"
}

# leader QUEUE: the node whose replica of quorum queue QUEUE leads, asked of the members through
# any running node (Raft's own view, current at once; the management API's can lag). A member
# that is not following (its node is down, or its replica did not start) is named on stderr:
# with one such member, the queue no longer survives the loss of another node.
cmd_leader() {
    local queue="$1" n out lagging
    n="$(first_up_node)" || die "no node of the cluster is running"
    out="$(queues_ctl "$n" quorum_status "$queue" --formatter json 2>&1)" ||
        die "cannot read the state of queue '$queue' (is it a quorum queue on this cluster?): $out"
    lagging="$(jq -r '.[] | select(."Raft State" != "leader" and ."Raft State" != "follower")
        | "\(."Node Name") (\(."Raft State"))"' <<<"$out" | paste -sd' ')"
    [[ -z "$lagging" ]] || warn "members of '$queue' not following the leader: $lagging"
    jq -r '.[] | select(."Raft State" == "leader") | ."Node Name"' <<<"$out" | grep . ||
        die "queue '$queue' has no leader now (no majority of its members is running?)"
}

cmd_urls() {
    local n urls=()
    for n in "${NODES[@]}"; do urls+=("$(amqp_url "$n")"); done
    (
        IFS=,
        printf '%s\n' "${urls[*]}"
    )
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
    start | stop | status | urls | wipe)
        [[ $# -eq 1 ]] || die "'$cmd' takes no argument"
        ;;
    start-node | stop-node | kill-node | leader)
        [[ $# -eq 2 ]] || die "'$cmd' takes one argument"
        ;;
    -h | --help | help)
        usage
        return 0
        ;;
    *)
        usage >&2
        return 2
        ;;
    esac
    ensure_tool jq
    RMQ_BIN="$(rabbitmq_bin_dir)"
    case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    urls) cmd_urls ;;
    wipe) cmd_wipe ;;
    start-node) cmd_start_node "$2" ;;
    stop-node) cmd_stop_node "$2" ;;
    kill-node) cmd_kill_node "$2" ;;
    leader) cmd_leader "$2" ;;
    esac
}

main "$@"
