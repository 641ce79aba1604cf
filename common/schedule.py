"""The budget as a value, and the one map from paper settings to any scale (DESIGN.md §6).

The papers speak of LLaVA-1.5-7B: 32 decoder layers and 576 visual tokens per image, with budgets such as
192 / 128 / 64 tokens (SparseVLM, FastV) or 144 (STF), pruning "after layer 2" (FastV's K). Every other
model keeps the same FRACTION of its visual tokens at the proportional layer. This module is the only
place that knows those constants; reducers, tables and the run layer ask it.

    Budget.paper(192)            # 192 of 576 visual tokens: keeps 48 of 144 at toy scale
    Budget.fraction(0.25)        # a quarter of whatever is there
    Budget.pruned(0.5)           # FastV's R: prune half, kept = round(N (1 - R)) (Python round, as FastV)
    Budget.count(16)             # exactly 16 visual tokens (an absolute count at THIS scale)
    Budget.parse("192/576")      # the CLI form; "25%", "R=0.5" and "keep=16" too

A bare int or float is never a budget: `FastV(budget=1)` once meant "1 of 576" to one reader and "keep all"
to another. Reducers take a `Budget` and refuse anything else.

Layers map proportionally: layer l of 32 -> ``round(l * n_layers / 32)`` (Python's round: halves to even).
`Budget.keep` rounds half up (``floor(f * n + 0.5)``): 64 of 576 at n=144 gives exactly 16, and a fraction
never rounds to a count above n.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

PAPER_LAYERS = 32  # LLaVA-1.5-7B decoder depth
PAPER_VISUAL = 576  # LLaVA-1.5 visual tokens per image (24 x 24)
PAPER_BUDGETS = (192, 128, 64)  # the budgets of SparseVLM's and FastV's tables
STF_BUDGET = 144  # STF's fused token count (a quarter of 576)
FASTV_K = 2  # FastV (and DyRate, SparseVLM's first scoring layer): act after layer 2 of 32

BudgetKind = Literal["fraction", "pruned", "count"]


# ------------------------------------------------------------------------------------------- layers
def map_layer(layer: int, n_layers: int, paper_layers: int = PAPER_LAYERS) -> int:
    """Layer `layer` of a `paper_layers`-deep model -> the proportional layer of an `n_layers`-deep one."""
    if not isinstance(n_layers, Integral) or n_layers <= 0:
        raise ValueError(f"n_layers: must be a positive integer, got {n_layers!r}")
    if not isinstance(layer, Integral) or not 0 <= layer <= paper_layers:
        raise ValueError(f"layer: must be an integer in [0, {paper_layers}], got {layer!r}")
    return min(int(round(layer * n_layers / paper_layers)), n_layers)


def pruning_layer(n_layers: int, paper_layer: int = FASTV_K) -> int:
    """A pruning layer that scores with the attention of the layer before it (FastV's K = 2 of 32), mapped to
    this depth and at least 1 (layer 0 has no attention before it)."""
    return max(1, map_layer(paper_layer, n_layers))


# ------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """How many visual tokens a method keeps, independent of the scale.

    kind "fraction": keep ``floor(value * n + 0.5)`` of n (paper budgets are fractions of `of`);
    kind "pruned": FastV's R, the fraction pruned; keep ``round(n * (1 - value))`` (Python round, as FastV);
    kind "count": keep exactly ``value`` tokens (an error where fewer are present).
    `of` is the paper's visual-token total a paper budget was stated against (576, or 2048 for a video
    table), kept for labels; None for budgets not stated in paper tokens.
    """

    kind: BudgetKind
    value: float
    of: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fraction", "pruned", "count"):
            raise ValueError(f"kind: expected 'fraction', 'pruned' or 'count', got {self.kind!r}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, Real) or math.isnan(float(v)):
            raise ValueError(f"value: expected a number, got {v!r}")
        if self.kind == "count":
            if not isinstance(v, Integral) or v < 0:
                raise ValueError(f"count: must be a non-negative integer, got {v!r}")
        elif not 0.0 <= float(v) <= 1.0:
            what = "the pruned fraction R" if self.kind == "pruned" else "a kept fraction"
            raise ValueError(f"budget: {what} must lie in [0, 1], got {v}")

    # ---- constructors
    @classmethod
    def paper(cls, tokens: int | float, of: int = PAPER_VISUAL) -> "Budget":
        """`tokens` of the paper's `of` visual tokens (192 of 576), kept as that fraction at any scale."""
        if isinstance(tokens, bool) or not isinstance(tokens, Real) or not 0 <= tokens <= of:
            raise ValueError(f"budget: a paper budget must lie in [0, {of}] tokens, got {tokens!r}")
        return cls("fraction", float(tokens) / of, int(of))

    @classmethod
    def fraction(cls, f: float) -> "Budget":
        """Keep the fraction `f` of the visual tokens present."""
        if isinstance(f, Integral) and not isinstance(f, bool) and f not in (0, 1):
            raise ValueError(f"budget: Budget.fraction takes a fraction in [0, 1], got the integer {f}; "
                             f"for paper tokens use Budget.paper({f}), for a count Budget.count({f})")
        return cls("fraction", float(f))

    @classmethod
    def pruned(cls, R: float) -> "Budget":
        """FastV's R: prune the fraction R, keep ``round(N (1 - R))``."""
        return cls("pruned", float(R))

    @classmethod
    def count(cls, k: int) -> "Budget":
        """Keep exactly `k` visual tokens (at this scale)."""
        return cls("count", k)

    @classmethod
    def keep_all(cls) -> "Budget":
        return cls("fraction", 1.0)

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """The CLI / config-file form: "192/576" or "192" (paper tokens of 576), "25%", "R=0.5", "keep=16"."""
        s = str(text).strip().replace(" ", "")
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(?:/(\d+))?", s)
        if m:
            return cls.paper(float(m.group(1)), int(m.group(2)) if m.group(2) else PAPER_VISUAL)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", s)
        if m:
            return cls.fraction(float(m.group(1)) / 100.0)
        m = re.fullmatch(r"[Rr]=(\d*\.?\d+)", s)
        if m:
            return cls.pruned(float(m.group(1)))
        m = re.fullmatch(r"keep=(\d+)", s)
        if m:
            return cls.count(int(m.group(1)))
        raise ValueError(f"budget: cannot read {text!r}; use '192/576' (paper tokens), '25%', 'R=0.5' or 'keep=16'")

    @classmethod
    def coerce(cls, budget: "Budget", name: str = "budget") -> "Budget":
        """Validate that `budget` is a Budget (reducers call this when they are built)."""
        if isinstance(budget, Budget):
            return budget
        raise TypeError(f"{name}: expected a common.schedule.Budget, got {type(budget).__name__} {budget!r}; "
                        "write Budget.paper(192) for 192 of 576 tokens, Budget.fraction(0.25), Budget.pruned(0.5) "
                        "(FastV's R) or Budget.count(16)")

    # ---- use
    def keep(self, n_visual: int) -> int:
        """Visual tokens to keep out of `n_visual`."""
        if isinstance(n_visual, bool) or not isinstance(n_visual, Integral) or n_visual < 0:
            raise ValueError(f"n_visual: must be a non-negative integer, got {n_visual!r}")
        if self.kind == "count":
            if self.value > n_visual:
                raise ValueError(f"budget: keeping {self.value} tokens is more than the {n_visual} visual tokens present")
            return int(self.value)
        if self.kind == "pruned":
            return int(round(n_visual * (1.0 - float(self.value))))
        return min(int(n_visual), int(math.floor(float(self.value) * n_visual + 0.5)))

    @property
    def kept_fraction(self) -> float | None:
        """The kept fraction, or None for an absolute count."""
        if self.kind == "count":
            return None
        return float(self.value) if self.kind == "fraction" else 1.0 - float(self.value)

    @property
    def paper_tokens(self) -> float | None:
        """The budget in paper tokens (of `of`, default 576), or None for an absolute count."""
        f = self.kept_fraction
        return None if f is None else f * (self.of or PAPER_VISUAL)

    @property
    def is_keep_all(self) -> bool:
        return self.kept_fraction == 1.0

    def label(self) -> str:
        """How tables print it: "192/576", "25.0%", "R=0.5", "keep 16"."""
        if self.kind == "count":
            return f"keep {self.value}"
        if self.kind == "pruned":
            return f"R={self.value:g}"
        if self.of is not None:
            return f"{self.paper_tokens:g}/{self.of}"
        return f"{100 * self.value:.1f}%"

    def __str__(self) -> str:
        return self.label()


def keep_count(budget: Budget, n_visual: int) -> int:
    """Kept visual tokens of `budget` out of `n_visual` (= `Budget.coerce(budget).keep(n_visual)`)."""
    return Budget.coerce(budget).keep(n_visual)
