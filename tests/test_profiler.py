"""Profiler on tiny random models: latency grid, teacher-forced acceptance, resume, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import Candidate, LatencyCurve, PrefillCurve, Profile
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.models.model_drafter import ModelDrafter
from polyplan.models.model_free import PromptLookupDrafter
from polyplan.profiler import (
    ProfileInputs,
    ProfileSettings,
    ProgressHooks,
    acceptance_matrix,
    greedy_reference,
    latency_table,
    load_traces,
    measure_context,
    new_token_grid,
    processed_probs,
    run_profile,
    score_reference,
    sidecar_path,
)
from polyplan.profiler.resume import settings_doc

from tiny_models import SlowCopy, tiny_llama

VOCAB = 64


def encode(text: str) -> list[int]:
    return [b % VOCAB for b in text.encode()[:24]]


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(vocab_size=VOCAB, seed=0, logit_scale=4.0, max_position_embeddings=512)
    other = tiny_llama(vocab_size=VOCAB, seed=1, logit_scale=4.0, max_position_embeddings=512)
    return target, other


class OracleDrafter(Drafter):
    """Point-mass drafter that proposes a model's argmax (or nothing when ``silent``)."""

    point_mass = True

    def __init__(self, model, name: str, silent: bool = False) -> None:
        self.model, self.name, self.silent, self.vocab_size = model, name, silent, VOCAB

    @property
    def processed(self) -> int:
        return 0

    def reset(self) -> None: ...

    def rollback(self, length: int) -> None: ...

    def propose(self, context, n):
        if self.silent:
            return []
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([list(context)])).logits[0, -1]
        return [int(logits.argmax())][:n]


def make_inputs(models, extra: list[Drafter] = ()) -> ProfileInputs:
    target, other = models
    drafters = [ModelDrafter(target, "target"), ModelDrafter(target, "copy"), ModelDrafter(other, "other"), *extra]
    return ProfileInputs(
        pool="tiny",
        target="target",
        drafters=drafters,
        candidates=[Candidate(d.name, point_mass=d.point_mass) for d in drafters],
        encode=encode,
        eos_ids=[],
    )


SMALL = dict(
    prompts=3,
    max_new_tokens=12,
    contexts=[0, 32],
    new_tokens=[1, 4],
    repeats=2,
    warmup=1,
    prefill_contexts=[16, 64],
    windows=[],
    # same-size tiny models: which one is slower is timing noise (screening has its own tests)
    screen=False,
)


# ---------------------------------------------------------------------------------- latency


class SleepyDrafter(Drafter):
    """Scoring n tokens takes at least n milliseconds; records rollbacks."""

    def __init__(self) -> None:
        self.name, self.vocab_size, self._n, self.rollbacks = "sleepy", VOCAB, 0, []

    @property
    def processed(self) -> int:
        return self._n

    def reset(self) -> None:
        self._n = 0

    def score(self, new_ids, last=None):
        time.sleep(0.001 * len(new_ids))
        self._n += len(new_ids)
        return torch.zeros(len(new_ids) if last is None else last, VOCAB)

    def rollback(self, length: int) -> None:
        self.rollbacks.append(length)
        self._n = length


def test_latency_grid_times_each_pass_and_rolls_back(models):
    sleepy = SleepyDrafter()
    model = ModelDrafter(models[0], "m")
    rows = measure_context([sleepy, model], context=40, new_tokens=[1, 2, 8], repeats=3, warmup=1)
    assert set(rows) == {"sleepy", "m"}
    for row in rows.values():
        assert len(row.median_s) == len(row.spread_s) == 3
        assert all(len(s) == 3 for s in row.samples_s)
    # a pass of n tokens cannot take less than the n ms it sleeps: the timer brackets score()
    for n, med in zip([1, 2, 8], rows["sleepy"].median_s, strict=True):
        assert med >= 0.001 * n
    assert rows["sleepy"].median_s[2] > rows["sleepy"].median_s[0]
    # every timed or warm-up pass is rolled back to the cached context (a one-token pass after its
    # untimed twin), and state is dropped after
    assert sleepy.rollbacks == [40] * (4 * 4) and sleepy.processed == 0 and model.processed == 0


class ColdStartDrafter(SleepyDrafter):
    """A one-token pass takes 1 ms in a run of one-token passes and 30 ms more as the first of a
    run (after a pass of another size), as llama.cpp's and torch's first one-token pass reads after
    other passes, on a smaller scale."""

    def __init__(self) -> None:
        super().__init__()
        self.last_n = 0

    def score(self, new_ids, last=None):
        n = len(new_ids)
        if n == 1 and self.last_n != 1:
            time.sleep(0.030)
        self.last_n = n
        return super().score(new_ids, last)


def test_one_token_passes_are_timed_as_one_of_a_run():
    cold = ColdStartDrafter()
    rows = measure_context([cold], context=16, new_tokens=[1, 8], repeats=3, warmup=0)
    t1, t8 = rows["sleepy"].median_s
    # the timed T(1) follows an untimed one-token pass: 1 ms asleep, not 31
    assert 0.001 <= t1 < 0.015 and t8 >= 0.008
    # as profiles before it timed T(1) (a calibration against one of them times it so too)
    old = measure_context([ColdStartDrafter()], 16, [1, 8], repeats=3, warmup=0, one_token_runs=False)
    assert old["sleepy"].median_s[0] >= 0.031


