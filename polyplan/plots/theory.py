"""Figures of the theory alone (no profile): speedup surfaces, where a third model pays,
acceptance-length stability, and the exact chain model against the staged simulator.

Each figure has a ``*_grid`` / data function beside it that returns the numbers it draws, so tests
(and readers) can check the picture against the theory. Every number comes from polyplan.theory:
closed forms are lambdified from its sympy expressions, never retyped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import sympy as sp
from matplotlib.figure import Figure

from polyplan.plots.canvas import new_figure
from polyplan.theory import insertion_gain, predict_chain, search_gammas, simulate_chain
from polyplan.theory.acceptance import (
    a as ALPHA,
    c as COST,
    cv_expression,
    exact_match_rate,
    g as GAMMA,
    speculative_sampling_rate,
)
from polyplan.theory.two_level import improvement_factor


@cache
def _improvement_factor_numpy() -> Callable[..., np.ndarray]:
    """Leviathan's speedup ``f(a, g, c)`` as a vectorised function, from the sympy expression."""
    return sp.lambdify((ALPHA, GAMMA, COST), improvement_factor(), "numpy")


@cache
def _cv_numpy(include_bonus: bool) -> Callable[..., np.ndarray]:
    return sp.lambdify((ALPHA, GAMMA), cv_expression(include_bonus=include_bonus), "numpy")


def acceptance_cv(rate: np.ndarray | float, gamma: int, *, include_bonus: bool) -> np.ndarray:
    """CV of the accepted count A (``include_bonus=False``) or of the acceptance length X = A + 1
    for one verification of ``gamma`` drafts at i.i.d. rate ``rate`` (0 < rate < 1)."""
    return np.asarray(_cv_numpy(include_bonus)(np.asarray(rate, dtype=float), gamma), dtype=float)


# ---------------------------------------------------------------------------------------------
# speedup surfaces


