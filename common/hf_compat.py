"""Reading the arguments of transformers' decoder forwards across the versions we support (5.0 to 5.x).

Why a module: transformers 5.24 renamed the cache argument of every decoder forward and of
`create_causal_mask` from `past_key_values` to `cache` (the old keyword is accepted, with a warning, by the
model classes until 5.40, but forward pre-hooks see whichever name the caller used, and
`create_causal_mask` no longer accepts the old one). The attention-capture and reduction hooks read the
cache through these helpers, so they work on both sides of the rename.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import LlamaModel
from transformers.masking_utils import create_causal_mask

# The keyword that passes a KV cache to a model's forward in the installed transformers.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def call_arg(args: tuple, kwargs: dict, name: str, pos: int) -> Any:
    """Argument `name` of a hooked forward, passed by keyword or at position `pos` (None if absent)."""
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else None


def cache_arg(kwargs: dict) -> Any:
    """The KV cache given to a decoder forward: `cache` (transformers >= 5.24) or `past_key_values`."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`cache` as the keyword argument the installed transformers expects (no deprecation warning on 5.24+)."""
    return {CACHE_KWARG: cache}


def causal_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any,
                layer_idx: int | None = None) -> Any:
    """transformers' own `create_causal_mask`; the cache goes by position, whose name changed in 5.24."""
    return create_causal_mask(config, inputs_embeds, attention_mask, cache, position_ids=None,
                              layer_idx=layer_idx)
