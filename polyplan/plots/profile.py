"""Figures of a profile: latency curves T(n, c) and acceptance heatmaps (pool-wide and by category)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.plots.canvas import new_figure


def _check_mode(mode: str) -> None:
    if mode not in ("greedy", "sampling"):
        raise UserError(f"acceptance mode must be 'greedy' or 'sampling', not {mode!r}")


def latency_curves(profile: Profile, *, names: Sequence[str] | None = None) -> Figure:
    """Median forward time T(n, c) against new tokens n, one colour per candidate, one line per
    measured context c (lighter = shorter context); log-log, with the interquartile spread when
    the profile has it."""
    names = list(profile.latency) if names is None else list(names)
    missing = [n for n in names if n not in profile.latency]
    if missing:
        raise UserError(f"profile has no latency curve for {', '.join(missing)}")
    if not names:
        raise UserError("profile has no latency curves to plot")
    fig, (ax,) = new_figure(6.8, 4.6)
    for index, name in enumerate(names):
        curve = profile.latency[name]
        color = f"C{index % 10}"
        n = np.asarray(curve.new_tokens, dtype=float)
        for row in range(len(curve.context)):
            shade = 0.35 + 0.65 * (row + 1) / len(curve.context)
            median = np.asarray(curve.median_s[row], dtype=float) * 1e3
            label = name if row == len(curve.context) - 1 else None
            ax.plot(n, median, marker="o", ms=3, color=color, alpha=shade, label=label)
            if curve.spread_s and len(curve.spread_s) == len(curve.context):
                spread = np.asarray(curve.spread_s[row], dtype=float) * 1e3
                # median +- IQR/2 approximates the quartiles; on a log axis keep the band above median/4
                ax.fill_between(
                    n,
                    np.maximum(median - spread / 2, median / 4),
                    median + spread / 2,
                    color=color,
                    alpha=0.12 * shade,
                    lw=0,
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("new tokens per forward pass $n$")
    ax.set_ylabel("median forward time $T(n, c)$ [ms]")
    contexts = sorted({c for name in names for c in profile.latency[name].context})
    machine = profile.machine.get("summary") or profile.machine.get("cpu") or ""
    status = "" if profile.complete else " [INCOMPLETE profile]"
    random = [n for n in names if profile.candidate(n).random_weights]
    status += f" [random weights: {', '.join(random)}]" if random else ""
    ax.set_title(
        f"Latency curves, pool {profile.pool!r} ({machine}){status}\ncontexts {contexts} (darker = longer)", fontsize=9
    )
    ax.legend(fontsize=8, title="candidate", title_fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def acceptance_matrix(profile: Profile, mode: str = "greedy") -> tuple[list[str], list[str], np.ndarray]:
    """``(verifiers, drafters, matrix)``: measured acceptance, NaN where a pair was not measured.
    Names keep the profile's candidate order."""
    _check_mode(mode)
    order = [c.name for c in profile.candidates]
    verifiers = [n for n in order if any(p.verifier == n for p in profile.pairs)]
    drafters = [n for n in order if any(p.drafter == n for p in profile.pairs)]
    matrix = np.full((len(verifiers), len(drafters)), np.nan)
    for p in profile.pairs:
        matrix[verifiers.index(p.verifier), drafters.index(p.drafter)] = p.alpha(mode)
    return verifiers, drafters, matrix


def category_matrix(profile: Profile, mode: str = "greedy") -> tuple[list[str], list[str], np.ndarray]:
    """``(pair labels "drafter -> verifier", categories, matrix)`` from the pairs' by_category."""
    _check_mode(mode)
    pairs = [p for p in profile.pairs if p.by_category]
    categories = sorted({cat for p in pairs for cat in p.by_category})
    matrix = np.full((len(pairs), len(categories)), np.nan)
    for i, p in enumerate(pairs):
        for j, cat in enumerate(categories):
            value = p.by_category.get(cat, {}).get(mode)
            if value is not None:
                matrix[i, j] = value
    return [f"{p.drafter} \u2192 {p.verifier}" for p in pairs], categories, matrix


def _annotated_heatmap(ax, matrix: np.ndarray, rows: list[str], columns: list[str]):
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            if np.isfinite(value):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
    return image


def acceptance_heatmap(profile: Profile, mode: str = "greedy") -> Figure:
    """Two panels: acceptance of each drafter (columns) by each verifier (rows), and — when the
    profile has them — each pair's acceptance by task category of the prompts."""
    verifiers, drafters, matrix = acceptance_matrix(profile, mode)
    if not verifiers:
        raise UserError("profile has no acceptance measurements to plot")
    pair_labels, categories, by_category = category_matrix(profile, mode)
    with_categories = bool(categories)
    fig, axes = new_figure(
        11.5 if with_categories else 6.0, max(3.6, 0.45 * len(pair_labels) + 1.8), ncols=2 if with_categories else 1
    )
    image = _annotated_heatmap(axes[0], matrix, verifiers, drafters)
    axes[0].set_xlabel("drafter")
    axes[0].set_ylabel("verifier")
    label = "argmax agreement" if mode == "greedy" else f"$\\sum\\min(p,q)$ at T={profile.temperature:g}"
    axes[0].set_title(f"{mode} acceptance $\\alpha$ ({label})", fontsize=9)
    if with_categories:
        _annotated_heatmap(axes[1], by_category, pair_labels, categories)
        axes[1].set_xlabel("prompt category")
        axes[1].set_title("acceptance by task category", fontsize=9)
    fig.colorbar(image, ax=axes, label="per-token acceptance $\\alpha$", shrink=0.9)
    return fig
