#!/usr/bin/env bash
# The API contract, tested by a tool nobody here wrote: schemathesis (from PyPI, installed
# into a virtualenv under .run/) reads the OpenAPI documents the running stack serves and
# sends what it generates from them: valid requests, invalid ones, and sequences that follow
# the documents' links. Every check it has is on (scripts/contract/schemathesis.toml lists
# the two exceptions and why): no 5xx, every status and body as documented, invalid input
# refused, valid input accepted, the admin routes refuse a request without the token.
#
#  1. Starts its own stack with scripts/run-local.sh (own ports, databases, exchange, queues
#     and run directory .run/contract/, so a developer's stack and data are untouched).
#  2. Runs schemathesis against the gateway's merged document (with the admin token, so the
#     admin routes are exercised too) and against order's and pay's own documents.
#  3. Validates the three documents with openapi-spec-validator (PyPI) and the three /metrics
#     answers with Prometheus's own `promtool check metrics` (from Debian's prometheus package,
#     unpacked under .run/, never installed as a server).
#  4. Waits for the orders it placed to settle, then checks the invariants across the two
#     databases: every order has its outbox row; every payment belongs to an order that
#     exists in order's database (compared from here: no query crosses the databases); every
#     order is settled, PAID exactly when its payment COMPLETED; money is conserved.
#
# Prints `ok - ...` / `not ok - ...` per check and `N passed, M failed`; exits non-zero when a
# check failed. Reports (JUnit XML) in .run/contract/reports/.
#
# Environment (all optional):
#   CONTRACT_PORT_BASE       ports BASE+2 (pay), BASE+3 (order), BASE+9 (gateway); default 18860
#   CONTRACT_MAX_EXAMPLES    generated cases per operation and phase (default 50)
#   CONTRACT_SEED            schemathesis's seed (default: a new one each run, printed)
#   CONTRACT_SETTLE_SECS     how long the orders may take to settle (default 60)
#   SCHEMATHESIS_VERSION     the version installed (default 4.32.5)
#   VALIDATOR_VERSION        openapi-spec-validator's version (default 0.9.0)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-50}"
SEED="${CONTRACT_SEED:-$((RANDOM * 32768 + RANDOM))}"
SETTLE_SECS="${CONTRACT_SETTLE_SECS:-60}"
ST_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
VALIDATOR_VERSION="${VALIDATOR_VERSION:-0.9.0}"

own_stack contract "${CONTRACT_PORT_BASE:-18860}"
REPORTS="$RUN_DIR/reports"
VENV="$LMT_ROOT/.run/venv-schemathesis"
mkdir -p "$REPORTS"

PASSED=0
FAILED=0
FINISHED=0
trap exit_with_summary EXIT
trap 'exit 130' INT TERM

# Stops the stack (with the logs when something failed), once: exit_with_summary calls it.
finish() {
    ((FINISHED == 0)) || return 0
    FINISHED=1
    stop_own_stack $((FAILED > 0))
}

# psql_in URL SQL: one value, unaligned.
psql_in() { psql "$1" -XqAt -v ON_ERROR_STOP=1 -c "$2"; }

# ---------------------------------------------------------------------------------------------
# schemathesis, pinned, in its own virtualenv (re-created when the version changes).

