"""ATP-LLaVA at inference: hard pruning with trained ATP modules through the common hook (spec §3.9).

    atp, card = load_atp("checkpoints/atp-toy-144-frozen")
    reducer = ATPReducer(modules=atp)                    # or run.reducer("atp", checkpoint=path)
    with reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id) as st:
        vlm.model(**inputs)
    st.info[l]      # module at layer l: its `Decision` (thresholds, which tokens RP / SP kept, original indices)

At each module layer i_k the reducer keeps visual token n iff S_red_n > theta_r or S_sp_n > theta_s (the
hard form of Eq. 9-11), drops the rest from the hidden states and the KV cache of later layers, and keeps
the survivors' original positions (PP; the hook's `positions="renumber"` gives "w/o PP"). Text is never
pruned. The scores come from layer i_k - 1's normal forward (`Needs`): its instruction-to-visual softmax
probabilities (S_cross, Eq. 4) and its query/key states (S_self, Eq. 3, pre-mask logits, which no softmax
slice holds). Which tokens are still present is read from the context (`visual_orig`), so nothing is carried
from one `select` call to the next. Batches work: every sample gets its own thresholds and kept set.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from common.attention import AttentionSlice, CapturedAttention
from common.reduction import Needs, ReductionContext, Reducer, Selection
from common.registry import register
from papers.atp.module import ATPModules, load_atp, self_scores


@register("atp")
class ATPReducer(Reducer):
    """ATP-LLaVA's adaptive pruning (Ye et al. 2025, Eq. 3-11, hard form) with trained `ATPModules`.

    Args:
        modules: trained modules, or
        checkpoint: a folder written by `papers.atp.module.save_atp`.

    Each module's `papers.atp.module.Decision` goes into `Selection.info`, so the hook's
    `ReductionState.info[layer]` holds it after a prefill (figures read it there).
    """

    def __init__(self, modules: ATPModules | None = None, checkpoint: str | Path | None = None):
        if (modules is None) == (checkpoint is None):
            raise ValueError("modules/checkpoint: give exactly one of them")
        if checkpoint is not None:
            modules, _ = load_atp(checkpoint)
        if not isinstance(modules, ATPModules):
            raise TypeError(f"modules: expected papers.atp.module.ATPModules, got {type(modules).__name__}")
        self.atp = modules.eval()
        self.layers = tuple(modules.config.layers)
        self.needs = Needs(attention=AttentionSlice(queries="instruction", keys="visual", qk=True))

    def config(self) -> dict[str, Any]:
        """What defines the reducer's decisions (for prediction caches): the module config and a weight digest."""
        h = hashlib.sha256()
        for name, t in sorted(self.atp.state_dict().items()):
            h.update(name.encode() + b"\0" + t.detach().cpu().contiguous().numpy().tobytes())
        return {"atp": self.atp.config.to_dict(), "weights": h.hexdigest()}

    def present(self, ctx: ReductionContext) -> torch.Tensor:
        """[B, N0] bool: which original visual tokens are still present at this layer."""
        n0 = self.atp.config.n_visual
        out = torch.zeros(ctx.batch_size, n0, dtype=torch.bool, device=ctx.hidden.device)
        for b in range(ctx.batch_size):
            orig = ctx.visual_orig[b]
            if ctx.spans[b].n_visual != n0 or bool((orig < 0).any()):
                raise ValueError(f"input: ATP modules were built for one image of {n0} visual tokens; sample {b} "
                                 f"has {ctx.spans[b].n_visual} (multi-frame inputs and merged tokens are not "
                                 f"supported)")
            out[b, orig] = True
        return out

    @torch.no_grad()
    def select(self, ctx: ReductionContext) -> Selection:
        cfg = self.atp.config
        k = cfg.layers.index(ctx.layer)
        present = self.present(ctx)
        s_self, s_cross = self.scores(ctx, ctx.attention, ctx.layer_module.self_attn.scaling)
        self.atp.to(ctx.hidden.device)
        d = self.atp.decide(k, s_self, s_cross, present.float())
        keep = [torch.nonzero(d.keep[b][ctx.visual_orig[b]]).flatten() for b in range(ctx.batch_size)]
        return Selection(keep, info=d.detach())

    def scores(self, ctx: ReductionContext, att: CapturedAttention, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw S_self and S_cross [B, N0] float32 (0 where absent) from layer i_k - 1's captured slice.

        The captured keys are the visual tokens of layer i_k - 1's key sequence, which has the layout of the
        current layer (no module acts at i_k - 1), in `visual_index` order; in prefill the queries are that same
        sequence (`off` = cached keys before them, 0 unless a prefix was cached)."""
        n0 = self.atp.config.n_visual
        dev = ctx.hidden.device
        s_self = torch.zeros(ctx.batch_size, n0, device=dev)
        s_cross = torch.zeros_like(s_self)
        off = att.key.shape[2] - att.query.shape[2]
        for b in range(ctx.batch_size):
            vis = att.k_index[b][att.k_valid[b]]
            if not torch.equal(vis, ctx.visual_index[b]):
                raise RuntimeError(f"atp: the keys captured at layer {ctx.layer - 1} are not the visual tokens of "
                                   f"layer {ctx.layer} (sample {b})")
            orig = ctx.visual_orig[b]
            s_self[b, orig] = self_scores(att.query[b], att.key[b], vis - off, vis, scaling)
            probs = att.values[b][:, att.q_valid[b]][:, :, att.k_valid[b]]  # [H, T, N]
            if probs.shape[1]:  # no instruction token: S_cross = 0 (as in training)
                s_cross[b, orig] = probs.mean(1).mean(0)
        return s_self, s_cross
