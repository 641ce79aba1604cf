"""FLOPs, token and KV-cache accounting, one documented function per convention the four papers use.

Every count here is analytical: it needs only the decoder's dimensions (`DecoderDims`, from an HF config
or a named preset) and how many tokens each decoder layer processes. Nothing runs a model.

Conventions (see shared/prior-art.md §4 for who uses which):

* **MACs, not FLOPs.** FastV, PDrop, SparseVLM and ATP count one multiply-accumulate as one "FLOP".
  `flops_per_mac=2` gives real floating-point operations (what calflops prints, STF's convention).
* **FFN matrices.** FastV's Eq. 5 (and ATP's Eq. 15) count `2ndm` for the feed-forward network; LLaMA's
  SwiGLU has three matrices, so PDrop and SparseVLM's code count `3ndm` (`ffn_matrices=3`).
* **Which tokens.** "n" is either the visual tokens only (the common "3.0T / 3.8T baseline" of
  LLaVA-1.5-7B) or the whole prompt (system + visual + text). Callers pass what they count.
* **Per-layer token counts.** A schedule is a list with one token count per decoder layer.
  `visual_tokens_per_layer` builds one from pruning layers and kept counts under an explicit
  convention; `average_visual_tokens` averages it (SparseVLM's "equivalent tokens", ATP's "average
  token count for all layers").

All functions return exact Python ints where the arithmetic is integral, so golden tests can compare
exactly. Bad inputs (negative or non-integer token counts, more kept tokens than exist, unknown
presets, wrong schedule lengths) raise `ValueError` naming the argument.
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, *, minimum: int = 0) -> int:
    """A token/layer count: an integer (bools and non-integral floats refused) >= minimum."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer count, got {value!r}")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name}: expected an integer count, got {value!r}")
        value = int(value)
    try:
        value = operator.index(value)  # ints, numpy integers, 0-d integer tensors
    except TypeError:
        raise ValueError(f"{name}: expected an integer count, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _check_real(name: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    return value


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def _check_schedule(name: str, schedule: Any, n_layers: int) -> list[int]:
    """An int (same count in every layer) or a sequence/array with exactly one count per layer."""
    if isinstance(schedule, numbers.Integral) and not isinstance(schedule, bool):
        return [_check_count(name, schedule)] * n_layers
    if isinstance(schedule, (str, bytes, Mapping)) or not hasattr(schedule, "__len__"):
        raise ValueError(f"{name}: expected an int or a sequence of per-layer counts, got {type(schedule).__name__}")
    if len(schedule) != n_layers:
        raise ValueError(f"{name}: expected {n_layers} per-layer counts (one per decoder layer), got {len(schedule)}")
    return [_check_count(f"{name}[{i}]", v) for i, v in enumerate(schedule)]


# --------------------------------------------------------------------------------------------------
# Model dimensions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderDims:
    """The decoder dimensions every FLOPs formula needs.

    Attributes:
        n_layers: decoder layers (`num_hidden_layers`), the papers' L / T / Omega.
        hidden: hidden size d (the papers' d or D).
        intermediate: FFN intermediate size m.
        vocab_size: LM-head rows; only STF's parameter-count convention uses it.
        n_heads / n_kv_heads: attention heads and key/value heads; only the KV-cache size uses them
            (grouped-query attention stores n_kv_heads / n_heads of the hidden size per layer).
    """

    n_layers: int
    hidden: int
    intermediate: int
    vocab_size: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden", "intermediate"):
            _check_count(name, getattr(self, name), minimum=1)
        for name in ("vocab_size", "n_heads", "n_kv_heads"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), minimum=1)

    @property
    def kv_hidden(self) -> int:
        """Width of one layer's K (or V) per token: hidden * n_kv_heads / n_heads (= hidden without GQA)."""
        if self.n_heads and self.n_kv_heads:
            return self.hidden * self.n_kv_heads // self.n_heads
        return self.hidden

    @classmethod
    def from_config(cls, config: Any) -> "DecoderDims":
        """Read dimensions from an HF config: `LlamaConfig`, or `LlavaConfig` (uses its `text_config`).

        A plain dict with the same keys works too.
        """
        cfg = getattr(config, "text_config", None) or (
            config.get("text_config") if isinstance(config, Mapping) else None) or config

        def get(key: str, default: Any = None) -> Any:
            if isinstance(cfg, Mapping):
                return cfg.get(key, default)
            return getattr(cfg, key, default)

        missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size") if get(k) is None]
        if missing:
            raise ValueError(f"config: missing {', '.join(missing)} (expected a Llama-family decoder config)")
        return cls(
            n_layers=get("num_hidden_layers"),
            hidden=get("hidden_size"),
            intermediate=get("intermediate_size"),
            vocab_size=get("vocab_size"),
            n_heads=get("num_attention_heads"),
            n_kv_heads=get("num_key_value_heads") or get("num_attention_heads"),
        )

    @classmethod
    def from_preset(cls, name: str) -> "DecoderDims":
        """One of `MODEL_PRESETS` (case-insensitive)."""
        key = str(name).lower()
        if key not in MODEL_PRESETS:
            raise ValueError(f"preset: unknown model {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}")
        return MODEL_PRESETS[key]


