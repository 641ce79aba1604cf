"""Capture the attention a method needs from chosen decoder layers, without forking transformers.

How (transformers' AttentionInterface, DESIGN.md §4):
- Two attention functions are registered by name (`tokenprune_sdpa`, `tokenprune_eager`) together with the
  mask builders of their base implementation (`sdpa_mask`, `eager_mask`), so masks are built exactly as for
  plain sdpa / eager (`common.attention_registry`, shared with `common.soft_mask`). While a capture is set up on a model, its decoder config points at the matching name;
  on exit the previous name is restored.
- The function delegates every call to the base implementation. Only in *scoring layers* and only while a
  capture context is active does it also compute the requested SLICE of attention probabilities: the
  selected query rows times all keys (the softmax needs the whole row as its normaliser), keeping the
  requested key columns. The full ``L x L`` matrix is never materialised for a slice (query rows are
  processed in chunks); a `full=True` spec gives eager probabilities for analysis plots.
- Nothing runs twice: the slice is computed from the query/key states of the normal forward pass.

Shapes: B batch, H query heads, Q selected queries, K selected keys, Lq / Lk query / key lengths.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Literal

import torch
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv

from common import spans as S
from common.attention_registry import register_wrapped_attention
from common.hf_compat import cache_arg, call_arg

QUERY_CHUNK = 256  # query rows per chunk when a slice has many queries (bounds memory at 256 x Lk per head)


# ----------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class AttentionSlice:
    """Which part of a layer's attention to keep.

    queries: "last" (the last position, e.g. FastV), "instruction", "text" (every non-visual token),
        or "all" (every non-pad token).
    keys: "visual" (the visual tokens present at that layer) or "all" (every non-pad key).
    pre_softmax: keep the scaled logits ``q.k / sqrt(d) + mask`` instead of probabilities.
    full: ignore queries/keys and keep the full eager probability matrix [B, H, Lq, Lk] (analysis only).
    qk: also keep the layer's query and key states (after RoPE, keys repeated for grouped-query attention),
        so a method that scores with its own formula (ATP's S_self) reads them instead of recomputing the
        projections.
    """

    queries: Literal["last", "instruction", "text", "all"] = "last"
    keys: Literal["visual", "all"] = "visual"
    pre_softmax: bool = False
    full: bool = False
    qk: bool = False

    def __post_init__(self):
        if self.queries not in ("last", "instruction", "text", "all"):
            raise ValueError(f"queries: unknown query selection {self.queries!r}")
        if self.keys not in ("visual", "all"):
            raise ValueError(f"keys: unknown key selection {self.keys!r}")


@dataclass
class CapturedAttention:
    """One layer's captured slice.

    values: [B, H, Q, K] float32 probabilities (or logits); entries of invalid (padded) rows/columns are 0.
    q_index / k_index: [B, Q] / [B, K] positions in that layer's query / key sequence (pads: 0).
    q_valid / k_valid: [B, Q] / [B, K] bool.
    query / key: with `AttentionSlice.qk`, the layer's states [B, H, Lq, d] and [B, H, Lk, d] (after RoPE,
        keys repeated to H heads), in the model's dtype; else None.
    """

    values: torch.Tensor
    q_index: torch.Tensor
    k_index: torch.Tensor
    q_valid: torch.Tensor
    k_valid: torch.Tensor
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None

    def head_mean(self) -> torch.Tensor:
        """[B, Q, K] mean over heads."""
        return self.values.mean(1)


def _pad_index(rows: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(int(r.numel()) for r in rows))
    idx = torch.zeros(len(rows), n, dtype=torch.long)
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        idx[b, : r.numel()] = r
        valid[b, : r.numel()] = True
    return idx.to(device), valid.to(device)


def select_indices(kinds: torch.Tensor, spec: AttentionSlice, q_length: int):
    """Query/key positions of `spec` for sequences with token kinds `kinds` [B, Lk] (see `common.spans`).

    The queries are the last `q_length` positions of the key sequence (keys = cache + current tokens).
    Returns (q_index [B, Q], q_valid, k_index [B, K], k_valid), q_index relative to the current queries.
    """
    B, Lk = kinds.shape
    off = Lk - q_length
    qk = kinds[:, off:].cpu()
    q_rows, k_rows = [], []
    for b in range(B):
        if spec.queries == "last":
            q = torch.tensor([q_length - 1])
        elif spec.queries == "instruction":
            q = torch.nonzero(qk[b] == S.INSTRUCTION).flatten()
        elif spec.queries == "text":
            q = torch.nonzero((qk[b] != S.VISUAL) & (qk[b] != S.PAD)).flatten()
        else:
            q = torch.nonzero(qk[b] != S.PAD).flatten()
        q_rows.append(q)
        kb = kinds[b].cpu()
        k_rows.append(torch.nonzero(kb == S.VISUAL if spec.keys == "visual" else kb != S.PAD).flatten())
    q_index, q_valid = _pad_index(q_rows, kinds.device)
    k_index, k_valid = _pad_index(k_rows, kinds.device)
    return q_index, q_valid, k_index, k_valid


# ------------------------------------------------------------------------------------------- collector
@dataclass
class AttentionCapture:
    """Per-context collector. `layers` maps a decoder layer index to the slice it should keep.

    Before a scoring layer runs, its owner calls `set_kinds(layer, kinds)` with the token kinds of that
    layer's key sequence (the reduction hook does this in pruned coordinates). Results land in `results`.
    """

    layers: dict[int, AttentionSlice]
    kinds: dict[int, torch.Tensor] = field(default_factory=dict)
    results: dict[int, CapturedAttention | torch.Tensor] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)  # scoring calls per layer (tests: nothing runs twice)

    def set_kinds(self, layer: int, kinds: torch.Tensor) -> None:
        self.kinds[layer] = kinds

    def reset(self) -> None:
        self.kinds.clear()
        self.results.clear()


_ACTIVE: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar("tokenprune_capture", default=None)


@contextmanager
def active(capture: AttentionCapture):
    """Make `capture` the active collector for this context; always reset in `finally`."""
    token = _ACTIVE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE.reset(token)


# ------------------------------------------------------------------------------------------- the maths
def _additive_mask(attention_mask, B: int, Lq: int, Lk: int, device) -> torch.Tensor:
    """[B, 1, Lq, Lk] float32 additive mask (0 / -inf) from whatever the layer received."""
    if attention_mask is None:  # sdpa's is_causal path: lower-right aligned causal mask
        q = torch.arange(Lq, device=device)[:, None] + (Lk - Lq)
        allowed = (torch.arange(Lk, device=device)[None, :] <= q)[None, None].expand(B, 1, Lq, Lk)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask.expand(B, 1, Lq, Lk)
    else:
        return attention_mask.float().clamp(min=-1e30).expand(B, 1, Lq, Lk)
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def attention_slice(query, key, attention_mask, scaling: float, n_rep: int, q_index, q_valid, k_index, k_valid,
                    pre_softmax: bool = False) -> torch.Tensor:
    """Rows `q_index` of softmax(q k^T * scaling + mask), columns `k_index`: [B, H, Q, K] float32.

    query [B, H, Lq, d], key [B, Hkv, Lk, d] (after RoPE and the cache update). Query rows are processed in
    chunks of `QUERY_CHUNK`, so memory is O(chunk x Lk) per head, never O(Lq x Lk).
    """
    B, H, Lq, d = query.shape
    key = repeat_kv(key, n_rep).float()
    Lk = key.shape[2]
    mask = _additive_mask(attention_mask, B, Lq, Lk, query.device)  # [B, 1, Lq, Lk] (expanded view)
    out = []
    for c in range(0, q_index.shape[1], QUERY_CHUNK):
        qi = q_index[:, c:c + QUERY_CHUNK]  # [B, q]
        q = query.float().gather(2, qi[:, None, :, None].expand(B, H, qi.shape[1], d))
        m = mask.gather(2, qi[:, None, :, None].expand(B, 1, qi.shape[1], Lk))
        s = torch.matmul(q, key.transpose(2, 3)) * scaling + m  # [B, H, q, Lk]
        if not pre_softmax:
            s = torch.softmax(s, dim=-1)
        out.append(s.gather(3, k_index[:, None, None, :].expand(B, H, qi.shape[1], k_index.shape[1])))
    vals = torch.cat(out, dim=2)
    keep = (q_valid[:, None, :, None] & k_valid[:, None, None, :])
    return torch.where(keep, vals, torch.zeros((), device=vals.device))


def _make_forward(base):
    def forward(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
        cap = _ACTIVE.get()
        layer = getattr(module, "layer_idx", None)
        if cap is None or layer not in cap.layers:
            return base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        spec = cap.layers[layer]
        scaling = module.head_dim ** -0.5 if scaling is None else scaling
        cap.calls[layer] = cap.calls.get(layer, 0) + 1
        if spec.full:  # eager maths, probabilities kept: for analysis of small inputs only
            B, H, Lq, _ = query.shape
            k = repeat_kv(key, module.num_key_value_groups)
            v = repeat_kv(value, module.num_key_value_groups)
            logits = torch.matmul(query, k.transpose(2, 3)) * scaling
            logits = logits + _additive_mask(attention_mask, B, Lq, k.shape[2], query.device).to(logits.dtype)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
            # rows with no visible key (left padding) output 0, as torch's sdpa does
            probs = probs * (logits.amax(-1, keepdim=True) > torch.finfo(logits.dtype).min / 2)
            cap.results[layer] = logits.float() if spec.pre_softmax else probs.float()
            return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs
        out = base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        kinds = cap.kinds.get(layer)
        if kinds is None:
            raise RuntimeError(f"attention capture: no token kinds were set for scoring layer {layer}")
        q_index, q_valid, k_index, k_valid = select_indices(kinds, spec, query.shape[2])
        vals = attention_slice(query, key, attention_mask, scaling, module.num_key_value_groups,
                               q_index, q_valid, k_index, k_valid, spec.pre_softmax)
        qk = (query.detach(), repeat_kv(key, module.num_key_value_groups).detach()) if spec.qk else (None, None)
        cap.results[layer] = CapturedAttention(vals, q_index, k_index, q_valid, k_valid, *qk)
        return out

    return forward


_BASE_OF = register_wrapped_attention("tokenprune", _make_forward)  # {"sdpa": "tokenprune_sdpa", ...}
SDPA_NAME, EAGER_NAME = _BASE_OF["sdpa"], _BASE_OF["eager"]


# ------------------------------------------------------------------------------------ model plumbing
def decoder_of(model: nn.Module) -> nn.Module:
    """The Llama-family decoder (`LlamaModel`-like: `.layers`, `.rotary_emb`) inside an HF model."""
    from transformers import LlamaModel  # local: keep import cheap
    if isinstance(model, LlamaModel):
        return model
    for cand in (getattr(getattr(model, "model", None), "language_model", None), getattr(model, "model", None),
                 getattr(model, "language_model", None)):
        if cand is not None and hasattr(cand, "layers") and hasattr(cand, "rotary_emb"):
            return cand
    raise TypeError(f"model: cannot find a Llama-family decoder inside {type(model).__name__}")


@contextmanager
def capture_implementation(model: nn.Module):
    """Point the decoder's attention at the capture-aware implementation; restore the previous one on exit."""
    dec = decoder_of(model)
    configs = {id(l.self_attn.config): l.self_attn.config for l in dec.layers}
    configs[id(dec.config)] = dec.config
    saved = {k: c._attn_implementation for k, c in configs.items()}
    for k, c in configs.items():
        if saved[k] not in _BASE_OF and saved[k] not in _BASE_OF.values():
            raise NotImplementedError(
                f"attention capture supports attn_implementation 'sdpa' or 'eager', not {saved[k]!r}")
    try:
        for k, c in configs.items():
            c._attn_implementation = _BASE_OF.get(saved[k], saved[k])
        yield dec
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]