def test_new_token_grid():
    assert new_token_grid(16) == [1, 2, 4, 8, 16]
    assert new_token_grid(12) == [1, 2, 4, 8, 12]
    with pytest.raises(UserError):
        new_token_grid(0)


# -------------------------------------------------------------------------------- acceptance


def test_teacher_forced_greedy_equals_direct_comparison(models):
    target, other = models
    t, o = ModelDrafter(target, "target"), ModelDrafter(other, "other")
    prompt = encode("Why is the sky blue?")
    reference = greedy_reference(t, prompt, 20)
    assert len(reference) == 20
    scored = score_reference([t, o], prompt, reference, temperature=1.0, block=3)
    # direct: the drafter's own greedy choice after every reference prefix, one fresh pass each
    direct = []
    for k in range(len(reference)):
        with torch.no_grad():
            logits = other(input_ids=torch.tensor([prompt + reference[:k]])).logits[0, -1]
        direct.append(float(int(logits.argmax()) == reference[k]))
    np.testing.assert_array_equal(scored.greedy[("target", "other")], np.array(direct, dtype=np.float32))
    assert 0.0 <= scored.greedy[("target", "other")].mean() < 0.6


def test_a_reference_written_with_a_helper_is_the_targets_own(models):
    target, other = models
    t, copy, o = ModelDrafter(target, "target"), ModelDrafter(target, "copy"), ModelDrafter(other, "other")
    for text in ("Why is the sky blue?", "def add(a, b):", "1, 2, 3, 4"):
        prompt = encode(text)
        alone = greedy_reference(t, prompt, 20)
        # a perfect helper (the target's weights) and a poor one: the same tokens either way
        assert greedy_reference(t, prompt, 20, helper=copy, gamma=6) == alone
        assert greedy_reference(t, prompt, 20, helper=o, gamma=3) == alone
        assert t.processed == copy.processed == o.processed == 0
    # an end-of-sequence token ends it, with the helper as without
    eos = [alone[7]]
    cut = greedy_reference(t, prompt, 20, eos_ids=eos)
    assert cut[-1] == eos[0] and greedy_reference(t, prompt, 20, eos_ids=eos, helper=copy, gamma=6) == cut


def test_the_reference_helper_is_the_drafter_predicted_fastest_or_none(models):
    from polyplan.profiler.recorder import TraceRecorder
    from polyplan.profiler.session import reference_helper, two_level_ranking

    fast, slow = ModelDrafter(models[0], "fast"), ModelDrafter(models[1], "slow")

    def curve(t1: float, t9: float) -> LatencyCurve:
        return LatencyCurve(new_tokens=[1, 9, 17], context=[64], median_s=[[t1, t9, t9 * 1.5]])

    latency = {"target": curve(0.1, 0.12), "fast": curve(0.01, 0.05), "slow": curve(0.2, 0.3)}
    traces = TraceRecorder()

    def helper(prefill=None, prompt_tokens=100, new_tokens=64):
        ranked = two_level_ranking([fast, slow], "target", latency, traces, 64)
        return reference_helper(ranked, 0.1, prefill or {}, prompt_tokens, new_tokens)

    assert helper() == (None, 1)  # nothing measured yet
    traces.greedy[("target", "fast")] = [np.full(10, 0.9, np.float32)]
    traces.greedy[("target", "slow")] = [np.ones(10, np.float32)]
    chosen, gamma = helper()
    assert chosen is fast and 4 <= gamma <= 16
    # its prefill counted: 5 ms per prompt token makes a 1000-token prompt cost 5 s, more than the
    # target alone writes 64 tokens in (6.4 s) less the 20% a helper must save; a 100-token one pays
    slow_prefill = {"fast": PrefillCurve(context=[128, 512], median_s=[0.64, 2.56])}
    assert helper(slow_prefill, prompt_tokens=1000) == (None, 1)
    assert helper(slow_prefill, prompt_tokens=100)[0] is fast
    traces.greedy[("target", "fast")] = [np.zeros(10, np.float32)]  # never right: not worth a draft
    assert helper() == (None, 1)


def test_sampling_acceptance_is_sum_of_min_by_hand(models):
    target, other = models
    t, o = ModelDrafter(target, "target"), ModelDrafter(other, "other")
    prompt = encode("Translate into German: good morning")
    reference = greedy_reference(t, prompt, 10)
    temperature = 0.7
    scored = score_reference([t, o], prompt, reference, temperature=temperature, block=0)
    ids = torch.tensor([prompt + reference])
    with torch.no_grad():
        p = (target(input_ids=ids).logits[0] / temperature).softmax(-1)
        q = (other(input_ids=ids).logits[0] / temperature).softmax(-1)
    rows = slice(len(prompt) - 1, len(prompt) - 1 + len(reference))
    by_hand = torch.minimum(p[rows], q[rows]).sum(-1).numpy()
    np.testing.assert_allclose(scored.sampling[("target", "other")], by_hand, atol=1e-5)
    np.testing.assert_allclose(scored.sampling[("other", "target")], by_hand, atol=1e-5)  # symmetric
    assert by_hand.mean() < 0.9


