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
        # without the speeds earlier runs of this plan measured (tests/test_speed_memory.py)
        [sys.executable, "-m", "polyplan.cli", "run", str(PLAN), PROMPT, "--max-new-tokens", "24", "--json"]
        + ["--no-speed-memory"],
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


RESERVE_PLAN = ROOT / "profiles" / "epyc-fam26" / "smollm2.plan.json"
LONG_PROMPT = "sum-long-03"  # 1111 tokens: the plan's start runs its reserve at 64 new tokens


@pytest.fixture(scope="module")
def long_prompt(smollm2_pool):
    from polyplan.data.prompt_file import prompt_set
    from polyplan.profiler.pool_inputs import chat_encoder

    path = ROOT / "benchmarks" / "prompts" / "samples" / "long-six.jsonl"
    text = next(p.text for p in prompt_set(path).prompts if p.id == LONG_PROMPT)
    return chat_encoder(smollm2_pool.tokenizer)(text)


@pytest.fixture(scope="module")
def reserve_chain(smollm2_pool):
    if not smollm2_pool.installed().get("smollm2-135m:q8_0"):
        pytest.skip("the smollm2-135m:q8_0 GGUF is missing: run `polyplan models install smollm2`")
    return polyplan.Chain.from_plan(RESERVE_PLAN)


def test_a_plan_runs_its_reserve_on_a_long_prompt_token_identical_to_the_target(reserve_chain, long_prompt):
    """The family-26 AMD plan (target <- :q8_0) carries the n-gram drafter as a reserve: on a
    1111-token prompt at 64 new tokens its start runs the reserve (no prefill), and the output
    equals the target's alone; `--static` never loads it."""
    plan = json.loads(RESERVE_PLAN.read_text())
    reserve = plan["policy"]["names"][len(plan["chain"]) :]
    assert reserve and reserve_chain.names == [*[m["name"] for m in plan["chain"]], *reserve]
    result = reserve_chain.generate(long_prompt, max_new_tokens=64)
    first = result.stats.setting_changes[0]
    assert first["members"] == [plan["chain"][0]["name"], reserve[0]], first
    # the reserve prefills nothing (a later round may still bring the plan's drafter in and pay its
    # prefill, when the request's own evidence says the reserve does not copy here)
    assert result.stats.levels[2].prefill_tokens == 0
    alone = polyplan.Chain([reserve_chain.drafters[0]]).generate(long_prompt, max_new_tokens=64)
    assert result.tokens == alone.tokens
    assert chain_from_plan(RESERVE_PLAN, static=True).names == [m["name"] for m in plan["chain"]]


def test_bench_runs_a_plan_with_a_reserve(reserve_chain, long_prompt, smollm2_pool):
    from polyplan.bench.runner import run_bench
    from polyplan.documents import Plan

    doc = run_bench(
        Plan.load(RESERVE_PLAN),
        RESERVE_PLAN,
        pool=smollm2_pool,
        prompts=1,
        repeats=1,
        max_new_tokens=8,
        encoded_prompts=[(LONG_PROMPT, long_prompt)],
        hf=False,
        llamacpp_alone=False,
    )
    plan_method = next(m for m in doc["methods"] if m["name"] == "polyplan-plan")
    assert plan_method["measured"]["matches_autoregressive"] == 1.0  # the share of runs equal to it