@contextmanager
def capture_attention(model: nn.Module, layers: Iterable[int] | dict[int, AttentionSlice],
                      spec: AttentionSlice = AttentionSlice(), *, image_token_id: int | None = None):
    """Collect attention slices of `layers` during the forwards run inside the context (no pruning).

    Usage::

        with capture_attention(model, [1], AttentionSlice("instruction", "visual")) as cap:
            model(**inputs)
        probs = cap.results[1].values      # [B, H, Q, K]

    The token kinds are read from each forward's `input_ids` (prefill) with `image_token_id`
    (default: the model config's). Capture and the switched attention implementation end with the context.
    """
    dec = decoder_of(model)
    n = len(dec.layers)
    layer_specs = dict(layers) if isinstance(layers, dict) else {int(l): spec for l in layers}
    for l in layer_specs:
        if not 0 <= l < n:
            raise ValueError(f"layers: layer {l} out of range for a decoder with {n} layers")
    if image_token_id is None:
        image_token_id = getattr(model.config, "image_token_id", None)
    cap = AttentionCapture(layer_specs)

    def pre_hook(module, args, kwargs):
        ids = call_arg(args, kwargs, "input_ids", 0)
        if ids is None:
            return None
        am = kwargs.get("attention_mask")
        if any(not s.full for s in layer_specs.values()):
            if image_token_id is None:
                raise ValueError("image_token_id: needed to find visual tokens (model config has none)")
            pkv = cache_arg(kwargs)
            if pkv is not None and pkv.get_seq_length() > 0:  # decode: keys = cached tokens + new ones
                new = torch.full((ids.shape[0], ids.shape[1]), S.RESPONSE, dtype=torch.int8, device=ids.device)
                kinds = torch.cat([cap._prompt_kinds, new], 1)
            else:
                kinds = S.kinds_of(S.compute_spans(ids, am, image_token_id)).to(ids.device)
            cap._prompt_kinds = kinds
            for l in layer_specs:
                cap.set_kinds(l, kinds)
        return None

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with capture_implementation(model), active(cap):
            yield cap
    finally:
        handle.remove()