install_schemathesis() {
    if [[ -x "$VENV/bin/st" ]] && [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" == "$ST_VERSION" ]]; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || ensure_tool python3
    python3 -m venv --help >/dev/null 2>&1 || ensure_tool python3 python3-venv
    log "installing schemathesis $ST_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION" ||
        die "pip install schemathesis==$ST_VERSION failed"
}

# openapi-spec-validator, pinned, in its own virtualenv (its jsonschema pins may differ from
# schemathesis's).
VALIDATOR_VENV="$LMT_ROOT/.run/venv-openapi-validator"
install_validator() {
    [[ -x "$VALIDATOR_VENV/bin/openapi-spec-validator" ]] &&
        "$VALIDATOR_VENV/bin/pip" show openapi-spec-validator 2>/dev/null | grep -qx "Version: $VALIDATOR_VERSION" &&
        return 0
    log "installing openapi-spec-validator $VALIDATOR_VERSION into $VALIDATOR_VENV"
    rm -rf "$VALIDATOR_VENV"
    python3 -m venv "$VALIDATOR_VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VALIDATOR_VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$VALIDATOR_VERSION" ||
        die "pip install openapi-spec-validator==$VALIDATOR_VERSION failed"
}

# promtool, from Debian's prometheus package, unpacked under .run/ (not installed: the
# package would also start a Prometheus server).
PROMTOOL_DIR="$LMT_ROOT/.run/promtool"
PROMTOOL="$PROMTOOL_DIR/usr/bin/promtool"
install_promtool() {
    [[ -x "$PROMTOOL" ]] && return 0
    command -v apt-get >/dev/null 2>&1 || die "promtool is missing and apt-get is not available"
    log "unpacking promtool from Debian's prometheus package into $PROMTOOL_DIR"
    mkdir -p "$PROMTOOL_DIR"
    (cd "$PROMTOOL_DIR" && { apt-get download prometheus >/dev/null 2>&1 ||
        { as_root apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null; }; }) ||
        die "apt-get download prometheus failed"
    dpkg-deb -x "$PROMTOOL_DIR"/prometheus_*.deb "$PROMTOOL_DIR" && rm -f "$PROMTOOL_DIR"/prometheus_*.deb
    [[ -x "$PROMTOOL" ]] || die "no promtool in the prometheus package"
}

# validate NAME URL: the document at URL is valid OpenAPI.
validate() {
    local name="$1" url="$2" doc="$RUN_DIR/openapi-$1.json" out
    curl -fsS "$url" -o "$doc" || { not_ok "$name's OpenAPI document is served" "GET $url failed"; return; }
    if out="$("$VALIDATOR_VENV/bin/openapi-spec-validator" "$doc" 2>&1)"; then
        ok "openapi-spec-validator accepts $name's document"
    else
        not_ok "openapi-spec-validator accepts $name's document" "$(printf '%s\n' "$out" | head -n 20)"
    fi
}

# lint_metrics NAME URL: promtool (which reads the classic text format, what a scraper that
# does not ask for OpenMetrics gets) finds nothing wrong with the /metrics answer at URL.
lint_metrics() {
    local name="$1" url="$2" out
    if out="$(curl -fsS "$url" | "$PROMTOOL" check metrics 2>&1)"; then
        ok "promtool check metrics finds nothing wrong with $name's /metrics"
    else
        not_ok "promtool check metrics finds nothing wrong with $name's /metrics" "$(printf '%s\n' "$out" | head -n 20)"
    fi
}

# fuzz NAME URL: schemathesis against the document at URL; ok when it finds nothing.
fuzz() {
    local name="$1" url="$2" out="$RUN_DIR/schemathesis-$1.out" rc=0
    log "schemathesis: $name ($url), seed $SEED, $MAX_EXAMPLES examples per operation"
    "$VENV/bin/st" --config-file scripts/contract/schemathesis.toml run "$url" \
        --header "Authorization: Bearer $ADMIN_TOKEN" \
        --checks all --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1 \
        --report junit --report-junit-path "$REPORTS/$name.xml" \
        >"$out" 2>&1 || rc=$?
    # The summary line, e.g. "2420 generated, 2420 passed, 38 skipped".
    local summary
    summary="$(grep -E '^ +[0-9]+ generated' "$out" | tail -n1 | sed 's/^ *//')"
    if ((rc == 0)); then
        ok "schemathesis finds nothing wrong with $name's contract ($summary)"
    else
        not_ok "schemathesis finds nothing wrong with $name's contract" \
            "exit $rc, ${summary:-no summary}; failures:
$(grep -E '^_{3,} |^- ST|^\[[0-9]{3}\]' "$out" | cut -c1-200 | head -n 40)
(the whole output: $out)"
    fi
}

# ---------------------------------------------------------------------------------------------

ensure_tool curl
ensure_tool jq
ensure_tool psql postgresql-client
install_schemathesis
install_validator
install_promtool
if ! start_own_stack; then
    not_ok "the stack starts and becomes ready" "scripts/run-local.sh start failed"
    finish
    exit 1
fi
ok "the stack starts and becomes ready"

money() { psql_in "$PAY_DATABASE_URL" "SELECT coalesce(sum(balance_cents), 0) FROM accounts"; }
TOTAL_BEFORE="$(money)"

validate gateway "$GW/openapi.json"
validate order "http://$ORDER_ADDR/openapi.json"
validate pay "http://$PAY_ADDR/openapi.json"
lint_metrics gateway "$GW/metrics"
lint_metrics order "http://$ORDER_ADDR/metrics"
lint_metrics pay "http://$PAY_ADDR/metrics"

fuzz gateway "$GW/openapi.json"
fuzz order "http://$ORDER_ADDR/openapi.json"
fuzz pay "http://$PAY_ADDR/openapi.json"

# ---------------------------------------------------------------------------------------------
# The invariants, once the orders schemathesis placed have settled.

pending() { psql_in "$ORDER_DATABASE_URL" "SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'"; }
deadline=$((SECONDS + SETTLE_SECS))
while (($(pending) > 0 && SECONDS < deadline)); do sleep 0.5; done

ORDERS="$(psql_in "$ORDER_DATABASE_URL" "SELECT count(*) FROM orders")"
check_equal() {
    local desc="$1" want="$2" got="$3"
    if [[ "$got" == "$want" ]]; then ok "$desc"; else not_ok "$desc" "want $want, got $got"; fi
}

if ((ORDERS > 0)); then
    ok "schemathesis placed orders ($ORDERS)"
else
    not_ok "schemathesis placed orders" "no order in $ORDER_DATABASE_URL"
fi
check_equal "no order without its outbox row" 0 "$(psql_in "$ORDER_DATABASE_URL" \
    "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM outbox x WHERE x.id = o.message_id)")"
