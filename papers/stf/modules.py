"""LLaVA-STF projectors: Multi-Block Token Fusion (MBTF) and Spatial Token Fusion (STF), plus the pooling
baselines of Tables 2-5, as drop-in replacements for LLaVA's `multi_modal_projector` (stf.md §3, §10.1).

Data flow of the full projector g_theta (stf.md §3.2, paper default M=8, k=2, E=1, LLaVA-1.5-7B sizes):

    M block outputs [B, 576, 1024] (CLS dropped) --concat channels--> [B, 576, 8192]
    MBTF  1x1 8192->4096 GELU, 1x1 4096->1024 GELU                 -> [B, 576, 1024]     (Eq. 1)
    STF   2x2/stride-2 conv 1024->4096 GELU                        -> [B, 144, 4096]     (Eq. 2)
          split each token into E tokens of C2/E channels          -> [B, 144*E, 4096/E]
          1x1 C2/E->16384 GELU, 1x1 16384->4096 GELU               -> [B, 144*E, 4096]

A 1x1 conv over a token grid is a per-token `nn.Linear`; a k x k / stride-k conv is TokenConcat (space-to-depth,
`common.baselines.tokenconcat`) followed by `Linear(k^2 C1 -> C2)` with permuted weights (stf.md §3.4), which is
how it is built here. Two variants (stf.md §3.7, §11):

* ``variant="paper"`` (default, Table 1): blocks l_i = i L / M (3, 6, ..., 24), GELU after every layer, STF has a
  learnable k x k fusion to C2 = k^2 C1 before two 1x1 convs (151.0 M parameters at LLaVA-1.5 size).
* ``variant="code"`` (visresearch/LLaVA-STF @0b84925): blocks ``[-2, 21, 18, ..., 3]`` of HF `hidden_states`, no GELU
  after the last layer of MBTF or STF, STF is parameter-free k x k concatenation -> Linear(k^2 C1 -> 16 C1) -> GELU
  -> Linear(16 C1 -> C3) (134.2 M). Its E > 1 helper groups the k^2 raw tokens of a window into E tokens before
  any layer, which is what splitting the concatenated vector into E contiguous chunks does here.

`install_projector` swaps a projector into an HF `LlavaForConditionalGeneration` (transformers >= 5): it sets
`config.vision_feature_layer` to the selected blocks, so HF's own `get_image_features` gathers and concatenates
them (CLS dropped by the "default" strategy), and the placeholder count per image becomes `projector.num_tokens`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from common.baselines.avgpool import AvgPool
from common.baselines.tokenconcat import TokenConcat, tokenconcat

Variant = Literal["paper", "code"]
VARIANTS: tuple[str, ...] = ("paper", "code")

# kind -> (uses MBTF, token reducer). "mlp" is LLaVA-1.5's mlp2x_gelu on all tokens; "mbtf_stf" is LLaVA-STF.
# Every reducer is run with and without MBTF, since Table 5 does not say which TokenConcat used (stf.md §11.11).
KINDS: dict[str, tuple[bool, str]] = {
    "mlp": (False, "none"),
    "avgpool": (False, "avgpool"),
    "tokenconcat": (False, "tokenconcat"),
    "stf": (False, "stf"),
    "mbtf": (True, "none"),
    "mbtf_avgpool": (True, "avgpool"),
    "mbtf_tokenconcat": (True, "tokenconcat"),
    "mbtf_stf": (True, "stf"),
}

# Table 4's (k, E) settings with E < k^2 (the k=1, E=1 row is plain LLaVA-1.5, i.e. kind "mlp"; stf.md §11.10).
TABLE4_KE: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (4, 4), (4, 8), (8, 16), (8, 32))

PENULTIMATE = -2  # LLaVA-1.5's `mm_vision_select_layer`: HF hidden_states[-2] = output of block L-1


def default_blocks(num_layers: int, num_blocks: int = 8, variant: Variant = "paper") -> tuple[int, ...]:
    """HF `hidden_states` indices of the M evenly spaced encoder blocks MBTF fuses (stf.md §3.3, §11.1).

    `hidden_states[0]` is the embedding output and `hidden_states[i]` block i's output, so the paper's
    l_i = i L / M gives (3, 6, ..., 24) for L=24, M=8. The released code (`clip_encoder.py:feature_select`) uses
    the penultimate block instead of the last and lists them deepest first: (-2, 21, 18, 15, 12, 9, 6, 3).
    """
    L, M = _positive_int("num_layers", num_layers), _positive_int("num_blocks", num_blocks)
    if M > L:
        raise ValueError(f"num_blocks: cannot pick {M} distinct blocks out of num_layers={L}")
    _choice("variant", variant, VARIANTS)
    paper = tuple(i * L // M for i in range(1, M + 1))  # floor(i L / M); exact when M divides L
    if variant == "paper":
        return paper
    return (PENULTIMATE,) + tuple(reversed(paper[:-1]))


@dataclass(frozen=True)
class STFConfig:
    """Everything that fixes a projector's architecture; `STFProjector(STFConfig())` is LLaVA-STF-7B (paper).

    Widths left as None follow the paper's ratios (stf.md §3.5, §11.3), which coincide at LLaVA-1.5 size:
    MBTF hidden = 4 C1; STF hidden = 4 C3 (paper, "keep it at 16384") or 16 C1 (code's `mm_hidden_size*16`).
    """

    kind: str = "mbtf_stf"
    vision_hidden: int = 1024  # C1, CLIP ViT-L/14 width
    llm_hidden: int = 4096  # C3, Vicuna-7B width
    grid: tuple[int, int] = (24, 24)  # H1 x W1 patch grid: 336 / 14
    num_vision_layers: int = 24  # L, only used to pick the default blocks
    variant: str = "paper"
    num_blocks: int = 8  # M; ignored by kinds without MBTF (they read the penultimate block only)
    blocks: tuple[int, ...] | None = None  # HF hidden_states indices (M = len(blocks)); None -> default_blocks
    k: int = 2  # window side (and stride) of STF / AvgPool / TokenConcat
    E: int = 1  # tokens each STF window is split into; E | k^2 and E < k^2
    mbtf_hidden: int | None = None
    stf_hidden: int | None = None
    final_act: bool | None = None  # GELU after the last MBTF / STF layer; None -> paper True, code False

    def __post_init__(self) -> None:
        _choice("kind", self.kind, tuple(KINDS))
        _choice("variant", self.variant, VARIANTS)
        for name in ("vision_hidden", "llm_hidden", "num_vision_layers", "num_blocks", "k", "E"):
            _positive_int(name, getattr(self, name))
        for name in ("mbtf_hidden", "stf_hidden"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not (isinstance(self.grid, Sequence) and len(self.grid) == 2):
            raise ValueError(f"grid: expected (H, W), got {self.grid!r}")
        H, W = (_positive_int("grid", g) for g in self.grid)
        object.__setattr__(self, "grid", (H, W))
        if self.reducer != "none" and (H % self.k or W % self.k):
            raise ValueError(f"k: a {self.k}x{self.k} window does not tile the {H}x{W} grid")
        if self.reducer == "stf":
            kk = self.k * self.k
            if kk % self.E or self.E >= kk:
                raise ValueError(f"E: must divide k*k={kk} and be smaller than it (E < k^2, stf.md §3.4), "
                                 f"got {self.E}")
        elif self.E != 1:
            raise ValueError(f"E: only STF splits windows into E tokens; kind {self.kind!r} needs E=1, got {self.E}")
        blocks = self.blocks
        if blocks is None:
            blocks = (default_blocks(self.num_vision_layers, self.num_blocks, self.variant) if self.uses_mbtf
                      else (PENULTIMATE,))
        blocks = tuple(int(b) for b in blocks)
        L = self.num_vision_layers
        if not blocks or any(not -(L + 1) <= b <= L for b in blocks):
            raise ValueError(f"blocks: expected hidden_states indices in [-{L + 1}, {L}], got {blocks}")
        if not self.uses_mbtf and len(blocks) != 1:
            raise ValueError(f"blocks: kind {self.kind!r} reads one block (no MBTF to fuse several), got {blocks}")
        object.__setattr__(self, "blocks", blocks)

    @property
    def uses_mbtf(self) -> bool:
        return KINDS[self.kind][0]

    @property
    def reducer(self) -> str:
        return KINDS[self.kind][1]

    @property
    def act_last(self) -> bool:
        return (self.variant == "paper") if self.final_act is None else bool(self.final_act)

    @property
    def num_tokens(self) -> int:
        """Vision tokens per image sent to the LLM: H1 W1, or (H1/k)(W1/k) E after a reducer (stf.md §7)."""
        H, W = self.grid
        if self.reducer == "none":
            return H * W
        return (H // self.k) * (W // self.k) * (self.E if self.reducer == "stf" else 1)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def mlp(dims: Sequence[int], final_act: bool) -> nn.Sequential:
    """Per-token Linear layers (= 1x1 convs) dims[0] -> ... -> dims[-1], GELU between them and, if `final_act`,
    after the last. LLaVA's mlp2x_gelu, MBTF and STF's alignment are all this shape."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_act:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def split_tokens(x: torch.Tensor, E: int) -> torch.Tensor:
    """[B, N, C] -> [B, N*E, C/E]: each token's channels cut into E contiguous chunks, kept consecutive
    (location-major order; stf.md §3.4 step 2 and §11.4)."""
    B, N, C = x.shape
    if C % E:
        raise ValueError(f"E: {C} channels do not split into {E} tokens")
    return x.reshape(B, N * E, C // E)


class MBTF(nn.Module):
    """Multi-Block Token Fusion, Eq. (1): two 1x1 convs over the channel-concatenated block outputs,
    M C1 -> 4 C1 -> C1 (Table 1a). Changed from the paper in ``final_act=False`` (released code)."""

    def __init__(self, vision_hidden: int, num_blocks: int, hidden: int | None = None, final_act: bool = True):
        super().__init__()
        self.num_blocks = num_blocks
        self.fuse = mlp([num_blocks * vision_hidden, hidden or 4 * vision_hidden, vision_hidden], final_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, M*C1] (blocks concatenated on channels) -> [B, N, C1]."""
        return self.fuse(x)


class STF(nn.Module):
    """Spatial Token Fusion, Eq. (2) + E-split + alignment: [B, H1*W1, C1] row-major -> [B, (H1/k)(W1/k)E, C3].

    paper (Table 1b): k x k/stride-k conv C1 -> C2 = k^2 C1, GELU; split into E; 1x1 C2/E -> hidden, GELU;
    1x1 hidden -> C3, GELU. code: k x k concatenation (no parameters); split into E; Linear(k^2 C1/E -> hidden),
    GELU, Linear(hidden -> C3) (no final GELU unless `final_act`).
    """

    def __init__(self, vision_hidden: int, llm_hidden: int, grid: tuple[int, int], k: int = 2, E: int = 1,
                 hidden: int | None = None, variant: Variant = "paper", final_act: bool | None = None):
        super().__init__()
        _choice("variant", variant, VARIANTS)
        self.grid, self.k, self.E, self.variant = tuple(grid), k, E, variant
        c_window = k * k * vision_hidden  # C2 = k^2 C1: the "learnable concatenation" keeps every channel
        if variant == "paper":
            self.conv1 = mlp([c_window, c_window], final_act=True)  # == Conv2d(C1, C2, k, stride=k) + GELU
            hidden = hidden or 4 * llm_hidden
        else:
            self.conv1 = nn.Identity()  # changed from the paper: the released code has no learnable k x k layer
            hidden = hidden or 16 * vision_hidden
        final_act = (variant == "paper") if final_act is None else final_act
        self.align = mlp([c_window // E, hidden, llm_hidden], final_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tokenconcat(x, self.grid, self.k)  # [B, H2*W2, k^2 C1], windows row-major
        x = self.conv1(x)  # [B, H2*W2, C2]
        x = split_tokens(x, self.E)  # [B, H2*W2*E, C2/E]
        return self.align(x)  # [B, H2*W2*E, C3]


class STFProjector(nn.Module):
    """The projector g_theta of one `STFConfig`: [MBTF] -> [AvgPool | TokenConcat | STF | nothing] -> [LLaVA MLP].

    `forward` takes what HF LLaVA passes its projector, [B, H*W, M*C1] (the selected blocks concatenated on
    channels, CLS dropped), or a list of the M per-block tensors [B, H*W, C1] in `config.blocks` order.
    """

    def __init__(self, config: STFConfig):
        super().__init__()
        self.config = config
        c = config
        self.mbtf = (MBTF(c.vision_hidden, len(c.blocks), c.mbtf_hidden, c.act_last) if c.uses_mbtf else None)
        self.stf = (STF(c.vision_hidden, c.llm_hidden, c.grid, c.k, c.E, c.stf_hidden, c.variant, c.final_act)
                    if c.reducer == "stf" else None)
        self.pool = {"avgpool": AvgPool(c.grid, c.k), "tokenconcat": TokenConcat(c.grid, c.k)}.get(c.reducer)
        if self.stf is None:  # LLaVA-1.5 mlp2x_gelu on whatever width reaches it
            width = c.vision_hidden * (c.k * c.k if c.reducer == "tokenconcat" else 1)
            self.mlp = mlp([width, c.llm_hidden, c.llm_hidden], final_act=False)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._gather(features)  # [B, H1*W1, M*C1]
        if self.mbtf is not None:
            x = self.mbtf(x)  # [B, H1*W1, C1]
        if self.stf is not None:
            return self.stf(x)  # [B, (H1/k)(W1/k)E, C3]
        if self.pool is not None:
            x = self.pool(x)  # [B, (H1/k)(W1/k), C1 or k^2 C1]
        return self.mlp(x)

    def _gather(self, features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        M, C, (H, W) = len(self.config.blocks), self.config.vision_hidden, self.config.grid
        if not isinstance(features, torch.Tensor):
            features = list(features)
            if len(features) != M:
                raise ValueError(f"features: expected {M} block outputs (blocks={self.config.blocks}), "
                                 f"got {len(features)}")
            features = torch.cat(features, dim=-1)
        if features.dim() != 3 or features.shape[1:] != (H * W, M * C):
            raise ValueError(f"features: expected [B, {H * W}, {M * C}] ({M} blocks x {C} channels on a {H}x{W} "
                             f"grid, CLS dropped), got {list(features.shape)}")
        return features


def build_projector_config(kind: str, vision_hidden: int, llm_hidden: int, grid: int | tuple[int, int],
                           **knobs) -> STFConfig:
    """The `STFConfig` of `build_projector` (checks the knobs' names)."""
    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    allowed = set(STFConfig.__dataclass_fields__) - {"kind", "vision_hidden", "llm_hidden", "grid"}
    unknown = set(knobs) - allowed
    if unknown:
        raise ValueError(f"knobs: unknown {sorted(unknown)}; known: {sorted(allowed)}")
    return STFConfig(kind=kind, vision_hidden=vision_hidden, llm_hidden=llm_hidden, grid=grid, **knobs)


def build_projector(kind: str, vision_hidden: int, llm_hidden: int, grid: int | tuple[int, int],
                    **knobs) -> STFProjector:
    """One projector of Tables 2-5 by name (see `KINDS`); knobs are `STFConfig` fields (variant, k, E, blocks...)."""
    return STFProjector(build_projector_config(kind, vision_hidden, llm_hidden, grid, **knobs))


# --------------------------------------------------------------------------------------------------
# HF LLaVA integration
# --------------------------------------------------------------------------------------------------


def vision_block_features(vision_tower: nn.Module, pixel_values: torch.Tensor, blocks: Sequence[int],
                          drop_cls: bool = True) -> list[torch.Tensor]:
    """The selected blocks' outputs of an HF vision tower (e.g. `CLIPVisionModel`), one [B, H*W, C] each.

    Raw block outputs (no post-LayerNorm) with the CLS token dropped, as LLaVA's "default" feature strategy.
    """
    out = vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    hs = out.hidden_states
    bad = [b for b in blocks if not -len(hs) <= b < len(hs)]
    if bad:
        raise ValueError(f"blocks: {bad} out of range for {len(hs)} hidden states")
    return [hs[b][:, 1:] if drop_cls else hs[b] for b in blocks]


def config_for_model(config: Any, kind: str = "mbtf_stf", **knobs) -> STFConfig:
    """The `STFConfig` of a projector sized for an HF `LlavaConfig`'s vision tower and decoder (shapes only)."""
    vc, tc = config.vision_config, config.text_config
    side = vc.image_size // vc.patch_size
    knobs.setdefault("num_vision_layers", vc.num_hidden_layers)
    return build_projector_config(kind, vc.hidden_size, tc.hidden_size, (side, side), **knobs)


def projector_for_model(model: nn.Module, kind: str = "mbtf_stf", **knobs) -> STFProjector:
    """A projector sized for an HF `LlavaForConditionalGeneration`'s vision tower and decoder."""
    proj = STFProjector(config_for_model(model.config, kind, **knobs))
    param = next(model.parameters())
    return proj.to(device=param.device, dtype=param.dtype)


def install_projector(model: nn.Module, projector: STFProjector) -> STFProjector:
    """Replace `model.model.multi_modal_projector` of an HF LLaVA with `projector`, in place.

    Sets `config.vision_feature_layer` to the projector's blocks (HF concatenates them on channels) and the
    "default" select strategy (CLS dropped); afterwards each image needs `projector.num_tokens` placeholders.
    The projector's config is recorded as `config.stf_projector` so a loader can rebuild it.
    """
    if not isinstance(projector, STFProjector):
        raise TypeError(f"projector: expected an STFProjector, got {type(projector).__name__}")
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "multi_modal_projector") or not hasattr(model.config, "vision_config"):
        raise TypeError(f"model: expected an HF LlavaForConditionalGeneration, got {type(model).__name__}")
    c, vc, tc = projector.config, model.config.vision_config, model.config.text_config
    side = vc.image_size // vc.patch_size
    expected = (vc.hidden_size, tc.hidden_size, (side, side))
    if (c.vision_hidden, c.llm_hidden, c.grid) != expected:
        raise ValueError(f"projector: built for (vision_hidden, llm_hidden, grid)="
                         f"{(c.vision_hidden, c.llm_hidden, c.grid)}, the model needs {expected}")
    if any(not -(vc.num_hidden_layers + 1) <= b <= vc.num_hidden_layers for b in c.blocks):
        raise ValueError(f"projector: blocks {c.blocks} out of range for a {vc.num_hidden_layers}-block tower")
    inner.multi_modal_projector = projector
    model.config.vision_feature_layer = list(c.blocks) if len(c.blocks) > 1 else c.blocks[0]
    model.config.vision_feature_select_strategy = "default"
    model.config.stf_projector = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(c).items()}
    return projector


def image_token_count(model: nn.Module) -> int:
    """Image placeholders per image the model expects: the projector's output length (or H*W for plain LLaVA)."""
    proj = model.model.multi_modal_projector
    if isinstance(proj, STFProjector):
        return proj.num_tokens
    vc = model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + int(model.config.vision_feature_select_strategy == "full")


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: unknown {value!r}; known: {', '.join(choices)}")
    return value  # type: ignore[return-value]
