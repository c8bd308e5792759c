"""polyplan bench end to end on tiny random models (fast), and a SmolLM2 smoke test (weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from polyplan.bench.report import markdown_table
from polyplan.bench.results import load_results, save_results
from polyplan.bench.runner import run_bench
from polyplan.documents import Plan
from polyplan.models.model_drafter import ModelDrafter
from polyplan.models.model_free import PromptLookupDrafter
from polyplan.planner import optimize

from test_planner import make_profile, save
from tiny_models import perturbed_copy, tiny_llama

VOCAB = 16


class TinyPool:
    """What run_bench needs of a pool: drafters by name (float32 tiny llamas + prompt lookup)."""

    def __init__(self) -> None:
        target = tiny_llama(VOCAB, num_layers=2, seed=0, logit_scale=4.0)
        self.made = {
            "target": ModelDrafter(target, "target"),
            # perturbed copies of the target: agree often, not always
            "mid": ModelDrafter(perturbed_copy(target, 0.02, seed=123), "mid"),
            "tiny": ModelDrafter(perturbed_copy(target, 0.08, seed=123), "tiny"),
            "lookup": PromptLookupDrafter(VOCAB, name="lookup"),
        }
        self.tokenizer = None

    def drafter(self, name: str):
        return self.made[name]


PROMPTS = [("p0", [0, 3, 5, 7, 3, 5, 7, 3, 5]), ("p1", [0, 2, 4, 6, 8, 10, 2, 4])]


@pytest.fixture
def tiny_plan(tmp_path):
    costs = {"target": 1.0, "mid": 0.25, "tiny": 0.01, "lookup": 0.0001}
    alphas = {
        ("target", "mid"): 0.92,
        ("target", "tiny"): 0.55,
        ("mid", "tiny"): 0.85,
        ("target", "lookup"): 0.3,
        ("mid", "lookup"): 0.3,
        ("tiny", "lookup"): 0.3,
    }
    prof = make_profile(costs, alphas, point_mass=("lookup",))
    plan, _ = optimize(save(tmp_path, prof), top=2, max_gamma=3)  # small gammas keep the tiny runs fast
    path = tmp_path / "plan.json"
    plan.save(path)
    return plan, path


def test_bench_end_to_end_on_tiny_models(tiny_plan, tmp_path):
    plan, path = tiny_plan
    assert len(plan.names) >= 3  # the synthetic profile makes a polybasic plan
    doc = run_bench(
        plan, path, pool=TinyPool(), prompts=2, repeats=2, max_new_tokens=8, encoded_prompts=PROMPTS, eos=[]
    )
    names = [m["name"] for m in doc["methods"]]
    # the chosen plan as `polyplan run` runs it (adaptive), beside the same plan static
    assert names == [
        "autoregressive",
        "hf-assisted-default",
        "hf-assisted-gamma",
        "polyplan-two-level",
        "polyplan-plan",
        "polyplan-plan-static",
    ]
    # Interleaved: A B C D ... per prompt, per repeat.
    runs = doc["runs"]
    k = len(names)
    assert [r["method"] for r in runs[:k]] == names and [r["method"] for r in runs[k : 2 * k]] == names
    assert {r["prompt"] for r in runs[:k]} == {"p0"}
    assert len(runs) == k * 2 * 2
    for m in doc["methods"]:
        me = m["measured"]
        assert me["new_tokens"] == 8 * 2 * 2  # eos disabled: every run makes all its tokens
        assert me["time_per_token_s"] > 0 and me["tokens_per_s"] > 0 and me["speedup"] > 0
        if m["name"] != "autoregressive":
            assert me["matches_autoregressive"] == 1.0, m["name"]  # greedy, float32: lossless
        if m["engine"] == "polyplan":
            assert len(me["tokens_per_pass"]) == len(m["chain"])
            assert len(me["mean_acceptance_length"]) == len(m["chain"]) - 1
            assert all(x >= 1.0 for x in me["mean_acceptance_length"])
            assert set(m["predicted"]) == {"iid"} and m["error"]["iid"] >= 0
            assert set(m["error_speedup"]) == {"iid"} and m["error_speedup"]["iid"] >= 0
            assert len(m["predicted_levels"]["iid"]["tokens_per_pass"]) == len(m["chain"])
    ar = doc["methods"][0]
    assert ar["measured"]["speedup"] == pytest.approx(1.0)
    assert doc["regret"] is None
    out = tmp_path / "bench.json"
    save_results(out, doc)
    again = load_results(out)
    assert again["methods"] == json.loads(json.dumps(doc["methods"]))
    md = markdown_table(again)
    assert md.count("\n| ") >= len(names) + 1


def test_bench_grid_measures_the_regret(tiny_plan):
    plan, path = tiny_plan
    doc = run_bench(
        plan,
        path,
        pool=TinyPool(),
        prompts=1,
        repeats=1,
        max_new_tokens=6,
        grid=True,
        hf=False,
        encoded_prompts=PROMPTS,
        eos=[],
    )
    grid = [m for m in doc["methods"] if m["name"].startswith("grid-")]
    assert grid, "no grid points"
    ranked = [m for m in grid if m["name"].startswith("grid-rank")]
    assert [m["chain"] for m in ranked] == [r["chain"] for r in plan.runners_up if len(r["chain"]) > 1][: len(ranked)]
    r = doc["regret"]
    polyplan_times = [m["measured"]["time_per_token_s"] for m in doc["methods"] if m["engine"] == "polyplan"]
    chosen = next(m for m in doc["methods"] if m["name"] == r["chosen"])
    assert r["regret"] == pytest.approx(chosen["measured"]["time_per_token_s"] / min(polyplan_times) - 1)
    assert "Regret" in markdown_table(doc)


def test_bench_sampling_plan_runs_and_is_seeded(tiny_plan, tmp_path):
    plan, path = tiny_plan
    doc = json.loads(path.read_text())
    doc["settings"]["mode"] = "sampling"
    path.write_text(json.dumps(doc))
    plan = Plan.load(path)
    res = run_bench(
        plan, path, pool=TinyPool(), prompts=1, repeats=1, max_new_tokens=6, hf=False, encoded_prompts=PROMPTS, eos=[]
    )
    assert res["settings"]["temperature"] == 1.0
    assert [m["name"] for m in res["methods"]] == [
        "autoregressive",
        "polyplan-two-level",
        "polyplan-plan",
        "polyplan-plan-static",
    ]


def _tiny_bench(plan, path, **kw):
    """One short run of a tiny plan on the first prompt (no transformers methods); ``kw`` overrides."""
    settings = dict(pool=TinyPool(), prompts=1, repeats=1, max_new_tokens=6, hf=False, encoded_prompts=PROMPTS, eos=[])
    return run_bench(plan, path, **(settings | kw))


def _static_bench(plan, path, **kw):
    """One short static run of the tiny plan on the first prompt (no transformers methods)."""
    return _tiny_bench(plan, path, static=True, **kw)


def test_bench_static_runs_the_plan_unchanged(tiny_plan):
    plan, path = tiny_plan
    res = _static_bench(plan, path)
    assert [m["name"] for m in res["methods"]] == ["autoregressive", "polyplan-two-level", "polyplan-plan"]


def test_a_tree_plan_whose_linear_chain_is_the_best_two_level_plan_runs_it_once(tiny_plan, tmp_path):
    from dataclasses import replace

    plan, _ = tiny_plan
    two = plan.two_level
    pair = [c for c in plan.chain if c["name"] in two["chain"]]
    prediction = {**plan.prediction, "tokens_per_pass": plan.prediction["tokens_per_pass"][:2]}
    tree_plan = replace(
        plan, chain=pair, gammas=list(two["gammas"]), tree_nodes=[6], policy=None, prediction=prediction
    )
    path = tmp_path / "tree-plan.json"
    tree_plan.save(path)
    res = _static_bench(tree_plan, path)
    rows = {m["name"]: m for m in res["methods"]}
    assert list(rows) == ["autoregressive", "polyplan-two-level", "polyplan-plan"]
    assert rows["polyplan-plan"]["tree_nodes"] == [6]
    assert "without trees" in rows["polyplan-two-level"]["label"]


def test_bench_refuses_bad_settings(tiny_plan):
    from polyplan.errors import UserError

    plan, path = tiny_plan
    with pytest.raises(UserError):
        run_bench(plan, path, pool=TinyPool(), prompts=1, repeats=0, encoded_prompts=PROMPTS, eos=[])


class ByteTokenizer:
    """Text -> ids for TinyPool: bytes modulo the vocabulary; "LONG" makes a 300-token prompt."""

    chat_template = None

    def __call__(self, text: str) -> dict:
        return {"input_ids": [0] * 300 if "LONG" in text else [b % VOCAB for b in text.encode()[:12]]}


def _file_pool() -> TinyPool:
    pool = TinyPool()
    pool.tokenizer = ByteTokenizer()
    return pool


def test_bench_on_a_prompt_file_reports_each_category(tiny_plan, tmp_path):
    from polyplan.bench.report import category_rows

    plan, path = tiny_plan
    pf = tmp_path / "mine.jsonl"
    pf.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"id": "r1", "category": "rag", "text": "context: abc abc. question?"},
                {"id": "m1", "category": "math", "turns": ["2 + 2 = ?", "and 3 + 3?"]},
                {"id": "r2", "category": "rag", "text": "more context, and a question"},
            ]
        )
    )
    doc = run_bench(
        plan, path, pool=_file_pool(), prompts=3, repeats=1, max_new_tokens=6, hf=False, eos=[], prompts_file=pf
    )
    assert doc["complete"] and doc["workload"]["name"] == "mine.jsonl" and doc["workload"]["count"] == 3
    assert {r["prompt"] for r in doc["runs"]} == {"r1", "m1", "r2"}
    cats = doc["by_category"]
    assert set(cats) == {"rag", "math"} and cats["rag"]["prompts"] == 2
    names = [m["name"] for m in doc["methods"]]
    for c in cats.values():
        assert list(c["methods"]) == names
        assert all(f["tokens_per_s"] > 0 and f["speedup"] > 0 for f in c["methods"].values())
        assert all(f["matches_autoregressive"] == 1.0 for n, f in c["methods"].items() if n != "autoregressive")
    labels, rows = category_rows(doc)
    assert [r[0] for r in rows] == ["rag", "math", "all"] and len(labels) == len(names) - 1
    md = markdown_table(doc)
    assert "Per category (mine.jsonl)" in md and "| rag | 2 |" in md and "| all | 3 |" in md


def test_bench_one_category_equals_overall(tiny_plan):
    plan, path = tiny_plan
    doc = run_bench(
        plan,
        path,
        pool=TinyPool(),
        prompts=2,
        repeats=2,
        max_new_tokens=6,
        hf=False,
        eos=[],
        encoded_prompts=PROMPTS,
        prompt_categories={"p0": "x", "p1": "x"},
    )
    for m in doc["methods"]:
        for k in ("time_per_token_s", "tokens_per_s", "speedup"):
            assert doc["by_category"]["x"]["methods"][m["name"]][k] == pytest.approx(m["measured"][k])


def test_bench_prompt_longer_than_the_context_fails_before_running(tiny_plan, tmp_path):
    from polyplan.errors import UserError

    plan, path = tiny_plan
    pf = tmp_path / "long.txt"
    pf.write_text("a fine prompt\nLONG prompt\n")
    calls = []
    with pytest.raises(UserError, match=r"long\.txt:2: prompt 'long-2' needs 300 tokens \+ 6 new but \w+ holds 256"):
        run_bench(
            plan,
            path,
            pool=_file_pool(),
            prompts=2,
            repeats=1,
            max_new_tokens=6,
            hf=False,
            eos=[],
            prompts_file=pf,
            log=calls.append,
        )
    assert not any("repeat" in c for c in calls)


def test_bench_interrupted_keeps_the_prompt_runs_measured(tiny_plan, tmp_path):
    plan, path = tiny_plan

    def log(message: str) -> None:
        if message.startswith("repeat 2/2, prompt p0"):
            raise KeyboardInterrupt

    doc = run_bench(
        plan,
        path,
        pool=TinyPool(),
        prompts=2,
        repeats=2,
        max_new_tokens=6,
        hf=False,
        eos=[],
        encoded_prompts=PROMPTS,
        log=log,
    )
    assert doc["complete"] is False and doc["stopped"] == "interrupted after 3 of 4 prompt runs"
    k = len(doc["methods"])
    assert len(doc["runs"]) == 3 * k
    assert all(m["measured"]["tokens_per_s"] > 0 for m in doc["methods"])
    out = tmp_path / "partial.json"
    save_results(out, doc)
    assert "**Incomplete**: interrupted after 3 of 4" in markdown_table(load_results(out))


def test_cli_bench_missing_plan_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "bench", str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.weights
def test_bench_smollm2_smoke(tmp_path):
    """Real weights, tiny settings: profile -> optimize -> bench through the CLI."""
    from polyplan.weights import load_pool

    pool = load_pool("smollm2")
    if not all(ok for name, ok in pool.installed().items() if not pool.member(name).llama_cpp):
        pytest.skip("smollm2 pool not installed (polyplan models install smollm2)")
    env = {**os.environ, "COLUMNS": "200"}
    prof = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "polyplan.cli"]
    r = subprocess.run(
        cmd
        + [
            "profile",
            "--pool",
            "smollm2",
            "--members",
            "smollm2-135m:bf16,prompt-lookup",
            "-o",
            str(prof),
            "--prompts",
            "2",
            "--max-new-tokens",
            "16",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--contexts",
            "64",
            "--new-tokens",
            "1,4,16",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-500:]
    plan = tmp_path / "plan.json"
    r = subprocess.run(cmd + ["optimize", str(prof), "-o", str(plan)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bench.json"
    r = subprocess.run(
        cmd + ["bench", str(plan), "-o", str(out), "--prompts", "1", "--repeats", "1", "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    doc = load_results(out)
    assert doc["methods"][0]["name"] == "autoregressive"
    for m in doc["methods"]:
        assert m["measured"]["time_per_token_s"] > 0
        if m["engine"] == "polyplan":
            assert m["predicted"]["iid"] > 0 and "replay" in m["predicted"]  # the profile has traces
    # a plan with a drafter (which one wins here is this CPU's timing): the calibration timed its members
    # before the repeat and each request is priced both ways; the target alone has no start to price
    speed = doc["settings"]["speed"]
    if len(doc["plan"]["chain"]) > 1:
        assert speed["smollm2-135m"]["decode"] > 0 and speed["smollm2-135m"]["prefill"] > 0
        errors = doc["requests"]["errors"]["autoregressive"]
        assert errors["calibrated_median_error"] >= 0 and errors["median_error"] >= 0
        assert "time now / as profiled" in (tmp_path / "bench.md").read_text()
        # the adaptive plan's runs carry the speed its start re-timed by, and are priced with it
        plan_runs = [r for r in doc["runs"] if r["method"] == "polyplan-plan"]
        assert plan_runs and all(isinstance(r["start_speed"], dict) for r in plan_runs)
        assert all(r["start_setting"]["members"][0] == 0 for r in plan_runs)
        assert doc["requests"]["errors"]["polyplan-plan"]["retimed_median_error"] >= 0
    else:
        assert speed is None and doc["requests"] is None


def _timed(name: str, by_repeat: list[float]) -> dict:
    import statistics

    return {
        "name": name,
        "engine": "polyplan",
        "chain": [name],
        "gammas": [],
        "measured": {"time_per_token_s": statistics.median(by_repeat), "time_per_token_by_repeat_s": by_repeat},
    }


def test_regret_pairs_repeats_so_drifting_load_cancels():
    from polyplan.bench.results import regret

    # Repeat 2 ran under load (everything 2x slower). Paired, "other" is 5% faster every repeat.
    chosen = _timed("chosen", [1.0, 2.0, 1.0])
    other = _timed("other", [0.95, 1.90, 0.95])
    slow = _timed("slow", [1.2, 2.4, 1.2])
    r = regret([chosen, other, slow], "chosen")
    assert r["best_measured"] == "other" and r["regret"] == pytest.approx(1 / 0.95 - 1)
    # The chosen plan faster than every other: no regret, and it is its own best.
    r = regret([chosen, slow], "chosen")
    assert r["best_measured"] == "chosen" and r["regret"] == 0.0
    assert regret([other, slow], "chosen") is None


def test_time_per_token_takes_each_prompts_median_over_repeats():
    from polyplan.bench.results import MethodSpec, RunRecord, summarize

    spec = MethodSpec("autoregressive", "ar", "transformers", ["t"], [])
    # prompt a: 1 s, 1 s and one disturbed 9 s run; prompt b: 2 s each; 10 tokens per run
    runs = [RunRecord("autoregressive", "a", rep, 10, s) for rep, s in enumerate([1.0, 9.0, 1.0])]
    runs += [RunRecord("autoregressive", "b", rep, 10, 2.0) for rep in range(3)]
    (m,) = summarize([spec], runs)
    assert m["measured"]["time_per_token_s"] == pytest.approx((1.0 + 2.0) / 20)
    assert m["measured"]["time_per_token_by_repeat_s"] == pytest.approx([0.15, 0.55, 0.15])


def test_worst_prompt_and_prompt_length_buckets_pair_each_prompt_with_the_target_alone():
    from polyplan.bench.results import MethodSpec, RunRecord, by_prompt_length, length_bucket, summarize

    ar = MethodSpec("autoregressive", "ar", "transformers", ["t"], [])
    plan = MethodSpec("polyplan-plan", "plan", "polyplan", ["t", "d"], [4])
    # prompt s (short): the plan 2x faster; prompt l (long): the plan 10% slower (its drafter's prefill)
    times = {("autoregressive", "s"): 2.0, ("polyplan-plan", "s"): 1.0, ("autoregressive", "l"): 5.0}
    times[("polyplan-plan", "l")] = 5.5
    runs = [RunRecord(m, p, rep, 10, t * (1 + rep)) for (m, p), t in times.items() for rep in range(2)]
    _, m = summarize([ar, plan], runs)
    assert m["measured"]["worst_prompt_speedup"] == pytest.approx(5.0 / 5.5)
    assert m["measured"]["worst_prompt"] == "l"
    buckets = by_prompt_length([ar, plan], runs, runs, {"s": 100, "l": 900})
    assert list(buckets) == [length_bucket(100), length_bucket(900)] == ["0-255", "512-1023"]
    assert buckets["0-255"]["methods"]["polyplan-plan"]["end_to_end_speedup"] == pytest.approx(2.0)
    assert buckets["512-1023"]["methods"]["polyplan-plan"]["worst_prompt_end_to_end_speedup"] == pytest.approx(5 / 5.5)
    assert length_bucket(5000) == ">= 2048"


def test_prompts_the_start_sent_to_the_target_alone_are_told_apart_from_speculation():
    """A prompt the plan ran with no drafter pass in any repeat is the same work as autoregressive
    decoding: the bench reports the spread of its ratios and the worst prompt where it speculated."""
    from polyplan.bench.report import alone_lines
    from polyplan.bench.results import MethodSpec, RunRecord, summarize

    ar = MethodSpec("autoregressive", "ar", "transformers", ["t"], [])
    plan = MethodSpec("polyplan-plan", "plan", "polyplan", ["t", "d"], [4])
    used = [{"name": "t", "passes": 3}, {"name": "d", "passes": 12}]
    alone = [{"name": "t", "passes": 10}, {"name": "d", "passes": 0}]
    runs = []
    for rep, (ar_long, plan_long) in enumerate([(5.0, 5.5), (5.0, 4.8)]):
        runs += [
            RunRecord("autoregressive", "s", rep, 10, 2.0),
            RunRecord("polyplan-plan", "s", rep, 10, 1.25 if rep else 1.0, levels=used),
            RunRecord("autoregressive", "l", rep, 10, ar_long),
            RunRecord("polyplan-plan", "l", rep, 10, plan_long, levels=alone),
        ]
    _, m = summarize([ar, plan], runs)
    me = m["measured"]
    assert me["worst_prompt"] == "l" and me["target_alone_prompts"] == ["l"]
    assert me["target_alone_ratio_range"] == pytest.approx([5.0 / 5.5, 5.0 / 4.8])
    assert me["worst_prompt_speculating"] == "s"
    assert me["worst_prompt_speculating_end_to_end_speedup"] == pytest.approx((2.0 + 1.6) / 2)
    doc = {"methods": [{"name": "polyplan-plan", "measured": me}]}
    assert alone_lines(doc) == [
        "polyplan-plan: 1 prompt(s) ran the target alone, their repeats 0.91-1.04x of autoregressive for the "
        "same work; worst prompt where it speculated 1.80x (s)"
    ]
    # a one-member chain (the target's verification numerics) has no start: nothing to tell apart
    one = [RunRecord("reference", r.prompt, r.repeat, 10, r.seconds, levels=r.levels[:1]) for r in runs if r.levels]
    _, m = summarize([ar, MethodSpec("reference", "ref", "polyplan", ["t"], [])], runs[::2] + one)
    assert "target_alone_prompts" not in m["measured"]
    # a prompt drafted in one repeat of two is a prompt where it speculated
    runs[-1] = RunRecord("polyplan-plan", "l", 1, 10, 4.8, levels=used)
    _, m = summarize([ar, plan], runs)
    assert "target_alone_prompts" not in m["measured"]
    # a model-free drafter makes no passes: what the target was given to verify tells
    ngram = [{"name": "t", "passes": 4, "drafted": 9, "accepted": 6}, {"name": "ngram", "passes": 0}]
    runs[-1] = RunRecord("polyplan-plan", "l", 1, 10, 4.8, levels=ngram)
    _, m = summarize([ar, plan], runs)
    assert "target_alone_prompts" not in m["measured"]
    runs[-1] = RunRecord("polyplan-plan", "l", 1, 10, 4.8, levels=[{**ngram[0], "drafted": 0}, ngram[1]])
    _, m = summarize([ar, plan], runs)
    assert m["measured"]["target_alone_prompts"] == ["l"]
    # a record from before ``drafted``: tokens the target accepted
    runs[-1] = RunRecord("polyplan-plan", "l", 1, 10, 4.8, levels=[{"name": "t", "accepted": 6}, ngram[1]])
    _, m = summarize([ar, plan], runs)
    assert "target_alone_prompts" not in m["measured"]


def test_decode_only_time_subtracts_the_prefill_the_executor_timed():
    from polyplan.bench.results import MethodSpec, RunRecord
    from polyplan.bench.runner import BenchMethod, decode_records

    spec = MethodSpec("polyplan-plan", "plan", "polyplan", ["t", "d"], [4])
    method = BenchMethod(spec, ["t", "d"], lambda *a: ([], None))
    # the drafter was never used (lazy prefill): only the target's prefill is subtracted, not the
    # drafter's separately timed prefill
    levels = [{"prefill_time_s": 0.5}, {"prefill_time_s": 0.0}]
    (rec,) = decode_records([RunRecord("polyplan-plan", "p", 0, 10, 3.0, levels)], [method], {("p", "d"): 2.0})
    assert rec.seconds == pytest.approx(2.5)
    (old,) = decode_records([RunRecord("polyplan-plan", "p", 0, 10, 3.0)], [method], {("p", "d"): 2.0, ("p", "t"): 0.5})
    assert old.seconds == pytest.approx(0.5)


def test_bench_also_runs_the_chains_asked_for_in_the_same_run(tiny_plan):
    """--also: a chain the plan did not choose (e.g. the realistic pair beside the plan) is measured
    side by side; one that is already measured is not run twice."""
    from polyplan.commands.bench import parse_also

    plan, path = tiny_plan
    same_as_plan = ",".join(plan.names) + "/" + ",".join(map(str, plan.gammas))
    also = [
        parse_also("target,tiny/2", "target"),
        parse_also(same_as_plan, "target"),
        parse_also("target,tiny/2/6", "target"),
    ]
    res = _static_bench(plan, path, also=also)
    rows = {m["name"]: m for m in res["methods"]}
    assert list(rows) == ["autoregressive", "polyplan-two-level", "polyplan-plan", "also-1", "also-2"], res.get(
        "skipped"
    )
    assert rows["also-1"]["chain"] == ["target", "tiny"] and rows["also-1"]["gammas"] == [2]
    assert rows["also-1"]["measured"]["matches_autoregressive"] == 1.0
    # the same pair drafting a tree of 6 nodes: its own row, lossless too
    assert rows["also-2"]["tree_nodes"] == [6] and rows["also-2"]["measured"]["matches_autoregressive"] == 1.0


def test_bench_also_runs_the_target_alone_in_polyplans_loop(tiny_plan):
    """--also TARGET: the target alone in polyplan's own loop (what the request model prices as the
    target alone), a row beside generate()'s, the same tokens."""
    from polyplan.commands.bench import parse_also

    plan, path = tiny_plan
    assert parse_also("target", "target") == (["target"], [], [])
    res = _static_bench(plan, path, also=[parse_also("target", "target"), parse_also("target", "target")])
    rows = {m["name"]: m for m in res["methods"]}
    assert list(rows) == ["autoregressive", "polyplan-two-level", "polyplan-plan", "also-1"], res.get("skipped")
    assert rows["also-1"]["chain"] == ["target"] and rows["also-1"]["gammas"] == []
    assert rows["also-1"]["engine"] == "polyplan" and "alone" in rows["also-1"]["label"]
    assert rows["also-1"]["measured"]["matches_autoregressive"] == 1.0


