"""The plan document: what ``polyplan optimize`` chose, why, and how fast it should be.

JSON layout (version 1)::

    {"schema": "polyplan.plan", "version": 1, "created": "<iso time>",
     "profile": {"path": "<as given>", "sha256": "<of profile.json>", "pool", "target", "machine": {...},
                 "workload": {"name", "sha256", "count", "categories"} (the prompts it was planned for)},
     "settings": {"mode": "greedy"|"sampling", "predictor": "iid"|"replay", "max_gamma", "context",
                  "all_orders", "temperature"},
     "chain": [{"name", "source", "derivation", "dtype", "point_mass"}, ...]   (target first),
     "gammas": [g2, ..., gk],
     "tree_nodes": [n2, ..., nk]  (draft tree size per drafter, 1 = linear; optional, absent = all 1),
     "trees": {"level", "member", "rank_rates", "nodes", "reason", "linear_tokens_per_pass",
               "tree_tokens_per_pass", "predicted_gain"} (why the planner chose the tree size; optional),
     "prediction": {"time_per_token_s", "speedup", "mean_acceptance_length", "tokens_per_pass": [L_1..L_k],
                    "autoregressive_time_per_token_s", "alphas": [...], "unit_latency_s": [T_i(1, c)]},
     "predictions": {"iid": {...same keys...}, "replay": {...} or absent},
     "insertion": [{"model", "included", "level", "compared_chain", "compared_gammas",
                    "compared_time_per_token_s", "gain", "reason"}],
     "runners_up": [{"chain", "gammas", "time_per_token_s", "speedup", "mean_acceptance_length",
                     "tokens_per_pass", "predictor"}],          (ranked, best excluded)
     "two_level": {...an entry like runners_up: the best chain of exactly two levels...} or null,
     "exports": {"sub_plan": {...}, "transformers": {...}, "vllm": {...}, "llama_server": {...} (llama.cpp pairs)}
                or {"note": ...},
     "by_prompt_length": [{"prompt_tokens": [lo, hi], "at", "max_new_tokens", "expected_new_tokens", "members",
                           "gammas", "windows", "request_s", "autoregressive_request_s", "end_to_end_speedup",
                           "decode_speedup", "drafter_prefill_s", "break_even_tokens"}]
               (what a request of that prompt length runs, prefills counted; optional),
     "policy": {...the adaptive executor's precomputed policy: polyplan.planner.policy.Policy.to_dict()}
               (optional: plans written before it existed load without it),
     "choice": {"rule": "robust"|"point", "tolerance", "quantiles": [lo, hi], "spread": {...what was resampled},
                "candidates": [{"chain", "gammas", "time_per_token_s", "speedup", "interval", "near_equal",
                                "chosen"}], "reason"} or {} (plans written before intervals existed) }

``prediction`` and the ``runners_up`` that were considered for the choice also carry
``"interval": {"quantiles": [lo, hi], "time_per_token_s": [lo, hi], "speedup": [lo, hi]}``: the
spread of the prediction under the profile's own spread (polyplan/planner/intervals.py).

Pure Python: the planner writes it, ``polyplan run`` / ``polyplan bench`` read it."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyplan.documents.files import DocumentError, atomic_write_json, read_json

PLAN_SCHEMA = "polyplan.plan"
PLAN_VERSION = 1


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Plan:
    chain: list[dict[str, Any]]
    gammas: list[int]
    prediction: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    insertion: list[dict[str, Any]] = field(default_factory=list)
    runners_up: list[dict[str, Any]] = field(default_factory=list)
    two_level: dict[str, Any] | None = None
    exports: dict[str, Any] = field(default_factory=dict)
    #: the adaptive executor's policy (polyplan.planner.policy); None for plans made before it
    policy: dict[str, Any] | None = None
    #: why this plan among the near-best (rule, candidates with intervals); {} in older plans
    choice: dict[str, Any] = field(default_factory=dict)
    #: per prompt-length range: what a request runs and its predicted end-to-end speedup
    by_prompt_length: list[dict[str, Any]] = field(default_factory=list)
    #: draft tree size per drafter (1 = linear); [] = all linear (plans made before trees)
    tree_nodes: list[int] = field(default_factory=list)
    #: the planner's reasoning about trees (rank rates, sizes compared); {} when not considered
    trees: dict[str, Any] = field(default_factory=dict)
    #: drafter name -> when its greedy drafts end early (polyplan.executor.draft_stop); {} = never
    draft_stop: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    version: int = PLAN_VERSION

    # ---- convenient views --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [m["name"] for m in self.chain]

    @property
    def target(self) -> str:
        return self.chain[0]["name"]

    @property
    def mode(self) -> str:
        return self.settings.get("mode", "greedy")

    @property
    def time_per_token(self) -> float:
        return float(self.prediction["time_per_token_s"])

    # ---- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.chain:
            raise DocumentError("a plan needs a chain of at least one model")
        for m in self.chain:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
                raise DocumentError("every chain entry needs a name")
        if len(set(self.names)) != len(self.names):
            raise DocumentError("a plan's chain lists a model twice")
        if len(self.gammas) != len(self.chain) - 1:
            raise DocumentError(
                f"a chain of {len(self.chain)} models needs {len(self.chain) - 1} gammas, found {len(self.gammas)}"
            )
        if any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in self.gammas):
            raise DocumentError(f"gammas must be integers >= 1, found {self.gammas}")
        if self.tree_nodes and (
            len(self.tree_nodes) != len(self.gammas)
            or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.tree_nodes)
        ):
            raise DocumentError(f"tree_nodes needs one integer >= 1 per drafter, found {self.tree_nodes}")
        for m in self.chain[:-1]:
            if m.get("point_mass"):
                raise DocumentError(f"{m['name']} is a point-mass drafter and may only sit at the bottom")
        tpt = self.prediction.get("time_per_token_s")
        if not isinstance(tpt, (int, float)) or not math.isfinite(tpt) or tpt <= 0:
            raise DocumentError("plan prediction needs a positive finite time_per_token_s")
        L = self.prediction.get("tokens_per_pass")
        if not isinstance(L, list) or len(L) != len(self.chain):
            raise DocumentError("plan prediction needs tokens_per_pass with one entry per level")
        if self.settings.get("mode", "greedy") not in ("greedy", "sampling"):
            raise DocumentError(f"unknown acceptance mode {self.settings.get('mode')!r}")

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "version": self.version,
            "created": self.created,
            "profile": self.profile,
            "settings": self.settings,
            "chain": self.chain,
            "gammas": self.gammas,
            **({"tree_nodes": self.tree_nodes} if any(n > 1 for n in self.tree_nodes) else {}),
            **({"trees": self.trees} if self.trees else {}),
            **({"draft_stop": self.draft_stop} if self.draft_stop else {}),
            "prediction": self.prediction,
            "predictions": self.predictions,
            "insertion": self.insertion,
            "runners_up": self.runners_up,
            "two_level": self.two_level,
            "exports": self.exports,
            **({"policy": self.policy} if self.policy is not None else {}),
            **({"choice": self.choice} if self.choice else {}),
            **({"by_prompt_length": self.by_prompt_length} if self.by_prompt_length else {}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], origin: str = "plan") -> Plan:
        try:
            plan = cls(
                chain=list(doc["chain"]),
                gammas=list(doc["gammas"]),
                prediction=dict(doc["prediction"]),
                settings=dict(doc.get("settings", {})),
                profile=dict(doc.get("profile", {})),
                predictions=dict(doc.get("predictions", {})),
                insertion=list(doc.get("insertion", [])),
                runners_up=list(doc.get("runners_up", [])),
                two_level=doc.get("two_level"),
                exports=dict(doc.get("exports", {})),
                policy=dict(doc["policy"]) if doc.get("policy") is not None else None,
                choice=dict(doc.get("choice") or {}),
                by_prompt_length=list(doc.get("by_prompt_length") or []),
                tree_nodes=list(doc.get("tree_nodes") or []),
                trees=dict(doc.get("trees") or {}),
                draft_stop=dict(doc.get("draft_stop") or {}),
                created=doc.get("created", ""),
                version=doc["version"],
            )
            plan.validate()
        except DocumentError as e:
            raise DocumentError(f"{origin}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise DocumentError(f"{origin}: malformed plan ({type(e).__name__}: {e})") from None
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(path, schema=PLAN_SCHEMA, max_version=PLAN_VERSION), str(path))

    def save(self, path: str | Path) -> None:
        self.validate()
        atomic_write_json(path, self.to_dict())

    def check_profile(self, profile_path: str | Path) -> bool:
        """True when ``profile_path`` is byte-identical to the profile this plan was made from."""
        want = self.profile.get("sha256")
        return bool(want) and Path(profile_path).exists() and file_sha256(profile_path) == want
