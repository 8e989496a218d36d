#!/usr/bin/env bash
# The quality/speed trade-off of using fewer experts per token, as one markdown table: fixed
# top-k = 1..8 and the calibrated dynamic rule at several mean-KLD budgets, each with its average
# experts per token, decode speed (tg128), perplexity and mean KL divergence from the model's own
# expert count, on the tiny Qwen3-MoE's held-out text and on wikitext-2. For each calibrated row
# it also gives the KLD of the fixed cut at the same average experts (linear between the two
# nearest fixed k), which is what the dynamic rule has to beat. The table is also written to
# the run's directory as pareto.md.
#
#   scripts/moe-pareto.sh [-t THREADS] [-w WIKI_CHUNKS] [-r REPS] [-b "BUDGETS"] [MODEL.gguf]
#
#   -t  threads for every run (default 2)
#   -w  chunks of 512 tokens of wikitext-2 to score (default 20)
#   -r  rounds of the tg128 bench (default 5): each round runs every row once in turn, so that
#       background load falls on all rows alike; the table gives the median over rounds and the
#       median of the per-round ratios to top-4 (scripts/lib/moe_pareto_table.py, which can
#       redo the table from a finished run's directory)
#   -b  KLD budgets to calibrate for (default "0.0025 0.005 0.01 0.02 0.04")
#   SPEED_ONLY=target/moe-pareto/<time>  redo only the speed rounds and the table of a finished run
#   RULE=auto|top_p|rel_mass|ratio  the calibrated rule kinds to try (default rel_mass, which
#       `RULE=auto` found best on this model; auto triples the calibration time)
#
# The calibration text is not evaluation text: 14 KB from each of four training corpora
# (Persuasion, Moby Dick, Shakespeare, the Jargon File), 8 chunks of 512 tokens. The held-out
# text is models/tiny-qwen3moe/heldout.txt (never trained on) and wikitext-2 is the test file.
# Everything is kept under target/moe-pareto/<time>/ (calibrated copies, base files, logs).
# About 20 minutes on 2 cores.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
THREADS=2
WIKI_CHUNKS=20
REPS=5
BUDGETS="0.0025 0.005 0.01 0.02 0.04"
RULE="${RULE:-rel_mass}"
while getopts "t:w:r:b:h" opt; do
    case "$opt" in
        t) THREADS="$OPTARG" ;;
        w) WIKI_CHUNKS="$OPTARG" ;;
        r) REPS="$OPTARG" ;;
        b) BUDGETS="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
MODEL="${1:-$ROOT/models/tiny-qwen3moe/tiny-qwen3moe-q8_0.gguf}"
SHARED="${DSRUN_SHARED:-$ROOT/../shared}"
HELDOUT="$(dirname "$MODEL")/heldout.txt"
WIKI="$SHARED/corpora/wikitext-2-raw/wiki.test.raw"
for f in "$MODEL" "$HELDOUT" "$WIKI"; do
    [[ -f "$f" ]] || { echo "error: $f not found" >&2; exit 2; }
done

(cd "$ROOT" && cargo build --release --quiet >&2)
D="$ROOT/target/release/dsrun"
if [[ -n "${SPEED_ONLY:-}" ]]; then
    W="$SPEED_ONLY"
    [[ -f "$W/rows.txt" ]] || { echo "error: $W/rows.txt not found" >&2; exit 2; }
    rm -f "$W"/*-bench-*.json "$W/bench.err"
else
    W="$ROOT/target/moe-pareto/$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$W"
    echo "working in $W" >&2

    C="$SHARED/corpora"
    for f in "$C/janeausten/persuasion.txt" "$C/mobydick/mobydick.txt" \
             "$C/shakespeare/shakespeare_complete_gut.txt" "$C/jargon/jargon.txt"; do
        head -c 314000 "$f" | tail -c 14000; echo
    done > "$W/calib.txt"

    # The references: the model's own expert count.
    "$D" perplexity -m "$MODEL" -t "$THREADS" -f "$HELDOUT" --kl-divergence-base "$W/heldout.kld" > "$W/base-heldout.log" 2>&1
    "$D" perplexity -m "$MODEL" -t "$THREADS" -f "$WIKI" --chunks "$WIKI_CHUNKS" --kl-divergence-base "$W/wiki.kld" > "$W/base-wiki.log" 2>&1

    # Quality of one row: NAME MODEL_FILE [dsrun flags...]; its flags are kept for the speed pass.
    quality() {
        local name="$1" m="$2"; shift 2
        echo "$name $m $*" >> "$W/rows.txt"
        "$D" perplexity -m "$m" -t "$THREADS" --kl-divergence --kl-divergence-base "$W/heldout.kld" "$@" > "$W/$name-heldout.log" 2>&1
        "$D" perplexity -m "$m" -t "$THREADS" --kl-divergence --kl-divergence-base "$W/wiki.kld" "$@" > "$W/$name-wiki.log" 2>&1
    }

    : > "$W/rows.txt"
    for k in 1 2 3 4 5 6 7 8; do
        echo "fixed top-$k" >&2
        quality "k$k" "$MODEL" --moe-top-k "$k"
    done
    for b in $BUDGETS; do
        echo "calibrating for mean KLD $b" >&2
        "$D" calibrate -m "$MODEL" -t "$THREADS" -f "$W/calib.txt" --kld-budget "$b" --rule "$RULE" \
            -o "$W/calibrated-$b.gguf" > "$W/calibrate-$b.md" 2> "$W/calibrate-$b.log"
        quality "cal$b" "$W/calibrated-$b.gguf"
    done
fi

# Speed: rounds over all rows, one tg128 each (after its own warm-up), so that background load
# falls on every row alike.
for r in $(seq "$REPS"); do
    echo "speed round $r of $REPS" >&2
    while read -r name m flags; do
        # shellcheck disable=SC2086
        "$D" bench -m "$m" -t "$THREADS" -p 0 -n 128 -r 1 -o json $flags \
            > "$W/$name-bench-$r.json" 2>> "$W/bench.err" < /dev/null
    done < "$W/rows.txt"
done

python3 "$ROOT/scripts/lib/moe_pareto_table.py" "$W" "$REPS" | tee "$W/pareto.md"
echo "calibration reports: $W/calibrate-*.md" >&2
