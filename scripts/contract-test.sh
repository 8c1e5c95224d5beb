#!/usr/bin/env bash
# The API contract, tested by tools nobody here wrote (docs/api.md, "API contract"), against
# a stack of its own (scripts/run-local.sh; own ports, databases, exchange, queues and run
# directory .run/contract/, so a developer's stack and data are untouched):
#
#  1. openapi-spec-validator (PyPI) on the three OpenAPI documents the stack serves, and
#     Prometheus's `promtool check metrics` (Debian's prometheus package, unpacked under .run/,
#     never installed as a server) on the three /metrics answers;
#  2. schemathesis (PyPI; every check on, scripts/contract/schemathesis.toml lists the two
#     exceptions and why) against the gateway's merged document, with the admin token, then
#     against order's and pay's own;
#  3. once the orders it placed have settled, the invariants across the two databases
#     (crates/system-tests/tests/api/contract.rs).
#
# Prints `ok - ...` / `not ok - ...` per check and `N passed, M failed`; exits non-zero when a
# check failed. Reports (JUnit XML) in .run/contract/reports/. Environment (all optional):
# CONTRACT_PORT_BASE (18860: pay +2, order +3, gateway +9), CONTRACT_MAX_EXAMPLES (generated
# cases per operation and phase, 50), CONTRACT_SEED (default: a new one, printed),
# CONTRACT_SETTLE_SECS (60), SCHEMATHESIS_VERSION (4.32.5), VALIDATOR_VERSION (0.9.0).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-50}"
SEED="${CONTRACT_SEED:-$((RANDOM * 32768 + RANDOM))}"
own_stack contract "${CONTRACT_PORT_BASE:-18860}"
REPORTS="$RUN_DIR/reports"
mkdir -p "$REPORTS"
trap exit_with_summary EXIT
trap 'exit 130' INT TERM

# pip_tool PACKAGE VERSION: PACKAGE==VERSION in a virtualenv of its own under .run/
# (re-created when the version changes; their dependency pins differ).
pip_tool() {
    local venv="$LMT_ROOT/.run/venv-$1"
    "$venv/bin/pip" show "$1" 2>/dev/null | grep -qx "Version: $2" && return 0
    python3 -m venv --help >/dev/null 2>&1 || ensure_tool python3 python3-venv
    log "installing $1 $2 into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$1==$2" || die "pip install $1==$2 failed"
}
ST="$LMT_ROOT/.run/venv-schemathesis/bin/st"
VALIDATOR="$LMT_ROOT/.run/venv-openapi-spec-validator/bin/openapi-spec-validator"

# promtool, from Debian's prometheus package, unpacked under .run/ (not installed: the
# package would also start a Prometheus server).
PROMTOOL_DIR="$LMT_ROOT/.run/promtool"
PROMTOOL="$PROMTOOL_DIR/usr/bin/promtool"
install_promtool() {
    [[ -x "$PROMTOOL" ]] && return 0
    log "unpacking promtool from Debian's prometheus package into $PROMTOOL_DIR"
    mkdir -p "$PROMTOOL_DIR"
    (cd "$PROMTOOL_DIR" && { apt-get download prometheus >/dev/null 2>&1 ||
        { as_root apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null; }; }) ||
        die "apt-get download prometheus failed"
    dpkg-deb -x "$PROMTOOL_DIR"/prometheus_*.deb "$PROMTOOL_DIR" && rm -f "$PROMTOOL_DIR"/prometheus_*.deb
    [[ -x "$PROMTOOL" ]] || die "no promtool in the prometheus package"
}

# fuzz NAME URL: schemathesis against the document at URL; ok when it finds nothing.
fuzz() {
    local name="$1" url="$2" out="$RUN_DIR/schemathesis-$1.out" rc=0 summary
    log "schemathesis: $name ($url), seed $SEED, $MAX_EXAMPLES examples per operation"
    "$ST" --config-file scripts/contract/schemathesis.toml run "$url" --header "Authorization: Bearer $ADMIN_TOKEN" \
        --checks all --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1 \
        --report junit --report-junit-path "$REPORTS/$name.xml" >"$out" 2>&1 || rc=$?
    # The summary line, e.g. "2420 generated, 2420 passed, 38 skipped".
    summary="$(grep -E '^ +[0-9]+ generated' "$out" | tail -n1 | sed 's/^ *//')"
    if ((rc == 0)); then
        ok "schemathesis finds nothing wrong with $name's contract ($summary)"
    else
        not_ok "schemathesis finds nothing wrong with $name's contract" "exit $rc, ${summary:-no summary}; failures:
$(grep -E '^_{3,} |^- ST|^\[[0-9]{3}\]' "$out" | cut -c1-200 | head -n 40)
(the whole output: $out)"
    fi
}

ensure_tool curl
ensure_tool psql postgresql-client
ensure_tool python3
pip_tool schemathesis "${SCHEMATHESIS_VERSION:-4.32.5}"
pip_tool openapi-spec-validator "${VALIDATOR_VERSION:-0.9.0}"
install_promtool
if ! start_own_stack; then
    not_ok "the stack starts and becomes ready" "scripts/run-local.sh start failed"
    STOPPED=1 && exit 1
fi
ok "the stack starts and becomes ready"
CONTRACT_BALANCES_BEFORE="$(psql "$PAY_DATABASE_URL" -XqAtc "SELECT coalesce(sum(balance_cents), 0) FROM accounts")"

declare -A BASE=([gateway]="$GW" [order]="http://$ORDER_ADDR" [pay]="http://$PAY_ADDR")
for service in gateway order pay; do
    base="${BASE[$service]}" doc="$RUN_DIR/openapi-$service.json"
    check "$service's OpenAPI document is served" curl -fsS "$base/openapi.json" -o "$doc"
    check "openapi-spec-validator accepts $service's document" "$VALIDATOR" "$doc"
    # promtool reads the classic text format: what a scraper that does not ask for OpenMetrics gets.
    # shellcheck disable=SC2016 # expanded by the child shell
    check "promtool check metrics finds nothing wrong with $service's /metrics" \
        bash -c 'curl -fsS "$1" | "$2" check metrics' _ "$base/metrics" "$PROMTOOL"
done
for service in gateway order pay; do fuzz "$service" "${BASE[$service]}/openapi.json"; done

# The invariants across the two databases, once the orders schemathesis placed have settled.
check "the two databases agree (crates/system-tests/tests/api/contract.rs)" env CONTRACT_BALANCES_BEFORE="$CONTRACT_BALANCES_BEFORE" \
    CONTRACT_SETTLE_SECS="${CONTRACT_SETTLE_SECS:-60}" cargo test -p system-tests --test api -- --include-ignored contract::
