"""The traces sidecar's one reader and writer (polyplan.documents.traces)."""

from __future__ import annotations

import numpy as np
import pytest

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError


def two_prompts() -> Traces:
    return Traces.from_prompts(
        prompt_ids=["a", "b"],
        categories=["math", "chat"],
        prompt_lengths=[100, 60],
        tokens=[np.arange(3), np.arange(5)],
        pairs={
            "greedy": {("t", "d"): [np.array([1, 0, 1]), np.array([1, 1, 1, 0, 0])]},
            "sampling": {("t", "d"): [np.array([0.5, 0.5, 0.5]), np.full(5, 0.25)]},
            "ranks": {("t", "d"): [np.array([1, 2, 0]), np.array([1, 1, 1, 3, 0])]},
        },
        identity={"pool": "p", "settings": {"seed": 0}},
    )


def test_round_trip_keeps_keys_order_dtypes_and_values(tmp_path):
    tr = two_prompts()
    tr.validate()
    path = tmp_path / "x.traces.npz"
    tr.save(path)
    back = Traces.load(path)
    assert list(back.keys()) == [
        "segments",
        "categories",
        "prompt_ids",
        "prompt_lengths",
        "tokens",
        "identity",
        "greedy/t/d",
        "sampling/t/d",
        "ranks/t/d",
    ]
    for key in tr.as_dict():
        np.testing.assert_array_equal(back.as_dict()[key], tr.as_dict()[key])
        assert back.as_dict()[key].dtype == tr.as_dict()[key].dtype
    assert back.pair("greedy", "t", "d").dtype == np.float32
    assert back.identity() == {"pool": "p", "settings": {"seed": 0}}
    assert back.prompt_ids == ["a", "b"] and back.categories == ["math", "chat"]
    assert back.pair("greedy", "t", "x") is None
    assert back.pairs_of("sampling").keys() == {("t", "d")}


def test_segment_arithmetic():
    tr = two_prompts()
    assert tr.segments.tolist() == [0, 3, 8]
    assert tr.bounds() == [(0, 3), (3, 8)]
    assert tr.generation_lengths() == [3, 5]
    assert [p.tolist() for p in tr.per_prompt("greedy", "t", "d")] == [[1, 0, 1], [1, 1, 1, 0, 0]]
    assert tr.prompt_means(tr.pair("greedy", "t", "d")) == pytest.approx([2 / 3, 3 / 5])
    assert tr.mean_prompt_length() == 80.0
    assert tr.decoding_context() == 80.0 + 4.0 / 2  # mean reference length 4
    assert tr.decoding_context(64) == 80.0 + 32
    empty = Traces({})
    assert empty.bounds() == [] and empty.generation_lengths() == [] and empty.mean_prompt_length() is None
    assert empty.decoding_context() is None and empty.per_prompt("greedy", "t", "d") is None


def test_validate_catches_traces_the_segments_do_not_cover():
    arrays = two_prompts().as_dict()
    arrays["greedy/t/d"] = arrays["greedy/t/d"][:-1]
    with pytest.raises(DocumentError, match="greedy/t/d has 7 positions"):
        Traces(arrays).validate()
    with pytest.raises(DocumentError, match="prompt_ids"):
        Traces({**two_prompts().as_dict(), "prompt_ids": np.array(["a"])}).validate()


def test_missing_and_truncated_sidecars_are_user_errors(tmp_path):
    path = tmp_path / "p.traces.npz"
    with pytest.raises(DocumentError, match="traces sidecar named by the profile is missing"):
        Traces.load(path)
    two_prompts().save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match="cannot read traces"):
            Traces.load(path)
    prof = Profile(pool="p", target="t", candidates=[], latency={}, pairs=[], temperature=1.0, machine={})
    with pytest.raises(DocumentError, match="has no traces sidecar"):
        Traces.of_profile(prof, tmp_path / "p.json")
    prof.traces = path.name
    with pytest.raises(DocumentError, match="cannot read traces"):
        Traces.of_profile(prof, tmp_path / "p.json")
