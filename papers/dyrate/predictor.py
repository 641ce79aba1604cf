"""DyRate's rate predictor and the pure tensor maths around it (§4.3-4.8, §5.2, §7.2).

- `RatePredictor`: Eq. 2, ``p_t = softmax(W a_t + b)`` over C discrete pruning rates (Eq. 1), from the
  per-head attention shares a_t of layer K (4H features, `papers.dyrate.analysis.type_shares`). W = 0,
  b = 0 at init (uniform p, as DiffRate initialises its rate logits).
- `gumbel_onehot`: Eq. 4, straight-through Gumbel-Softmax (hard one-hot forward, soft gradient).
- `nested_keep_masks`: Eq. 3, FastV-ranked keep-masks M_1 >= M_2 >= ... >= M_C.
- `step_costs` / `relative_flops`: the FLOPs-target penalty's F-hat, built from `common.flops.layer_flops`
  so that training and the reported `common.flops.dyrate_generation_flops` use one formula.

Every value marked [R] (reconstructed) is a default here, not a quote: rates {0, 0.1, ..., 0.9} (C = 10),
tau_g = 1, F_target = 1/3.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from common.flops import DecoderDims, layer_flops, resolve_dims
from common.models.checkpoint import CARD, atomic_write_text, save_tensors

DEFAULT_RATES: tuple[float, ...] = tuple(c / 10 for c in range(10))  # [R] §4.4
N_TYPES = 4  # system, image, instruction, response


def check_rates(rates: Sequence[float]) -> tuple[float, ...]:
    """Eq. 1: 0 = r_1 < r_2 < ... < r_C <= 1."""
    r = tuple(float(x) for x in rates)
    if len(r) < 2:
        raise ValueError(f"rates: need at least two classes, got {r}")
    if r[0] != 0.0:
        raise ValueError(f"rates: r_1 must be 0 (keep every token), got {r[0]}")
    if any(b <= a for a, b in zip(r, r[1:])) or r[-1] > 1.0:
        raise ValueError(f"rates: must increase strictly and stay <= 1, got {r}")
    return r


def kept_count(n_visual: int, rate: float) -> int:
    """Visual tokens kept at rate r: N - floor(r N) (Eq. 1; the same floor as `common.flops`)."""
    return n_visual - math.floor(rate * n_visual)


def rate_keeping(n_visual: int, keep: int) -> float:
    """The rate r with `kept_count(n_visual, r) == keep` exactly: (N - keep) / N, nudged up where the float
    product r N lands just below the integer it stands for (floor would then keep one token too many)."""
    if not 0 <= keep <= n_visual or n_visual < 1:
        raise ValueError(f"keep: must lie in [0, {n_visual}] with n_visual >= 1, got keep={keep}")
    rate = (n_visual - keep) / n_visual
    if kept_count(n_visual, rate) != keep:
        rate = min(1.0, rate + 1e-9)
    return rate


class RatePredictor(nn.Module):
    """Linear classifier from per-head attention shares to a distribution over pruning rates (Eq. 2).

    Args:
        n_heads: H of the layer whose attention feeds it (input size 4H).
        rates: the C candidate rates r_c (fraction of visual tokens removed).
        K: the pruning layer it was trained for (layers 0..K-1 see every token; stored for checks).
    """

    def __init__(self, n_heads: int, rates: Sequence[float] = DEFAULT_RATES, K: int = 2):
        super().__init__()
        if not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads: must be a positive int, got {n_heads!r}")
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K: the predictor reads layer K-1's attention, so K >= 1; got {K!r}")
        self.rates = check_rates(rates)
        self.n_heads, self.K = n_heads, K
        self.linear = nn.Linear(N_TYPES * n_heads, len(self.rates))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def n_classes(self) -> int:
        return len(self.rates)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """[..., 4H] features (head-major: head h's four shares at 4h..4h+3) -> [..., C] logits W a + b."""
        if a.shape[-1] != self.linear.in_features:
            raise ValueError(f"a: expected {self.linear.in_features} features (4 x {self.n_heads} heads), "
                             f"got {a.shape[-1]}")
        return self.linear(a.to(self.linear.weight.dtype))

    @torch.no_grad()
    def predict(self, a: torch.Tensor) -> torch.Tensor:
        """Inference (§4.10): argmax class per row, no noise. [..., 4H] -> [...] long."""
        return self(a).argmax(-1)

    def rate_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.rates, dtype=torch.float32, device=device)

    # ---- persistence: tiny, so it is committed (checkpoints/dyrate-predictor)
    def config(self) -> dict[str, Any]:
        return {"n_heads": self.n_heads, "rates": list(self.rates), "K": self.K}

    def save(self, folder: str | Path, card: dict[str, Any] | None = None) -> Path:
        """Write predictor.safetensors and card.json (config + whatever the trainer reports)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), folder / "predictor.safetensors")
        body = {"config": self.config(), **(card or {})}
        atomic_write_text(folder / CARD, json.dumps(body, indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RatePredictor":
        folder = Path(folder)
        if not (folder / CARD).exists():
            raise FileNotFoundError(f"folder: {folder} has no {CARD}; train one with `make dyrate-predictor`")
        cfg = json.loads((folder / CARD).read_text())["config"]
        pred = cls(int(cfg["n_heads"]), cfg["rates"], int(cfg["K"]))
        pred.load_state_dict(load_file(str(folder / "predictor.safetensors")))
        return pred.eval()


def gumbel_onehot(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 4: straight-through Gumbel-Softmax, y = onehot(argmax(l + g)) - sg(y~) + y~.

    Same as `F.gumbel_softmax(logits, tau, hard=True)`, with an optional generator for reproducible runs.
    """
    if tau <= 0:
        raise ValueError(f"tau: the Gumbel temperature must be > 0, got {tau}")
    where = generator.device if generator is not None else logits.device  # a CPU generator also serves a GPU
    u = torch.rand(logits.shape, generator=generator, device=where, dtype=torch.float32).to(logits.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
    soft = F.softmax((logits.float() + g) / tau, -1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def descending_rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry in a descending, stable sort along the last axis (0 = most important; ties go
    to the lower index, as `common.baselines.fastv.topk_stable`)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order, dim=-1)


def nested_keep_masks(scores: torch.Tensor, rates: Sequence[float]) -> torch.Tensor:
    """Eq. 3: [..., N] FastV scores -> [..., C, N] bool keep-masks; M_c keeps the top N - floor(r_c N).

    Nested by construction (the least important tokens go first), and M_1 (r = 0) keeps everything.
    """
    N = scores.shape[-1]
    rank = descending_rank(scores)  # [..., N]
    keep = torch.tensor([kept_count(N, r) for r in rates], device=scores.device)  # [C]
    return rank[..., None, :] < keep[:, None]


def step_costs(n_prompt: int, n_visual: int, n_steps: int, rates: Sequence[float],
               dims: DecoderDims | str | Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer MACs of generation steps t = 1..T without a KV cache (§7.2).

    Returns (dense [T], pruned [T, C]): f(n_t) and f(n_t - floor(r_c N)) with n_t = n_prompt + t - 1,
    f = `common.flops.layer_flops` (FastV's Eq. 5), as float64 tensors.
    """
    dims = resolve_dims(dims)
    dense = [layer_flops(n_prompt + t, dims) for t in range(n_steps)]
    pruned = [[layer_flops(n_prompt + t - math.floor(r * n_visual), dims) for r in rates] for t in range(n_steps)]
    return torch.tensor(dense, dtype=torch.float64), torch.tensor(pruned, dtype=torch.float64)


def relative_flops(y: torch.Tensor, dense: torch.Tensor, pruned: torch.Tensor, K: int, n_layers: int,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """F-hat of §5.2, differentiable in y: sum_t [K f(n_t) + (L-K) sum_c y_tc f(n_t - floor(r_c N))]
    / sum_t L f(n_t), summed over every sample and step given (a ratio of totals).

    y: [..., T, C] one-hot (or probabilities); dense: [..., T]; pruned: [..., T, C]; valid: [..., T] bool
    (steps that count). With a hard one-hot y this equals `common.flops.dyrate_generation_flops`'s ratio.
    """
    if not 0 <= K <= n_layers:
        raise ValueError(f"K: must lie in [0, {n_layers}], got {K}")
    w = torch.ones_like(dense) if valid is None else valid.to(dense.dtype)
    late = (y.to(pruned.dtype) * pruned).sum(-1)  # [..., T]
    num = ((K * dense + (n_layers - K) * late) * w).sum()
    den = (n_layers * dense * w).sum()
    return num / den
