"""Which chains the planner considers: every subset of the pool that contains the target, in
cost order by default (cheaper models lower) or in every order, point-mass drafters only at the
bottom, and only where the profile measured acceptance for every adjacent (verifier, drafter) pair.

Pure Python: chains are tuples of candidate names, target first."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations, pairwise, permutations

from polyplan.documents.profile import Profile
from polyplan.errors import UserError

Chain = tuple[str, ...]


def unit_cost(profile: Profile, name: str, context: float) -> float:
    """T(1, c): the cost of one single-token forward pass, the planner's notion of "cheaper"."""
    curve = profile.latency.get(name)
    if curve is None:
        raise UserError(f"profile has no latency curve for {name!r}; re-run `polyplan profile`")
    return curve(1, context)


def measured_pairs(profile: Profile) -> set[tuple[str, str]]:
    return {(p.verifier, p.drafter) for p in profile.pairs}


def chain_problem(profile: Profile, chain: Chain) -> str | None:
    """Why ``chain`` cannot be planned from ``profile`` (None when it can)."""
    if not chain or chain[0] != profile.target:
        return f"a chain must start with the target {profile.target!r}"
    if len(set(chain)) != len(chain):
        return "a model appears twice"
    for i, name in enumerate(chain):
        cand = profile.candidate(name)
        if i > 0 and name in profile.screened:
            return f"{name} was screened out by the profiler: {profile.screened[name]}"
        if cand.point_mass and i != len(chain) - 1:
            return f"{name} is a point-mass (model-free) drafter and may only sit at the bottom"
        if i == 0 and cand.point_mass:
            return "the target cannot be a point-mass drafter"
        if name not in profile.latency:
            return f"no latency curve for {name}"
    pairs = measured_pairs(profile)
    for upper, lower in pairwise(chain):
        if (upper, lower) not in pairs:
            return f"no acceptance measured for {lower} drafting for {upper}"
    return None


def enumerate_chains(profile: Profile, *, context: float, all_orders: bool = False) -> Iterator[Chain]:
    """Every plannable chain: target first, then a subset of the other candidates.

    Default order: by measured T(1, c), most expensive right below the target, point-mass
    drafters last. ``all_orders`` tries every permutation of each subset (small pools only)."""
    others = [c.name for c in profile.candidates if c.name != profile.target and c.name in profile.latency]
    # Sort key: point-mass last, then by descending cost (cheaper lower in the chain).
    others.sort(key=lambda n: (profile.candidate(n).point_mass, -unit_cost(profile, n, context), n))
    for size in range(0, len(others) + 1):
        for subset in combinations(others, size):
            orders = permutations(subset) if all_orders else [subset]
            for order in orders:
                chain = (profile.target, *order)
                if chain_problem(profile, chain) is None:
                    yield chain
