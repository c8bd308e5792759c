"""pandas views of a profile: the latency table and the acceptance matrix."""

from __future__ import annotations

import pandas as pd

from polyplan.documents.profile import Profile


def latency_table(profile: Profile) -> pd.DataFrame:
    """Long table: one row per (candidate, context, new_tokens) with median and IQR in ms."""
    rows = []
    for name, curve in profile.latency.items():
        for i, c in enumerate(curve.context):
            for j, n in enumerate(curve.new_tokens):
                spread = curve.spread_s[i][j] if curve.spread_s else float("nan")
                rows.append(
                    {
                        "candidate": name,
                        "context": c,
                        "new_tokens": n,
                        "median_ms": 1000 * curve.median_s[i][j],
                        "iqr_ms": 1000 * spread,
                    }
                )
    return pd.DataFrame(rows, columns=["candidate", "context", "new_tokens", "median_ms", "iqr_ms"])


def latency_grid(profile: Profile, context: int | None = None) -> pd.DataFrame:
    """Median ms per candidate (rows) and new-token count (columns) at one context length."""
    table = latency_table(profile)
    if table.empty:
        return table
    if context is None:
        context = int(table["context"].min())
    sub = table[table["context"] == context]
    return sub.pivot(index="candidate", columns="new_tokens", values="median_ms")


def acceptance_matrix(profile: Profile, mode: str = "greedy", category: str | None = None) -> pd.DataFrame:
    """alpha with verifiers as rows and drafters as columns (NaN where not measured)."""
    if mode not in ("greedy", "sampling"):
        raise ValueError(f"acceptance mode must be 'greedy' or 'sampling', not {mode!r}")
    names = [c.name for c in profile.candidates]
    verifiers = [c.name for c in profile.candidates if not c.point_mass]
    df = pd.DataFrame(float("nan"), index=pd.Index(verifiers, name="verifier"), columns=pd.Index(names, name="drafter"))
    for p in profile.pairs:
        if category is None:
            value = p.alpha(mode)
        elif category in p.by_category:
            value = p.by_category[category][mode]
        else:
            continue
        df.loc[p.verifier, p.drafter] = value
    return df


def acceptance_by_category(profile: Profile, mode: str = "greedy") -> pd.DataFrame:
    """Long table: one row per (verifier, drafter, category) with alpha and position count."""
    rows = []
    for p in profile.pairs:
        for cat, s in p.by_category.items():
            rows.append(
                {
                    "verifier": p.verifier,
                    "drafter": p.drafter,
                    "category": cat,
                    "alpha": s[mode],
                    "positions": s["positions"],
                }
            )
    return pd.DataFrame(rows, columns=["verifier", "drafter", "category", "alpha", "positions"])
