"""VTW, "Visual Tokens Withdrawal" (Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens
Withdrawal for Rapid Inference", AAAI 2025).

At layer k every visual token is removed from the hidden states (layers 0..k-1 see everything); later layers
and every decode step attend to text only, and their KV caches never hold visual tokens. The official
default for LLaVA-1.5-7B is k = 15 (dyrate.md §6.3); choosing k by the KL "findk" procedure is left to
experiments.
"""
from __future__ import annotations

import torch

from common.reduction import ReductionContext, Reducer, Selection
from common.registry import register


@register("vtw")
class VTW(Reducer):
    """Drop all visual tokens entering layer `K` (K >= 1: at least one layer must see the image)."""

    def __init__(self, K: int = 15):
        if not isinstance(K, int) or K < 0:
            raise ValueError(f"K: must be a non-negative layer index, got {K!r}")
        self.K = K
        self.layers = (K,)

    def select(self, ctx: ReductionContext) -> Selection:
        return Selection([torch.zeros(0, dtype=torch.long, device=ctx.hidden.device)] * ctx.batch_size)
