#!/usr/bin/env bash
# AlexNet training throughput of `supervision train` against PyTorch on the same GPU,
# in every precision/layout mode the trainer offers, and the CUDA tests (issues 10, 14).
#
# Runs on the GPU machine (python3 with torch 2.11.0+cu130, no Rust): it uses release
# executables built on the development machine and carried along
# (tools/gpu/build-carry.sh), and libtorch from that python's torch package. One call
# of a few minutes. Every stage has its own timeout; a failed stage prints a FAILED
# line and the script goes on, so one failure never loses the rest. Each stage's
# stdout goes to $RESULTS/<stage>.out and its stderr to $RESULTS/<stage>.log, so the
# output here is the list of stages and the summary table.
#
#   0. preflight: torch is 2.11; the executables' libraries resolve (ldd), their
#      highest GLIBC/GLIBCXX needs against this machine's, their size; a 2-step CUDA
#      run through `supervision` (which execs `supervision-torch`)
#   1. the PyTorch peer first: autocast bf16 + channels_last + foreach SGD, and fp32
#      (channels_last and NCHW), on a device-resident batch
#   2. synthetic data: JPEGs, raw shards, statistics and mean image, made here
#   3. ours, compute-only ceiling (--synthetic-data) in each mode
#   4. ours end to end from shards in the main modes, the copy stream off, and the
#      paper's per-pixel mean image; one epoch holds every step (no epoch end, no
#      validation, no checkpoint inside the timed windows)
#   5. sv-train's CUDA test (`cuda_matches_cpu`) from the carried test binary
#  5b. NCCL at world size 1 (tools/gpu/nccl-world1.sh): sv-c10's GPU tests, the
#      ceiling with and without --collective nccl, NCCL against the plain path
#   6. the summary (tools/gpu/summarise.py): images/s, ratios, data-wait share
#
# Device run: carry ["target-gpu/carry"], command: tools/gpu/validate.sh
# Plumbing check on a CPU (tiny settings, under a minute once built): BIN_DIR holds
# supervision, supervision-torch, and the two test binaries under the names above
# (links to target/debug/deps/train-* and c10-* from `cargo test -p sv-train --test
# train --no-run` and `cargo test -p sv-c10 --test c10 --no-run`); the CUDA and NCCL
# tests then report that they skip, and 5b's GPU parts are skipped with a line:
#   DEVICE=cpu MODEL=alexnet-tiny STEPS=2 E2E_STEPS=3 BATCH=4 CLASSES=4 \
#     BIN_DIR=target/debug PYTHON=~/.cache/supervision/venv-torch-2.11.0/bin/python \
#     tools/gpu/validate.sh
#
# Environment: BIN_DIR (target-gpu/carry: supervision, supervision-torch,
# sv-train-tests, sv-c10-tests), PYTHON (python3), DEVICE (cuda), MODEL (alexnet), BATCH (128),
# STEPS (ceiling and peer timed steps, 100), E2E_STEPS (end-to-end steps, 150),
# CLASSES (100), WORK (a temporary folder), OUT (results; $OUT on the device machine),
# BUDGET_S (540: seconds after which no stage starts; give the device call 600).
set -uo pipefail
cd "$(dirname "$0")/../.."

PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-alexnet}"
BATCH="${BATCH:-128}"
STEPS="${STEPS:-100}"
E2E_STEPS="${E2E_STEPS:-150}"
CLASSES="${CLASSES:-100}"
BIN_DIR="${BIN_DIR:-target-gpu/carry}"
WORK="${WORK:-$(mktemp -d)}"
RESULTS="${OUT:-$WORK/results}"
SV="$BIN_DIR/supervision"
SVT="$BIN_DIR/supervision-torch"
mkdir -p "$WORK" "$RESULTS"
T_START=$(date +%s)
FAILED=0
SKIPPED=0
# One device call runs at most 600 s: stages that would start after the budget are
# skipped with a line (and a stage's timeout is cut to what is left), so the summary of
# what did run always prints. nccl-world1.sh reads the same DEADLINE.
export DEADLINE="${DEADLINE:-$((T_START + ${BUDGET_S:-540}))}"