def test_identical_drafter_accepts_everything_and_point_mass_rules(models):
    target, _ = models
    t, copy = ModelDrafter(target, "target"), ModelDrafter(target, "copy")
    oracle, silent = OracleDrafter(target, "oracle"), OracleDrafter(target, "silent", silent=True)
    prompt = encode("Write a Python function")
    reference = greedy_reference(t, prompt, 12)
    scored = score_reference([t, copy, oracle, silent], prompt, reference, temperature=1.0, block=4)
    assert scored.greedy[("target", "copy")].tolist() == [1.0] * 12
    np.testing.assert_allclose(scored.sampling[("target", "copy")], 1.0, atol=1e-5)
    # point mass on the verifier's argmax: greedy always accepted, sampling accepts with p(argmax)
    assert scored.greedy[("target", "oracle")].tolist() == [1.0] * 12
    with torch.no_grad():
        p = target(input_ids=torch.tensor([prompt + reference])).logits[0].softmax(-1)
    p_max = p[len(prompt) - 1 : len(prompt) - 1 + 12].max(-1).values.numpy()
    np.testing.assert_allclose(scored.sampling[("target", "oracle")], p_max, atol=1e-5)
    assert scored.greedy[("target", "silent")].sum() == 0 and scored.sampling[("target", "silent")].sum() == 0
    assert ("oracle", "target") not in scored.greedy  # a point mass never verifies


class ShapeFlakyDrafter(ModelDrafter):
    """A copy of a model whose argmax at one absolute position flips when that position is
    scored in a pass of exactly ``shape`` tokens: a bf16 near-tie in miniature."""

    shape_sensitive = True  # computes in float32, but declares itself shape-sensitive like bf16

    def __init__(self, model, name: str, position: int, shape: int) -> None:
        super().__init__(model, name)
        self.position, self.shape = position, shape

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        start, n = self.processed, int(new_ids.shape[0])
        out = super().score(new_ids, last=last).clone()
        first = start + n - out.shape[0]  # absolute position of the first returned row
        if n == self.shape and first <= self.position < first + out.shape[0]:
            row = self.position - first
            out[row] = out[row].roll(1)
        return out


def test_acceptance_is_averaged_over_pass_shapes(models):
    target, _ = models
    t = ModelDrafter(target, "target")
    prompt = encode("Why is the sky blue?")
    reference = greedy_reference(t, prompt, 12)
    # position len(prompt) + 2 predicts reference[3]; teacher forcing in blocks of 5 scores it in a
    # 5-token pass, blocks of 8 in an 8-token pass
    flaky = ShapeFlakyDrafter(target, "flaky", position=len(prompt) + 2, shape=5)
    expected = [1.0] * 12
    one_shape = score_reference([t, flaky], prompt, reference, temperature=1.0, block=8, target="target")
    assert one_shape.greedy[("target", "flaky")].tolist() == expected
    two_shapes = score_reference([t, flaky], prompt, reference, temperature=1.0, block=[8, 5], target="target")
    expected[3] = 0.5
    assert two_shapes.greedy[("target", "flaky")].tolist() == expected
    assert two_shapes.sampling[("target", "flaky")][3] < 0.99  # the flipped row's overlap is below 1
    assert two_shapes.greedy[("flaky", "target")].tolist() == expected  # symmetric for model pairs
    # a float32 model that does not declare itself shape-sensitive gets the first shape only
    plain = ShapeFlakyDrafter(target, "plain", position=len(prompt) + 2, shape=5)
    plain.shape_sensitive = None
    only_first = score_reference([t, plain], prompt, reference, temperature=1.0, block=[8, 5], target="target")
    assert only_first.greedy[("target", "plain")].tolist() == [1.0] * 12


def test_eval_prompts_take_turns_over_the_pass_shapes(models, tmp_path, monkeypatch):
    """One teacher-forcing shape per prompt, the sizes in turn; a float32 model takes one pass."""
    import polyplan.profiler.session as session

    shapes = []

    def spy(drafters, prompt_ids, reference, temperature, top_k=None, top_p=None, block=0, **kw):
        shapes.append(block)
        return score_reference(drafters, prompt_ids, reference, temperature, top_k, top_p, block, **kw)

    monkeypatch.setattr(session, "score_reference", spy)
    settings = ProfileSettings(**{**SMALL, "prompts": 5, "block": 6, "extra_blocks": [3, 4]})
    run_profile(make_inputs(models), tmp_path / "s.json", settings)
    assert shapes == [[6], [3], [4], [6], [3]]
    assert [session.shape_of_prompt(ProfileSettings(extra_blocks=[]), k) for k in range(3)] == [8, 8, 8]

    target, _ = models
    passes = []
    counted = ModelDrafter(target, "counted")
    score = counted.score
    counted.score = lambda ids, last=None: passes.append(len(ids)) or score(ids, last=last)
    prompt = encode("Why is the sky blue?")
    score_reference([counted, ModelDrafter(target, "t")], prompt, list(range(1, 13)), 1.0, block=[8, 5], target="t")
    assert passes == [len(prompt) + 11]


def test_processed_probs_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    greedy = processed_probs(logits, 0.0)
    assert greedy.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    top2 = processed_probs(logits, 1.0, top_k=2)
    assert top2[0, 2:].sum() == 0 and abs(float(top2.sum()) - 1) < 1e-6
    full = logits.softmax(-1)
    nucleus = processed_probs(logits, 1.0, top_p=float(full[0, 0]) + 1e-4)  # needs the top two
    assert (nucleus[0] > 0).tolist() == [True, True, False, False]
    hot = processed_probs(logits, 2.0)
    torch.testing.assert_close(hot, (logits / 2).softmax(-1))


# ---------------------------------------------------------------------------- the whole run


