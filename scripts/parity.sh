#!/usr/bin/env bash
# The full parity check against llama.cpp (in-process, through dsrun-quantize): every real model,
# 10 prompts, 32 greedy tokens each, logits of the first generated position. Prints the measured
# relative L2 error per prompt. CI runs a smaller set in the ordinary test run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test parity_vs_llamacpp -- --ignored --nocapture --test-threads 1
