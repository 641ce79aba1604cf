"""Token clustering shared by the merging baselines and SparseVLM's recycling: pure, batched tensor code.

Two algorithms live here, both free of model code (they see tensors, return indices or closures):

* `bipartite_soft_matching` — ToMe's matching (Bolya et al., "Token Merging: Your ViT But Faster",
  ICLR 2023, Sec. 3), written from the paper's description: split the tokens alternately into sets A and B,
  draw one edge from every A token to its most similar B token (cosine similarity of a `metric`), keep the
  r most similar edges, merge along them and concatenate what is left of A with B. It returns a `merge`
  closure (apply the same matching to any tensor with the same token axis) and an `unmerge` closure (spread
  merged tokens back to the original positions). `merge_wavg` merges by size-weighted average (ToMe's
  size bookkeeping, sizes start at 1) and `merge_source` tracks which original tokens each merged token holds.

* `dpc_knn` + `merge_clusters` — density-peak clustering with a kNN density (DPC-kNN), as SparseVLM's
  token recycling uses it (shared/papers/sparsevlm.md §3.5 and §10 #11-#12; prior-art.md §1.1). Defaults
  follow the official `cluster_and_merge` (Euclidean assignment, distances scaled by 1/sqrt(D), the kNN set
  includes the token itself, the densest token's delta is the largest distance in the whole matrix); every
  one of those choices is a keyword so the paper-literal variant (cosine assignment, sum merge) is one call
  away.

Nothing here loops over tokens in Python; everything is batched over the leading dimension B.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = [
    "bipartite_soft_matching",
    "merge_wavg",
    "merge_source",
    "source_assignment",
    "do_nothing",
    "ClusterResult",
    "dpc_knn",
    "merge_clusters",
]

MergeFn = Callable[..., Tensor]


# ----------------------------------------------------------------------------------------------------
# Bipartite soft matching (ToMe)
# ----------------------------------------------------------------------------------------------------


def do_nothing(x: Tensor, mode: str | None = None) -> Tensor:
    """The `r <= 0` fast path: both `merge` and `unmerge` return their input unchanged."""
    return x


def bipartite_soft_matching(
    metric: Tensor,
    r: int | Tensor,
    *,
    protected: Tensor | None = None,
) -> tuple[MergeFn, MergeFn]:
    """Plan the merge of `r` token pairs per sample by bipartite soft matching (ToMe, Sec. 3).

    Steps (the paper's, in order):
      1. tokens at even positions form set A, odd positions set B (|A| = ceil(N/2), |B| = floor(N/2));
      2. every A token gets one edge to its most cosine-similar B token (ties: the lowest B index);
      3. the r edges of highest similarity are kept (ties: the lowest A index first);
      4. the r A tokens at the ends of those edges are merged into their B partners (several A tokens may
         land in the same B token);
      5. the result is [unmerged A tokens in their original order, then all B tokens in their original order].

    Args:
        metric: [B, N, C] features that decide the matching (ToMe uses the attention keys mean over heads).
        r: number of tokens to remove from every sample, a Python int (or a 0-d / all-equal 1-d tensor).
            0 <= r <= N // 2. `r <= 0` returns the no-op `do_nothing` for both closures.
            Per-sample r (different values in one batch) is not supported: outputs would be ragged.
        protected: optional [B, N] bool; True marks tokens that are never merged, neither as a source
            (A side) nor as a destination (B side), e.g. a CLS token. Each sample must keep at least `r`
            unprotected A tokens and at least one unprotected B token.

    Returns:
        (merge, unmerge).
        merge(x: [B, N, D], mode="mean") -> [B, N - r, D]: applies the plan to any tensor whose token axis
            matches `metric`; `mode` is a `Tensor.scatter_reduce` reduction ("mean", "sum", "amax", ...)
            applied over each B token and the A tokens merged into it.
        unmerge(x: [B, N - r, D]) -> [B, N, D]: every original token receives the value of the merged token
            it ended up in (e.g. to paint a merge map over the image, or to restore full length).

    The matching is computed without gradients; gradients still flow through `merge`/`unmerge` into `x`.
    """
    if metric.dim() != 3:
        raise ValueError(f"metric must be [B, N, C]; got shape {tuple(metric.shape)}")
    n_batch, n_tok, _ = metric.shape
    r = _as_int_r(r)
    if r <= 0:
        return do_nothing, do_nothing
    if r > n_tok // 2:
        raise ValueError(
            f"r={r} is too large for N={n_tok} tokens: bipartite matching removes at most N // 2 = {n_tok // 2}"
        )

    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, b = m[:, ::2, :], m[:, 1::2, :]  # [B, Na, C], [B, Nb, C]
        scores = a @ b.transpose(-1, -2)  # [B, Na, Nb] cosine similarities
        if protected is not None:
            protected = _check_protected(protected, n_batch, n_tok, metric.device)
            prot_a, prot_b = protected[:, ::2], protected[:, 1::2]
            free_a = (~prot_a).sum(-1)
            free_b = (~prot_b).sum(-1)
            if bool((free_a < r).any()):
                bad = int(torch.nonzero(free_a < r)[0, 0])
                raise ValueError(
                    f"r={r} exceeds the {int(free_a[bad])} unprotected tokens of set A in sample {bad} "
                    "(see `protected`)"
                )
            if bool((free_b < 1).any()):
                bad = int(torch.nonzero(free_b < 1)[0, 0])
                raise ValueError(f"r={r} but sample {bad} has no unprotected token in set B (see `protected`)")
            scores = scores.masked_fill(prot_a[:, :, None] | prot_b[:, None, :], -math.inf)

        node_max, node_idx = scores.max(dim=-1)  # [B, Na]: best edge of each A token (first max on ties)
        edge_order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # [B, Na]
        src_idx = edge_order[:, :r]  # [B, r]: A tokens that get merged away
        unm_idx = edge_order[:, r:].sort(dim=-1).values  # [B, Na - r]: kept A tokens, original order
        dst_idx = node_idx.gather(-1, src_idx)  # [B, r]: their B partners

    n_a = (n_tok + 1) // 2

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        _check_tokens(x, n_batch, n_tok, "x")
        d = x.shape[-1]
        src, dst = x[:, ::2, :], x[:, 1::2, :]
        unm = src.gather(1, unm_idx[..., None].expand(-1, -1, d))  # [B, Na - r, D]
        moved = src.gather(1, src_idx[..., None].expand(-1, -1, d))  # [B, r, D]
        dst = dst.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, d), moved, reduce=mode, include_self=True)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        _check_tokens(x, n_batch, n_tok - r, "x")
        d = x.shape[-1]
        unm, dst = x[:, : n_a - r, :], x[:, n_a - r :, :]
        moved = dst.gather(1, dst_idx[..., None].expand(-1, -1, d))  # [B, r, D]
        out = x.new_empty(n_batch, n_tok, d)
        out[:, 1::2, :] = dst
        a_part = x.new_empty(n_batch, n_a, d)
        a_part = a_part.scatter(1, unm_idx[..., None].expand(-1, -1, d), unm)
        a_part = a_part.scatter(1, src_idx[..., None].expand(-1, -1, d), moved)
        out[:, ::2, :] = a_part
        return out

    return merge, unmerge


def merge_wavg(merge: MergeFn, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Merge by size-weighted average, so a token that already holds s originals counts s times.

    Args:
        merge: the closure from `bipartite_soft_matching`.
        x: [B, N, D] tokens to merge.
        size: [B, N, 1] how many original tokens each token holds; None means all ones (first merge).

    Returns:
        (x_merged [B, N - r, D], size_merged [B, N - r, 1]); sizes always sum to the original token count.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_source(merge: MergeFn, x: Tensor, source: Tensor | None = None) -> Tensor:
    """Track which original tokens each merged token contains.

    Args:
        merge: the closure from `bipartite_soft_matching`.
        x: [B, N, D] the tokens being merged (only its shape, dtype and device are used when `source` is None).
        source: [B, N, N0] 0/1 membership of the current tokens over the N0 original tokens; None means the
            identity (no merge happened yet, N0 = N).

    Returns:
        [B, N - r, N0]: row t is 1 at every original token that merged token t contains.
    """
    if source is None:
        n_batch, n_tok, _ = x.shape
        source = torch.eye(n_tok, device=x.device, dtype=x.dtype).expand(n_batch, n_tok, n_tok)
    return merge(source, mode="amax")


def source_assignment(source: Tensor) -> Tensor:
    """[B, N', N0] membership (from `merge_source`) -> [B, N0] long: the merged token holding each original."""
    return source.argmax(dim=1)


def _as_int_r(r: int | Tensor) -> int:
    if isinstance(r, Tensor):
        if r.numel() == 0:
            raise ValueError("r is an empty tensor")
        flat = r.reshape(-1)
        if bool((flat != flat[0]).any()):
            raise ValueError(
                f"per-sample r with different values ({flat.tolist()}) is not supported: merged batches would be ragged"
            )
        return int(flat[0])
    if isinstance(r, bool) or not isinstance(r, int):
        raise ValueError(f"r must be an int; got {type(r).__name__}")
    return r


def _check_protected(protected: Tensor, n_batch: int, n_tok: int, device: torch.device) -> Tensor:
    if protected.shape != (n_batch, n_tok):
        raise ValueError(f"protected must be [B, N] = {(n_batch, n_tok)}; got {tuple(protected.shape)}")
    if protected.dtype != torch.bool:
        raise ValueError(f"protected must be a bool tensor; got {protected.dtype}")
    return protected.to(device)


def _check_tokens(x: Tensor, n_batch: int, n_tok: int, name: str) -> None:
    if x.dim() != 3 or x.shape[0] != n_batch or x.shape[1] != n_tok:
        raise ValueError(f"{name} must be [B={n_batch}, N={n_tok}, D]; got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------------
# DPC-kNN density-peak clustering (SparseVLM token recycling)
# ----------------------------------------------------------------------------------------------------


@dataclass
class ClusterResult:
    """What `dpc_knn` found. Masked-out tokens have assignment -1, density 0, delta 0 and score -inf.

    Attributes:
        centers_idx: [B, C] long, token index of each centre, in descending score order (cluster c is
            the one centred at centers_idx[:, c]).
        assignment: [B, N] long in [0, C): the cluster of every token (-1 for masked-out tokens).
        density: [B, N] rho_i = exp(-mean squared distance to the k nearest neighbours).
        delta: [B, N] distance to the nearest denser token (see `dpc_knn` for the densest one).
        score: [B, N] rho * delta, the centre score.
        sizes: [B, C] long, the number of tokens in each cluster (sums to the number of unmasked tokens).
    """

    centers_idx: Tensor
    assignment: Tensor
    density: Tensor
    delta: Tensor
    score: Tensor
    sizes: Tensor


def dpc_knn(
    x: Tensor,
    n_clusters: int,
    k: int,
    *,
    assign: Literal["euclidean", "cosine"] = "euclidean",
    mask: Tensor | None = None,
    include_self: bool = True,
    scale_by_dim: bool = True,
    densest_delta: Literal["global", "own"] = "global",
) -> ClusterResult:
    """Density-peak clustering with a kNN density (DPC-kNN), batched.

    With d_ij the Euclidean distance between tokens i and j (divided by sqrt(D) when `scale_by_dim`):
      rho_i   = exp(-(1/k) * sum of d_ij^2 over the k nearest neighbours j of i)   (SparseVLM Eq. 9)
      delta_i = min d_ij over the tokens j denser than i                          (SparseVLM Eq. 10)
      score_i = rho_i * delta_i;  the `n_clusters` highest scores are the centres;
      every token joins the centre nearest to it (Euclidean) or most cosine-similar to it (`assign`).

    Defaults are the official SparseVLM code's (sparsevlm.md §3.5 [C]); the paper-literal reading is
    `assign="cosine", include_self=False, scale_by_dim=False, densest_delta="own"` plus a sum merge.

    Deterministic tie-breaking (the official code adds unseeded 1e-6 noise to rho instead):
      * "denser" is a strict total order: j is denser than i if rho_j > rho_i, or rho_j == rho_i and j < i.
        So exactly one token per sample (the densest, lowest index among equal densities) has no denser token.
      * centres: among equal scores the lower token index wins;
      * assignment: among equally near centres the one listed first in `centers_idx` (higher score) wins;
        each centre is always assigned to its own cluster, even if it duplicates another centre.
      * kNN: only the distances enter rho, so which of several equidistant neighbours is picked is irrelevant.

    Args:
        x: [B, N, D] token features.
        n_clusters: C, the number of centres, 1 <= C <= number of unmasked tokens in every sample.
        k: neighbours in the density. With `include_self` (official: the token itself is its own nearest
            neighbour at distance 0) 1 <= k <= N_valid; without it 1 <= k <= N_valid - 1.
        assign: "euclidean" (official code) or "cosine" (paper text).
        mask: optional [B, N] bool, True for tokens that take part; the others are ignored entirely.
        include_self: count the token itself among its k nearest neighbours (official code).
        scale_by_dim: divide distances by sqrt(D) (official code).
        densest_delta: delta of the densest token: "global" = the largest distance between any two
            (unmasked) tokens of the sample (official code), "own" = its largest distance to any token (paper).

    Returns:
        A `ClusterResult`.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, D]; got shape {tuple(x.shape)}")
    if assign not in ("euclidean", "cosine"):
        raise ValueError(f"assign must be 'euclidean' or 'cosine'; got {assign!r}")
    if densest_delta not in ("global", "own"):
        raise ValueError(f"densest_delta must be 'global' or 'own'; got {densest_delta!r}")
    n_batch, n_tok, dim = x.shape
    device = x.device
    if mask is None:
        mask = torch.ones(n_batch, n_tok, dtype=torch.bool, device=device)
    elif mask.shape != (n_batch, n_tok) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape [B, N] = {(n_batch, n_tok)}; got {mask.dtype} {tuple(mask.shape)}"
        )
    mask = mask.to(device)
    n_valid = int(mask.sum(-1).min()) if n_batch > 0 else n_tok
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= n_valid:
        raise ValueError(
            f"n_clusters={n_clusters!r} must be an int in [1, {n_valid}] (unmasked tokens per sample, N={n_tok})"
        )
    k_max = n_valid if include_self else n_valid - 1
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= k_max:
        raise ValueError(
            f"k={k!r} must be an int in [1, {k_max}] for {n_valid} unmasked tokens per sample "
            f"({'the token itself counts as a neighbour' if include_self else 'the token itself excluded'})"
        )

    with torch.no_grad():
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # fp16/bf16 distances are too coarse
        dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist")  # [B, N, N]
        if scale_by_dim:
            dist = dist / math.sqrt(dim)
        pair_ok = mask[:, :, None] & mask[:, None, :]  # [B, N, N]
        eye = torch.eye(n_tok, dtype=torch.bool, device=device)

        # Local density from the k nearest neighbours (Eq. 9).
        knn_dist = dist.masked_fill(~pair_ok, math.inf)
        if not include_self:
            knn_dist = knn_dist.masked_fill(eye, math.inf)
        knn_dist = knn_dist.topk(k, dim=-1, largest=False).values  # [B, N, k]
        knn_dist = knn_dist.masked_fill(~mask[..., None], 0.0)  # masked rows have only inf; keep them finite
        density = torch.exp(-(knn_dist**2).mean(dim=-1))  # [B, N]
        density = density.masked_fill(~mask, 0.0)

        # Strict total order by density (ties -> lower index), masked tokens last.
        order = torch.sort(density.masked_fill(~mask, -math.inf), dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_tok, device=device).expand(n_batch, -1))
        denser = (rank[:, None, :] < rank[:, :, None]) & pair_ok  # [B, i, j]: j is denser than i

        # Distance indicator (Eq. 10).
        delta = dist.masked_fill(~denser, math.inf).min(dim=-1).values  # [B, N]
        valid_dist = dist.masked_fill(~pair_ok, -math.inf)
        if densest_delta == "global":
            top = valid_dist.amax(dim=(1, 2))[:, None].expand(-1, n_tok)
        else:
            top = valid_dist.amax(dim=-1)
        delta = torch.where(torch.isinf(delta), top, delta).masked_fill(~mask, 0.0)

        # Centres: top-C scores, ties to the lower index.
        score = (density * delta).masked_fill(~mask, -math.inf)
        centers_idx = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :n_clusters]  # [B, C]

        # Assignment: nearest centre (first listed on ties), each centre to itself.
        c_exp = centers_idx[:, None, :].expand(-1, n_tok, -1)
        if assign == "euclidean":
            assignment = dist.gather(2, c_exp).argmin(dim=-1)  # [B, N]
        else:
            unit = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sim = unit @ unit.transpose(-1, -2)  # [B, N, N]
            assignment = sim.gather(2, c_exp).argmax(dim=-1)
        arange_c = torch.arange(n_clusters, device=device).expand(n_batch, -1)
        assignment = assignment.scatter(1, centers_idx, arange_c)
        assignment = assignment.masked_fill(~mask, -1)

        sizes = torch.zeros(n_batch, n_clusters + 1, dtype=torch.long, device=device)
        slot = assignment.masked_fill(~mask, n_clusters)  # masked tokens count in a spare slot, dropped
        sizes = sizes.scatter_add(1, slot, torch.ones_like(assignment))[:, :n_clusters]

    return ClusterResult(
        centers_idx=centers_idx, assignment=assignment, density=density, delta=delta, score=score, sizes=sizes
    )


def merge_clusters(
    x: Tensor,
    assignment: Tensor,
    n_clusters: int,
    reduce: Literal["sum", "mean"] = "mean",
    weights: Tensor | None = None,
) -> Tensor:
    """Collapse every cluster into one token.

    "sum" is SparseVLM Eq. 11 (T_k = sum of the group); "mean" is the official code (sum / size). With
    `weights`, "sum" gives sum_i w_i x_i and "mean" the weighted mean sum_i w_i x_i / sum_i w_i. A cluster
    with no members (or zero total weight under "mean") comes out as zeros.

    Args:
        x: [B, N, D] tokens.
        assignment: [B, N] long cluster ids in [0, n_clusters); -1 marks tokens to leave out.
        n_clusters: C.
        reduce: "sum" or "mean".
        weights: optional [B, N] per-token weights.

    Returns:
        [B, C, D], cluster c at index c (the order of `ClusterResult.centers_idx`).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean'; got {reduce!r}")
    if x.dim() != 3 or assignment.shape != x.shape[:2]:
        raise ValueError(
            f"x must be [B, N, D] and assignment [B, N]; got {tuple(x.shape)} and {tuple(assignment.shape)}"
        )
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be >= 1")
    if bool(((assignment < -1) | (assignment >= n_clusters)).any()):
        raise ValueError(
            f"assignment values must lie in [-1, {n_clusters}); "
            f"got range [{int(assignment.min())}, {int(assignment.max())}]"
        )
    n_batch, _, d = x.shape
    w = torch.ones_like(x[..., 0]) if weights is None else weights.to(x.dtype)
    if w.shape != x.shape[:2]:
        raise ValueError(f"weights must be [B, N] = {tuple(x.shape[:2])}; got {tuple(w.shape)}")
    slot = assignment.masked_fill(assignment < 0, n_clusters)  # left-out tokens go to a spare slot, dropped below
    out = x.new_zeros(n_batch, n_clusters + 1, d).scatter_add(1, slot[..., None].expand(-1, -1, d), x * w[..., None])
    out = out[:, :n_clusters]
    if reduce == "mean":
        total = w.new_zeros(n_batch, n_clusters + 1).scatter_add(1, slot, w)[:, :n_clusters, None]
        nonzero = total != 0
        out = torch.where(nonzero, out / torch.where(nonzero, total, torch.ones_like(total)), torch.zeros_like(out))
    return out