def test_the_target_alone_is_not_asked_for_twice_where_its_own_loop_is_the_baseline():
    """A llama.cpp target's baseline already is its own loop, and an exact target's reference decodes
    it alone in polyplan: ``--also TARGET`` adds no row there; beside generate() it does."""
    from polyplan.bench.methods import BenchMethod, also_methods
    from polyplan.bench.results import REFERENCE, MethodSpec

    def row(name: str, engine: str) -> BenchMethod:
        return BenchMethod(MethodSpec(name, name, engine, ["target"], []), ["target"], lambda *a: ([], None))

    asked = [(["target"], [], [])]
    for baseline, expect in (
        ([row("autoregressive", "llama.cpp")], 0),
        ([row("autoregressive", "transformers"), row(REFERENCE, "polyplan")], 0),
        ([row("autoregressive", "transformers")], 1),
    ):
        notes: list[str] = []
        assert len(also_methods(baseline, asked, TinyPool().drafter, 0.0, [], notes.append)) == expect, baseline
        assert len(notes) == 1 - expect and all("measured already" in n for n in notes)  # said, not dropped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("target,tiny", "give the chain"),
        ("target,tiny/0", "one gamma >= 1 per drafter"),
        ("target,mid,tiny/3", "one gamma >= 1 per drafter"),
        ("mid,tiny/3", "must start with the plan's target target"),
        ("target,tiny/3/0", "one tree size >= 1 per drafter"),
        ("target,tiny/3/x", "one tree size >= 1 per drafter"),
        ("target,tiny/3/4/5", "give the chain"),
    ],
)
def test_bad_also_chains_are_one_line(text, message):
    from polyplan.commands.bench import parse_also
    from polyplan.errors import UserError

    with pytest.raises(UserError, match=message) as info:
        parse_also(text, "target")
    assert "\n" not in str(info.value)


