#!/usr/bin/env bash
# Perplexity of every real model on wikitext-2 (test), -c 512, at the chunk counts of the
# reference figures llama.cpp gives in shared/MODELS.md, printed beside those figures.
# Usage: scripts/perplexity.sh [-t THREADS] [MODEL_KEY ...]   (keys: smollm2 gemma3 qwen05 qwen15 tiny)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=2
if [ "${1:-}" = "-t" ]; then threads=$2; shift 2; fi
wiki="${DSRUN_SHARED:-$root/../shared}/corpora/wikitext-2-raw/wiki.test.raw"
cargo build --release -q
bin=target/release/dsrun

# key | file | chunks | llama.cpp's PPL (shared/MODELS.md, tiny-qwen3moe/README.md)
rows=(
  "smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|100|23.5284"
  "gemma3|gemma-3-270m-q4_k_m.gguf|100|18.7358"
  "qwen05|qwen2.5-coder-0.5b-instruct-awq.gguf|10|39.6778"
  "qwen15|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|10|16.8885"
  "tiny|tiny-qwen3moe/tiny-qwen3moe-q8_0.gguf|100|703.2649"
)
want() { [ $# -eq 0 ] && return 0; for k in "${keys[@]}"; do [ "$k" = "$1" ] && return 0; done; return 1; }
keys=("$@")
echo "| model | chunks | dsrun PPL | llama.cpp PPL | difference | time |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  IFS='|' read -r key file chunks ref <<<"$row"
  if [ ${#keys[@]} -gt 0 ] && ! want "$key"; then continue; fi
  start=$(date +%s)
  line=$("$bin" perplexity -m "models/$file" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" 2>/dev/null | tail -n 1)
  ppl=$(echo "$line" | awk '{print $5}')
  secs=$(( $(date +%s) - start ))
  diff=$(awk -v a="$ppl" -v b="$ref" 'BEGIN { printf "%+.2f%%", (a - b) / b * 100 }')
  echo "| $file | $chunks | $ppl | $ref | $diff | ${secs}s |"
done
