"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", arXiv 2410.04417) as a reducer on the common hook. Spec: shared/papers/sparsevlm.md.

What it does (sparsevlm.md §3, Eqs. 1-11), once per prefill:
1. **Raters** (Eqs. 5-7), before the decoder: ``R = mean_j softmax_text(H_v H_q^T)[j, :]`` from the layer-0
   input embeddings of the visual tokens (H_v, projector output) and of the text after the image (H_q);
   raters are the text tokens with ``R >= mean(R)``.
2. **Significance** (Eqs. 2-4) at each scoring layer s: P = the head-mean attention probabilities of the
   rater rows over the visual keys of layer s; ``Pbar_j = mean_i P[i, j]``.
3. **How many** (Eq. 8): ``N = lambda (L_v - rank P)`` tokens are deleted, the smallest Pbar first; N = 0 skips
   the layer (no pruning, no recycling).
4. **Recycling** (Eqs. 9-11): the top-tau share of the deleted tokens (by Pbar) are clustered by DPC-kNN
   (`common.clustering.dpc_knn`) into C = theta * L_r groups, each collapsed into one token that rejoins
   the visual tokens (merged tokens count as visual later and can be pruned or recycled again).
The decision uses layer s's attention and acts on layer s's OUTPUT, i.e. on the hidden states entering
layer s + 1 (the hook's pruning layer); layer s and its KV cache keep every token. Decoding uses the
pruned per-layer KV cache (the hook's job).

Two modes (`mode=`), every difference listed (sparsevlm.md §3.4-3.5, §10; prior-art.md "Behaviour"):

| | `official` (default; v1 code `91fb6d9`) | `paper` (the text) |
|---|---|---|
| rater threshold | ``R > mean`` (strict) | ``R >= mean`` |
| how many | keep ``K = min(int(scale * rank + bias), L_v - 1)``; skip if ``L_v == rank`` | delete ``N = floor(lambda (L_v - rank))``; skip if N = 0 |
| recycled L_r | ``floor(tau N) + 1`` (tau = 0.3) | ``ceil(tau N)`` |
| centres C | ``floor(theta L_r) + 1`` (theta = 0.1) | ``max(1, ceil(theta L_r))`` |
| kNN k | C, the token itself counted (distance 0) | C (at most L_r - 1), itself excluded |
| distances | Euclidean / sqrt(D) | Euclidean |
| delta of the densest | largest distance in the whole matrix | its own largest distance |
| assignment | nearest centre (Euclidean) | most cosine-similar centre |
| reconstruction | mean of the group | sum of the group (Eq. 11) |
Both: scoring layers 2, 6, 15, 19 of 32 (the code's `pruning_loc`; the paper lists none), mapped to the
model's depth by `common.schedule.map_layer`; rank by `torch.linalg.matrix_rank` (default tolerance).

Changed from the official code (both modes):
- fp32 scores: the code takes the rank of an fp16 P, whose rounding noise makes it ~ the number of raters;
  in fp32 the rank is the real one (usually also min(|S|, L_v) for softmax rows). `rank_rtol` can set a
  tolerance.
- positions: the code renumbers survivors 0..n-1; the hook keeps original RoPE positions unless run with
  `reduce_tokens(..., positions="renumber")` (`common.evaluation.evaluate` uses the default, "original").
  A merged token takes its cluster centre's position (the code's renumbering gives it the slot after the
  kept visual tokens).
- ties are broken deterministically (stable sorts; `dpc_knn`'s strict density order) instead of the
  code's unseeded 1e-6 noise; batches of any size work (the code asserts batch size 1).
- the "equivalent tokens" average counts the visual tokens ENTERING each layer (the hook's `kept_counts`,
  what `evaluate` reports); the code logs each layer's output count (one layer earlier).
- no rater selected (strict threshold, all R equal) falls back to every text token; no text token after
  the image skips pruning.

Implementation note (why the reducer computes P itself): raters need the layer-0 embeddings, so layer 0
is one of the hook's layers (`select` keeps everything there). The hook captures attention only for a
reducer whose every layer has an attention layer before it, which layer 0 cannot have; so P is computed
here from the scoring layer's own input (`ctx.hidden`, `ctx.layer_module`): rater queries x all keys,
RoPE, causal softmax, visual columns (`common.attention.attention_slice`), never the full L x L matrix.
This costs one key projection per scoring layer and needs the layer BEFORE each pruning step to be a
hook layer too, so scoring layers must be at least two apart; shallow models whose mapped layers
collide get the later ones pushed forward (`resolve_score_layers`). All other layers keep SDPA.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from common import spans as S
from common.attention import attention_slice
from common.baselines.fastv import topk_stable
from common.clustering import dpc_knn, merge_clusters
from common.reduction import ReductionContext, Reducer, Selection, reduce_tokens
from common.registry import register
from common.schedule import PAPER_LAYERS, PAPER_VISUAL, map_layer

Mode = Literal["official", "paper"]
RaterRows = Literal["raters", "text", "all"]

PAPER_SCORE_LAYERS = (2, 6, 15, 19)  # official v1 `pruning_loc`, 0-indexed of 32 (sparsevlm.md §3.6)
# (scale, bias) of the official v1 eval scripts / README per budget (sparsevlm.md §3.7); tuned for
# LLaVA-1.5-7B in fp16, so other models need `calibrate`.
OFFICIAL_SCALE_BIAS = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}


@dataclass(frozen=True)
class SparseVLMConfig:
    """Every knob of the method in one block (llmc's `special`); defaults are the official v1 code's.

    mode: "official" or "paper" (see the module docstring for every difference).
    scale, bias: official kept count ``int(scale * rank + bias)`` (the paper's lambda is `scale`).
    lam: the paper's lambda in ``N = lambda (L_v - rank)`` (mode "paper").
    tau: recycled share of the deleted tokens; theta: cluster centres per recycled token.
    recycle: token recycling on/off (Table 3's "w/o TR").
    rater_rows: rows of P whose mean is the significance Pbar: "raters" (the method), "text" (every text
        token after the image) or "all" (every token), Fig. 5's ablation. The count always comes from the
        raters' P: with all rows P has full column rank, so Eq. 8 would delete nothing and the ablation
        could not hold the budget (changed from nothing: the paper does not say how it did).
    score_layers: scoring layers of THIS model (None: `PAPER_SCORE_LAYERS` mapped to its depth).
    rank_rtol: relative tolerance of the rank (None: torch's default, sigma_max * max(m, n) * eps).
    """

    mode: Mode = "official"
    scale: float = 13.5
    bias: float = 0.0
    lam: float = 1.0
    tau: float = 0.3
    theta: float = 0.1
    recycle: bool = True
    rater_rows: RaterRows = "raters"
    score_layers: tuple[int, ...] | None = None
    rank_rtol: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("official", "paper"):
            raise ValueError(f"mode: expected 'official' or 'paper', got {self.mode!r}")
        if self.rater_rows not in ("raters", "text", "all"):
            raise ValueError(f"rater_rows: expected 'raters', 'text' or 'all', got {self.rater_rows!r}")
        for name in ("scale", "lam", "tau", "theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
        if not isinstance(self.bias, (int, float)) or isinstance(self.bias, bool) or not math.isfinite(self.bias):
            raise ValueError(f"bias: must be a finite number, got {self.bias!r}")
        if self.tau > 1 or self.theta > 1:
            raise ValueError(f"tau/theta: shares must lie in [0, 1], got tau={self.tau}, theta={self.theta}")
        if self.rank_rtol is not None and not (isinstance(self.rank_rtol, float) and self.rank_rtol >= 0):
            raise ValueError(f"rank_rtol: must be None or a float >= 0, got {self.rank_rtol!r}")
        if self.score_layers is not None:
            layers = tuple(self.score_layers)
            if not layers or any(isinstance(l, bool) or not isinstance(l, int) or l < 0 for l in layers):
                raise ValueError(f"score_layers: expected non-negative layer indices, got {self.score_layers!r}")
            if any(b < a + 2 for a, b in zip(layers, layers[1:])):
                raise ValueError(f"score_layers: must increase by at least 2 (each prunes the next layer's "
                                 f"input), got {layers}")
            object.__setattr__(self, "score_layers", layers)


# ----------------------------------------------------------------------------------------------- maths
def rater_relevance(h_vis: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``R = mean_j softmax(H_v H_q^T)[j, :]``; [Lv, D], [Lt, D] -> [Lt].

    The softmax runs over the TEXT axis (over the vision axis every column would sum to 1 and R would be
    the constant 1/Lv, sparsevlm.md §3.2); no 1/sqrt(D) scaling, as in the code.
    """
    logits = h_vis.float() @ h_text.float().T  # [Lv, Lt]
    return torch.softmax(logits, dim=-1).mean(0)


def select_raters(R: torch.Tensor, strict: bool) -> torch.Tensor:
    """Eq. 6: indices i with ``R[i] >= mean(R)`` (paper) or ``> mean(R)`` (code, `strict`)."""
    m = R.mean()
    return torch.nonzero(R > m if strict else R >= m).flatten()


def matrix_rank(P: torch.Tensor, rtol: float | None = None) -> int:
    """Rank of P [Q, Lv] by SVD (A.2), torch's default tolerance unless `rtol` is given."""
    if P.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(P.float(), rtol=rtol)) if rtol is not None \
        else int(torch.linalg.matrix_rank(P.float()))


def kept_count(n_visual: int, rank: int, cfg: SparseVLMConfig) -> int:
    """Visual tokens kept at a scoring layer: Eq. 8 (paper) or the code's scale/bias rule; n_visual = skip."""
    if cfg.mode == "official":
        if n_visual - rank <= 0:  # the code's skip rule
            return n_visual
        return max(0, min(int(cfg.scale * rank + cfg.bias), n_visual - 1))
    n_delete = min(n_visual, int(math.floor(cfg.lam * (n_visual - rank) + 1e-9)))
    return n_visual - max(0, n_delete)


def recycle_counts(n_deleted: int, cfg: SparseVLMConfig) -> tuple[int, int]:
    """(L_r recycled tokens, C centres) for `n_deleted` deleted tokens (0, 0 when none are deleted)."""
    if n_deleted <= 0 or not cfg.recycle:
        return 0, 0
    if cfg.mode == "official":  # `int(n * 0.3) + 1`, `int(n_rec / 10) + 1`
        lr = min(n_deleted, int(math.floor(cfg.tau * n_deleted + 1e-9)) + 1)
        return lr, min(lr, int(math.floor(cfg.theta * lr + 1e-9)) + 1)
    lr = min(n_deleted, int(math.ceil(cfg.tau * n_deleted - 1e-9)))
    if lr == 0:
        return 0, 0
    return lr, min(lr, max(1, int(math.ceil(cfg.theta * lr - 1e-9))))


@dataclass
class Recycled:
    """What recycling made of one sample's deleted tokens at one layer.

    tokens: [C, D] reconstructed tokens, in centre-score order; members: [L_r] indices (into the deleted
    tokens' visual order of that layer) of the recycled tokens, descending Pbar; assignment: [L_r] cluster
    of each; centres: [C] indices into `members`.
    """

    tokens: torch.Tensor
    members: torch.Tensor
    assignment: torch.Tensor
    centres: torch.Tensor


def recycle(h: torch.Tensor, scores: torch.Tensor, n_recycle: int, n_centres: int, mode: Mode) -> Recycled:
    """Eqs. 9-11 on the deleted tokens h [N, D] with significance `scores` [N]: take the top `n_recycle` by
    score (they enter clustering in descending order), cluster them by DPC-kNN into `n_centres` groups and
    collapse each group (official: mean, Euclidean assignment; paper: sum, cosine assignment)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:n_recycle]
    x = h[order]
    if n_centres >= n_recycle:  # every token its own cluster (also covers a single recycled token)
        assignment = torch.arange(n_recycle, device=h.device)
        return Recycled(x.clone(), order, assignment, assignment.clone())
    if mode == "official":
        res = dpc_knn(x[None], n_centres, k=n_centres)
        tokens = merge_clusters(x[None], res.assignment, n_centres, reduce="mean")[0]
    else:
        k = min(n_centres, n_recycle - 1)
        res = dpc_knn(x[None], n_centres, k=k, assign="cosine", include_self=False, scale_by_dim=False,
                      densest_delta="own")
        tokens = merge_clusters(x[None], res.assignment, n_centres, reduce="sum")[0]
    return Recycled(tokens.to(h.dtype), order, res.assignment[0], res.centers_idx[0])


# ----------------------------------------------------------------------------------- attention slice
_ROTARY: dict[int, nn.Module] = {}


def _rotary_for(attn: nn.Module, device: torch.device) -> nn.Module:
    """A rotary-embedding module for an attention module's config (cached; the decoder's own is not
    reachable from a layer)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    key = id(attn.config)
    rot = _ROTARY.get(key)
    if rot is None or rot.config is not attn.config:
        rot = LlamaRotaryEmbedding(config=attn.config)
        _ROTARY[key] = rot
    return rot.to(device)


def _pad(rows: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(int(r.numel()) for r in rows))
    idx = torch.zeros(len(rows), n, dtype=torch.long, device=device)
    ok = torch.zeros(len(rows), n, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        idx[b, : r.numel()] = r.to(device)
        ok[b, : r.numel()] = True
    return idx, ok


@torch.no_grad()
def query_attention(layer: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor, kinds: torch.Tensor,
                    rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Head-mean attention probabilities of decoder `layer` for query positions `rows[b]` over key positions
    `cols[b]`, from the layer's input `hidden` [B, L, D]: per sample [len(rows[b]), len(cols[b])] float32.

    The softmax runs over every visible key (causal, padding excluded), as in the layer's own forward; only
    the selected rows are projected to queries, so the cost is one key projection plus a Q x L product.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    B, L, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    qi, qv = _pad(rows, hidden.device)  # [B, Q]
    ki, kv = _pad(cols, hidden.device)  # [B, K]
    d = attn.head_dim
    xq = x.gather(1, qi[..., None].expand(B, qi.shape[1], x.shape[-1]))
    q = attn.q_proj(xq).view(B, qi.shape[1], -1, d).transpose(1, 2)  # [B, H, Q, d]
    k = attn.k_proj(x).view(B, L, -1, d).transpose(1, 2)  # [B, Hkv, L, d]
    cos, sin = _rotary_for(attn, hidden.device)(x, position_ids.expand(B, L))  # [B, L, d]
    cq, sq = cos.gather(1, qi[..., None].expand(B, qi.shape[1], d)), sin.gather(1, qi[..., None].expand(B, qi.shape[1], d))
    q, _ = apply_rotary_pos_emb(q, q, cq, sq)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    visible = (torch.arange(L, device=hidden.device)[None, None, :] <= qi[:, :, None]) \
        & (kinds != S.PAD)[:, None, :].to(hidden.device)  # [B, Q, L]
    q_index = torch.arange(qi.shape[1], device=hidden.device).expand(B, -1)
    probs = attention_slice(q, k, visible[:, None], attn.scaling, attn.num_key_value_groups, q_index, qv, ki, kv)
    P = probs.mean(1)  # [B, Q, K]
    return [P[b, : rows[b].numel(), : cols[b].numel()] for b in range(B)]


# --------------------------------------------------------------------------------------------- layers
def resolve_score_layers(n_layers: int, layers: Sequence[int] | None = None,
                         paper_layers: Sequence[int] = PAPER_SCORE_LAYERS) -> tuple[int, ...]:
    """Scoring layers of an `n_layers`-deep decoder.

    Given `layers` they are used as they are (checked); otherwise `paper_layers` (of 32) are mapped with
    `map_layer`. Changed from the plain proportional map: consecutive scoring layers are at least two apart
    (a collision is pushed to the next free layer), and a scoring layer needs a layer after it, so any
    that would land on the last layer are dropped.
    """
    if not isinstance(n_layers, int) or n_layers < 2:
        raise ValueError(f"n_layers: SparseVLM needs a decoder with at least 2 layers, got {n_layers!r}")
    if layers is not None:
        out = tuple(int(l) for l in layers)
        bad = [l for l in out if l + 1 >= n_layers]
        if bad:
            raise ValueError(f"score_layers: {bad} leave no layer after them to prune in a {n_layers}-layer decoder")
        return out
    out: list[int] = []
    for p in paper_layers:
        s = map_layer(int(p), n_layers, PAPER_LAYERS)
        if out and s < out[-1] + 2:
            s = out[-1] + 2
        if s + 1 < n_layers:
            out.append(s)
    if not out:
        raise ValueError(f"n_layers: no scoring layer fits a {n_layers}-layer decoder")
    return tuple(out)


def hook_layers(score_layers: Iterable[int]) -> tuple[int, ...]:
    """Layers the hook calls `select` at: 0 (raters), each scoring layer s (P) and s + 1 (pruning)."""
    return tuple(sorted({0, *score_layers, *(s + 1 for s in score_layers)}))


# ---------------------------------------------------------------------------------------------- reducer
@dataclass
class LayerTrace:
    """What happened to one sample at one pruning layer (for figures and the notebook).

    layer: the pruning layer (its input is pruned; scores from layer - 1). visual_orig: [Lv] original
    visual index of each visual token present (-1: merged). scores: [Lv] Pbar. rank, kept: [K] indices into
    the visual tokens (ascending). recycled: the `Recycled` record or None (indices into the DELETED
    tokens, whose visual indices are `deleted`).
    """

    layer: int
    visual_orig: torch.Tensor
    scores: torch.Tensor
    rank: int
    n_rows: int
    kept: torch.Tensor
    deleted: torch.Tensor
    recycled: Recycled | None


@dataclass
class SampleTrace:
    """One sample of the last prefill: text relevance R, raters (indices into the instruction span) and
    the per-layer records."""

    relevance: torch.Tensor | None = None
    raters: torch.Tensor | None = None
    instruction_positions: torch.Tensor | None = None
    layers: list[LayerTrace] = field(default_factory=list)


@register("sparsevlm")
class SparseVLM(Reducer):
    """SparseVLM: text-guided, rank-adaptive progressive pruning with token recycling (see module docstring).

    `SparseVLM(mode="official", scale=..., bias=...)`, `SparseVLM(mode="paper", lam=...)` or
    `SparseVLM.for_budget(192)` (the code's (scale, bias) for that budget). Keyword arguments are the
    fields of `SparseVLMConfig`. `lam=0` in paper mode deletes nothing: the model runs unchanged.

    The scoring layers depend on the decoder's depth; they are resolved when the hook binds the reducer to
    a model (`validate(n_layers)`); until then `layers` holds the 32-layer (LLaVA-1.5-7B) ones.
    After each prefill `trace` holds a `SampleTrace` per sample of that batch.
    """

    def __init__(self, **kwargs: Any):
        self.config = SparseVLMConfig(**kwargs)
        self.trace: list[SampleTrace] = []
        self._bind(PAPER_LAYERS)
        self._pending: dict[int, list[tuple[torch.Tensor, int, int] | None]] = {}
        self._raters: list[torch.Tensor] = []

    @classmethod
    def for_budget(cls, budget: int, **kwargs: Any) -> "SparseVLM":
        """The official (scale, bias) of a paper budget (192 / 128 / 64); other knobs as keywords."""
        if budget not in OFFICIAL_SCALE_BIAS:
            raise ValueError(f"budget: the official code gives (scale, bias) only for "
                             f"{sorted(OFFICIAL_SCALE_BIAS)}, got {budget!r}; use `calibrate` instead")
        scale, bias = OFFICIAL_SCALE_BIAS[budget]
        return cls(mode="official", scale=scale, bias=bias, **kwargs)

    def with_(self, **changes: Any) -> "SparseVLM":
        """A copy with some config fields changed."""
        return type(self)(**{**asdict(self.config), **changes})

    def _bind(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.score_layers = resolve_score_layers(n_layers, self.config.score_layers)
        self.layers = hook_layers(self.score_layers)

    def validate(self, n_layers: int) -> None:
        """Bind to a decoder of `n_layers` layers (resolves the scoring layers), then the base checks."""
        self._bind(n_layers)
        super().validate(n_layers)

    def __repr__(self) -> str:
        c = self.config
        knob = f"scale={c.scale}, bias={c.bias}" if c.mode == "official" else f"lam={c.lam}"
        return (f"SparseVLM(mode={c.mode!r}, {knob}, recycle={c.recycle}, rater_rows={c.rater_rows!r}, "
                f"score_layers={self.score_layers})")

    # ---- the hook calls this at layer 0, at each scoring layer s and at s + 1
    def select(self, ctx: ReductionContext) -> Selection:
        B = ctx.batch_size
        if ctx.layer == 0:
            self._begin(ctx)
        keep = [torch.arange(n, device=ctx.hidden.device) for n in ctx.n_visual]
        merged: list[torch.Tensor] | None = None
        merged_pos: list[torch.Tensor] | None = None
        pending = self._pending.pop(ctx.layer - 1, None)
        if pending is not None:
            merged, merged_pos = [], []
            for b in range(B):
                k, m, mp = self._prune_sample(ctx, b, pending[b])
                keep[b] = k
                merged.append(m)
                merged_pos.append(mp)
        if ctx.layer in self.score_layers:
            self._score(ctx)
        if merged is not None and all(m.shape[0] == 0 for m in merged):
            merged, merged_pos = None, None
        return Selection(keep, merged=merged, merged_positions=merged_pos)

    def _begin(self, ctx: ReductionContext) -> None:
        """Layer 0: reset the per-forward state and pick the raters from the input embeddings (Eq. 5-7)."""
        self._pending = {}
        self.trace = [SampleTrace() for _ in range(ctx.batch_size)]
        self._raters = []
        for b in range(ctx.batch_size):
            text = torch.nonzero(ctx.kinds[b] == S.INSTRUCTION).flatten()
            tr = self.trace[b]
            tr.instruction_positions = text
            if text.numel() == 0:
                self._raters.append(text)
                continue
            R = rater_relevance(ctx.visual_hidden(b), ctx.hidden[b, text])
            raters = select_raters(R, strict=self.config.mode == "official")
            if raters.numel() == 0:  # all R equal under the strict threshold: every text token rates
                raters = torch.arange(text.numel(), device=text.device)
            tr.relevance, tr.raters = R, raters
            self._raters.append(raters)

    def _score(self, ctx: ReductionContext) -> None:
        """Scoring layer s: the raters' P (its rank sets the count) and Pbar from the `rater_rows` rows (the
        raters themselves unless ablated), kept for layer s + 1."""
        raters, rows, cols = [], [], []
        for b in range(ctx.batch_size):
            text = torch.nonzero(ctx.kinds[b] == S.INSTRUCTION).flatten()
            raters.append(text[self._raters[b].to(text.device)] if text.numel() else text)
            if self.config.rater_rows == "all":
                rows.append(torch.nonzero(ctx.kinds[b] != S.PAD).flatten())
            elif self.config.rater_rows == "text":
                rows.append(text)
            cols.append(ctx.visual_index[b])
        P = query_attention(ctx.layer_module, ctx.hidden, ctx.position_ids, ctx.kinds, raters, cols)
        P_rows = P if not rows else query_attention(ctx.layer_module, ctx.hidden, ctx.position_ids, ctx.kinds,
                                                    rows, cols)
        out = []
        for b in range(ctx.batch_size):
            if raters[b].numel() == 0 or cols[b].numel() == 0:
                out.append(None)
                continue
            out.append((P_rows[b].mean(0), matrix_rank(P[b], self.config.rank_rtol), int(raters[b].numel())))
        self._pending[ctx.layer] = out

    def _prune_sample(self, ctx: ReductionContext, b: int, scored) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer s + 1: keep the top-K by Pbar, recycle the best of the deleted ones (Eqs. 8-11)."""
        dev = ctx.hidden.device
        n = ctx.n_visual[b]
        empty = ctx.hidden.new_zeros(0, ctx.hidden.shape[-1])
        no_pos = torch.zeros(0, dtype=torch.long, device=dev)
        if scored is None:
            return torch.arange(n, device=dev), empty, no_pos
        pbar, rank, n_rows = scored
        k = kept_count(n, rank, self.config)
        kept = topk_stable(pbar, k)
        is_del = torch.ones(n, dtype=torch.bool, device=dev)
        is_del[kept] = False
        deleted = torch.nonzero(is_del).flatten()
        lr, c = recycle_counts(int(deleted.numel()), self.config)
        rec = None
        merged, merged_pos = empty, no_pos
        if lr:
            h_del = ctx.hidden[b, ctx.visual_index[b][deleted]]
            rec = recycle(h_del, pbar[deleted], lr, c, self.config.mode)
            merged = rec.tokens
            centre_tok = deleted[rec.members[rec.centres]]
            merged_pos = ctx.position_ids[b, ctx.visual_index[b][centre_tok]]
        self.trace[b].layers.append(LayerTrace(ctx.layer, ctx.visual_orig[b].clone(), pbar, rank, n_rows, kept,
                                               deleted, rec))
        return kept, merged, merged_pos


# ------------------------------------------------------------------------------------------ budgets
def equivalent_tokens(model: nn.Module, batches: Sequence[dict], reducer: Reducer | None,
                      image_token_id: int | None = None) -> float:
    """Visual tokens averaged over decoder layers and samples (SparseVLM's "equivalent tokens", counted
    at each layer's input), from prefill forwards of `batches` (dicts of model inputs) under `reducer`."""
    total, count = 0.0, 0
    for inputs in batches:
        with torch.no_grad(), reduce_tokens(model, reducer, image_token_id=image_token_id) as st:
            model(**inputs, logits_to_keep=1)  # only the token counts matter: skip the LM head elsewhere
        if reducer is None:
            n = (inputs["input_ids"] == image_token_id).sum(1).float() if image_token_id is not None else None
            total += float(n.sum())
            count += int(n.numel())
            continue
        avg = st.average_visual_tokens()
        total += float(avg.sum())
        count += int(avg.numel())
    if count == 0:
        raise ValueError("batches: need at least one batch with one sample")
    return total / count


@dataclass(frozen=True)
class Calibration:
    """Result of `calibrate`: the reducer, its knob value and the achieved average (toy tokens and
    paper-equivalent tokens of 576), and whether the target was reachable at all."""

    reducer: SparseVLM
    knob: str
    value: float
    target: float
    achieved: float
    n_visual: float
    feasible: bool

    @property
    def achieved_paper(self) -> float:
        return self.achieved * PAPER_VISUAL / self.n_visual

    @property
    def target_paper(self) -> float:
        return self.target * PAPER_VISUAL / self.n_visual


def calibrate(model: nn.Module, batches: Sequence[dict], target: float, *, image_token_id: int | None = None,
              n_visual: float | None = None, iters: int = 14, hi: float | None = None, verbose: bool = True,
              **config: Any) -> Calibration:
    """Tune `scale` (official, bias kept) or `lam` (paper) so the layer-averaged visual-token count over
    `batches` is as close as possible to `target` (toy tokens), by bisection (sparsevlm.md §3.8).

    The count is monotone in the knob (up to ties), so bisection finds the boundary; of the two values
    around it the closer one wins. Prints (`verbose`) and returns the achieved average. `n_visual` (visual
    tokens per sample before pruning, default: counted) only scales the paper-equivalent numbers.
    """
    if not batches:
        raise ValueError("batches: calibrate needs at least one batch")
    if not (isinstance(target, (int, float)) and target >= 0):
        raise ValueError(f"target: must be a non-negative token count, got {target!r}")
    mode = config.get("mode", "official")
    knob = "scale" if mode == "official" else "lam"
    if n_visual is None:
        tok = image_token_id if image_token_id is not None else getattr(model.config, "image_token_id", None)
        n_visual = float(sum(float((b["input_ids"] == tok).sum()) for b in batches)
                         / sum(b["input_ids"].shape[0] for b in batches))
    memo: dict[float, float] = {}

    def avg(v: float) -> float:
        if v not in memo:
            memo[v] = equivalent_tokens(model, batches, SparseVLM(**{**config, knob: v}), image_token_id)
        return memo[v]

    top = hi if hi is not None else (float(n_visual) if knob == "scale" else 1.0)
    lo_end, hi_end = avg(0.0), avg(top)
    feasible = min(lo_end, hi_end) <= target <= max(lo_end, hi_end)
    if feasible:
        # official: the count grows with scale; paper: it shrinks with lam. Keep [lo_v, hi_v] around the target.
        lo_v, hi_v = 0.0, top
        big_at_hi = knob == "scale"
        for _ in range(iters):
            mid = 0.5 * (lo_v + hi_v)
            if (avg(mid) >= target) == big_at_hi:
                hi_v = mid
            else:
                lo_v = mid
        best = min((lo_v, hi_v), key=lambda v: (abs(avg(v) - target), v))
    else:  # out of reach: the closer end (e.g. every layer up to the first scoring layer keeps all tokens)
        best = min((0.0, top), key=lambda v: (abs(avg(v) - target), v))
    achieved = avg(best)
    red = SparseVLM(**{**config, knob: best})
    cal = Calibration(red, knob, best, float(target), achieved, float(n_visual), feasible)
    if verbose:
        note = "" if feasible else f" (target out of reach: [{min(lo_end, hi_end):.2f}, {max(lo_end, hi_end):.2f}])"
        print(f"[sparsevlm] calibrated {knob}={best:.4g}: equivalent tokens {achieved:.2f} of {n_visual:.0f} "
              f"({100 * achieved / n_visual:.1f}%; target {target:.2f} = {100 * target / n_visual:.1f}%){note}",
              flush=True)
    return cal


def paper_budget_target(budget: float, n_visual: float) -> float:
    """Toy-token target of a paper budget (of 576): the same fraction of `n_visual` (DESIGN.md §6)."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget <= PAPER_VISUAL:
        raise ValueError(f"budget: expected a paper token count in [0, {PAPER_VISUAL}], got {budget!r}")
    return budget / PAPER_VISUAL * n_visual


__all__ = [
    "SparseVLM", "SparseVLMConfig", "Calibration", "calibrate", "equivalent_tokens", "paper_budget_target",
    "rater_relevance", "select_raters", "matrix_rank", "kept_count", "recycle_counts", "recycle",
    "query_attention", "resolve_score_layers", "hook_layers", "PAPER_SCORE_LAYERS", "OFFICIAL_SCALE_BIAS",
    "LayerTrace", "SampleTrace", "Recycled",
]
