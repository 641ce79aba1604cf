"""Every registered reducer in bf16 and fp16: indices are never carried in the activation dtype.

bf16 holds integers exactly only up to 256, so a method that tracks token ids or sizes in the model's dtype
breaks at LLaVA's 576 visual tokens (ToMe once failed with "kept index out of range" there). Each reducer runs
on a tiny random LLaVA in bf16 and fp16 and must keep the same number of tokens it keeps in fp32; the
budget methods also run at 576 visual tokens, built through the registry factory.
"""
from __future__ import annotations

import pytest
import torch

from common.factory import budget_methods, build_reducer, make_reducer
from common.models.tiny import make_batch, num_image_tokens, tiny_llava
from common.reduction import BuildTarget, reduce_tokens
from common.schedule import Budget
from tests._reducer_cases import CASES

HALF = (torch.bfloat16, torch.float16)


def _run(model, batch, reducer):
    with torch.no_grad(), reduce_tokens(model, reducer) as st:
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    return st, out


def _inputs(model, dtype, seed=1):
    b = make_batch(batch_size=2, n_image_tokens=num_image_tokens(model), image_size=model.config.vision_config.image_size,
                   seed=seed)
    inputs = b.inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


@pytest.fixture(scope="module")
def models():
    return {dt: tiny_llava(seed=0, num_layers=4, dtype=dt) for dt in (torch.float32, *HALF)}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_reducer_runs_in_half_precision(models, name, dtype):
    ref_st, _ = _run(models[torch.float32], _inputs(models[torch.float32], torch.float32),
                     build_reducer(name, **CASES[name]["prune"]))
    st, out = _run(models[dtype], _inputs(models[dtype], dtype), build_reducer(name, **CASES[name]["prune"]))
    assert out.shape[1] == _inputs(models[dtype], dtype)["input_ids"].shape[1] + 2
    assert set(st.kept_counts) == set(ref_st.kept_counts)
    if name not in ("sparsevlm", "atp", "dyrate"):  # counts of these depend on scores (rank, thresholds)
        assert st.kept_counts == ref_st.kept_counts
    for layer, rows in st.kept.items():
        for b, k in enumerate(rows):
            assert k.dtype == torch.long and (k.numel() == 0 or int(k.max()) < 16)


@pytest.fixture(scope="module")
def big():
    """576 visual tokens (24 x 24 patches of 4 px), as LLaVA-1.5."""
    return {dt: tiny_llava(seed=0, num_layers=4, image_size=96, patch=4, dtype=dt) for dt in HALF}


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_budget_methods_at_576_tokens(big, dtype):
    model = big[dtype]
    inputs = _inputs(model, dtype)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum(1)[0]) == 576
    target = BuildTarget(n_layers=4, n_visual=576, model=model, image_token_id=model.config.image_token_id,
                         calibration_batches=lambda: [inputs])
    for name in budget_methods():
        st, _ = _run(model, inputs, make_reducer(name, Budget.paper(64), target))
        for rows in st.kept.values():
            for k in rows:
                ids = k[k >= 0]
                assert ids.dtype == torch.long and (ids.numel() == 0 or int(ids.max()) < 576)
                assert ids.unique().numel() == ids.numel(), name
