#!/usr/bin/env bash
# The whole test suite: formatting, lints, the NEON kernels compiled for aarch64, and every test
# of the workspace in release mode (the tests read real models, which debug builds would make slow).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
if rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu \
   || timeout 60 rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1; then
  cargo check --release -p dsrun --lib --bins --no-default-features --target aarch64-unknown-linux-gnu
else
  echo "test.sh: the aarch64 target cannot be installed here; NEON compile check skipped" >&2
fi
cargo test --release --workspace
