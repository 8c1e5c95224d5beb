#!/usr/bin/env bash
# Runs docker-compose.yml for real and talks to it: the file users run, on this machine
# (docs/docker.md, "Where images cannot be pulled"). Needs root (or sudo).
#
#  1. Installs Debian's docker.io, docker-compose and debootstrap when missing; starts dockerd
#     when it is not running (it keeps running: its images are the next run's cache).
#  2. Builds stand-ins for the official images from this machine's Debian mirror and
#     toolchain (docker/standins/), each tagged with a hash of what it is built from;
#     COMPOSE_TEST_STANDINS=0 uses the official images instead.
#  3. `docker-compose --profile observability up -d --build` on free ports from 28769
#     (gateway), 28672 (management) and 29090 (Prometheus), all on 127.0.0.1; waits until
#     every container is healthy; the services run as non-root.
#  4. The end-to-end tests (crates/system-tests/tests/api/e2e.rs; pay stopped and started with
#     docker-compose) and the compose stack's own (compose_stack.rs there: Prometheus's
#     targets and samples, each database user reaching only its own database, the management
#     API), through the published ports.
#  5. `docker-compose down -v` whatever happened (with the containers' logs on failure).
#
# `scripts/compose-test.sh config` only validates the file. Prints `ok - ...` / `not ok - ...`
# per check and `N passed, M failed`; exits non-zero when a check failed. Logs: .run/compose-test/.
# Environment: COMPOSE_TEST_PROJECT (lmt-compose-test), COMPOSE_TEST_STANDIN_REPO
# (lmt-standin), COMPOSE_TEST_{UP,HEALTH,PAYMENT,SCRAPE}_DEADLINE_SECS (3600, 300, 60, 60),
# COMPOSE_TEST_DOCKERD_LOG (/var/log/lmt-dockerd.log).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PROJECT="${COMPOSE_TEST_PROJECT:-lmt-compose-test}"
STANDIN_REPO="${COMPOSE_TEST_STANDIN_REPO:-lmt-standin}"
DOCKERD_LOG="${COMPOSE_TEST_DOCKERD_LOG:-/var/log/lmt-dockerd.log}"
LOG_DIR="$LMT_ROOT/.run/compose-test"
SERVICES_EXPECTED=(postgres rabbitmq pay order gateway prometheus)
# Never published on: the host's PostgreSQL and RabbitMQ ports and run-local.sh's.
RESERVED_PORTS=" 4369 5432 5672 15672 25672 8762 8763 8769 "
UP_STARTED=0
mkdir -p "$LOG_DIR"

# Debian's client speaks the API of Debian's dockerd; another client on PATH may not, and may
# insist on buildx. docker-compose 1.29 builds with the classic builder.
DOCKER=docker
[[ ! -x /usr/bin/docker ]] || DOCKER=/usr/bin/docker
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
COMPOSE=(docker-compose -f "$LMT_ROOT/docker-compose.yml" -p "$PROJECT" --profile observability)
compose() { "${COMPOSE[@]}" "$@"; }

# The file as users have it (defaults only), then with this run's variables.
check_config() {
    check "docker-compose config validates docker-compose.yml (defaults)" \
        env -i PATH="$PATH" HOME="$HOME" docker-compose -f "$LMT_ROOT/docker-compose.yml" config -q
    check "docker-compose config validates docker-compose.yml (this environment's variables)" compose config -q
}

finish() {
    if ((UP_STARTED)); then
        if ((FAILED > 0 || $1 != 0)); then
            compose ps 2>&1 || true
            printf -- '----- last 60 log lines of each container -----\n'
            compose logs --no-color --tail=60 2>&1 || true
        fi
        log "docker-compose down -v"
        compose down -v --remove-orphans >"$LOG_DIR/down.log" 2>&1 || warn "docker-compose down -v failed (see $LOG_DIR/down.log)"
    fi
    printf '  %s s in all\n' "$SECONDS"
}
trap exit_with_summary EXIT
trap 'exit 130' INT TERM

if [[ "${1:-run}" == config ]]; then
    ensure_tool docker-compose
    check_config
    exit 0
fi
[[ "${1:-run}" == run ]] || die "usage: scripts/compose-test.sh [run|config]"

# 1. Docker

docker_answers() { "$DOCKER" info >/dev/null 2>&1; }

