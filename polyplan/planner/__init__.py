"""polyplan.planner: search subsets, orders and gammas of a profiled pool; predict; write plans.

Pure Python (theory + numpy): it never loads a model.

    from polyplan.planner import optimize
    plan, result = optimize("profile.json", mode="greedy", predictor="iid")
    plan.save("plan.json")
"""

from polyplan.documents.traces import Traces
from polyplan.planner.chains import Chain, chain_problem, enumerate_chains, unit_cost
from polyplan.planner.exports import transformers_export, vllm_export
from polyplan.planner.optimize import optimize
from polyplan.planner.predictors import (
    MODES,
    PREDICTORS,
    Estimate,
    IidPredictor,
    Predictor,
    ReplayPredictor,
    default_context,
    make_predictor,
)
from polyplan.planner.search import InsertionVerdict, SearchResult, search

__all__ = [
    "Chain",
    "Estimate",
    "IidPredictor",
    "InsertionVerdict",
    "MODES",
    "PREDICTORS",
    "Predictor",
    "ReplayPredictor",
    "SearchResult",
    "chain_problem",
    "default_context",
    "enumerate_chains",
    "Traces",
    "make_predictor",
    "optimize",
    "search",
    "transformers_export",
    "unit_cost",
    "vllm_export",
]
