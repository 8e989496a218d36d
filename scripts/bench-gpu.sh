#!/usr/bin/env bash
# GPU correctness and speed in one short run, for a session lent a GPU through the `device` tool
# (whose machine has no Rust toolchain and receives only the working tree, at most 64 MiB, plus
# the ignored paths named in `carry`). Two steps:
#
#   scripts/bench-gpu.sh prepare     # here: build, strip the binary, copy the tiny MoE files and
#                                    # the Vulkan loader package into .gpu/ (ignored, ~55 MiB)
#   scripts/bench-gpu.sh run         # there (device tool: carry [".gpu"]), or on any machine
#
# `run` checks that greedy text on the GPU equals the CPU's (32 tokens; the tiny Qwen3-MoE in
# Q8_0 and Q4_K_M, all experts on the GPU, with --n-cpu-moe 3, with -ngl 4 (the first 3 of 6
# layers on the CPU) and, for Q8_0, with --cpu-moe --moe-gpu-cache 4 (the VRAM expert cache)), then
# measures ppPP and tgTG with `dsrun bench --device gpu` (and, for the tiny MoE, with --cpu-moe
# with and without --moe-gpu-cache 4, whose line gives the cache's hit rate), which prints the copy bandwidth of the device, the bytes a
# decoded token reads and the roofline (bandwidth ÷ bytes) beside each generation figure, and
# the same tests on the CPU for the ratio, the GPU time per pipeline of a short greedy run
# (DSRUN_GPU_PROFILE=1), tgTG once more with the decode products' threads over whole blocks
# (DSRUN_GPU_DECODE=block), and ppPP once more by the per-token matrix products
# (DSRUN_GPU_TILED=0) beside the tiled prefill ones. Qwen2.5-Coder-1.5B Q4_K_M (1.1 GB) cannot
# travel to the device machine (64 MiB at most): `prepare` copies its first bytes, up to where
# the tensor data start (tokenizer, shapes and types: 5.7 MiB), and `run` appends zeros to its
# full length, a file of the same shapes and types whose every weight is 0: it reads the same
# bytes and runs the same kernels, so its speed is the real file's, but its text means nothing
# (no greedy check for it; with the real file in models/, that is used and checked). Results go
# to stdout and, where $OUT is set, to $OUT/bench-gpu.md.
#
# Settings (environment): PP (default 512), TG (128), REPS (3), DSRUN (the binary; default
# .gpu/dsrun, else target/release/dsrun). On lavapipe, for a quick check of the script itself:
#   PP=16 TG=4 REPS=1 scripts/bench-gpu.sh run
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY=.gpu
TINY_Q8=tiny-qwen3moe-q8_0.gguf
TINY_Q4=tiny-qwen3moe-q4_k_m.gguf
QWEN15=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

prepare() {
    cargo build --release
    mkdir -p "$CARRY"
    strip -o "$CARRY/dsrun" target/release/dsrun
    cp -f "models/tiny-qwen3moe/$TINY_Q8" "models/tiny-qwen3moe/$TINY_Q4" "$CARRY/"
    if [[ -f "models/$QWEN15" ]]; then
        local off
        off="$(target/release/dsrun info "models/$QWEN15" |
            sed -n 's/^tensors: .*data from byte \([0-9]*\).*/\1/p')"
        head -c "$off" "models/$QWEN15" >"$CARRY/$QWEN15.header"
        stat -c %s "models/$QWEN15" >"$CARRY/$QWEN15.size"
    else
        echo "bench-gpu: models/$QWEN15 missing: its zero-weight twin is not prepared" >&2
    fi
    # The Vulkan loader, in case the device machine lacks it (its NVIDIA driver brings the ICD).
    local lists=/tmp/bench-gpu-apt
    mkdir -p "$lists/partial"
    local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists)
    if apt-get "${o[@]}" update -qq && (cd "$CARRY" && apt-get "${o[@]}" download -qq libvulkan1); then
        :
    else
        echo "bench-gpu: could not fetch libvulkan1; the device machine must have its own" >&2
    fi
    du -sh "$CARRY"
}

# The model file NAME from .gpu/ or models/ (tiny files under models/tiny-qwen3moe/).
find_model() {
    for p in "$CARRY/$1" "models/$1" "models/tiny-qwen3moe/$1"; do
        if [[ -f "$p" ]]; then
            echo "$p"
            return
        fi
    done
}