# start_dockerd: dockerd in its own session (it outlives this script), trying the storage
# drivers from the fastest: overlay2, fuse-overlayfs, then vfs (slow, large: a last resort).
# Containers must not send larger packets than the way out carries: the uplink's MTU.
start_dockerd() {
    local driver dev pid opts=()
    dev="$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -n1)"
    if [[ -n "$dev" && "$(cat "/sys/class/net/$dev/mtu" 2>/dev/null || echo 1500)" -lt 1500 ]]; then
        opts+=("--mtu=$(cat "/sys/class/net/$dev/mtu")")
    fi
    as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
    for driver in overlay2 fuse-overlayfs vfs; do
        [[ "$driver" != fuse-overlayfs ]] || (ensure_tool fuse-overlayfs) || continue
        log "starting dockerd (storage driver $driver ${opts[*]}); log: $DOCKERD_LOG"
        as_root setsid nohup dockerd --storage-driver="$driver" "${opts[@]}" </dev/null >>"$DOCKERD_LOG" 2>&1 &
        pid=$!
        wait_until 60 docker_answers && return 0
        warn "dockerd with $driver did not come up; the end of its log:"
        tail -n 15 "$DOCKERD_LOG" >&2 || true
        as_root kill "$pid" 2>/dev/null || true
        wait_until 30 pid_gone "$pid" || true
    done
    return 1
}

ensure_docker() {
    ensure_tool ip iproute2
    ensure_tool dockerd docker.io
    ensure_tool docker-compose
    [[ "${COMPOSE_TEST_STANDINS:-1}" != 1 ]] || ensure_tool debootstrap
    [[ ! -x /usr/bin/docker ]] || DOCKER=/usr/bin/docker
    docker_answers && return 0
    if pgrep -x dockerd >/dev/null; then
        log "dockerd runs but does not answer yet; waiting"
        wait_until 60 docker_answers || die "dockerd runs but does not answer (waited 60 s); see $DOCKERD_LOG"
    elif [[ "$(ps -p 1 -o comm= 2>/dev/null)" == systemd ]] && as_root systemctl start docker && wait_until 60 docker_answers; then
        log "started docker with systemctl"
    else
        start_dockerd || die "could not start dockerd with any storage driver; see $DOCKERD_LOG"
    fi
}

# 2. Stand-in images

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1"; }

# The Debian base: debootstrap's minimal system from this machine's Debian mirror, with this
# machine's Debian sources (the archive keyring is in the base) and Acquire:: settings
# (proxies, validity checks), so apt in the image goes the way apt here goes; trimmed as
# Debian's slim images are.
build_base_image() {
    local tag="$1" codename="$2" mirror rootfs
    # shellcheck disable=SC2016 # apt's format, not the shell's
    mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v cn="$codename" '$2 == cn { print $1; exit }')"
    [[ -n "$mirror" ]] || die "no Debian mirror for $codename in this machine's apt sources"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/lmt-standin-rootfs.XXXXXX")"
    log "debootstrap $codename from $mirror (log: $LOG_DIR/debootstrap.log)"
    as_root debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1 || {
        tail -n 20 "$LOG_DIR/debootstrap.log" >&2
        cleanup_rootfs "$rootfs"
        die "debootstrap failed"
    }
    # shellcheck disable=SC2016
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' | sort -u |
        awk -v cn="$codename" '$2 ~ ("^" cn "(-|$)") { print "deb " $0 }' | as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
    cat /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null | grep -E '^[[:space:]]*Acquire::' |
        as_root tee "$rootfs/etc/apt/apt.conf.d/90host-acquire" >/dev/null || true
    printf 'path-exclude /usr/share/%s/*\n' doc man info locale | as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/90slim" >/dev/null
    printf 'path-include /usr/share/doc/*/copyright\npath-include /usr/share/locale/locale.alias\n' |
        as_root tee -a "$rootfs/etc/dpkg/dpkg.cfg.d/90slim" >/dev/null
    # shellcheck disable=SC2016
    as_root bash -c 'cd "$1" && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/man/* usr/share/info/* &&
        find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete &&
        find usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +' _ "$rootfs"
    log "importing the base as $tag"
    as_root tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["bash"]' - "$tag" >/dev/null
    cleanup_rootfs "$rootfs"
}

# debootstrap mounts /proc and /sys while it works: never delete through a mount.
cleanup_rootfs() {
    awk -v r="$1" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do as_root umount -l "$m" || true; done
    as_root rm -rf --one-file-system "$1"
}

