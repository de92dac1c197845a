# shellcheck shell=bash
# Sourced by tools/gpu/validate.sh and tools/gpu/nccl-world1.sh: the one runner of
# a timed stage. Needs RESULTS; counts FAILED and SKIPPED.
#
# stage NAME TIMEOUT_S CMD...: stdout to $RESULTS/NAME.out, stderr to NAME.log, one
# line here (ok / FAILED with the log's last lines / skipped). With DEADLINE (epoch
# seconds, set by validate.sh from BUDGET_S) a stage that would start with
# fewer than 20 s left is skipped, and its timeout is cut to what is left, so the
# summary of what did run always prints within one device call.
FAILED=${FAILED:-0}
SKIPPED=${SKIPPED:-0}

stage() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${DEADLINE:-}" ]; then
        local rest=$((DEADLINE - $(date +%s)))
        if [ "$rest" -lt 20 ]; then
            echo "skipped $name: the time budget is spent (BUDGET_S, DEADLINE)"
            SKIPPED=$((SKIPPED + 1))
            return 1
        fi
        [ "$rest" -lt "$limit" ] && limit=$rest
    fi
    local t0 rc dt
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.log"
    rc=$?
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc -eq 0 ]; then
        echo "ok     $name (${dt} s)"
    else
        FAILED=$((FAILED + 1))
        local why="exit $rc"
        [ $rc -eq 124 ] && why="timed out after ${limit} s"
        echo "FAILED $name ($why, ${dt} s; $RESULTS/$name.log ends:)"
        tail -n 4 "$RESULTS/$name.log" | sed 's/^/         | /'
    fi
    return $rc
}
