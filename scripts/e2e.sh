#!/usr/bin/env bash
# End to end, the README's way: crates/system-tests/tests/api/e2e.rs (which lists the checks)
# against a stack scripts/run-local.sh starts (its ports, its own databases, exchange and
# queues), stopped at exit whatever happens, with the end of each service log on failure.
# Environment: the services' variables; E2E_PAYMENT_DEADLINE_SECS (an order settling, 15).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

own_stack e2e
trap 'rc=$?; stop_own_stack $((rc != 0)); exit $rc' EXIT
trap 'exit 130' INT TERM
start_own_stack || die "the stack did not start (scripts/run-local.sh start)"
e2e_tests "$GW" "'$LMT_ROOT/scripts/run-local.sh' stop-one pay" "'$LMT_ROOT/scripts/run-local.sh' start-one pay"
