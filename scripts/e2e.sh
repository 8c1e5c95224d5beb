#!/usr/bin/env bash
# End to end, the README's way: starts the stack with scripts/run-local.sh (its ports, its own
# databases, exchange and queues), runs crates/system-tests/tests/api/e2e.rs against its gateway
# (that file lists the checks) and stops the stack at exit, whatever happens, with the end of
# each service log when something failed. cargo test prints the outcome (`N passed; M failed`);
# the exit status is non-zero when a test failed.
#
# Environment: the services' variables, as for run-local.sh; E2E_PAYMENT_DEADLINE_SECS (how
# long an order may take to settle, default 15).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

own_stack e2e
trap 'rc=$?; stop_own_stack $((rc != 0)); exit $rc' EXIT
trap 'exit 130' INT TERM
start_own_stack || die "the stack did not start (scripts/run-local.sh start)"
e2e_tests "$GW" "'$LMT_ROOT/scripts/run-local.sh' stop-one pay" "'$LMT_ROOT/scripts/run-local.sh' start-one pay"
