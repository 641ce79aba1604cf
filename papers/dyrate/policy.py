"""DyRate's differentiable training pass: one teacher-forced forward with per-row masks (§5.2 (B)).

Over ``[prompt; response]``, layers 0..K-2 run unchanged (SDPA); layer K-1 computes its attention eagerly
(the predictor's features and FastV's ranking come from its rows); layers K..L-1 run "softmax with policy"
(Eq. 6, [R] DynamicViT/DiffRate style) with a ROW-DEPENDENT policy: the row predicting response token t
uses M_t (Eq. 5 of the Gumbel one-hot y_t, Eq. 4, over the nested masks M_c, Eq. 3); every earlier prompt
row uses the all-ones policy. This is what mask-mode KV-cache generation computes (prompt KV unpruned,
the step-t query masked), so training sees the masks inference uses.

    A~_ij = (exp(z_ij - max_k z_ik) G_ij Mbar_ij + eps / n) / (sum_k exp(z_ik - max_k z_ik) G_ik Mbar_ik + eps)

(G: causal/padding mask, Mbar_ij = M^[j] + (1 - M^[j]) [i = j], eps = 1e-6, float32.) An additive -inf mask
would give the mask no gradient; the multiplicative one does. Position ids stay the original ones.

How it plugs in (transformers' AttentionInterface, as `common.attention`): an attention function named
`dyrate_policy` is registered with the eager mask builder; `policy_pass` points the decoder's attention at
it for one forward, with the per-forward state in a context variable (reset in `finally`). Nothing
outside the context changes.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from common import spans as S
from common.attention import decoder_of
from papers.dyrate.analysis import type_shares
from papers.dyrate.predictor import RatePredictor, gumbel_onehot, nested_keep_masks

POLICY_NAME = "dyrate_policy"
EPS = 1e-6


@dataclass
class _PassState:
    K: int
    make_policy: Callable[[torch.Tensor], torch.Tensor]  # layer K-1 probs [B, H, L, L] -> policy [B, L, L]
    eps: float = EPS
    policy: torch.Tensor | None = None
    probs: dict[int, torch.Tensor] = field(default_factory=dict)


_STATE: contextvars.ContextVar[_PassState | None] = contextvars.ContextVar("dyrate_policy", default=None)


def policy_softmax(z: torch.Tensor, allowed: torch.Tensor, policy: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 6. z: [B, H, Lq, Lk] logits; allowed: broadcastable bool (causal and padding); policy: [B, Lq, Lk]
    in [0, 1] (1 = visible). Returns float32 probabilities; with eps = 0 and a 0/1 policy it equals a
    softmax over the allowed, kept keys."""
    z = z.float().masked_fill(~allowed, float("-inf"))
    m = z.amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).min)  # rows with no key: 0, not NaN
    e = torch.exp(z - m) * policy[:, None].float()
    probs = (e + eps / z.shape[-1]) / (e.sum(-1, keepdim=True) + eps)
    # rows that see no key at all (left padding) output 0, as torch's sdpa does
    return probs.masked_fill(~allowed.any(-1, keepdim=True), 0.0).nan_to_num(0.0)


