#!/usr/bin/env bash
# Runs the failure scenarios (scripts/scenarios/NN-*.sh) one after the other on one stack,
# and prints a table: scenario, result, seconds, invariant.
#
#   scripts/scenarios/all.sh            all of them
#   scripts/scenarios/all.sh 05 08      only those (by number or name)
#   scripts/scenarios/all.sh -v         also print each scenario's whole story as it runs
#
# It builds once (as run-local.sh does; SKIP_BUILD=1 skips it), starts the
# scenarios' own stack on fresh databases (ports 19762/19763/19769, SCENARIO_PORT_BASE moves
# them; outputs in .run/scenarios/), turns every teaching switch off before each scenario,
# and stops the stack at the end; it refuses to run while that stack runs already.
# SCENARIO_BROKER=0 skips 03, the one scenario that stops RabbitMQ's app (node-wide).
# shellcheck source=scripts/scenarios/scenario.sh
. "$(dirname "$0")/scenario.sh"

VERBOSE=0 SELECTED=() SCRIPTS=() TABLE=() failed=0
for arg in "$@"; do
    case "$arg" in
    -v | --verbose) VERBOSE=1 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' && SCENARIO_DONE=1 && exit 0 ;;
    *) SELECTED+=("$arg") ;;
    esac
done
for script in "$SCENARIOS_DIR"/[0-9][0-9]-*.sh; do
    name="$(basename "$script" .sh)"
    for s in "${SELECTED[@]:-$name}"; do
        [[ "$name" == "$s" || "$name" == "$s"-* || "$name.sh" == "$s" ]] && SCRIPTS+=("$script") && break
    done
done
((${#SCRIPTS[@]} > 0)) || die "no scenario matches: ${SELECTED[*]}"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "${BUILD[*]}"
    "${BUILD[@]}" || die "cargo build failed"
fi
export SKIP_BUILD=1
start_own_stack || die "the scenarios' stack did not start"

for script in "${SCRIPTS[@]}"; do
    name="$(basename "$script" .sh)" out="$RUN_DIR/$name.out" started=$SECONDS
    if [[ "$name" == 03-* && "${SCENARIO_BROKER:-1}" == 0 ]]; then
        TABLE+=("$(printf '%-36s %-6s %5s  %s' "$name" SKIP 0 "SCENARIO_BROKER=0: RabbitMQ is not stopped")")
        continue
    fi
    stack_up
    reset_faults
    log "$name"
    if ((VERBOSE)); then "$script" 2>&1 | tee "$out" && rc=0 || rc=$?; else "$script" >"$out" 2>&1 && rc=0 || rc=$?; fi
    # The scenario's verdict is its last PASS/FAIL line; a non-zero exit status is a FAIL.
    verdict="$(grep -E '^(PASS|FAIL): ' "$out" | tail -n1 || true)"
    result="${verdict%%:*}" invariant="$(sed -E 's/^[A-Z]+: //; s/ \(not: .*//' <<<"$verdict")"
    if ((rc != 0)) || [[ "$result" != PASS ]]; then
        result=FAIL failed=$((failed + 1))
        ((VERBOSE)) || printf -- '----- %s failed; its output (%s) -----\n%s\n-----\n' "$name" "$out" "$(cat "$out")"
    fi
    printf '%s\n' "${verdict:-FAIL: no result (see $out)}"
    TABLE+=("$(printf '%-36s %-6s %5s  %s' "$name" "$result" "$((SECONDS - started))" "${invariant:-no result (see $out)}")")
done

printf '\n%-36s %-6s %5s  %s\n' scenario result secs invariant
printf '%s\n' "${TABLE[@]}"
printf '\n%s scenarios, %s failed, %s s (outputs in %s)\n' "${#TABLE[@]}" "$failed" "$SECONDS" "$RUN_DIR"
SCENARIO_DONE=1
((failed == 0))
