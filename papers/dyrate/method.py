"""DyRate (Guan et al., "Dynamic Token Reduction during Generation for Vision Language Models",
arXiv 2501.14204) as a reducer on the common hook (§ numbers: papers/dyrate/README.md, "Sections").

At every generation step t (§4.11): layers 0..K-1 see every token; the last query row of layer K-1's
attention gives (a) the per-head shares of the four token types, a_t (4H values, §4.3), fed to the
linear `RatePredictor` -> argmax rate R_t (§4.10), and (b) FastV's scores s_j = mean_h A[h, last, j] of
the visual tokens (§4.6). The top N - floor(R_t N) visual tokens enter layers K..L-1; the rest are gone
for this step. (K follows FastV and the hook: "prune the tokens entering layer K", 0-based, so K = 2 means
two full layers, the paper's FastV setting.)

KV-cache modes (`mode=`; the paper does not discuss caching, §4.12):

| mode | how to generate | what a step costs | rate may go down again | exact to the algorithm (§4.11) |
|---|---|---|---|---|
| `recompute` (default) | `generate(..., use_cache=False)` (see `generate_kwargs`) | a full forward over the pruned sequence: FastV's "inplace" drop, re-decided every step | yes | §4.11 exactly |
| `mask` | with the cache | the prompt's KV is computed unpruned; from step 2 on, the new token's query does not see the pruned visual keys in layers >= K (attention FLOPs only) | yes | from step 2 on; step 1 runs dense (below) |
| `drop` | with the cache | step 1 prunes physically at prefill (layers >= K never cache those tokens); later steps may only shrink the kept set: kept_t = min(kept_{t-1}, N - floor(R_t N)), re-ranked among the still-kept tokens | no | outputs as eviction; memory not freed (below) |

What the hook (`common.reduction`) lacks for the last two rows to be complete:
- `mask` step 1: the first token is predicted by the prefill's last row; masking only that row in layers
  >= K needs a per-query-row mask at prefill (the hook can only drop tokens for every row at prefill).
  So in `mask` mode step 1 is unpruned and counted as rate 0 in the trace.
- `drop` later steps: `on_decode_step` can only hide keys from the new query; it cannot evict entries of
  layers >= K from the KV cache. Hiding a key from every later query gives the same outputs as evicting
  it, but the cache keeps its memory and the attention still spans it. Real eviction needs a decode-time
  `Selection` that gathers the cache of the layers from K on.

`DyRate(rate=r)` replaces the predictor by a fixed rate: the FixedPrune (FP) ablation, and rate 0 is the
acceptance check (generation equals the unpruned model's). Built from a `Budget` (`DyRate.for_model`, what the
registry factory and every budget-sweep table call), DyRate is that fixed-rate form at FastV's K = 2 of 32
mapped to the model, with the rate that keeps exactly the budget's tokens. `DepthPrune` (registered as
"dyrate-dp") is the DP ablation (§6.4).

State between calls: the decision of a step reads only that step's context. What the reducer keeps is the
per-step `trace` (for figures and FLOPs records; reset when a new generation starts) and, in `drop` mode, the
set of tokens still kept, because that mode never lets a pruned token come back. Every step's record is also
its `Selection.info`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from common import spans as S
from common.attention import AttentionSlice, CapturedAttention
from common.baselines.fastv import topk_stable
from common.reduction import BuildTarget, DecodeContext, Needs, ReductionContext, Reducer, Selection
from common.registry import register
from common.schedule import Budget, map_layer, pruning_layer
from papers.dyrate.analysis import type_shares
from papers.dyrate.predictor import RatePredictor, kept_count, rate_keeping

Mode = Literal["recompute", "mask", "drop"]
MODES: tuple[str, ...] = ("recompute", "mask", "drop")
LAST_ROW = AttentionSlice(queries="last", keys="all")  # shares need every key; ranking uses the visual ones


def step_features(att: CapturedAttention, key_kinds: torch.Tensor) -> torch.Tensor:
    """a_t of §4.3 from a captured last-row slice: [B, H, 1, K] -> [B, 4H] float32 (head-major)."""
    sh = type_shares(att.values.float(), key_kinds, att.k_valid)[:, :, -1]  # [B, H, 4]
    return sh.reshape(sh.shape[0], -1)


def visual_scores(att: CapturedAttention, key_kinds: torch.Tensor) -> list[torch.Tensor]:
    """FastV's s_j = mean_h A[h, last, j] over the visual keys, per sample in position order: [N_b] each."""
    mean = att.values[:, :, -1].float().mean(1)  # [B, K]
    return [mean[b][(key_kinds[b] == S.VISUAL) & att.k_valid[b]] for b in range(mean.shape[0])]


@dataclass
class StepRecord:
    """One generation step of one batch: what DyRate decided."""

    step: int  # 0-based generation step (0 predicts the first response token)
    rates: list[float]  # R_t per sample
    kept: list[torch.Tensor]  # per sample, original visual indices that layers >= K see
    probs: torch.Tensor | None = None  # [B, C] predictor probabilities (None for a fixed rate)
    shares: torch.Tensor | None = None  # [B, H, 4] the step's attention shares at layer K-1 (the features)


