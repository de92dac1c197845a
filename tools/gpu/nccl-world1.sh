#!/usr/bin/env bash
# NCCL at world size 1 on one GPU (issue 12): the part of the data-parallel path that a
# one-GPU machine can run. One stage of tools/gpu/validate.sh; runs alone as well.
#
#   a. sv-c10's GPU tests from the carried test binary: the copy stream round trip, and
#      an NCCL process group of one (create, all-reduce sum and avg, broadcast,
#      barrier, shutdown).
#   b. the compute-only ceiling without and with `--collective nccl`, alternated (A B A
#      B, best of each). With NCCL every step all-reduces the flat gradient in 64 MiB
#      buckets and sums the step's loss and misses on NCCL's stream, which the compute
#      stream waits for. Goal: NCCL / single process >= 0.97 (no slowdown past 3 %).
#   c. end to end from shards, fp32, same seed, 5 steps without and with NCCL: the
#      start-up checks (settings agreed, weights broadcast, checksums), the bucketed
#      all-reduce in a real run, the replica check before the checkpoint, the orderly
#      shutdown; the two final checkpoints' weights must agree (cuDNN's autotuned
#      kernels are not bit-reproducible: max |dw| <= 1e-4).
#   d. one epoch end to end with NCCL and validation (split and summed across ranks,
#      here one), checkpoints every 20 steps.
#
# With DEVICE=cpu (the plumbing check) only a runs: the test binary starts, both tests
# are found and report that they skip without a GPU.
#
# Each part has its own timeout and one line here (ok / FAILED / skipped), its stdout
# in $RESULTS/<part>.out and its stderr in $RESULTS/<part>.log. Exit status: the number
# of failed parts.
#
# Environment: BIN_DIR (target-gpu/carry: supervision, supervision-torch, and
# sv-c10-tests: the stripped binary of `cargo test --release -p sv-c10 --no-run`),
# PYTHON (python3), DEVICE (cuda), MODEL (alexnet), BATCH (128), STEPS (100),
# CLASSES (100), TRAIN (a train shard set for c and d; skipped without), WORK, OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."

PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-alexnet}"
BATCH="${BATCH:-128}"
STEPS="${STEPS:-100}"
CLASSES="${CLASSES:-100}"
BIN_DIR="${BIN_DIR:-target-gpu/carry}"
WORK="${WORK:-$(mktemp -d)}"
RESULTS="${OUT:-$WORK/results}"
SV="$BIN_DIR/supervision"
mkdir -p "$WORK" "$RESULTS"
FAILED=0

if [ -z "${LD_LIBRARY_PATH:-}" ] || ! echo "$LD_LIBRARY_PATH" | grep -q torch; then
    TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# stage NAME TIMEOUT_S CMD... (tools/gpu/stage.sh), with validate.sh's DEADLINE
# shellcheck source=stage.sh
source tools/gpu/stage.sh