# Standard facts about the decoders (Vicuna-v1.5 = LLaMA-2 architecture), not restated by the papers.
MODEL_PRESETS: dict[str, DecoderDims] = {
    "llava-1.5-7b": DecoderDims(32, 4096, 11008, vocab_size=32000, n_heads=32, n_kv_heads=32),
    "llava-1.5-13b": DecoderDims(40, 5120, 13824, vocab_size=32000, n_heads=40, n_kv_heads=40),
    # The mini scale's decoder (DESIGN.md §2): SmolLM2-135M, grouped-query attention 9 heads / 3 KV heads.
    "smollm2-135m": DecoderDims(30, 576, 1536, vocab_size=49152, n_heads=9, n_kv_heads=3),
}
MODEL_PRESETS["vicuna-7b-v1.5"] = MODEL_PRESETS["llava-1.5-7b"]
MODEL_PRESETS["vicuna-13b-v1.5"] = MODEL_PRESETS["llava-1.5-13b"]

# Numbers of LLaVA-1.5's prompt (vicuna_v1 template), used as defaults by the tables.
LLAVA_VISUAL_TOKENS = 576  # 24 x 24 CLIP ViT-L/14-336 patches
LLAVA_SYSTEM_TOKENS = 35  # BOS + system prompt + "USER:" (FastV / VTW code hard-code [0, 35))


def resolve_dims(dims: "DecoderDims | str | Any") -> DecoderDims:
    """Accept a `DecoderDims`, a preset name or an HF config."""
    if isinstance(dims, DecoderDims):
        return dims
    if isinstance(dims, str):
        return DecoderDims.from_preset(dims)
    return DecoderDims.from_config(dims)


# --------------------------------------------------------------------------------------------------
# FastV / PDrop / SparseVLM-code per-layer cost
# --------------------------------------------------------------------------------------------------

FFN_FASTV = 2  # FastV Eq. 5, ATP Eq. 15: 2ndm
FFN_SWIGLU = 3  # PDrop and SparseVLM's modelling_sparse_llama.py: 3ndm (LLaMA's FFN has three matrices)


def layer_flops(n: int, dims: DecoderDims | str | Any, *, ffn_matrices: int = FFN_FASTV) -> int:
    """Cost of one decoder layer over n tokens, in MACs: `4nd^2 + 2n^2 d + ffn_matrices * n d m`.

    FastV (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2", Eq. 5) and ATP-LLaVA (Eq. 15)
    use ffn_matrices=2; PyramidDrop and SparseVLM's official code (`modelling_sparse_llama.py`:
    `4*n*d**2 + 2*n**2*d + 3*n*d*m`) use 3. Terms: 4nd^2 for the Q, K, V, O projections, 2n^2 d for
    the attention scores and the weighted sum, and the FFN.
    """
    dims = resolve_dims(dims)
    n = _check_count("n", n)
    _check_choice("ffn_matrices", ffn_matrices, (2, 3))
    d, m = dims.hidden, dims.intermediate
    return 4 * n * d * d + 2 * n * n * d + ffn_matrices * n * d * m


