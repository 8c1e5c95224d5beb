#!/usr/bin/env bash
# Runs docker-compose.yml for real and talks to it: the file users run, on this machine.
#
#  1. Installs what is missing (Debian's docker.io, docker-compose, debootstrap, curl, jq) and
#     starts dockerd when it is not running (detached: it keeps running afterwards, and the
#     images it holds are the cache of the next run). dockerd's log: COMPOSE_TEST_DOCKERD_LOG.
#  2. Builds local stand-ins for the official images, for a machine that cannot pull: a Debian
#     base (debootstrap, from this machine's Debian mirror), a Rust builder (the base, a C
#     compiler and this machine's own Rust toolchain), PostgreSQL, RabbitMQ and Prometheus
#     (Debian's packages; docker/standins/). Each is tagged with a hash of what it is built
#     from and rebuilt only when that tag is missing. COMPOSE_TEST_STANDINS=0 skips this and
#     uses the official images (a machine that can pull them).
#  3. `docker-compose --profile observability up -d --build` with the image variables pointing
#     at the stand-ins, so the project's Dockerfile builds the binaries and Prometheus runs
#     too, and waits until every container is healthy.
#  4. Prometheus's targets: exactly the jobs order, pay and gateway, each scraped and up
#     (waiting for the first scrapes: the interval is 15 s).
#  5. Each database user reaches only its own database, the services run as non-root, the
#     management API answers; the end-to-end tests (crates/system-tests/tests/api/e2e.rs: buy →
#     PAID, payment, balance, idempotency, errors, pay stopped and started with docker-compose)
#     through the published gateway port, with an ADMIN_TOKEN. Then two queries to Prometheus
#     show that the scrapes brought real data: up{job="order"} is 1, and the gateway's
#     http_requests_total counts the tests' POSTs.
#  6. `docker-compose --profile observability down -v` whatever happened (with the
#     containers' logs on failure): every container and volume, Prometheus's included.
#
# `scripts/compose-test.sh config` only validates the file with `docker-compose config`
# (installing docker-compose when missing): seconds, no Docker engine needed.
#
# Prints `ok - ...` / `not ok - ...` per check and `N passed, M failed` at the end; exits
# non-zero when a check failed. Everything published binds to 127.0.0.1 on free high ports, so
# it never collides with a PostgreSQL, RabbitMQ or run-local.sh stack running here; the compose
# project has its own name (COMPOSE_TEST_PROJECT). Needs root (or sudo) for apt-get, dockerd
# and debootstrap. Logs of the run: .run/compose-test/.
#
# Environment (all optional):
#   COMPOSE_TEST_PROJECT             compose project name (default lmt-compose-test)
#   COMPOSE_TEST_STANDINS            1 (default): build and use the stand-ins; 0: official images
#   COMPOSE_TEST_STANDIN_REPO        repository name of the stand-in tags (default lmt-standin)
#   COMPOSE_TEST_GATEWAY_PORT        host port for the gateway (default: first free from 28769)
#   COMPOSE_TEST_MANAGEMENT_PORT     host port for the management UI (default: first free from 28672)
#   COMPOSE_TEST_PROMETHEUS_PORT     host port for Prometheus (default: first free from 29090)
#   COMPOSE_TEST_UP_DEADLINE_SECS    `up -d --build`, the build included (default 3600)
#   COMPOSE_TEST_HEALTH_DEADLINE_SECS  every container healthy (default 300)
#   COMPOSE_TEST_PAYMENT_DEADLINE_SECS an order settling, in the end-to-end tests (default 60)
#   COMPOSE_TEST_SCRAPE_DEADLINE_SECS  Prometheus scraping every target, and the session's
#                                    requests reaching it (default 60: four scrape intervals)
#   COMPOSE_TEST_DOCKERD_LOG         where a dockerd started here logs (default /var/log/lmt-dockerd.log)

# The checks' details are single-quoted templates, expanded after the check ran (see check).
# shellcheck disable=SC2016
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MODE="${1:-run}"
case "$MODE" in
run | config) ;;
*) die "usage: scripts/compose-test.sh [run|config]" ;;
esac