@dataclass
class Trace:
    """Steps of the current generation (reset when a new prompt starts)."""

    steps: list[StepRecord] = field(default_factory=list)

    def rates(self) -> torch.Tensor:
        """[B, T] rate per sample and step."""
        return torch.tensor([s.rates for s in self.steps]).T

    def shares(self) -> torch.Tensor:
        """[B, T, 4] head-mean attention shares of layer K-1 per step (NaN where not recorded)."""
        rows = [s.shares.mean(1) if s.shares is not None else torch.full((len(s.rates), 4), float("nan"))
                for s in self.steps]
        return torch.stack(rows, 1)


@dataclass
class Decision:
    """What DyRate decided at one step, before ranking: R_t per sample, the predictor's probabilities [B, C]
    (None for a fixed rate), FastV's scores per sample [N_b] and the features' shares [B, H, 4] (CPU)."""

    rates: list[float]
    probs: torch.Tensor | None
    scores: list[torch.Tensor]
    shares: torch.Tensor


def fixed_rate(budget: Budget, n_visual: int) -> float:
    """The rate whose kept count N - floor(R N) is exactly `budget.keep(n_visual)`."""
    return rate_keeping(n_visual, Budget.coerce(budget).keep(n_visual))


@register("dyrate")
class DyRate(Reducer):
    """Per-step visual-token pruning rate from the attention distribution (see the module docstring).

    Args:
        K: pruning layer (tokens entering layer K, 0-based; layer K-1's attention scores). Default 2.
        predictor: a trained `RatePredictor`, or a folder holding one (`RatePredictor.load`).
        rate: a fixed rate instead of a predictor (FixedPrune; 0 keeps everything).
        mode: "recompute" (default), "mask" or "drop" (KV-cache modes, module docstring).
    """

    takes_budget = True

    def __init__(self, K: int = 2, predictor: RatePredictor | str | Path | None = None, rate: float | None = None,
                 mode: Mode = "recompute"):
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K: DyRate reads layer K-1's attention, so K >= 1; got {K!r}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if (predictor is None) == (rate is None):
            raise ValueError("predictor/rate: give exactly one (a trained predictor, or a fixed rate)")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"rate: must lie in [0, 1], got {rate}")
        if isinstance(predictor, (str, Path)):
            predictor = RatePredictor.load(predictor)
        if predictor is not None:
            if not isinstance(predictor, RatePredictor):
                raise TypeError(f"predictor: expected a RatePredictor, got {type(predictor).__name__}")
            if predictor.K != K:
                raise ValueError(f"K: the predictor was trained for K={predictor.K}, got K={K}")
        self.K, self.predictor, self.rate, self.mode = K, predictor, rate, mode
        self.layers = () if mode == "mask" else (K,)
        self.decode_layers = () if mode == "recompute" else (K,)
        self.needs = Needs(attention=None if mode == "mask" else LAST_ROW,
                           decode_attention=None if mode == "recompute" else LAST_ROW)
        self.trace = Trace()
        self._still_kept: list[torch.Tensor] = []  # drop mode: original indices still in play

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options: Any) -> "DyRate":
        """DyRate for a model. With a `budget` (and neither `predictor` nor `rate`): the fixed-rate form at
        K = 2 of 32 mapped to the model's depth, keeping exactly `budget.keep(n_visual)` tokens per image.
        Without one: the constructor's arguments (`predictor=` for the learned form, `rate=` for FP)."""
        options.setdefault("K", pruning_layer(target.n_layers))
        if budget is not None:
            if "predictor" in options or "rate" in options:
                raise ValueError("budget: give a budget (the fixed-rate form) or predictor=/rate=, not both")
            options["rate"] = fixed_rate(budget, target.n_visual)
        return cls(**options)

    def config(self) -> dict[str, Any]:
        """For cache keys (`common.evaluation.describe_reducer`): the predictor's weights included."""
        pred = None
        if self.predictor is not None:
            pred = {"config": self.predictor.config(),
                    "weights": [round(float(x), 6) for p in self.predictor.parameters() for x in p.detach().flatten()]}
        return {"K": self.K, "mode": self.mode, "rate": self.rate, "predictor": pred}

    def generate_kwargs(self) -> dict[str, Any]:
        """`generate()` arguments the mode needs: recompute mode runs without a KV cache."""
        return {"use_cache": False} if self.mode == "recompute" else {}

    # ---- the decision, shared by every mode
    def decide(self, att: CapturedAttention, key_kinds: torch.Tensor) -> Decision:
        """R_t per sample from this step's attention slice alone (the predictor runs in float32 on its own
        device, whatever the model's dtype and device)."""
        scores = visual_scores(att, key_kinds)
        a = step_features(att, key_kinds)
        shares = a.reshape(a.shape[0], -1, 4).cpu()
        if self.predictor is None:
            return Decision([float(self.rate)] * len(scores), None, scores, shares)
        with torch.no_grad():
            logits = self.predictor(a.to(self.predictor.linear.weight.device))
        rates = self.predictor.rate_tensor()[logits.argmax(-1).cpu()].tolist()
        return Decision(rates, torch.softmax(logits.float(), -1).cpu(), scores, shares)

    def _record(self, step: int, rates, kept, probs, shares=None) -> StepRecord:
        if step == 0:
            self.trace = Trace()
        rec = StepRecord(step, list(rates), [k.cpu() for k in kept], probs, shares)
        self.trace.steps.append(rec)
        return rec

    # ---- prefill (recompute: every step; drop: step 1)
    def select(self, ctx: ReductionContext) -> Selection:
        att = ctx.attention
        key_kinds = ctx.kinds.gather(1, att.k_index)
        d = self.decide(att, key_kinds)
        keep = [topk_stable(d.scores[b], kept_count(d.scores[b].numel(), d.rates[b])) for b in range(ctx.batch_size)]
        step = int(ctx.spans[0].response[1] - ctx.spans[0].response[0])  # generated tokens so far
        kept = [ctx.visual_orig[b][k] for b, k in enumerate(keep)]
        rec = self._record(step, d.rates, kept, d.probs, d.shares)
        self._still_kept = kept
        return Selection(keep, info=rec)

    # ---- decode steps (mask, drop)
    def on_decode_step(self, ctx: DecodeContext) -> list[torch.Tensor]:
        att = ctx.attention
        B = att.values.shape[0]
        # layer K-1 is before the pruning layer, so its cache holds the whole prompt: original kinds + response
        prompt = S.kinds_of(ctx.spans).to(att.k_index.device)
        n_new = int(att.k_index.max()) + 1 - prompt.shape[1]
        kinds = torch.cat([prompt, torch.full((B, max(n_new, 0)), S.RESPONSE, dtype=prompt.dtype,
                                              device=prompt.device)], 1)
        key_kinds = kinds.gather(1, att.k_index)
        d = self.decide(att, key_kinds)
        rates, scores = d.rates, d.scores
        if ctx.step == 0 and self.mode == "mask":  # step 1 ran dense (module docstring)
            self._record(0, [0.0] * B, [torch.arange(s.numel()) for s in scores], None)
        hide, kept = [], []
        for b in range(B):
            n = scores[b].numel()
            vo = ctx.visual_orig[b]  # original indices of the visual keys in layer K's cache
            if self.mode == "mask":
                k = topk_stable(scores[b], kept_count(n, rates[b]))
            else:  # drop: re-rank among the still-kept tokens, never grow back
                alive = self._still_kept[b].to(scores[b].device)
                n_keep = min(alive.numel(), kept_count(n, rates[b]))
                k = alive[topk_stable(scores[b][alive], n_keep)]
                self._still_kept[b] = k
            hide.append(torch.nonzero(~torch.isin(vo, k.to(vo.device))).flatten())
            kept.append(k)
        self._record(ctx.step + 1, rates, kept, d.probs, d.shares)
        return hide


