#!/usr/bin/env bash
# Model-checks the protocol with spin: model/local_message_table.pml (see docs/model.md).
#
# 1. The full model must pass: every safety assertion in every reachable state (exhaustive,
#    at most 2 faults per run), then each liveness claim under weak fairness (`pan -a -f`,
#    at most 1 fault per run: the fair search costs about ten times more per state).
# 2. Each variant, the model with one part of the mechanism removed (a -D macro), must FAIL,
#    and with the expected assertion: the trail's "text of failed assertion" is checked. The
#    search is breadth-first, so the trail is a shortest one: replay it with
#    `cd .run/model/variant-NAME && spin -t -p -DMACRO model.pml`.
#
# Prints one line per check (states explored, seconds as pan measured them) and exits non-zero
# on any unexpected result. Installs spin and gcc from the distribution's packages when
# missing. Work files (generated verifiers, trails) go to .run/model/, which git ignores.
#
# Environment: MODEL_MAXF_SAFETY (default 2), MODEL_MAXF_LIVENESS (default 1): faults per run.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

MODEL="model/local_message_table.pml"
WORK=".run/model"
MAXF_SAFETY="${MODEL_MAXF_SAFETY:-2}"
MAXF_LIVENESS="${MODEL_MAXF_LIVENESS:-1}"

# spin and a C compiler, from the distribution: `apt-get update` once, then one install.
install_tools() {
    local missing=() tool
    for tool in spin gcc; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available: install them"
    log "installing ${missing[*]}"
    # Another apt-get may hold the lock for a while (a shared machine): wait for it.
    as_root apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null ||
        die "apt-get update failed (needed for ${missing[*]})"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        "${missing[@]}" >/dev/null || die "could not install ${missing[*]}"
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "installed $tool but it is still missing"
    done
}

UNEXPECTED=0

# row CHECK EXPECTED RESULT STATES SECONDS: one line of the table.
row() {
    printf '%-40s %-30s %-8s %10s %8s\n' "$@"
}

# verifier DIR CC_FLAGS SPIN_FLAGS...: generates and compiles pan in DIR (a copy of the model
# sits there too, so a trail can be replayed next to it).
verifier() {
    local dir="$1" cc_flags="$2"
    shift 2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$MODEL" "$dir/model.pml"
    (cd "$dir" && spin "$@" -a model.pml >spin.out 2>&1) || {
        cat "$dir/spin.out" >&2
        die "spin could not generate a verifier for $* (see above)"
    }
    # shellcheck disable=SC2086 # cc_flags holds several flags
    (cd "$dir" && gcc -w $cc_flags -o pan pan.c) || die "gcc could not compile the verifier in $dir"
}

# figures OUT: "states seconds errors" from pan's report.
figures() {
    local out="$1" states seconds errors
    states="$(grep -oE '^ *[0-9]+ states, stored' "$out" | grep -oE '[0-9]+' | head -1)"
    seconds="$(grep -oE 'pan: elapsed time [0-9.e+]+' "$out" | grep -oE '[0-9.e+]+$' | head -1)"
    errors="$(grep -oE 'errors: [0-9]+' "$out" | grep -oE '[0-9]+' | head -1)"
    printf '%s %s %s\n' "${states:-?}" "${seconds:-?}" "${errors:-?}"
}

# must_pass NAME DIR PAN_FLAGS...: runs pan; any error is unexpected.
must_pass() {
    local name="$1" dir="$2" states seconds errors
    shift 2
    (cd "$dir" && ./pan "$@" >pan.out 2>&1) || true
    read -r states seconds errors < <(figures "$dir/pan.out")
    if [[ "$errors" == "0" ]]; then
        row "$name" "pass" "pass" "$states" "${seconds}s"
    else
        UNEXPECTED=$((UNEXPECTED + 1))
        row "$name" "pass" "FAIL" "$states" "${seconds}s"
        grep -E 'pan:[0-9]+:|violated|cycle' "$dir/pan.out" | head -5 >&2 || true
        warn "the trail: (cd $dir && spin -t -p model.pml)"
    fi
}

# variant NAME EXPECTED_FLAG DEFINES...: the model without one part must fail with
# `assert(!(EXPECTED_FLAG))`.
variant() {
    local name="$1" expected="$2" dir="$WORK/variant-$1" states seconds errors failed
    shift 2
    # Breadth-first: the shortest counterexample, found after few states. -O0: such a short
    # search gains less from an optimised verifier than it costs to compile one.
    verifier "$dir" "-O0 -DBFS -DNOCLAIM" "$@"
    (cd "$dir" && ./pan >pan.out 2>&1) || true
    read -r states seconds errors < <(figures "$dir/pan.out")
    failed=""
    if [[ "$errors" != "0" && -e "$dir/model.pml.trail" ]]; then
        failed="$(cd "$dir" && spin -t "$@" model.pml 2>&1 |
            sed -n 's/^spin: text of failed assertion: assert(!(\(.*\)))$/\1/p' | head -1)"
    fi
    if [[ "$failed" == "$expected" ]]; then
        row "variant $name" "fails: $expected" "fails" "$states" "${seconds}s"
    else
        UNEXPECTED=$((UNEXPECTED + 1))
        row "variant $name" "fails: $expected" "${failed:-passes}" "$states" "${seconds}s"
        warn "variant $name ($*): expected assert(!($expected)) to fail, got: ${failed:-no assertion violated}"
    fi
}

install_tools
mkdir -p "$WORK"
row "check" "expected" "result" "states" "time"

verifier "$WORK/safety" "-O2 -DNOCLAIM" "-DMAXF=$MAXF_SAFETY"
must_pass "safety assertions (<= $MAXF_SAFETY faults)" "$WORK/safety"

verifier "$WORK/liveness" "-O2 -DNFAIR=3" -DLIVENESS "-DMAXF=$MAXF_LIVENESS"
for claim in every_order_settled nothing_claimed_forever; do
    must_pass "$claim (<= $MAXF_LIVENESS faults)" "$WORK/liveness" -a -f -N "$claim"
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
