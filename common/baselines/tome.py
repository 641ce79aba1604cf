"""ToMe inside the LLM (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023, §3; as a VLM baseline
in SparseVLM, sparsevlm.md §8).

At layer l, the visual tokens of each sample are merged by bipartite soft matching (`common.clustering`):
alternate tokens form sets A and B, each A token's best cosine match in B is an edge, the r best edges are
merged by size-weighted average. Matching is repeated (at most N//2 merges per round, ToMe's cap) until the
kept count is reached. The merged token stays at its B token's place and RoPE position.

Changed from ToMe: the metric is the keys of the layer the tokens enter (``k_proj(input_layernorm(h))``,
head mean, before RoPE) rather than the previous block's attention keys, and there is no proportional
attention (the decoder's attention is left untouched). Only visual tokens are merged.
"""
from __future__ import annotations

import torch

from common.clustering import bipartite_soft_matching, merge_wavg
from common.reduction import BuildTarget, ReductionContext, Reducer, Selection
from common.registry import register
from common.schedule import Budget, pruning_layer


def tome_merge(x: torch.Tensor, metric: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge [N, D] tokens down to `n_keep` by repeated bipartite soft matching on `metric` [N, C].

    Returns (ident [n_keep] long: the original index each surviving token stands at, ascending;
    values [n_keep, D]: the size-weighted averages, in `ident` order; size [n_keep, 1]: originals held).
    """
    N, dtype = x.shape[0], x.dtype
    ident = torch.arange(N, device=x.device)
    # Averages, sizes and the matching run in float32 and token ids stay int64 whatever the model's dtype:
    # bf16 holds integers exactly only up to 256, so ids or sizes carried in it break at LLaVA's 576 tokens.
    x, metric = x.float()[None], metric.float()[None]
    size = torch.ones(1, N, 1, dtype=torch.float32, device=x.device)
    while x.shape[1] > n_keep:
        n = x.shape[1]
        r = min(n - n_keep, n // 2)
        if r <= 0:
            break
        merge, _ = bipartite_soft_matching(metric, r)
        par = torch.arange(n, device=x.device) % 2 == 0  # True: set A
        idp1 = (ident + 1)[None, :, None]
        id_a = merge(torch.where(par[None, :, None], idp1, 0), mode="amax")[0, :, 0]
        id_b = merge(torch.where(~par[None, :, None], idp1, 0), mode="amax")[0, :, 0]
        ident = torch.where(id_b > 0, id_b, id_a) - 1
        x, size = merge_wavg(merge, x, size)
        metric = merge(metric, mode="mean")
    order = torch.argsort(ident)
    return ident[order], x[0, order].to(dtype), size[0, order]


@register("tome")
class ToMe(Reducer):
    """Merge visual tokens at `layer` down to `budget` (`common.schedule.Budget`; default half, R = 0.5)."""

    takes_budget = True

    def __init__(self, layer: int = 2, budget: Budget = Budget.pruned(0.5)):
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"layer: must be a non-negative layer index, got {layer!r}")
        self.layers = (layer,)
        self.budget = Budget.coerce(budget)

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options) -> "ToMe":
        """Merging at FastV's K = 2 of 32 mapped to the model (at least 1) unless `layer` is given; SparseVLM's
        tables merge before the LLM (`layer=0`)."""
        options.setdefault("layer", pruning_layer(target.n_layers))
        return cls(**options) if budget is None else cls(budget=budget, **options)

    def _metric(self, ctx: ReductionContext, h: torch.Tensor) -> torch.Tensor:
        mod = ctx.layer_module
        if mod is None or not hasattr(mod, "self_attn"):
            return h
        attn = mod.self_attn
        k = attn.k_proj(mod.input_layernorm(h))  # [N, Hkv * d]
        return k.view(h.shape[0], -1, attn.head_dim).mean(1)

    def select(self, ctx: ReductionContext) -> Selection:
        keep, values = [], []
        for b in range(ctx.batch_size):
            n = ctx.n_visual[b]
            k = self.budget.keep(n)
            h = ctx.visual_hidden(b)
            if k == n:
                keep.append(torch.arange(n, device=h.device))
                values.append(None)
                continue
            if k == 0:
                keep.append(torch.zeros(0, dtype=torch.long, device=h.device))
                values.append(None)
                continue
            with torch.no_grad():
                ident, vals, _ = tome_merge(h, self._metric(ctx, h), k)
            keep.append(ident)
            values.append(vals)
        if all(v is None for v in values):
            values = None
        return Selection(keep, values=values)