@register("dyrate-dp")
class DepthPrune(Reducer):
    """DepthBasedPrune (DP) ablation, §6.4 [R, a guess: the formula was lost]: from layer `start`
    on, the pruned share grows linearly with depth, R'_l = min(1, R0 * l / start), ranked by FastV's rule
    on the previous layer's last row. Kept counts only shrink (pruned tokens are gone)."""

    def __init__(self, start: int, n_layers: int, R0: float):
        if not isinstance(start, int) or not 1 <= start < n_layers:
            raise ValueError(f"start: must be an int in [1, {n_layers}), got {start!r}")
        if not 0.0 <= R0 <= 1.0:
            raise ValueError(f"R0: must lie in [0, 1], got {R0}")
        self.start, self.n_layers, self.R0 = start, n_layers, R0
        self.layers = tuple(range(start, n_layers))
        self.needs = Needs(attention=AttentionSlice(queries="last", keys="visual"))

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options: Any) -> "DepthPrune":
        """DP for a model: its depth, and by default start at layer 4 of 32 mapped (at least 1). Its schedule
        is set by `R0`, not by a budget."""
        if budget is not None:
            raise ValueError("budget: DP's per-layer schedule is set by R0, not by a budget")
        options.setdefault("n_layers", target.n_layers)
        options.setdefault("start", max(1, map_layer(4, target.n_layers)))
        return cls(**options)

    def rate_at(self, layer: int) -> float:
        return min(1.0, self.R0 * layer / self.start)

    def select(self, ctx: ReductionContext) -> Selection:
        s = ctx.attention.values[:, :, -1].float().mean(1)  # [B, Kmax] over this layer's visual tokens
        keep = []
        for b in range(ctx.batch_size):
            n_now = ctx.n_visual[b]
            n0 = int(ctx.spans[b].n_visual)
            keep.append(topk_stable(s[b, :n_now], min(n_now, kept_count(n0, self.rate_at(ctx.layer)))))
        return Selection(keep)

    def rates_per_layer(self) -> list[float]:
        return [0.0 if l < self.start else self.rate_at(l) for l in range(self.n_layers)]