def test_profile_run_writes_valid_profile_and_traces(models, tmp_path):
    out = tmp_path / "tiny.json"
    outcome = run_profile(make_inputs(models), out, ProfileSettings(**SMALL))
    assert outcome.complete
    prof = Profile.load(out)
    assert prof.complete and prof.machine["cores"] and prof.machine["torch"]
    assert prof.settings["one_token_runs"] is True  # how T(1) was timed: a calibration times it alike
    assert set(prof.latency) == {"target", "copy", "other"}
    curve = prof.latency["target"]
    assert curve.context == [0, 32] and curve.new_tokens == [1, 4]
    assert len(latency_table(prof)) == 3 * 2 * 2
    matrix = acceptance_matrix(prof)
    assert matrix.loc["target", "copy"] == 1.0 and matrix.loc["target", "other"] < 0.6
    assert np.isnan(matrix.loc["target", "target"])
    pair = prof.pair("target", "other")
    assert pair.positions == 3 * 12 and len(pair.by_category) == 3
    total = sum(c["positions"] for c in pair.by_category.values())
    assert total == pair.positions
    traces = load_traces(out)
    assert traces["segments"].tolist() == [0, 12, 24, 36]
    assert len(traces["categories"]) == 3
    assert traces["greedy/target/other"].mean() == pytest.approx(pair.greedy)


class Counter(ProgressHooks):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def advance(self, stage: str, amount: int = 1) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + amount


def test_a_latency_context_that_is_a_one_pass_prefill_length_times_that_prefill_as_it_builds(models, tmp_path):
    settings = {**SMALL, "contexts": [0, 64], "prefill_contexts": [16, 64], "prefill_repeats": 1}
    counter = Counter()
    cold = ProfileSettings(**settings, prefill_warmup=False)
    outcome = run_profile(make_inputs(models), tmp_path / "p.json", cold, progress=counter)
    for name in ("target", "copy", "other"):
        curve = outcome.profile.prefill[name]
        assert curve.context == [16, 64] and all(t > 0 for t in curve.median_s)
    # the prefill phase timed only the length no latency context built: one pass per model
    assert counter.counts["prefill"] == 3
    # a length warmed up before it is timed is not the build (a length's first, cold pass)
    counter = Counter()
    run_profile(make_inputs(models), tmp_path / "w.json", ProfileSettings(**settings), progress=counter)
    assert counter.counts["prefill"] == 6


def test_long_latency_contexts_take_fewer_timed_passes(models, tmp_path):
    settings = {**SMALL, "contexts": [0, 480], "repeats": 8, "prefill_contexts": []}
    counter = Counter()
    run_profile(make_inputs(models), tmp_path / "l.json", ProfileSettings(**settings), progress=counter)
    # 3 models x 2 pass sizes: 8 timed passes each at 0 cached tokens, 1536 // 480 = 3 at 480
    assert counter.counts["latency"] == 3 * 2 * (8 + 3)


def test_warm_up_passes_run_at_the_first_latency_context_only(models, tmp_path, monkeypatch):
    """Every pass size has run at the first context; the later ones, longest first, share one build:
    the longest context is prefilled (timed) and every member is rolled back to the next."""
    import polyplan.profiler.session as session

    calls = []

    def spy(drafters, context, new_tokens, repeats, warmup, **kw):
        rows = measure_context(drafters, context, new_tokens, repeats, warmup, **kw)
        built = sorted(name for name, row in rows.items() if row.build_s is not None)
        calls.append((context, warmup, kw["keep_state"], built, [d.processed for d in drafters]))
        return rows

    monkeypatch.setattr(session, "measure_context", spy)
    settings = {**SMALL, "contexts": [0, 16, 32, 48], "warmup": 2, "prefill_contexts": []}
    out = tmp_path / "w.json"
    run_profile(make_inputs(models), out, ProfileSettings(**settings))
    models_built = ["copy", "other", "target"]
    assert calls == [
        (0, 2, False, [], [0, 0, 0]),
        (48, 0, True, models_built, [48, 48, 48]),
        (32, 0, True, [], [32, 32, 32]),
        (16, 0, False, [], [0, 0, 0]),
    ]
    assert Profile.load(out).latency["target"].context == [0, 16, 32, 48]


def test_a_member_slower_than_the_target_at_every_pass_size_is_screened(models, tmp_path):
    from polyplan.planner.chains import chain_problem

    out = tmp_path / "screen.json"
    # the target sleeps 10 ms a pass and "slow" 40 ms, so "copy" (no sleep) is faster and "slow"
    # slower by far more than timing noise on any machine
    inputs = make_inputs(models, [SlowCopy(models[0], "slow", 0.04)])
    inputs.drafters[0] = SlowCopy(models[0], "target", 0.01)
    settings = {**SMALL, "screen": True, "repeats": 3}  # a median absorbs one stalled pass
    outcome = run_profile(inputs, out, ProfileSettings(**settings))
    prof = Profile.load(out)
    assert outcome.complete and list(prof.screened) == ["slow"]
    assert "slower than the target at every pass size" in prof.screened["slow"]
    # found on the first context's latency row, then measured no further
    assert prof.latency["slow"].context == [0] and prof.latency["copy"].context == [0, 32]
    assert "slow" not in prof.prefill and "copy" in prof.prefill
    assert not [p for p in prof.pairs if "slow" in (p.drafter, p.verifier)]
    assert "screened out by the profiler" in chain_problem(prof, ("target", "slow"))
    assert chain_problem(prof, ("target", "copy")) is None
    # resuming keeps the verdict; --no-screen measures it like any member
    again = run_profile(inputs, out, ProfileSettings(**settings))
    assert again.units_done == 0 and Profile.load(out).screened == prof.screened
    full = run_profile(inputs, tmp_path / "all.json", ProfileSettings(**{**settings, "screen": False}))
    assert not full.profile.screened and full.profile.latency["slow"].context == [0, 32]
    assert full.profile.pair("target", "slow").greedy == 1.0


