#!/usr/bin/env bash
# The main job end to end on a small synthetic ImageNet look-alike:
#   synth -> shard build (train, val) -> verify -> inspect -> pca compute
#   -> bench pipeline -> train -> eval (centre and ten-crop) -> plot
# On a machine without a GPU it trains a width-scaled AlexNet for a few epochs on the
# CPU; with CUDA it trains the paper's full model (SUPERVISION_DEMO_MODEL overrides).
#
# Usage: tools/demo.sh [OUT]      (OUT defaults to demo-out; it is replaced)
# SUPERVISION_BIN=path uses an already built binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"

# libtorch (a cached virtual environment, created once) and the release binary.
# shellcheck source=setup-torch.sh
source tools/setup-torch.sh
if [ -n "${SUPERVISION_BIN:-}" ]; then
  BIN="$SUPERVISION_BIN"   # an already built binary
else
  echo "== building the supervision binary (release)"
  cargo build --release --locked -p sv-cli --bins   # supervision + supervision-torch
  BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/supervision"
fi

run() {
  echo
  echo "== supervision $*"
  "$BIN" "$@"
}

rm -rf "$OUT"
mkdir -p "$OUT"

if "$BIN" model summary alexnet-tiny >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 \
   && nvidia-smi -L >/dev/null 2>&1; then
  MODEL="${SUPERVISION_DEMO_MODEL:-alexnet}"
  EPOCHS="${SUPERVISION_DEMO_EPOCHS:-4}"
  BATCH=128
  SCHEDULE=plateau
else
  MODEL="${SUPERVISION_DEMO_MODEL:-alexnet-tiny}"
  EPOCHS="${SUPERVISION_DEMO_EPOCHS:-6}"
  BATCH=32
  # A few epochs on a toy set: the paper's divide-on-plateau would cut lr too early.
  SCHEDULE=constant
fi

run synth --output "$OUT/imagenet" --classes 10 --per-class 80 --val-per-class 10 --seed 1
run shard build --input "$OUT/imagenet/train" --output "$OUT/shards/train"
run shard build --input "$OUT/imagenet/val" --split val \
    --classes-from "$OUT/shards/train" --output "$OUT/shards/val"
run shard verify "$OUT/shards/train"
run shard verify "$OUT/shards/val"
run shard inspect "$OUT/shards/train" --sheet "$OUT/contact-sheet.png"
run pca compute --shards "$OUT/shards/train" --output "$OUT/stats.json" \
    --mean-image "$OUT/mean.npy"
run bench pipeline --shards "$OUT/shards/train" --batches 20 --stats "$OUT/stats.json"
run train --train "$OUT/shards/train" --val "$OUT/shards/val" --stats "$OUT/stats.json" \
    --mean-image "$OUT/mean.npy" \
    --out "$OUT/run" --model "$MODEL" --epochs "$EPOCHS" --batch-size "$BATCH" --schedule "$SCHEDULE"
run eval --checkpoint "$OUT/run/last.safetensors" --val "$OUT/shards/val"
run eval --checkpoint "$OUT/run/last.safetensors" --val "$OUT/shards/val" --ten-crop
run plot "$OUT/run/metrics.jsonl" --output "$OUT/curves.png"
first_val="$(ls "$OUT/imagenet/val" | head -n 1)"
run predict --checkpoint "$OUT/run/last.safetensors" "$OUT/imagenet/val/$first_val"

cat <<MSG

Done. What went where:
  $OUT/imagenet/           synthetic ImageNet (train/<wnid>/, val/, LOC_*.{csv,txt})
  $OUT/shards/train, val   shard datasets (manifest.json, *.svs, rejects.jsonl)
  $OUT/contact-sheet.png   a row of stored records per class
  $OUT/stats.json          mean/std, RGB covariance, PCA (pca compute)
  $OUT/mean.npy            the per-pixel mean image (numpy.load reads it)
  $OUT/run/                checkpoints and metrics.jsonl of the training run
  $OUT/curves.png          loss, errors and learning rate
MSG
