"""The layering rule, checked in one place: the pure layers (theory, planner, documents, bench
results, plots) never import torch or transformers, and the plotting code leaves pyplot (a GUI
backend) to the caller. Each import runs in a fresh interpreter, so nothing else imported it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers")

PURE = [
    "polyplan.theory",
    "polyplan.theory.theorems",
    "polyplan.theory.control",
    "polyplan.planner",
    "polyplan.planner.policy",
    "polyplan.planner.policy_build",
    "polyplan.documents",
    "polyplan.documents.plan",
    "polyplan.bench.results",
    "polyplan.bench.report",
    "polyplan.commands.theory",
    "polyplan.plots",
    "polyplan.plots.writers",
    "polyplan.commands.plot",
]


def loaded_by(module: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has in sys.modules after importing ``module``."""
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {watched!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", PURE)
def test_pure_layer_does_not_import_torch(module):
    forbidden = HEAVY + (("matplotlib.pyplot",) if "plot" in module else ())
    assert loaded_by(module, forbidden) == [], f"{module} imports a heavy module"


def test_the_check_sees_an_import():
    """The check itself can fail: the executor does import torch."""
    assert "torch" in loaded_by("polyplan.executor.chain", HEAVY)


def test_the_executor_does_not_load_the_weight_source_machinery():
    """Pools, weight sources and derivations are the CLI's business: ``from polyplan import Chain``
    must not import them (polyplan.models names them lazily)."""
    machinery = ("polyplan.models.pools", "polyplan.models.sources", "polyplan.models.derive")
    assert loaded_by("polyplan.executor", machinery) == []


def test_nothing_in_the_executor_imports_the_assembly_above_it():
    """issue 20 item 10: ``polyplan.Chain.from_plan`` lives above the executor (polyplan.assemble is
    reached through the package root only when called)."""
    from pathlib import Path

    executor = Path(__file__).resolve().parents[1] / "polyplan" / "executor"
    offenders = [f.name for f in executor.glob("*.py") if "polyplan.assemble" in f.read_text()]
    assert offenders == []
    assert loaded_by("polyplan.executor.chain", ("polyplan.assemble",)) == []


def test_the_executor_reaches_the_assembly_only_through_the_hook_the_root_sets():
    """issue 30 item 4: ``Chain.from_plan`` calls ``polyplan.hooks.plan_chain``, which the package
    root sets; the executor imports nothing above it, lazily or not (no bare ``import polyplan``)."""
    import re

    executor = Path(__file__).resolve().parents[1] / "polyplan" / "executor"
    above = "assemble|bench|commands|cli|profiler"
    upward = re.compile(rf"^\s*(import polyplan\s*($|#)|(from|import) polyplan\.({above})\b)")
    lines = [(f.name, line) for f in executor.glob("*.py") for line in f.read_text().splitlines()]
    offenders = [f"{name}: {line.strip()}" for name, line in lines if upward.match(line)]
    assert offenders == []
    code = (
        "from polyplan.executor.chain import Chain; import polyplan, polyplan.hooks as h; "
        "print(h.plan_chain is polyplan.chain_from_plan_file)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_weight_sources_do_not_reach_up_to_the_llamacpp_file_keeping():
    """issue 20 item 10: ``sources`` (weights and their conversion) sits below ``gguf_files`` (GGUFs
    kept for llama.cpp); both meet in the cache module through plain values."""
    models = Path(__file__).resolve().parents[1] / "polyplan" / "models"
    assert "gguf_files" not in (models / "sources.py").read_text()
    assert loaded_by("polyplan.models.sources", ("polyplan.models.gguf_files",)) == []


def test_the_ngram_fit_takes_plain_values_not_the_pool():
    """issue 20 item 10: fitting an n-gram table needs the target's name, fingerprint, options and
    prompts (``NgramFit``), not the pool that holds them."""
    models = Path(__file__).resolve().parents[1] / "polyplan" / "models"
    assert "pools" not in (models / "ngram_fit.py").read_text().replace("pool's", "")
    assert loaded_by("polyplan.models.ngram_fit", ("polyplan.models.pools",)) == []
