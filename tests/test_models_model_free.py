"""Prompt lookup and n-gram drafters on hand-built sequences, and their incremental index
against a naive full-scan reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from polyplan.errors import UserError
from polyplan.models.model_free import NgramDrafter, NgramTable, PromptLookupDrafter, SuffixIndex


def naive_prompt_lookup(ctx: list[int], n: int, min_n: int, max_n: int) -> list[int]:
    """Reference: for the longest suffix size first, the most recent earlier occurrence that has
    at least one token after it; copy up to n tokens from there."""
    L = len(ctx)
    for k in range(min(max_n, L - 1), min_n - 1, -1):
        suffix = ctx[L - k :]
        for start in range(L - k - 1, -1, -1):  # occurrence ctx[start:start+k], continuation at start+k < L
            if ctx[start : start + k] == suffix:
                return ctx[start + k : start + k + n]
    return []


def test_copies_continuation_of_longest_suffix():
    d = PromptLookupDrafter(vocab_size=100, max_ngram=3)
    #          a  b  c  X  Y    b  c  Z   ...  a  b  c
    ctx = [1, 2, 3, 40, 41, 2, 3, 50, 51, 1, 2, 3]
    # the 3-gram (1,2,3) occurred at the start -> continuation 40, 41; the 2-gram (2,3) occurred
    # more recently (-> 50) but the longer match wins
    assert d.propose(ctx, 2) == [40, 41]
    assert d.propose(ctx, 5) == [40, 41, 2, 3, 50]


def test_most_recent_occurrence_wins_among_equal_lengths():
    d = PromptLookupDrafter(vocab_size=100, max_ngram=2)
    ctx = [7, 8, 1, 7, 8, 2, 9, 7, 8]
    assert d.propose(ctx, 1) == [2]


def test_no_match_and_min_ngram():
    d = PromptLookupDrafter(vocab_size=100, min_ngram=2, max_ngram=3)
    assert d.propose([1, 2, 3, 4], 3) == []
    # a single-token match (4 -> 5) is below min_ngram
    assert d.propose([1, 2, 3, 4, 5, 6, 4], 3) == []
    d1 = PromptLookupDrafter(vocab_size=100, min_ngram=1, max_ngram=3)
    assert d1.propose([1, 2, 3, 4, 5, 6, 4], 3) == [5, 6, 4]
    assert d1.propose([], 3) == []
    assert d1.propose([5], 0) == []


def test_suffix_never_matches_itself_and_continuation_is_truncated_at_end():
    d = PromptLookupDrafter(vocab_size=100, max_ngram=2)
    # (3, 3) occurs ending at index 2 (continuation 3 at index 3) — the suffix itself is not used
    assert d.propose([3, 3, 3], 4) == [3]


def test_incremental_growth_rollback_and_divergence_match_reference():
    d = PromptLookupDrafter(vocab_size=100, max_ngram=3)
    seq = [1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2]
    for L in range(1, len(seq) + 1):
        assert d.propose(seq[:L], 3) == naive_prompt_lookup(seq[:L], 3, 1, 3)
    assert d.processed == len(seq)
    d.rollback(5)
    assert d.processed == 5
    assert d.propose(seq[:5], 3) == naive_prompt_lookup(seq[:5], 3, 1, 3)
    # a context that diverges from what was indexed (no rollback called) is detected
    other = [1, 2, 3, 9, 9, 1, 2, 3, 9]
    assert d.propose(other, 2) == naive_prompt_lookup(other, 2, 1, 3)
    assert d.propose(torch.tensor(other), 2) == naive_prompt_lookup(other, 2, 1, 3)
    d.reset()
    assert d.processed == 0
    with pytest.raises(ValueError):
        d.rollback(1)


@settings(max_examples=150, deadline=None)
@given(
    seq=st.lists(st.integers(0, 4), min_size=0, max_size=40),
    cut=st.integers(0, 40),
    n=st.integers(1, 6),
    sizes=st.tuples(st.integers(1, 3), st.integers(0, 2)),
)
def test_prompt_lookup_equals_naive_reference(seq, cut, n, sizes):
    min_n, extra = sizes
    max_n = min_n + extra
    d = PromptLookupDrafter(vocab_size=5, min_ngram=min_n, max_ngram=max_n)
    # grow token by token, roll back, grow again: the index must equal a fresh one
    for L in range(len(seq) + 1):
        assert d.propose(seq[:L], n) == naive_prompt_lookup(seq[:L], n, min_n, max_n)
    cut = min(cut, len(seq))
    d.rollback(cut)
    fresh = SuffixIndex(min_n, max_n)
    fresh.extend(seq[:cut])
    assert d._index.tokens == fresh.tokens and d._index._positions == fresh._positions
    assert d.propose(seq, n) == naive_prompt_lookup(seq, n, min_n, max_n)


def test_point_mass_interface():
    d = PromptLookupDrafter(vocab_size=49152)
    assert d.point_mass and d.vocab_size == 49152 and d.name == "prompt-lookup"
    with pytest.raises(NotImplementedError):
        d.score(torch.tensor([1, 2]))
    with pytest.raises(UserError):
        PromptLookupDrafter(vocab_size=10, min_ngram=3, max_ngram=2)


# --- n-gram table --------------------------------------------------------------------------


def test_table_counts_pick_most_frequent_and_break_ties_by_id():
    t = NgramTable.fit([[1, 2, 3], [1, 2, 3], [1, 2, 4], [5, 7], [5, 6]], order=3)
    assert t.best_next[(1, 2)] == 3
    assert t.best_next[(2,)] == 3
    assert t.best_next[(5,)] == 6  # 6 and 7 once each: smaller id
    assert t.lookup([9, 1, 2]) == 3
    assert t.lookup([9, 9]) is None
    assert NgramTable.from_json(t.to_json()).best_next == t.best_next
    with pytest.raises(UserError):
        NgramTable.fit([[1, 2]], order=1)


def test_ngram_chains_table_lookups_with_backoff():
    table = NgramTable.fit([[10, 11, 12, 13, 14]], order=3)
    d = NgramDrafter(vocab_size=20, table=table)
    # context ends with 10, 11 -> 12 -> (11,12) -> 13 -> 14 -> nothing known after 14
    assert d.propose([0, 10, 11], 5) == [12, 13, 14]
    # backoff: (5, 12) unknown as a bigram, 12 alone -> 13
    assert d.propose([5, 12], 2) == [13, 14]
    assert d.propose([5, 6], 3) == []


def test_ngram_prefers_context_over_table_at_equal_length():
    table = NgramTable.fit([[1, 2, 3]], order=3)
    d = NgramDrafter(vocab_size=20, table=table)
    # the context itself says (1, 2) -> 9 most recently; it overrides the fitted (1, 2) -> 3
    assert d.propose([1, 2, 9, 4, 1, 2], 1) == [9]
    # a longer match in the table beats a shorter one in the context
    table2 = NgramTable.fit([[7, 1, 2, 5]], order=4)
    d2 = NgramDrafter(vocab_size=20, table=table2)
    assert d2.propose([2, 8, 7, 1, 2], 1) == [5]


def test_ngram_without_table_is_online_only_and_rolls_back():
    d = NgramDrafter(vocab_size=20, order=3)
    assert d.propose([1, 2, 3, 1, 2], 3) == [3, 1, 2]
    d.rollback(2)
    assert d.processed == 2
    assert d.propose([1, 2], 2) == []