def _attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    st = _STATE.get()
    layer = getattr(module, "layer_idx", None)
    if st is None or layer is None or layer < st.K - 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    k = repeat_kv(key, module.num_key_value_groups).float()
    v = repeat_kv(value, module.num_key_value_groups).float()
    z = torch.matmul(query.float(), k.transpose(2, 3)) * scaling  # [B, H, Lq, Lk]
    Lq, Lk = z.shape[-2:]
    if attention_mask is None:  # causal, aligned at the lower right
        allowed = torch.arange(Lk, device=z.device)[None] <= torch.arange(Lq, device=z.device)[:, None] + (Lk - Lq)
    elif attention_mask.is_floating_point():
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    else:
        allowed = attention_mask.bool()
    if layer == st.K - 1:  # the last full layer: plain attention; its rows decide the policy
        probs = policy_softmax(z, allowed, torch.ones_like(z[:, 0]), eps=0.0)
        st.policy = st.make_policy(probs.detach())
    else:
        probs = policy_softmax(z, allowed, st.policy, st.eps)
    st.probs[layer] = probs
    out = torch.matmul(probs, v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(POLICY_NAME, _attention)
AttentionMaskInterface.register(POLICY_NAME, eager_mask)


@contextmanager
def _policy_attention(model: nn.Module, state: _PassState):
    """Point the decoder's attention at `dyrate_policy` and activate `state`; restore both on exit."""
    dec = decoder_of(model)
    configs = {id(l.self_attn.config): l.self_attn.config for l in dec.layers}
    configs[id(dec.config)] = dec.config
    saved = {k: c._attn_implementation for k, c in configs.items()}
    token = _STATE.set(state)
    try:
        for c in configs.values():
            c._attn_implementation = POLICY_NAME
        yield state
    finally:
        _STATE.reset(token)
        for k, c in configs.items():
            c._attn_implementation = saved[k]


# ------------------------------------------------------------------------------------- teacher forcing
@dataclass
class TeacherBatch:
    """``[left-padded prompt (Lp)] [response, right-padded (T)]``: row Lp-1+t predicts response token t+1.

    input_ids / attention_mask: [B, Lp + T]; pixel_values: the prompt's images; targets: [B, T] response
    ids (-100 on padding); spans: prompt spans (`common.spans`) per sample.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    targets: torch.Tensor
    prompt_length: int
    spans: list[S.TokenSpans]

    @property
    def n_steps(self) -> int:
        return self.targets.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        """[B, T] response steps that exist."""
        return self.targets != -100

    def position_ids(self) -> torch.Tensor:
        """Positions as `generate()` numbers them (left padding skipped)."""
        am = self.attention_mask.long()
        return (am.cumsum(1) - 1).clamp(min=0)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TeacherBatch":
        """The batch on `device`, images in `dtype` (the model's); ids and targets stay integers."""
        pix = self.pixel_values
        if pix is not None:
            pix = pix.to(device, dtype=dtype) if dtype is not None else pix.to(device)
        return TeacherBatch(self.input_ids.to(device), self.attention_mask.to(device), pix,
                            self.targets.to(device), self.prompt_length, self.spans)


def teacher_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                  responses: list[torch.Tensor], image_token_id: int, pad_id: int = 0) -> TeacherBatch:
    """Append each sample's response ids (1-D tensors) to a left-padded prompt batch."""
    B, Lp = prompt_ids.shape
    if len(responses) != B:
        raise ValueError(f"responses: expected {B} (one per prompt), got {len(responses)}")
    if any(r.numel() == 0 for r in responses):
        raise ValueError("responses: every sample needs at least one response token")
    T = max(int(r.numel()) for r in responses)
    resp = torch.full((B, T), pad_id, dtype=prompt_ids.dtype)
    targets = torch.full((B, T), -100, dtype=torch.long)
    rmask = torch.zeros(B, T, dtype=prompt_mask.dtype)
    for b, r in enumerate(responses):
        resp[b, : r.numel()] = r
        targets[b, : r.numel()] = r
        rmask[b, : r.numel()] = 1
    spans = S.compute_spans(prompt_ids, prompt_mask, image_token_id)
    return TeacherBatch(torch.cat([prompt_ids, resp], 1), torch.cat([prompt_mask, rmask], 1), pixel_values,
                        targets, Lp, spans)


@dataclass
class PassOutput:
    logits: torch.Tensor  # [B, T, V] next-token logits of the rows predicting the response
    y: torch.Tensor  # [B, T, C] the rate one-hots used (straight-through in training)
    probs: torch.Tensor  # [B, T, C] predictor probabilities
    masks: list[torch.Tensor]  # per sample [T, N] selected keep-mask M_t (float, carries the gradient)
    features: torch.Tensor  # [B, T, 4H] the predictor's input a_t per response row (detached)


def policy_pass(model: nn.Module, batch: TeacherBatch, predictor: RatePredictor, *, tau: float = 1.0,
                hard: bool = False, eps: float = EPS, generator: torch.Generator | None = None) -> PassOutput:
    """One teacher-forced forward with DyRate masks (module docstring).

    hard=False: Gumbel straight-through sampling (training, Eq. 4); hard=True: argmax rates, no noise
    (inference, §4.10). The predictor's features a_t and the ranking are detached (§4.13).
    """
    K, rates = predictor.K, predictor.rates
    Lp, T = batch.prompt_length, batch.n_steps
    rows = torch.arange(Lp - 1, Lp - 1 + T, device=batch.input_ids.device)
    kinds = torch.cat([S.kinds_of(batch.spans, Lp),
                       torch.full((len(batch.spans), T), S.RESPONSE, dtype=torch.int8)], 1)
    kinds = kinds.masked_fill(batch.attention_mask == 0, S.PAD).to(batch.input_ids.device)
    out: dict[str, torch.Tensor | list] = {}

    def make_policy(probs: torch.Tensor) -> torch.Tensor:
        B, H, L, _ = probs.shape
        row_probs = probs[:, :, rows]  # [B, H, T, L]
        a = type_shares(row_probs, kinds).permute(0, 2, 1, 3).reshape(B, T, -1)  # [B, T, 4H]
        logits = predictor(a)
        y = F.one_hot(logits.argmax(-1), predictor.n_classes).float() if hard else \
            gumbel_onehot(logits, tau, generator)
        policy = torch.ones(B, L, L, dtype=torch.float32, device=probs.device)
        masks = []
        for b, sp in enumerate(batch.spans):
            img = sp.visual_positions().to(probs.device)
            scores = row_probs[b].mean(0)[:, img]  # [T, N] FastV's rule, per row
            Mc = nested_keep_masks(scores, rates).float()  # [T, C, N]
            M = torch.einsum("tc,tcn->tn", y[b], Mc)  # Eq. 5
            policy[b, rows[:, None], img[None, :]] = M
            masks.append(M)
        out.update(y=y, probs=torch.softmax(logits.float(), -1), masks=masks, features=a.detach())
        return policy

    state = _PassState(K=K, make_policy=make_policy, eps=eps)
    with _policy_attention(model, state):
        res = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values, position_ids=batch.position_ids(), use_cache=False)
    logits = res.logits[:, rows]
    return PassOutput(logits, out["y"], out["probs"], out["masks"], out["features"])