def schedule_flops(tokens_per_layer: int | Sequence[int], dims: DecoderDims | str | Any, *,
                   ffn_matrices: int = FFN_FASTV, flops_per_mac: int = 1) -> int:
    """Prefill cost summed over the decoder: `flops_per_mac * sum_l layer_flops(n_l)`.

    `tokens_per_layer` is one count for every layer, or a list of n_layers counts (the tokens each
    layer processes). SparseVLM's code sums the per-layer cost like this with n the whole sequence at
    each layer (prior-art.md §1.1).
    """
    dims = resolve_dims(dims)
    counts = _check_schedule("tokens_per_layer", tokens_per_layer, dims.n_layers)
    _check_choice("flops_per_mac", flops_per_mac, (1, 2))
    return flops_per_mac * sum(layer_flops(n, dims, ffn_matrices=ffn_matrices) for n in counts)


def fastv_flops(n: int, n_kept: int, K: int, dims: DecoderDims | str | Any, *,
                ffn_matrices: int = FFN_FASTV, flops_per_mac: int = 1) -> int:
    """FastV's theoretical cost (Sec. 4.3): `K f(n) + (T - K) f(n_kept)`.

    Layers 0..K-1 see all n tokens, the other T-K layers n_kept tokens. VTW ("remove all visual tokens
    after layer k") is the same formula with n_kept = n - N_visual.
    """
    dims = resolve_dims(dims)
    n = _check_count("n", n)
    n_kept = _check_count("n_kept", n_kept)
    if n_kept > n:
        raise ValueError(f"n_kept: {n_kept} kept tokens exceed the {n} tokens that exist")
    K = _check_count("K", K)
    if K > dims.n_layers:
        raise ValueError(f"K: pruning layer {K} is beyond the {dims.n_layers} decoder layers")
    schedule = [n] * K + [n_kept] * (dims.n_layers - K)
    return schedule_flops(schedule, dims, ffn_matrices=ffn_matrices, flops_per_mac=flops_per_mac)


def fastv_relative_flops(n_visual: int, R: float, K: int, dims: DecoderDims | str | Any, *,
                         n_text: int = 0, ffn_matrices: int = FFN_FASTV) -> float:
    """FastV's FLOPs ratio `[K f(n) + (T-K) f(n - floor(R N))] / [T f(n)]`, n = n_text + N.

    R is the fraction of the N visual tokens pruned after layer K. `n_text=0` is FastV's "related to
    image tokens" reading; DyRate's Table III 57.90% for FastV K=3, R=50% on LLaVA-1.5-7B matches the
    all-tokens reading (n_text = 35 system + 20 instruction tokens gives 57.92%; dyrate.md §7.1).
    VTW is R = 1.
    """
    n_visual = _check_count("n_visual", n_visual)
    R = _check_real("R", R, maximum=1.0)
    n_text = _check_count("n_text", n_text)
    n = n_text + n_visual
    n_pruned = math.floor(R * n_visual)
    return fastv_flops(n, n - n_pruned, K, dims, ffn_matrices=ffn_matrices) / (
        resolve_dims(dims).n_layers * layer_flops(n, dims, ffn_matrices=ffn_matrices))


def solve_tokens_for_flops(target: float, dims: DecoderDims | str | Any, *, ffn_matrices: int = FFN_FASTV,
                           flops_per_mac: int = 1) -> float:
    """The (real) token count n at which `schedule_flops(n)` equals `target`.

    Used to document printed numbers that no natural convention gives (e.g. SparseVLM's and ATP's
    9.6 T baseline needs n ~ 720 under 2 FLOPs/MAC and 3ndm).
    """
    dims = resolve_dims(dims)
    target = _check_real("target", target)
    _check_choice("ffn_matrices", ffn_matrices, (2, 3))
    # flops_per_mac * L * (2d n^2 + (4d^2 + f d m) n) = target: positive root of a quadratic.
    d, m = dims.hidden, dims.intermediate
    a = flops_per_mac * dims.n_layers * 2 * d
    b = flops_per_mac * dims.n_layers * (4 * d * d + ffn_matrices * d * m)
    return (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)


# --------------------------------------------------------------------------------------------------
# Per-layer visual-token schedules and their average
# --------------------------------------------------------------------------------------------------

PrunedAt = Literal["input", "output"]
Count = Literal["input", "output"]


