#!/usr/bin/env bash
# Issue 6: AlexNet training throughput of `supervision train` against a PyTorch eager
# loop on the same GPU, and whether our input pipeline ever starves the GPU.
#
# Runs on the GPU machine (python3 with torch 2.11.0+cu130, no Rust): it uses a release
# binary built on the development machine and carried along, and libtorch from that
# python's torch package. One call, well inside 10 minutes:
#   1. checks that PyTorch and our binary both see CUDA;
#   2. makes synthetic JPEGs and shards them there (nothing large travels);
#   3. ceiling: our trainer on one GPU-resident synthetic batch (--synthetic-data);
#   4. ours end to end: shards -> prefetch thread -> pinned -> device, full alexnet;
#      then a short run with the paper's per-pixel mean image (--mean-image);
#   5. PyTorch eager, same architecture/update/normalisation, data already on the GPU;
#   6. prints images/s for each, the ratios, and our data-wait share.
#
# Build and carry (on the development machine):
#   source tools/setup-torch.sh
#   CARGO_TARGET_DIR=target-gpu cargo build --release -p sv-cli --features train
#   strip -o target-gpu/supervision target-gpu/release/supervision   # < 64 MiB
#   device run: carry ["target-gpu/supervision"], command: tools/gpu_train_bench.sh
#
# Environment: SUPERVISION_BIN (default target-gpu/supervision, then
# target-gpu/release/supervision), PYTHON (python3), STEPS (200), BATCH (128),
# IMAGES (train images to synthesise, 6400), DEVICE (cuda), WORK (temporary folder),
# OUT (where the JSON results are copied; $OUT on the device machine).
# DEVICE=cpu STEPS=2 BATCH=4 IMAGES=40 MODEL=alexnet-tiny tests the plumbing on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
STEPS="${STEPS:-200}"
BATCH="${BATCH:-128}"
IMAGES="${IMAGES:-6400}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-alexnet}"
CLASSES="${CLASSES:-100}"
WORK="${WORK:-$(mktemp -d)}"
RESULTS="${OUT:-$WORK}"
BIN="${SUPERVISION_BIN:-}"
if [ -z "$BIN" ]; then
    for b in target-gpu/supervision target-gpu/release/supervision target/release/supervision; do
        if [ -x "$b" ]; then BIN="$b"; break; fi
    done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no supervision binary (set SUPERVISION_BIN)" >&2; exit 2; }
mkdir -p "$WORK" "$RESULTS"

TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== binary $BIN; libtorch $TORCH_LIB"
"$PY" - "$DEVICE" <<'PY'
import sys, torch
print("== torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA device")
PY
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
fi

t0=$(date +%s)
echo "== synthetic data: $IMAGES train images, $CLASSES classes"
PER_CLASS=$(( (IMAGES + CLASSES - 1) / CLASSES ))
"$BIN" synth --output "$WORK/synth" --classes "$CLASSES" --per-class "$PER_CLASS" --val-per-class 1 --seed 1 >/dev/null
"$BIN" shard build --input "$WORK/synth/train" --output "$WORK/train" --codec raw >/dev/null
"$BIN" pca compute --shards "$WORK/train" --output "$WORK/pca.json" --sample 1000 \
    --mean-image "$WORK/mean.npy" >/dev/null
echo "   done in $(( $(date +%s) - t0 )) s"

echo "== 1/3 ours, compute-only ceiling (GPU-resident synthetic batch, $STEPS steps)"
"$BIN" train --synthetic-data "$STEPS" --model "$MODEL" --batch-size "$BATCH" --device "$DEVICE" \
    --synthetic-classes "$CLASSES" --out "$WORK/ceiling" --json >"$RESULTS/ceiling.json"
cat "$RESULTS/ceiling.json"

echo "== 2/3 ours, end to end from shards ($STEPS steps)"
# No --val: the bench measures training steps; windows of 20 steps, the first skipped.
"$BIN" train --train "$WORK/train" --stats "$WORK/pca.json" --out "$WORK/run" --model "$MODEL" \
    --batch-size "$BATCH" --device "$DEVICE" --max-steps "$STEPS" --epochs 1000 \
    --checkpoint-every 0 --log-every "$(( STEPS >= 40 ? 20 : 1 ))" --json >"$RESULTS/train.json"
cp "$WORK/run/metrics.jsonl" "$RESULTS/train-metrics.jsonl"
cat "$RESULTS/train.json"

MEAN_STEPS=$(( STEPS < 40 ? STEPS : 40 ))
echo "== 2b ours with the paper's per-pixel mean image ($MEAN_STEPS steps: the gather on the device)"
"$BIN" train --train "$WORK/train" --stats "$WORK/pca.json" --mean-image "$WORK/mean.npy" \
    --out "$WORK/run-mean" --model "$MODEL" --batch-size "$BATCH" --device "$DEVICE" \
    --max-steps "$MEAN_STEPS" --epochs 1000 --checkpoint-every 0 --log-every "$MEAN_STEPS" \
    --json >"$RESULTS/train-mean-image.json"
cat "$RESULTS/train-mean-image.json"

echo "== 3/3 PyTorch eager, same architecture, data on the device ($STEPS steps)"
if [ "$MODEL" = alexnet ]; then
    "$PY" tools/gpu/torch_alexnet_bench.py --device "$DEVICE" --steps "$STEPS" --batch-size "$BATCH" \
        --classes "$CLASSES" >"$RESULTS/pytorch.json"
else
    "$PY" tools/gpu/torch_alexnet_bench.py --device "$DEVICE" --steps "$STEPS" --warmup 1 --batch-size "$BATCH" \
        --classes "$CLASSES" --side 227 >"$RESULTS/pytorch.json"
fi
cat "$RESULTS/pytorch.json"

echo "== NCCL at world size 1 (communicator, bucketed all-reduce, against the single-process path)"
TRAIN="$WORK/train" BIN_DIR="$(dirname "$BIN")" OUT="$RESULTS" WORK="$WORK" PYTHON="$PY" \
    tools/gpu/nccl_world1.sh || echo "FAILED nccl-world-1: $? part(s); logs in $RESULTS/nccl-*.log"

"$PY" tools/gpu/summarise.py "$RESULTS/ceiling.json" "$RESULTS/train-metrics.jsonl" "$RESULTS/pytorch.json" \
    | tee "$RESULTS/summary.txt"
echo "== total $(( $(date +%s) - t0 )) s; results in $RESULTS"