# ---- the llama.cpp-alone speed reference ---------------------------------------------------------


def _fake_llamacpp_alone(pool: TinyPool, wrong_prompt: str):
    """A stand-in for the llama.cpp-alone row on tiny models: the target's greedy tokens (computed
    once, so it is the fastest row), with the last token changed on ``wrong_prompt`` (a quantized
    copy's near-tie), and the prefill level the real loop reports."""
    from polyplan.bench.methods import BenchMethod
    from polyplan.bench.results import LLAMACPP_ALONE, MethodSpec
    from polyplan.executor.front import Chain

    alone = Chain([pool.made["target"]])
    cache: dict[tuple[tuple[int, ...], int], list[int]] = {}
    wrong = dict(PROMPTS)[wrong_prompt]

    def generate(prompt, max_new_tokens, seed):
        key = (tuple(prompt), max_new_tokens)
        if key not in cache:
            cache[key] = list(alone.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.0).tokens)
        tokens = list(cache[key])
        if list(prompt) == wrong:
            tokens[-1] = (tokens[-1] + 1) % VOCAB
        return tokens, [{"name": "target-gguf", "passes": len(tokens), "prefill_time_s": 0.0}]

    spec = MethodSpec(
        LLAMACPP_ALONE,
        "llama.cpp alone (target-gguf), not lossless",
        "llama.cpp",
        ["target-gguf"],
        [],
        speed_reference={"gguf": "target-gguf", "lossless": False},
    )
    return BenchMethod(spec, ["target-gguf"], generate)


