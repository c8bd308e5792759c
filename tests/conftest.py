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


@pytest.fixture(scope="session")
def smollm2_pool():
    """The built-in smollm2 pool, shared by the whole session (drafters load once)."""
    from polyplan.models import load_pool

    pool = load_pool("smollm2")
    if not all(pool.installed().values()):
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
