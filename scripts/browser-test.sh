#!/usr/bin/env bash
# The dashboard in headless Chromium (Debian's chromium, installed when missing; no browser
# is ever downloaded) driven by playwright-core from npm (tests/browser, `npm ci`): the checks
# are tests/browser/dashboard.test.mjs's (docs/dashboard.md). Runs on a stack of its own
# (scripts/run-local.sh --demo; own ports, databases, exchange, queues, .run/browser/),
# stopped at exit. Screenshots: .run/screens/. Prints `ok - ...` / `not ok - ...` per check
# and `N passed, M failed`; exits non-zero when a check failed. BROWSER_PORT_BASE (19780:
# pay +2, order +3, gateway +9) moves the ports.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

own_stack browser "${BROWSER_PORT_BASE:-19780}"
# Retries in well under a second, so every step settles within seconds; three handler runs
# before a message is dead ("fail the next 2" still ends PAID).
export OUTBOX_RETRY_BASE_MS=200 OUTBOX_RETRY_MAX_MS=1000 OUTBOX_CONFIRM_TIMEOUT_MS=1000
export INBOX_RETRY_BASE_MS=300 INBOX_RETRY_MAX_MS=1000 INBOX_MAX_ATTEMPTS=3
# The reconciler must not repair what the test breaks on purpose.
export RECONCILER_PENDING_AFTER_SECS=600
SCREENSHOTS="$LMT_ROOT/.run/screens"
TMP="$RUN_DIR"
trap exit_with_summary EXIT
trap 'exit 130' INT TERM

# Tools: Chromium from Debian, playwright-core from npm (the lock file's version). The
# Chinese UI's screenshot needs a font with Chinese glyphs (else boxes).
ensure_tool chromium
if command -v fc-list >/dev/null 2>&1 && [[ -z "$(fc-list :lang=zh 2>/dev/null)" ]]; then
    log "installing fonts-wqy-microhei (Chinese glyphs for the Chinese UI)"
    apt_install fonts-wqy-microhei || warn "no Chinese font: the Chinese UI's screenshot shows boxes"
fi
ensure_tool node nodejs
ensure_tool npm
log "npm ci (tests/browser)"
if (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.out" 2>&1; then
    ok "playwright-core installed (npm ci in tests/browser)"
else
    not_ok "playwright-core installed (npm ci in tests/browser)" "$(tail -n 5 "$TMP/npm.out" | paste -sd' ' -)"
    STOPPED=1 && exit 1
fi

# The stack: fresh databases every run, so the page starts from no orders.
if start_own_stack --demo; then
    ok "the stack starts with DEMO_FAULTS=1 and ADMIN_TOKEN (gateway $GW)"
else
    not_ok "the stack starts with DEMO_FAULTS=1 and ADMIN_TOKEN" "scripts/run-local.sh start --demo failed"
    STOPPED=1 && exit 1
fi

# The test: one `ok|not ok<TAB>description<TAB>details` line per check in the results file.
mkdir -p "$SCREENSHOTS"
rm -f "$SCREENSHOTS"/*.png
rc=0
DASHBOARD_URL="$GW" SCREENSHOT_DIR="$SCREENSHOTS" RESULTS_FILE="$TMP/results" \
    INBOX_MAX_ATTEMPTS="$INBOX_MAX_ATTEMPTS" node tests/browser/dashboard.test.mjs || rc=$?
while IFS=$'\t' read -r result desc details; do
    if [[ "$result" == ok ]]; then ok "$desc"; else not_ok "$desc" "$details"; fi
done <"$TMP/results" 2>/dev/null || true
if ((rc != 0)); then not_ok "the browser test ran to the end" "node exited with status $rc"; fi
for shot in "$SCREENSHOTS"/*.png; do
    [[ ! -e "$shot" ]] || printf 'screenshot: %s\n' "$shot"
done