# ran NAME N: the test binary's stdout ($RESULTS/NAME.out) says N tests passed (a
# filter that matches nothing passes with 0, which must not count as a pass).
ran() {
    local got
    got=$(grep -ho "[0-9]* passed" "$RESULTS/$1.out" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    if [ "$got" -ne "$2" ]; then
        echo "FAILED $1: $got tests ran, $2 expected (a test was renamed?)"
        FAILED=$((FAILED + 1))
    fi
}

echo "-- a. sv-c10 GPU tests"
if [ -x "$BIN_DIR/sv-c10-tests" ]; then
    stage nccl-c10-tests 180 "$BIN_DIR/sv-c10-tests" --exact copy_stream_round_trip_on_a_gpu \
        nccl_world_of_one_on_a_gpu --test-threads 1 --nocapture \
        && grep -h "test result" "$RESULTS/nccl-c10-tests.out" | sed 's/^/       /' \
        && ran nccl-c10-tests 2
    grep -h "skipped" "$RESULTS/nccl-c10-tests.log" 2>/dev/null | sed 's/^/       /'
    # on a GPU, a skip means the carried binaries cannot do what this stage measures
    if [ "$DEVICE" != cpu ] && grep -q "skipped" "$RESULTS/nccl-c10-tests.log" 2>/dev/null; then
        echo "FAILED nccl-c10-tests: skipped on a GPU machine (see the line above)"
        FAILED=$((FAILED + 1))
    fi
else
    echo "FAILED nccl-c10-tests: no $BIN_DIR/sv-c10-tests (strip the binary of: cargo test --release -p sv-c10 --no-run)"
    FAILED=$((FAILED + 1))
fi

if [ "$DEVICE" = cpu ]; then
    echo "skipped b, c, d: NCCL runs on GPUs only (DEVICE=cpu; a checked the test binary)"
    exit "$FAILED"
fi

echo "-- b. compute-only ceiling, single process vs NCCL at world size 1 ($STEPS steps)"
CEILING=("$SV" train --synthetic-data "$STEPS" --model "$MODEL" --batch-size "$BATCH"
    --device "$DEVICE" --synthetic-classes "$CLASSES" --out "$WORK/nccl-ceiling" --json)
for round in 1 2; do
    stage "nccl-ceiling-solo-$round" 240 "${CEILING[@]}"
    stage "nccl-ceiling-nccl-$round" 240 "${CEILING[@]}" --collective nccl
done
"$PY" - "$RESULTS" <<'PY' | tee "$RESULTS/nccl-ceiling-ratio.txt"
import json, sys, pathlib
r = pathlib.Path(sys.argv[1])
def best(kind):
    v = []
    for i in (1, 2):
        try:
            v.append(json.loads((r / f"nccl-ceiling-{kind}-{i}.out").read_text())["images_per_s"])
        except Exception:
            pass
    return max(v) if v else None
solo, nccl = best("solo"), best("nccl")
if solo and nccl:
    ratio = nccl / solo
    verdict = "meets" if ratio >= 0.97 else "BELOW"
    print(f"       single process {solo:.1f} images/s, NCCL world 1 {nccl:.1f} images/s: "
          f"{ratio:.3f}x ({verdict} the goal >= 0.97)")
else:
    print("       no ratio: a ceiling run failed")
PY

if [ -z "${TRAIN:-}" ]; then
    echo "skipped c, d: no TRAIN shard set"
    exit "$FAILED"
fi
echo "-- c. 5 steps end to end, fp32, single process vs NCCL: same weights"
SHORT=("$SV" train --train "$TRAIN" --model "$MODEL" --batch-size "$BATCH" --device "$DEVICE"
    --precision fp32 --max-steps 5 --epochs 1000 --checkpoint-every 0 --log-every 1 --seed 5
    --json)
rm -rf "$WORK/nccl-short-solo" "$WORK/nccl-short-nccl"
stage nccl-short-solo 300 "${SHORT[@]}" --out "$WORK/nccl-short-solo"
stage nccl-short-nccl 300 "${SHORT[@]}" --out "$WORK/nccl-short-nccl" --collective nccl \
    --check-replicas-every 1
stage nccl-short-compare 120 "$PY" - "$WORK/nccl-short-solo/last.safetensors" \
    "$WORK/nccl-short-nccl/last.safetensors" <<'PY'
import json, struct, sys, torch
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    meta = json.loads(head.pop("__metadata__")["supervision"])
    body = memoryview(b)[8 + n:]
    out = {}
    for k, v in head.items():
        s, e = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(body[s:e]), dtype=torch.float32)
    return meta, out
(ma, a), (mb, b) = load(sys.argv[1]), load(sys.argv[2])
assert ma["step"] == mb["step"] == 5, (ma["step"], mb["step"])
assert ma["world_size"] == mb["world_size"] == 1
assert a.keys() == b.keys()
diff = max(float((a[k] - b[k]).abs().max()) for k in a if not k.startswith("momentum."))
moved = max(float(b[k].abs().max()) for k in b if k.startswith("momentum."))
print(f"max |dw| between the runs after 5 steps: {diff:.3e} (largest momentum {moved:.3e})")
assert diff <= 1e-4, "the NCCL run's weights differ from the single process's"
PY
cat "$RESULTS/nccl-short-compare.out" 2>/dev/null | sed 's/^/       /'

echo "-- d. one epoch end to end with NCCL, validation, checkpoints"
rm -rf "$WORK/nccl-epoch"
stage nccl-epoch 420 "$SV" train --train "$TRAIN" --val "$TRAIN" --val-limit 1024 --no-ten-crop \
    --out "$WORK/nccl-epoch" --model "$MODEL" --batch-size "$BATCH" --device "$DEVICE" \
    --epochs 1 --checkpoint-every 20 --log-every 20 --collective nccl --json \
    && "$PY" - "$RESULTS/nccl-epoch.out" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(f"       {v['steps']} steps, world size {v['world_size']}, "
      f"{v['images_per_s']:.1f} images/s, val top-1 error {v['val_top1_err']}")
PY
cp "$WORK/nccl-epoch/metrics.jsonl" "$RESULTS/nccl-epoch-metrics.jsonl" 2>/dev/null
exit "$FAILED"
