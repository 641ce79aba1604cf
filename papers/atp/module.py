"""The Adaptive Token Pruning (ATP) module of ATP-LLaVA (Ye et al., CVPR 2025; spec `papers/atp.md` §3).

One module sits before each decoder layer of `ATPConfig.layers` (paper: before 0-based layers 4, 14, 24 of
32, reading the attention of the layer before, §2.4). For each image-prompt pair it

1. scores every remaining visual token from the previous layer's attention (Eq. 3-4):
   S_self_n  = mean over visual queries m of the pre-softmax logit q_m . k_n / sqrt(d)   (pre-mask, §3.3)
   S_cross_n = mean over instruction queries t of softmax(q_t . K / sqrt(d) + M)[n]
   both averaged over heads (A8) and min-max normalised over the surviving tokens (A3);
   S_red = (S_self + S_cross) / 2;
2. gives every token a fixed spatial score over nested uniform grids (Eq. 5, §3.4 construction, A4);
3. predicts two thresholds theta_r, theta_s in (0, 1) with a small MLP on cat(S_self, S_cross), the scores
   scattered to the original grid positions (Eq. 6-8, A6);
4. keeps token n iff S_red_n > theta_r (redundant pruning, RP) or S_sp_n > theta_s (spatial pruning, SP):
   Spatial Augmented Pruning. In training the decisions are soft masks sigma((S - theta) tau) (Eq. 9-11),
   optionally straight-through; pruned tokens are hidden from later layers by a per-key attention bias
   log(G + eps) (§3.8, `common.soft_mask`), G the cumulative product of the masks (A9).

How the previous layer's attention is obtained (same maths, no second pass of any layer): Eq. 3 needs PRE-mask
logits over all visual queries, which no softmax slice holds, and by linearity only the mean visual query is
needed: S_self = (mean_m q_m) . K_v / sqrt(d) (`self_scores`). At inference (`papers.atp.method.ATPReducer`)
layer i-1's own forward hands over its query/key states and its instruction-to-visual probabilities
(`common.reduction.Needs`). In training (`SoftATP`) q and k of layer i-1 are recomputed from the hidden states
that entered it (two projections and RoPE, `qk_of`), so that gradients flow through them, and S_cross is
softmaxed with the soft mask's bias as layer i-1 itself attended (`token_scores`). Without pruning both give
the same scores (tested to float rounding).

PP (pruning-aware positions): `positions="original"` keeps the survivors' original RoPE ids (the paper's
PP, here with the toy model's 1-D RoPE: the 2-D M-RoPE of the paper would need a base model trained with it,
see README); "renumber" re-indexes them contiguously (the "w/o PP" ablation, A10).
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from common import spans as S
from common.artifacts import atomic_write_text
from common.attention import decoder_of
from common.models.checkpoint import CARD, save_tensors
from common.schedule import PAPER_LAYERS, map_layer
from common.soft_mask import biased_mask

PAPER_ATP_LAYERS = {144: (4, 14, 24), 88: (1, 13, 25)}  # Table 2: module positions of the two main models
LAMBDA_SAMPLE = 3.0  # Eq. 5


# ------------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class ATPConfig:
    """Every knob of the module; the [INTERPRETATION] choices of the spec are the defaults.

    n_visual: L_{v,0}, visual tokens of one unpruned image (576 in the paper, a square grid).
    layers: decoder layers whose input the modules prune (0-based, >= 1, at least 2 apart: module k reads
        the attention of layer layers[k] - 1).
    n_layers: decoder depth (for the budget losses).
    """

    n_visual: int
    layers: tuple[int, ...]
    n_layers: int
    hidden: int = 256  # A6: width of z (not in the paper; "lightweight")
    activation: Literal["none", "gelu"] = "none"  # A6: Eq. 6-8 show no activation between Linear and heads
    tau: float = 50.0  # A2: sigmoid temperature (paper's T), large enough to separate spatial score levels
    ste: bool = False  # A2: straight-through masks (hard forward, sigmoid backward)
    lambda_sample: float = LAMBDA_SAMPLE
    use_rp: bool = True  # Table 4: redundant pruning
    use_sp: bool = True  # Table 4: spatial pruning
    scores: Literal["both", "self", "cross"] = "both"  # Table 5: which scores form S_red
    positions: Literal["original", "renumber"] = "original"  # Table 4: PP on / off
    # A3: what theta_r is compared with. "score": the min-max normalised S_red (the spec's reading). "rank": its
    # percentile among the surviving tokens (0 = least, 1 = most redundant-worthy), so theta_r is the fraction RP
    # prunes. Why: min-max values cluster (one outlier stretches the range), so a threshold between them has no
    # tokens near it, the sigmoid saturates and the budget loss has no gradient; measured at toy scale, "score"
    # runs froze with module 1 keeping 143.9 of 144 tokens and modules 2-3 keeping none (72 vs 36 target).
    threshold_on: Literal["score", "rank"] = "score"
    init_theta_r: float = 0.2  # §3.6: initial thresholds keep most tokens
    init_theta_s: float = 0.9
    eps: float = 1e-6  # log(G + eps) in the masked softmax (§3.8)
    fixed_keep: tuple[int, ...] | None = None  # Table 2 baseline: keep the top-c_k tokens by S_red, no thresholds

    def __post_init__(self):
        g = math.isqrt(self.n_visual)
        if self.n_visual <= 0 or g * g != self.n_visual:
            raise ValueError(f"n_visual: ATP needs a square grid of visual tokens, got {self.n_visual}")
        layers = tuple(int(l) for l in self.layers)
        if not layers or layers[0] < 1 or any(b - a < 2 for a, b in zip(layers, layers[1:])):
            raise ValueError(f"layers: expected increasing layers >= 1 at least 2 apart (module k reads layer "
                             f"layers[k]-1, which must not itself be pruned), got {self.layers}")
        if layers[-1] >= self.n_layers:
            raise ValueError(f"layers: layer {layers[-1]} is beyond the {self.n_layers} decoder layers")
        if not (self.use_rp or self.use_sp) and self.fixed_keep is None:
            raise ValueError("use_rp/use_sp: at least one pruning criterion must be on")
        if self.scores not in ("both", "self", "cross"):
            raise ValueError(f"scores: expected 'both', 'self' or 'cross', got {self.scores!r}")
        if self.positions not in ("original", "renumber"):
            raise ValueError(f"positions: expected 'original' or 'renumber', got {self.positions!r}")
        if self.threshold_on not in ("score", "rank"):
            raise ValueError(f"threshold_on: expected 'score' or 'rank', got {self.threshold_on!r}")
        if self.activation not in ("none", "gelu"):
            raise ValueError(f"activation: expected 'none' or 'gelu', got {self.activation!r}")
        if not self.tau > 0:
            raise ValueError(f"tau: the temperature must be > 0, got {self.tau}")
        if self.fixed_keep is not None:
            if len(self.fixed_keep) != len(layers) or any(
                    not 0 <= c <= self.n_visual for c in self.fixed_keep) or list(self.fixed_keep) != sorted(
                    self.fixed_keep, reverse=True):
                raise ValueError(f"fixed_keep: expected one non-increasing count in [0, {self.n_visual}] per "
                                 f"layer, got {self.fixed_keep}")
        object.__setattr__(self, "layers", layers)

    @property
    def grid(self) -> int:
        return math.isqrt(self.n_visual)

    def to_dict(self) -> dict:
        return asdict(self)


def atp_layers(paper_layers: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """Paper module positions (of 32 layers) -> this decoder's, via `common.schedule.map_layer`.

    A module needs the attention of the layer before it, so a position mapped to 0 moves to 1 (the 88-token
    model's first module at paper layer 1 maps to 0 in any decoder shallower than 48 layers); positions that
    collide or touch are pushed 2 apart.
    """
    out: list[int] = []
    for l in paper_layers:
        m = max(1, map_layer(l, n_layers, PAPER_LAYERS))
        if out and m < out[-1] + 2:
            m = out[-1] + 2
        out.append(m)
    if out[-1] >= n_layers:
        raise ValueError(f"paper_layers: {paper_layers} do not fit a {n_layers}-layer decoder 2 layers apart")
    return tuple(out)


# ------------------------------------------------------------------------------------- the fixed scores
def spatial_scores(grid: int, lambda_sample: float = LAMBDA_SAMPLE) -> torch.Tensor:
    """[grid * grid] fixed spatial score S_sp (Eq. 5 with the §3.4 nested-grid construction, A4).

    Stride s (a divisor of `grid` > 1) samples rows and columns with index % s == 0, rate R = 1 / s^2. A token
    scores 1 - lambda * R of its SPARSEST grid (largest stride); tokens in no grid score 0. So a threshold
    theta_s keeps exactly the union of the grids with lambda / s^2 < 1 - theta_s.
    """
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid: expected an int >= 2, got {grid!r}")
    if not 0 < lambda_sample < 4:
        raise ValueError(f"lambda_sample: must lie in (0, 4) so that every grid scores in (0, 1], got {lambda_sample}")
    r = torch.arange(grid)
    score = torch.zeros(grid, grid, dtype=torch.float64)
    for s in (d for d in range(2, grid + 1) if grid % d == 0):  # ascending: the sparsest grid writes last
        on = (r % s == 0)[:, None] & (r % s == 0)[None, :]
        score[on] = 1.0 - lambda_sample / s ** 2
    return score.flatten().float()


# ------------------------------------------------------------------------------------- attention scores
def qk_of(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Queries and keys (after RoPE) that decoder `layer` computes from the hidden states entering it.

    hidden: [L, D] one sample, no padding; cos/sin: [L, d_head]. Returns q [H, L, d], k [H, L, d] (keys
    repeated for grouped-query attention).
    """
    attn = layer.self_attn
    h = layer.input_layernorm(hidden[None])
    q = attn.q_proj(h).view(1, hidden.shape[0], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(1, hidden.shape[0], -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    return q[0], repeat_kv(k, attn.num_key_value_groups)[0]


def self_scores(q: torch.Tensor, k: torch.Tensor, q_vis: torch.Tensor, k_vis: torch.Tensor, scaling: float,
                g: torch.Tensor | None = None) -> torch.Tensor:
    """Raw S_self (Eq. 3) of one sample's visual tokens, averaged over heads: [N] float32.

    q: [H, Lq, d], k: [H, Lk, d]; q_vis / k_vis: [N] positions of the same visual tokens among the queries and
    among the keys. S_self_n = mean over visual queries m of the PRE-mask logit q_m . k_n * scaling, computed by
    linearity as (g-weighted mean_m q_m) . k_n * scaling; g: [N] soft keep-mask (None: all present).
    """
    q, k = q.float(), k.float()
    w = torch.ones(q_vis.numel(), device=q.device) if g is None else g.float()
    qbar = (q[:, q_vis] * w[None, :, None]).sum(1) / w.sum().clamp(min=1e-12)  # [H, d] mean visual query
    return (qbar[:, None, :] * k[:, k_vis]).sum(-1).mul(scaling).mean(0)  # [N], linearity of Eq. 3


def token_scores(q: torch.Tensor, k: torch.Tensor, vis: torch.Tensor, txt: torch.Tensor, scaling: float,
                 g: torch.Tensor | None = None, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw S_self and S_cross (Eq. 3-4) of the visual tokens `vis` of one sample, averaged over heads.

    q, k: [H, L, d] (one sample, causal order, no padding). vis: [N] positions of the visual tokens present;
    txt: [T] positions of the instruction queries (A5: not answer tokens, not the system prompt).
    g: [N] soft keep-mask of the visual tokens (training): S_self is the g-weighted mean over visual queries and
    the text rows are softmaxed with the bias log(g + eps) on visual keys, as layer i-1 itself attended
    (§3.3 notes). None = all present (inference: pruned tokens are gone). Returns ([N], [N]) float32.
    """
    q, k = q.float(), k.float()
    s_self = self_scores(q, k, vis, vis, scaling, g)
    if txt.numel() == 0:
        return s_self, torch.zeros_like(s_self)
    L = k.shape[1]
    logits = torch.matmul(q[:, txt], k.transpose(1, 2)) * scaling  # [H, T, L]
    causal = torch.arange(L, device=q.device)[None, :] <= txt[:, None]  # [T, L]
    logits = logits.masked_fill(~causal, float("-inf"))
    if g is not None:
        bias = torch.zeros(L, device=q.device).index_put((vis,), torch.log(g.float() + eps))
        logits = logits + bias
    probs = torch.softmax(logits, -1)[:, :, vis]  # [H, T, N]
    return s_self, probs.mean(1).mean(0)


def minmax(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row of x [B, N] over its `present` entries (A3); absent entries -> 0."""
    big = torch.finfo(x.dtype).max
    lo = x.masked_fill(~present, big).amin(-1, keepdim=True)
    hi = x.masked_fill(~present, -big).amax(-1, keepdim=True)
    out = (x - lo) / (hi - lo).clamp(min=1e-12)
    return out.masked_fill(~present, 0.0)


def rank_percentile(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Each row of x [B, N] -> rank of its `present` entries among themselves, scaled to [0, 1] (ties broken by
    position, so it is deterministic); absent entries -> 0. Not differentiable (nor need it be: only the
    thresholds learn)."""
    big = torch.finfo(x.dtype).max
    order = torch.sort(x.detach().masked_fill(~present, -big), dim=-1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order))
    n_absent = (~present).sum(-1, keepdim=True)
    n_present = present.sum(-1, keepdim=True)
    out = (ranks - n_absent).to(x.dtype) / (n_present - 1).clamp(min=1).to(x.dtype)
    return out.masked_fill(~present, 0.0)


# ---------------------------------------------------------------------------------------------- the module
class ThresholdNet(nn.Module):
    """Eq. 6-8: z = Linear(cat(S_self, S_cross)); theta_r = sigmoid(Linear_r(z)); theta_s = sigmoid(Linear_s(z)).

    The input is always 2 * n_visual wide: scores at their ORIGINAL grid positions, 0 where pruned (A6).
    """

    def __init__(self, n_visual: int, hidden: int, activation: str, init_theta_r: float, init_theta_s: float):
        super().__init__()
        self.z = nn.Linear(2 * n_visual, hidden)
        self.act = nn.GELU() if activation == "gelu" else nn.Identity()
        self.head_r = nn.Linear(hidden, 1)
        self.head_s = nn.Linear(hidden, 1)
        for head, theta in ((self.head_r, init_theta_r), (self.head_s, init_theta_s)):
            nn.init.normal_(head.weight, std=0.01)  # small: start near the initial thresholds, yet per instance
            nn.init.constant_(head.bias, math.log(theta / (1 - theta)))

    def forward(self, s_self: torch.Tensor, s_cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.act(self.z(torch.cat([s_self, s_cross], -1)))
        return torch.sigmoid(self.head_r(z))[..., 0], torch.sigmoid(self.head_s(z))[..., 0]


@dataclass
class Decision:
    """One module's output for a batch, in original grid coordinates [B, N0].

    mask: this module's keep-mask (soft in training; Eq. 11), not yet multiplied by earlier modules'.
    keep, keep_r, keep_s: hard decisions (token present and kept / kept by RP / kept by SP).
    """

    layer: int
    theta_r: torch.Tensor  # [B]
    theta_s: torch.Tensor  # [B]
    s_red: torch.Tensor  # [B, N0]
    mask: torch.Tensor  # [B, N0]
    keep: torch.Tensor  # [B, N0] bool
    keep_r: torch.Tensor
    keep_s: torch.Tensor
    present: torch.Tensor  # [B, N0] bool, the tokens that entered the module

    def _map(self, fn) -> "Decision":
        return Decision(self.layer, *(fn(t) for t in (self.theta_r, self.theta_s, self.s_red, self.mask, self.keep,
                                                      self.keep_r, self.keep_s, self.present)))

    def detach(self) -> "Decision":
        return self._map(torch.Tensor.detach)

    def to(self, device: torch.device | str) -> "Decision":
        return self._map(lambda t: t.to(device))


class ATPModules(nn.Module):
    """All ATP modules of one model: one `ThresholdNet` per pruning layer plus the fixed spatial scores."""

    def __init__(self, config: ATPConfig):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleList(
            ThresholdNet(config.n_visual, config.hidden, config.activation, config.init_theta_r,
                         config.init_theta_s) for _ in config.layers)
        self.register_buffer("s_spatial", spatial_scores(config.grid, config.lambda_sample), persistent=False)

    def decide(self, k: int, s_self: torch.Tensor, s_cross: torch.Tensor, g: torch.Tensor) -> Decision:
        """Module k's decision from raw scores [B, N0] (0 where absent) and the cumulative keep-mask g [B, N0].

        Present tokens are those with g > 0.5 (at inference g is 0/1). Returns soft and hard masks.
        """
        cfg = self.config
        present = g > 0.5
        s_self_n, s_cross_n = minmax(s_self, present), minmax(s_cross, present)
        s_red = {"both": 0.5 * (s_self_n + s_cross_n), "self": s_self_n, "cross": s_cross_n}[cfg.scores]
        if cfg.fixed_keep is not None:  # Table 2 baseline: top-c by S_red, hard (trained by discarding)
            c = cfg.fixed_keep[k]
            ranked = s_red.masked_fill(~present, -1.0)
            order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[:, :c]
            keep = torch.zeros_like(present).scatter(1, order, True) & present
            zeros = torch.zeros(g.shape[0], device=g.device)
            return Decision(cfg.layers[k], zeros, zeros, s_red, keep.float(), keep, keep, keep & False, present)
        theta_r, theta_s = self.nets[k](s_self_n * g, s_cross_n * g)  # Eq. 6-8 on the scattered, masked scores
        if cfg.threshold_on == "rank":
            s_red = rank_percentile(s_red, present)
        zero = torch.zeros_like(s_red)
        sp = self.s_spatial.to(s_red.device)[None]
        m_r = torch.sigmoid((s_red - theta_r[:, None]) * cfg.tau) if cfg.use_rp else zero  # Eq. 9
        m_s = torch.sigmoid((sp - theta_s[:, None]) * cfg.tau) if cfg.use_sp else zero  # Eq. 10
        mask = torch.maximum(m_r, m_s)  # Eq. 11
        keep_r = (s_red > theta_r[:, None]) & present & cfg.use_rp
        keep_s = (sp > theta_s[:, None]) & present & cfg.use_sp
        keep = keep_r | keep_s
        if cfg.ste:  # forward: the hard decision; backward: the sigmoid's gradient
            mask = keep.float() + mask - mask.detach()
        return Decision(cfg.layers[k], theta_r, theta_s, s_red, mask, keep, keep_r, keep_s, present)


# ------------------------------------------------------------------------------------------ budget losses
def average_tokens_soft(masks: list[torch.Tensor], config: ATPConfig) -> torch.Tensor:
    """[B] differentiable all-layer average of visual tokens (§3.10): layers before the first module see
    n_visual, layers [i_k, i_{k+1}) see Sum(g^(k)) (cumulative masks, A7/A9)."""
    bounds = list(config.layers) + [config.n_layers]
    total = bounds[0] * torch.full_like(masks[0][:, 0], float(config.n_visual))
    for k, g in enumerate(masks):
        total = total + (bounds[k + 1] - bounds[k]) * g.sum(-1)
    return total / config.n_layers


def atp_loss(masks: list[torch.Tensor], config: ATPConfig) -> torch.Tensor:
    """Eq. 12: sum_k Sum(g^(k)) / n_visual * i_k, batch mean (i_k: this decoder's layer index)."""
    return sum(g.sum(-1) / config.n_visual * l for g, l in zip(masks, config.layers)).mean()


def target_loss(masks: list[torch.Tensor], config: ATPConfig, n_target: float) -> torch.Tensor:
    """Eq. 13: |N_bar - N_target|, N_bar the batch mean of the all-layer average (L1 on token counts, A7)."""
    return (average_tokens_soft(masks, config).mean() - n_target).abs()


# ---------------------------------------------------------------------------------- training forward
@dataclass
class SoftState:
    """What a soft (training) forward produced: per module, the decision and the cumulative mask g^(k)."""

    decisions: list[Decision] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)  # cumulative g^(k) [B, N0]


def _layout(kinds: torch.Tensor, b: int):
    """(valid positions, visual index within them, instruction index within them) of sample b."""
    valid = torch.nonzero(kinds[b] != S.PAD).flatten()
    kv = kinds[b, valid]
    return valid, torch.nonzero(kv == S.VISUAL).flatten(), torch.nonzero(kv == S.INSTRUCTION).flatten()


class SoftATP:
    """The soft ATP forward (§3.7-3.8) as pre-hooks on a model's decoder layers (`soft_atp`, `soft_training`).

    `begin(kinds)` starts a forward: kinds [B, L] int8 token kinds of the batch (`common.spans`; answer tokens
    RESPONSE, so they are neither scored queries nor pruned; each sample holds exactly `n_visual` visual
    tokens). Layer i_k - 1 stashes its input; layer i_k computes the module from it, multiplies g, and every
    later layer gets an attention mask biased by log(G + eps) on visual keys (`common.soft_mask.biased_mask`;
    a query always sees itself). The biased mask travels in the layer's arguments, so a layer that activation
    checkpointing recomputes during backward sees the mask of its forward. With `positions="renumber"`, later
    layers see contiguous positions of the hard survivors ("w/o PP").

    A layer whose hook runs twice in one forward (checkpointing that also replays module hooks) repeats the
    module's computation (the checkpoint expects the same operations) but changes nothing: the decisions,
    masks and biases of the first run stand.
    """

    def __init__(self, model: nn.Module, atp: ATPModules, reset_at_layer0: bool):
        self.atp, self.reset_at_layer0 = atp, reset_at_layer0
        self.dec = decoder_of(model)
        self.state = SoftState()
        self.kinds: torch.Tensor | None = None
        self._stash: dict = {}
        self._pos: dict = {}
        self._bias: dict[int, torch.Tensor] = {}  # module layer -> [B, L] key bias of the layers from it on
        self._done: set[int] = set()

    def begin(self, kinds: torch.Tensor) -> SoftState:
        cfg = self.atp.config
        n_vis = (kinds == S.VISUAL).sum(1)
        if bool((n_vis != cfg.n_visual).any()):
            raise ValueError(f"kinds: every sample needs exactly {cfg.n_visual} visual tokens, got {n_vis.tolist()}")
        self.kinds = kinds
        self.vis_pos = torch.stack([torch.nonzero(kinds[b] == S.VISUAL).flatten() for b in range(kinds.shape[0])])
        self._new_forward()
        return self.state

    def _new_forward(self) -> None:
        self.state.decisions.clear()
        self.state.masks.clear()
        self._pos.clear()
        self._bias.clear()
        self._done.clear()

    def hook(self, l: int):
        cfg = self.atp.config

        def pre_hook(module, args, kwargs):
            if self.kinds is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if l == 0 and self.reset_at_layer0:  # a new forward: forget the previous one's masks
                self._new_forward()
            again = l in self._done
            self._done.add(l)
            if l in cfg.layers:
                self._module_step(l, hidden, commit=not again)
            if "pe" in self._pos:
                kwargs = dict(kwargs, position_embeddings=self._pos["pe"], position_ids=self._pos["ids"])
            starts = [s for s in self._bias if s <= l]
            if starts:
                dtype = (torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type)
                         else hidden.dtype)  # the dtype of the layer's queries
                mask = biased_mask(kwargs.get("attention_mask"), self._bias[max(starts)], hidden.shape[1], dtype)
                kwargs = dict(kwargs, attention_mask=mask)
            if l + 1 in cfg.layers and not again:
                self._stash.update(hidden=hidden, layer=module, pe=kwargs["position_embeddings"])
            return args, kwargs

        return pre_hook

    def _module_step(self, l: int, hidden: torch.Tensor, commit: bool) -> None:
        cfg, kinds, st = self.atp.config, self.kinds, self.state
        B = kinds.shape[0]
        k = cfg.layers.index(l)
        masks = st.masks[:k]
        g = masks[-1] if masks else torch.ones(B, cfg.n_visual, device=hidden.device)
        cos, sin = self._stash["pe"]
        layer = self._stash["layer"]
        rows_self, rows_cross = [], []
        for b in range(B):
            valid, vis, txt = _layout(kinds, b)
            cb, sb = (cos[b] if cos.shape[0] == B else cos[0]), (sin[b] if sin.shape[0] == B else sin[0])
            q, kk = qk_of(layer, self._stash["hidden"][b, valid], cb[valid], sb[valid])
            with torch.autocast(hidden.device.type, enabled=False):  # scores and thresholds in float32
                a, c = token_scores(q, kk, vis, txt, layer.self_attn.scaling, g[b], cfg.eps)
            rows_self.append(a)
            rows_cross.append(c)
        s_self, s_cross = torch.stack(rows_self), torch.stack(rows_cross)  # visual order = original order
        with torch.autocast(hidden.device.type, enabled=False):
            d = self.atp.decide(k, s_self, s_cross, g)
        g_new = g * d.mask
        G = torch.ones(B, kinds.shape[1], device=hidden.device, dtype=g_new.dtype)
        G = G.scatter(1, self.vis_pos, g_new)
        bias = torch.log(G + cfg.eps)
        if not commit:
            return
        st.decisions.append(d)
        st.masks.append(g_new)
        self._bias[l] = bias
        if cfg.positions == "renumber":
            alive = (kinds != S.PAD).clone()
            alive.scatter_(1, self.vis_pos, g_new.detach() > 0.5)
            ids = (alive.long().cumsum(1) - 1).clamp(min=0)
            self._pos.update(ids=ids, pe=self.dec.rotary_emb(hidden, position_ids=ids))


@contextmanager
def _installed(model: nn.Module, atp: ATPModules, reset_at_layer0: bool):
    soft = SoftATP(model, atp, reset_at_layer0)
    handles = []
    try:
        for i, layer in enumerate(soft.dec.layers):
            handles.append(layer.register_forward_pre_hook(soft.hook(i), with_kwargs=True))
        yield soft
    finally:
        for h in handles:
            h.remove()


@contextmanager
def soft_atp(model: nn.Module, atp: ATPModules, kinds: torch.Tensor):
    """Run `atp` softly inside every forward of `model` in the context (training, §3.7-3.8); yields `SoftState`.

    kinds: [B, L] int8 token kinds of the batch (see `SoftATP`). Every forward in the context starts afresh.
    """
    with _installed(model, atp, reset_at_layer0=True) as soft:
        soft.begin(kinds)
        yield soft.state


@contextmanager
def soft_training(model: nn.Module, atp: ATPModules):
    """The soft ATP hooks for a whole training run; yields the `SoftATP`, whose `begin(kinds)` starts each
    forward (so the hooks are still there if activation checkpointing replays them during backward)."""
    with _installed(model, atp, reset_at_layer0=False) as soft:
        yield soft


# ------------------------------------------------------------------------------------------ checkpoints
def save_atp(atp: ATPModules, folder, card: dict | None = None) -> None:
    """Write `atp.safetensors` (module weights) and `card.json` (config + whatever `card` adds) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(atp.state_dict(), folder / "atp.safetensors")
    atomic_write_text(folder / CARD, json.dumps({"config": atp.config.to_dict(), **(card or {})}, indent=2,
                                                       sort_keys=True, default=str) + "\n")


def load_atp(folder) -> tuple[ATPModules, dict]:
    """(modules, card) from a folder written by `save_atp`."""
    folder = Path(folder)
    if not (folder / CARD).exists():
        raise FileNotFoundError(f"checkpoint: {folder} has no card.json (train it with `python -m papers.atp.train`)")
    card = json.loads((folder / CARD).read_text())
    cfg = dict(card["config"])
    for key in ("layers", "fixed_keep"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    atp = ATPModules(ATPConfig(**cfg))
    atp.load_state_dict(load_file(str(folder / "atp.safetensors")))
    return atp.eval(), card
