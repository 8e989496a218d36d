#!/usr/bin/env bash
# The KV cache options side by side with llama.cpp: perplexity with -ctk/-ctv f16, q8_0, q4_0
# (llama.cpp with flash attention, which it needs for a quantized V) and the KV memory that
# `dsrun info` reports. Usage: scripts/kv-cache.sh [MODEL] [CHUNKS]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-models/qwen2.5-coder-0.5b-instruct-awq.gguf}
CHUNKS=${2:-8}
T=${CORPUS:-../shared/corpora/wikitext-2-raw/wiki.test.raw}
[ -f "$T" ] || T=/work/shared/corpora/wikitext-2-raw/wiki.test.raw
LLAMA=build/llama.cpp/build/bin
cargo build --release -q
for t in f16 q8_0 q4_0; do
  ours=$(./target/release/dsrun perplexity -m "$M" -f "$T" -c 512 --chunks "$CHUNKS" \
           -ctk $t -ctv $t 2>/dev/null | grep -o 'PPL = [0-9.]*' | tail -1)
  theirs=$("$LLAMA"/llama-perplexity -m "$M" -f "$T" -c 512 --chunks "$CHUNKS" -fa on \
           -ctk $t -ctv $t 2>&1 | grep -o 'PPL = [0-9.]*' | tail -1)
  echo "$t: dsrun ${ours#PPL = }, llama.cpp ${theirs#PPL = }"
done
for c in 8192 32768 131072; do
  for t in f16 q8_0 q4_0; do
    ./target/release/dsrun info "$M" -c $c -ctk $t -ctv $t | grep '^dsrun KV'
  done
done