# standin NAME CONTEXT HASH: docker/standins/NAME's Dockerfile built as STANDIN_REPO/NAME:HASH
# unless that tag exists (older tags removed); prints the tag.
standin() {
    local name="$1" context="$2" tag="$STANDIN_REPO/$1:$3" ref
    if ! image_exists "$tag"; then
        log "building the $name stand-in $tag (log: $LOG_DIR/standin-$name.log)"
        "$DOCKER" build --build-arg BASE_IMAGE="$BASE_TAG" -t "$tag" "$context" >"$LOG_DIR/standin-$name.log" 2>&1 || {
            tail -n 30 "$LOG_DIR/standin-$name.log" >&2
            die "building the $name stand-in failed"
        }
        for ref in $("$DOCKER" images "$STANDIN_REPO/$name" --format '{{.Repository}}:{{.Tag}}'); do
            [[ "$ref" == "$tag" ]] || "$DOCKER" rmi "$ref" >/dev/null 2>&1 || true
        done
    fi
    printf '%s\n' "$tag"
}

build_standins() {
    local codename sysroot hash ctx
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || die "cannot tell this machine's Debian release (VERSION_CODENAME in /etc/os-release)"
    BASE_TAG="$STANDIN_REPO/debian:$codename"
    image_exists "$BASE_TAG" || build_base_image "$BASE_TAG" "$codename"
    hash_of() { { cat "$@"; image_id "$BASE_TAG"; } | sha256sum | cut -c1-12; }
    POSTGRES_IMAGE="$(standin postgres docker/standins/postgres "$(hash_of docker/standins/postgres/*)")"
    RABBITMQ_IMAGE="$(standin rabbitmq docker/standins/rabbitmq "$(hash_of docker/standins/rabbitmq/*)")"
    PROMETHEUS_IMAGE="$(standin prometheus docker/standins/prometheus "$(hash_of docker/standins/prometheus/*)")"

    # The Rust builder: this machine's rustup toolchain, CA bundle and cargo configuration.
    sysroot="$(rustc --print sysroot)" || die "rustc is missing: the Rust builder stand-in copies this machine's toolchain"
    [[ "$sysroot" != /usr && -x "$sysroot/bin/cargo" && -d "$sysroot/lib/rustlib" ]] ||
        die "the active Rust toolchain ($sysroot) is not a rustup toolchain with cargo; install Rust with rustup"
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/lmt-standin-rust.XXXXXX")"
    cp docker/standins/rust/Dockerfile /etc/ssl/certs/ca-certificates.crt "$ctx/"
    cat "${CARGO_HOME:-$HOME/.cargo}/config.toml" >"$ctx/cargo-config.toml" 2>/dev/null || true
    rustc -vV >"$ctx/rustc-version"
    hash="$(rustc --version | awk '{print $2}')-$(hash_of "$ctx"/*)"
    # Hard links when possible: the toolchain is large. No documentation, no other tools.
    if ! image_exists "$STANDIN_REPO/rust:$hash"; then
        mkdir -p "$ctx/toolchain/bin"
        cp -al "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/" 2>/dev/null ||
            cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/"
        cp -al "$sysroot/lib" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/lib" "$ctx/toolchain/"
    fi
    RUST_IMAGE="$(standin rust "$ctx" "$hash")"
    rm -rf "$ctx"
    export POSTGRES_IMAGE RABBITMQ_IMAGE PROMETHEUS_IMAGE RUST_IMAGE RUNTIME_IMAGE="$BASE_TAG"
    ok "stand-in images ready: $RUST_IMAGE, $RUNTIME_IMAGE, $POSTGRES_IMAGE, $RABBITMQ_IMAGE, $PROMETHEUS_IMAGE"
}

# prune_outdated_build_images: the images of earlier builds of this project (label
# lmt.project) that no layer of this run's build uses; this run's stay, the next run's cache.
prune_outdated_build_images() {
    local keep id
    keep=" $(grep -oE '^ ---> [0-9a-f]{12}' "$LOG_DIR/up.log" | awk '{print $2}' | sort -u | tr '\n' ' ') "
    for id in $("$DOCKER" images -q --no-trunc --filter dangling=true --filter label=lmt.project=local-message-table | sed 's/^sha256://'); do
        [[ "$keep" == *" ${id:0:12} "* ]] || "$DOCKER" rmi "$id" >/dev/null 2>&1 || true
    done
}

# 3. The compose project

# free_port VAR FIRST: VAR is the first port from FIRST on that nothing listens on, not
# reserved, not taken by this run already.
free_port() {
    local port="$2"
    while [[ "$RESERVED_PORTS" == *" $port "* ]] || port_in_use "$port"; do port=$((port + 1)); done
    RESERVED_PORTS+="$port "
    printf -v "$1" '%s' "$port"
}

# all_healthy: every expected container is running and healthy; STATES says what each is.
all_healthy() {
    local service id
    STATES=""
    for id in $(compose ps -q 2>/dev/null); do
        STATES+="$("$DOCKER" inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null);"
    done
    for service in "${SERVICES_EXPECTED[@]}"; do [[ "$STATES" == *"$service running healthy;"* ]] || return 1; done
}

ensure_docker
[[ "${COMPOSE_TEST_STANDINS:-1}" != 1 ]] || build_standins
free_port GATEWAY_PORT 28769 && free_port RABBITMQ_MANAGEMENT_PORT 28672 && free_port PROMETHEUS_PORT 29090
export GATEWAY_PORT RABBITMQ_MANAGEMENT_PORT PROMETHEUS_PORT PUBLISH_ADDRESS=127.0.0.1 COMPOSE_PROJECT_NAME="$PROJECT"
admin_token_in "$LOG_DIR/admin-token"
log "project $PROJECT: gateway on 127.0.0.1:$GATEWAY_PORT, management on :$RABBITMQ_MANAGEMENT_PORT, Prometheus on :$PROMETHEUS_PORT"
check_config

# Leftovers of an interrupted run would change the outcome.
UP_STARTED=1
compose down -v --remove-orphans >"$LOG_DIR/down.log" 2>&1 || true
log "docker-compose --profile observability up -d --build (log: $LOG_DIR/up.log)"
if timeout "${COMPOSE_TEST_UP_DEADLINE_SECS:-3600}" "${COMPOSE[@]}" up -d --build >"$LOG_DIR/up.log" 2>&1; then
    ok "docker-compose --profile observability up -d --build ($SECONDS s from the start)"
    prune_outdated_build_images
else
    tail -n 40 "$LOG_DIR/up.log"
    not_ok "docker-compose --profile observability up -d --build" "see $LOG_DIR/up.log"
    STOPPED=1 && exit 1
fi
if wait_until "${COMPOSE_TEST_HEALTH_DEADLINE_SECS:-300}" all_healthy; then
    ok "every container is running and healthy: ${SERVICES_EXPECTED[*]} ($SECONDS s from the start)"
else
    not_ok "every container is running and healthy" "$STATES"
    STOPPED=1 && exit 1
fi

for service in order pay gateway; do
    uid="$(compose exec -T "$service" id -u 2>/dev/null | tr -d '\r' || true)"
    if [[ -n "$uid" && "$uid" != 0 ]]; then ok "$service runs as a non-root user"; else not_ok "$service runs as a non-root user" "uid ${uid:-?}"; fi
done

# The end-to-end tests and the compose stack's own, through the published ports.
COMPOSE_POSTGRES_HOST="$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(compose ps -q postgres)" | awk '{print $1}')"
export COMPOSE_POSTGRES_HOST COMPOSE_GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT" \
    COMPOSE_PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT" COMPOSE_MANAGEMENT_URL="http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT" \
    COMPOSE_SCRAPE_SECS="${COMPOSE_TEST_SCRAPE_DEADLINE_SECS:-60}" E2E_PAYMENT_DEADLINE_SECS="${COMPOSE_TEST_PAYMENT_DEADLINE_SECS:-60}"
rc=0
e2e_tests "$COMPOSE_GATEWAY_URL" "${COMPOSE[*]} stop pay" "${COMPOSE[*]} start pay" compose_stack:: >"$LOG_DIR/tests.log" 2>&1 || rc=$?
grep -E '^test ' "$LOG_DIR/tests.log" || true
if ((rc == 0)); then
    ok "the end-to-end and compose stack tests pass (crates/system-tests/tests/api/e2e.rs, compose_stack.rs)"
else
    not_ok "the end-to-end and compose stack tests pass" "exit status $rc (see $LOG_DIR/tests.log)"
fi
if wait_until 60 all_healthy; then ok "every container is healthy at the end"; else not_ok "every container is healthy at the end" "$STATES"; fi
