"""The layering rule, checked in one place: the pure layers (theory, planner, documents, bench
results, plots) never import torch or transformers, and the plotting code leaves pyplot (a GUI
backend) to the caller. Each import runs in a fresh interpreter, so nothing else imported it first.
And, read from the source (lazy imports included): no module imports a layer above its own, and
no import circle."""

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
    machinery = ("polyplan.weights.pools", "polyplan.weights.sources", "polyplan.weights.derive")
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
        "from polyplan.executor.front import Chain; import polyplan, polyplan.hooks as h; "
        "print(h.plan_chain is polyplan.chain_from_plan_file)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_weight_sources_do_not_reach_up_to_the_llamacpp_file_keeping():
    """issue 20 item 10: ``sources`` (weights and their conversion) sits below ``gguf_files`` (GGUFs
    kept for llama.cpp); both meet in the cache module through plain values."""
    weights = Path(__file__).resolve().parents[1] / "polyplan" / "weights"
    assert "gguf_files" not in (weights / "sources.py").read_text()
    assert loaded_by("polyplan.weights.sources", ("polyplan.weights.gguf_files",)) == []


def test_the_ngram_fit_takes_plain_values_not_the_pool():
    """issue 20 item 10: fitting an n-gram table needs the target's name, fingerprint, options and
    prompts (``NgramFit``), not the pool that holds them."""
    weights = Path(__file__).resolve().parents[1] / "polyplan" / "weights"
    assert "pools" not in (weights / "ngram_fit.py").read_text().replace("pool's", "")
    assert loaded_by("polyplan.weights.ngram_fit", ("polyplan.weights.pools",)) == []


# ---- the import graph, read from the source (lazy imports inside functions included) ---------------
PACKAGE = Path(__file__).resolve().parents[1] / "polyplan"

#: the layers of docs/architecture.md, lowest first; a module may import its own layer and below.
#: The members a chain runs (``models``) sit below their supply (``weights``: sources, pools), which
#: builds them. Top-level helpers that import nothing above them sit at 0 (``cache``: the on-disk
#: cache the weights and the llama.cpp probe share); ``assemble`` (plan -> chain) sits above
#: the executor and the profiler and below bench; ``hooks`` is the slot the root fills for the executor.
LAYERS = {
    "errors": 0,
    "chain_text": 0,
    "cpu": 0,
    "hooks": 0,
    "data": 0,
    "cache": 0,
    "theory": 1,
    "documents": 2,
    "planner": 3,
    "models": 4,
    "weights": 5,
    "executor": 6,
    "profiler": 7,
    "assemble": 8,
    "bench": 9,
    "plots": 9,
    "commands": 10,
    "cli": 10,
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the polyplan modules it imports anywhere in its source (module level or inside a
    function; not under ``if TYPE_CHECKING:``), an import of a package's own ancestors left out
    (Python imports those first anyway)."""
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

    def resolve(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # an import under ``if TYPE_CHECKING:`` never runs: annotations only
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join([*base, node.module] if node.module else base)
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
                targets.update(subs or [source])
        graph[name] = {
            resolve(t)
            for t in targets
            if t.split(".")[0] == "polyplan" and resolve(t) != name and not name.startswith(resolve(t) + ".")
        }
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return None if len(parts) == 1 else LAYERS.get(parts[1])


def test_every_module_has_a_layer_and_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert sorted(m for m in graph if m != "polyplan" and layer_of(m) is None) == []
    # a module-level import and one inside a function (build_policy's predictor) are both edges
    assert "polyplan.planner.policy" in graph["polyplan.planner.policy_build"]
    assert "polyplan.planner.predictors" in graph["polyplan.planner.policy_build"]


def test_no_module_imports_a_higher_layer():
    """Lower never imports higher, lazily or not (the package root, which wires them, excepted)."""
    graph = import_graph()
    upward = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if m != "polyplan" and t != "polyplan" and (layer_of(t) or 0) > (layer_of(m) or 0)
    ]
    assert upward == []


def test_no_import_circle():
    """No module reaches itself through the modules it imports (lazy imports included)."""
    graph = import_graph()
    circles, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                walk(nxt, [*path, nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    assert circles == []
