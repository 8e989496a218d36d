#!/usr/bin/env bash
# Adaptive precision against llama.cpp's Q4_K_M recipe at the same size, with and without an
# importance matrix, on two models:
#
# - tiny: the tiny Qwen3-MoE from its F16 GGUF; evaluated on heldout.txt (the held-out end of
#   Emma, 21 chunks of 512), every candidate type measured (--calib-chunks 2 --calib-ctx 256).
# - smollm2: SmolLM2-135M-Instruct. No real dense model ships in F16/F32, so the reference is the
#   shipped Q4_1 file dequantized to F32 (`dsrun quantize --allow-requantize ... F32`, exact);
#   evaluated on wikitext-2 test (first 10 chunks of 512). To keep the measuring affordable on 2
#   cores, each tensor is run with Q3_K and Q8_0 only and the other types are estimated from
#   their importance-weighted errors (--probe-type Q3_K,Q8_0), on one chunk of 64 tokens, and
#   the recipe is measured once: the imatrix row applies it with --imatrix (--recipe).
#
# Calibration text (for --target-size and for the importance matrix): the first 400 KB of Pride
# and Prejudice, never the evaluation text. The llama.cpp rows are made by llama-quantize (with
# `--imatrix` for the second pair); dsrun's rows by `dsrun quantize --target-size` at llama.cpp's
# tensor bytes. Both are judged by dsrun perplexity --kl-divergence against the reference model
# (dsrun's perplexity is within 0.5% of llama.cpp's, tests/perplexity_vs_llamacpp.rs).
# Prints a Markdown table per model.
#
# Usage: [KEEP=DIR] scripts/target-bpw.sh [-t THREADS] [tiny|smollm2|all]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=2
if [ "${1:-}" = "-t" ]; then threads=$2; shift 2; fi
which=${1:-all}
shared="${DSRUN_SHARED:-$root/../shared}"
cargo build --release -q
bin=$root/target/release/dsrun
lq=$root/build/llama.cpp/build/bin/llama-quantize
[ -x "$lq" ] || { echo "$lq is missing: run scripts/build-llamacpp.sh" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 400000 "$shared/corpora/janeausten/prideprejudice.txt" >"$work/calib.txt"

# tensor bytes of a preset, from dsrun's plan (its files are llama-quantize's, byte for byte)
tensor_bytes() {
  "$bin" quantize --dry-run "$@" 2>&1 | grep -o '[0-9]* bytes of tensors' | awk '{print $1}'
}

row() {
  local name=$1 file=$2 base=$3 ref_size=$4
  "$bin" perplexity -m "$file" -t "$threads" --kl-divergence \
    --kl-divergence-base "$base" >"$work/kld.log" 2>/dev/null
  local kld ppl same size
  kld=$(grep 'Mean    KLD:' "$work/kld.log" | awk '{print $3, $4, $5}')
  ppl=$(grep 'Mean PPL(Q)' "$work/kld.log" | awk '{print $4, $5, $6}')
  same=$(grep 'Same top p:' "$work/kld.log" | awk '{print $4, $5}')
  size=$(stat -c %s "$file")
  echo "| $name | $size ($(awk -v a="$size" -v b="$ref_size" 'BEGIN{printf "%+.2f%%", (a/b-1)*100}')) | $kld | $ppl | $same |"
}

# compare NAME REF_GGUF EVAL_TEXT "EVAL_FLAGS" "CALIB_FLAGS" measure|reuse
compare() {
  local name=$1 ref=$2 eval_text=$3 eval_flags=$4 calib_flags=$5 imat_mode=$6
  local w="$work/$name"
  mkdir -p "$w"
  "$bin" imatrix -m "$ref" -f "$work/calib.txt" -o "$w/imatrix.gguf" -c 512 --chunks 16 \
    -t "$threads" 2>"$w/imatrix.log"
  "$lq" "$ref" "$w/q4_k_m.gguf" Q4_K_M "$threads" >"$w/lq.log" 2>&1
  "$lq" --imatrix "$w/imatrix.gguf" "$ref" "$w/q4_k_m-imat.gguf" Q4_K_M "$threads" >"$w/lqi.log" 2>&1
  local bytes bytes_i
  bytes=$(tensor_bytes "$ref" /dev/null Q4_K_M)
  bytes_i=$(tensor_bytes --imatrix "$w/imatrix.gguf" "$ref" /dev/null Q4_K_M)
  local t0 secs secs_i
  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$bin" quantize -q -t "$threads" "$ref" "$w/adaptive.gguf" Q4_K_M --target-size "$bytes" \
    -f "$work/calib.txt" $calib_flags --recipe-out "$w/recipe.json" 2>"$w/ad.log" \
    || { cat "$w/ad.log" >&2; exit 1; }
  secs=$(( $(date +%s) - t0 ))
  t0=$(date +%s)
  if [ "$imat_mode" = measure ]; then
    # shellcheck disable=SC2086
    "$bin" quantize -q -t "$threads" --imatrix "$w/imatrix.gguf" "$ref" "$w/adaptive-imat.gguf" \
      Q4_K_M --target-size "$bytes_i" -f "$work/calib.txt" $calib_flags \
      --recipe-out "$w/recipe-imat.json" 2>"$w/adi.log" || { cat "$w/adi.log" >&2; exit 1; }
  else
    "$bin" quantize -q -t "$threads" --imatrix "$w/imatrix.gguf" "$ref" "$w/adaptive-imat.gguf" \
      Q4_K_M --recipe "$w/recipe.json" 2>"$w/adi.log"
    echo "recipe: the one above, applied with --imatrix" >"$w/adi.log"
  fi
  secs_i=$(( $(date +%s) - t0 ))
  grep -h '^recipe:' "$w/ad.log" "$w/adi.log" >&2
  # shellcheck disable=SC2086
  "$bin" perplexity -m "$ref" -f "$eval_text" -c 512 $eval_flags -t "$threads" \
    --kl-divergence-base "$w/base.kld" >/dev/null 2>&1
  local ref_size
  ref_size=$(stat -c %s "$w/q4_k_m.gguf")
  echo
  echo "$name (reference: $(basename "$ref"); evaluation: $(basename "$eval_text") $eval_flags)"
  echo
  echo "| recipe | file bytes (vs Q4_K_M) | mean KLD vs reference | PPL | same top token |"
  echo "|---|--:|---|---|---|"
  row "llama.cpp Q4_K_M" "$w/q4_k_m.gguf" "$w/base.kld" "$ref_size"
  row "dsrun \`--target-size\` (measured in ${secs} s)" "$w/adaptive.gguf" "$w/base.kld" "$ref_size"
  row "llama.cpp Q4_K_M \`--imatrix\`" "$w/q4_k_m-imat.gguf" "$w/base.kld" "$ref_size"
  local how="measured in ${secs_i} s"
  [ "$imat_mode" = measure ] || how="the recipe above"
  row "dsrun \`--target-size --imatrix\` ($how)" "$w/adaptive-imat.gguf" "$w/base.kld" "$ref_size"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP/$name" && cp "$w"/*.json "$w"/*.log "$KEEP/$name/"; fi
  rm -f "$w"/*.gguf
}

if [ "$which" = tiny ] || [ "$which" = all ]; then
  compare tiny models/tiny-qwen3moe/tiny-qwen3moe-f16.gguf models/tiny-qwen3moe/heldout.txt \
    "" "--calib-chunks 2 --calib-ctx 256" measure
fi
if [ "$which" = smollm2 ] || [ "$which" = all ]; then
  "$bin" quantize -q --allow-requantize models/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$work/smollm2-f32.gguf" F32 2>/dev/null
  compare smollm2 "$work/smollm2-f32.gguf" "$shared/corpora/wikitext-2-raw/wiki.test.raw" \
    "--chunks 10" "--calib-chunks 1 --calib-ctx 64 --probe-type Q3_K,Q8_0" reuse
fi
