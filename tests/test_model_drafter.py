import pytest
import torch

from polyplan.errors import UserError
from polyplan.models.kv_cache import CacheNotRollbackable
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import tiny_llama, tiny_sliding_mistral

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONFIGS = [dict(vocab_size=8, num_layers=1, seed=1), dict(vocab_size=32, num_layers=2, seed=2)]


def full_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids.view(1, -1)).logits[0].float()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_chunked_scoring_with_rollbacks_equals_one_pass(cfg):
    model = tiny_llama(**cfg)
    d = ModelDrafter(model, "tiny")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (40,), generator=g)
    reference = full_logits(model, ids)

    pieces, pos = [], 0
    for step, chunk in enumerate([5, 1, 7, 3, 9, 15]):
        # score some junk first and roll it back: the junk must leave no trace
        junk = torch.randint(0, cfg["vocab_size"], (step + 1,), generator=g)
        d.score(junk)
        d.rollback(pos)
        assert d.processed == pos
        pieces.append(d.score(ids[pos : pos + chunk]))
        pos += chunk
    got = torch.cat(pieces)
    assert pos == 40 and d.processed == 40
    assert got.dtype == torch.float32 and got.shape == (40, cfg["vocab_size"])
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)


def test_rollback_then_rescore_reproduces_logits():
    d = ModelDrafter(tiny_llama(vocab_size=16, num_layers=2, seed=3), "tiny")
    ids = torch.arange(12) % 16
    first = d.score(ids)
    d.rollback(4)
    again = d.score(ids[4:])
    torch.testing.assert_close(again, first[4:], atol=1e-5, rtol=1e-5)
    d.rollback(0)
    assert d.processed == 0
    torch.testing.assert_close(d.score(ids), first, atol=1e-5, rtol=1e-5)


def test_reset_and_metadata():
    model = tiny_llama(vocab_size=16, max_position_embeddings=20)
    d = ModelDrafter(model, "tiny")
    assert d.vocab_size == 16 and d.max_context == 20 and d.point_mass is False
    assert d.device == torch.device("cpu")
    d.score(torch.tensor([1, 2, 3]))
    d.reset()
    assert d.processed == 0
    assert d.score(torch.tensor([], dtype=torch.long)).shape == (0, 16)


def test_context_limit_is_a_user_error():
    d = ModelDrafter(tiny_llama(vocab_size=16, max_position_embeddings=10), "tiny")
    d.score(torch.arange(8))
    with pytest.raises(UserError, match="at most 10 tokens"):
        d.score(torch.arange(3))


def test_sliding_window_cache_is_refused():
    with pytest.raises(CacheNotRollbackable, match="sliding-window"):
        ModelDrafter(tiny_sliding_mistral(), "mistral")


def test_bf16_model_returns_float32_logits():
    d = ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.bfloat16), "tiny-bf16")
    assert d.score(torch.tensor([1, 2])).dtype == torch.float32


def test_last_positions_only():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=4)
    ids = torch.arange(10) % 16
    full = ModelDrafter(model, "a").score(ids)
    d = ModelDrafter(model, "b")
    part = d.score(ids, last=3)
    assert part.shape == (3, 16) and d.processed == 10
    torch.testing.assert_close(part, full[-3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        d.score(ids[:2], last=5), ModelDrafter(model, "c").score(torch.cat([ids, ids[:2]]))[-2:], atol=1e-5, rtol=1e-5
    )
