"""The documentation a clone carries: the specification lives in the repository, every relative link
in the README, docs/ and proofs/ resolves (file and heading), and nothing cites the old out-of-tree
copy of the specification."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "proofs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_specification_is_in_the_repository():
    spec = ROOT / "docs" / "staged-decoding.md"
    assert spec.is_file()
    assert "polyplan theory predict" in spec.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_nothing_cites_the_out_of_tree_specification():
    stale = []
    for folder in ("polyplan", "tests", "notebooks", "proofs", "docs", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".ipynb", ".sh", ".toml") and path != Path(__file__):
                if "shared/docs/" in path.read_text(encoding="utf-8", errors="replace"):
                    stale.append(str(path.relative_to(ROOT)))
    if "shared/docs/" in (ROOT / "README.md").read_text(encoding="utf-8"):
        stale.append("README.md")
    assert not stale, f"cite docs/staged-decoding.md instead of shared/docs/ in {stale}"