@pytest.fixture
def fake_gguf(monkeypatch):
    """run_bench with a TinyPool whose target has 'its own GGUF' (the fake row above)."""
    pool = TinyPool()
    calls = []

    def method(the_pool, plan, *, temperature, eos, longest):
        calls.append(longest)
        return _fake_llamacpp_alone(pool, "p1"), None

    monkeypatch.setattr("polyplan.bench.runner.llamacpp_alone_method", method)
    return pool, calls


def test_the_llamacpp_alone_row_is_measured_counted_and_kept_out_of_the_plan_comparisons(tiny_plan, fake_gguf):
    plan, path = tiny_plan
    pool, calls = fake_gguf
    settings = dict(prompts=2, repeats=2, max_new_tokens=6, grid=True, hf=False, encoded_prompts=PROMPTS, eos=[])
    doc = run_bench(plan, path, pool=pool, **settings)
    assert calls == [max(len(p) for _, p in PROMPTS) + 6]  # the longest request, for its n_ctx
    rows = {m["name"]: m for m in doc["methods"]}
    row = rows["llamacpp-alone"]
    assert row["speed_reference"]["lossless"] is False and row["engine"] == "llama.cpp"
    me = row["measured"]
    # timed interleaved like every method, end to end and decode (its own prefill level subtracted)
    assert {r["method"] for r in doc["runs"] if r["prompt"] == "p0" and r["repeat"] == 0} == set(rows)
    assert me["tokens_per_s"] > 0 and me["end_to_end_speedup"] > 0 and me["speedup"] > 0
    # its tokens equal the target's on p0 only: counted, not asserted
    assert me["equal_prompts"] == 1 and me["compared_prompts"] == 2 and me["matches_autoregressive"] == 0.5
    assert me["chosen_plan_vs_this"]["method"] == "polyplan-plan" and me["chosen_plan_vs_this"]["end_to_end"] > 0
    # never a plan: no prediction, and the regret picks among polyplan plans only (it is the fastest row)
    assert row["predicted"] == {} and row["error"] == {}
    assert doc["regret"]["best_measured"] != "llamacpp-alone"
    assert "llamacpp-alone" not in doc["skipped"]
    md = markdown_table(doc)
    assert "llama.cpp alone (target-gguf), not lossless: " in md and "tok/s end to end" in md
    assert "its tokens equal the target's on 1 of 2 prompts" in md and "the chosen plan (polyplan-plan) runs" in md