def visual_tokens_per_layer(n_visual: int, prune_layers: Sequence[int], kept: Sequence[int], n_layers: int, *,
                            pruned_at: PrunedAt = "input", count: Count = "input") -> list[int]:
    """Visual tokens at each decoder layer (0-based) when pruning to `kept[k]` at layer `prune_layers[k]`.

    Two explicit conventions decide at which layer a new count starts:

    * `pruned_at="input"`: the pruning at layer p acts on layer p's *input* (ATP Table 2: "layer indexes
      at which vision tokens are pruned, starting from 0 and occurring prior to input"; FastV's K).
      Layer p already sees kept[k] tokens, whichever count is tallied.
    * `pruned_at="output"`: the pruning at layer p acts on layer p's *output*, using p's own attention
      (SparseVLM's code). Tallying layer outputs (`count="output"`, what SparseVLM logs as "Equal
      Tokens", prior-art.md §1.1 / issue #35) starts the new count at p; tallying inputs starts it at p+1.

    Kept counts must not grow: pruned tokens are never recovered (merged tokens are included in kept).
    """
    n_visual = _check_count("n_visual", n_visual)
    n_layers = _check_count("n_layers", n_layers, minimum=1)
    _check_choice("pruned_at", pruned_at, ("input", "output"))
    _check_choice("count", count, ("input", "output"))
    if len(prune_layers) != len(kept):
        raise ValueError(f"kept: expected one kept count per pruning layer ({len(prune_layers)}), got {len(kept)}")
    layers = [_check_count(f"prune_layers[{i}]", p) for i, p in enumerate(prune_layers)]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"prune_layers: expected strictly increasing layer indices, got {layers}")
    if layers and layers[-1] >= n_layers:
        raise ValueError(f"prune_layers: layer {layers[-1]} is beyond the {n_layers} decoder layers")
    previous = n_visual
    counts = []
    for i, c in enumerate(kept):
        c = _check_count(f"kept[{i}]", c)
        if c > previous:
            raise ValueError(f"kept[{i}]: {c} kept tokens exceed the {previous} visual tokens that exist there")
        counts.append(c)
        previous = c
    shift = 1 if (pruned_at == "output" and count == "input") else 0
    schedule = [n_visual] * n_layers
    for p, c in zip(layers, counts):
        for layer in range(min(p + shift, n_layers), n_layers):
            schedule[layer] = c
    return schedule


def schedule_from_segments(segments: Sequence[tuple[int, int]]) -> list[int]:
    """A per-layer schedule from `(number_of_layers, tokens)` segments, e.g. [(2, 576), (4, 300), ...].

    SparseVLM's v1.5 code comment `# 2*576  4*300 10*200  16*110` states its "equivalent 192 tokens" in
    this form; its segment lengths (2, 4, 10, 16) do not follow from its pruning layers [2, 6, 15] under
    either convention of `visual_tokens_per_layer` (those give 188.19 or 202.75 instead of 191).
    """
    schedule: list[int] = []
    for i, seg in enumerate(segments):
        if len(seg) != 2:
            raise ValueError(f"segments[{i}]: expected (number_of_layers, tokens), got {seg!r}")
        length = _check_count(f"segments[{i}] layers", seg[0], minimum=1)
        schedule += [_check_count(f"segments[{i}] tokens", seg[1])] * length
    return schedule


def average_visual_tokens(schedule: Sequence[int], n_layers: int) -> float:
    """The visual-token count averaged over all decoder layers: `sum_l n_l / n_layers`.

    This is both SparseVLM's "equivalent token count" (maintainer, issues #4/#10:
    `T = sum (L_{i+1} - L_i) T_i / 32`; 2*576+4*300+10*200+16*110 over 32 = 191) and ATP-LLaVA's
    "average token count for all layers" (atp.md §6.1; Table 2: 143.9375, 144.0, 144.25, 143.875,
    87.875). The two agree on the average; where they differ is which count each layer contributes
    (input or output), which `visual_tokens_per_layer` makes explicit. Averaging over samples is the
    caller's job.
    """
    n_layers = _check_count("n_layers", n_layers, minimum=1)
    return sum(_check_schedule("schedule", schedule, n_layers)) / n_layers


# --------------------------------------------------------------------------------------------------
# KV-cache memory (SparseVLM Table 4, ATP Table 6)
# --------------------------------------------------------------------------------------------------

PAPER_KV_MB_PER_TOKEN = 0.525  # SparseVLM Table 4 and ATP Table 6: storage = 0.525 MB x tokens exactly


