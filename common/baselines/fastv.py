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
from common.reduction import Needs, ReductionContext, Reducer, Selection
from common.registry import register
from common.schedule import check_keep_spec, resolve_keep


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
        ratio: R, the fraction of visual tokens pruned (default 0.5 when neither `budget` nor `keep` is given).
        budget: alternatively, the kept fraction (float) or paper budget (int of 576), see `common.schedule`.
        keep: alternatively, an absolute kept count at this scale.
        query: "last" (official code) or "all" (paper text).
    """

    def __init__(self, K: int = 2, ratio: float | None = None, budget: float | int | None = None,
                 keep: int | None = None, query: str = "last"):
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K: FastV needs the attention of layer K-1, so K >= 1; got {K!r}")
        if query not in ("last", "all"):
            raise ValueError(f"query: expected 'last' or 'all', got {query!r}")
        ratio = check_keep_spec(budget, keep, ratio)
        self.K, self.ratio, self.budget, self.keep, self.query = K, ratio, budget, keep, query
        self.layers = (K,)
        self.needs = Needs(attention=AttentionSlice(queries=query, keys="visual"))

    def n_keep(self, n_visual: int) -> int:
        return resolve_keep(n_visual, budget=self.budget, keep=self.keep, ratio=self.ratio)

    def select(self, ctx: ReductionContext) -> Selection:
        att = ctx.attention
        scores = fastv_scores(att.values, att.q_valid)  # [B, Kmax]
        keep = []
        for b in range(ctx.batch_size):
            n = ctx.n_visual[b]
            keep.append(topk_stable(scores[b, :n], self.n_keep(n)))
        return Selection(keep)
