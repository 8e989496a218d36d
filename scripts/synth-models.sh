#!/usr/bin/env bash
# Writes the random-weight GGUF models of dsrun::synth into DIR (default target/synth): one tiny
# F32 file per MoE architecture (the ones tests/moe_archs_vs_llamacpp.rs writes at test time, for
# running by hand), and the Qwen3-30B-A3B-shaped qwen3moe in Q4_K for speed benchmarks (hidden
# 2048, 128 experts of width 768, 8 active, 32/4 heads, LAYERS layers: 4 make about 1.4 GB; a
# few minutes on 2 cores). Not part of CI.
#
#   scripts/synth-models.sh [-l LAYERS] [-s] [DIR]
#
#   -l  layers of the large file (default 4)
#   -s  only the tiny files
#
# Then, for the speed comparison with llama.cpp:
#   scripts/bench-vs-llamacpp.sh -t 2 -p 512 -n 128 -r 3 DIR/qwen3moe-30b-a3b-shape-4l-q4_k.gguf
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

LAYERS=4
SMALL_ONLY=0
while getopts "l:sh" opt; do
    case "$opt" in
        l) LAYERS="$OPTARG" ;;
        s) SMALL_ONLY=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
DIR="${1:-$ROOT/target/synth}"
mkdir -p "$DIR"

cd "$ROOT"
cargo build --release --example synth_gguf
GEN="$ROOT/target/release/examples/synth_gguf"
for arch in qwen3moe qwen2moe llama olmoe granitemoe deepseek2 gpt-oss; do
    "$GEN" "$arch" "$DIR/tiny-$arch-f32.gguf"
done
"$GEN" gpt-oss "$DIR/tiny-gpt-oss-mxfp4.gguf" --expert-type MXFP4
if [[ "$SMALL_ONLY" == 0 ]]; then
    "$GEN" qwen3-30b-a3b "$DIR/qwen3moe-30b-a3b-shape-${LAYERS}l-q4_k.gguf" --layers "$LAYERS"
fi
ls -l "$DIR"
