#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium, installed
# with apt-get when missing; no browser is ever downloaded) driven by playwright-core from
# npm (tests/browser, installed here with `npm ci`). The test buys from the page and sees
# PAID and the lane view; sees a message held by the broker (stop_consumer) and a redelivered
# copy dropped (hold_ack) in the lane; turns on "fail the next 2" on pay and sees the retries
# in the story, then PAID; makes a message dead (fail_handler for INBOX_MAX_ATTEMPTS runs),
# requeues it from the page and sees it leave the dead list; loses a confirm and sees exactly
# one payment; sees a failed Explain and its retry, and the page in Chinese.
#
# It starts its own stack (scripts/run-local.sh with its own ports, databases, exchange,
# queues and run dir: .run/browser/), with DEMO_FAULTS=1 and an ADMIN_TOKEN, and stops it at
# exit. Screenshots go to .run/screens/ (their paths are printed).
#
# Prints `ok - ...` / `not ok - ...` per check, then `N passed, M failed`; exits non-zero
# when a check failed. Environment: BROWSER_PORT_BASE (default 19780: pay +2, order +3,
# gateway +9).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Before lib.sh: it fixes RUN_DIR from LMT_RUN_DIR.
export LMT_RUN_DIR="${LMT_RUN_DIR:-$ROOT/.run/browser}"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PORT_BASE="${BROWSER_PORT_BASE:-19780}"
export PAY_ADDR="127.0.0.1:$((PORT_BASE + 2))"
export ORDER_ADDR="127.0.0.1:$((PORT_BASE + 3))"
export GATEWAY_ADDR="127.0.0.1:$((PORT_BASE + 9))"
unset GATEWAY_ROUTES
use_own_state lmt_browser_order lmt_browser_pay lmt.browser.events browser
export ORDER_PAY_URL
ORDER_PAY_URL="$(base_url "$PAY_ADDR")"
export DEMO_FAULTS=1
# Retries in well under a second, so every step settles within seconds; three handler runs
# before a message is dead ("fail the next 2" still ends PAID).
export OUTBOX_RETRY_BASE_MS=200 OUTBOX_RETRY_MAX_MS=1000 OUTBOX_CONFIRM_TIMEOUT_MS=1000
export INBOX_RETRY_BASE_MS=300 INBOX_RETRY_MAX_MS=1000 INBOX_MAX_ATTEMPTS=3
# The reconciler must not repair what the test breaks on purpose.
export RECONCILER_PENDING_AFTER_SECS=600
# The lane view's unacked count, from the management API where it answers.
if [[ -z "${RABBITMQ_MANAGEMENT_URL:-}" ]] && tcp_open 127.0.0.1 15672; then
    export RABBITMQ_MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672"
fi
mkdir -p "$RUN_DIR"
admin_token_in "$RUN_DIR/admin-token"
GW="$(base_url "$GATEWAY_ADDR")"
SCREENSHOTS="$ROOT/.run/screens"

PASSED=0
FAILED=0
STARTED=0
FINISHED=0
SUMMARY_PRINTED=0
TMP="$(mktemp -d "${TMPDIR:-/tmp}/browser-test.XXXXXX")"
touch -d "@$(($(date +%s) - 1))" "$TMP/t0"

finish() {
    ((FINISHED == 0)) || return 0
    FINISHED=1
    if ((FAILED > 0)); then print_log_tails 40 "$TMP/t0"; fi
    if ((STARTED == 1)); then
        scripts/run-local.sh stop >/dev/null 2>&1 || warn "scripts/run-local.sh stop failed"
    fi
    rm -rf "$TMP"
}
trap exit_with_summary EXIT
trap 'exit 130' INT TERM

running="$(running_services | paste -sd, - || true)"
[[ -z "$running" ]] || die "the browser test's stack is already running ($running): LMT_RUN_DIR=$RUN_DIR scripts/run-local.sh stop"

# ---------------------------------------------------------------------------------------------
# Tools: Chromium from Debian, playwright-core from npm (the lock file's version).

ensure_tool chromium
# The Chinese UI's screenshot needs a font with Chinese glyphs (else boxes).
if command -v fc-list >/dev/null 2>&1 && [[ -z "$(fc-list :lang=zh 2>/dev/null)" ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing fonts-wqy-microhei (Chinese glyphs for the Chinese UI)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null 2>&1 ||
        warn "no Chinese font: the Chinese UI's screenshot shows boxes"
fi
ensure_tool node nodejs
ensure_tool npm
log "npm ci (tests/browser)"
if (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.out" 2>&1; then
    ok "playwright-core installed (npm ci in tests/browser)"
else
    not_ok "playwright-core installed (npm ci in tests/browser)" "$(tail -n 5 "$TMP/npm.out" | paste -sd' ' -)"
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# The stack: fresh databases every run, so the page starts from no orders.

ensure_services
drop_database "$ORDER_DATABASE_URL"
drop_database "$PAY_DATABASE_URL"
log "starting the browser test's stack (logs in $RUN_DIR)"
STARTED=1
if scripts/run-local.sh start >"$TMP/start.out" 2>&1; then
    ok "the stack starts with DEMO_FAULTS=1 and ADMIN_TOKEN (gateway $GW)"
else
    not_ok "the stack starts with DEMO_FAULTS=1 and ADMIN_TOKEN" "$(tail -n 5 "$TMP/start.out" | paste -sd' ' -)"
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# The test: one `ok|not ok<TAB>description<TAB>details` line per check in the results file.

mkdir -p "$SCREENSHOTS"
rm -f "$SCREENSHOTS"/*.png
set +e
DASHBOARD_URL="$GW" SCREENSHOT_DIR="$SCREENSHOTS" RESULTS_FILE="$TMP/results" \
    INBOX_MAX_ATTEMPTS="$INBOX_MAX_ATTEMPTS" node tests/browser/dashboard.test.mjs
rc=$?
set -e
while IFS=$'\t' read -r result desc details; do
    if [[ "$result" == ok ]]; then ok "$desc"; else not_ok "$desc" "$details"; fi
done <"$TMP/results" 2>/dev/null || true
if ((rc != 0)); then not_ok "the browser test ran to the end" "node exited with status $rc"; fi
for shot in "$SCREENSHOTS"/*.png; do
    [[ -e "$shot" ]] && printf 'screenshot: %s\n' "$shot"
done
finish
