"""common.soft_mask: a per-key additive bias reaches exactly the chosen layers, is differentiable, and a
-inf-like bias is equivalent to hard-removing the key (what the ATP training relies on)."""
import pytest
import torch

from common.models.tiny import make_batch, tiny_llama
from common.reduction import FixedKeep, reduce_tokens
from common.soft_mask import KeyBias, biased_mask, key_bias


def test_biased_mask_adds_bias_keeps_diagonal_and_causality():
    bias = torch.tensor([[0.0, -2.0, -3.0, 0.0]])
    m = biased_mask(None, bias, q_len=4, dtype=torch.float32)[0, 0]  # causal, no padding
    lo = torch.finfo(torch.float32).min
    assert m[0, 1] == lo and m[1, 2] == lo  # future keys stay masked
    assert m[1, 1] == 0 and m[2, 2] == 0  # the diagonal never gets the bias
    assert m[2, 1] == -2.0 and m[3, 2] == -3.0 and m[3, 0] == 0.0
    no_diag = biased_mask(None, bias, q_len=4, dtype=torch.float32, keep_diagonal=False)[0, 0]
    assert no_diag[1, 1] == -2.0


def test_biased_mask_accepts_bool_masks_and_decode_queries():
    allowed = torch.tensor([[[[False, True, True]]]])  # one query (the last key), first key is padding
    m = biased_mask(allowed, torch.tensor([[0.0, -1.0, -5.0]]), q_len=1, dtype=torch.float32)[0, 0, 0]
    assert m[0] == torch.finfo(torch.float32).min and m[1] == -1.0 and m[2] == 0.0  # key 2 = the query itself


def test_key_bias_validates_inputs():
    kb = KeyBias()
    with pytest.raises(ValueError, match="bias"):
        kb.set(0, torch.zeros(3))
    with pytest.raises(ValueError, match="from_layer"):
        kb.set(-1, torch.zeros(1, 3))
    kb.set(2, torch.zeros(1, 3))
    kb.set(4, torch.ones(1, 3))
    assert kb.bias_for(1) is None and kb.bias_for(3).sum() == 0 and kb.bias_for(7).sum() == 3


def test_zero_bias_is_exact_and_context_restores_model():
    model = tiny_llama(num_layers=3)
    b = make_batch(2, n_image_tokens=6, image_size=None)
    with torch.no_grad():
        ref = model(**b.inputs()).logits
        with key_bias(model) as kb:
            kb.set(1, torch.zeros(b.input_ids.shape))
            out = model(**b.inputs()).logits
    valid = b.attention_mask.bool()  # padded rows are garbage either way
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_large_negative_bias_equals_hard_removal_for_later_tokens():
    """Hiding keys from layer 1 on by a bias of log(1e-9) gives the same last-token logits as pruning those
    tokens before layer 1 with the reduction hook (original positions)."""
    model = tiny_llama(num_layers=3)
    b = make_batch(1, n_image_tokens=8, image_size=None, sys_lens=[3], instr_lens=[4])
    vis = torch.nonzero(b.input_ids[0] == b.image_token_id).flatten()
    drop = vis[[1, 4, 5]]
    bias = torch.zeros(b.input_ids.shape)
    bias[0, drop] = torch.log(torch.tensor(1e-9))
    with torch.no_grad():
        with key_bias(model) as kb:
            kb.set(1, bias)
            soft = model(**b.inputs()).logits[0, -1]
        keep = torch.tensor([i for i in range(8) if i not in (1, 4, 5)])
        with reduce_tokens(model, FixedKeep({1: [keep]}), image_token_id=b.image_token_id):
            hard = model(**b.inputs()).logits[0, -1]
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=1e-4)


def test_bias_is_differentiable():
    model = tiny_llama(num_layers=2)
    b = make_batch(1, n_image_tokens=4, image_size=None)
    bias = torch.zeros(b.input_ids.shape, requires_grad=True)
    with key_bias(model) as kb:
        kb.set(0, bias)
        model(**b.inputs()).logits[0, -1].sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0


def test_rejects_unknown_attention_implementation():
    model = tiny_llama(num_layers=2)
    model.config._attn_implementation = "flash_attention_2"
    for layer in model.model.layers:
        layer.self_attn.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="attn_implementation"):
        with key_bias(model):
            pass
