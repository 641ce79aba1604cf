"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

Rule (paper §4, code `fastv_kvcache.py` / HF `fastv_forward`): at layer K-1 take the attention, average it
over heads, and score each visual token j by the attention it receives; keep the top `round(N (1 - R))`
visual tokens and drop the rest from the hidden states entering layer K (in place, KV cache pruned, original
positions kept). Two scoring variants:

- `query="last"` (the official code, used by every FastV number): the LAST prompt token's row,
  ``s_j = mean_h A[h, -1, j]``.
- `query="all"` (the paper's text, FastV issues #14/#44): the mean attention received from all tokens,
  ``s_j = mean_h mean_i A[h, i, j]`` over the valid query tokens i (causally masked entries count as 0).

Changed from the official code: batches are scored per sample (never sample 0 for all), the scores come
from the normal forward of layer K-1 (no second pass, so no duplicated KV, FastV #46), and ties in top-k
go to the lower index (stable sort) so batched and single runs agree.
"""
from __future__ import annotations

import torch

from common.attention import AttentionSlice
from common.reduction import BuildTarget, Needs, ReductionContext, Reducer, Selection
from common.registry import register
from common.schedule import Budget, pruning_layer


def fastv_scores(attn: torch.Tensor, q_valid: torch.Tensor) -> torch.Tensor:
    """[B, H, Q, K] attention (queries x visual keys) -> [B, K] FastV scores (mean over heads and valid queries)."""
    a = attn.mean(1)  # [B, Q, K]
    w = q_valid.float()[..., None]
    return (a * w).sum(1) / w.sum(1).clamp(min=1)


def topk_stable(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties to the lower index; returned in ascending index order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values


@register("fastv")
class FastV(Reducer):
    """FastV: prune visual tokens entering layer K by layer K-1's attention.

    Args:
        K: the pruning layer (FastV's K; default 2, the paper's setting).
        budget: the visual tokens kept (`common.schedule.Budget`); default FastV's R = 0.5,
            `Budget.pruned(0.5)` (kept = round(N (1 - R)), as the official code).
        query: "last" (official code) or "all" (paper text).
    """

    takes_budget = True

    def __init__(self, K: int = 2, budget: Budget = Budget.pruned(0.5), query: str = "last"):
        if not isinstance(K, int) or isinstance(K, bool) or K < 1:
            raise ValueError(f"K: FastV needs the attention of layer K-1, so K >= 1; got {K!r}")
        if query not in ("last", "all"):
            raise ValueError(f"query: expected 'last' or 'all', got {query!r}")
        self.K, self.budget, self.query = K, Budget.coerce(budget), query
        self.layers = (K,)
        self.needs = Needs(attention=AttentionSlice(queries=query, keys="visual"))

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options) -> "FastV":
        """K = 2 of 32 mapped to the model's depth (at least 1); the budget kept from layer K on."""
        options.setdefault("K", pruning_layer(target.n_layers))
        return cls(**options) if budget is None else cls(budget=budget, **options)

    def n_keep(self, n_visual: int) -> int:
        return self.budget.keep(n_visual)

    def select(self, ctx: ReductionContext) -> Selection:
        att = ctx.attention
        scores = fastv_scores(att.values, att.q_valid)  # [B, Kmax]
        keep = []
        for b in range(ctx.batch_size):
            n = ctx.n_visual[b]
            keep.append(topk_stable(scores[b, :n], self.n_keep(n)))
        return Selection(keep)
