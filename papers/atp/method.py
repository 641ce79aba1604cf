"""ATP-LLaVA at inference: hard pruning with trained ATP modules through the common hook (spec §3.9).

    atp, card = load_atp("checkpoints/atp-toy-144-frozen")
    reducer = build_reducer("atp", modules=atp)              # or build_reducer("atp", checkpoint=path)
    with reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id) as st:
        vlm.model.generate(**inputs, max_new_tokens=8)
    reducer.last          # per module: thresholds, which tokens RP / SP kept (original grid indices)

At each module layer i_k the reducer keeps visual token n iff S_red_n > theta_r or S_sp_n > theta_s (the
hard form of Eq. 9-11), drops the rest from the hidden states and the KV cache of later layers, and keeps
the survivors' original positions (PP; the hook's `positions="renumber"` gives "w/o PP"). Text is never
pruned. Scores come from q/k of layer i_k - 1 recomputed from the hidden states that entered it
(`papers.atp.module`): the reducer therefore also acts (keeping everything) at each layer i_k - 1, to see
those hidden states. Batches work: every sample gets its own thresholds and kept set.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common import spans as S
from common.reduction import Needs, ReductionContext, Reducer, Selection
from common.registry import register
from papers.atp.module import ATPModules, Decision, load_atp, qk_of, rotary_of, token_scores


@register("atp")
class ATPReducer(Reducer):
    """ATP-LLaVA's adaptive pruning (Ye et al. 2025, Eq. 3-11, hard form) with trained `ATPModules`.

    Args:
        modules: trained modules, or
        checkpoint: a folder written by `papers.atp.module.save_atp`.
        record: keep every prefill's decisions in `history` (for figures); `last` always holds the latest.
    """

    def __init__(self, modules: ATPModules | None = None, checkpoint: str | Path | None = None,
                 record: bool = False):
        if (modules is None) == (checkpoint is None):
            raise ValueError("modules/checkpoint: give exactly one of them")
        if checkpoint is not None:
            modules, _ = load_atp(checkpoint)
        if not isinstance(modules, ATPModules):
            raise TypeError(f"modules: expected papers.atp.module.ATPModules, got {type(modules).__name__}")
        self.atp = modules.eval()
        cfg = modules.config
        self.layers = tuple(sorted(set(cfg.layers) | {l - 1 for l in cfg.layers}))
        self.needs = Needs()  # scores from recomputed q/k of layer i_k - 1, see the module docstring
        self.record = record
        self.history: list[list[Decision]] = []
        self.last: list[Decision] = []
        self._stash: dict | None = None
        self._g: torch.Tensor | None = None

    def select(self, ctx: ReductionContext) -> Selection:
        cfg = self.atp.config
        l = ctx.layer
        if l == self.layers[0]:  # a new prefill
            self.last = []
            if self.record:
                self.history.append(self.last)
            self._g = self._present(ctx)
        keep = [torch.arange(n, device=ctx.hidden.device) for n in ctx.n_visual]
        if l in cfg.layers:
            keep = self._prune(ctx, cfg.layers.index(l))
        if l + 1 in cfg.layers:
            self._stash = {"hidden": ctx.hidden, "kinds": ctx.kinds, "pos": ctx.position_ids,
                           "layer": ctx.layer_module}
        return Selection(keep)

    def _present(self, ctx: ReductionContext) -> torch.Tensor:
        """[B, N0] 0/1: which original visual tokens are present (all, at the first module)."""
        n0 = self.atp.config.n_visual
        g = torch.zeros(ctx.batch_size, n0, device=ctx.hidden.device)
        for b in range(ctx.batch_size):
            orig = ctx.visual_orig[b]
            if ctx.n_visual[b] != n0 or bool((orig < 0).any()):
                raise ValueError(f"input: ATP modules were built for one image of {n0} visual tokens; sample {b} "
                                 f"has {ctx.n_visual[b]} (multi-frame inputs are not supported)")
            g[b, orig] = 1.0
        return g

    @torch.no_grad()
    def _prune(self, ctx: ReductionContext, k: int) -> list[torch.Tensor]:
        cfg = self.atp.config
        st = self._stash
        if st is None or st["hidden"].shape[:2] != ctx.hidden.shape[:2]:
            raise RuntimeError(f"atp: no matching hidden states of layer {ctx.layer - 1} were stashed")
        self.atp.to(ctx.hidden.device)
        B, n0 = ctx.batch_size, cfg.n_visual
        s_self = torch.zeros(B, n0, device=ctx.hidden.device)
        s_cross = torch.zeros_like(s_self)
        layer = st["layer"]
        for b in range(B):
            valid = torch.nonzero(st["kinds"][b] != S.PAD).flatten()
            kv = st["kinds"][b, valid]
            vis = torch.nonzero(kv == S.VISUAL).flatten()
            txt = torch.nonzero(kv == S.INSTRUCTION).flatten()
            h = st["hidden"][b, valid]
            cos, sin = rotary_of(layer).to(h.device)(h[None], position_ids=st["pos"][b, valid][None])
            q, kk = qk_of(layer, h, cos[0], sin[0])
            a, c = token_scores(q, kk, vis, txt, layer.self_attn.scaling)
            orig = ctx.visual_orig[b]
            s_self[b, orig] = a
            s_cross[b, orig] = c
        d = self.atp.decide(k, s_self, s_cross, self._g)
        self.last.append(d.detach())
        self._g = d.keep.float()
        return [torch.nonzero(d.keep[b][ctx.visual_orig[b]]).flatten() for b in range(B)]