PROJECT="${COMPOSE_TEST_PROJECT:-lmt-compose-test}"
USE_STANDINS="${COMPOSE_TEST_STANDINS:-1}"
STANDIN_REPO="${COMPOSE_TEST_STANDIN_REPO:-lmt-standin}"
UP_DEADLINE="${COMPOSE_TEST_UP_DEADLINE_SECS:-3600}"
HEALTH_DEADLINE="${COMPOSE_TEST_HEALTH_DEADLINE_SECS:-300}"
PAYMENT_DEADLINE="${COMPOSE_TEST_PAYMENT_DEADLINE_SECS:-60}"
SCRAPE_DEADLINE="${COMPOSE_TEST_SCRAPE_DEADLINE_SECS:-60}"
DOCKERD_LOG="${COMPOSE_TEST_DOCKERD_LOG:-/var/log/lmt-dockerd.log}"
LOG_DIR="$LMT_ROOT/.run/compose-test"
SERVICES_EXPECTED=(postgres rabbitmq pay order gateway prometheus)
# The compose profile of the optional services (Prometheus), on in every compose command here.
PROFILE=observability
# Ports this test must never publish on: the host's PostgreSQL and RabbitMQ (AMQP, management,
# distribution, epmd) and run-local.sh's services.
RESERVED_PORTS=" 4369 5432 5672 15672 25672 8762 8763 8769 "

PASSED=0
FAILED=0
UP_STARTED=0
FINISHED=0
STOPPED=0
T_START=$SECONDS
declare -A PHASE_SECS=()

mkdir -p "$LOG_DIR"

# check DESCRIPTION DETAILS COMMAND...: ok when COMMAND succeeds. DETAILS is a template
# expanded (eval) after COMMAND ran, so it may show what COMMAND found: check "x" '$BODY' cmd.
check() {
    local desc="$1" details="$2"
    shift 2
    if "$@"; then ok "$desc"; else not_ok "$desc" "$(eval "printf '%s' \"$details\"")"; fi
}

# stop_run: after a failed check that leaves nothing to test (the failure is counted).
stop_run() {
    STOPPED=1
    exit 1
}

# logged FILE COMMAND...: COMMAND with its output (both streams) in FILE.
logged() {
    local file="$1"
    shift
    "$@" >"$file" 2>&1
}

# ---------------------------------------------------------------------------------------------
# 1. Docker

# Debian's client speaks the API of Debian's dockerd; another client on PATH (a newer one in
# /usr/local/bin, say) may not, and its `docker build` may insist on buildx.
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
# docker-compose 1.29 builds through the API with the classic builder (no buildx needed).
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0

docker_answers() { "$DOCKER" info >/dev/null 2>&1; }

dockerd_pid() { pgrep -x dockerd 2>/dev/null | head -n1; }

# The MTU of the interface of the default route, when below Ethernet's 1500: containers must
# not send larger packets than the way out carries.
uplink_mtu() {
    local dev mtu
    dev="$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')"
    [[ -n "$dev" && -r "/sys/class/net/$dev/mtu" ]] || return 1
    mtu="$(cat "/sys/class/net/$dev/mtu")"
    ((mtu < 1500)) && printf '%s\n' "$mtu"
}

