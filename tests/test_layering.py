"""The pure layers (theory, planner, documents) must never import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["polyplan.theory", "polyplan.planner", "polyplan.documents",
                                    "polyplan.theory.theorems", "polyplan.commands.theory"])
def test_pure_layer_does_not_import_torch(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