def test_no_llamacpp_alone_removes_the_row(tiny_plan, fake_gguf):
    plan, path = tiny_plan
    pool, calls = fake_gguf
    doc = _static_bench(plan, path, llamacpp_alone=False)
    assert calls == [] and "llamacpp-alone" not in [m["name"] for m in doc["methods"]]
    assert "llamacpp-alone" not in doc["skipped"] and "llama.cpp alone" not in markdown_table(doc)


def test_a_pool_without_the_targets_gguf_is_said_plainly(tiny_plan, tmp_path):
    plan, path = tiny_plan
    doc = _static_bench(plan, path)
    assert "llamacpp-alone" not in [m["name"] for m in doc["methods"]]
    why = doc["skipped"]["llamacpp-alone"]
    assert "no llama.cpp member running the GGUF of the target's own weights" in why
    out = tmp_path / "bench.json"
    save_results(out, doc)
    assert f"No llama.cpp-alone reference: {why}" in markdown_table(load_results(out))


def test_the_targets_own_gguf_is_the_llamacpp_member_running_its_source_as_it_is():
    from pathlib import Path

    from polyplan.bench.llamacpp_alone import own_gguf_member
    from polyplan.weights import load_pool

    pools = Path(__file__).resolve().parents[1] / "benchmarks" / "pools"
    assert own_gguf_member(load_pool("smollm2")) == "smollm2-135m:q4"  # not :q8_0 etc. (quantizer-made)
    assert own_gguf_member(load_pool("qwen-coder")) == "qwen2.5-coder-1.5b:q4"  # not the 0.5B's
    assert own_gguf_member(load_pool(pools / "qwen-coder-llamacpp.toml")) == "qwen2.5-coder-1.5b:q4"  # the target
    assert own_gguf_member(load_pool(pools / "smollm2-bf16-trees.toml")) is None  # only derived GGUFs
    assert own_gguf_member(TinyPool()) is None


