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

cargo fmt --all -- --check
# Data preparation must build without libtorch.
cargo check --locked -p sv-cli --no-default-features
cargo test --workspace --locked "$@"
