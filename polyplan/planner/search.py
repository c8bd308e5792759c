"""The search: every plannable chain at its best gammas, ranked by predicted time per token, plus
the insertion analysis that says why each candidate is in or out of the winner.

Pure Python: the optimizer never loads a model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.planner.chains import Chain, chain_problem, enumerate_chains
from polyplan.planner.predictors import Estimate, Predictor
from polyplan.theory import insertion_gain

CONDITION_KEYS = (
    "new_model_cost",
    "verifier_saving",
    "other_levels_change",
    "paper_condition",
    "sufficient_condition",
    "improves",
    "time_per_token_before",
    "time_per_token_after",
)


def _condition(
    predictor: Predictor, before: Chain, gammas_before: list[int], model: str, position: int, new_gamma: int
) -> dict | None:
    """The theory's insertion condition for putting ``model`` at ``position`` into ``before``."""
    above = before[position - 2]
    below = before[position - 1] if position - 1 < len(before) else None
    try:
        pa = predictor.profile.pair(above, model).alpha(predictor.mode)
        pb = predictor.profile.pair(model, below).alpha(predictor.mode) if below else None
        res = insertion_gain(
            predictor.alphas(before),
            gammas_before,
            predictor.latencies(before),
            position,
            pa,
            pb,
            predictor.latencies((model,))[0],
            new_gamma,
        )
    except UserError:
        return None
    d = res.to_dict()
    return {k: d[k] for k in CONDITION_KEYS}


@dataclass
class InsertionVerdict:
    """Why one candidate is in or out of the chosen chain (the insertion condition, evaluated).

    For a chosen model: the predicted time per token of the best chain without it (gammas
    re-optimised); ``gain`` = time without / time with (> 1: it earns its place).
    For an excluded model: the best position to insert it and the predicted time there;
    ``gain`` = chosen time / time with it (< 1: inserting it would slow the chain down)."""

    model: str
    included: bool
    level: int | None  # 1-based level in the chosen chain (or where it would best go)
    chain_compared: Chain | None
    gammas_compared: tuple[int, ...]
    time_compared: float | None  # without it (included) / with it (excluded)
    gain: float | None
    reason: str
    #: the paper's insertion condition at the chosen gammas (i.i.d. model, polyplan.theory.insertion_gain):
    #: new_model_cost = T_new / L_new, verifier_saving, other_levels_change, paper_condition, improves
    condition: dict | None = None

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "included": self.included,
            "level": self.level,
            "compared_chain": list(self.chain_compared) if self.chain_compared else None,
            "compared_gammas": list(self.gammas_compared),
            "compared_time_per_token_s": self.time_compared,
            "gain": self.gain,
            "reason": self.reason,
            "condition": self.condition,
        }


@dataclass
class SearchResult:
    best: Estimate
    ranked: list[Estimate]  # every chain at its best gammas, fastest first (best included)
    best_two_level: Estimate | None
    insertion: list[InsertionVerdict]
    autoregressive_time: float
    context: float
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it never appears


def search(
    profile: Profile,
    predictor: Predictor,
    *,
    max_gamma: int = 16,
    all_orders: bool = False,
) -> SearchResult:
    if not 1 <= max_gamma <= 64:
        raise UserError(f"--max-gamma must be between 1 and 64, got {max_gamma}")
    chains = list(enumerate_chains(profile, context=predictor.context, all_orders=all_orders))
    estimates = [predictor.best(c, max_gamma) for c in chains]
    estimates.sort(key=lambda e: (e.time_per_token, len(e.chain)))
    best = estimates[0]
    two = [e for e in estimates if len(e.chain) == 2]
    insertion = _insertion(profile, predictor, best, max_gamma)
    appearing = {n for e in estimates for n in e.chain}
    skipped = {}
    for c in profile.candidates:
        if c.name not in appearing:
            skipped[c.name] = _why_never(profile, c.name)
    return SearchResult(
        best=best,
        ranked=estimates,
        best_two_level=two[0] if two else None,
        insertion=insertion,
        autoregressive_time=predictor.autoregressive_time(),
        context=predictor.context,
        skipped=skipped,
    )


def with_best(
    profile: Profile, predictor: Predictor, result: SearchResult, best: Estimate, max_gamma: int = 16
) -> SearchResult:
    """``result`` with another of its ranked plans chosen to run (the insertion analysis redone
    for it; the ranking stays by point estimate)."""
    if best.chain == result.best.chain and best.gammas == result.best.gammas:
        return result
    return replace(result, best=best, insertion=_insertion(profile, predictor, best, max_gamma))


def _why_never(profile: Profile, name: str) -> str:
    if name in profile.screened:
        return f"screened out by the profiler: {profile.screened[name]}"
    if name not in profile.latency:
        return "no latency curve in the profile"
    if not any(p.drafter == name and p.verifier == profile.target for p in profile.pairs) and not any(
        p.drafter == name for p in profile.pairs
    ):
        return "no acceptance measured with it as drafter"
    return "no plannable chain contains it (missing acceptance pairs)"


def _insertion(profile: Profile, predictor: Predictor, best: Estimate, max_gamma: int) -> list[InsertionVerdict]:
    chain, t = best.chain, best.time_per_token
    verdicts = []
    for level, name in enumerate(chain[1:], start=2):
        without = chain[: level - 1] + chain[level:]
        problem = chain_problem(profile, without)
        if problem:
            verdicts.append(
                InsertionVerdict(name, True, level, without, (), None, None, f"cannot be removed: {problem}")
            )
            continue
        e = predictor.best(without, max_gamma)
        gain = e.time_per_token / t
        g_without = [g for i, g in enumerate(best.gammas) if i != level - 2]
        verdicts.append(
            InsertionVerdict(
                name,
                True,
                level,
                without,
                e.gammas,
                e.time_per_token,
                gain,
                f"without it: {_ms(e.time_per_token)}/token vs {_ms(t)} ({(gain - 1) * 100:+.1f}% slower), so it stays",
                _condition(predictor, without, g_without, name, level, best.gammas[level - 2]),
            )
        )
    for cand in profile.candidates:
        if cand.name in chain:
            continue
        trials = []
        for pos in range(1, len(chain) + 1):  # insert before chain[pos] (pos == len: at the bottom)
            trial = chain[:pos] + (cand.name,) + chain[pos:]
            if chain_problem(profile, trial) is None:
                trials.append((pos + 1, trial))
        if not trials:
            verdicts.append(
                InsertionVerdict(
                    cand.name,
                    False,
                    None,
                    None,
                    (),
                    None,
                    None,
                    "no valid position: " + (chain_problem(profile, chain + (cand.name,)) or "not plannable"),
                )
            )
            continue
        scored = [(predictor.best(trial, max_gamma), lvl) for lvl, trial in trials]
        e, lvl = min(scored, key=lambda s: s[0].time_per_token)
        gain = t / e.time_per_token
        verdicts.append(
            InsertionVerdict(
                cand.name,
                False,
                lvl,
                e.chain,
                e.gammas,
                e.time_per_token,
                gain,
                f"best insertion (level {lvl}): {_ms(e.time_per_token)}/token vs {_ms(t)} "
                f"(gain {gain:.3f}x {'< 1' if gain < 1 else '>= 1'}), so it stays out"
                + ("" if gain < 1 else " (no better chain in the searched orders; try --all-orders)"),
                _condition(predictor, chain, list(best.gammas), cand.name, lvl, e.gammas[lvl - 2]),
            )
        )
    return verdicts


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"