@pytest.mark.weights
def test_bench_smollm2_llamacpp_alone_row(tmp_path):
    """Real weights: the float32 target's own Q4_1 GGUF decoded by llama.cpp alone, beside the plan."""
    from pathlib import Path

    from polyplan.models.llamacpp_runtime import unavailable_reason
    from polyplan.weights import load_pool

    pool = load_pool("smollm2")
    if unavailable_reason() or not all(pool.installed().values()):
        pytest.skip("smollm2 pool or llama-cpp-python not installed")
    path = Path(__file__).resolve().parents[1] / "profiles" / "smollm2-ladder-cpu.plan.json"
    plan = Plan.load(path)
    doc = run_bench(plan, path, pool=pool, prompts=2, repeats=1, max_new_tokens=16, hf=False, static=True)
    row = next(m for m in doc["methods"] if m["name"] == "llamacpp-alone")
    assert row["chain"] == ["smollm2-135m:q4"] and row["speed_reference"]["lossless"] is False
    assert row["measured"]["new_tokens"] > 0 and row["measured"]["tokens_per_s"] > 0
    assert 0 <= row["measured"]["equal_prompts"] <= row["measured"]["compared_prompts"] == 2
    assert row["measured"]["chosen_plan_vs_this"]["end_to_end"] > 0
    assert "llama.cpp alone (smollm2-135m:q4), not lossless: " in markdown_table(doc)


