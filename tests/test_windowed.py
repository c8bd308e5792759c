"""Windowed drafters (polyplan/models/windowed.py) and lazy prefill: a drafter that reads only the
first ``sink`` and last ``window`` tokens changes the proposal, never the output."""

from __future__ import annotations

import pytest
import torch

from polyplan import Chain
from polyplan.errors import UserError
from polyplan.executor.control import RoundSetting
from polyplan.executor.sampling import SamplingParams
from polyplan.models.model_drafter import ModelDrafter
from polyplan.models.windowed import WindowedDrafter
from polyplan.weights.pools import PoolFileError, _pool_from_text

from test_executor_sampling import PROMPT, TARGET, V, chi_square_p, exact_distribution, sample_counts
from tiny_models import TableDrafter, perturbed_copy, tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLOSE = TARGET.mixed_with_noise(0.6, seed=2)
FAR = TARGET.mixed_with_noise(1.5, seed=3)
LONG_PROMPT = [2, 4, 1, 3, 0, 2, 2, 4]


def test_inner_state_is_sink_plus_tail_and_rollbacks_keep_it_consistent():
    inner = CLOSE.drafter("close")
    w = WindowedDrafter(inner, window=3, sink=2)
    ids = torch.tensor(LONG_PROMPT)
    logits = w.score(ids, last=1)
    assert w.processed == 8 and inner.history == [2, 4, 0, 2, 2, 4][:2] + [0, 2, 2, 4][-3:]
    # the logits are the inner model's over that content
    assert torch.equal(logits[0], CLOSE.logits_after([2, 4, 2, 2, 4]))
    w.score(torch.tensor([1, 3]), last=2)
    assert w.processed == 10 and inner.history[-2:] == [1, 3]
    w.rollback(9)  # inside the tail: the inner state is cut back
    assert w.processed == 9 and inner.history == [2, 4, 2, 2, 4, 1]
    w.rollback(4)  # into the part the inner state never saw: rebuilt on the next pass
    out = w.score(torch.tensor([3]), last=1)
    assert w.processed == 5 and inner.history == [2, 4, 1, 3, 3]  # sink + window hold all five
    assert torch.equal(out[0], CLOSE.logits_after(inner.history))
    w.reset()
    assert w.processed == 0 and inner.history == []


def test_short_sequences_are_not_cut():
    inner = CLOSE.drafter("close")
    w = WindowedDrafter(inner, window=6, sink=2)
    w.score(torch.tensor(LONG_PROMPT), last=1)
    assert inner.history == LONG_PROMPT and w.rebuilds == 0


def test_asked_rows_are_always_real_positions():
    w = WindowedDrafter(CLOSE.drafter("close"), window=2, sink=1)
    out = w.score(torch.tensor(LONG_PROMPT), last=5)  # more rows than the window holds
    assert out.shape == (5, V)
    # the window grew to the five asked positions (cut at 3), after the one sink token
    for i in range(5):
        assert torch.equal(out[i], CLOSE.logits_after([2, *LONG_PROMPT[3 : 4 + i]]))


class _OwnGreedyPath(TableDrafter):
    """A table drafter with its own ``score_argmax`` (as a llama.cpp member has): records each pass."""

    def __init__(self, lm, name):
        super().__init__(lm, name)
        self.argmax_passes: list[list[int]] = []

    def score_argmax(self, new_ids):
        self.argmax_passes.append(new_ids.tolist())
        return super().score_argmax(new_ids)


@pytest.mark.parametrize(
    "window,passes",
    [
        # a rebuild that cuts (sink 2 + last 3), the tail, a rollback inside it, one before the cut
        (3, [[2, 4, 2, 2, 4], [1], [3, 0], [2], [2, 4, 1, 3, 3]]),
        (None, [LONG_PROMPT, [1], [3, 0], [2], [3]]),  # no window: the tokens as they come
    ],
    ids=["window3-sink2", "no-window"],
)
def test_score_argmax_passes_through_to_the_inner_drafter(window, passes):
    """``score_argmax`` reaches the inner drafter's own (llama.cpp's argmax without copying the
    row) with the content ``score`` would feed it: the token is ``score(ids, last=1)``'s argmax and
    the state (positions, cut, rebuilds) is the one ``score`` leaves."""
    by_score = WindowedDrafter(CLOSE.drafter("close"), window=window, sink=2)
    inner = _OwnGreedyPath(CLOSE, "close")
    by_argmax = WindowedDrafter(inner, window=window, sink=2)
    for step in (LONG_PROMPT, [1], [3, 0], 9, [2], 4, [3]):  # an int: roll back to that length
        if isinstance(step, int):
            by_score.rollback(step)
            by_argmax.rollback(step)
            continue
        ids = torch.tensor(step)
        token = by_argmax.score_argmax(ids)
        assert token.shape == (1,) and token.tolist() == by_score.score(ids, last=1).argmax(dim=-1).tolist()
        assert (by_argmax.processed, by_argmax.rebuilds, inner.history) == (
            by_score.processed,
            by_score.rebuilds,
            by_score.inner.history,
        )
    assert inner.argmax_passes == passes


