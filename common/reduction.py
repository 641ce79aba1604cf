"""The token-reduction interface and the ONE hook that applies any reducer to an HF Llama-family decoder.

A `Reducer` says where it acts (`layers`: prune the hidden states *entering* those decoder layers; layer 0 =
before the first decoder layer), what it needs (`needs`: an attention slice from an earlier layer), and
returns a `Selection` (kept visual tokens per sample, optionally replacement values and merged tokens).
It never edits model code and never registers hooks itself.

`reduce_tokens(model, reducer)` is a context manager (ToMe's `apply_patch`, but reversible) that installs
forward pre-hooks on the model and on every decoder layer and removes every handle on exit::

    with reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id) as st:
        out = vlm.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    st.kept_counts          # {layer: [kept visual tokens of sample b, ...]}

What the hook does at a pruning layer during prefill (changed from FastV/llmc: nothing is resized in place,
no layer runs twice, batches are per sample):
1. gathers the surviving hidden states of every sample, drops padding, and LEFT-pads the shorter rows again
   (samples may keep different numbers of tokens);
2. keeps the ORIGINAL RoPE positions of the survivors (option `positions="renumber"` numbers them 0..n-1);
3. builds the attention mask of the new layout with transformers' own `create_causal_mask` (so it has the
   format of the model's attention implementation), and passes it to every later layer;
4. leaves the KV cache to do the rest: layers before the pruning layer cache every token, later ones only
   the survivors. During decoding each layer gets a mask matching its own cache length; positions of new
   tokens continue the original numbering (generate() derives them from the unpruned 2D mask).

Attention scores come from `common.attention`: the layer before a pruning layer computes only the slice
the reducer asked for, during the normal forward (no second pass).

Decoding: reducers may implement `on_decode_step` (mask-only mode, e.g. DyRate): at each decode step, at
each layer of `decode_layers`, they may hide visual tokens from the new token's query for this step, from
that layer on. Nothing is removed from the cache, so the choice can change at every step.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

import torch
from torch import nn

from common import attention as A
from common.hf_compat import cache_arg, call_arg, causal_mask
from common import spans as S
from common.schedule import Budget
from common.spans import TokenSpans


# ------------------------------------------------------------------------------------ the interface
@dataclass(frozen=True)
class Needs:
    """What a reducer asks the hook for.

    attention: the slice to capture at `Reducer.attention_layer(layer)` before each prefill pruning layer
        (computed inside that layer's normal forward; `AttentionSlice.qk` adds its query and key states).
    decode_attention: the slice to capture at decode steps before each layer of `Reducer.decode_layers`.
    embeddings: the decoder's input embeddings of the prompt (what enters layer 0, unpruned), for methods
        that score with them at a later layer (SparseVLM's raters).
    The hidden states entering the layer are always given. Everything a reducer needs arrives in its
    context, so a reducer never has to carry state from one `select` call to the next.
    """

    attention: A.AttentionSlice | None = None
    decode_attention: A.AttentionSlice | None = None
    embeddings: bool = False


@dataclass
class ReductionContext:
    """What a reducer sees at a pruning layer (prefill), all in the CURRENT (possibly already pruned) layout.

    layer: the decoder layer about to run.
    hidden: [B, L, D] hidden states entering it.
    kinds: [B, L] int8 token kinds (`common.spans`; merged tokens are VISUAL, padding PAD).
    position_ids: [B, L] RoPE positions.
    visual_index: per sample, [N_b] positions (in `hidden`) of its visual tokens, ascending.
    visual_orig: per sample, [N_b] original visual-token index (0..N-1 in the prompt) or -1 for merged tokens.
    attention: the captured slice (keys = the visual tokens, in `visual_index` order) or None.
    spans: per-sample spans of the prompt (original layout).
    layer_module: the decoder layer (e.g. to compute keys for a merging metric).
    input_ids: [B, L0] the prompt ids of this forward (original layout).
    embeddings: with `Needs.embeddings`, [B, L0, D] the decoder's input embeddings (original layout).
    """

    layer: int
    hidden: torch.Tensor
    kinds: torch.Tensor
    position_ids: torch.Tensor
    visual_index: list[torch.Tensor]
    visual_orig: list[torch.Tensor]
    attention: A.CapturedAttention | None
    spans: list[TokenSpans]
    layer_module: nn.Module | None = None
    input_ids: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def n_visual(self) -> list[int]:
        return [int(v.numel()) for v in self.visual_index]

    def visual_hidden(self, b: int) -> torch.Tensor:
        """[N_b, D] hidden states of sample b's visual tokens."""
        return self.hidden[b, self.visual_index[b]]


@dataclass
class DecodeContext:
    """What a reducer sees at a decode step (mask-only mode).

    step: 0 for the first generated token's forward after prefill... counted per decode forward.
    hidden: [B, q, D] hidden states of the new token(s) entering `layer`.
    visual_orig: per sample, original visual indices of the visual keys in this layer's cache (-1: merged).
    attention: the captured decode slice (keys = those visual tokens) or None.
    """

    layer: int
    step: int
    hidden: torch.Tensor
    visual_orig: list[torch.Tensor]
    attention: A.CapturedAttention | None
    spans: list[TokenSpans]


@dataclass
class Selection:
    """A reducer's answer at one layer; indices refer to `ctx.visual_index` (0..N_b-1 of each sample).

    keep: per sample, indices of the visual tokens to keep (any order; the hook keeps sequence order).
    values: optional per sample [len(keep_b), D] new hidden states for the kept tokens (e.g. ToMe's
        size-weighted averages), in the order of `keep_b` sorted ascending.
    merged: optional per sample [M_b, D] extra tokens, placed right after the sample's last visual token.
    merged_positions: optional per sample [M_b] RoPE positions of the merged tokens (default: the
        position of the sample's last visual token).
    info: anything the reducer wants to report about this decision (scores, thresholds, clusters); the
        hook stores it in `ReductionState.info[layer]` for figures and analysis. It never feeds back.
    """

    keep: list[torch.Tensor]
    values: list[torch.Tensor | None] | None = None
    merged: list[torch.Tensor] | None = None
    merged_positions: list[torch.Tensor] | None = None
    info: Any = None


@dataclass(frozen=True)
class BuildTarget:
    """What a reducer factory may know about the model it builds for (`Reducer.for_model`).

    n_layers / n_visual: decoder depth and visual tokens per image, so paper settings (layer 2 of 32, 192 of
    576) map to this model. The rest serves methods whose knob must be calibrated to a budget on data
    (SparseVLM): the model, its image token, a callable giving calibration batches (model inputs), and a
    folder plus a key (model and data identity) under which calibrations are cached on disk.
    """

    n_layers: int
    n_visual: int
    model: nn.Module | None = None
    image_token_id: int | None = None
    calibration_batches: Callable[[], Sequence[dict]] | None = None
    cache_dir: Path | None = None
    cache_key: Mapping[str, Any] | None = None


class Reducer:
    """Base class. Subclasses set `name`, `layers`, `needs` and implement `select` (and/or `on_decode_step`).

    `layers`: decoder layer indices where the reducer prunes the hidden states entering that layer.
    `decode_layers`: layers where `on_decode_step` is called at each decode step.
    `takes_budget`: the method keeps a `Budget` of visual tokens, so every budget-sweep table (toy methods,
        SparseVLM Table 1 ...) lists it; `for_model` builds it for a budget and a model.
    """

    name: str = "reducer"
    layers: tuple[int, ...] = ()
    decode_layers: tuple[int, ...] = ()
    needs: Needs = Needs()
    takes_budget: ClassVar[bool] = False

    @classmethod
    def for_model(cls, budget: Budget | None, target: BuildTarget, **options: Any) -> "Reducer":
        """The reducer at `budget` for the model `target` describes, its paper settings mapped to that model's
        depth (e.g. FastV's K = 2 of 32). `options` override the defaults. Subclasses that take a budget
        override this; the default passes `budget` (when given) and `options` to the constructor."""
        return cls(**options) if budget is None else cls(budget=budget, **options)

    def attention_layer(self, layer: int) -> int:
        """The layer whose attention scores the pruning at `layer` (default: the previous one)."""
        return layer - 1

    def select(self, ctx: ReductionContext) -> Selection:
        raise NotImplementedError

    def on_decode_step(self, ctx: DecodeContext) -> list[torch.Tensor] | None:
        """Per sample, indices (into `ctx.visual_orig`) of visual tokens to hide at this step, or None."""
        return None

    def validate(self, n_layers: int) -> None:
        """Raise ValueError for layers out of range for a decoder with `n_layers` layers."""
        for l in list(self.layers) + list(self.decode_layers):
            if not 0 <= int(l) < n_layers:
                raise ValueError(f"layers: layer {l} out of range for a decoder with {n_layers} layers")
        if self.needs.attention is not None:
            for l in self.layers:
                if not 0 <= self.attention_layer(l) < n_layers:
                    raise ValueError(f"layers: pruning at layer {l} needs attention of layer "
                                     f"{self.attention_layer(l)}, which does not exist (layer 0 is before the LLM)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, layers={tuple(self.layers)})"


class FixedKeep(Reducer):
    """Replays given kept visual indices (e.g. `state.kept` of an earlier run): pruning without scoring.

    `keep[layer][b]` are ORIGINAL visual indices (0..N-1) of sample b to keep at `layer` (no merged tokens).
    Used to compare cached decoding with cache-free recomputation under the same pruning.
    """

    name = "fixed"

    def __init__(self, keep: dict[int, list[torch.Tensor]]):
        self.keep = {int(l): [torch.as_tensor(k).long() for k in ks] for l, ks in keep.items()}
        self.layers = tuple(sorted(self.keep))

    def select(self, ctx: ReductionContext) -> Selection:
        out = []
        for b in range(ctx.batch_size):
            want = self.keep[ctx.layer][b].to(ctx.visual_orig[b].device)
            out.append(torch.nonzero(torch.isin(ctx.visual_orig[b], want)).flatten())
        return Selection(out)


# --------------------------------------------------------------------------------------- the state
@dataclass
class _Segment:
    """The token layout shared by a run of layers (from `start` until the next pruning layer)."""

    start: int
    kinds: torch.Tensor  # [B, Ls] int8
    layout: torch.Tensor  # [B, Ls] original positions (-1: merged or padding)
    valid: torch.Tensor  # [B, Ls] bool (2D attention mask of the segment's prompt part)
    position_ids: torch.Tensor  # [B, Ls]
    pos_shift: torch.Tensor  # [B] original position - segment position of new tokens (0 unless renumbered)
    mask: object = None  # prefill 4D mask (or None = causal)
    position_embeddings: tuple | None = None


@dataclass
class ReductionState:
    """Everything the hook knows about the current input; reset at each prefill.

    Public, read after (or during) a run:
        spans: per-sample `TokenSpans` of the prompt.
        kept: {layer: per sample, ORIGINAL visual indices kept at that layer (-1 = merged token)}.
        kept_counts: {layer: per sample, number of visual tokens (merged included) entering that layer}.
        layout: [B, L'] original position of each output position of the last prefill (-1: merged/padding).
        decode_hidden: per decode step, {layer: per sample, original visual indices hidden at that step}.
        info: {layer: the reducer's `Selection.info` at that layer} of the last prefill.
        prefills / decode_steps: counters.
    """

    n_layers: int
    n_visual: list[int] = field(default_factory=list)
    spans: list[TokenSpans] = field(default_factory=list)
    kept: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    kept_counts: dict[int, list[int]] = field(default_factory=dict)
    layout: torch.Tensor | None = None
    decode_hidden: list[dict[int, list[torch.Tensor]]] = field(default_factory=list)
    info: dict[int, Any] = field(default_factory=dict)
    prefills: int = 0
    decode_steps: int = 0
    # internal, per input
    _segments: list[_Segment] = field(default_factory=list)
    _prompt_ids: torch.Tensor | None = None
    _prompt_mask: torch.Tensor | None = None
    _mode: str = "idle"
    _total_len: int = 0  # tokens seen so far in the unpruned numbering
    _full_mask: torch.Tensor | None = None  # 2D mask of the current forward (unpruned numbering)
    _decode_masks: dict = field(default_factory=dict)
    _hide: torch.Tensor | None = None  # [B, L_prompt] bool: original positions hidden this decode step

    def visual_tokens_per_layer(self) -> torch.Tensor:
        """[n_layers, B] visual tokens (merged included) each layer processes at prefill."""
        out = torch.tensor(self.n_visual, dtype=torch.float32).repeat(self.n_layers, 1)
        for l in sorted(self.kept_counts):
            out[l:] = torch.tensor(self.kept_counts[l], dtype=torch.float32)
        return out

    def average_visual_tokens(self) -> torch.Tensor:
        """[B] visual tokens averaged over decoder layers (SparseVLM's "equivalent tokens")."""
        return self.visual_tokens_per_layer().mean(0)

    def _segment_of(self, layer: int) -> _Segment | None:
        seg = None
        for s in self._segments:
            if s.start <= layer:
                seg = s
        return seg


# ---------------------------------------------------------------------------------------- the hook

def _validate_selection(sel: Selection, ctx: ReductionContext, reducer: Reducer) -> list[torch.Tensor]:
    if not isinstance(sel, Selection):
        raise TypeError(f"{reducer.name}.select must return a Selection, got {type(sel).__name__}")
    if len(sel.keep) != ctx.batch_size:
        raise ValueError(f"{reducer.name}: Selection.keep has {len(sel.keep)} rows for a batch of {ctx.batch_size}")
    keeps = []
    for b, k in enumerate(sel.keep):
        k = torch.as_tensor(k, device=ctx.hidden.device).long().flatten()
        n = ctx.n_visual[b]
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= n):
            raise ValueError(f"{reducer.name}: kept index out of range [0, {n}) for sample {b}")
        ks = torch.sort(k).values
        if ks.numel() > 1 and bool((ks[1:] == ks[:-1]).any()):
            raise ValueError(f"{reducer.name}: duplicate kept indices for sample {b}")
        if sel.values is not None and sel.values[b] is not None:
            order = torch.argsort(k)
            sel.values[b] = sel.values[b][order]
        keeps.append(ks)
    return keeps


class _Hook:
    """Holds the reducer, the state and the capture; its methods are the registered pre-hooks."""

    def __init__(self, model, reducer: Reducer, image_token_id: int | None, positions: str,
                 tokens_per_frame: int | None, force_gather: bool):
        self.model = model
        self.dec = A.decoder_of(model)
        self.n_layers = len(self.dec.layers)
        self.reducer = reducer
        self.image_token_id = image_token_id
        self.positions = positions
        self.tokens_per_frame = tokens_per_frame
        self.force_gather = force_gather
        self.state = ReductionState(self.n_layers)
        self.capture = A.AttentionCapture({})
        self.prune_layers = set(int(l) for l in reducer.layers)
        self.decode_layers = set(int(l) for l in reducer.decode_layers)
        self._cache = None
        self._embeddings: torch.Tensor | None = None

    # ---- top-level: one call per forward; decides prefill vs decode
    def model_pre_hook(self, module, args, kwargs):
        st = self.state
        ids = call_arg(args, kwargs, "input_ids", 0)
        am = kwargs.get("attention_mask")
        pkv = cache_arg(kwargs)
        past = pkv.get_seq_length() if pkv is not None else 0
        if ids is None:
            raise ValueError("input_ids: reduce_tokens needs input_ids to find the visual tokens "
                             "(inputs_embeds alone do not say which tokens are visual)")
        self._cache = pkv
        if past == 0:
            self._ids = ids
            self._begin_prefill(ids, am)
            return None
        if ids.shape[1] != 1 and st._segments:
            raise NotImplementedError("reduce_tokens: multi-token steps on a pruned cache are not supported")
        st._mode = "decode"
        st.decode_steps += 1
        q = ids.shape[1]
        st._full_mask = am if (am is None or am.ndim == 2) else None
        st._decode_masks = {}
        st._hide = None
        st.decode_hidden.append({})
        self.capture.reset()
        self.capture.layers = {}
        if self.reducer.needs.decode_attention is not None:
            self.capture.layers = {self.reducer.attention_layer(l): self.reducer.needs.decode_attention
                                   for l in self.decode_layers if self.reducer.attention_layer(l) >= 0}
        new_kwargs = None
        if kwargs.get("position_ids") is None:  # HF's default numbering, in the UNPRUNED cache length
            new_kwargs = dict(kwargs)
            new_kwargs["position_ids"] = (torch.arange(q, device=ids.device) + st._total_len)[None]
        st._total_len += q
        return (args, new_kwargs) if new_kwargs is not None else None

    def _begin_prefill(self, ids, am):
        st = self.state
        B, L = ids.shape
        prompt_len = None
        if (st._prompt_ids is not None and st._prompt_ids.shape[0] == B and L > st._prompt_ids.shape[1]
                and torch.equal(ids[:, : st._prompt_ids.shape[1]], st._prompt_ids)):
            prompt_len = st._prompt_ids.shape[1]  # cache-free generation: the prompt plus generated tokens
        else:
            st._prompt_ids = ids.detach().clone()
        if self.image_token_id is None:
            raise ValueError("image_token_id: reduce_tokens needs it (the model config has none)")
        spans = S.compute_spans(ids, am, self.image_token_id, prompt_length=prompt_len,
                                tokens_per_frame=self.tokens_per_frame)
        st.spans = spans
        st.n_visual = [s.n_visual for s in spans]
        st.kept, st.kept_counts, st.decode_hidden, st.info = {}, {}, [], {}
        self._embeddings = None
        st._segments = []
        st._mode = "prefill"
        st.prefills += 1
        st.decode_steps = 0
        st._total_len = L
        dev = ids.device
        valid = torch.ones(B, L, dtype=torch.bool, device=dev) if am is None else am.bool()
        st._prompt_mask = valid
        self._base_kinds = S.kinds_of(spans, L).to(dev)
        self._base_valid = valid
        self._base_layout = torch.arange(L, device=dev).expand(B, L).masked_fill(~valid, -1)
        st.layout = self._base_layout
        self.capture.reset()
        self.capture.layers = {}
        if self.reducer.needs.attention is not None:
            self.capture.layers = {self.reducer.attention_layer(l): self.reducer.needs.attention
                                   for l in self.prune_layers}

    # ---- every decoder layer
    def layer_pre_hook(self, layer_idx: int):
        def hook(module, args, kwargs):
            st = self.state
            if st._mode == "prefill":
                return self._prefill_layer(layer_idx, module, args, kwargs)
            if st._mode == "decode":
                return self._decode_layer(layer_idx, args, kwargs)
            return None

        return hook

    def _view(self, seg: _Segment | None):
        """(kinds, layout, valid) of a segment's prompt part; None = the unpruned prompt."""
        if seg is None:
            return self._base_kinds, self._base_layout, self._base_valid
        return seg.kinds, seg.layout, seg.valid

    def _current(self):
        return self._view(self.state._segments[-1] if self.state._segments else None)

    def _prefill_layer(self, l, module, args, kwargs):
        st = self.state
        hidden = call_arg(args, kwargs, "hidden_states", 0)
        if l == 0:  # the original position the first generated token will get (last prompt position + 1)
            pos0 = kwargs.get("position_ids")
            pos0 = torch.arange(hidden.shape[1], device=hidden.device)[None] if pos0 is None else pos0
            self._next_pos = pos0.expand(hidden.shape[0], -1)[:, -1] + 1
            if self.reducer.needs.embeddings:
                self._embeddings = hidden
        new_hidden = self._prune(l, module, hidden, kwargs) if l in self.prune_layers else None
        if l in self.capture.layers:
            self.capture.set_kinds(l, self._current()[0])
        seg = st._segment_of(l)
        if seg is None:
            return None
        new_kwargs = dict(kwargs)
        new_kwargs.pop("hidden_states", None)
        new_kwargs.update(attention_mask=seg.mask, position_ids=seg.position_ids,
                          position_embeddings=seg.position_embeddings)
        h = new_hidden if new_hidden is not None else hidden
        return (h,) + tuple(args[1:]), new_kwargs

    def _prune(self, l, module, hidden, kwargs) -> torch.Tensor | None:
        """Ask the reducer, record what it kept, and (unless everything is kept) open a new segment;
        returns the pruned hidden states or None."""
        st = self.state
        kinds, layout, valid = self._current()
        B, L, D = hidden.shape
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = torch.arange(L, device=hidden.device)[None]
        seg_prev = st._segment_of(l)
        if seg_prev is not None:
            pos = seg_prev.position_ids
        pos = pos.expand(B, L)
        vis_index = [torch.nonzero(kinds[b] == S.VISUAL).flatten() for b in range(B)]
        vis_orig = []
        for b in range(B):
            orig = layout[b, vis_index[b]]
            sp = st.spans[b].visual_positions().to(orig.device)
            vo = torch.searchsorted(sp, orig.clamp(min=0))
            vis_orig.append(torch.where(orig >= 0, vo, torch.full_like(vo, -1)))
        att = None
        if self.reducer.needs.attention is not None:
            att = self.capture.results.get(self.reducer.attention_layer(l))
            if att is None:
                raise RuntimeError(f"{self.reducer.name}: no attention captured at layer "
                                   f"{self.reducer.attention_layer(l)} for pruning layer {l}")
        ctx = ReductionContext(l, hidden, kinds, pos, vis_index, vis_orig, att, st.spans, module, self._ids,
                               self._embeddings)
        sel = self.reducer.select(ctx)
        keeps = _validate_selection(sel, ctx, self.reducer)
        if sel.info is not None:
            st.info[l] = sel.info
        n_merged = [0] * B if sel.merged is None else [int(m.shape[0]) for m in sel.merged]
        st.kept[l] = [torch.cat([vis_orig[b][keeps[b]], torch.full((n_merged[b],), -1, dtype=torch.long,
                                                                       device=hidden.device)]) for b in range(B)]
        st.kept_counts[l] = [int(keeps[b].numel()) + n_merged[b] for b in range(B)]
        changed = any(keeps[b].numel() != ctx.n_visual[b] for b in range(B)) or sel.values is not None \
            or any(n_merged)
        if not changed and not self.force_gather:
            return None  # fast path: everything kept, nothing merged -> bit-exact with the unhooked model

        # ---- per-sample source positions of the new layout (-1 - m: merged token m)
        rows = []
        for b in range(B):
            drop = torch.zeros(L, dtype=torch.bool, device=hidden.device)
            drop[vis_index[b]] = True
            drop[vis_index[b][keeps[b]]] = False
            keep_pos = torch.nonzero(valid[b] & ~drop).flatten()
            if n_merged[b]:
                anchor = int(vis_index[b].max()) if vis_index[b].numel() else int(keep_pos[0]) - 1
                cut = int((keep_pos <= anchor).sum())
                mer = -1 - torch.arange(n_merged[b], device=hidden.device)
                keep_pos = torch.cat([keep_pos[:cut], mer, keep_pos[cut:]])
            rows.append(keep_pos)
        Ln = max(int(r.numel()) for r in rows)
        src = torch.zeros(B, Ln, dtype=torch.long, device=hidden.device)
        is_pad = torch.ones(B, Ln, dtype=torch.bool, device=hidden.device)
        for b, r in enumerate(rows):
            src[b, Ln - r.numel():] = r
            is_pad[b, Ln - r.numel():] = False
        is_mer = (src < 0) & ~is_pad
        src_c = src.clamp(min=0)
        new_h = hidden.gather(1, src_c[..., None].expand(B, Ln, D))
        new_kinds = kinds.gather(1, src_c).masked_fill(is_mer, S.VISUAL).masked_fill(is_pad, S.PAD)
        new_layout = layout.gather(1, src_c).masked_fill(is_mer | is_pad, -1)
        new_pos = pos.gather(1, src_c)
        for b in range(B):
            if sel.values is not None and sel.values[b] is not None:
                tgt = vis_index[b][keeps[b]]
                where = torch.nonzero(torch.isin(src[b], tgt) & ~is_pad[b] & ~is_mer[b]).flatten()
                new_h[b, where] = sel.values[b].to(new_h.dtype)
            if n_merged[b]:
                where = torch.nonzero(is_mer[b]).flatten()
                m_idx = (-1 - src[b, where])
                new_h[b, where] = sel.merged[b][m_idx].to(new_h.dtype)
                if sel.merged_positions is not None and sel.merged_positions[b] is not None:
                    mp = torch.as_tensor(sel.merged_positions[b], device=pos.device).long()[m_idx]
                else:
                    mp = pos[b, vis_index[b].max()].expand(where.numel()) if vis_index[b].numel() \
                        else new_pos[b, where]
                new_pos[b, where] = mp
        new_pos = new_pos.masked_fill(is_pad, 1)
        new_valid = ~is_pad
        shift = torch.zeros(B, dtype=torch.long, device=hidden.device)
        if self.positions == "renumber":
            # new tokens get position n_b + t instead of (the original next position) + t
            shift = self._next_pos - new_valid.long().sum(1)
            new_pos = (new_valid.long().cumsum(1) - 1).clamp(min=0).masked_fill(is_pad, 1)
        cache = self._cache
        mask = causal_mask(self.dec.config, new_h, new_valid, cache, layer_idx=l)
        pe = self.dec.rotary_emb(new_h, position_ids=new_pos)
        seg = _Segment(l, new_kinds, new_layout, new_valid, new_pos, shift, mask, pe)
        st._segments.append(seg)
        st.layout = new_layout
        return new_h

    def _decode_layer(self, l, args, kwargs):
        st = self.state
        hidden = call_arg(args, kwargs, "hidden_states", 0)
        q = hidden.shape[1]
        seg = st._segment_of(l)
        kinds = self._view(seg)[0]
        if l in self.capture.layers or l in self.decode_layers:
            gen = st._total_len - st._prompt_mask.shape[1]
            full_kinds = torch.cat([kinds, torch.full((kinds.shape[0], gen), S.RESPONSE, dtype=kinds.dtype,
                                                      device=kinds.device)], 1)
            if l in self.capture.layers:
                self.capture.set_kinds(l, full_kinds)
        if l in self.decode_layers:
            self._decode_select(l, hidden, seg)
        if seg is None and st._hide is None:
            return None
        # one mask per segment and step; with hidden tokens the mask may change at every layer
        mask = st._decode_masks.get(id(seg)) if st._hide is None else None
        if mask is None:
            mask = self._decode_mask(l, seg, q, hidden)
            if st._hide is None:
                st._decode_masks[id(seg)] = mask
        new_kwargs = dict(kwargs)
        new_kwargs.pop("hidden_states", None)
        new_kwargs["attention_mask"] = mask
        if seg is not None and bool((seg.pos_shift != 0).any()):
            pos = kwargs.get("position_ids")
            pos = pos.expand(hidden.shape[0], q) - seg.pos_shift[:, None]
            new_kwargs["position_ids"] = pos
            new_kwargs["position_embeddings"] = self.dec.rotary_emb(hidden, position_ids=pos)
        return (hidden,) + tuple(args[1:]), new_kwargs

    def _decode_mask(self, l, seg, q, hidden):
        st = self.state
        _, layout, valid = self._view(seg)
        B = valid.shape[0]
        cache_len = self._cache.layers[l].get_seq_length() if self._cache is not None else 0
        gen = cache_len + q - valid.shape[1]
        full = st._full_mask
        if full is not None and full.shape[1] >= gen:
            gen_mask = full[:, full.shape[1] - gen:].bool()
        else:
            gen_mask = torch.ones(B, gen, dtype=torch.bool, device=valid.device)
        prompt = valid
        if st._hide is not None:
            hidden_cols = st._hide.gather(1, layout.clamp(min=0)) & (layout >= 0)
            prompt = prompt & ~hidden_cols
        mask2d = torch.cat([prompt, gen_mask], 1)
        return causal_mask(self.dec.config, hidden, mask2d, self._cache, layer_idx=l)

    def _decode_select(self, l, hidden, seg):
        st = self.state
        kinds, layout, _ = self._view(seg)
        B = hidden.shape[0]
        vis_orig, vis_pos = [], []
        for b in range(B):
            vi = torch.nonzero(kinds[b] == S.VISUAL).flatten()
            orig = layout[b, vi]
            sp = st.spans[b].visual_positions().to(orig.device)
            vo = torch.searchsorted(sp, orig.clamp(min=0))
            vis_orig.append(torch.where(orig >= 0, vo, torch.full_like(vo, -1)))
            vis_pos.append(orig)
        att = None
        if self.reducer.needs.decode_attention is not None:
            att = self.capture.results.get(self.reducer.attention_layer(l))
        ctx = DecodeContext(l, st.decode_steps - 1, hidden, vis_orig, att, st.spans)
        hide = self.reducer.on_decode_step(ctx)
        if hide is None:
            return
        if st._hide is None:
            st._hide = torch.zeros_like(st._prompt_mask)
        rec = []
        for b in range(B):
            h = torch.as_tensor(hide[b], device=hidden.device).long()
            if h.numel() and (int(h.min()) < 0 or int(h.max()) >= vis_pos[b].numel()):
                raise ValueError(f"{self.reducer.name}.on_decode_step: hidden index out of range for sample {b}")
            p = vis_pos[b][h]
            st._hide[b, p[p >= 0]] = True
            rec.append(vis_orig[b][h])
        st.decode_hidden[-1][l] = rec


@contextmanager
def reduce_tokens(model: nn.Module, reducer: Reducer | None, *, image_token_id: int | None = None,
                  positions: Literal["original", "renumber"] = "original", tokens_per_frame: int | None = None,
                  _force_gather: bool = False):
    """Apply `reducer` to every forward of `model` inside the context; yields the `ReductionState`.

    Args:
        model: an HF model with a Llama-family decoder (`LlavaForConditionalGeneration`, `LlamaForCausalLM`,
            `LlamaModel`), attention implementation "sdpa" or "eager".
        reducer: the method, or None for a no-op (the model runs untouched).
        image_token_id: placeholder id of visual tokens (default: `model.config.image_token_id`).
        positions: "original" keeps the survivors' RoPE positions; "renumber" numbers them 0..n-1 (and new
            tokens continue from n).
        tokens_per_frame: split runs of image tokens into frames of this size (see `common.spans`).

    On exit every hook handle is removed and the attention implementation restored, even after an error.
    """
    dec = A.decoder_of(model)
    state = ReductionState(len(dec.layers))
    if reducer is None:
        yield state
        return
    if not isinstance(reducer, Reducer):
        raise TypeError(f"reducer: expected a common.reduction.Reducer, got {type(reducer).__name__}")
    if positions not in ("original", "renumber"):
        raise ValueError(f"positions: expected 'original' or 'renumber', got {positions!r}")
    reducer.validate(len(dec.layers))
    if image_token_id is None:
        image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is None:
        raise ValueError("image_token_id: not given and the model config has none")
    hook = _Hook(model, reducer, image_token_id, positions, tokens_per_frame, _force_gather)
    hook.state = state
    handles = []
    try:
        with ExitStack() as stack:
            handles.append(model.register_forward_pre_hook(hook.model_pre_hook, with_kwargs=True))
            for i, layer in enumerate(dec.layers):
                handles.append(layer.register_forward_pre_hook(hook.layer_pre_hook(i), with_kwargs=True))
            if reducer.needs.attention is not None or reducer.needs.decode_attention is not None:
                stack.enter_context(A.capture_implementation(model))
                stack.enter_context(A.active(hook.capture))
            yield state
    finally:
        for h in handles:
            h.remove()
        state._mode = "idle"
