"""The house style's size rule (docs/architecture.md): no function in polyplan/ over 80 lines and no
module over 500, read from the source. Data and generated tables live outside .py files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "polyplan"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def sizes() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(module, lines) and (module:function, lines) over every .py file of the package."""
    modules, functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(PACKAGE.parent))
        modules.append((name, len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((f"{name}:{node.name}", node.end_lineno - node.lineno + 1))
    return modules, functions


def test_no_module_over_500_lines():
    modules, _ = sizes()
    assert len(modules) > 100  # the scan reads the package
    assert [(m, n) for m, n in modules if n > MAX_MODULE_LINES] == []


def test_no_function_over_80_lines():
    _, functions = sizes()
    assert any(n > 40 for _, n in functions)  # the scan measures whole bodies, not signatures
    assert [(f, n) for f, n in functions if n > MAX_FUNCTION_LINES] == []
