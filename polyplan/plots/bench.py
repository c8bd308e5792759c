"""Figures of bench results: predicted against measured time per token, and where the theory misses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from polyplan.bench.results import alone_row
from polyplan.errors import UserError
from polyplan.plots.canvas import new_figure

PREDICTOR_MARKERS = {"iid": "o", "replay": "s"}


@dataclass(frozen=True)
class PredictionPoint:
    method: str  # the method's label
    predictor: str  # "iid" | "replay"
    predicted: float  # seconds per token
    measured: float  # seconds per token (median over repeats)

    @property
    def relative_error(self) -> float:
        """(predicted - measured) / measured: > 0 means the theory was pessimistic."""
        return (self.predicted - self.measured) / self.measured


def prediction_points(results: dict[str, Any]) -> list[PredictionPoint]:
    """Every (method, predictor) pair of a bench results document with both numbers."""
    points = []
    for method in results.get("methods", []):
        measured = method.get("measured", {}).get("time_per_token_s")
        if not measured:
            continue
        for predictor, predicted in sorted(method.get("predicted", {}).items()):
            if predicted:
                points.append(
                    PredictionPoint(method.get("label") or method["name"], predictor, float(predicted), float(measured))
                )
    return points


def predicted_vs_measured(results: dict[str, Any]) -> Figure:
    """Left: predicted against measured ms/token per method and predictor, with the y = x line and
    a +-20% band. Right: the signed relative error of each prediction (where the theory misses)."""
    points = prediction_points(results)
    if not points:
        raise UserError("bench results have no method with both a prediction and a measurement")
    labels = list(dict.fromkeys(p.method for p in points))
    fig, (left, right) = new_figure(11.5, 4.6, ncols=2)
    measured = np.array([p.measured for p in points]) * 1e3
    predicted = np.array([p.predicted for p in points]) * 1e3
    low, high = min(measured.min(), predicted.min()) * 0.8, max(measured.max(), predicted.max()) * 1.2
    line = np.array([low, high])
    left.plot(line, line, color="0.3", lw=1, label="prediction = measurement")
    left.fill_between(line, line * 0.8, line * 1.2, color="0.85", label="$\\pm$20%")
    for p in points:
        color = f"C{labels.index(p.method) % 10}"
        left.scatter(
            p.measured * 1e3,
            p.predicted * 1e3,
            marker=PREDICTOR_MARKERS.get(p.predictor, "^"),
            color=color,
            s=40,
            zorder=3,
        )
    for predictor, marker in PREDICTOR_MARKERS.items():
        if any(p.predictor == predictor for p in points):
            left.scatter([], [], marker=marker, color="0.3", label=f"{predictor} prediction")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlim(low, high)
    left.set_ylim(low, high)
    left.set_xlabel("measured time per token [ms]")
    left.set_ylabel("predicted time per token [ms]")
    left.legend(fontsize=7, loc="upper left")
    machine = results.get("machine", {}).get("summary", "")
    left.set_title(f"Predicted vs measured ({machine}, {results.get('created', '')[:10]})", fontsize=9)

    rows = [(p.method, p.predictor) for p in points]
    y = np.arange(len(rows))
    errors = np.array([p.relative_error for p in points]) * 100
    colors = [f"C{labels.index(p.method) % 10}" for p in points]
    right.barh(y, errors, color=colors, alpha=0.85)
    right.set_yticks(y, [f"{m} ({k})" for m, k in rows], fontsize=7)
    right.invert_yaxis()
    right.axvline(0, color="0.3", lw=1)
    for yy, e in zip(y, errors, strict=True):
        right.text(e, yy, f" {e:+.0f}% ", va="center", ha="left" if e >= 0 else "right", fontsize=7)
    span = max(abs(errors).max() * 1.35, 10)
    right.set_xlim(-span, span)
    right.set_xlabel("(predicted - measured) / measured [%]")
    right.set_title("Where the theory misses (< 0: reality slower than predicted)", fontsize=9)
    return fig


def speedups(results: dict[str, Any]) -> Figure:
    """Measured speedup over autoregressive decoding per method, with the predicted (iid) speedup
    where the results carry the prediction of the target alone too: on the autoregressive row, or
    on the lossless reference row of an exact target (whose profiled T(1) is that row's pass), then
    scaled by that row's measured speedup over autoregressive (as ``results._speedup_errors``)."""
    methods = [m for m in results.get("methods", []) if m.get("measured", {}).get("speedup")]
    if not methods:
        raise UserError("bench results have no measured speedups")
    base = alone_row(results["methods"]) or {}
    predicted_base = base.get("predicted", {}).get("iid")
    base_speedup = base.get("measured", {}).get("speedup") or 1.0
    fig, (ax,) = new_figure(7.0, 0.45 * len(methods) + 1.8)
    y = np.arange(len(methods))
    measured = [m["measured"]["speedup"] for m in methods]
    ax.barh(y, measured, color="C0", alpha=0.8, label="measured (median of paired ratios)")
    if predicted_base:
        for yy, m in zip(y, methods, strict=True):
            p = m.get("predicted", {}).get("iid")
            if p:
                ax.scatter(base_speedup * predicted_base / p, yy, marker="D", color="C3", zorder=3)
        ax.scatter([], [], marker="D", color="C3", label="predicted (iid)")
    for yy, s in zip(y, measured, strict=True):
        ax.text(s, yy, f" {s:.2f}x", va="center", fontsize=7)
    ax.axvline(1.0, color="0.4", ls=":", lw=1)
    ax.set_yticks(y, [m.get("label") or m["name"] for m in methods], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over autoregressive decoding")
    ax.legend(fontsize=7, loc="lower right")
    return fig


@dataclass(frozen=True)
class LevelComparison:
    """Output tokens per forward pass of each level (L_i): measured by bench, predicted by the bench
    (at its generation length) or, for results without predictions per level, by the plan."""

    method: str
    chain: tuple[str, ...]
    measured: tuple[float, ...]
    predicted: dict[str, tuple[float, ...]]  # predictor -> L_1..L_k


def level_comparisons(results: dict[str, Any], plan: Any) -> list[LevelComparison]:
    """Methods of ``results`` that ran the plan's chain (or its best two-level chain) at the planned
    gammas, with measured per-level L_i, against the plan's predictions of the same chain."""
    planned: list[tuple[tuple[str, ...], tuple[int, ...], dict[str, tuple[float, ...]]]] = []
    chosen = {name: tuple(p["tokens_per_pass"]) for name, p in plan.predictions.items() if "tokens_per_pass" in p}
    chosen.setdefault(plan.settings.get("predictor", "iid"), tuple(plan.prediction["tokens_per_pass"]))
    planned.append((tuple(plan.names), tuple(plan.gammas), chosen))
    if plan.two_level:
        two = {plan.two_level.get("predictor", "iid"): tuple(plan.two_level["tokens_per_pass"])}
        for name, p in plan.predictions.items():
            if isinstance(p.get("two_level"), dict) and "tokens_per_pass" in p["two_level"]:
                two[name] = tuple(p["two_level"]["tokens_per_pass"])
        planned.append((tuple(plan.two_level["chain"]), tuple(plan.two_level["gammas"]), two))
    out = []
    for method in results.get("methods", []):
        measured = method.get("measured", {}).get("tokens_per_pass")
        if not measured or all(x is None for x in measured):
            continue
        # a model-free bottom level runs no forward passes: its L_i is undefined (None), drawn as a gap
        for chain, gammas, predicted in planned:
            if tuple(method.get("chain", ())) == chain and tuple(method.get("gammas", ())) == gammas:
                # the bench's own predictions (at its generation length and context) when it has them
                at_bench = {
                    name: tuple(_nan(x) for x in p["tokens_per_pass"])
                    for name, p in method.get("predicted_levels", {}).items()
                    if p.get("tokens_per_pass")
                }
                out.append(
                    LevelComparison(
                        method.get("label") or method["name"],
                        chain,
                        tuple(_nan(x) for x in measured),
                        at_bench or predicted,
                    )
                )
    return out


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def levels_measured_vs_predicted(comparisons: list[LevelComparison]) -> Figure:
    """Per method, L_i measured (bars) against predicted (markers, per predictor), log scale: when
    the L_i agree but the time does not, the latency model missed; otherwise acceptance did."""
    if not comparisons:
        raise UserError("no bench method ran the plan's chain with per-level statistics")
    fig, axes = new_figure(4.2 * len(comparisons) + 0.8, 4.0, ncols=len(comparisons), sharey=True)
    for ax, comparison in zip(axes, comparisons, strict=True):
        x = np.arange(len(comparison.chain))
        ax.bar(x, comparison.measured, color="C0", alpha=0.8, width=0.6, label="measured")
        for offset, (predictor, values) in zip((-0.12, 0.12), sorted(comparison.predicted.items()), strict=False):
            ax.scatter(
                x + offset,
                values,
                marker=PREDICTOR_MARKERS.get(predictor, "^"),
                color="C3",
                s=36,
                zorder=3,
                label=f"predicted ({predictor})",
            )
        ax.set_xticks(x, [f"$M_{i + 1}$\n{name}" for i, name in enumerate(comparison.chain)], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(comparison.method, fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("output tokens per forward pass $L_i$")
    return fig