check_equal "every order is settled within ${SETTLE_SECS} s" 0 "$(pending)"

# Across the databases, compared here: the payments' orders are orders order knows, and an
# order is PAID exactly when pay COMPLETED its payment.
TMP="$(mktemp -d "${TMPDIR:-/tmp}/contract.XXXXXX")"
psql_in "$ORDER_DATABASE_URL" "SELECT id, status FROM orders ORDER BY 1" >"$TMP/orders"
psql_in "$PAY_DATABASE_URL" "SELECT order_id, status FROM payments ORDER BY 1" >"$TMP/payments"
orphans="$(join -t'|' -v2 "$TMP/orders" "$TMP/payments" | wc -l)"
check_equal "no payment without an order (pay's order ids all exist in order's database)" 0 "$orphans"
mismatched="$(join -t'|' "$TMP/orders" "$TMP/payments" |
    awk -F'|' '($2 == "PAID") != ($3 == "COMPLETED")' | wc -l)"
check_equal "an order is PAID exactly when its payment COMPLETED" 0 "$mismatched"
unpaid="$(join -t'|' -v1 "$TMP/orders" "$TMP/payments" | wc -l)"
check_equal "every settled order has its payment record in pay" 0 "$unpaid"
rm -rf "$TMP"

completed="$(psql_in "$PAY_DATABASE_URL" "SELECT coalesce(sum(amount_cents), 0) FROM payments WHERE status = 'COMPLETED'")"
check_equal "money is conserved: balances + completed payments = the balances before" \
    "$TOTAL_BEFORE" "$(($(money) + completed))"
finish