@pytest.mark.parametrize(
    "window,sink,message",
    [(0, 0, "window must be >= 1"), (4, 4, "smaller than the window"), (4, -1, "sink must be >= 0")],
)
def test_bad_windows_are_one_clear_error(window, sink, message):
    with pytest.raises(UserError, match=message):
        WindowedDrafter(CLOSE.drafter("close"), window=window, sink=sink)


def test_a_windowed_target_is_refused():
    with pytest.raises(UserError, match="cannot be the target"):
        Chain([WindowedDrafter(TARGET.drafter("t"), 4, 1), CLOSE.drafter("c")], [2])


CASES = [
    pytest.param([2], (1, 0), None, SamplingParams(1.0), id="depth2-window1"),
    pytest.param([3], (2, 1), None, SamplingParams(0.8, top_k=4), id="depth2-window2-sink1"),
    pytest.param([3, 2], (2, 1), (1, 0), SamplingParams(1.0), id="depth3-both-windowed"),
]


@pytest.mark.parametrize("gammas,middle,bottom,params", CASES)
def test_windowed_chains_sample_the_target_distribution(gammas, middle, bottom, params):
    """Chi-square against the exact distribution with windows that bind on the prompt (rebuilds and
    rollbacks into the cut both happen); the window of a level that verifies too (depth 3)."""
    n, length = 4000, 3
    members = [TARGET.drafter("target"), WindowedDrafter(CLOSE.drafter("close"), *middle)]
    if bottom is not None:
        members.append(WindowedDrafter(FAR.drafter("far"), *bottom))
    chain = Chain(members, gammas)
    dist = exact_distribution(TARGET.logits_after, params, LONG_PROMPT, length)
    counts = sample_counts(chain, params, n, length, prompt=LONG_PROMPT)
    assert chi_square_p(dist, counts, n) > 1e-3
    assert members[1].rebuilds > 0  # the window did cut