def kv_cache_bytes_per_token(dims: DecoderDims | str | Any, *, bytes_per_element: int = 2) -> int:
    """K and V of one token over all layers: `2 * n_layers * kv_hidden * bytes` (fp16: 2 bytes).

    LLaVA-1.5-7B: 2 * 32 * 4096 * 2 = 524,288 bytes = 0.524 MB, which the papers round to 0.525 MB.
    """
    dims = resolve_dims(dims)
    bytes_per_element = _check_count("bytes_per_element", bytes_per_element, minimum=1)
    return 2 * dims.n_layers * dims.kv_hidden * bytes_per_element


def kv_cache_mb(tokens: float, dims: DecoderDims | str | Any | None = None, *, bytes_per_element: int = 2,
                mb_per_token: float | None = None) -> float:
    """KV-cache size in MB (10^6 bytes) of `tokens` (an average over layers may be fractional).

    With `mb_per_token` (e.g. `PAPER_KV_MB_PER_TOKEN`) it is `tokens * mb_per_token`: the papers'
    "Storage Memory" column (302.4 = 0.525 * 576). Without it, the analytical size from `dims`.
    """
    tokens = _check_real("tokens", tokens)
    if mb_per_token is not None:
        return tokens * _check_real("mb_per_token", mb_per_token)
    if dims is None:
        raise ValueError("dims: needed for the analytical KV-cache size (or pass mb_per_token)")
    return tokens * kv_cache_bytes_per_token(dims, bytes_per_element=bytes_per_element) / 1e6


# --------------------------------------------------------------------------------------------------
# STF / MBTF (LLaVA-STF): calflops over the vision tokens
# --------------------------------------------------------------------------------------------------


def linear_params_per_token(dims: DecoderDims | str | Any, *, include_lm_head: bool = True) -> int:
    """Weights one token passes through: `n_layers (4d^2 + 3dm) + vocab * d` (attention + SwiGLU + LM head).

    Vicuna-7B: 32 (4 * 4096^2 + 3 * 4096 * 11008) + 32000 * 4096 = 6.607e9.
    """
    dims = resolve_dims(dims)
    per_token = dims.n_layers * (4 * dims.hidden ** 2 + 3 * dims.hidden * dims.intermediate)
    if include_lm_head:
        if dims.vocab_size is None:
            raise ValueError("dims: vocab_size is needed to count the LM head")
        per_token += dims.vocab_size * dims.hidden
    return per_token


def stf_flops(n_visual: int, dims: DecoderDims | str | Any, *, include_attention: bool = False) -> int:
    """STF's "TFLOPs (calflops)": `2 * N_v * P`, P = `linear_params_per_token` (stf.md §7, derived).

    Real FLOPs (2 per MAC) of the LLM's linear layers over the vision tokens only: 7.61 / 3.81 / 1.90 T
    for 576 / 288 / 144 tokens on Vicuna-7B, matching the printed 7.6 / 3.8 / 1.9. Text tokens, the
    vision encoder and the projector are excluded. `include_attention` adds the score and weighted-sum
    term `2 * n_layers * 2 N_v^2 d` (7.79 / 3.85 / 1.91 T), which the printed numbers do not include.
    """
    dims = resolve_dims(dims)
    n_visual = _check_count("n_visual", n_visual)
    total = 2 * n_visual * linear_params_per_token(dims)
    if include_attention:
        total += 2 * dims.n_layers * 2 * n_visual * n_visual * dims.hidden
    return total