def test_screening_needs_a_margin_over_the_target():
    from polyplan.profiler.screen import SCREEN_MARGIN, slower_than_target

    def curve(ms):
        return LatencyCurve(new_tokens=[1, 4], context=[0], median_s=[[m / 1e3 for m in ms]])

    target = curve([100, 120])
    latency = {
        "target": target,
        "noise": curve([104, 125]),  # within timing noise: left to the planner
        "short": curve([99 * SCREEN_MARGIN, 119 * SCREEN_MARGIN]),
        "int8": curve([170, 210]),
        "mixed": curve([200, 110]),  # faster at one size: may pay there
        "edge": curve([101 * SCREEN_MARGIN, 121 * SCREEN_MARGIN]),
        # slower at every size, by the margin on geometric mean though not at every size: the int8
        # copy on a noisy run (1.42x and 1.06x)
        "uneven": curve([142, 127.2]),
        "barely": curve([100, 140]),  # as fast at one size: may pay there
    }
    assert set(slower_than_target(latency, "target", 0, {})) == {"int8", "edge", "uneven"}


class Crash(ProgressHooks):
    def __init__(self, stage: str, after: int) -> None:
        self.stage, self.after, self.count = stage, after, 0

    def advance(self, stage: str, amount: int = 1) -> None:
        if stage == self.stage:
            self.count += 1
            if self.count > self.after:
                raise KeyboardInterrupt


def test_interrupted_run_keeps_measured_units_and_resumes(models, tmp_path, monkeypatch):
    import polyplan.profiler.session as session

    # which drafter helps write references follows measured latencies (kept by the resumed run,
    # re-measured by the fresh one); references are the same either way up to float near-ties,
    # which this test's token-for-token comparison must not meet
    monkeypatch.setattr(session, "reference_helper", lambda *args, **kwargs: (None, 1))
    out = tmp_path / "resume.json"
    inputs = make_inputs(models)
    per_prompt = len(inputs.drafters) + 1
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the second prompt
        run_profile(inputs, out, ProfileSettings(**SMALL), progress=Crash("acceptance", per_prompt + 2))
    partial = Profile.load(out)
    assert not partial.complete
    assert set(partial.latency) == {"target", "copy", "other"}
    assert partial.pair("target", "other").positions == 12  # exactly the first prompt
    resumed = run_profile(inputs, out, ProfileSettings(**SMALL))
    # skipped: 2 latency contexts, 2 prefill lengths, the first prompt
    assert resumed.complete and resumed.units_skipped == 2 + 2 + 1 and resumed.units_done == 2
    fresh = run_profile(inputs, tmp_path / "fresh.json", ProfileSettings(**SMALL))
    assert resumed.profile.pair("target", "other") == fresh.profile.pair("target", "other")
    np.testing.assert_array_equal(load_traces(out)["tokens"], load_traces(tmp_path / "fresh.json")["tokens"])
    # the latency measured before the interruption was kept, not re-measured
    assert resumed.profile.latency["other"] == partial.latency["other"]


def test_budget_stops_between_units_and_rerun_completes(models, tmp_path):
    out = tmp_path / "budget.json"
    inputs = make_inputs(models)
    first = run_profile(inputs, out, ProfileSettings(**SMALL), budget_s=0.0)
    assert first.stopped_by_budget and not first.complete and not Profile.load(out).complete
    again = run_profile(inputs, out, ProfileSettings(**SMALL), budget_s=None)
    assert again.complete and Profile.load(out).pair("target", "copy").greedy == 1.0


# ------------------------------------------------------------------------------- bad input


def test_refuses_to_resume_other_settings_without_force(models, tmp_path):
    out = tmp_path / "p.json"
    inputs = make_inputs(models)
    run_profile(inputs, out, ProfileSettings(**SMALL), budget_s=0.0)
    before = out.read_bytes()
    with pytest.raises(UserError, match="max_new_tokens"):
        run_profile(inputs, out, ProfileSettings(**{**SMALL, "max_new_tokens": 5}))
    assert out.read_bytes() == before
    forced = run_profile(inputs, out, ProfileSettings(**{**SMALL, "max_new_tokens": 5}), force=True)
    assert forced.complete and Profile.load(out).settings["max_new_tokens"] == 5


