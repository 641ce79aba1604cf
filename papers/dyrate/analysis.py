"""DyRate's attention-distribution analysis (§3, the paper's Fig. 2).

For every generation step t, every decoder layer l and head h: the share of the NEWEST token's attention
(the query row that predicts token t) that falls on each token type,

    d[t, l, h, tau] = sum_{j in I_tau} A^(l,h)[q, j],   tau in (system, image, instruction, response),

so that the four shares sum to 1 (§3.2). The same per-head vector of layer K is the rate
predictor's input (§4.3), so `type_shares` serves both.

How: greedy generation with the KV cache; every analysed layer computes, through `common.attention`, only
the last query row over all keys (one [H, Lk] row per step), SDPA kept for the layer's output. The full
L x L matrix is never formed. Steps a sample did not reach (it stopped at EOS) are NaN, so averages over
samples at step t use only the samples still generating (§3.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from common import spans as S
from common.attention import AttentionSlice, capture_attention, decoder_of

TOKEN_TYPES: tuple[str, ...] = ("system", "image", "instruction", "response")
_KIND_OF_TYPE = (S.SYSTEM, S.VISUAL, S.INSTRUCTION, S.RESPONSE)


def type_shares(values: torch.Tensor, key_kinds: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention mass per token type: [B, H, Q, K] probabilities, [B, K] key kinds -> [B, H, Q, 4].

    The last axis follows `TOKEN_TYPES`. Keys of another kind (PAD) and invalid keys count nowhere; for
    rows whose probability mass lies on real keys the four shares sum to 1.
    """
    if values.ndim != 4:
        raise ValueError(f"values: expected [B, H, Q, K] attention, got shape {tuple(values.shape)}")
    if key_kinds.shape != (values.shape[0], values.shape[3]):
        raise ValueError(f"key_kinds: expected shape {(values.shape[0], values.shape[3])}, got "
                         f"{tuple(key_kinds.shape)}")
    onehot = torch.stack([key_kinds == k for k in _KIND_OF_TYPE], -1).to(values.dtype)  # [B, K, 4]
    if key_valid is not None:
        onehot = onehot * key_valid[..., None].to(values.dtype)
    return torch.einsum("bhqk,bkt->bhqt", values, onehot)


@dataclass
class ShareTrace:
    """Attention shares of a generation run.

    shares: [B, T, n_layers, H, 4] float32 (NaN where a sample had already stopped).
    layers: the analysed decoder layers (0-based), in the order of axis 2.
    tokens: [B, T] generated ids.
    active: [B, T] bool, True while the sample was still generating (its EOS step included).
    """

    shares: np.ndarray
    layers: tuple[int, ...]
    tokens: np.ndarray
    active: np.ndarray

    def head_mean(self) -> np.ndarray:
        """[B, T, n_layers, 4]: D_{t,l,tau} of §3.2 per sample."""
        return self.shares.mean(3)

    def layer_mean(self) -> np.ndarray:
        """[B, T, 4]: shares averaged over heads and the analysed layers."""
        return self.shares.mean((2, 3))

    def per_type(self, which: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{type: [B, T]} from `which` ([B, T, 4]; default `layer_mean()`), for `common.plots.plot_share_curves`."""
        arr = self.layer_mean() if which is None else which
        return {name: arr[..., i] for i, name in enumerate(TOKEN_TYPES)}


def _active_mask(tokens: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """[B, T] True up to and including each sample's first EOS."""
    if not eos_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    is_eos = torch.isin(tokens, torch.tensor(list(eos_ids), device=tokens.device))
    before = torch.cumsum(is_eos.long(), 1) - is_eos.long()  # EOS seen strictly before step t
    return before == 0


def generation_shares(model: nn.Module, inputs: dict, *, max_new_tokens: int, image_token_id: int | None = None,
                      layers: Sequence[int] | None = None, eos_token_id: int | Sequence[int] | None = None,
                      ) -> ShareTrace:
    """Greedy-generate and record, at every step and analysed layer, each head's attention shares.

    Args:
        model: an HF VLM (or Llama) whose prompt holds expanded image placeholders.
        inputs: `generate()` inputs (left-padded `input_ids`, `attention_mask`, `pixel_values`).
        max_new_tokens: generation steps T.
        image_token_id: placeholder id (default: the model config's).
        layers: decoder layers to analyse (default: all).
        eos_token_id: ids that end a sample (default: the generation config's); later steps are NaN.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    n_layers = len(decoder_of(model).layers)
    layers = tuple(range(n_layers)) if layers is None else tuple(int(l) for l in layers)
    if image_token_id is None:
        image_token_id = getattr(model.config, "image_token_id", None)
    ids = inputs["input_ids"]
    spans = S.compute_spans(ids, inputs.get("attention_mask"), image_token_id)
    prompt_kinds = S.kinds_of(spans, ids.shape[1]).to(ids.device)
    steps: list[torch.Tensor] = []  # per forward: [B, n_layers, H, 4]

    def post_hook(module, args, kwargs, output):
        res = cap.results
        if not res:
            return
        rows = []
        n_gen = len(steps)  # tokens generated before this forward's last position
        kinds = torch.cat([prompt_kinds, torch.full((ids.shape[0], n_gen), S.RESPONSE, dtype=torch.int8,
                                                    device=ids.device)], 1)
        for l in layers:
            c = res[l]
            k_kinds = kinds.gather(1, c.k_index)  # [B, K] kinds of the captured keys
            rows.append(type_shares(c.values, k_kinds, c.k_valid)[:, :, -1])  # [B, H, 4]
        steps.append(torch.stack(rows, 1).float().cpu())

    spec = AttentionSlice(queries="last", keys="all")
    with capture_attention(model, {l: spec for l in layers}, image_token_id=image_token_id) as cap:
        handle = model.register_forward_hook(post_hook, with_kwargs=True)
        try:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        finally:
            handle.remove()
    tokens = out[:, ids.shape[1]:].cpu()
    T = tokens.shape[1]
    shares = torch.stack(steps[:T], 1)  # [B, T, n_layers, H, 4]
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    active = _active_mask(tokens, eos)
    shares = shares.masked_fill(~active[:, :, None, None, None], float("nan"))
    return ShareTrace(shares.numpy(), layers, tokens.numpy(), active.numpy())


def share_trend(per_sample: np.ndarray, min_samples: int = 3) -> float:
    """Slope (share per step) of the across-sample mean curve [B, T] -> float, over steps with at least
    `min_samples` samples still generating: < 0 means the share falls as the answer grows."""
    count = np.sum(~np.isnan(per_sample), 0)
    ok = count >= min_samples
    if ok.sum() < 2:
        return float("nan")
    mean = np.nanmean(per_sample[:, ok], 0)
    t = np.nonzero(ok)[0].astype(float)
    return float(np.polyfit(t, mean, 1)[0])
