#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what it needs, then runs every
# test in the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# libtorch for the trainer (a cached virtual environment, created once).
if [ -f tools/setup-torch.sh ]; then
  # shellcheck source=setup-torch.sh
  source tools/setup-torch.sh
fi

# TensorBoard's own event reader checks the event files that train writes
# (crates/sv-tensorboard/tests/reader.rs); added to the same cached venv once.
if ! python3 -c "import tensorboard" >/dev/null 2>&1; then
  python3 -m pip install --quiet "tensorboard==2.21.0"
fi

# Hub inputs (WebDataset tars, parquet) are checked against files written by the real
# writers, webdataset's TarWriter and pyarrow (crates/sv-build/tests/hub.rs through
# tools/fixtures/make_hub_fixtures.py); added to the same cached venv once.
if ! python3 -c "import webdataset, pyarrow" >/dev/null 2>&1; then
  python3 -m pip install --quiet "webdataset==1.0.2" "pyarrow==26.0.1"
fi

cargo fmt --all -- --check
# vendor/zune-jpeg is exactly crates.io's release plus vendor/zune-jpeg.patch.
tools/vendor-zune-jpeg.sh --check
# Data preparation must build without libtorch.
cargo check --locked -p sv-cli --no-default-features
cargo test --workspace --locked "$@"

# The Python package (crates/sv-py, a workspace of its own): maturin builds its abi3
# wheel in the dev profile into this same target directory (the engine crates compiled
# above are reused where their features match), pip installs it into the cached venv,
# and pytest runs its suite (which drives the supervision binary for synth and
# `bench pipeline`, and runs examples/pytorch_train.py).
if ! python3 -c "import maturin, pytest, numpy" >/dev/null 2>&1; then
  python3 -m pip install --quiet "maturin==1.16.0" "pytest==9.2.0" numpy
fi
cargo fmt --manifest-path crates/sv-py/Cargo.toml -- --check
cargo build --locked -p sv-cli --bin supervision
rm -rf target/sv-py-wheel
CARGO_TARGET_DIR="$PWD/target" python3 -m maturin build --quiet --profile dev \
  --manifest-path crates/sv-py/Cargo.toml --interpreter python3 --out target/sv-py-wheel
python3 -m pip install --quiet --force-reinstall --no-deps target/sv-py-wheel/*.whl
SUPERVISION_BIN="$PWD/target/debug/supervision" python3 -m pytest -q crates/sv-py/tests
