from collections import Counter

import pytest

from polyplan.data import Prompt, categories, load_prompts
from polyplan.errors import UserError


def test_prompt_set_covers_categories_and_splits():
    prompts = load_prompts()
    assert len(prompts) >= 60
    assert len({p.id for p in prompts}) == len(prompts)
    cats = Counter(p.category for p in prompts)
    for cat in ("chat", "code", "math", "summarization", "translation", "qa"):
        assert cats[cat] >= 8
    fit = len(load_prompts("fit"))
    assert 0.2 < fit / len(prompts) < 0.45
    assert all(isinstance(p, Prompt) and p.text.strip() for p in prompts)
    assert {p.split for p in load_prompts("eval")} == {"eval"}


def test_categories_filter_and_round_robin_limit():
    code = load_prompts("eval", categories=["code"])
    assert code and all(p.category == "code" for p in code)
    sample = load_prompts("eval", limit=len(categories()))
    assert {p.category for p in sample} == set(categories())
    assert len(load_prompts("eval", limit=1000)) == len(load_prompts("eval"))


def test_bad_inputs():
    with pytest.raises(UserError):
        load_prompts("train")
    with pytest.raises(UserError, match="poetry"):
        load_prompts(categories=["poetry"])