def test_the_window_changes_the_proposal():
    """Control: the windowed drafter's own distribution differs from the unwindowed one (else the
    tests above would prove nothing about windows)."""
    plain, windowed = CLOSE.drafter("c"), WindowedDrafter(CLOSE.drafter("c"), 1, 0)
    a = plain.score(torch.tensor(PROMPT), last=1)
    b = windowed.score(torch.tensor(PROMPT), last=1)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_greedy_identity_with_windowed_transformers_drafters(depth):
    target = tiny_llama(vocab_size=32, num_layers=2, seed=21, hidden_size=32, logit_scale=3.0)
    prompt = torch.randint(0, 32, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    drafters = [perturbed_copy(target, 0.02 * i, seed=30 + i) for i in range(1, depth)]
    members = [ModelDrafter(target, "t")] + [
        WindowedDrafter(ModelDrafter(d, f"d{i}"), window=8 + 4 * i, sink=2) for i, d in enumerate(drafters)
    ]
    gammas = [5, 3, 2][: depth - 1]
    alone = Chain([ModelDrafter(target, "alone")]).generate(prompt, max_new_tokens=48, eos_token_id=[]).tokens
    result = Chain(members, gammas).generate(prompt, max_new_tokens=48, eos_token_id=[])
    assert result.tokens == alone
    assert all(m.rebuilds > 0 for m in members[1:])
    assert all(lv.prefill_tokens > 0 for lv in result.stats.levels)


# ---- lazy prefill ---------------------------------------------------------------------------------


class _BringInLater:
    """Target alone for the first rounds, then the drafter (a controller that changes its mind)."""

    def __init__(self, after_rounds: int) -> None:
        self.after, self.rounds = after_rounds, 0

    def start(self, chain_size, prompt, max_new_tokens=0):
        self.rounds = 0
        return RoundSetting((0,), (), "target alone first")

    def observe(self, *args):
        pass

    def next_round(self, tokens):
        self.rounds += 1
        return RoundSetting((0, 1), (3,), "drafter in") if self.rounds >= self.after else RoundSetting((0,), ())


def test_a_member_is_prefilled_only_when_a_round_first_uses_it():
    target, close = TARGET.drafter("target"), CLOSE.drafter("close")
    chain = Chain([target, close], [3], controller=_BringInLater(10**9))
    result = chain.generate(LONG_PROMPT, max_new_tokens=12, eos_token_id=[])
    assert close.processed == 0 and result.stats.levels[1].prefill_tokens == 0
    assert result.stats.levels[1].forward_passes == 0
    assert result.stats.levels[0].prefill_tokens == len(LONG_PROMPT)

    chain = Chain([target, close], [3], controller=_BringInLater(4))
    result = chain.generate(LONG_PROMPT, max_new_tokens=12, eos_token_id=[])
    # brought in after 4 one-token rounds: its first pass reads the prompt and those 4 tokens
    assert result.stats.levels[1].prefill_tokens == len(LONG_PROMPT) + 4
    alone = Chain([TARGET.drafter("t")]).generate(LONG_PROMPT, max_new_tokens=12, eos_token_id=[])
    assert result.tokens == alone.tokens


# ---- pool files ---------------------------------------------------------------------------------------

POOL = """
[pool]
name = "p"
target = "big"

[[member]]
name = "big"
source = "smollm2-135m"

[[member]]
name = "small"
source = "smollm2-135m"
{extra}
"""


@pytest.mark.parametrize(
    "extra,message",
    [
        ("window = 0", "window must be >= 1"),
        ("window = 8\nsink = 8", "smaller than the window"),
        ("sink = 4", "sink is set but window is not"),
        ('window = "x"', "window must be an integer"),
        ('backend = "llama.cpp"\nn_ctx = 256\nwindow = 512', "exceeds the member's context of 256"),
    ],
)
def test_pool_window_errors(tmp_path, extra, message):
    with pytest.raises(PoolFileError, match=message):
        _pool_from_text(POOL.format(extra=extra), str(tmp_path / "p.toml"), tmp_path, "install")


def test_pool_window_on_the_target_is_refused(tmp_path):
    text = POOL.format(extra="").replace('name = "big"\nsource', 'name = "big"\nwindow = 64\nsource')
    with pytest.raises(PoolFileError, match="target 'big' cannot have a window"):
        _pool_from_text(text, str(tmp_path / "p.toml"), tmp_path, "install")


def test_pool_window_is_parsed_and_described(tmp_path):
    pool = _pool_from_text(POOL.format(extra="window = 128\nsink = 2"), str(tmp_path / "p.toml"), tmp_path, "i")
    spec = pool.member("small")
    assert (spec.window, spec.sink) == (128, 2)
    assert spec.describe().endswith("window=128 sink=2")
    assert "window" not in pool.member("big").describe()


def test_stats_report_the_gammas_each_level_really_used():
    """issue 20 item 9: under a controller that changes gammas, stats say what ran, not the plan."""

    class Alternating:
        def start(self, chain_size, prompt, max_new_tokens=0):
            self.n = 0
            return RoundSetting((0, 1), (2,))

        def observe(self, *args):
            pass

        def next_round(self, tokens):
            self.n += 1
            return RoundSetting((0, 1), (2 if self.n % 2 == 0 else 5,))

    chain = Chain([TARGET.drafter("t"), CLOSE.drafter("c")], [3], controller=Alternating())
    result = chain.generate(LONG_PROMPT, max_new_tokens=40, eos_token_id=[])
    used = result.stats.levels[1].gammas_used
    assert set(used) == {2, 5} and 3 not in used and sum(used.values()) == result.stats.levels[0].num_drafts


def test_each_device_gets_its_own_seed():
    """issue 20 item 8: the home device keeps the seed (same outputs as before), others differ."""
    from polyplan.executor.chain import device_seed

    cpu, gpu, gpu1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")
    assert device_seed(7, cpu, cpu) == 7
    assert len({device_seed(7, cpu, cpu), device_seed(7, gpu, cpu), device_seed(7, gpu1, cpu)}) == 3
    assert device_seed(7, gpu, cpu) == device_seed(7, gpu, cpu)  # deterministic


def test_a_drafter_whose_context_a_request_overflows_drafts_from_a_window_for_that_call_only():
    """The window is per call: the chain keeps its members, so a later call that fits reads the
    whole sequence again (and a drafter is never wrapped twice)."""
    target = tiny_llama(vocab_size=32, num_layers=2, seed=21, hidden_size=32, logit_scale=3.0)
    short = ModelDrafter(perturbed_copy(target, 0.02, seed=31), "short")
    short._max_context = 24  # a drafter with a short context (its positions still reach further)
    chain = Chain([ModelDrafter(target, "t"), short], [3])
    prompt = torch.randint(0, 32, (20,), generator=torch.Generator().manual_seed(5)).tolist()
    alone = Chain([ModelDrafter(target, "alone")]).generate(prompt, max_new_tokens=16, eos_token_id=[]).tokens
    for _ in range(2):
        result = chain.generate(prompt, max_new_tokens=16, eos_token_id=[])
        assert result.tokens == alone
        assert any("short: 36 tokens exceed its context of 24" in n for n in result.stats.notes)
        assert chain.drafters[1] is short
    fits = chain.generate(prompt, max_new_tokens=4, eos_token_id=[])
    assert fits.tokens == alone[:4] and not fits.stats.notes and chain.drafters[1] is short
