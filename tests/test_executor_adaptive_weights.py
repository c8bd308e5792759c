"""The committed SmolLM2 plan run as `polyplan run PLAN` runs it (adaptive) on the real pool:
greedy output token-identical to the float32 target's own ``generate`` on a prompt where the
n-gram's drafts are mostly rejected (so the controller changes the chain mid-generation), and
``polyplan.Chain.from_plan`` produces exactly what the CLI produces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polyplan
from polyplan.assemble import chain_from_plan
from polyplan.executor.adaptive import AdaptiveController

pytestmark = pytest.mark.weights

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "profiles" / "smollm2-cpu.plan.json"
PROMPT = "Zqx 7 blorf: vantis oru pel, 93 ximbra tollu. Write four unrelated words, then count backwards from 41."
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def chain(smollm2_pool):
    return polyplan.Chain.from_plan(PLAN)


def test_from_plan_is_the_plans_chain_with_the_adaptive_controller(chain):
    plan = json.loads(PLAN.read_text())
    assert chain.names == [m["name"] for m in plan["chain"]] and chain.gammas == plan["gammas"]
    assert isinstance(chain.controller, AdaptiveController)
    assert chain.controller.shadow.keys() == {2}  # the n-gram is shadow-checked
    static = chain_from_plan(PLAN, static=True)
    assert static.controller is None and static.names == chain.names


def test_adaptive_plan_is_token_identical_to_the_target(chain, smollm2_pool):
    tok = smollm2_pool.tokenizer
    ids = tok(PROMPT)["input_ids"]
    seconds_before = chain.controller.seconds  # it accumulates over the module's generations
    result = chain.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=[])
    decision_seconds = chain.controller.seconds - seconds_before
    target = smollm2_pool.drafter("smollm2-135m").model
    with torch.inference_mode():
        x = torch.tensor([ids])
        ref = target.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tok.eos_token_id,
        )[0, len(ids) :].tolist()
    assert result.tokens == ref
    # the first entry is the setting the generation starts with (at token 0); a change comes later
    first, *later = result.stats.setting_changes
    assert first["at_token"] == 0
    assert later and all(c["at_token"] > 0 for c in later), "the controller never changed the chain on a hostile prompt"
    # decision cost of this generation: a small fraction of its wall time (a loose bound: both are
    # real-clock times on a shared CPU; benchmarks/adaptive_overhead.py measures the cost itself)
    assert 0 < decision_seconds < 0.25 * result.stats.wall_time_s


def test_from_plan_generates_what_polyplan_run_generates(smollm2_pool):
    """The same tokens, and the same first setting from a fresh chain (the start prices with the
    plan's costs until the chain has measured its members). Later settings may differ: the guard
    and the members' measured speeds act on wall time, which differs between two processes."""
    chain = polyplan.Chain.from_plan(PLAN)
    out = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "run", str(PLAN), PROMPT, "--max-new-tokens", "24", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    ids = smollm2_pool.tokenizer(PROMPT)["input_ids"]
    mine = chain.generate(ids, max_new_tokens=24)
    assert doc["tokens"] == mine.tokens
    first = doc["stats"]["setting_changes"][0]
    assert (first["at_token"], first["members"], first["gammas"]) == (
        0,
        mine.stats.setting_changes[0]["members"],
        mine.stats.setting_changes[0]["gammas"],
    )
