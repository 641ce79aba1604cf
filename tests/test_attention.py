"""Attention capture: slices equal eager attention, other layers stay on sdpa, outputs unchanged, no leaks."""
from __future__ import annotations

import pytest
import torch

from common import attention as A
from common.attention import AttentionSlice, capture_attention
from common.models.tiny import make_batch, num_image_tokens, tiny_llama, tiny_llava
from common.spans import compute_spans


@pytest.fixture(scope="module")
def models():
    m = tiny_llava(seed=0, num_layers=4)
    e = tiny_llava(seed=0, num_layers=4, attn="eager")
    e.load_state_dict(m.state_dict())
    return m, e


@pytest.fixture(scope="module")
def batch(models):
    return make_batch(batch_size=3, n_image_tokens=num_image_tokens(models[0]), seed=2)


@pytest.fixture(scope="module")
def eager_attn(models, batch):
    with torch.no_grad():
        return models[1](**batch.inputs(), output_attentions=True).attentions


def _expected(att_full, cap):
    B, H, L, _ = att_full.shape
    x = att_full.gather(2, cap.q_index[:, None, :, None].expand(B, H, -1, L))
    x = x.gather(3, cap.k_index[:, None, None, :].expand(B, H, x.shape[2], -1))
    keep = cap.q_valid[:, None, :, None] & cap.k_valid[:, None, None, :]
    return torch.where(keep, x, torch.zeros(()))


@pytest.mark.parametrize("queries", ["last", "instruction", "text", "all"])
@pytest.mark.parametrize("keys", ["visual", "all"])
def test_slice_equals_eager(models, batch, eager_attn, queries, keys):
    m, _ = models
    with torch.no_grad():
        plain = m(**batch.inputs()).logits
        with capture_attention(m, [1, 3], AttentionSlice(queries, keys)) as cap:
            out = m(**batch.inputs()).logits
    assert torch.equal(out, plain)  # capturing never changes the output
    for layer in (1, 3):
        c = cap.results[layer]
        torch.testing.assert_close(c.values, _expected(eager_attn[layer], c), atol=1e-5, rtol=0)
        assert c.values.shape[:2] == (3, 4)
    spans = compute_spans(batch.input_ids, batch.attention_mask, batch.image_token_id)
    if keys == "visual":
        for b, sp in enumerate(spans):
            assert torch.equal(cap.results[1].k_index[b][cap.results[1].k_valid[b]], sp.visual_positions())
    if queries == "instruction":
        for b, sp in enumerate(spans):
            assert torch.equal(cap.results[1].q_index[b][cap.results[1].q_valid[b]], sp.instruction_positions())


def test_pre_softmax_logits(models, batch):
    m, e = models
    with torch.no_grad(), capture_attention(m, [2], AttentionSlice("last", "visual", pre_softmax=True)) as cap:
        m(**batch.inputs())
    c = cap.results[2]
    # softmax over the full row is not available from the slice, but ratios are: exp(l_i - l_j) = p_i / p_j
    with torch.no_grad():
        att = e(**batch.inputs(), output_attentions=True).attentions[2]
    p = _expected(att, c)
    ratio = torch.exp(c.values[..., 1:] - c.values[..., :1])
    torch.testing.assert_close(ratio, p[..., 1:] / p[..., :1], atol=1e-4, rtol=1e-4)


def test_full_mode_equals_eager(models, batch, eager_attn):
    m, _ = models
    with torch.no_grad():
        plain = m(**batch.inputs()).logits
        with capture_attention(m, {0: AttentionSlice(full=True), 2: AttentionSlice(full=True)}) as cap:
            out = m(**batch.inputs()).logits
    valid = batch.attention_mask.bool()
    for layer in (0, 2):
        rows = valid[:, None, :, None] & valid[:, None, None, :]
        torch.testing.assert_close(cap.results[layer] * rows, eager_attn[layer] * rows, atol=1e-5, rtol=0)
    for b in range(3):
        torch.testing.assert_close(out[b, valid[b]], plain[b, valid[b]], atol=1e-5, rtol=0)


def test_other_layers_keep_sdpa_and_nothing_runs_twice(monkeypatch):
    """A text-only model, so every sdpa call is a decoder layer's: all 4 layers call sdpa once, and only the
    scoring layer computes a slice, once."""
    m = tiny_llama(seed=0)
    b = make_batch(n_image_tokens=12, image_size=None)
    calls = {"sdpa": 0, "slice": 0}
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    real_slice = A.attention_slice

    def spy_sdpa(*a, **k):
        calls["sdpa"] += 1
        return real_sdpa(*a, **k)

    def spy_slice(*a, **k):
        calls["slice"] += 1
        return real_slice(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(A, "attention_slice", spy_slice)
    with torch.no_grad(), capture_attention(m, [2], image_token_id=127) as cap:
        assert m.config._attn_implementation == A.SDPA_NAME
        m(**b.inputs())
    assert calls == {"sdpa": 4, "slice": 1} and cap.calls == {2: 1}
    assert m.config._attn_implementation == "sdpa"


def test_capture_is_off_outside_the_context(models, batch):
    m, _ = models
    with torch.no_grad():
        with capture_attention(m, [1]) as cap:
            m(**batch.inputs())
        n = dict(cap.calls)
        m(**batch.inputs())
    assert cap.calls == n and A._ACTIVE.get() is None
    assert m.config.text_config._attn_implementation == "sdpa"


def test_capture_during_generate_decode_steps(models, batch):
    """At decode steps the slice is the new token's row against the cached visual keys."""
    m, e = models
    with torch.no_grad(), capture_attention(m, [1], AttentionSlice("last", "visual")) as cap:
        m.generate(**batch.inputs(), max_new_tokens=2, do_sample=False)
    assert cap.calls[1] == 2 and cap.results[1].values.shape == (3, 4, 1, batch.n_visual)


def test_bad_layers_and_unsupported_implementation(models):
    m, _ = models
    with pytest.raises(ValueError, match="layers"):
        with capture_attention(m, [7]):
            pass
    with pytest.raises(ValueError, match="queries"):
        AttentionSlice("middle")
