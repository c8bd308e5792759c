"""Ending a greedy draft where the drafter is unsure: the accepted length of a draft whose tokens
are accepted with known, position-dependent chances, and the bound the executor stops below
(proofs/draft-stop.md; polyplan.executor.draft_stop runs it). Pure sympy and Python."""

from __future__ import annotations

import sympy as sp


def acceptance_symbols(n: int) -> list[sp.Symbol]:
    """``a_1..a_n``: the chance the verifier accepts draft token i given all before it were accepted."""
    return list(sp.symbols(f"a1:{n + 1}", positive=True))


def expected_accepted_expression(n: int) -> sp.Expr:
    """E[A] for a draft of ``n`` tokens, from the distribution of the accepted prefix length A:
    P(A = j) = a_1 ... a_j (1 - a_(j+1)) for j < n and P(A = n) = a_1 ... a_n."""
    a = acceptance_symbols(n)
    pmf = [sp.prod(a[:j]) * (1 - a[j]) for j in range(n)] + [sp.prod(a)]
    return sp.expand(sum(j * p for j, p in enumerate(pmf)))


def survival_sum_expression(n: int) -> sp.Expr:
    """The same E[A] as the sum of survival products: sum_j a_1 ... a_j (= P(A >= j))."""
    a = acceptance_symbols(n)
    return sp.expand(sum(sp.prod(a[:j]) for j in range(1, n + 1)))


def check_draft_stop(max_tokens: int = 6) -> bool:
    """E[A] is the survival sum for n = 1..max_tokens, and one more drafted token adds exactly
    a_1 ... a_(n+1): the chance that the whole draft, that token included, is accepted."""
    for n in range(1, max_tokens + 1):
        if sp.simplify(expected_accepted_expression(n) - survival_sum_expression(n)) != 0:
            return False
        gain = survival_sum_expression(n + 1) - survival_sum_expression(n)
        if sp.simplify(gain - sp.prod(acceptance_symbols(n + 1))) != 0:
            return False
    return True


def stop_bound(drafter_pass: float, verify_slope: float, alpha: float, time_per_token: float) -> float:
    """The ``S`` below which one more drafter pass costs more than it returns: the pass costs
    ``drafter_pass`` plus ``verify_slope`` (the verification one token wider) and adds ``S * a``
    accepted tokens in expectation, ``a`` about ``alpha`` before the pass is run, each worth the
    chain's time per token. Capped at 1 (a drafter too slow ever to pay drafts one token a round)."""
    if alpha <= 0 or time_per_token <= 0:
        raise ValueError("alpha and time_per_token must be positive")
    return min(1.0, max(0.0, drafter_pass + verify_slope) / (alpha * time_per_token))


def draft_stop_latex() -> str:
    return (
        r"\mathbb{E}[A] = \sum_{j=1}^{n} \prod_{i \le j} a_i,\quad "
        r"\text{draft token } n{+}1 \iff S_n\,\bar a\,t \ge T_d(1) + \Delta T_v,\ S_n = \prod_{i \le n} a_i"
    )
