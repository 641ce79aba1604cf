"""A per-key additive attention bias in chosen decoder layers, without forking transformers.

Why: methods trained with *soft* token masks (ATP-LLaVA §3.8, after DynamicViT) hide a token from every
later layer by multiplying the exponentials of the softmax by its keep-mask G:
``softmax(A + M + log(G + eps))``. That is an additive bias per key column (the same for every query),
which changes from one forward to the next and must stay differentiable. The hard-pruning hook
(`common.reduction`) cannot express it (nothing is removed during training).

How: an attention function registered through transformers' `AttentionInterface` (with the mask builder
of its base implementation, so masks are built exactly as for plain sdpa / eager) adds the bias of the
current layer, if any, to the layer's mask and delegates to the base implementation. The bias lives in a
context-local `KeyBias` object; outside a `key_bias(model)` context the model is untouched.

    with key_bias(model) as kb:
        kb.set(from_layer=2, bias=torch.log(G + 1e-6))   # [B, Lk]: applies to layers 2, 3, ... (until reset)
        out = model(**inputs)

Diagonal: a query always sees itself (DynamicViT's ``G_qq = 1``), so a soft-pruned query's row is never
empty; `keep_diagonal=False` turns this off.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from common.attention import _additive_mask, decoder_of
from common.attention_registry import register_wrapped_attention


@dataclass
class KeyBias:
    """Per-forward key biases: `biases[start]` = [B, Lk] additive bias used by layers >= start.

    The bias of the largest `start <= layer` applies (a later `set` replaces an earlier one from its layer
    on). `keep_diagonal`: the bias never applies to a query's own key.
    """

    keep_diagonal: bool = True
    biases: dict[int, torch.Tensor] = field(default_factory=dict)

    def set(self, from_layer: int, bias: torch.Tensor) -> None:
        if bias.ndim != 2:
            raise ValueError(f"bias: expected [batch, keys], got shape {tuple(bias.shape)}")
        if not isinstance(from_layer, int) or from_layer < 0:
            raise ValueError(f"from_layer: expected a layer index >= 0, got {from_layer!r}")
        self.biases[from_layer] = bias

    def reset(self) -> None:
        self.biases.clear()

    def bias_for(self, layer: int) -> torch.Tensor | None:
        starts = [s for s in self.biases if s <= layer]
        return self.biases[max(starts)] if starts else None


_ACTIVE: contextvars.ContextVar[KeyBias | None] = contextvars.ContextVar("tokenprune_key_bias", default=None)


def biased_mask(attention_mask, bias: torch.Tensor, q_len: int, dtype: torch.dtype,
                keep_diagonal: bool = True) -> torch.Tensor:
    """The layer's mask (None / bool / additive, any of transformers' formats) plus `bias` on key columns.

    bias: [B, Lk] additive per key. Returns a float [B, 1, Lq, Lk] additive mask in `dtype`. Queries are the
    last `q_len` positions of the key sequence (`keep_diagonal`: query i is key Lk - Lq + i).
    """
    B, Lk = bias.shape
    base = _additive_mask(attention_mask, B, q_len, Lk, bias.device)  # [B, 1, Lq, Lk] float32, 0 / min
    add = bias[:, None, None, :].to(torch.float32).expand(B, 1, q_len, Lk)
    if keep_diagonal:
        diag = torch.zeros(q_len, Lk, dtype=torch.bool, device=bias.device)
        diag[torch.arange(q_len), torch.arange(q_len) + Lk - q_len] = True
        add = add.masked_fill(diag, 0.0)
    # finfo.min + a negative bias would overflow to -inf; clamp keeps fully-masked rows finite
    return (base + add).clamp(min=torch.finfo(torch.float32).min).to(dtype)


def _make_forward(base):
    def forward(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
        kb = _ACTIVE.get()
        bias = None if kb is None else kb.bias_for(getattr(module, "layer_idx", -1))
        if bias is not None:
            if bias.shape[1] != key.shape[2] or bias.shape[0] != query.shape[0]:
                raise ValueError(f"key bias: shape {tuple(bias.shape)} does not match batch {query.shape[0]} x "
                                 f"keys {key.shape[2]} of layer {module.layer_idx}")
            attention_mask = biased_mask(attention_mask, bias, query.shape[2], query.dtype, kb.keep_diagonal)
        return base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return forward


_BASE_OF = register_wrapped_attention("tokenprune_keybias", _make_forward)  # {"sdpa": "tokenprune_keybias_sdpa", ...}
SDPA_NAME, EAGER_NAME = _BASE_OF["sdpa"], _BASE_OF["eager"]


@contextmanager
def key_bias(model: nn.Module, keep_diagonal: bool = True):
    """Make the decoder of `model` honour `KeyBias.set(...)` inside the context; yields the `KeyBias`.

    The decoder's attention implementation must be "sdpa" or "eager"; it is restored on exit.
    """
    dec = decoder_of(model)
    configs = {id(l.self_attn.config): l.self_attn.config for l in dec.layers}
    configs[id(dec.config)] = dec.config
    saved = {k: c._attn_implementation for k, c in configs.items()}
    for k, impl in saved.items():
        if impl not in _BASE_OF:
            raise NotImplementedError(f"key_bias supports attn_implementation 'sdpa' or 'eager', not {impl!r}")
    kb = KeyBias(keep_diagonal=keep_diagonal)
    token = _ACTIVE.set(kb)
    try:
        for k, c in configs.items():
            c._attn_implementation = _BASE_OF[saved[k]]
        yield kb
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
        _ACTIVE.reset(token)
