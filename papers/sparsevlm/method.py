"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", arXiv 2410.04417) as a reducer on the common hook.

What it does (paper §3, Eqs. 1-11), once per prefill:
1. **Raters** (Eqs. 5-7): ``R = mean_j softmax_text(H_v H_q^T)[j, :]`` from the decoder's input embeddings of
   the visual tokens (H_v, projector output) and of the text after the image (H_q); raters are the text
   tokens with ``R >= mean(R)``.
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

Two modes (`mode=`), every difference listed:

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
model's depth by `resolve_score_layers`; rank by `torch.linalg.matrix_rank` (default tolerance).

Changed from the official code (both modes):
- fp32 scores: the code takes the rank of an fp16 P, whose rounding noise makes it ~ the number of raters;
  here P is computed in fp32 from the layer's query/key states, so the rank is the real one (usually also
  min(|S|, L_v) for softmax rows). `rank_rtol` can set a tolerance. Recycled tokens are clustered and
  averaged in fp32 too, then cast back to the model's dtype.
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

How it sits on the hook: the reducer acts only at the pruning layers s + 1 and asks (`needs`) for the
attention slice of layer s (instruction queries x visual keys, computed inside that layer's normal forward,
never L x L) and for the decoder's input embeddings. The raters are recomputed from those embeddings at each
pruning layer (a visual x text product, cheap), so no state is carried from one `select` call to the next.
What it decided (R, raters, Pbar, rank, kept, recycled clusters) goes into `Selection.info`, which the hook
keeps in `ReductionState.info`; `traces(state)` assembles it per sample for figures.

Budgets: `SparseVLM.for_model(budget, target)` (what `common.factory.make_reducer` and `Run.reducer` call)
calibrates `scale` (official) or `lam` (paper) on the target's calibration batches so that the visual tokens
averaged over decoder layers match the budget (the paper's "equivalent tokens"), and caches the value on disk.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import nn

from common import spans as S
from common.artifacts import atomic_write_text
from common.attention import AttentionSlice
from common.baselines.fastv import topk_stable
from common.clustering import dpc_knn, merge_clusters
from common.reduction import (
    BuildTarget, Needs, ReductionContext, ReductionState, Reducer, Selection, reduce_tokens,
)
from common.registry import register
from common.run.run import stable_hash
from common.schedule import PAPER_LAYERS, PAPER_VISUAL, Budget, map_layer

Mode = Literal["official", "paper"]
RaterRows = Literal["raters", "text", "all"]

PAPER_SCORE_LAYERS = (2, 6, 15, 19)  # official v1 `pruning_loc`, 0-indexed of 32
# (scale, bias) of the official v1 eval scripts / README per budget; tuned for LLaVA-1.5-7B in fp16, so
# other models need calibration (`SparseVLM.for_model`, `calibrate`).
OFFICIAL_SCALE_BIAS = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}
CALIB_ITERS = 10  # bisection steps of a budget calibration (the tables' setting)


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
        could not hold the budget (the paper does not say how it did).
    score_layers: scoring layers of THIS model, strictly increasing (None: `PAPER_SCORE_LAYERS` mapped to
        its depth by `resolve_score_layers`).
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
            if any(b <= a for a, b in zip(layers, layers[1:])):
                raise ValueError(f"score_layers: must be strictly increasing, got {layers}")
            object.__setattr__(self, "score_layers", layers)


