"""A half-precision target in one batch-invariant regime (``ModelDrafter.exact``): a chain over it
is token for token the target decoding alone (docs/staged-decoding.md, "Exact half precision")."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from polyplan import Chain
from polyplan.models.attention import EAGER_FLOAT32
from polyplan.models.exactness import FIXED_WIDTH, TWO_ROWS, ExactProbe, ExactRegime, probe_exact
from polyplan.models.model_drafter import ModelDrafter
from polyplan.weights import load_pool
from polyplan.weights.pools import PoolFileError

from test_models_pools import save_tiny
from tiny_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PassWidths:
    """Records the number of tokens of every forward pass of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.widths: list[int] = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.widths.append(int(kwargs["input_ids"].shape[1]))


def test_exact_is_on_by_default_for_half_precision_on_cpu_only():
    assert ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.bfloat16), "b").exact
    assert ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.float16), "h").exact
    assert not ModelDrafter(tiny_llama(vocab_size=16), "f").exact
    assert ModelDrafter(tiny_llama(vocab_size=16), "f", exact=True).exact
    assert not ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.bfloat16), "b", exact=False).exact


def test_a_one_token_pass_is_padded_as_target_only_and_leaves_no_trace():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=5, dtype=torch.bfloat16)
    d = ModelDrafter(model, "b")
    fast = model.config._attn_implementation  # the drafter's own (grouped heads on CPU: models/attention.py)
    widths = PassWidths(model)
    ids = torch.arange(14) % 16
    with d.as_target():
        assert d.prefills_apart
        d.score(ids[:10], last=1)
        one = d.score(ids[10:11])
        assert one.shape == (1, 16) and d.processed == 11 and d._cache.get_seq_length() == 11
        assert model.config._attn_implementation == fast  # the regime is per pass
        d.rollback(10)
        three = d.score(ids[10:13], last=1)
        assert three.shape == (1, 16)
        d.rollback(10)
        block = d.score(ids[10:13])
    assert widths.widths == [10, 2, 3, 3]
    # the same token's logits, whatever the pass it shares: bitwise
    assert torch.equal(one[0], block[0]) and torch.equal(three[0], block[2])
    assert not d.prefills_apart
    d.reset()
    d.score(ids[:10])
    d.score(ids[10:11])
    assert widths.widths[-1] == 1  # not a target: nothing changes


def test_a_chain_prefills_an_exact_target_apart_from_its_first_verification():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=6, dtype=torch.bfloat16)
    target = ModelDrafter(model, "target")
    drafter = ModelDrafter(tiny_llama(vocab_size=16, num_layers=1, seed=7), "drafter")
    widths = PassWidths(model)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    alone = Chain([target], []).generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert widths.widths[0] == len(prompt) - 1 and set(widths.widths[1:]) == {2}
    widths.widths.clear()
    chained = Chain([target, drafter], [3]).generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert widths.widths[0] == len(prompt) - 1 and min(widths.widths[1:]) >= 2
    assert chained.tokens == alone.tokens
    assert alone.stats.levels[0].prefill_tokens == len(prompt) - 1


def test_pool_option_exact(tmp_path):
    save_tiny(tmp_path / "big", vocab_size=16)
    head = '[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\ndtype = "bfloat16"\n'
    path = tmp_path / "p.toml"
    path.write_text(head)
    assert "exact" not in load_pool(path).member("big").describe()  # descriptions in profiles unchanged
    assert load_pool(path).drafter("big").exact  # half precision on CPU
    path.write_text(head + "exact = false\n")
    pool = load_pool(path)
    assert "exact=false" in pool.member("big").describe() and not pool.drafter("big").exact
    path.write_text(head + 'exact = "yes"\n')
    with pytest.raises(PoolFileError, match="exact must be true or false"):
        load_pool(path)


class ShapeSensitive:
    """A stand-in target whose logits depend on its pass width unless every pass has the same
    width: the kernels of a CPU where only a fixed-width regime is batch invariant."""

    name = "shape-sensitive"
    vocab_size = 8
    tokenizer = None

    def __init__(self, invariant_when_fixed: bool = True) -> None:
        self.exact_regime = TWO_ROWS
        self.invariant_when_fixed = invariant_when_fixed
        self.processed = 0

    @contextmanager
    def as_target(self):
        yield

    def reset(self) -> None:
        self.processed = 0

    def score(self, ids, last=None):
        n = int(ids.shape[0])
        rows = torch.nn.functional.one_hot(ids % 8, 8).float()
        fixed = self.exact_regime is not None and self.exact_regime.fixed
        if self.processed and not (fixed and self.invariant_when_fixed):
            rows = rows + 1e-3 * n  # the pass's shape leaks into every row
        self.processed += n
        return rows[-last:] if last is not None else rows


def test_probe_takes_the_first_regime_that_holds_and_says_why_none_does():
    d = ShapeSensitive()
    probe = probe_exact(d)
    assert probe.holds and probe.regime == FIXED_WIDTH and d.exact_regime == FIXED_WIDTH
    assert "agree bit for bit" in probe.reason
    d = ShapeSensitive(invariant_when_fixed=False)
    probe = probe_exact(d)
    assert not probe.holds and d.exact_regime is None
    assert ">= 2 rows" in probe.reason and "every pass 16 rows" in probe.reason and "apart" in probe.reason
    assert "float32 attention, every pass 16 rows" in probe.reason
    assert "NOT token-identical" in probe.summary()
    assert ExactProbe.from_dict(probe.to_dict()) == probe