# start_dockerd: dockerd in its own session (it outlives this script), trying the storage
# drivers from the fastest: overlay2, fuse-overlayfs, then vfs (slow, large: a last resort).
start_dockerd() {
    local driver mtu pid
    local -a opts=()
    if mtu="$(uplink_mtu)"; then opts+=("--mtu=$mtu"); fi
    as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
    for driver in overlay2 fuse-overlayfs vfs; do
        if [[ "$driver" == fuse-overlayfs ]]; then
            (ensure_tool fuse-overlayfs) || continue
        fi
        log "starting dockerd (storage driver $driver${opts[*]:+, ${opts[*]}}); log: $DOCKERD_LOG"
        printf '\n==== %s: dockerd --storage-driver=%s %s\n' "$(date -Is)" "$driver" "${opts[*]}" |
            as_root tee -a "$DOCKERD_LOG" >/dev/null
        as_root setsid nohup dockerd --storage-driver="$driver" "${opts[@]}" \
            </dev/null >>"$DOCKERD_LOG" 2>&1 &
        if wait_until 60 docker_answers; then
            log "dockerd is running ($driver)"
            return 0
        fi
        warn "dockerd with $driver did not come up; the end of its log:"
        tail -n 15 "$DOCKERD_LOG" >&2 || true
        pid="$(dockerd_pid || true)"
        if [[ -n "$pid" ]]; then
            as_root kill "$pid" 2>/dev/null || true
            wait_until 30 bash -c "! kill -0 $pid 2>/dev/null" || true
        fi
    done
    return 1
}

