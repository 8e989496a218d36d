#!/usr/bin/env bash
# Peak memory of `dsrun run` on long prompts: the full KV cache against a window + sinks +
# learned summary, on Qwen2.5-Coder-0.5B with prompts cut from Jane Austen's novels.
#
# Usage: scripts/long-context-memory.sh [SIZES] [MODES]
#   SIZES  prompt lengths in tokens (default "8192 32768 131072")
#   MODES  any of full, stream (default "full stream"; full is O(n^2) in time: slow at 32K+)
# Environment: MODEL, TEXT, W (window, 2048), S (sinks, 4), M (summary slots, 64), THREADS,
#   CALIB (calibration text for the summary, default Moby-Dick), OUT (results, appended),
#   YARN (auto: YaRN when -c passes NATIVE, as Qwen2.5's model card asks: factor 4 over 32768;
#   on; off), NATIVE (the model's native context, 32768), YARN_FACTOR (4).
# With the window the cache's positions stay under S + W + 1, so YaRN is not needed there for
# memory or positions; it is passed anyway, as a user running past 32K would.
# The summary's centroids come from `dsrun calibrate --kv-summary M`, written once to
# target/long-context/; llama.cpp's f16 cache for N tokens is n_layer * N * 2 * kv_dim * 2 bytes
# (24 * 131072 * 512 bytes = 1536 MiB for this model at 128K).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-"8192 32768 131072"}
MODES=${2:-"full stream"}
MODEL=${MODEL:-models/qwen2.5-coder-0.5b-instruct-awq.gguf}
CORPORA=../shared/corpora; [ -d "$CORPORA" ] || CORPORA=/work/shared/corpora
TEXT=${TEXT:-$CORPORA/janeausten/austen_all.txt}
CALIB=${CALIB:-$CORPORA/mobydick/mobydick.txt}
W=${W:-2048}; S=${S:-4}; M=${M:-64}
THREADS=${THREADS:-2}
YARN=${YARN:-auto}; NATIVE=${NATIVE:-32768}; YARN_FACTOR=${YARN_FACTOR:-4}
DIR=target/long-context; mkdir -p "$DIR"
OUT=${OUT:-$DIR/memory.txt}
BIN=./target/release/dsrun
cargo build --release -q
SUM="$DIR/$(basename "$MODEL" .gguf)-kvsum$M.gguf"
if [[ " $MODES " == *" stream "* && ! -f "$SUM" ]]; then
  $BIN calibrate -m "$MODEL" -f "$CALIB" -c 2048 --chunks 4 --kv-summary "$M" -t "$THREADS" -o "$SUM"
fi
echo "# $(date -u +%F) $(nproc) cores, model $MODEL, W=$W S=$S M=$M" | tee -a "$OUT"
for n in $SIZES; do
  # About 3.9 characters per token in these novels: cut a little more, then -c bounds it.
  head -c $((n * 4)) "$TEXT" > "$DIR/prompt-$n.txt"
  for mode in $MODES; do
    case $mode in
      full) m=$MODEL; flags=() ;;
      stream) m=$SUM; flags=(--kv-window "$W" --kv-sinks "$S") ;;
      *) echo "unknown mode $mode"; exit 1 ;;
    esac
    ctx=$((n + n / 4))
    if [[ $YARN == on || ( $YARN == auto && $ctx -gt $NATIVE ) ]]; then
      flags+=(--rope-scaling yarn --rope-scale "$YARN_FACTOR" --yarn-orig-ctx "$NATIVE")
    fi
    log="$DIR/run-$mode-$n.log"
    /usr/bin/time -v $BIN run -m "$m" -c $ctx -n 4 --temp 0 -t "$THREADS" \
      "${flags[@]}" < "$DIR/prompt-$n.txt" > "$DIR/out-$mode-$n.txt" 2> "$log" || {
      echo "$mode $n: failed, see $log" | tee -a "$OUT"; continue; }
    tokens=$(grep -o 'prompt [0-9]* tokens' "$log" | grep -o '[0-9]*')
    kv=$(grep -o 'KV cache: .*' "$log" | head -1)
    rss=$(grep 'Maximum resident' "$log" | grep -o '[0-9]*$')
    wall=$(grep 'Elapsed (wall' "$log" | awk '{print $NF}')
    user=$(grep 'User time' "$log" | awk '{print $NF}')
    rope=$(grep -o 'rope scaling [a-z]*' "$log" | head -1 || true)
    echo "$mode $n: prompt $tokens tokens, peak RSS $((rss / 1024)) MiB, wall $wall, user ${user}s${rope:+, $rope} | $kv" | tee -a "$OUT"
  done
done
