"""Shared pytest setup: determinism and the repo root on sys.path (so tests run without an install too)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One thread for the whole session, module-scoped fixtures included: the tiny test models are dominated
    by per-op overhead, and two threads on two shared cores were measured ~4x slower (47 s -> 12 s for the
    SparseVLM tests)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same RNG state, so results never depend on test order."""
    import torch

    torch.set_num_threads(1)  # a test may have changed it
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def model():
    """The 4-layer tiny random LLaVA most hook tests share (a test module may define its own `model`)."""
    from common.models.tiny import tiny_llava

    return tiny_llava(seed=0, num_layers=4)


@pytest.fixture(scope="module")
def batch(model):
    """A left-padded batch of 3 prompts of different lengths for `model`."""
    from common.models.tiny import make_batch, num_image_tokens

    return make_batch(batch_size=3, n_image_tokens=num_image_tokens(model), seed=1)