ensure_docker() {
    ensure_tool curl
    ensure_tool jq
    ensure_tool ip iproute2
    ensure_tool dockerd docker.io
    ensure_tool docker-compose
    if [[ "$USE_STANDINS" == 1 ]]; then ensure_tool debootstrap; fi
    [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
    docker_answers && return 0
    if [[ -n "$(dockerd_pid || true)" ]]; then
        log "dockerd runs but does not answer yet; waiting"
        wait_until 60 docker_answers && return 0
        die "dockerd runs but does not answer (waited 60 s); see $DOCKERD_LOG"
    fi
    if [[ "$(ps -p 1 -o comm= 2>/dev/null)" == systemd ]] && command -v systemctl >/dev/null 2>&1; then
        log "starting docker with systemctl"
        as_root systemctl start docker && wait_until 60 docker_answers && return 0
        warn "systemctl start docker did not work; starting dockerd directly"
    fi
    start_dockerd || die "could not start dockerd with any storage driver; see $DOCKERD_LOG"
}

# ---------------------------------------------------------------------------------------------
# 2. Stand-in images

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1"; }

# remove_other_tags REPO KEEP: the stand-ins of REPO other than KEEP (older versions).
remove_other_tags() {
    local repo="$1" keep="$2" ref
    while read -r ref; do
        [[ -n "$ref" && "$ref" != "$keep" ]] || continue
        log "removing the outdated stand-in $ref"
        "$DOCKER" rmi "$ref" >/dev/null 2>&1 || true
    done < <("$DOCKER" images "$repo" --format '{{.Repository}}:{{.Tag}}' 2>/dev/null)
}

# The first Debian mirror of this machine's apt sources for the release CODENAME.
host_debian_mirror() {
    local codename="$1" f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v cn="$codename" '
            /^[[:space:]]*$/ { if (ok && u != "") { print u; exit } ok = 0; u = ""; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == cn) ok = 1 }
            END { if (ok && u != "") print u }' "$f" | head -n1)"
        if [[ -n "$uri" ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri="$(sed -E 's/\[[^]]*\]//' "$f" | awk -v cn="$codename" '$1 == "deb" && $3 == cn { print $2; exit }')"
        if [[ -n "$uri" ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    return 1
}

# copy_apt_sources ROOTFS MIRROR: this machine's apt sources that the image can use (those
# signed by keyrings the image has, or unsigned ones on MIRROR's host), and its Acquire::
# settings (proxies, validity checks), so that apt in the image goes the way apt here goes.
copy_apt_sources() {
    local rootfs="$1" mirror="$2" f keyring usable uri mirror_host
    mirror_host="$(printf '%s\n' "$mirror" | sed -E 's#^([a-z+]+://[^/]+).*#\1#')"
    as_root rm -f "$rootfs/etc/apt/sources.list"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        usable=1
        while read -r keyring; do
            [[ -z "$keyring" || -e "$rootfs$keyring" ]] || usable=0
        done < <(grep -oE '([Ss]igned-[Bb]y:[[:space:]]*|signed-by=)[^] ]+' "$f" | sed -E 's/^[^:=]*[:=][[:space:]]*//')
        if ! grep -qiE 'signed-by' "$f"; then
            while read -r uri; do
                [[ "$uri" == "$mirror_host"/* ]] || usable=0
            done < <(sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 } $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }')
        fi
        if ((usable)); then
            log "stand-in apt source: $f"
            as_root cp "$f" "$rootfs/etc/apt/${f#/etc/apt/}"
        fi
    done
    cat /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null | grep -E '^[[:space:]]*Acquire::' |
        as_root tee "$rootfs/etc/apt/apt.conf.d/90host-acquire" >/dev/null || true
}

# The Debian base: debootstrap's minimal system, trimmed as Debian's slim images are.
build_base_image() {
    local tag="$1" codename="$2" mirror rootfs
    mirror="$(host_debian_mirror "$codename")" || die "no Debian mirror for $codename in /etc/apt"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/lmt-standin-rootfs.XXXXXX")"
    log "debootstrap $codename from this machine's mirror (log: $LOG_DIR/debootstrap.log)"
    if ! as_root debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$LOG_DIR/debootstrap.log" >&2
        cleanup_rootfs "$rootfs"
        die "debootstrap failed"
    fi
    copy_apt_sources "$rootfs" "$mirror"
    as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/90slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    as_root bash -c 'cd "$1" && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/man/* usr/share/info/* &&
        find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete &&
        find usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +' _ "$rootfs"
    log "importing the base as $tag"
    as_root tar -C "$rootfs" --numeric-owner -c . |
        "$DOCKER" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["bash"]' - "$tag" >/dev/null
    cleanup_rootfs "$rootfs"
}

cleanup_rootfs() {
    local rootfs="$1" m
    # debootstrap mounts /proc and /sys while it works; never delete through a mount.
    while read -r m; do
        as_root umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r)
    as_root rm -rf --one-file-system "$rootfs"
}

# build_standin NAME TAG CONTEXT_DIR: docker build of docker/standins/NAME's Dockerfile.
build_standin() {
    local name="$1" tag="$2" context="$3"
    log "building the $name stand-in $tag (log: $LOG_DIR/standin-$name.log)"
    if ! "$DOCKER" build --build-arg BASE_IMAGE="$BASE_TAG" -t "$tag" "$context" >"$LOG_DIR/standin-$name.log" 2>&1; then
        tail -n 30 "$LOG_DIR/standin-$name.log" >&2
        die "building the $name stand-in failed"
    fi
}

# hash_of FILES...: a short hash of the files' contents and of BASE_TAG's image id.
hash_of() {
    { cat "$@"; image_id "$BASE_TAG"; } | sha256sum | cut -c1-12
}

build_standins() {
    local codename sysroot rustc_version tag hash ctx cargo_config
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || die "cannot tell this machine's Debian release (VERSION_CODENAME in /etc/os-release)"

    BASE_TAG="$STANDIN_REPO/debian:$codename"
    if image_exists "$BASE_TAG"; then
        log "stand-in $BASE_TAG: cached"
    else
        build_base_image "$BASE_TAG" "$codename"
    fi

    local name
    for name in postgres rabbitmq prometheus; do
        hash="$(hash_of docker/standins/$name/*)"
        tag="$STANDIN_REPO/$name:$hash"
        if image_exists "$tag"; then
            log "stand-in $tag: cached"
        else
            build_standin "$name" "$tag" "docker/standins/$name"
            remove_other_tags "$STANDIN_REPO/$name" "$tag"
        fi
        case "$name" in
        postgres) POSTGRES_IMAGE="$tag" ;;
        rabbitmq) RABBITMQ_IMAGE="$tag" ;;
        prometheus) PROMETHEUS_IMAGE="$tag" ;;
        esac
    done

    command -v rustc >/dev/null 2>&1 || die "rustc is missing: the Rust builder stand-in copies this machine's toolchain"
    sysroot="$(rustc --print sysroot)"
    [[ "$sysroot" != /usr && -x "$sysroot/bin/cargo" && -x "$sysroot/bin/rustc" && -d "$sysroot/lib/rustlib" ]] ||
        die "the active Rust toolchain ($sysroot) is not a rustup toolchain with cargo; install Rust with rustup"
    rustc_version="$(rustc --version | awk '{print $2}')"
    cargo_config="${CARGO_HOME:-$HOME/.cargo}/config.toml"
    hash="$({
        cat docker/standins/rust/Dockerfile /etc/ssl/certs/ca-certificates.crt
        [[ -f "$cargo_config" ]] && cat "$cargo_config"
        rustc -vV
        image_id "$BASE_TAG"
    } | sha256sum | cut -c1-12)"
    tag="$STANDIN_REPO/rust:$rustc_version-$hash"
    if image_exists "$tag"; then
        log "stand-in $tag: cached"
    else
        ctx="$(mktemp -d "${TMPDIR:-/tmp}/lmt-standin-rust.XXXXXX")"
        mkdir -p "$ctx/toolchain/bin"
        cp docker/standins/rust/Dockerfile "$ctx/"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
        if [[ -f "$cargo_config" ]]; then cp "$cargo_config" "$ctx/cargo-config.toml"; else : >"$ctx/cargo-config.toml"; fi
        # Hard links when possible: the toolchain is large. No documentation, no other tools.
        cp -al "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/" 2>/dev/null ||
            cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/"
        cp -al "$sysroot/lib" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/lib" "$ctx/toolchain/"
        build_standin rust "$tag" "$ctx"
        rm -rf "$ctx"
        remove_other_tags "$STANDIN_REPO/rust" "$tag"
    fi
    RUST_IMAGE="$tag"
    RUNTIME_IMAGE="$BASE_TAG"
    export POSTGRES_IMAGE RABBITMQ_IMAGE PROMETHEUS_IMAGE RUST_IMAGE RUNTIME_IMAGE
}

# prune_outdated_build_images: the images of earlier builds of this project (label
# lmt.project) that no tag and no layer of this run's build use any more; this run's layers
# stay, as the cache of the next run.
prune_outdated_build_images() {
    local keep id removed=0
    keep=" $(grep -oE '^ ---> [0-9a-f]{12}' "$LOG_DIR/up.log" | awk '{print $2}' | sort -u | tr '\n' ' ') "
    while read -r id; do
        [[ -n "$id" && "$keep" != *" ${id:0:12} "* ]] || continue
        if "$DOCKER" rmi "$id" >/dev/null 2>&1; then removed=$((removed + 1)); fi
    done < <("$DOCKER" images -q --no-trunc --filter dangling=true --filter label=lmt.project=local-message-table |
        sed 's/^sha256://')
    if ((removed > 0)); then log "removed $removed outdated build image(s) of this project"; fi
}

# ---------------------------------------------------------------------------------------------
# 3. The compose project

# free_port FIRST: the first port from FIRST on that nothing listens on and is not reserved.
free_port() {
    local port="$1"
    while ((port < 65000)); do
        if [[ "$RESERVED_PORTS" != *" $port "* ]] && ! port_in_use "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
        port=$((port + 1))
    done
    return 1
}

compose() { docker-compose -f "$LMT_ROOT/docker-compose.yml" -p "$PROJECT" --profile "$PROFILE" "$@"; }

# container_states: "SERVICE STATUS HEALTH" per container of the project.
container_states() {
    local id
    for id in $(compose ps -q 2>/dev/null); do
        "$DOCKER" inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null
    done
}

# all_healthy: every expected container is running and healthy.
all_healthy() {
    local states service
    states="$(container_states)"
    for service in "${SERVICES_EXPECTED[@]}"; do
        grep -qx "$service running healthy" <<<"$states" || return 1
    done
}

STATUS=000
BODY=""
TMP="$(mktemp -d "${TMPDIR:-/tmp}/compose-test.XXXXXX")"

json() { jq -r "$1" <<<"$BODY" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# 4. Prometheus's HTTP API on its published port

# prom_api ENDPOINT [CURL_ARGS...]: GET $PROM/api/v1/ENDPOINT (arguments as a query string,
# e.g. --data-urlencode 'query=up'); sets STATUS and BODY.
prom_api() {
    local endpoint="$1"
    shift
    GW="$PROM" req GET "/api/v1/$endpoint" -G "$@"
}

# prom_targets: sets TARGETS, "JOB=HEALTH" for each active target, sorted, on one line
# (health: unknown until its first scrape, then up or down).
TARGETS=""
prom_targets() {
    prom_api targets
    TARGETS="$(json '[.data.activeTargets[] | "\(.labels.job)=\(.health)"] | sort | join(" ")')"
}

prom_jobs() { prom_targets && [[ "$(sed -E 's/=[a-z]+//g' <<<"$TARGETS")" == "gateway order pay" ]]; }
prom_targets_up() { prom_targets && [[ "$TARGETS" == "gateway=up order=up pay=up" ]]; }

# prom_query QUERY: an instant query; sets VALUE, the first sample's value (empty when none).
VALUE=""
prom_query() {
    prom_api query --data-urlencode "query=$1"
    VALUE="$(json '.data.result[0].value[1] // empty')"
    [[ "$STATUS" == 200 && -n "$VALUE" ]]
}

# prom_query_at_least QUERY MIN: the query's value is MIN or more.
prom_query_at_least() {
    prom_query "$1" && awk -v v="$VALUE" -v min="$2" 'BEGIN { exit !(v + 0 >= min + 0) }'
}

# psql_in_postgres USER PASSWORD DATABASE: runs SELECT 1 over TCP inside the postgres container.
psql_in_postgres() {
    compose exec -T -e PGPASSWORD="$2" postgres \
        psql -XtAq -h 127.0.0.1 -U "$1" -d "$3" -c 'SELECT 1' >"$TMP/psql.out" 2>&1
}

# ---------------------------------------------------------------------------------------------
# 5. Whatever happens: down -v, logs on failure, the count.

finish() {
    local rc="$1"
    ((FINISHED == 0)) || return 0
    FINISHED=1
    if ((UP_STARTED)); then
        if ((FAILED > 0 || rc != 0)); then
            printf -- '----- containers -----\n'
            compose ps 2>&1 || true
            printf -- '----- last 60 log lines of each container -----\n'
            compose logs --no-color --tail=60 2>&1 || true
            printf -- '-----\n'
        fi
        log "docker-compose down -v"
        compose down -v --remove-orphans >"$LOG_DIR/down.log" 2>&1 ||
            printf 'warning: docker-compose down -v failed (see %s)\n' "$LOG_DIR/down.log" >&2
    fi
    rm -rf "$TMP"
}

on_exit() {
    local rc=$?
    if ((FINISHED == 0)); then
        if ((rc != 0 && STOPPED == 0)); then not_ok "compose-test.sh ran to the end" "aborted with exit status $rc"; fi
        finish "$rc"
    fi
    local phase
    for phase in standins up healthy scrape checks metrics; do
        [[ -n "${PHASE_SECS[$phase]:-}" ]] && printf '  %-10s %5ss\n' "$phase" "${PHASE_SECS[$phase]}"
    done
    printf '  %-10s %5ss\n' total "$((SECONDS - T_START))"
    print_summary
    if ((FAILED > 0 && rc == 0)); then rc=1; fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# The run

# The file as users have it (defaults only), then with this run's variables.
check_config() {
    check "docker-compose config validates docker-compose.yml (defaults)" '$(cat "$LOG_DIR/config.log")' \
        logged "$LOG_DIR/config.log" env -i PATH="$PATH" HOME="$HOME" docker-compose -f "$LMT_ROOT/docker-compose.yml" config -q
    check "docker-compose config validates docker-compose.yml (this environment's variables)" '$(cat "$LOG_DIR/config.log")' \
        logged "$LOG_DIR/config.log" compose config -q
}

if [[ "$MODE" == config ]]; then
    ensure_tool docker-compose
    check_config
    finish 0
    exit 0
fi

ensure_docker

t=$SECONDS
if [[ "$USE_STANDINS" == 1 ]]; then
    build_standins
    ok "stand-in images ready: $RUST_IMAGE, $RUNTIME_IMAGE, $POSTGRES_IMAGE, $RABBITMQ_IMAGE, $PROMETHEUS_IMAGE"
fi
PHASE_SECS[standins]=$((SECONDS - t))

GATEWAY_PORT="${COMPOSE_TEST_GATEWAY_PORT:-$(free_port 28769)}"
RABBITMQ_MANAGEMENT_PORT="${COMPOSE_TEST_MANAGEMENT_PORT:-$(free_port 28672)}"
[[ "$GATEWAY_PORT" != "$RABBITMQ_MANAGEMENT_PORT" ]] || RABBITMQ_MANAGEMENT_PORT="$(free_port $((GATEWAY_PORT + 1)))"
PROMETHEUS_PORT="${COMPOSE_TEST_PROMETHEUS_PORT:-$(free_port 29090)}"
while [[ "$PROMETHEUS_PORT" == "$GATEWAY_PORT" || "$PROMETHEUS_PORT" == "$RABBITMQ_MANAGEMENT_PORT" ]]; do
    PROMETHEUS_PORT="$(free_port $((PROMETHEUS_PORT + 1)))"
done
PUBLISH_ADDRESS=127.0.0.1
export GATEWAY_PORT RABBITMQ_MANAGEMENT_PORT PROMETHEUS_PORT PUBLISH_ADDRESS COMPOSE_PROJECT_NAME="$PROJECT"
GW="http://127.0.0.1:$GATEWAY_PORT"
PROM="http://127.0.0.1:$PROMETHEUS_PORT"
# The admin API on, for the end-to-end tests.
admin_token_in "$LOG_DIR/admin-token"
log "project $PROJECT: gateway on $GW, management UI on 127.0.0.1:$RABBITMQ_MANAGEMENT_PORT, Prometheus on $PROM"

check_config

# Leftovers of an interrupted run would change the outcome.
UP_STARTED=1
compose down -v --remove-orphans >"$LOG_DIR/down.log" 2>&1 || true

t=$SECONDS
log "docker-compose --profile $PROFILE up -d --build (deadline ${UP_DEADLINE}s; log: $LOG_DIR/up.log)"
if timeout "$UP_DEADLINE" docker-compose -f "$LMT_ROOT/docker-compose.yml" -p "$PROJECT" --profile "$PROFILE" \
    up -d --build >"$LOG_DIR/up.log" 2>&1; then
    PHASE_SECS[up]=$((SECONDS - t))
    ok "docker-compose --profile $PROFILE up -d --build (${PHASE_SECS[up]}s)"
    prune_outdated_build_images
else
    PHASE_SECS[up]=$((SECONDS - t))
    tail -n 40 "$LOG_DIR/up.log"
    not_ok "docker-compose --profile $PROFILE up -d --build" "see $LOG_DIR/up.log"
    stop_run
fi

t=$SECONDS
if wait_until "$HEALTH_DEADLINE" all_healthy; then
    PHASE_SECS[healthy]=$((SECONDS - t))
    ok "every container is running and healthy: ${SERVICES_EXPECTED[*]} (${PHASE_SECS[healthy]}s after up)"
else
    not_ok "every container is running and healthy" "after ${HEALTH_DEADLINE}s: $(container_states | paste -sd ' ' -)"
    stop_run
fi

t=$SECONDS
# Prometheus scrapes the three services. It does not wait for them to start: its first scrape
# of a service may have failed, the next one (15 s later) is the one that counts.
check "Prometheus's targets are exactly the jobs order, pay and gateway" 'HTTP $STATUS: ${TARGETS:-$BODY}' \
    prom_jobs
check "Prometheus scrapes every target and each is up" 'after ${SCRAPE_DEADLINE}s: ${TARGETS:-HTTP $STATUS $BODY}' \
    wait_until "$SCRAPE_DEADLINE" prom_targets_up
PHASE_SECS[scrape]=$((SECONDS - t))

t=$SECONDS
# The services run as a non-root user.
for service in order pay gateway; do
    uid="$(compose exec -T "$service" id -u 2>/dev/null | tr -d '\r' || true)"
    check "$service runs as a non-root user" "uid ${uid:-?}" test -n "$uid" -a "$uid" != 0
done

# Each database user reaches its own database and no other.
ORDER_DB_PASSWORD_EFFECTIVE="${ORDER_DB_PASSWORD:-order-secret}"
PAY_DB_PASSWORD_EFFECTIVE="${PAY_DB_PASSWORD:-pay-secret}"
check "order_user connects to order_db" '$(cat "$TMP/psql.out")' \
    psql_in_postgres order_user "$ORDER_DB_PASSWORD_EFFECTIVE" order_db
check "pay_user connects to pay_db" '$(cat "$TMP/psql.out")' \
    psql_in_postgres pay_user "$PAY_DB_PASSWORD_EFFECTIVE" pay_db
for pair in "order_user $ORDER_DB_PASSWORD_EFFECTIVE pay_db" "order_user $ORDER_DB_PASSWORD_EFFECTIVE postgres" \
    "pay_user $PAY_DB_PASSWORD_EFFECTIVE order_db"; do
    read -r user password db <<<"$pair"
    if psql_in_postgres "$user" "$password" "$db"; then
        not_ok "$user cannot connect to $db" "it connected"
    elif grep -q 'permission denied for database' "$TMP/psql.out"; then
        ok "$user cannot connect to $db (permission denied)"
    else
        not_ok "$user cannot connect to $db" "$(tr '\n' ' ' <"$TMP/psql.out")"
    fi
done

# The management UI is published, with the configured user.
mgmt_status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
    -u "${RABBITMQ_USER:-lmt}:${RABBITMQ_PASSWORD:-lmt-secret}" \
    "http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT/api/overview" || true)"
check "the RabbitMQ management API answers on 127.0.0.1:$RABBITMQ_MANAGEMENT_PORT" 'HTTP $mgmt_status' \
    test "$mgmt_status" = 200

# The end-to-end tests through the published gateway port; pay stopped and started by compose.
rc=0
COMPOSE="docker-compose -f $LMT_ROOT/docker-compose.yml -p $PROJECT --profile $PROFILE"
E2E_PAYMENT_DEADLINE_SECS="$PAYMENT_DEADLINE" e2e_tests "$GW" "$COMPOSE stop pay" "$COMPOSE start pay" \
    >"$LOG_DIR/e2e.log" 2>&1 || rc=$?
grep -E '^test ' "$LOG_DIR/e2e.log" || true
check "the end-to-end tests pass against the compose stack (crates/system-tests/tests/api/e2e.rs)" \
    'exit status $rc (see $LOG_DIR/e2e.log)' test "$rc" = 0
PHASE_SECS[checks]=$((SECONDS - t))

# What Prometheus scraped: real samples, the session's requests included (after one more scrape).
t=$SECONDS
check 'Prometheus: up{job="order"} is 1' 'HTTP $STATUS: ${VALUE:-$BODY}' \
    wait_until "$SCRAPE_DEADLINE" prom_query_at_least 'up{job="order"}' 1
check "Prometheus: the gateway's http_requests_total counts the end-to-end tests' POSTs (3 or more)" \
    'after ${SCRAPE_DEADLINE}s: HTTP $STATUS: ${VALUE:-$BODY}' \
    wait_until "$SCRAPE_DEADLINE" prom_query_at_least 'sum(http_requests_total{job="gateway",method="POST"})' 3
PHASE_SECS[metrics]=$((SECONDS - t))
check "every container is healthy at the end" '$(container_states | paste -sd " " -)' wait_until 60 all_healthy

finish 0
