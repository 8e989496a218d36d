#!/usr/bin/env bash
# Quality of the long-context settings: perplexity on a novel (Emma) and passkey retrieval (a
# five-digit number hidden at several depths of filler text), for the full cache, quantized
# caches, a window, window + sinks (also at the summary's memory), and window + sinks + summary
# (learned centroids, keys at their own positions, 1.25·ln(count), slots forgetting over 2048
# tokens; and the alternatives: no ln(count), the first design's keys at distance W with and
# without it, round-robin and recency slots, slots that never forget; summary-custom takes
# SUMFLAGS).
#
# Usage: scripts/long-context-quality.sh [CTXS] [SETTINGS]
#   CTXS      contexts in tokens (default "4096 16384 32768"; perplexity scores the second half
#             of each chunk, so every scored token sees at least CTX/2 tokens before it)
#   SETTINGS  names from the table below (default: all)
# Environment: MODEL, TEXT, CHUNKS (1), W (window, 512), S (sinks, 4), M (summary slots, 64),
#   DEPTHS ("0.1 0.5 0.9"; "" skips the passkey test), THREADS, CALIB (calibration text), OUT (results, appended),
#   SUMFLAGS (extra flags of the setting summary-custom, e.g. "--kv-summary-log-weight 0.5"),
#   PPL (1; 0 skips perplexity, for passkey-only runs), BIN (a dsrun binary to use instead of
#   building target/release/dsrun: a copy keeps long runs apart from rebuilds).
set -euo pipefail
cd "$(dirname "$0")/.."
CTXS=${1:-"4096 16384 32768"}
MODEL=${MODEL:-models/qwen2.5-coder-0.5b-instruct-awq.gguf}
CORPORA=../shared/corpora; [ -d "$CORPORA" ] || CORPORA=/work/shared/corpora
TEXT=${TEXT:-$CORPORA/janeausten/emma.txt}
CALIB=${CALIB:-$CORPORA/mobydick/mobydick.txt}
CHUNKS=${CHUNKS:-1}; W=${W:-512}; S=${S:-4}; M=${M:-64}
DEPTHS=${DEPTHS-"0.1 0.5 0.9"}
THREADS=${THREADS:-2}
DIR=target/long-context; mkdir -p "$DIR"
OUT=${OUT:-$DIR/quality.txt}
PPL=${PPL:-1}
if [ -z "${BIN:-}" ]; then BIN=./target/release/dsrun; cargo build --release -q; fi
SUM="$DIR/$(basename "$MODEL" .gguf)-kvsum$M.gguf"
[ -f "$SUM" ] || $BIN calibrate -m "$MODEL" -f "$CALIB" -c 2048 --chunks 4 --kv-summary "$M" \
  -t "$THREADS" -o "$SUM" >&2
# A summary slot (f16 mean K and V, and an f32 count, per KV head) takes the memory of one f16
# window row and a little more: window + sinks at equal memory gets M + 1 more rows (with
# head_dim >= M; with the f32 slots of sessions 5 and 6 it was 2M + 1).
WEQ=$((W + M + 1))
win=(--kv-window "$W" --kv-sinks "$S")
declare -A SET=(
  [full]="$MODEL|"
  [q8_0]="$MODEL|-ctk q8_0 -ctv q8_0"
  [q4_0]="$MODEL|-ctk q4_0 -ctv q4_0"
  [window]="$MODEL|--kv-window $W --kv-sinks 0"
  [window+sinks]="$MODEL|${win[*]}"
  [window+sinks-abs]="$MODEL|${win[*]} --kv-sink-pos absolute"
  [window+sinks-eqmem]="$MODEL|--kv-window $WEQ --kv-sinks $S"
  [summary]="$SUM|${win[*]}"
  [summary-nolog]="$SUM|${win[*]} --kv-summary-log-weight 0"
  [summary-window]="$SUM|${win[*]} --kv-summary-keys window --kv-summary-log-weight 0"
  [summary-window-log]="$SUM|${win[*]} --kv-summary-keys window"
  [summary-forever]="$SUM|${win[*]} --kv-summary-horizon 0"
  [summary-custom]="$SUM|${win[*]} ${SUMFLAGS:-}"
  [summary-roundrobin]="$MODEL|${win[*]} --kv-summary $M --kv-summary-assign round-robin"
  [summary-recency]="$MODEL|${win[*]} --kv-summary $M --kv-summary-assign recency"
)
ORDER="full window+sinks-eqmem summary window+sinks window summary-nolog summary-window summary-window-log summary-roundrobin summary-recency summary-forever q8_0 q4_0 window+sinks-abs"
SETTINGS=${2:-$ORDER}
FILLER="The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

# A prompt of about $1 tokens with the pass key $2 at depth $3 (fraction of the filler).
passkey_prompt() {
  local n=$1 key=$2 depth=$3 reps i before
  reps=$((n / 24)); before=$(awk "BEGIN{printf \"%d\", $reps * $depth}")
  printf 'There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about it.\n'
  for ((i = 0; i < reps; i++)); do
    [ "$i" -eq "$before" ] && printf 'The pass key is %s. Remember it. %s is the pass key. ' "$key" "$key"
    printf '%s' "$FILLER"
  done
  printf '\nWhat is the pass key? The pass key is'
}

echo "# $(date -u +%F) $(nproc) cores, model $MODEL, text $(basename "$TEXT"), $CHUNKS chunk(s), W=$W S=$S M=$M (eqmem W=$WEQ)" | tee -a "$OUT"
for c in $CTXS; do
  for name in $SETTINGS; do
    IFS='|' read -r m flags <<< "${SET[$name]}"
    ppl="not run"
    # shellcheck disable=SC2086
    [ "$PPL" = 0 ] || ppl=$($BIN perplexity -m "$m" -f "$TEXT" -c "$c" --chunks "$CHUNKS" -t "$THREADS" $flags \
            2> "$DIR/ppl-$name-$c.log" | grep -o 'PPL = [0-9.]*' | tail -1 || true)
    found=0; tried=0; got=""
    for d in $DEPTHS; do
      key=$(( (RANDOM % 90000) + 10000 ))
      # shellcheck disable=SC2086
      ans=$(passkey_prompt $((c - 64)) "$key" "$d" | $BIN run -m "$m" -c $((c + 64)) -n 8 --temp 0 \
              -t "$THREADS" -q $flags 2> /dev/null || true)
      tried=$((tried + 1))
      printf 'depth %s key %s answer: %s\n' "$d" "$key" "$(tr '\n' ' ' <<< "$ans")" >> "$DIR/passkey-$name-$c.log"
      if [[ "$ans" == *"$key"* ]]; then found=$((found + 1)); got+=" $d:yes"; else got+=" $d:no"; fi
    done
    kv=$(grep -o 'KV cache: .*' "$DIR/ppl-$name-$c.log" | head -1 | sed 's/.*, \([0-9.]* MiB\) .*/\1/' || true)
    echo "ctx $c | $name | ${ppl#PPL = } | passkey $found/$tried ($got ) | KV $kv" | tee -a "$OUT"
  done
done
