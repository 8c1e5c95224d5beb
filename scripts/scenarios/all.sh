#!/usr/bin/env bash
# Runs the failure scenarios (scripts/scenarios/NN-*.sh) one after the other on one stack,
# and prints a table: scenario, result, seconds, invariant.
#
#   scripts/scenarios/all.sh            all of them
#   scripts/scenarios/all.sh 05 08      only those (by number or name)
#   scripts/scenarios/all.sh -v         also print each scenario's whole story as it runs
#
# It builds once (cargo build --release --bins; SKIP_BUILD=1 skips it), starts the
# scenarios' own stack on fresh databases (lmt_scenarios_order, lmt_scenarios_pay; ports
# 19762/19763/19769, SCENARIO_PORT_BASE moves them; exchange lmt.scenarios.events; logs and
# each scenario's output in .run/scenarios/), turns every teaching switch off before each
# scenario, and stops the stack at the end. SCENARIO_BROKER=0 skips 03, the one scenario
# that stops RabbitMQ's app (node-wide). Exits non-zero when a scenario failed.
#
# It refuses to run while the scenarios' stack is already running (a scenario run by hand
# starts and stops its own; stop it with LMT_RUN_DIR=.run/scenarios scripts/run-local.sh stop).
# shellcheck source=scripts/scenarios/scenario.sh
. "$(dirname "$0")/scenario.sh"

VERBOSE=0
SELECTED=()
for arg in "$@"; do
    case "$arg" in
    -v | --verbose) VERBOSE=1 ;;
    -h | --help)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        SCENARIO_DONE=1
        exit 0
        ;;
    *) SELECTED+=("$arg") ;;
    esac
done

SCRIPTS=()
for script in "$SCENARIOS_DIR"/[0-9][0-9]-*.sh; do
    name="$(basename "$script" .sh)"
    if ((${#SELECTED[@]} > 0)); then
        wanted=0
        for s in "${SELECTED[@]}"; do
            [[ "$name" == "$s" || "$name" == "$s"-* || "$name.sh" == "$s" ]] && wanted=1
        done
        ((wanted)) || continue
    fi
    SCRIPTS+=("$script")
done
((${#SCRIPTS[@]} > 0)) || die "no scenario matches: ${SELECTED[*]}"

# Built once here, then started on fresh databases; refused when it runs already.
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins || die "cargo build failed"
fi
export SKIP_BUILD=1
start_own_stack || die "the scenarios' stack did not start"

NAMES=()
RESULTS=()
SECS=()
INVARIANTS=()
failed=0
for script in "${SCRIPTS[@]}"; do
    name="$(basename "$script" .sh)"
    out="$RUN_DIR/$name.out"
    if [[ "$name" == 03-* && "${SCENARIO_BROKER:-1}" == 0 ]]; then
        NAMES+=("$name")
        RESULTS+=(SKIP)
        SECS+=(0)
        INVARIANTS+=("SCENARIO_BROKER=0: RabbitMQ is not stopped")
        continue
    fi
    stack_up
    reset_faults
    log "$name"
    started=$SECONDS
    rc=0
    if ((VERBOSE)); then
        SCENARIO_RESULT="$TMP/result" "$script" 2>&1 | tee "$out" || rc=$?
    else
        SCENARIO_RESULT="$TMP/result" "$script" >"$out" 2>&1 || rc=$?
    fi
    result=FAIL
    invariant="no result (see $out)"
    if [[ -s "$TMP/result" ]]; then
        IFS=$'\t' read -r result invariant <"$TMP/result"
    fi
    rm -f "$TMP/result"
    if ((rc != 0)); then result=FAIL; fi
    if [[ "$result" != PASS ]]; then
        failed=$((failed + 1))
        if ((!VERBOSE)); then
            printf -- '----- %s failed; its output (%s) -----\n' "$name" "$out"
            cat "$out"
            printf -- '-----\n'
        fi
    fi
    grep -E '^(PASS|FAIL): ' "$out" | tail -n1 || true
    NAMES+=("$name")
    RESULTS+=("$result")
    SECS+=("$((SECONDS - started))")
    INVARIANTS+=("$invariant")
done

printf '\n%-36s %-6s %5s  %s\n' scenario result secs invariant
for i in "${!NAMES[@]}"; do
    printf '%-36s %-6s %5s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}" "${INVARIANTS[$i]}"
done
printf '\n%s scenarios, %s failed, %s s (outputs in %s)\n' "${#NAMES[@]}" "$failed" "$SECONDS" "$RUN_DIR"

SCENARIO_DONE=1
((failed == 0))