def two_level_speedup_grid(
    alphas: Sequence[float],
    cost_ratios: Sequence[float],
    max_gamma: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(speedup, best_gamma)``, each ``[len(cost_ratios), len(alphas)]``: the two-level speedup
    at the best integer gamma in 1..max_gamma, for acceptance a and cost ratio c = T2/T1."""
    a = np.asarray(alphas, dtype=float)[None, :, None]
    c = np.asarray(cost_ratios, dtype=float)[:, None, None]
    g = np.arange(1, max_gamma + 1, dtype=float)[None, None, :]
    values = np.broadcast_to(_improvement_factor_numpy()(a, g, c), (c.shape[0], a.shape[1], g.shape[2]))
    best = values.argmax(axis=2)
    return np.take_along_axis(values, best[..., None], axis=2)[..., 0], best + 1


def three_level_speedup_grid(
    alphas: Sequence[float],
    cost_ratios: Sequence[float],
    max_gamma: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """``(speedup, gammas)`` of a three-level chain whose levels each accept at rate a and cost c
    times the level above (alpha = [a, a], latency = [1, c, c^2]), at the best gammas
    (exact model, exhaustive search up to ``max_gamma``). ``gammas`` is ``[..., 2]``."""
    speedup = np.empty((len(cost_ratios), len(alphas)))
    gammas = np.empty((len(cost_ratios), len(alphas), 2), dtype=int)
    for i, c in enumerate(cost_ratios):
        for j, a in enumerate(alphas):
            best, prediction = search_gammas([a, a], [1.0, c, c * c], max_gamma=max_gamma)
            speedup[i, j] = prediction.speedup
            gammas[i, j] = best
    return speedup, gammas


def speedup_surfaces(
    alphas: Sequence[float] | None = None,
    cost_ratios: Sequence[float] | None = None,
    *,
    max_gamma_two: int = 32,
    max_gamma_three: int = 8,
) -> Figure:
    """Two panels: speedup over (acceptance a, cost ratio c) for two levels, and for three levels
    (each level accepts at a and costs c times the one above), at the best gammas; contours mark
    1x (break-even), 2x, 3x. In the two-level panel break-even is exactly the diagonal a = c."""
    alphas = np.linspace(0.02, 0.98, 49) if alphas is None else np.asarray(alphas, dtype=float)
    cost_ratios = np.linspace(0.01, 0.6, 40) if cost_ratios is None else np.asarray(cost_ratios, dtype=float)
    two, _ = two_level_speedup_grid(alphas, cost_ratios, max_gamma_two)
    three, _ = three_level_speedup_grid(alphas, cost_ratios, max_gamma_three)
    # the far corner (a -> 1, c -> 0) grows without bound; cap the colours so the rest stays readable
    vmax = float(min(max(two.max(), three.max()), 6.0))
    fig, (left, right) = new_figure(10.5, 4.2, ncols=2, sharey=True)
    extent = (alphas[0], alphas[-1], cost_ratios[0], cost_ratios[-1])
    for ax, grid, title in (
        (left, two, "two levels: $M_1 \\leftarrow M_2$"),
        (right, three, "three levels: $\\alpha=[a, a]$, $T=[1, c, c^2]$"),
    ):
        image = ax.imshow(
            grid,
            origin="lower",
            aspect="auto",
            extent=extent,
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
        )
        contours = ax.contour(alphas, cost_ratios, grid, levels=[1, 2, 3, 4], colors="white", linewidths=1)
        ax.clabel(contours, fmt="%gx", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("acceptance rate $a$")
    left.set_ylabel("cost ratio $c = T_{\\mathrm{draft}} / T_{\\mathrm{verifier}}$")
    fig.colorbar(image, ax=[left, right], label="speedup at the best $\\gamma$ (exact model)", extend="max")
    fig.suptitle("Speedup over autoregressive decoding (i.i.d. acceptance, constant latency)", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# where a third model pays


@dataclass
class InsertionGrid:
    """Inserting a middle model M between the target and a small drafter S (gammas re-optimised)."""

    alphas: np.ndarray  # x: acceptance of M by the target
    cost_ratios: np.ndarray  # y: T_M / T_1
    gain: np.ndarray  # [cost, alpha]: time per token of best (target, S) / best (target, M, S)
    paper_condition: np.ndarray  # [cost, alpha] bool: Wang et al.'s form at the base chain's gamma
    two_level_time: float  # best (target, S), in units of T_1
    mid_small_alpha: float
    target_small_alpha: float
    small_cost: float


def insertion_grid(
    alphas: Sequence[float],
    cost_ratios: Sequence[float],
    *,
    mid_small_alpha: float = 0.75,
    target_small_alpha: float = 0.55,
    small_cost: float = 0.02,
    max_gamma: int = 10,
) -> InsertionGrid:
    """Exact gain of inserting M (acceptance a by the target, cost c) into the best (target, S) chain.

    ``gain > 1``: the best three-level chain beats the best two-level one. The paper's sufficient
    form ``T_M/L_M < T_1/L_1 - T_1/L'_1`` is evaluated by ``insertion_gain`` with S keeping the base
    chain's gamma and M at its best threshold for that configuration."""
    base_gammas, base = search_gammas([target_small_alpha], [1.0, small_cost], max_gamma=max_gamma)
    gain = np.empty((len(cost_ratios), len(alphas)))
    paper = np.zeros_like(gain, dtype=bool)
    for i, c in enumerate(cost_ratios):
        for j, a in enumerate(alphas):
            gammas, three = search_gammas([a, mid_small_alpha], [1.0, c, small_cost], max_gamma=max_gamma)
            gain[i, j] = base.time_per_token / three.time_per_token
            verdict = insertion_gain(
                [target_small_alpha], base_gammas, [1.0, small_cost], 2, a, mid_small_alpha, c, gammas[0]
            )
            paper[i, j] = verdict.paper_condition
    return InsertionGrid(
        np.asarray(alphas, float),
        np.asarray(cost_ratios, float),
        gain,
        paper,
        float(base.time_per_token),
        mid_small_alpha,
        target_small_alpha,
        small_cost,
    )


def insertion_region(grid: InsertionGrid | None = None) -> Figure:
    """Where inserting a third (middle) model pays: gain of the best 3-level chain over the best
    2-level one, with the exact break-even (solid) and the paper's condition (dashed)."""
    grid = grid or insertion_grid(np.linspace(0.3, 0.99, 36), np.linspace(0.02, 0.6, 30))
    fig, (ax,) = new_figure(6.4, 4.6)
    extent = (grid.alphas[0], grid.alphas[-1], grid.cost_ratios[0], grid.cost_ratios[-1])
    spread = max(abs(np.log2(grid.gain)).max(), 0.1)
    image = ax.imshow(
        np.log2(grid.gain),
        origin="lower",
        aspect="auto",
        extent=extent,
        cmap="RdBu",
        vmin=-spread,
        vmax=spread,
        interpolation="nearest",
    )
    if grid.gain.min() < 1 < grid.gain.max():
        ax.contour(grid.alphas, grid.cost_ratios, grid.gain, levels=[1.0], colors="black", linewidths=2)
    if grid.paper_condition.any() and not grid.paper_condition.all():
        ax.contour(
            grid.alphas,
            grid.cost_ratios,
            grid.paper_condition.astype(float),
            levels=[0.5],
            colors="black",
            linewidths=1.2,
            linestyles="--",
        )
    ax.plot([], [], color="black", lw=2, label="exact break-even (gammas re-optimised)")
    ax.plot([], [], color="black", lw=1.2, ls="--", label="Wang et al. condition ($T_M/L_M < \\Delta(T_1/L_1)$)")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    bar = fig.colorbar(image, ax=ax)
    step = 0.5 if spread <= 2 else 1.0
    ticks = list(np.arange(-np.floor(spread / step), np.floor(spread / step) + 1) * step)
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{2**t:.2g}x" for t in ticks])
    bar.set_label("gain: best 2-level time / best 3-level time")
    ax.set_xlabel("acceptance of the middle model by the target, $\\alpha_{1M}$")
    ax.set_ylabel("middle model cost ratio $T_M / T_1$")
    ax.set_title(
        f"Insert M into (target, S): $\\alpha_{{MS}}$={grid.mid_small_alpha:g}, "
        f"$\\alpha_{{1S}}$={grid.target_small_alpha:g}, $T_S/T_1$={grid.small_cost:g}",
        fontsize=10,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# acceptance-length stability


@dataclass
class RatePair:
    speculative_sampling: float  # sum_x min(p, q)
    exact_match: float  # sum_x p q


def random_distribution_pairs(n_pairs: int = 40, vocabulary: int = 64, seed: int = 0) -> list[RatePair]:
    """Target/draft distribution pairs of varied sharpness and agreement (softmax of correlated
    Gaussian logits at random temperatures) and both acceptance rates for each."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_pairs):
        logits = rng.normal(size=vocabulary) * rng.uniform(0.5, 6.0)
        noise = rng.normal(size=vocabulary) * rng.uniform(0.0, 3.0)
        p = np.exp(logits - logits.max())
        q = np.exp(logits + noise - (logits + noise).max())
        p, q = (p / p.sum()).tolist(), (q / q.sum()).tolist()
        pairs.append(RatePair(speculative_sampling_rate(p, q), exact_match_rate(p, q)))
    return pairs


def acceptance_stability(
    gammas: Sequence[int] = (2, 4, 8), pair_gamma: int = 4, pairs: Sequence[RatePair] | None = None
) -> Figure:
    """Left: CV of the accepted count A (dashed) and of the acceptance length X = A + 1 (solid)
    against the acceptance rate, per gamma. Right: for random (p, q) pairs, exact-match acceptance
    (sample from p, accept on a match) against speculative sampling (accept with min(1, p/q)):
    speculative sampling accepts at least as often, so its CV[A] is never higher."""
    pairs = random_distribution_pairs() if pairs is None else list(pairs)
    rates = np.linspace(0.01, 0.99, 197)
    fig, (left, right) = new_figure(10.5, 4.0, ncols=2)
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for color, g in zip(colors, gammas, strict=False):
        left.plot(rates, acceptance_cv(rates, g, include_bonus=True), color=color, label=f"CV[X], $\\gamma$={g}")
        left.plot(
            rates, acceptance_cv(rates, g, include_bonus=False), color=color, ls="--", label=f"CV[A], $\\gamma$={g}"
        )
    left.set_ylim(0, 2.5)
    left.set_xlabel("acceptance rate $a$")
    left.set_ylabel("coefficient of variation")
    left.set_title("One verification of $\\gamma$ drafts: CV of accepted count A and length X=A+1", fontsize=9)
    left.legend(fontsize=7, ncols=2)
    em = np.array([p.exact_match for p in pairs])
    ss = np.array([p.speculative_sampling for p in pairs])
    em_cv = acceptance_cv(np.clip(em, 1e-3, 0.999), pair_gamma, include_bonus=False)
    ss_cv = acceptance_cv(np.clip(ss, 1e-3, 0.999), pair_gamma, include_bonus=False)
    points = right.scatter(em_cv, ss_cv, c=ss - em, cmap="plasma", s=18, zorder=3)
    top = float(max(em_cv.max(), ss_cv.max())) * 1.05
    right.plot([0, top], [0, top], color="0.5", lw=0.8, ls="--", label="equal CV")
    right.set_xlim(0, top)
    right.set_ylim(0, top)
    fig.colorbar(points, ax=right, label="rate gain $\\sum\\min(p,q) - \\sum p\\,q$")
    right.set_xlabel(f"CV[A], exact-match verification ($\\gamma$={pair_gamma})")
    right.set_ylabel("CV[A], speculative sampling")
    right.set_title(f"{len(pairs)} random (p, q) pairs: every point on or below the diagonal", fontsize=9)
    right.legend(fontsize=7, loc="upper left")
    return fig


# ---------------------------------------------------------------------------------------------
# exact model against simulation


@dataclass
class ModelCheck:
    label: str
    alphas: np.ndarray  # swept a_1
    exact: np.ndarray  # speedup from predict_chain
    simulated: np.ndarray  # speedup from simulate_chain
    stderr: np.ndarray  # standard error of the simulated speedup


DEFAULT_CHAINS: tuple[tuple[str, tuple[float, ...], tuple[int, ...], tuple[float, ...]], ...] = (
    ("k=2: $\\gamma$=[5], T=[1, .1]", (), (5,), (1.0, 0.1)),
    ("k=3: $\\alpha_2$=.8, $\\gamma$=[4, 3], T=[1, .2, .02]", (0.8,), (4, 3), (1.0, 0.2, 0.02)),
    (
        "k=4: $\\alpha$=[., .8, .7], $\\gamma$=[6, 3, 2], T=[1, .3, .08, .01]",
        (0.8, 0.7),
        (6, 3, 2),
        (1.0, 0.3, 0.08, 0.01),
    ),
)


def model_vs_simulation_data(
    alphas: Sequence[float] | None = None, n_tokens: int = 4000, seed: int = 0, chains=DEFAULT_CHAINS
) -> list[ModelCheck]:
    """Speedup of each chain over a sweep of the target's acceptance a_1: exact model vs a
    Bernoulli simulation of the staged loop (independent code: polyplan.theory.simulator)."""
    alphas = np.linspace(0.1, 0.95, 9) if alphas is None else np.asarray(alphas, dtype=float)
    rng = np.random.default_rng(seed)
    checks = []
    for label, lower_alphas, gammas, latency in chains:
        exact, simulated, stderr = [], [], []
        for a in alphas:
            alpha = [float(a), *lower_alphas]
            exact.append(predict_chain(alpha, gammas, latency).speedup)
            run = simulate_chain(alpha, gammas, latency, n_tokens, rng)
            speedup = latency[0] / run.time_per_token
            simulated.append(speedup)
            stderr.append(speedup * run.time_per_token_stderr / run.time_per_token)
        checks.append(ModelCheck(label, alphas, np.array(exact), np.array(simulated), np.array(stderr)))
    return checks


def model_vs_simulation(checks: Sequence[ModelCheck] | None = None) -> Figure:
    """Exact model (lines) against the staged simulator (points, 2 standard errors)."""
    checks = model_vs_simulation_data() if checks is None else checks
    fig, (ax,) = new_figure(6.4, 4.4)
    for color, check in zip(("C0", "C1", "C2", "C3"), checks, strict=False):
        fine = check.alphas
        ax.plot(fine, check.exact, color=color, label=check.label)
        ax.errorbar(check.alphas, check.simulated, yerr=2 * check.stderr, fmt="o", ms=4, color=color, capsize=2)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.plot([], [], "o", color="0.3", label="simulated ($\\pm$2 s.e.)")
    ax.set_xlabel("target acceptance $\\alpha_1$")
    ax.set_ylabel("speedup over autoregressive")
    ax.set_title("Exact chain model (lines) vs Monte-Carlo staged loop (points)", fontsize=10)
    ax.legend(fontsize=7)
    return fig