def test_truncated_or_newer_profile_is_refused_and_untouched(models, tmp_path):
    out = tmp_path / "p.json"
    run_profile(make_inputs(models), out, ProfileSettings(**{**SMALL, "prompts": 1}))
    text = out.read_text()
    out.write_text(text[: len(text) // 2])
    with pytest.raises(DocumentError, match="truncated"):
        run_profile(make_inputs(models), out, ProfileSettings(**{**SMALL, "prompts": 1}))
    assert out.read_text() == text[: len(text) // 2]
    doc = json.loads(text)
    doc["version"] = 99
    out.write_text(json.dumps(doc))
    with pytest.raises(DocumentError, match="newer"):
        run_profile(make_inputs(models), out, ProfileSettings(**{**SMALL, "prompts": 1}))
    assert json.loads(out.read_text())["version"] == 99


def test_vocabulary_mismatch_and_point_mass_target(models):
    target, _ = models
    small = tiny_llama(vocab_size=VOCAB // 2, seed=3)
    drafters = [ModelDrafter(target, "target"), ModelDrafter(small, "small")]
    with pytest.raises(UserError, match="vocabulary"):
        ProfileInputs("tiny", "target", drafters, [Candidate("target"), Candidate("small")], encode)
    oracle = OracleDrafter(target, "oracle")
    with pytest.raises(UserError, match="point-mass"):
        ProfileInputs("tiny", "oracle", [oracle], [Candidate("oracle", point_mass=True)], encode)


def test_bad_settings_are_user_errors(models, tmp_path):
    with pytest.raises(UserError):
        run_profile(make_inputs(models), tmp_path / "x.json", ProfileSettings(repeats=0))
    with pytest.raises(UserError, match=".json"):
        run_profile(make_inputs(models), tmp_path / "x.txt", ProfileSettings(**SMALL))
    assert not any(tmp_path.iterdir())


def test_sampling_filters_are_off_as_none(models, tmp_path):
    """One convention past the command line: None is off; 0 and 1 are the CLI's spellings only."""
    with pytest.raises(UserError, match="top_k"):
        run_profile(make_inputs(models), tmp_path / "x.json", ProfileSettings(**{**SMALL, "top_k": 0}))
    out = tmp_path / "old.json"
    inputs = make_inputs(models)
    run_profile(inputs, out, ProfileSettings(**{**SMALL, "prompts": 1}))
    doc = json.loads(out.read_text())
    assert doc["settings"]["top_k"] is None and doc["settings"]["top_p"] is None
    doc["settings"].update(top_k=0, top_p=1.0)  # as profiles recorded "off" before
    out.write_text(json.dumps(doc))
    again = run_profile(inputs, out, ProfileSettings(**{**SMALL, "prompts": 1}))
    assert again.units_done == 0 and again.complete


def test_sidecar_name(tmp_path):
    assert sidecar_path(Path("profiles/smollm2-cpu.json")).name == "smollm2-cpu.traces.npz"


# ------------------------------------------------------------------------------- prompt files


def _prompt_file(tmp_path, *texts_and_categories) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": t, "category": c}) + "\n" for t, c in texts_and_categories))
    return path


def test_profile_on_a_prompt_file_records_its_workload_and_categories(models, tmp_path):
    pf = _prompt_file(tmp_path, ("first prompt", "rag"), ("second one", "math"), ("third", "rag"))
    out = tmp_path / "mine-profile.json"
    settings = ProfileSettings(**{**SMALL, "prompts_file": str(pf)})
    outcome = run_profile(make_inputs(models), out, settings)
    prof = Profile.load(out)
    assert outcome.complete
    workload = prof.settings["workload"]
    assert workload["name"] == "mine.jsonl" and workload["count"] == 3
    assert workload["categories"] == {"rag": 2, "math": 1} and len(workload["sha256"]) == 64
    assert "prompts_file" not in prof.settings  # known by content, not by path
    assert set(prof.pair("target", "other").by_category) == {"rag", "math"}
    assert list(load_traces(out)["prompt_ids"]) == ["mine-1", "mine-2", "mine-3"]
    # the same content resumes from another path; other content is refused and the profile kept
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "mine.jsonl"
    moved.write_bytes(pf.read_bytes())
    again = run_profile(make_inputs(models), out, ProfileSettings(**{**SMALL, "prompts_file": str(moved)}))
    assert again.units_done == 0
    before = out.read_bytes()
    pf.write_text(pf.read_text().replace("third", "changed"))
    with pytest.raises(UserError, match=r"workload: 3 prompts of mine\.jsonl \(sha256 \w{12}\) then"):
        run_profile(make_inputs(models), out, settings)
    assert out.read_bytes() == before


def test_profile_from_before_workloads_resumes_on_the_builtin_set(models, tmp_path):
    out = tmp_path / "old.json"
    inputs = make_inputs(models)
    run_profile(inputs, out, ProfileSettings(**{**SMALL, "prompts": 1}))
    doc = json.loads(out.read_text())
    assert doc["settings"]["workload"]["name"] == "built-in"
    del doc["settings"]["workload"]
    out.write_text(json.dumps(doc))
    again = run_profile(inputs, out, ProfileSettings(**{**SMALL, "prompts": 1}))
    assert again.units_done == 0 and again.complete


def _profile_from_before(key: str, models, tmp_path, monkeypatch) -> tuple[Path, ProfileInputs, ProfileSettings]:
    """A complete profile written before settings[``key``] existed, checked to be reused as it is
    by a rerun (nothing re-measured, no claim added), then marked interrupted with only the first
    row of its ``phase`` curves (latency for one_token_runs, prefill for prefill_warmup) kept."""
    import polyplan.profiler.session as session

    def old_doc(*args):
        doc = settings_doc(*args)
        del doc[key]
        return doc

    out = tmp_path / "old.json"
    inputs = make_inputs(models)
    settings = ProfileSettings(**{**SMALL, "prompts": 1})
    with monkeypatch.context() as m:
        m.setattr(session, "settings_doc", old_doc)
        run_profile(inputs, out, settings)
    assert key not in Profile.load(out).settings
    again = run_profile(inputs, out, settings)
    assert again.units_done == 0 and again.complete and key not in Profile.load(out).settings
    doc = json.loads(out.read_text())
    doc["complete"] = False
    phase = "latency" if key == "one_token_runs" else "prefill"
    doc[phase] = {
        n: {k: v[:1] if k in ("context", "median_s", "spread_s") else v for k, v in c.items()}
        for n, c in doc[phase].items()
    }
    out.write_text(json.dumps(doc))
    return out, inputs, settings


def test_a_profile_from_before_one_token_runs_is_reused_and_resumed_as_it_was_measured(models, tmp_path, monkeypatch):
    """A profile (and sidecar) written before settings.one_token_runs: reused as it is, and a
    resumed one goes on timing T(1) the old way."""
    import polyplan.profiler.session as session

    out, inputs, settings = _profile_from_before("one_token_runs", models, tmp_path, monkeypatch)
    seen = []
    real = session.measure_context
    monkeypatch.setattr(
        session, "measure_context", lambda *a, **kw: seen.append(kw["one_token_runs"]) or real(*a, **kw)
    )
    run_profile(inputs, out, settings)
    assert seen and not any(seen)


def test_a_profile_from_before_prefill_warmup_is_reused_and_resumed_as_it_was_measured(models, tmp_path, monkeypatch):
    """A profile written before settings.prefill_warmup: reused as it is, and a resumed one goes on
    timing its prefills cold, as it timed the others; a new one warms them up and says so."""
    import polyplan.profiler.session as session

    out, inputs, settings = _profile_from_before("prefill_warmup", models, tmp_path, monkeypatch)
    seen = []
    real = session.measure_prefill
    monkeypatch.setattr(session, "measure_prefill", lambda *a, **kw: seen.append(kw["warmup"]) or real(*a, **kw))
    run_profile(inputs, out, settings)
    assert seen == [0]  # the one missing length, timed cold
    seen.clear()
    run_profile(inputs, tmp_path / "new.json", settings)
    assert seen == [1, 1] and Profile.load(tmp_path / "new.json").settings["prefill_warmup"] is True


def test_prompt_longer_than_the_context_fails_before_measuring(models, tmp_path):
    pf = _prompt_file(tmp_path, ("short", "qa"), ("LONG " * 10, "qa"))
    inputs = make_inputs(models)
    inputs.encode = lambda text: [1] * 600 if "LONG" in text else encode(text)  # the tiny models hold 512
    out = tmp_path / "long.json"
    with pytest.raises(
        UserError, match=r"mine\.jsonl:2: prompt 'mine-2' needs 600 tokens \+ 1 new but target holds 512"
    ):
        run_profile(inputs, out, ProfileSettings(**{**SMALL, "prompts_file": str(pf)}))
    assert not out.exists()  # failed before the first latency unit, not after minutes of it


def test_bad_prompt_file_is_a_user_error_naming_the_line(models, tmp_path):
    pf = tmp_path / "bad.jsonl"
    pf.write_text('{"text": "ok"}\n{"turns": "not a list"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: \"turns\" must be a list"):
        run_profile(make_inputs(models), tmp_path / "x.json", ProfileSettings(**{**SMALL, "prompts_file": str(pf)}))


# ------------------------------------------------------------------------- prefill and windows


def test_prefill_curves_are_measured_per_length_and_model(models, tmp_path):
    out = tmp_path / "prefill.json"
    prof = run_profile(make_inputs(models), out, ProfileSettings(**SMALL)).profile
    assert set(prof.prefill) == {"target", "copy", "other"}
    curve = prof.prefill["target"]
    assert curve.context == [16, 64] and all(t > 0 for t in curve.median_s)
    assert Profile.load(out).prefill["target"] == curve  # saved and read back


def test_prefill_passes_ask_for_the_last_row_from_an_empty_cache():
    from polyplan.profiler.latency import measure_prefill

    sleepy = SleepyDrafter()
    samples = measure_prefill([sleepy], 40, repeats=3)
    assert len(samples["sleepy"]) == 3 and min(samples["sleepy"]) >= 0.040
    assert sleepy.processed == 0  # reset after each pass


class ColdPrefillDrafter(SleepyDrafter):
    """A process's first prefill of a length takes 30 ms more (buffers and kernels for the shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.lengths_seen: set[int] = set()

    def score(self, new_ids, last=None):
        if self.processed == 0 and len(new_ids) not in self.lengths_seen:
            self.lengths_seen.add(len(new_ids))
            time.sleep(0.030)
        return super().score(new_ids, last)


def test_a_warmed_up_prefill_leaves_the_first_pass_of_its_length_out():
    from polyplan.profiler.latency import measure_prefill

    cold = measure_prefill([ColdPrefillDrafter()], 20, repeats=1)["sleepy"]
    drafter, timed = ColdPrefillDrafter(), []
    warm = measure_prefill(
        [drafter, PromptLookupDrafter(VOCAB)], 20, repeats=2, warmup=1, on_pass=lambda: timed.append(1)
    )
    assert cold[0] >= 0.050 and all(0.020 <= t < 0.045 for t in warm["sleepy"])
    # the warm-up passes are neither samples nor progress, and leave no cache behind
    assert len(warm["sleepy"]) == len(timed) == 2 and set(warm) == {"sleepy"} and drafter.processed == 0
    settings = ProfileSettings(prefill_contexts=[32, 512, 2048], warmup=1)
    assert [settings.prefill_warmup_at(c) for c in (32, 512, 2048)] == [1, 1, 0]
    assert ProfileSettings(warmup=0).prefill_warmup_at(32) == 0


def test_calibration_re_times_the_longest_prefill_up_to_512_tokens():
    from polyplan.profiler.calibrate import _prefill_length

    curve = lambda lengths: PrefillCurve(lengths, [0.1] * len(lengths), [0.0] * len(lengths), 1)  # noqa: E731
    assert _prefill_length(curve([32, 128, 512, 2048])) == 512
    assert _prefill_length(curve([128])) == 128 and _prefill_length(curve([1024, 4096])) == 1024


def test_windowed_acceptance_is_measured_on_prompts_the_window_cuts(models, tmp_path):
    """A drafter identical to the target keeps all its acceptance under any window? No: the window
    hides the prompt's start, so even the target's own copy loses acceptance when the text needs
    it; what must hold is that the full-prompt copy agrees everywhere and the phase records both."""
    out = tmp_path / "windows.json"
    long_encode = lambda text: [b % VOCAB for b in text.encode()[:120]]  # noqa: E731
    inputs = make_inputs(models)
    inputs.encode = long_encode
    settings = ProfileSettings(**{**SMALL, "windows": [16], "window_prompts": 2, "window_reference_tokens": 40})
    prof = run_profile(inputs, out, settings).profile
    rows = prof.windows["by_drafter"]
    assert set(rows) == {"copy", "other"} and prof.windows["sink"] == 4
    assert rows["copy"]["full"]["positions"] == 80 and rows["copy"]["16"]["positions"] == 80
    assert rows["copy"]["full"]["greedy_sum"] == 80  # the target's copy on the whole prompt
    assert prof.window_factor("copy", 16, "greedy") == rows["copy"]["16"]["greedy_sum"] / 80
    assert prof.window_factor("copy", 99, "greedy") is None
    # and by answer position: buckets [0, 32) and [32, 40) of both prompts
    buckets = rows["copy"]["16"]["by_position"]
    assert {k: v[2] for k, v in buckets.items()} == {"0": 64, "32": 16}
    assert sum(v[0] for v in buckets.values()) == rows["copy"]["16"]["greedy_sum"]
    assert prof.window_factor_by_position("copy", 16, "greedy") == [
        [0, buckets["0"][0] / 64],
        [32, buckets["32"][0] / 16],
    ]
    assert len(prof.windows["prompts"]) == 2
    assert prof.windows["prompt_tokens"] == [120, 120]
    # resuming measures nothing again
    again = run_profile(inputs, out, settings)
    assert again.units_done == 0 and again.profile.windows == prof.windows


def test_windows_are_measured_for_the_drafters_ranked_fastest(models, tmp_path):
    """--window-drafters 1: only the drafter the two-level theorem ranks first on the profile's own
    measurements pays the windows phase. Which one that is rests on measured passes of tiny models
    (a timing spike can rank either first), so the test ranks from the profile it wrote; with equal
    costs the target's own copy (acceptance 1) must rank above a model of other random weights."""
    from polyplan.profiler.recorder import TraceRecorder
    from polyplan.profiler.session import two_level_ranking

    inputs = make_inputs(models)
    inputs.encode = lambda text: [b % VOCAB for b in text.encode()[:120]]
    settings = {**SMALL, "windows": [16], "window_prompts": 1, "window_reference_tokens": 16}
    out = tmp_path / "w1.json"
    prof = run_profile(inputs, out, ProfileSettings(**settings, window_drafters=1)).profile
    assert prof.settings["window_drafters"] == 1
    written = load_traces(out)
    traces = TraceRecorder()
    traces.greedy = {("target", d): [written[f"greedy/target/{d}"]] for d in ("copy", "other")}
    ranked = two_level_ranking(inputs.drafters, "target", prof.latency, traces, SMALL["contexts"][0])
    assert set(prof.windows["by_drafter"]) == {ranked[0][1].name}
    same = LatencyCurve(new_tokens=[1, 4], context=[0], median_s=[[0.001, 0.002]])
    equal_costs = {"target": same, "copy": same, "other": same}
    traces.greedy = {("target", "copy"): [np.ones(8)], ("target", "other"): [np.zeros(8)]}
    ranked = two_level_ranking(inputs.drafters, "target", equal_costs, traces, 0)
    assert [d.name for _, d, _ in ranked] == ["copy", "other"]
    with pytest.raises(UserError, match="--window-drafters"):
        ProfileSettings(**SMALL, window_drafters=-1).validate()


def test_curves_with_row_add_a_context_in_order_and_replace_a_measured_one():
    lat = LatencyCurve(new_tokens=[1, 2], context=[64, 2048], median_s=[[1.0, 2.0], [3.0, 4.0]], repeats=5)
    added = lat.with_row(512, [2.0, 3.0], [0.1, 0.2], new_tokens=[1, 2], repeats=3)
    assert added.context == [64, 512, 2048] and added.median_s[1] == [2.0, 3.0] and added.repeats == 3
    assert added.spread_s == [[], [0.1, 0.2], []]  # rows measured before spreads were recorded stay empty
    assert added.with_row(64, [0.5, 0.6], [0.0, 0.0], new_tokens=[1, 2], repeats=3).median_s[0] == [0.5, 0.6]
    pre = PrefillCurve(context=[128, 2048], median_s=[0.1, 1.6])
    more = pre.with_row(512, 0.4, 0.01, repeats=1)
    assert (more.context, more.median_s, more.repeats) == ([128, 512, 2048], [0.1, 0.4, 1.6], 1)
    assert more.spread_s == [0.0, 0.01, 0.0]
    assert more.with_row(128, 0.2, 0.0, repeats=1).median_s == [0.2, 0.4, 1.6]
