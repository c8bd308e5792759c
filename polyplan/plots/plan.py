"""Figures of plans: the Pareto front (predicted time per token against models used) and where
the chosen plan's time goes, level by level (accounting theorem: time per token = sum_i T_i / L_i)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from matplotlib.figure import Figure

from polyplan.chain_text import chain_column, gammas_text
from polyplan.documents.plan import Plan
from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.plots.canvas import new_figure
from polyplan.theory.chain_model import predict_chain


@dataclass(frozen=True)
class PlanOption:
    """One predicted operating point: a chain at its gammas."""

    chain: tuple[str, ...]
    gammas: tuple[int, ...]
    time_per_token: float  # seconds

    @property
    def models(self) -> int:
        return len(self.chain)

    @property
    def label(self) -> str:
        gammas = f" [{gammas_text(self.gammas)}]" if self.gammas else ""
        return chain_column(self.chain) + gammas


def options_from_plan(plan: Plan) -> list[PlanOption]:
    """The options a plan document records: the chosen chain, its runners-up, the best two-level
    chain and autoregressive decoding (from the prediction's autoregressive time)."""
    entries = [
        {"chain": plan.names, "gammas": plan.gammas, "time_per_token_s": plan.time_per_token},
        *plan.runners_up,
        *([plan.two_level] if plan.two_level else []),
    ]
    options = {PlanOption(tuple(e["chain"]), tuple(e["gammas"]), float(e["time_per_token_s"])) for e in entries}
    autoregressive = plan.prediction.get("autoregressive_time_per_token_s")
    if autoregressive:
        options.add(PlanOption((plan.target,), (), float(autoregressive)))
    return sorted(options, key=lambda o: (o.time_per_token, o.models))


def options_from_estimates(estimates: Iterable) -> list[PlanOption]:
    """From the planner's ``Estimate`` objects (``polyplan.planner.search(...).ranked``)."""
    return sorted(
        (PlanOption(tuple(e.chain), tuple(e.gammas), float(e.time_per_token)) for e in estimates),
        key=lambda o: (o.time_per_token, o.models),
    )


def pareto_options(options: Sequence[PlanOption]) -> list[PlanOption]:
    """Options no other option beats with at most as many models: the fastest at each model count
    that is faster than every option with fewer models."""
    front: list[PlanOption] = []
    for option in sorted(options, key=lambda o: (o.models, o.time_per_token)):
        if not front or option.time_per_token < front[-1].time_per_token:
            if front and front[-1].models == option.models:
                continue
            front.append(option)
    return front


def pareto_front(options: Sequence[PlanOption], *, chosen: Sequence[str] | None = None, title: str = "") -> Figure:
    """Predicted time per token against the number of models in the chain; the front is joined,
    the chosen plan is ringed, and each front point is labelled with its chain and gammas."""
    if not options:
        raise UserError("no plan options to plot")
    fig, (ax,) = new_figure(7.0, 4.6)
    models = np.array([o.models for o in options], dtype=float)
    times = np.array([o.time_per_token for o in options]) * 1e3
    # spread same-size chains sideways a little so they do not hide each other
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=len(options))
    ax.scatter(models + jitter, times, s=16, color="0.55", alpha=0.8, label="chains at their best gammas")
    front = pareto_options(options)
    ax.plot(
        [o.models for o in front], [o.time_per_token * 1e3 for o in front], "-o", color="C0", ms=6, label="Pareto front"
    )
    for index, o in enumerate(front):  # alternate above / below so neighbouring labels do not collide
        ax.annotate(
            o.label,
            (o.models, o.time_per_token * 1e3),
            textcoords="offset points",
            xytext=(8, 6 if index % 2 == 0 else -14),
            fontsize=7,
            color="C0",
        )
    if chosen is not None:
        match = [o for o in options if o.chain == tuple(chosen)]
        if match:
            best = min(match, key=lambda o: o.time_per_token)
            ax.scatter(
                [best.models],
                [best.time_per_token * 1e3],
                s=180,
                facecolors="none",
                edgecolors="C3",
                linewidths=2,
                label="chosen plan",
                zorder=4,
            )
    autoregressive = [o for o in options if o.models == 1]
    if autoregressive:
        ax.axhline(autoregressive[0].time_per_token * 1e3, color="0.4", ls=":", lw=1, label="autoregressive")
    ax.set_xticks(range(1, int(models.max()) + 1))
    ax.set_xlim(0.6, models.max() + 2.2)  # room for the labels of the front
    ax.set_xlabel("models in the chain (target included)")
    ax.set_ylabel("predicted time per token [ms]")
    ax.set_title(title or "Plans: predicted time per token against models used", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def chain_breakdown(
    profile: Profile, chain: Sequence[str], gammas: Sequence[int], *, mode: str, context: float
) -> list[float]:
    """Seconds per output token spent in each level of ``chain`` at ``gammas`` (i.i.d. exact model
    with the profile's latency curves at ``context``; they sum to its predicted time per token)."""
    for name in chain:
        if name not in profile.latency:
            raise UserError(f"profile has no latency curve for {name!r}, a member of the chain")
    alphas = [profile.pair(u, d).alpha(mode) for u, d in pairwise(chain)]
    latency = [lambda n, curve=profile.latency[name]: curve(n, context) for name in chain]
    prediction = predict_chain(alphas, list(gammas), latency)
    # Time per token is linear in the latencies (tokens per round do not depend on them), so level
    # i's share is the prediction with every other level free. The theory refuses a free target,
    # so the target gets a unit constant there and its exact contribution (1 / L_1) is subtracted.
    terms = []
    for level in range(1, len(latency)):
        only = [1.0] + [t if i == level else 0.0 for i, t in enumerate(latency) if i > 0]
        alone = predict_chain(alphas, list(gammas), only)
        terms.append(float(alone.time_per_token) - float(alone.passes_per_token[0]))
    return [float(prediction.time_per_token) - sum(terms), *terms]


def level_breakdown(plan: Plan, profile: Profile) -> list[float]:
    """``chain_breakdown`` of the plan's chosen chain at its mode and context."""
    return chain_breakdown(
        profile, plan.names, plan.gammas, mode=plan.mode, context=float(plan.settings.get("context", 0.0))
    )


def plan_breakdown(plan: Plan, profile: Profile) -> Figure:
    """Where the time per token goes (T_i / L_i per level, steady-state i.i.d. model) for the chosen plan, the
    best two-level chain (when it is not the plan) and autoregressive decoding."""
    bars = [
        (
            f"chosen plan\n$\\gamma$=[{','.join(map(str, plan.gammas)) or '-'}]",
            list(plan.names),
            level_breakdown(plan, profile),
        )
    ]
    two = plan.two_level
    if two and list(two["chain"]) != plan.names:
        bars.append(
            (
                f"best two-level\n$\\gamma$=[{','.join(map(str, two['gammas']))}]",
                list(two["chain"]),
                chain_breakdown(
                    profile,
                    two["chain"],
                    two["gammas"],
                    mode=plan.mode,
                    context=float(plan.settings.get("context", 0.0)),
                ),
            )
        )
    autoregressive = plan.prediction.get("autoregressive_time_per_token_s")
    fig, (ax,) = new_figure(7.0, 4.4)
    colors: dict[str, str] = {}
    for x, (_label, chain, terms) in enumerate(bars):
        bottom = 0.0
        for name, term in zip(chain, np.array(terms) * 1e3, strict=True):
            new = name not in colors
            color = colors.setdefault(name, f"C{len(colors)}")
            ax.bar([x], [term], bottom=bottom, color=color, width=0.6, label=name if new else None)
            if term > 0.05 * sum(terms) * 1e3:
                ax.text(x, bottom + term / 2, f"{term:.2f}", ha="center", va="center", fontsize=7, color="white")
            bottom += term
        ax.text(x, bottom, f"{bottom:.2f} ms", ha="center", va="bottom", fontsize=8)
    labels = [label for label, _, _ in bars]
    if autoregressive:
        ax.bar([len(bars)], [autoregressive * 1e3], color="0.6", width=0.6, label="autoregressive")
        ax.text(len(bars), autoregressive * 1e3, f"{autoregressive * 1e3:.2f} ms", ha="center", va="bottom", fontsize=8)
        labels.append("autoregressive")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(labels) + 0.9)
    ax.set_ylabel("predicted time per output token [ms]\n(stacked: $T_i / L_i$ per model)")
    speedup = plan.prediction.get("speedup")
    ax.set_title(
        f"Chosen plan: {chain_column(plan.names)}" + (f", predicted speedup {speedup:.2f}x" if speedup else ""),
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
    return fig
