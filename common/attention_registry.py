"""Register a wrapped sdpa / eager pair of attention functions with transformers, once for every caller.

Why: `common.attention` (capture) and `common.soft_mask` (per-key bias) both hook attention the same way
(DESIGN.md §4): wrap transformers' stock sdpa and eager attention functions, register each wrapper under a
name of its own in `AttentionInterface`, and register the stock mask builder of its base (`sdpa_mask`,
`eager_mask`) under the same name, so masks are built exactly as for plain sdpa / eager. Writing those four
registrations in each module let the two drift apart; here they are written once.
"""
from __future__ import annotations

from typing import Callable

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

AttentionFn = Callable[..., object]  # transformers' signature: (module, query, key, value, attention_mask, ...)

# base implementation name -> (its attention function, its mask builder)
_BASES: dict[str, tuple[AttentionFn, Callable[..., object]]] = {
    "sdpa": (sdpa_attention_forward, sdpa_mask),
    "eager": (eager_attention_forward, eager_mask),
}


def register_wrapped_attention(prefix: str, wrap: Callable[[AttentionFn], AttentionFn]) -> dict[str, str]:
    """Register `wrap(base)` as "<prefix>_sdpa" and "<prefix>_eager", each with its base's mask builder.

    Returns {"sdpa": "<prefix>_sdpa", "eager": "<prefix>_eager"}: the name a decoder config's
    `_attn_implementation` is switched to for each supported base implementation.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix: expected a non-empty name, got {prefix!r}")
    names = {}
    for base, (attention_fn, mask_fn) in _BASES.items():
        name = f"{prefix}_{base}"
        AttentionInterface.register(name, wrap(attention_fn))
        AttentionMaskInterface.register(name, mask_fn)
        names[base] = name
    return names