# ----------------------------------------------------------------------------------------------- maths
def rater_relevance(h_vis: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``R = mean_j softmax(H_v H_q^T)[j, :]``; [Lv, D], [Lt, D] -> [Lt].

    The softmax runs over the TEXT axis (over the vision axis every column would sum to 1 and R would be
    the constant 1/Lv); no 1/sqrt(D) scaling, as in the code.
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
    collapse each group (official: mean, Euclidean assignment; paper: sum, cosine assignment). Clustering and
    merging run in fp32 (a bf16 sum of a large group loses most of its bits); the tokens come back in h's
    dtype."""
    order = torch.sort(scores, descending=True, stable=True).indices[:n_recycle]
    x = h[order]
    if n_centres >= n_recycle:  # every token its own cluster (also covers a single recycled token)
        assignment = torch.arange(n_recycle, device=h.device)
        return Recycled(x.clone(), order, assignment, assignment.clone())
    xf = x.float()[None]
    if mode == "official":
        res = dpc_knn(xf, n_centres, k=n_centres)
        tokens = merge_clusters(xf, res.assignment, n_centres, reduce="mean")[0]
    else:
        k = min(n_centres, n_recycle - 1)
        res = dpc_knn(xf, n_centres, k=k, assign="cosine", include_self=False, scale_by_dim=False,
                      densest_delta="own")
        tokens = merge_clusters(xf, res.assignment, n_centres, reduce="sum")[0]
    return Recycled(tokens.to(h.dtype), order, res.assignment[0], res.centers_idx[0])


# --------------------------------------------------------------------------------------------- layers
def resolve_score_layers(n_layers: int, layers: Sequence[int] | None = None,
                         paper_layers: Sequence[int] = PAPER_SCORE_LAYERS) -> tuple[int, ...]:
    """Scoring layers of an `n_layers`-deep decoder.

    Given `layers` they are used as they are (checked); otherwise `paper_layers` (of 32) are mapped with
    `map_layer`. Changed from the plain proportional map: a scoring layer needs a layer after it (where its
    decision applies), so any that would land on the last layer are dropped; and mapped layers that come
    closer than two are pushed apart (a collision goes to the next layer but one). The push only matters
    below ~16 layers (at 32 the map is the identity); it is the rule every artifact was made with, so shallow
    models keep their scoring layers (8 layers: 0, 2, 4, 6).
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


def hook_layers(score_layers: Sequence[int]) -> tuple[int, ...]:
    """Layers the hook calls `select` at: s + 1 for each scoring layer s (its input is pruned)."""
    return tuple(int(s) + 1 for s in score_layers)


# ----------------------------------------------------------------------------------------------- traces
@dataclass
class LayerTrace:
    """What happened to one sample at one pruning layer (for figures and the notebook).

    layer: the pruning layer (its input is pruned; scores from layer - 1). visual_orig: [Lv] original
    visual index of each visual token present (-1: merged). scores: [Lv] Pbar. rank: of the raters' P;
    n_rows: number of raters. kept: [K] indices into the visual tokens (ascending). deleted: the others.
    recycled: the `Recycled` record or None (indices into the DELETED tokens).
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
    """One sample of a prefill: text relevance R, raters (indices into the instruction tokens), the
    instruction's positions in the prompt, and the per-layer records of the layers that scored."""

    relevance: torch.Tensor | None = None
    raters: torch.Tensor | None = None
    instruction_positions: torch.Tensor | None = None
    layers: list[LayerTrace] = field(default_factory=list)


def traces(state: ReductionState) -> list[SampleTrace]:
    """Per sample, the `SampleTrace` of the last prefill, from what `SparseVLM.select` put in `Selection.info`
    (one single-layer `SampleTrace` per sample and pruning layer)."""
    out: list[SampleTrace] = []
    for layer in sorted(state.info):
        for b, rec in enumerate(state.info[layer]):
            if b == len(out):
                out.append(SampleTrace(rec.relevance, rec.raters, rec.instruction_positions))
            out[b].layers.extend(rec.layers)
    return out


# ---------------------------------------------------------------------------------------------- reducer
@register("sparsevlm")
class SparseVLM(Reducer):
    """SparseVLM: text-guided, rank-adaptive progressive pruning with token recycling (see module docstring).

    `SparseVLM(mode="official", scale=..., bias=...)`, `SparseVLM(mode="paper", lam=...)`,
    `SparseVLM.for_budget(192)` (the code's uncalibrated (scale, bias) for that budget) or
    `SparseVLM.for_model(Budget.paper(192), target)` (calibrated to the budget on the target's data).
    Keyword arguments are the fields of `SparseVLMConfig`. `lam=0` in paper mode deletes nothing.

    The scoring layers depend on the decoder's depth; they are resolved when the hook binds the reducer to
    a model (`validate(n_layers)`); until then `layers` holds the 32-layer (LLaVA-1.5-7B) ones. After a
    prefill, `traces(state)` gives what it decided for each sample. `calibration` holds the `Calibration`
    a budget-built reducer was tuned with (None otherwise).
    """

    takes_budget = True

    def __init__(self, **kwargs: Any):
        self.config = SparseVLMConfig(**kwargs)
        self.calibration: Calibration | None = None
        queries = "all" if self.config.rater_rows == "all" else "instruction"
        self.needs = Needs(attention=AttentionSlice(queries=queries, keys="visual"), embeddings=True)
        self._bind(PAPER_LAYERS)

    @classmethod
    def for_budget(cls, budget: int, **kwargs: Any) -> "SparseVLM":
        """The official scripts' (scale, bias) of a paper budget (192 / 128 / 64), uncalibrated (tuned for
        LLaVA-1.5-7B in fp16); other knobs as keywords."""
        if budget not in OFFICIAL_SCALE_BIAS:
            raise ValueError(f"budget: the official code gives (scale, bias) only for "
                             f"{sorted(OFFICIAL_SCALE_BIAS)}, got {budget!r}; use `for_model` to calibrate")
        scale, bias = OFFICIAL_SCALE_BIAS[budget]
        return cls(mode="official", scale=scale, bias=bias, **kwargs)

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options: Any) -> "SparseVLM":
        """SparseVLM for the model `target` describes (scoring layers mapped to its depth when bound).

        With a `budget` and no explicit `scale` / `lam` option, the knob of the mode is calibrated on
        `target.calibration_batches()` so that the layer-averaged visual tokens match the budget (cached on
        disk under `target.cache_dir`, keyed by `target.cache_key`, the budget and the config). Options: the
        fields of `SparseVLMConfig` and `calib_iters` (bisection steps, default `CALIB_ITERS`).
        """
        iters = int(options.pop("calib_iters", CALIB_ITERS))
        if budget is None or "scale" in options or "lam" in options:
            return cls(**options)
        budget = Budget.coerce(budget)
        if target.calibration_batches is None or target.model is None:
            raise ValueError("budget: SparseVLM meets a budget by calibrating its knob on data; build it with "
                             "calibration batches (run.reducer('sparsevlm', budget, calibrate_on=<family>)) or "
                             "pass scale= (official) / lam= (paper)")
        return calibrated(target, budget, iters=iters, **options)

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

    # ---- the hook calls this at each pruning layer s + 1, with layer s's attention in `ctx.attention`
    def select(self, ctx: ReductionContext) -> Selection:
        P = ctx.attention.head_mean()  # [B, Q, K] float32: captured queries x visual keys of layer s
        keep, merged, merged_pos, info = [], [], [], []
        for b in range(ctx.batch_size):
            k, m, mp, tr = self._select_sample(ctx, P, b)
            keep.append(k)
            merged.append(m)
            merged_pos.append(mp)
            info.append(tr)
        if all(m.shape[0] == 0 for m in merged):
            return Selection(keep, info=info)
        return Selection(keep, merged=merged, merged_positions=merged_pos, info=info)

    def _raters(self, ctx: ReductionContext, b: int) -> SampleTrace:
        """Eqs. 5-7 from the decoder's input embeddings: R over the instruction tokens and the raters."""
        sp = ctx.spans[b]
        emb = ctx.embeddings[b]
        text = sp.instruction_positions().to(emb.device)
        if text.numel() == 0:
            return SampleTrace(instruction_positions=text)
        R = rater_relevance(emb[sp.visual_positions().to(emb.device)], emb[text])
        raters = select_raters(R, strict=self.config.mode == "official")
        if raters.numel() == 0:  # all R equal under the strict threshold: every text token rates
            raters = torch.arange(text.numel(), device=text.device)
        return SampleTrace(R, raters, text)

    def _select_sample(self, ctx: ReductionContext, P: torch.Tensor, b: int):
        """Sample b: keep the top-K by Pbar (Eq. 8), recycle the best of the deleted ones (Eqs. 9-11)."""
        dev = ctx.hidden.device
        n = ctx.n_visual[b]
        tr = self._raters(ctx, b)
        empty = ctx.hidden.new_zeros(0, ctx.hidden.shape[-1])
        no_pos = torch.zeros(0, dtype=torch.long, device=dev)
        if tr.raters is None or n == 0:
            return torch.arange(n, device=dev), empty, no_pos, tr
        att = ctx.attention
        if int(att.k_valid[b].sum()) != n:
            raise RuntimeError(f"sparsevlm: layer {ctx.layer - 1}'s captured keys ({int(att.k_valid[b].sum())}) "
                               f"are not the {n} visual tokens entering layer {ctx.layer}")
        nq = int(att.q_valid[b].sum())
        q_pos = att.q_index[b, :nq].to(dev)  # positions (this layout) of the captured query rows, ascending
        instr = torch.nonzero(ctx.kinds[b] == S.INSTRUCTION).flatten()  # never pruned: same order as R
        Pb = P[b, :nq, :n].to(dev)
        P_raters = Pb[torch.searchsorted(q_pos, instr[tr.raters.to(dev)])]
        if self.config.rater_rows == "raters":
            pbar = P_raters.mean(0)
        elif self.config.rater_rows == "text":
            pbar = Pb[torch.searchsorted(q_pos, instr)].mean(0)
        else:  # "all": every captured row (every non-pad token)
            pbar = Pb.mean(0)
        rank = matrix_rank(P_raters, self.config.rank_rtol)
        kept = topk_stable(pbar, kept_count(n, rank, self.config))
        is_del = torch.ones(n, dtype=torch.bool, device=dev)
        is_del[kept] = False
        deleted = torch.nonzero(is_del).flatten()
        lr, c = recycle_counts(int(deleted.numel()), self.config)
        rec = None
        merged, merged_pos = empty, no_pos
        if lr:
            vis = ctx.visual_index[b]
            rec = recycle(ctx.hidden[b, vis[deleted]], pbar[deleted], lr, c, self.config.mode)
            merged = rec.tokens
            merged_pos = ctx.position_ids[b, vis[deleted[rec.members[rec.centres]]]]
        tr.layers.append(LayerTrace(ctx.layer, ctx.visual_orig[b].clone(), pbar, rank, int(tr.raters.numel()),
                                    kept, deleted, rec))
        return kept, merged, merged_pos, tr


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
    """Result of `calibrate`: the knob and its value, the target and achieved averages (tokens of this model,
    per sample) and paper-equivalent tokens of 576, whether the target was reachable, and the other config
    fields (`reducer` rebuilds the calibrated reducer)."""

    knob: str
    value: float
    target: float
    achieved: float
    n_visual: float
    feasible: bool
    config: dict = field(default_factory=dict)

    @property
    def reducer(self) -> SparseVLM:
        red = SparseVLM(**{**self.config, self.knob: self.value})
        red.calibration = self
        return red

    @property
    def achieved_paper(self) -> float:
        return self.achieved * PAPER_VISUAL / self.n_visual

    @property
    def target_paper(self) -> float:
        return self.target * PAPER_VISUAL / self.n_visual


