#!/usr/bin/env bash
# Model-checks the protocol with spin: model/local_message_table.pml (docs/model.md).
#
# 1. The full model must pass: every safety assertion in every reachable state (exhaustive,
#    at most MODEL_MAXF_SAFETY=2 faults per run), then each liveness claim under weak
#    fairness (`pan -a -f`, at most MODEL_MAXF_LIVENESS=1 fault: it costs ten times more).
# 2. Each variant, the model with one part of the mechanism removed (a -D macro), must FAIL
#    with the expected assertion (the trail's "text of failed assertion"); breadth-first, so
#    the trail is a shortest one: `cd .run/model/variant-NAME && spin -t -p -DMACRO model.pml`.
#
# One line per check (states, seconds as pan measured them); exits non-zero on any unexpected
# result. Installs spin and gcc when missing. Work files: .run/model/ (git-ignored).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MODEL="model/local_message_table.pml"
WORK=".run/model"
MAXF_SAFETY="${MODEL_MAXF_SAFETY:-2}"
MAXF_LIVENESS="${MODEL_MAXF_LIVENESS:-1}"

UNEXPECTED=0

# verifier DIR CC_FLAGS SPIN_FLAGS...: generates and compiles pan in DIR (a copy of the model
# sits there too, so a trail can be replayed next to it).
verifier() {
    local dir="$1" cc_flags="$2"
    shift 2
    rm -rf "$dir" && mkdir -p "$dir" && cp "$MODEL" "$dir/model.pml"
    (cd "$dir" && spin "$@" -a model.pml >spin.out 2>&1) || die "spin could not generate a verifier for $*: $(cat "$dir/spin.out")"
    # shellcheck disable=SC2086 # cc_flags holds several flags
    (cd "$dir" && gcc -w $cc_flags -o pan pan.c) || die "gcc could not compile the verifier in $dir"
}

# run_pan NAME EXPECTED DIR PAN_FLAGS...: runs pan in DIR and prints the table's row (states
# explored, seconds as pan measured them). RESULT: pass, or the assertion that failed
# (variants) or FAIL; anything but EXPECTED is unexpected.
run_pan() {
    local name="$1" expected="$2" dir="$3" f states seconds errors result
    shift 3
    (cd "$dir" && ./pan "$@" >pan.out 2>&1) || true
    read -r states seconds errors < <(for f in '^ *[0-9]+ states, stored' 'pan: elapsed time [0-9.e+]+' 'errors: [0-9]+'; do
        grep -oE "$f" "$dir/pan.out" | grep -oE '[0-9][0-9.e+]*' | head -1 | grep . || echo '?'
    done | paste -sd' ' -)
    result=pass
    if [[ "$errors" != 0 && "$expected" == pass ]]; then
        result=FAIL
    elif [[ "$errors" != 0 ]]; then
        result="$(cd "$dir" && spin -t "${SPIN_FLAGS[@]}" model.pml 2>&1 | sed -n 's/^spin: text of failed assertion: assert(!(\(.*\)))$/fails: \1/p' | head -1)"
    fi
    printf '%-40s %-30s %-30s %10s %8s\n' "$name" "$expected" "$result" "$states" "${seconds}s"
    [[ "$result" != "$expected" ]] || return 0
    UNEXPECTED=$((UNEXPECTED + 1))
    grep -E 'pan:[0-9]+:|violated|cycle' "$dir/pan.out" | head -5 >&2 || true
    warn "the trail: (cd $dir && spin -t -p ${SPIN_FLAGS[*]} model.pml)"
}

# variant NAME EXPECTED_FLAG DEFINES...: the model without one part must fail with
# `assert(!(EXPECTED_FLAG))`. Breadth-first: the shortest counterexample, found after few
# states. -O0: such a short search gains less from an optimised verifier than it costs.
variant() {
    SPIN_FLAGS=("${@:3}")
    verifier "$WORK/variant-$1" "-O0 -DBFS -DNOCLAIM" "${SPIN_FLAGS[@]}"
    run_pan "variant $1" "fails: $2" "$WORK/variant-$1"
}

ensure_tool spin
ensure_tool gcc
mkdir -p "$WORK"
printf '%-40s %-30s %-30s %10s %8s\n' check expected result states time
SPIN_FLAGS=("-DMAXF=$MAXF_SAFETY")
verifier "$WORK/safety" "-O2 -DNOCLAIM" "${SPIN_FLAGS[@]}"
run_pan "safety assertions (<= $MAXF_SAFETY faults)" pass "$WORK/safety"
SPIN_FLAGS=(-DLIVENESS "-DMAXF=$MAXF_LIVENESS")
verifier "$WORK/liveness" "-O2 -DNFAIR=3" "${SPIN_FLAGS[@]}"
for claim in every_order_settled nothing_claimed_forever; do
    run_pan "$claim (<= $MAXF_LIVENESS faults)" pass "$WORK/liveness" -a -f -N "$claim"
done

variant no_token sent_overwritten -DNO_TOKEN
variant ack_before_commit message_lost -DACK_BEFORE_COMMIT
variant no_dedup handler_ran_twice -DNO_DEDUP
variant no_dedup_no_pay_guard money_not_conserved -DNO_DEDUP -DNO_PAY_GUARD
variant no_mandatory sent_unrouted -DNO_MANDATORY

if ((UNEXPECTED > 0)); then
    printf '\n%s unexpected result(s) in %ss; work files in %s\n' "$UNEXPECTED" "$SECONDS" "$WORK" >&2
    exit 1
fi
printf '\nall as expected (%ss)\n' "$SECONDS"