def test_fixed_width_regime_attends_in_float32_after_the_prefill():
    """The prefill keeps the fast kernel; every later pass of the fixed-width regime runs the float32
    attention, whose logits stay close to eager bf16 attention's (the same function, other rounding)."""
    model = tiny_llama(vocab_size=16, num_layers=2, seed=9, dtype=torch.bfloat16)
    seen: list[str] = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append(m.config._attn_implementation), with_kwargs=True)
    ids = torch.arange(24) % 16
    out = {}
    for regime in (ExactRegime(16, True, "eager"), FIXED_WIDTH):
        d = ModelDrafter(model, "b")
        d.exact_regime = regime
        with d.as_target():
            d.score(ids[:10], last=1)
            out[regime.attention] = d.score(ids[10:20])
    fast = seen[0]
    assert seen == [fast, "eager", fast, EAGER_FLOAT32] and fast not in ("eager", EAGER_FLOAT32)
    assert model.config._attn_implementation == fast  # restored after each pass
    diff = float((out["float32"] - out["eager"]).abs().max())
    assert diff < 0.1 * float(out["eager"].abs().max()) + 0.1, diff  # a wrong mask gives whole logits apart


def test_a_model_type_not_read_for_the_float32_attention_name_is_not_probed_in_it():
    model = tiny_llama(vocab_size=16, num_layers=1, seed=3, dtype=torch.bfloat16)
    model.config.model_type = "gemma"  # model files of other types may test the attention name literally
    d = ModelDrafter(model, "b")
    assert d.runs_regime(TWO_ROWS) and not d.runs_regime(FIXED_WIDTH)
    probe = probe_exact(d, candidates=(FIXED_WIDTH,))
    assert not probe.holds and "not run" in probe.reason and d.exact_regime is None


def test_fixed_width_regime_pads_every_pass_and_splits_longer_ones():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=8, dtype=torch.bfloat16)
    d = ModelDrafter(model, "b")
    d.exact_regime = ExactRegime(4, fixed=True)
    widths = PassWidths(model)
    ids = torch.arange(20) % 16
    with d.as_target():
        d.score(ids[:10], last=1)
        one = d.score(ids[10:11])
        assert one.shape == (1, 16) and d.processed == 11 and d._cache.get_seq_length() == 11
        six = d.score(ids[11:17], last=2)
        assert six.shape == (2, 16) and d.processed == 17 and d._cache.get_seq_length() == 17
    assert widths.widths == [10, 4, 4, 4]  # 1 padded to 4; 6 scored as 4 + (2 padded to 4)


@pytest.fixture(scope="module")
def smollm2_bf16(smollm2_pool):
    """The bf16 target, in the regime the probe found on this machine; skips with the probe's
    reason where none holds (a property of the CPU's kernels, docs/staged-decoding.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tests' threads (one_torch_thread): the regime is probed with them
    d = smollm2_pool.drafter("smollm2-135m:bf16")
    probe = probe_exact(d)
    torch.set_num_threads(before)
    if not probe.holds:
        pytest.skip(f"no batch-invariant regime on this CPU: {probe.reason}")
    return d


@pytest.mark.weights
def test_exact_regime_is_batch_invariant_on_smollm2_bf16(smollm2_pool, smollm2_bf16):
    """Every pass after the prefill: a token's logits are bitwise the same whatever pass it shares
    (other text and splits than the probe's)."""
    d = smollm2_bf16
    ids = smollm2_pool.tokenizer("def f(x):\n    return x * 2\n\nThe quick brown fox jumps over the lazy dog.")[
        "input_ids"
    ]
    ids = torch.tensor(ids * 3)
    start, n = 20, 12
    with d.as_target():
        rows = {}
        for pieces in ([n], [1] * n, [5, 3, 4], [2, 1, 9]):
            d.reset()
            d.score(ids[:start], last=1)
            out, pos = [], start
            for k in pieces:
                out.append(d.score(ids[pos : pos + k]))
                pos += k
            rows[tuple(pieces)] = torch.cat(out)
    first = rows[(n,)]
    for pieces, got in rows.items():
        assert torch.equal(got, first), pieces


@pytest.mark.weights
@pytest.mark.parametrize(
    "names, gammas",
    [
        pytest.param(["smollm2-135m:bf16", "smollm2-135m:int8"], [7], id="bf16<-int8"),
        pytest.param(["smollm2-135m:bf16", "smollm2-135m", "prompt-lookup"], [5, 3], id="bf16<-f32<-lookup"),
    ],
)
def test_chain_over_bf16_target_equals_it_decoding_alone(smollm2_pool, smollm2_bf16, names, gammas):
    tok = smollm2_pool.tokenizer
    members = smollm2_pool.drafters(names)
    assert members[0] is smollm2_bf16
    alone = Chain(members[:1], [], tokenizer=tok)
    chain = Chain(members, gammas, tokenizer=tok)
    for text in (
        "Write a Python function that checks whether a number is prime.",
        "Translate to French: The weather is nice today and we are going to the beach.",
        "What is 17 times 23? Explain step by step.",
        "Summarize: The committee met on Tuesday to discuss the budget, which rose by 4% over last year.",
    ):
        ids = tok(text)["input_ids"]
        want = alone.generate(ids, max_new_tokens=32, eos_token_id=[]).tokens
        assert chain.generate(ids, max_new_tokens=32, eos_token_id=[]).tokens == want, text