def _count_visual(batches: Sequence[dict], image_token_id: int) -> float:
    """Visual tokens per sample over `batches` (all frames of a clip counted)."""
    return float(sum(float((b["input_ids"] == image_token_id).sum()) for b in batches)
                 / sum(b["input_ids"].shape[0] for b in batches))


def calibrate(model: nn.Module, batches: Sequence[dict], target: float, *, image_token_id: int | None = None,
              n_visual: float | None = None, iters: int = 14, hi: float | None = None, verbose: bool = True,
              **config: Any) -> Calibration:
    """Tune `scale` (official, bias kept) or `lam` (paper) so the layer-averaged visual-token count over
    `batches` is as close as possible to `target` (tokens of this model per sample), by bisection.

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
    tok = image_token_id if image_token_id is not None else getattr(model.config, "image_token_id", None)
    if n_visual is None:
        n_visual = _count_visual(batches, tok)
    memo: dict[float, float] = {}

    def avg(v: float) -> float:
        if v not in memo:
            memo[v] = equivalent_tokens(model, batches, SparseVLM(**{**config, knob: v}), tok)
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
    cal = Calibration(knob, best, float(target), achieved, float(n_visual), feasible, dict(config))
    if verbose:
        note = "" if feasible else f" (target out of reach: [{min(lo_end, hi_end):.2f}, {max(lo_end, hi_end):.2f}])"
        print(f"[sparsevlm] calibrated {knob}={best:.4g}: equivalent tokens {achieved:.2f} of {n_visual:.0f} "
              f"({100 * achieved / n_visual:.1f}%; target {target:.2f} = {100 * target / n_visual:.1f}%){note}",
              flush=True)
    return cal


def calibrated(target: BuildTarget, budget: Budget, *, iters: int = CALIB_ITERS, **config: Any) -> SparseVLM:
    """SparseVLM (`config` fields) with its knob calibrated on `target`'s batches to the layer-averaged
    `budget` (the budget's kept fraction of the visual tokens per sample; a count budget is that many tokens).

    The result is cached as JSON under `target.cache_dir` (when set with a `cache_key`), keyed by the model
    and data identity (`cache_key`), the budget, the config and `iters`; writes are atomic, so concurrent
    runs never read a half-written file.
    """
    SparseVLMConfig(**config)  # fail on a bad option before any forward pass
    path = None
    if target.cache_dir is not None and target.cache_key is not None:
        key = stable_hash({"target": dict(target.cache_key), "budget": [budget.kind, budget.value],
                           "config": config, "iters": iters, "v": 2})
        path = target.cache_dir / f"sparsevlm-{key[:24]}.json"
        if path.exists():
            rec = json.loads(path.read_text())
            return Calibration(rec["knob"], rec["value"], rec["target"], rec["achieved"], rec["n_visual"],
                               rec["feasible"], rec["config"]).reducer
    batches = target.calibration_batches()
    n_visual = _count_visual(batches, target.image_token_id)
    frac = budget.kept_fraction
    tokens = frac * n_visual if frac is not None else float(budget.value)
    print(f"[sparsevlm] calibrating for {budget.label()} ({tokens:.2f} of {n_visual:.0f} visual tokens per sample)"
          + (f" {config}" if config else ""), flush=True)
    cal = calibrate(target.model, batches, tokens, image_token_id=target.image_token_id, n_visual=n_visual,
                    iters=iters, **config)
    if path is not None:
        atomic_write_text(path, json.dumps({**asdict(cal), "budget": budget.label()}, indent=1, sort_keys=True))
    return cal.reducer


def paper_budget_target(budget: float, n_visual: float) -> float:
    """Tokens of a model with `n_visual` visual tokens for a paper budget (of 576): the same fraction."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget <= PAPER_VISUAL:
        raise ValueError(f"budget: expected a paper token count in [0, {PAPER_VISUAL}], got {budget!r}")
    return budget / PAPER_VISUAL * n_visual


__all__ = [
    "SparseVLM", "SparseVLMConfig", "Calibration", "calibrate", "calibrated", "equivalent_tokens",
    "paper_budget_target", "rater_relevance", "select_raters", "matrix_rank", "kept_count", "recycle_counts",
    "recycle", "resolve_score_layers", "hook_layers", "traces", "PAPER_SCORE_LAYERS", "OFFICIAL_SCALE_BIAS",
    "CALIB_ITERS", "LayerTrace", "SampleTrace", "Recycled",
]
