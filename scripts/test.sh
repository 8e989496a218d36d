#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace in release mode (the
# tests read real models, which debug builds would make slow).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
