"""Random visual-token dropping: the sanity baseline (UniPruneBench finds it strong).

Keeps a uniformly random subset of each sample's visual tokens at one or more layers (layer 0 = before
the LLM). Seeded per sample: the subset depends on (seed, layer, the sample's prompt ids without padding),
never on the sample's position in the batch, so a batched run keeps the same tokens as each sample alone.
"""
from __future__ import annotations

import hashlib

import torch

from common.reduction import ReductionContext, Reducer, Selection
from common.registry import register
from common.schedule import Budget


def sample_seed(seed: int, layer: int, ctx: ReductionContext, b: int) -> int:
    """A 63-bit seed from (seed, layer, sample b's prompt ids without padding): stable across runs and batching."""
    h = hashlib.sha256(f"{seed}:{layer}:{ctx.n_visual[b]}".encode())
    if ctx.input_ids is not None:
        row = ctx.input_ids[b, ctx.spans[b].pad:ctx.spans[b].instruction[1]]
        h.update(row.detach().cpu().numpy().astype("int64").tobytes())
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)


@register("random")
class RandomDrop(Reducer):
    """Keep a random `budget` (`common.schedule.Budget`; default half) of the visual tokens.

    Args:
        layer: where to drop (int) or several layers (tuple); 0 = pre-LLM.
        seed: base seed. Each sample's subset depends only on (seed, layer, its unpadded prompt ids), not on
            its position in the batch, so batched and single runs keep the same tokens.
    """

    takes_budget = True

    def __init__(self, layer: int | tuple[int, ...] = 0, budget: Budget = Budget.pruned(0.5), seed: int = 0):
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        if any(not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in layers):
            raise ValueError(f"layer: must be non-negative integers, got {layer!r}")
        self.layers = layers
        self.budget, self.seed = Budget.coerce(budget), seed

    def select(self, ctx: ReductionContext) -> Selection:
        keep = []
        for b in range(ctx.batch_size):
            n = ctx.n_visual[b]
            k = self.budget.keep(n)
            g = torch.Generator().manual_seed(sample_seed(self.seed, ctx.layer, ctx, b))
            keep.append(torch.sort(torch.randperm(n, generator=g)[:k]).values.to(ctx.hidden.device))
        return Selection(keep)
