"""The theorems of polyplan.theory: statement, implementing function, proof file, symbolic check.

``polyplan theory show`` prints them; tests/test_theory_proofs.py runs every ``check`` and verifies
that each proof file exists and names its implementing function. A check returns True only when the
stated identity holds symbolically (sympy), or exactly over a stated finite range of g.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from polyplan.theory import acceptance, accounting, draft_stop, gamma, insertion, prefill, trees, two_level
from polyplan.theory.acceptance import a, c, g


@dataclass(frozen=True)
class Theorem:
    name: str  # also the proof file stem: proofs/<name>.md
    title: str
    statement: str  # plain text, one or two lines
    latex: Callable[[], str]  # the statement in LaTeX, built from the expressions
    implementation: str  # dotted path of the implementing function
    check: Callable[[], bool]

    @property
    def proof_file(self) -> str:
        return f"proofs/{self.name}.md"


def _is_zero(expr: sp.Expr) -> bool:
    return sp.simplify(expr) == 0


def _check_accounting() -> bool:
    return all(_is_zero(lhs - rhs) for lhs, rhs in (accounting.accounting_expression(k) for k in range(1, 6)))


def _check_capped_geometric() -> bool:
    mean_closed = (1 - a ** (g + 1)) / (1 - a)
    variance_closed = a * (1 - (2 * g + 1) * a**g * (1 - a) - a ** (2 * g + 1)) / (1 - a) ** 2
    pmf_total = sp.summation(a**acceptance.i * (1 - a), (acceptance.i, 0, g - 1)) + a**g
    return (
        _is_zero(acceptance.mean_acceptance_length_expression() - mean_closed)
        and _is_zero(acceptance.variance_expression() - variance_closed)
        and _is_zero(acceptance._rate_below_one(pmf_total) - 1)
    )


def _check_stability() -> bool:
    return all(acceptance.accepted_cv_is_decreasing(n) for n in range(1, 33))


def _check_rate_comparison() -> bool:
    gap = acceptance.rate_comparison_expression()
    p, q = sorted(gap.free_symbols, key=str)
    # on either ordering of p, q: min(p, q) - p q = min(p, q) (1 - max(p, q)) >= 0 for p, q in [0, 1]
    return all(_is_zero(gap.subs(sp.Min(p, q), lo) - lo * (1 - hi)) for lo, hi in ((p, q), (q, p)))


def _check_chain_model() -> bool:
    """k = 2 equals Leviathan (g = 1..5), and k = 3 with threshold g_2 = 1 equals a hand derivation:
    M2 hands up after one verification, so its block is A_2 + 1 with A_2 capped geometric on g_3."""
    from polyplan.theory.chain_model import predict_chain_symbolic

    if not all(_is_zero(two_level.general_model_difference(n)) for n in range(1, 6)):
        return False
    a1, a2, t1, t2, t3 = sp.symbols("a_1 a_2 T_1 T_2 T_3", positive=True)
    for g3 in (1, 2, 3):
        block = {n + 1: (a2**n * (1 - a2) if n < g3 else a2**g3) for n in range(g3 + 1)}
        tokens = sum(p * (1 - a1 ** (d + 1)) / (1 - a1) for d, p in block.items())
        round_time = g3 * t3 + t2 + t1
        general = predict_chain_symbolic([a1, a2], [1, g3], [t1, t2, t3])
        if not (
            _is_zero(general.mean_acceptance_length - tokens) and _is_zero(general.time_per_token - round_time / tokens)
        ):
            return False
    return True


def _check_two_level() -> bool:
    closed = (1 - a ** (g + 1)) / ((1 - a) * (g * c + 1))
    return _is_zero(two_level.improvement_factor() - closed)


def _check_optimal_gamma() -> bool:
    """Substitute g* into the first-order condition, then use W e^W = x for the Lambert W."""
    foc = gamma.first_order_condition()
    w = sp.Symbol("w")
    x = -(a ** (1 / c - 1)) / sp.E
    substituted = foc.subs(g, gamma.optimal_gamma_expression()).subs(sp.LambertW(x, -1), w)
    substituted = sp.powsimp(sp.expand(substituted), force=True)
    reduced = sp.simplify(sp.expand_log(substituted, force=True).subs(sp.exp(w), x / w))
    return _is_zero(sp.powsimp(sp.expand(reduced), force=True))


def _check_insertion() -> bool:
    ok = True
    for depth in (1, 2, 3):
        for v in range(1, depth + 1):
            delta, paper_gap = insertion.insertion_condition_expression(depth, v)
            t = sp.symbols(f"T_1:{depth + 1}", positive=True)
            lb = sp.symbols(f"L_1:{depth + 1}", positive=True)
            la = sp.symbols(f"Lp_1:{depth + 1}", positive=True)
            others = sum(t[i] * (1 / la[i] - 1 / lb[i]) for i in range(depth) if i != v - 1)
            ok &= _is_zero(delta - paper_gap - others)
    return ok


def _check_adaptive_control() -> bool:
    """The estimator's three identities: the evidence likelihood alpha^a (1 - alpha)^[a < d] is the
    capped-geometric pmf (sums to 1, d = 1..8); an exponential average of memory W has variance
    sigma^2 (1 - lam)/(1 + lam); W* = sigma sqrt(H)/Delta zeroes the derivative of the mean square
    error sigma^2/(2W) + Delta^2 W/(2H), which is convex."""
    from polyplan.theory.control import verification_evidence

    lam, t, w, sigma, jump, segment = sp.symbols("lambda t W sigma Delta H", positive=True)
    for d in range(1, 9):
        total = 0
        for accepted in range(d + 1):
            s, n = verification_evidence(d, accepted)
            total += a**s * (1 - a) ** (n - s)
        if not _is_zero(total - 1):
            return False
    geometric = sp.summation(lam ** (2 * t), (t, 0, sp.oo)).args[0][0]  # the branch lam^2 < 1
    variance = (1 - lam) ** 2 * geometric  # sum over t of the squared weights (1 - lam) lam^t
    if not _is_zero(variance - (1 - lam) / (1 + lam)):
        return False
    mse = sigma**2 / (2 * w) + jump**2 * w / (2 * segment)
    best = sigma * sp.sqrt(segment) / jump
    return _is_zero(sp.diff(mse, w).subs(w, best)) and bool(sp.simplify(sp.diff(mse, w, 2)).is_positive)


def _latex_eq(lhs: str, rhs: sp.Expr) -> str:
    return f"{lhs} = {sp.latex(rhs)}"


THEOREMS: list[Theorem] = [
    Theorem(
        "accounting",
        "Accounting theorem",
        "Total time T(N) = N * sum_i T_i / L_i, L_i = output tokens per forward pass of model i.",
        lambda: r"T(N) = \sum_i P_i T_i = N \sum_{i=1}^{k} \frac{T_i}{L_i},\quad L_i = N / P_i",
        "polyplan.theory.accounting.total_time",
        _check_accounting,
    ),
    Theorem(
        "capped-geometric",
        "Capped-geometric acceptance length",
        "One verification of g drafts at rate a: E[X] = (1 - a^(g+1))/(1 - a), Var[X], CV[X].",
        lambda: (
            _latex_eq(r"\mathbb{E}[X]", acceptance.mean_acceptance_length_expression())
            + r",\quad "
            + _latex_eq(r"\operatorname{Var}[X]", acceptance.variance_expression())
        ),
        "polyplan.theory.acceptance.mean_acceptance_length_expression",
        _check_capped_geometric,
    ),
    Theorem(
        "stability",
        "Stability: the CV of acceptance falls as a rises",
        "CV[A] strictly decreases on 0 < a < 1 (checked exactly for g = 1..32); CV[X] = CV of A+1 "
        "rises on (0, a*(g)) and falls on (a*(g), 1).",
        lambda: r"\frac{d}{da}\,\frac{\sqrt{\operatorname{Var}[A]}}{\mathbb{E}[A]} < 0 \quad (0<a<1)",
        "polyplan.theory.acceptance.accepted_cv_is_decreasing",
        _check_stability,
    ),
    Theorem(
        "speculative-sampling-rate",
        "Speculative sampling accepts at least as often as exact matching",
        "sum_x min(p, q) >= sum_x p q, so speculative sampling's acceptance CV is never higher.",
        lambda: r"\sum_x \min(p(x), q(x)) \;\ge\; \sum_x p(x)\,q(x)",
        "polyplan.theory.acceptance.speculative_sampling_rate",
        _check_rate_comparison,
    ),
    Theorem(
        "chain-model",
        "Exact expected time per token of a chain of any depth",
        "Renewal over target rounds; block-length distributions propagated level by level.",
        lambda: (
            r"\frac{T(N)}{N} \to \frac{\mathbb{E}[\text{round time}]}{\mathbb{E}[A_1 + 1]},\quad "
            r"L_i = \frac{\mathbb{E}[A_1 + 1]}{\mathbb{E}[P_i \text{ per round}]}"
        ),
        "polyplan.theory.chain_model.predict_chain",
        _check_chain_model,
    ),
    Theorem(
        "two-level",
        "Two levels in closed form (Leviathan et al.)",
        "Speedup (1 - a^(g+1)) / ((1 - a)(g c + 1)) with c = T2/T1; equals the general model at k = 2.",
        lambda: _latex_eq(r"\text{speedup}", two_level.improvement_factor()),
        "polyplan.theory.two_level.improvement_factor",
        _check_two_level,
    ),
    Theorem(
        "optimal-gamma",
        "Optimal speculation length (two levels)",
        "g* = (1 + W_{-1}(-a^(1/c - 1)/e)) / ln a - 1/c solves the first-order condition.",
        lambda: _latex_eq(r"\gamma^*", gamma.optimal_gamma_expression()),
        "polyplan.theory.gamma.optimal_gamma_two_level",
        _check_optimal_gamma,
    ),
    Theorem(
        "insertion",
        "Model insertion condition",
        "Inserting M_new helps iff T_new/L_new + sum_i T_i (1/L'_i - 1/L_i) < 0; the paper's form "
        "T_new/L_new < T_v/L_v - T_v/L'_v is exact when other levels keep their L.",
        lambda: r"\Delta = \frac{T_{new}}{L_{new}} + \sum_i T_i\Big(\frac{1}{L'_i}-\frac{1}{L_i}\Big) < 0",
        "polyplan.theory.insertion.insertion_gain",
        _check_insertion,
    ),
    Theorem(
        "adaptive-control",
        "Adaptive control between target rounds",
        "Per round run argmin_s t_s(alpha-hat) (tabulated when the plan is made); alpha-hat is a Beta "
        "posterior with forgotten evidence (a successes, a + [a < d] trials; window W* = sigma sqrt(H) / "
        "Delta); regret <= (1 + eps) e^(2 L delta); lossless because settings change only between rounds.",
        lambda: (
            r"\frac{t_{\hat s}(\alpha)}{\min_s t_s(\alpha)} \le (1+\varepsilon)\,"
            r"e^{2L\|\alpha-\hat\alpha\|_\infty},\quad W^* = \frac{\sigma\sqrt{H}}{\Delta}"
        ),
        "polyplan.theory.control.verification_evidence",
        _check_adaptive_control,
    ),
]


THEOREMS.append(
    Theorem(
        "prefill",
        "Whole requests: prefill, horizon and the break-even of a drafter",
        "E[T_S] = P_1(c) + sum_i P_i(w_i(c)) + E[H] t_S; S beats the target alone iff E[H] > H* = "
        "sum_i P_i(w_i(c)) / (T_1 - t_S); inserting M_j pays iff P_j(w_j(c)) < E[H] (t_S - t_S').",
        prefill.break_even_latex,
        "polyplan.theory.prefill.predict_request",
        prefill.check_break_even,
    )
)

THEOREMS.append(
    Theorem(
        "draft-trees",
        "Draft trees: expected accepted length, optimal tree, lossless multi-draft sampling",
        "E[A] = sum over nodes of prod a_rank along the path; the n nodes of largest path value form an "
        "optimal n-node tree; t = (T_v(n+1) + passes T_d) / (1 + E[A]); recursive rejection without "
        "replacement is exact.",
        lambda: (
            r"\mathbb{E}[A] = \sum_{v \in \mathcal{T}} \prod_{e \in \mathrm{path}(v)} a_{r(e)},\quad "
            r"t = \frac{T_v(n+1) + \mathrm{passes}\,T_d}{1 + \mathbb{E}[A]}"
        ),
        "polyplan.theory.trees.expected_accepted",
        trees.check_tree_theorems,
    )
)

THEOREMS.append(
    Theorem(
        "draft-stop",
        "Draft stops: when one more drafted token pays",
        "With per-token acceptance chances a_i, E[A] = sum_j a_1...a_j, so token n+1 adds S_(n+1) = "
        "a_1...a_(n+1) accepted tokens; draft it iff S_n a t >= T_d(1) + the verifier's slope.",
        draft_stop.draft_stop_latex,
        "polyplan.theory.draft_stop.stop_bound",
        draft_stop.check_draft_stop,
    )
)


def theorem_names() -> list[str]:
    return [t.name for t in THEOREMS]


def find_theorem(name: str) -> Theorem:
    for t in THEOREMS:
        if t.name == name:
            return t
    from polyplan.errors import UserError

    raise UserError(f"no theorem named {name!r}; choose one of: {', '.join(theorem_names())}")
