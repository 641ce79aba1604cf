"""DyRate's attention-share analysis (papers/dyrate/analysis.py) on tiny random LLaVAs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common import spans as S
from papers.dyrate.analysis import TOKEN_TYPES, generation_shares, share_trend, type_shares

T = 4


@pytest.fixture(scope="module")
def trace(model, batch):
    return generation_shares(model, batch.inputs(), max_new_tokens=T)


def test_shares_sum_to_one(trace):
    assert trace.shares.shape == (3, T, 4, 4, 4)
    np.testing.assert_allclose(trace.shares.sum(-1), 1.0, atol=1e-5)
    assert (trace.shares >= 0).all()
    # no response token exists at step 1; afterwards the newest token sees the earlier ones
    assert np.all(trace.shares[:, 0, ..., TOKEN_TYPES.index("response")] == 0)
    assert np.all(trace.shares[:, 1:, ..., TOKEN_TYPES.index("response")] > 0)


def test_equals_eager_attention_rows(model, batch, trace):
    """Step t's shares equal the eager attention row that predicts token t, summed by type."""
    seq = torch.cat([batch.input_ids, torch.as_tensor(trace.tokens)], 1)
    am = torch.cat([batch.attention_mask, torch.ones(3, T, dtype=torch.long)], 1)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=seq, attention_mask=am, pixel_values=batch.pixel_values, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    P = batch.input_ids.shape[1]
    spans = S.compute_spans(seq, am, batch.image_token_id, prompt_length=P)
    kinds = S.kinds_of(spans, seq.shape[1])
    for l, att in enumerate(out.attentions):  # [B, H, L, L]
        for t in range(T):
            row = att[:, :, P - 1 + t: P + t, : P + t]  # the query predicting token t+1, keys so far
            ref = type_shares(row.float(), kinds[:, : P + t])[:, :, 0]
            np.testing.assert_allclose(trace.shares[:, t, l], ref.numpy(), atol=1e-5)


def test_nan_after_eos(model, batch):
    first = generation_shares(model, batch.inputs(), max_new_tokens=T)
    eos = int(first.tokens[0, 1])  # pretend sample 0's second token ends it
    tr = generation_shares(model, batch.inputs(), max_new_tokens=T, eos_token_id=eos)
    assert tr.active[0, :2].all() and not tr.active[0, 2:].any()
    assert np.isnan(tr.shares[0, 2:]).all() and not np.isnan(tr.shares[0, :2]).any()


def test_layer_subset_and_views(model, batch, trace):
    tr = generation_shares(model, batch.inputs(), max_new_tokens=T, layers=[1, 3])
    np.testing.assert_allclose(tr.shares, trace.shares[:, :, [1, 3]], atol=1e-6)
    per = tr.per_type()
    assert sorted(per) == sorted(TOKEN_TYPES) and per["image"].shape == (3, T)


def test_type_shares_rejects_bad_shapes():
    with pytest.raises(ValueError, match="values"):
        type_shares(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="key_kinds"):
        type_shares(torch.zeros(2, 1, 1, 4), torch.zeros(2, 5, dtype=torch.int8))


def test_share_trend_sign():
    falling = np.array([[0.5, 0.4, 0.3, 0.2]] * 3)
    assert share_trend(falling) == pytest.approx(-0.1)
    assert share_trend(falling[:, ::-1]) == pytest.approx(0.1)
    assert np.isnan(share_trend(np.full((3, 4), np.nan)))


def test_max_new_tokens_checked(model, batch):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generation_shares(model, batch.inputs(), max_new_tokens=0)
