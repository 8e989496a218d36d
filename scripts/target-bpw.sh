#!/usr/bin/env bash
# Adaptive precision against llama.cpp's Q4_K_M recipe at the same size: both quantized from the
# tiny Qwen3-MoE's F16 GGUF, the --target-size recipe measured on calibration text (Pride and
# Prejudice, which the model saw in training; never the evaluation text), then both judged by
# dsrun perplexity (within 0.5% of llama.cpp's, tests/perplexity_vs_llamacpp.rs) on heldout.txt (the held-out end of Emma): KL divergence from the
# F16 model and perplexity. Prints a Markdown table.
# Usage: [RECIPE_OUT=recipe.json] scripts/target-bpw.sh [-t THREADS] [F16_GGUF [EVAL_TEXT]]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=2
if [ "${1:-}" = "-t" ]; then threads=$2; shift 2; fi
f16=${1:-models/tiny-qwen3moe/tiny-qwen3moe-f16.gguf}
eval_text=${2:-models/tiny-qwen3moe/heldout.txt}
shared="${DSRUN_SHARED:-$root/../shared}"
cargo build --release -q
bin=target/release/dsrun
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 400000 "$shared/corpora/janeausten/prideprejudice.txt" >"$work/calib.txt"

"$bin" quantize -q -t "$threads" "$f16" "$work/q4_k_m.gguf" Q4_K_M 2>"$work/q4.log"
bytes=$(grep -o '[0-9]* bytes of tensors' "$work/q4.log" | awk '{print $1}')
start=$(date +%s)
"$bin" quantize -q -t "$threads" "$f16" "$work/adaptive.gguf" Q4_K_M --target-size "$bytes" \
  -f "$work/calib.txt" --calib-chunks 2 --calib-ctx 256 --recipe-out "$work/recipe.json" 2>"$work/ad.log"
secs=$(( $(date +%s) - start ))
grep '^recipe:' "$work/ad.log" >&2

"$bin" perplexity -m "$f16" -f "$eval_text" -c 512 -t "$threads" \
  --kl-divergence-base "$work/base.kld" >/dev/null 2>&1
row() {
  local name=$1 file=$2
  "$bin" perplexity -m "$file" -t "$threads" --kl-divergence \
    --kl-divergence-base "$work/base.kld" >"$work/kld.log" 2>/dev/null
  local kld ppl same size
  kld=$(grep 'Mean    KLD:' "$work/kld.log" | awk '{print $3, $4, $5}')
  ppl=$(grep 'Mean PPL(Q)' "$work/kld.log" | awk '{print $4, $5, $6}')
  same=$(grep 'Same top p:' "$work/kld.log" | awk '{print $4, $5}')
  size=$(stat -c %s "$file")
  echo "| $name | $size | $kld | $ppl | $same |"
}
echo "| recipe | file bytes | mean KLD vs F16 | PPL | same top token |"
echo "|---|--:|---|---|---|"
row "llama.cpp Q4_K_M" "$work/q4_k_m.gguf"
row "dsrun --target-size (measured in ${secs}s)" "$work/adaptive.gguf"
cp "$work/recipe.json" "${RECIPE_OUT:-/dev/null}"