# stage NAME TIMEOUT_S CMD... (tools/gpu/stage.sh)
# shellcheck source=stage.sh
source tools/gpu/stage.sh

echo "== 0 preflight ($(date -u +%Y-%m-%dT%H:%MZ))"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
stage torch-version 60 "$PY" -c '
import sys, torch
cuda = torch.cuda.is_available()
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if cuda else "no GPU")
assert torch.__version__.startswith("2.11."), f"torch {torch.__version__}: the binaries are built against 2.11"
assert cuda or sys.argv[1] == "cpu", "PyTorch sees no CUDA device"
' "$DEVICE" && echo "       torch $(cat "$RESULTS/torch-version.out")"
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader \
        | sed 's/^/       /'
fi
for b in "$SV" "$SVT"; do
    if [ ! -x "$b" ]; then
        echo "FAILED missing executable $b (build with tools/gpu/build-carry.sh)"
        FAILED=$((FAILED + 1))
    fi
done
if [ -x "$SVT" ]; then
    missing=$(ldd "$SVT" 2>&1 | grep -c "not found")
    [ "$missing" -eq 0 ] && echo "ok     ldd: every library of supervision-torch resolves" \
        || { echo "FAILED ldd: $missing libraries not found:"; ldd "$SVT" | grep "not found" | sed 's/^/         | /'; FAILED=$((FAILED + 1)); }
    for sym in GLIBC GLIBCXX; do
        need=$(objdump -T "$SVT" "$SV" 2>/dev/null | grep -o "${sym}_[0-9.]*" | sort -uV | tail -1)
        echo "       highest $sym needed: ${need:-none}"
    done
    echo "       this machine: $(ldd --version 2>&1 | head -1)"
    total=0
    for f in "$BIN_DIR"/*; do
        [ -f "$f" ] || continue
        sz=$(stat -L -c %s "$f")
        total=$((total + sz))
        echo "       $(basename "$f"): $((sz / 1048576)) MiB"
    done
    if [ $total -lt $((64 * 1048576)) ]; then
        echo "ok     carried total $((total / 1048576)) MiB (< 64 MiB)"
    elif [ "$DEVICE" = cpu ]; then
        # the plumbing check runs unstripped debug binaries, which are never carried
        echo "note   total $((total / 1048576)) MiB: over the 64 MiB carry limit (not counted with DEVICE=cpu)"
    else
        echo "FAILED carried total $((total / 1048576)) MiB (>= 64 MiB)"
        FAILED=$((FAILED + 1))
    fi
fi
stage preflight-cuda 120 "$SV" train --synthetic-data 2 --model alexnet-tiny --batch-size 8 \
    --synthetic-classes 4 --device "$DEVICE" --out "$WORK/preflight" --json

# mode name -> flags; names are <precision>-<layout>[-<variant>]
flags_of() {
    local p=${1%%-*} rest=${1#*-}
    local layout=${rest%%-*}
    local cl=false
    [ "$layout" = cl ] && cl=true
    echo "--precision $p --channels-last $cl"
}

echo "== 1 PyTorch peer (same architecture, device-resident batch, $STEPS steps)"
PEER_WARMUP=20
[ "$DEVICE" = cpu ] && PEER_WARMUP=1
for mode in bf16-cl fp32-cl fp32-nchw; do
    p=${mode%%-*}
    cl=""
    [ "${mode#*-}" = cl ] && cl="--channels-last"
    stage "pytorch-$mode" 240 "$PY" tools/gpu/torch_alexnet_bench.py --device "$DEVICE" \
        --precision "$p" $cl --steps "$STEPS" --warmup "$PEER_WARMUP" --batch-size "$BATCH" \
        --classes "$CLASSES"
done

echo "== 2 synthetic data"
IMAGES=$(( (E2E_STEPS + 2) * BATCH ))
PER_CLASS=$(( (IMAGES + CLASSES - 1) / CLASSES ))
stage synth 300 "$SV" synth --output "$WORK/synth" --classes "$CLASSES" --per-class "$PER_CLASS" \
    --val-per-class 1 --min-side 256 --max-side 320 --seed 1
stage shard-build 300 "$SV" shard build --input "$WORK/synth/train" --output "$WORK/train" --codec raw
stage pca 300 "$SV" pca compute --shards "$WORK/train" --output "$WORK/pca.json" --sample 2000 \
    --mean-image "$WORK/mean.npy"

echo "== 3 ours, compute-only ceiling (device-resident batch, $STEPS steps)"
for mode in bf16-cl bf16-nchw fp16-cl fp32-cl fp32-nchw; do
    # shellcheck disable=SC2046
    stage "ceiling-$mode" 240 "$SV" train --synthetic-data "$STEPS" --model "$MODEL" \
        --batch-size "$BATCH" --device "$DEVICE" --synthetic-classes "$CLASSES" \
        $(flags_of "$mode") --out "$WORK/ceiling-$mode" --json
done

echo "== 4 ours, end to end from shards ($E2E_STEPS steps in one epoch, windows of 25)"
LOG_EVERY=25
[ "$E2E_STEPS" -lt 50 ] && LOG_EVERY=1
e2e() {
    local mode=$1
    shift
    # shellcheck disable=SC2046
    stage "e2e-$mode" 420 "$SV" train --train "$WORK/train" --stats "$WORK/pca.json" \
        --out "$WORK/e2e-$mode" --model "$MODEL" --batch-size "$BATCH" --device "$DEVICE" \
        --max-steps "$E2E_STEPS" --epochs 1000 --checkpoint-every 0 --log-every "$LOG_EVERY" \
        $(flags_of "$mode") "$@" --json
    cp "$WORK/e2e-$mode/metrics.jsonl" "$RESULTS/e2e-$mode-metrics.jsonl" 2>/dev/null
}
e2e bf16-cl
e2e fp32-cl
e2e bf16-cl-nocopy --copy-stream false
e2e bf16-cl-meanimage --mean-image "$WORK/mean.npy"

echo "== 5 sv-train CUDA tests"
if [ -x "$BIN_DIR/sv-train-tests" ]; then
    if stage cuda-tests 300 "$BIN_DIR/sv-train-tests" --exact cuda_matches_cpu --nocapture \
        --test-threads 1; then
        grep -h "test result" "$RESULTS/cuda-tests.out" | sed 's/^/       /'
        # a filter that matches nothing passes with "0 passed"
        if ! grep -q "ok\. 1 passed" "$RESULTS/cuda-tests.out"; then
            echo "FAILED cuda-tests: cuda_matches_cpu did not run (renamed?)"
            FAILED=$((FAILED + 1))
        fi
    fi
    if grep -q "skipped, no CUDA" "$RESULTS/cuda-tests.log" 2>/dev/null; then
        echo "       (skipped: no CUDA device)"
        if [ "$DEVICE" != cpu ]; then
            echo "FAILED cuda-tests: skipped on a GPU machine"
            FAILED=$((FAILED + 1))
        fi
    fi
else
    echo "FAILED no $BIN_DIR/sv-train-tests"
    FAILED=$((FAILED + 1))
fi

echo "== 5b NCCL at world size 1 (communicator, bucketed all-reduce, against the single-process path)"
TRAIN="$WORK/train" BIN_DIR="$BIN_DIR" OUT="$RESULTS" WORK="$WORK" PYTHON="$PY" DEVICE="$DEVICE" \
    MODEL="$MODEL" BATCH="$BATCH" STEPS="$STEPS" CLASSES="$CLASSES" tools/gpu/nccl-world1.sh \
    || FAILED=$((FAILED + 1))

echo "== 6 summary"
warnings=$(cat "$RESULTS"/*.log 2>/dev/null | grep -ci "deprecat")
echo "libtorch deprecation warnings in all stage logs: $warnings"
"$PY" tools/gpu/summarise.py "$RESULTS" "$BATCH" "$MODEL" | tee "$RESULTS/summary.txt"
echo "== $FAILED failed stage(s), $SKIPPED skipped for time; total $(( $(date +%s) - T_START )) s; results in $RESULTS"