def test_the_plans_rows_run_its_draft_stops(tiny_plan):
    """`polyplan bench` runs a plan as `polyplan run` does, draft stops included: the plan's rows end
    drafts early where the rule says so, the best two-level row drafts to gamma."""
    plan, path = tiny_plan
    doc = json.loads(path.read_text())
    # two levels, static: the plan's drafter drafts for the target, where a stop applies
    doc["chain"], doc["gammas"] = doc["chain"][:2], [4]
    doc["prediction"]["tokens_per_pass"] = doc["prediction"]["tokens_per_pass"][:2]
    for key in ("policy", "tree_nodes", "trees"):
        doc.pop(key, None)
    edges = [0.0, 1.0, 2.0]
    doc["draft_stop"] = {
        name: {"edges": edges, "acceptance": [0.5, 0.6, 0.7], "stop_below": 1.0} for name in plan.names[1:]
    }
    path.write_text(json.dumps(doc))
    from polyplan.documents.plan import Plan

    stopping = Plan.load(path)
    out = _tiny_bench(stopping, path, max_new_tokens=8)
    stops = {}
    for r in out["runs"]:
        stops[r["method"]] = stops.get(r["method"], 0) + sum(lv.get("draft_stops", 0) for lv in r["levels"] or [])
    assert stops["polyplan-plan"] > 0 and stops.get("polyplan-two-level", 0) == 0
    assert all(m["measured"]["matches_autoregressive"] == 1.0 for m in out["methods"] if m["name"] != "autoregressive")


