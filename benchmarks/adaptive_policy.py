"""The adaptive policy of a plan, in numbers (the figures of proofs/adaptive-control.md).

For a plan and its profile: the policy's build time and lookup cost, what it picks at a few
acceptance points, the regret of deciding on a wrong estimate (time per token under the TRUE
acceptance of the setting chosen at the ESTIMATE, over the exact optimum at the truth), the local
sensitivity of log time per token to each pair's acceptance, and the re-probe interval of a
bypassed model drafter. Pure model arithmetic (no model is run).

    .venv/bin/python benchmarks/adaptive_policy.py profiles/smollm2-cpu.plan.json [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from itertools import pairwise
from pathlib import Path

from polyplan.documents import Plan, Profile
from polyplan.documents.traces import Traces
from polyplan.planner.policy import Policy
from polyplan.planner.policy_build import build_policy
from polyplan.planner.predictors import IidPredictor
from polyplan.theory import search_gammas
from polyplan.theory.control import alpha_of_u, evaluate_setting, posterior_mean, relax_tokens, u_of_alpha


def optimum(policy: Policy, latencies, alpha) -> tuple[float, tuple]:
    best = (math.inf, ())
    for table in policy.tables:
        rates = [alpha[p] for p in table.pairs]
        if len(table.members) == 1:
            t = evaluate_setting([], [], latencies[table.members])
            g = ()
        else:
            g, pred = search_gammas(rates, latencies[table.members], max_gamma=policy.max_gamma)
            t = float(pred.time_per_token)
        best = min(best, (t, (table.members, tuple(g))))
    return best


def regret(policy: Policy, latencies, truth, estimate) -> float:
    decision = policy.decide(estimate)
    rates = [truth[p] for p in pairwise(decision.members)]
    chosen = evaluate_setting(rates, decision.gammas, latencies[decision.members])
    return chosen / optimum(policy, latencies, truth)[0] - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan", type=Path)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--margin", type=float, default=None, help="override the policy's margin (default: its own)")
    args = ap.parse_args()
    plan = Plan.load(args.plan)
    profile_path = args.profile or Path(plan.profile["path"])
    if not profile_path.exists():
        profile_path = args.plan.parent / profile_path.name
    profile = Profile.load(profile_path)
    traces = Traces.of_profile(profile, profile_path) if profile.traces else None
    started = time.perf_counter()
    policy = build_policy(
        profile,
        plan.names,
        plan.gammas,
        mode=plan.mode,
        context=plan.settings["context"],
        max_gamma=plan.settings.get("max_gamma", 16),
        traces=traces,
    )
    if args.margin is not None:
        policy.margin = args.margin
    build = time.perf_counter() - started
    predictor = IidPredictor(profile, mode=plan.mode, context=policy.context)
    latencies = {t.members: predictor.latencies(tuple(plan.names[m] for m in t.members)) for t in policy.tables}
    prior = dict(policy.priors)
    out: dict = {
        "plan": str(args.plan),
        "build_s": build,
        "priors": {str(k): v for k, v in prior.items()},
        "prior_strength": {str(k): v for k, v in policy.prior_strength.items()},
        "window": {str(k): v for k, v in policy.window.items()},
    }

    calls = 2000
    started = time.perf_counter()
    for _ in range(calls):
        policy.decide(prior, (0,))
    out["decide_us"] = (time.perf_counter() - started) / calls * 1e6

    # what it picks: the target pair at the profile's value or lower, every point-mass pair alike
    picks = []
    model_pairs = [p for p in prior if not policy.point_mass[p[1]]]
    pm_pairs = [p for p in prior if policy.point_mass[p[1]]]
    for a_model in (prior[model_pairs[0]] if model_pairs else None, 0.9, 0.7):
        for a_pm in (0.95, 0.8, prior[pm_pairs[0]] if pm_pairs else 0.5, 0.3, 0.1, 0.02):
            alpha = {p: (a_model if p in model_pairs else a_pm) for p in prior}
            if a_model is None:
                alpha = {p: a_pm for p in prior}
            d = policy.decide(alpha)
            opt_t, opt = optimum(policy, latencies, alpha)
            picks.append(
                {
                    "alpha_model": a_model,
                    "alpha_point_mass": a_pm,
                    "members": d.members,
                    "gammas": d.gammas,
                    "rule": d.rule,
                    "ms_per_token": d.time_per_token * 1e3,
                    "exact_optimum": opt,
                    "optimum_ms": opt_t * 1e3,
                    "regret_vs_exact_optimum": d.time_per_token / opt_t - 1,
                }
            )
    out["picks"] = picks

    # regret of a wrong estimate. Errors in u = -log2(1 - alpha): (1 - alpha) off by a factor
    # 2**du (an error of 0.02 at alpha 0.98 is du = 1, at alpha 0.5 it is du = 0.06).
    cache: dict = {}

    def opt(truth):
        key = tuple(sorted(truth.items()))
        if key not in cache:
            cache[key] = optimum(policy, latencies, truth)[0]
        return cache[key]

    def regret_cached(truth, est):
        d = policy.decide(est)
        rates = [truth[q] for q in pairwise(d.members)]
        return evaluate_setting(rates, d.gammas, latencies[d.members]) / opt(truth) - 1

    truths = []
    for a_model in (prior[model_pairs[0]] if model_pairs else 0.5, 0.95, 0.9):
        for a_pm in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
            truths.append({q: (a_model if q in model_pairs else a_pm) for q in prior})
    rows = []
    for du in (0.25, 0.5, 1.0):
        worst, where = 0.0, None
        for truth in truths:
            for s_model in (-1, 0, 1):
                for s_pm in (-1, 0, 1):
                    est = {
                        q: alpha_of_u(max(0.0, u_of_alpha(truth[q]) + du * (s_model if q in model_pairs else s_pm)))
                        for q in prior
                    }
                    r = regret_cached(truth, est)
                    if r > worst:
                        worst, where = (
                            r,
                            {
                                "truth": {str(k): v for k, v in truth.items()},
                                "estimate": {str(k): v for k, v in est.items()},
                            },
                        )
        rows.append({"du": du, "worst_regret": worst, "at": where})
    out["regret_worst_case"] = rows

    # expected regret under the estimator's own noise at stationarity: about one Bernoulli trial
    # per committed token and pair, forgotten with the pair's window W (N = W trials), Beta prior
    # of strength n0 at the profile's value (so the estimate is also biased towards the prior)
    rng = random.Random(0)
    draws = 40
    expected = []
    for truth in truths:
        total = 0.0
        for _ in range(draws):
            est = {}
            for q in prior:
                n = policy.window[q]
                hits = sum(rng.random() < truth[q] for _ in range(int(round(n))))
                est[q] = posterior_mean(prior[q], policy.prior_strength[q], hits, round(n))
            total += regret_cached(truth, est)
        full = tuple(range(len(plan.names)))
        static = evaluate_setting([truth[q] for q in pairwise(full)], plan.gammas, latencies[full]) / opt(truth) - 1
        expected.append(
            {
                "truth": {str(k): v for k, v in truth.items()},
                "expected_regret": total / draws,
                "static_plan_regret": static,
            }
        )
    out["regret_expected"] = expected

    # sensitivity: d log t / d alpha of each setting at the profile's acceptance (central differences)
    sens = {}
    for table in policy.tables:
        if len(table.members) == 1:
            continue
        lat = latencies[table.members]
        rates = [prior[p] for p in table.pairs]
        g, _ = search_gammas(rates, lat, max_gamma=policy.max_gamma)
        grads = []
        for i in range(len(rates)):
            h = 1e-3
            up, dn = list(rates), list(rates)
            up[i] = min(0.9999, up[i] + h)
            dn[i] = up[i] - 2 * h
            grads.append((math.log(evaluate_setting(up, g, lat)) - math.log(evaluate_setting(dn, g, lat))) / (2 * h))
        sens[",".join(map(str, table.members))] = grads
    out["dlog_time_dalpha_at_prior"] = sens

    # re-probe: a model pair driven to 0.5 by evidence, then bypassed
    if model_pairs:
        p = model_pairs[0]
        n0 = policy.prior_strength[p]
        trials = policy.window[p]  # about one trial per committed token, forgotten with memory W
        est = 0.5
        threshold = None
        for a in [x / 200 for x in range(100, 200)]:
            alpha = {**prior, p: a}
            for q in pm_pairs:
                alpha[q] = 0.05
            if p[1] in policy.decide(alpha).members:
                threshold = a
                break
        out["reprobe"] = {
            "pair": str(p),
            "prior": prior[p],
            "prior_strength": n0,
            "estimate": est,
            "threshold": threshold,
            "tokens": None
            if threshold is None
            else relax_tokens(policy.window[p], trials, est, threshold, prior[p], n0),
        }
    text = json.dumps(out, indent=1, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