run() {
    local pp="${PP:-512}" tg="${TG:-128}" reps="${REPS:-3}"
    if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
        for f in "$CARRY"/*.deb; do
            [[ -f "$f" ]] && dpkg -x "$f" /
        done
        ldconfig || true
    fi
    if [[ -z "$(ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null)" ]] &&
        [[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]]; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    local bin="${DSRUN:-}"
    if [[ -z "$bin" ]]; then
        bin="$CARRY/dsrun"
        [[ -x "$bin" ]] || bin=target/release/dsrun
    fi
    [[ -x "$bin" ]] || { echo "bench-gpu: no dsrun binary (run: $0 prepare)" >&2; exit 1; }
    # A missing adapter must fail this script, not fall back to the CPU.
    export DSRUN_REQUIRE_GPU=1
    local report=/dev/null
    [[ -n "${OUT:-}" ]] && report="$OUT/bench-gpu.md"
    {
        echo "# dsrun GPU check and speed, $(date -u +%F)"
        "$bin" --version
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
        local fail=0 prompt="The capital of France is"
        for name in "$TINY_Q8" "$TINY_Q4" "$QWEN15"; do
            local m zero=0
            m="$(find_model "$name")"
            if [[ -z "$m" && -f "$CARRY/$name.header" ]]; then
                m="${TMPDIR:-/tmp}/zero-$name"
                cp "$CARRY/$name.header" "$m"
                truncate -s "$(cat "$CARRY/$name.size")" "$m"
                zero=1
                echo "- $name: not present; its header with zero weights (same shapes and types: speed only)"
            fi
            if [[ -z "$m" ]]; then
                echo "- $name: not present, skipped"
                continue
            fi
            local g=(run -m "$m" --temp 0 -n 32 -c 256 -q "$prompt")
            local cpu gpu split
            if [[ "$zero" == 1 ]]; then
                :
            elif ! cpu="$("$bin" "${g[@]}" --device cpu)" || ! gpu="$("$bin" "${g[@]}" --device gpu)"; then
                echo "- $name: dsrun run FAILED"
                fail=1
                continue
            elif [[ "$gpu" == "$cpu" ]]; then
                echo "- $name: greedy text of 32 tokens on the GPU equals the CPU's"
            else
                echo "- $name: GPU TEXT DIFFERS: cpu=[$cpu] gpu=[$gpu]"
                fail=1
            fi
            local variants=()
            [[ "$name" != "$QWEN15" ]] && variants=("--n-cpu-moe 3" "-ngl 4")
            # Q4_K_M's text with the cache parts from the CPU's late in 32 tokens (README, GPU).
            [[ "$name" == "$TINY_Q8" ]] && variants+=("--cpu-moe --moe-gpu-cache 4")
            for v in ${variants[@]+"${variants[@]}"}; do
                # shellcheck disable=SC2086
                split="$("$bin" "${g[@]}" --device gpu $v)" || split="(dsrun run failed)"
                if [[ "$split" == "$cpu" ]]; then
                    echo "- $name: with $v too"
                else
                    echo "- $name: $v TEXT DIFFERS: [$split]"
                    fail=1
                fi
            done
            local benches=("--device gpu" "--device cpu")
            [[ "$name" != "$QWEN15" ]] &&
                benches+=("--device gpu --cpu-moe" "--device gpu --cpu-moe --moe-gpu-cache 4")
            for b in "${benches[@]}"; do
                # shellcheck disable=SC2086
                if ! "$bin" bench -m "$m" -p "$pp" -n "$tg" -r "$reps" $b; then
                    echo "- $name: dsrun bench $b FAILED"
                    fail=1
                fi
            done
            # Where decode time goes: each dispatch waited for alone (DSRUN_GPU_PROFILE=1), the
            # ten costliest pipelines over a 16-token greedy run.
            echo "- $name: GPU time per pipeline (DSRUN_GPU_PROFILE=1, 16 tokens):"
            DSRUN_GPU_PROFILE=1 "$bin" run -m "$m" --temp 0 -n 16 -c 256 --device gpu "$prompt" \
                2>&1 >/dev/null | grep "GPU profile" | head -10 || true
            # Decode by the products whose threads take whole blocks, for the ratio.
            echo "- $name: tg$tg with DSRUN_GPU_DECODE=block (threads over blocks):"
            if ! DSRUN_GPU_DECODE=block "$bin" bench -m "$m" -p 0 -n "$tg" -r "$reps" --device gpu; then
                echo "- $name: dsrun bench DSRUN_GPU_DECODE=block FAILED"
                fail=1
            fi
            # Prefill by the per-token products instead of the tiled ones, for the ratio.
            echo "- $name: pp$pp with DSRUN_GPU_TILED=0 (the per-token matrix products):"
            if ! DSRUN_GPU_TILED=0 "$bin" bench -m "$m" -p "$pp" -n 0 -r "$reps" --device gpu; then
                echo "- $name: dsrun bench DSRUN_GPU_TILED=0 FAILED"
                fail=1
            fi
        done
        exit "$fail"
    } 2>&1 | tee "$report"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