def test_a_bench_of_an_exact_target_predicts_the_target_alone_on_the_reference_row(tiny_plan):
    from polyplan.bench.results import AUTOREGRESSIVE, REFERENCE

    plan, path = tiny_plan
    pool = TinyPool()
    target = pool.made["target"]
    pool.made["target"] = ModelDrafter(target.model, "target", exact=True)  # exact: T(1) is its padded pass
    res = _static_bench(plan, path, pool=pool)
    rows = {m["name"]: m for m in res["methods"]}
    assert rows[REFERENCE]["predicted"] and not rows[AUTOREGRESSIVE]["predicted"]
    assert rows["polyplan-plan"]["error_speedup"] and rows[REFERENCE]["error_speedup"]
    # as a plain float32 target: generate's row carries it, and no reference row is run
    res = _static_bench(plan, path)
    rows = {m["name"]: m for m in res["methods"]}
    assert rows[AUTOREGRESSIVE]["predicted"] and REFERENCE not in rows


def test_an_exact_targets_alone_time_is_predicted_on_its_lossless_reference_row():
    """A half-precision target's profiled T(1) is its exact regime's padded pass (on an AMX Xeon
    1.24x the one-token ``generate``): the prediction of the target alone belongs to the reference
    row, and predicted speedups are held against speedups measured over that row."""
    import torch

    from polyplan.bench.predictions import alone_as_verified
    from polyplan.bench.results import AUTOREGRESSIVE, REFERENCE, _speedup_errors

    assert alone_as_verified(ModelDrafter(tiny_llama(16, num_layers=1, dtype=torch.bfloat16), "half"))
    assert not alone_as_verified(ModelDrafter(tiny_llama(16, num_layers=1), "float"))

    class Padded:  # a llama.cpp target with min_pass: T(1) is timed in its one-token kernels
        exact_as_target = pads_passes = True

    assert not alone_as_verified(Padded())

    def row(name: str, speedup: float, predicted: float | None) -> dict:
        return {"name": name, "measured": {"speedup": speedup}, "predicted": {"iid": predicted} if predicted else {}}

    # generate 1.0x; the exact target alone 0.8x of it, predicted 46 ms; the plan 1.6x, predicted 20 ms
    rows = [row(AUTOREGRESSIVE, 1.0, None), row(REFERENCE, 0.8, 0.046), row("polyplan-plan", 1.6, 0.020)]
    _speedup_errors(rows)
    assert rows[2]["error_speedup"]["iid"] == pytest.approx(abs(2.3 - 2.0) / 2.0)  # 2.0x over the reference
    assert rows[1]["error_speedup"]["iid"] == pytest.approx(0.0)
    # without a predicted reference the baseline stays transformers' generate
    rows = [row(AUTOREGRESSIVE, 1.0, 0.040), row("polyplan-plan", 1.6, 0.020)]
    _speedup_errors(rows)
    assert rows[1]["error_speedup"]["iid"] == pytest.approx(abs(2.0 - 1.6) / 1.6)