def stf_token_count(grid: int, k: int, E: int) -> int:
    """Tokens after STF with kernel k and E fused tokens per window: (grid/k)^2 * E (stf.md §7)."""
    grid, k, E = _check_count("grid", grid, minimum=1), _check_count("k", k, minimum=1), _check_count("E", E, minimum=1)
    if grid % k:
        raise ValueError(f"k: kernel {k} does not tile the {grid}x{grid} grid")
    return (grid // k) ** 2 * E


# --------------------------------------------------------------------------------------------------
# ATP-LLaVA Eq. 15-16
# --------------------------------------------------------------------------------------------------


def atp_flops(n_visual: int, prune_layers: Sequence[int], kept: Sequence[int], dims: DecoderDims | str | Any, *,
              n_text: int = 0) -> dict[str, int | float]:
    """ATP-LLaVA Eq. 15-16: dense cost, reduction and remaining cost, in MACs.

    Eq. 15: `FLOPs^L = 4Ld^2 + 2L^2 d + 2Ldm` per layer (the FastV formula, ffn_matrices=2).
    Eq. 16: `dFLOPs = sum_k (i_{k+1} - i_k) (FLOPs^L - FLOPs^{L^p_{i_k}})`, with i_{n+1} = n_layers
    (atp.md §6.2) and L^p = n_text + kept visual tokens (the module at index i_k feeds 0-based layer i_k).
    Returns {"dense": 32 FLOPs^L, "reduction": dFLOPs, "total": dense - reduction,
    "reduction_ratio": reduction / dense}. The ATP module's own overhead is not counted (the paper puts
    it in a supplement that is not available).
    """
    dims = resolve_dims(dims)
    n_text = _check_count("n_text", n_text)
    visual_tokens_per_layer(n_visual, prune_layers, kept, dims.n_layers, pruned_at="input")  # validates
    L = n_text + n_visual
    dense = dims.n_layers * layer_flops(L, dims, ffn_matrices=FFN_FASTV)
    boundaries = list(prune_layers) + [dims.n_layers]
    reduction = sum((boundaries[k + 1] - boundaries[k]) * (layer_flops(L, dims) - layer_flops(n_text + c, dims))
                    for k, c in enumerate(kept))
    return {"dense": dense, "reduction": reduction, "total": dense - reduction, "reduction_ratio": reduction / dense}


# --------------------------------------------------------------------------------------------------
# SparseVLM Sec. 3.4 / App. A.2 (Eq. 12)
# --------------------------------------------------------------------------------------------------

Variant = Literal["as_printed", "corrected"]


@dataclass(frozen=True)
class SparseStage:
    """One sparsification layer i of SparseVLM's Eq. 12.

    N: visual tokens pruned there; C: reconstructed (cluster) tokens added back; Lr: recycled tokens
    (tau * N); Lt, Lv: text-rater and visual tokens at that layer (the shape of its attention slice P).
    """

    N: int
    C: int
    Lr: int
    Lt: int
    Lv: int

    def __post_init__(self) -> None:
        for name in ("N", "C", "Lr", "Lt", "Lv"):
            _check_count(name, getattr(self, name))
        if self.N > self.Lv:
            raise ValueError(f"N: {self.N} pruned tokens exceed the {self.Lv} visual tokens that exist")
        if self.Lr > self.N:
            raise ValueError(f"Lr: {self.Lr} recycled tokens exceed the {self.N} pruned tokens")
        if self.C > self.Lr:
            raise ValueError(f"C: {self.C} cluster centres exceed the {self.Lr} recycled tokens")


def sparsevlm_layer_reduction(N: int, C: int, D: int) -> int:
    """SparseVLM Sec. 3.4, per-layer saving as printed: `6(N-C)D^2 + 2(N-C)^2 D`.

    Assumes a 2-matrix FFN with intermediate size D (typo list item 6 in sparsevlm.md §4) and counts the
    attention saving as 2(N-C)^2 D, which is not the exact saving 2D[n^2 - (n-N+C)^2] (item 5). The exact
    version is `layer_flops(n) - layer_flops(n - N + C)`; see `sparsevlm_savings_exact`.
    """
    N, C, D = _check_count("N", N), _check_count("C", C), _check_count("D", D, minimum=1)
    if C > N:
        raise ValueError(f"C: {C} reconstructed tokens exceed the {N} pruned tokens")
    return 6 * (N - C) * D * D + 2 * (N - C) ** 2 * D


def sparsevlm_overheads(stage: SparseStage, D: int, *, variant: Variant = "corrected",
                        seq_len: int | None = None) -> dict[str, int]:
    """Overhead terms of SparseVLM App. A.2 for one sparsification layer, each in (multiply-)adds.

    * significance (Eq. 4): `Lt * Lv` (Lt - 1 additions and one division per visual token);
    * rank (SVD of P): `Lt * Lv * min(Lt, Lv)`;
    * aggregation: nearest neighbours `Lr(Lr-1) * 2D`, density `Lr^2 * 2D`, distance indicator
      `Lr^2 * 2D`, plus selecting the centres: A.2 prints "+L" (`variant="as_printed"`, needs `seq_len`),
      the main text "+Lr" (`"corrected"`, typo item 3);
    * reconstruction (Eq. 11): `D (Lr - C)` additions (the centre itself is excluded).

    The one-off rater cost (Eq. 7) is `sparsevlm_rater_flops`.
    """
    D = _check_count("D", D, minimum=1)
    _check_choice("variant", variant, ("as_printed", "corrected"))
    if variant == "as_printed":
        if seq_len is None:
            raise ValueError("seq_len: the as-printed centre-selection term is the sequence length L; pass it")
        select = _check_count("seq_len", seq_len)
    else:
        select = stage.Lr
    Lr = stage.Lr
    return {
        "significance": stage.Lt * stage.Lv,
        "rank": stage.Lt * stage.Lv * min(stage.Lt, stage.Lv),
        "aggregation": Lr * (Lr - 1) * 2 * D + Lr * Lr * 2 * D + Lr * Lr * 2 * D + select,
        "reconstruction": D * (Lr - stage.C),
    }


def sparsevlm_rater_flops(Lt: int, Lv: int, D: int) -> int:
    """Rater selection (Eq. 7), done once: the `H_v H_q^T` product, `Lt * Lv * 2D` (softmax/mean neglected)."""
    return _check_count("Lt", Lt) * _check_count("Lv", Lv) * 2 * _check_count("D", D, minimum=1)


def sparsevlm_eq12(stages: Sequence[SparseStage], D: int, *, Lt: int, Lv: int,
                   variant: Variant = "corrected") -> dict[str, int]:
    """SparseVLM Eq. 12: total saving = reduction part - overhead part, summed over sparsification layers.

    `variant="as_printed"` evaluates the printed expression literally:
    `sum_i [6(N_i-C_i)D^2 + 2(N_i-C_i)^2 D] - (2 Lt Lv D - sum_i [Lt_i Lv_i (1 + min(Lt_i, Lv_i))
    + (6 Lr_i^2 + 2 Lr_i) D + Lr_i])`, so the per-layer overheads are *added back* (typo item 1) and the
    recycling terms are the printed ones (item 2).

    `variant="corrected"` fixes items 1-3: overhead = `2 Lt Lv D + sum_i [Lt_i Lv_i (1 + min) + aggregation
    + reconstruction]`, i.e. the recycling cost `6 Lr^2 D - Lr D - C D + Lr` that A.2's own terms sum to,
    with "+Lr" for centre selection. It keeps the paper's reduction part (items 5-7 are corrected by
    `sparsevlm_savings_exact`, item 4 concerns only `sparsevlm_eq12_approx`, item 8 changes no count).
    """
    _check_choice("variant", variant, ("as_printed", "corrected"))
    D = _check_count("D", D, minimum=1)
    reduction = sum(sparsevlm_layer_reduction(s.N, s.C, D) for s in stages)
    rater = sparsevlm_rater_flops(Lt, Lv, D)
    if variant == "as_printed":
        per_layer = sum(s.Lt * s.Lv * (1 + min(s.Lt, s.Lv)) + (6 * s.Lr ** 2 + 2 * s.Lr) * D + s.Lr for s in stages)
        overhead = rater - per_layer
    else:
        per_layer = sum(sum(sparsevlm_overheads(s, D).values()) for s in stages)
        overhead = rater + per_layer
    return {"reduction": reduction, "overhead": overhead, "savings": reduction - overhead}


def sparsevlm_eq12_approx(N: Sequence[int], D: int, *, Lt: int, Lv: int, Lt_layers: Sequence[int],
                          Lv_layers: Sequence[int], tau: float | None = None, theta: float | None = None) -> float:
    """The two approximations printed after Eq. 12 (substituting C = x N, Lr = tau N, min(Lt, Lv) = Lt).

    With `tau` and `theta` (x = tau * theta): `-2 Lt Lv D + sum_i D (6 D N_i (1-x) + N_i^2 (2 + 2x^2 - 4x
    - 6 tau^2)) - Lt_i^2 Lv_i`. Without them, the last form `-2 Lt Lv D + sum_i D N_i (6D + 2 N_i) -
    Lt_i^2 Lv_i`, which also drops the -6 tau^2 term although only x was declared small (typo item 4:
    with the code's tau = 0.3, 6 tau^2 = 0.54 against 2).
    """
    D = _check_count("D", D, minimum=1)
    if not (len(N) == len(Lt_layers) == len(Lv_layers)):
        raise ValueError("N: expected N, Lt_layers and Lv_layers to have one entry per sparsification layer")
    if (tau is None) != (theta is None):
        raise ValueError("tau: pass both tau and theta, or neither")
    if tau is not None:
        tau = _check_real("tau", tau, maximum=1.0)
        x = tau * _check_real("theta", theta, maximum=1.0)
    total = -2.0 * _check_count("Lt", Lt) * _check_count("Lv", Lv) * D
    for i, (n, lt, lv) in enumerate(zip(N, Lt_layers, Lv_layers)):
        n, lt, lv = _check_count(f"N[{i}]", n), _check_count(f"Lt_layers[{i}]", lt), _check_count(f"Lv_layers[{i}]", lv)
        if tau is None:
            total += D * n * (6 * D + 2 * n) - lt * lt * lv
        else:
            total += D * (6 * D * n * (1 - x) + n * n * (2 + 2 * x * x - 4 * x - 6 * tau * tau)) - lt * lt * lv
    return total


def sparsevlm_savings_exact(tokens_dense: int, tokens_per_layer: Sequence[int], stages: Mapping[int, SparseStage],
                            dims: DecoderDims | str | Any, *, Lt: int, Lv: int,
                            ffn_matrices: int = FFN_SWIGLU) -> dict[str, int]:
    """SparseVLM's saving with typos 5-7 corrected: exact per-layer costs on the real (SwiGLU) decoder.

    `tokens_per_layer` is the whole sequence at each layer after pruning (cumulative: tokens pruned at a
    layer stay pruned, item 7); the saving is `schedule_flops(tokens_dense) - schedule_flops(schedule)`
    (items 5 and 6: exact attention term, 3-matrix FFN of width m). Overheads (corrected A.2 terms) are
    counted only at the sparsification layers given as keys of `stages`, plus the one-off rater cost.
    """
    dims = resolve_dims(dims)
    dense = schedule_flops(tokens_dense, dims, ffn_matrices=ffn_matrices)
    pruned = schedule_flops(tokens_per_layer, dims, ffn_matrices=ffn_matrices)
    for layer in stages:
        if not 0 <= _check_count("stages layer", layer) < dims.n_layers:
            raise ValueError(f"stages: layer {layer} is outside the {dims.n_layers} decoder layers")
    overhead = sparsevlm_rater_flops(Lt, Lv, dims.hidden) + sum(
        sum(sparsevlm_overheads(s, dims.hidden).values()) for s in stages.values())
    reduction = dense - pruned
    return {"dense": dense, "reduction": reduction, "overhead": overhead, "savings": reduction - overhead}


# --------------------------------------------------------------------------------------------------
# DyRate: FastV's ratio summed over a generation with a per-step rate
# --------------------------------------------------------------------------------------------------


def dyrate_generation_flops(n_prompt: int, n_visual: int, rates: Sequence[float], K: int,
                            dims: DecoderDims | str | Any, *, ffn_matrices: int = FFN_FASTV) -> dict[str, float]:
    """DyRate without a KV cache (dyrate.md §7.2): `sum_t K f(n_t) + (L-K) f(n_t - floor(R_t N))`.

    n_t = n_prompt + t - 1 is the sequence at generation step t (the prompt includes the N visual
    tokens); `rates[t-1]` is R_t. Returns the reduced and dense (`sum_t L f(n_t)`) totals and their
    ratio. The rate predictor's cost (4HC MACs per step) is negligible and not counted.
    """
    dims = resolve_dims(dims)
    n_prompt, n_visual = _check_count("n_prompt", n_prompt), _check_count("n_visual", n_visual)
    if n_visual > n_prompt:
        raise ValueError(f"n_visual: {n_visual} visual tokens exceed the {n_prompt}-token prompt")
    if len(rates) == 0:
        raise ValueError("rates: expected one compression rate per generation step, got none")
    reduced = dense = 0
    for t, R in enumerate(rates, start=1):
        n_t = n_prompt + t - 1
        R = _check_real(f"rates[{t - 1}]", R, maximum=1.0)
        reduced += fastv_flops(n_t, n_t - math.floor(R * n_visual), K, dims, ffn_matrices=ffn_matrices)
        dense += dims.n_layers * layer_flops(n_t, dims, ffn_matrices=ffn_matrices)
    return {"reduced": reduced, "dense": dense, "ratio": reduced / dense}
