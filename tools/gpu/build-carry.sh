#!/usr/bin/env bash
# Builds what tools/gpu/validate.sh runs on the GPU machine, on the development
# machine (same torch 2.11 as the device; the GPU machine has no Rust), into
# target-gpu/carry: `supervision`, `supervision-torch` (release) and sv-train's
# integration test binary (release, for `cuda_matches_cpu`) and sv-c10's (the copy
# stream and NCCL tests of tools/gpu/nccl-world1.sh), stripped. The device
# run carries that one folder (64 MiB limit for everything carried; the sizes are
# printed and checked here).
#
#   tools/gpu/build-carry.sh        # then: run tools/gpu/validate.sh, carry target-gpu/carry
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../setup-torch.sh
source tools/setup-torch.sh >/dev/null
export CARGO_TARGET_DIR=target-gpu
cargo build --release --locked -p sv-cli --bins
test_bin=$(cargo test --release --locked -p sv-train --test train --no-run --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "train" and m.get("executable"):
        print(m["executable"])')
c10_bin=$(cargo test --release --locked -p sv-c10 --test c10 --no-run --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "c10" and m.get("executable"):
        print(m["executable"])')
mkdir -p target-gpu/carry
strip -o target-gpu/carry/supervision target-gpu/release/supervision
strip -o target-gpu/carry/supervision-torch target-gpu/release/supervision-torch
strip -o target-gpu/carry/sv-train-tests "$test_bin"
strip -o target-gpu/carry/sv-c10-tests "$c10_bin"
# The NCCL stage needs ProcessGroupNCCL in the shim; sv-c10 leaves it out (with only a
# cargo warning) when the CUDA/NCCL header wheels are missing. `--version` says which,
# and why (the NCCL line); the shim's dynamic symbols, which survive strip, confirm it.
nccl=$(target-gpu/carry/supervision-torch --version | sed -n 's/^NCCL: //p')
if [ "$nccl" != yes ] || ! objdump -T target-gpu/carry/supervision-torch | grep -q ProcessGroupNCCL; then
    echo "supervision-torch has no ProcessGroupNCCL: ${nccl:-no NCCL line in --version}" \
        "(tools/setup-torch.sh installs the header wheels; SV_C10_NCCL must not be 0)" >&2
    exit 1
fi
du -b target-gpu/carry/* | awk '{ t += $1; printf "%8.1f MiB  %s\n", $1 / 1048576, $2 }
    END { printf "%8.1f MiB  total (limit 64)\n", t / 1048576; exit (t >= 64 * 1048576) }'
