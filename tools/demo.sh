#!/usr/bin/env bash
# The main job end to end on a small synthetic ImageNet look-alike:
#   synth (ImageNet's three archives) -> shard build (train, val) -> verify -> inspect -> pca compute
#   -> bench pipeline -> train -> eval (centre and ten-crop) -> plot -> predict
# On a machine without a GPU it trains a width-scaled AlexNet (alexnet-tiny, 63 px
# input) on the CPU for a few minutes; with CUDA it trains the paper's full model
# (SUPERVISION_DEMO_MODEL overrides). The shards are stored at the side the model
# expects, 256/227 of its input (the paper stores 256 and crops 227): 71 px for
# alexnet-tiny, 256 for alexnet.
#
# Usage: tools/demo.sh [OUT]      (OUT defaults to demo-out; it is replaced)
# SUPERVISION_BIN=path uses an already built binary instead of building one.
# SUPERVISION_DEMO_EPOCHS, SUPERVISION_DEMO_MODEL change the training run.
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
  SCHEDULE=(--schedule plateau)
else
  MODEL="${SUPERVISION_DEMO_MODEL:-alexnet-tiny}"
  EPOCHS="${SUPERVISION_DEMO_EPOCHS:-16}"
  BATCH=32
  # The paper's rate, divided by 10 for the last third: a fixed step schedule, since
  # divide-on-plateau needs more epochs than a demo has to see a plateau.
  SCHEDULE=(--schedule step --step-every $(( (EPOCHS * 2 + 2) / 3 )))
fi
# The model's input side, and the stored side that goes with it: 256/227 of it.
INPUT="$("$BIN" model summary "$MODEL" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["input"][2])')"
SIDE=$(( (INPUT * 256 + 113) / 227 ))

# The dataset: a synthetic ImageNet written the way ImageNet is downloaded, the three
# ILSVRC2012 archives (synth also writes the same images as folders, in Kaggle's layout):
#   ILSVRC2012_img_train.tar        a tar of one tar per class (<wnid>.tar)
#   ILSVRC2012_img_val.tar          the validation images, flat, unlabelled
#   ILSVRC2012_devkit_t12.tar.gz    data/meta.mat (classes) and the validation ground truth
# With a real download, point the same commands at your archives: shard build reads
# them in place (nothing is extracted). The devkit names the classes; val takes train's
# class indices (--classes-from) and its labels from the devkit's ground truth.
IMAGENET="$OUT/imagenet"
make_shards() {
  run synth --output "$IMAGENET" --classes 10 --per-class 160 --val-per-class 30 --seed 1 \
      --archives
  run shard build --input "$IMAGENET/ILSVRC2012_img_train.tar" \
      --devkit "$IMAGENET/ILSVRC2012_devkit_t12.tar.gz" --output "$OUT/shards/train" --size "$SIDE"
  run shard build --input "$IMAGENET/ILSVRC2012_img_val.tar" --split val \
      --devkit "$IMAGENET/ILSVRC2012_devkit_t12.tar.gz" --classes-from "$OUT/shards/train" \
      --output "$OUT/shards/val" --size "$SIDE"
}
make_shards

run shard verify "$OUT/shards/train"
run shard verify "$OUT/shards/val"
run shard inspect "$OUT/shards/train" --sheet "$OUT/contact-sheet.png"
run pca compute --shards "$OUT/shards/train" --output "$OUT/stats.json" \
    --mean-image "$OUT/mean.npy"
run bench pipeline --shards "$OUT/shards/train" --batches 20 --crop "$INPUT" \
    --stats "$OUT/stats.json"
run train --train "$OUT/shards/train" --val "$OUT/shards/val" --stats "$OUT/stats.json" \
    --mean-image "$OUT/mean.npy" --out "$OUT/run" --model "$MODEL" --epochs "$EPOCHS" \
    --batch-size "$BATCH" "${SCHEDULE[@]}" --log-every 25 --keep 3
run eval --checkpoint "$OUT/run/last.safetensors" --val "$OUT/shards/val"
run eval --checkpoint "$OUT/run/last.safetensors" --val "$OUT/shards/val" --ten-crop
run plot "$OUT/run/metrics.jsonl" --output "$OUT/curves.png"
run plot "$OUT/run/metrics.jsonl" --output "$OUT/curves.svg"
# One validation image, taken out of the val archive, classified with the class names.
tar -xf "$IMAGENET/ILSVRC2012_img_val.tar" -C "$OUT" ILSVRC2012_val_00000001.JPEG
run predict --checkpoint "$OUT/run/last.safetensors" --size "$SIDE" "$OUT/ILSVRC2012_val_00000001.JPEG"

cat <<MSG

Done. What went where:
  $OUT/imagenet/           synthetic ImageNet: the three ILSVRC2012 archives, and the
                           same images as folders (train/<wnid>/, val/, LOC_*.{csv,txt})
  $OUT/shards/train, val   shard datasets at ${SIDE}x${SIDE} (manifest.json, *.svs, rejects.jsonl)
  $OUT/contact-sheet.png   a row of stored records per class
  $OUT/stats.json          mean/std, RGB covariance, PCA (pca compute)
  $OUT/mean.npy            the per-pixel mean image (numpy.load reads it)
  $OUT/run/                checkpoints (last, best, the last 3 epochs) and metrics.jsonl
  $OUT/run/tensorboard/    TensorBoard event files: tensorboard --logdir $OUT/run
  $OUT/curves.png, .svg    loss, errors, learning rate and throughput over the steps
MSG
