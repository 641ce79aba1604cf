"""The one normaliser from paper settings (32-layer LLaVA-1.5-7B, 576 visual tokens) to any scale (DESIGN.md §6).

- Layers map proportionally: layer l of 32 -> ``round(l * n_layers / 32)`` (Python's round: halves to even).
- Budgets keep the same FRACTION of visual tokens: 192/128/64 of 576 -> 33.3/22.2/11.1 %, STF's 144 -> 25 %.
  `keep_count` rounds half up (``floor(f * n + 0.5)``): 64 of 576 at n=144 gives exactly 16, and a fraction
  never rounds to a count above n.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

PAPER_LAYERS = 32  # LLaVA-1.5-7B decoder depth
PAPER_VISUAL = 576  # LLaVA-1.5 visual tokens per image (24 x 24)
PAPER_BUDGETS = {192: 192 / 576, 128: 128 / 576, 64: 64 / 576, 144: 144 / 576}


def map_layer(layer: int, n_layers: int, paper_layers: int = PAPER_LAYERS) -> int:
    """Layer `layer` of a `paper_layers`-deep model -> the proportional layer of an `n_layers`-deep one."""
    if not isinstance(n_layers, Integral) or n_layers <= 0:
        raise ValueError(f"n_layers: must be a positive integer, got {n_layers!r}")
    if not isinstance(layer, Integral) or not 0 <= layer <= paper_layers:
        raise ValueError(f"layer: must be an integer in [0, {paper_layers}], got {layer!r}")
    return min(int(round(layer * n_layers / paper_layers)), n_layers)


def budget_fraction(budget: float | int, paper_visual: int = PAPER_VISUAL) -> float:
    """A float in [0, 1] is a fraction; an int is a paper budget out of `paper_visual` tokens."""
    if isinstance(budget, bool):
        raise ValueError(f"budget: expected a fraction or a token count, got {budget!r}")
    if isinstance(budget, Integral):
        if budget < 0:
            raise ValueError(f"budget: must be >= 0, got {budget}")
        if budget > paper_visual:
            raise ValueError(f"budget: {budget} tokens is more than the {paper_visual} paper visual tokens")
        return budget / paper_visual
    if isinstance(budget, Real):
        if not 0.0 <= float(budget) <= 1.0 or math.isnan(float(budget)):
            raise ValueError(f"budget: a fraction must lie in [0, 1], got {budget}")
        return float(budget)
    raise ValueError(f"budget: expected a float fraction or an int paper budget, got {type(budget).__name__}")


def keep_count(fraction_or_paper_budget: float | int, n_visual: int, paper_visual: int = PAPER_VISUAL) -> int:
    """Visual tokens to keep out of `n_visual` for a fraction (float) or a paper budget (int of 576)."""
    if not isinstance(n_visual, Integral) or n_visual < 0:
        raise ValueError(f"n_visual: must be a non-negative integer, got {n_visual!r}")
    f = budget_fraction(fraction_or_paper_budget, paper_visual)
    return min(n_visual, int(math.floor(f * n_visual + 0.5)))


def check_count(k: int, n_visual: int, name: str = "budget") -> int:
    """Validate an absolute kept count against the visual tokens present."""
    if not isinstance(k, Integral) or k < 0:
        raise ValueError(f"{name}: must be a non-negative integer, got {k!r}")
    if k > n_visual:
        raise ValueError(f"{name}: keeping {k} tokens is more than the {n_visual} visual tokens present")
    return int(k)


def check_keep_spec(budget: float | int | None = None, keep: int | None = None,
                    ratio: float | None = None) -> float | None:
    """Validate a reducer's keep specification when it is built (not at its first forward), as `resolve_keep`
    reads it later; returns `ratio`, defaulting to FastV's R = 0.5 when nothing is given."""
    if budget is None and keep is None and ratio is None:
        ratio = 0.5
    if budget is not None:
        budget_fraction(budget)
    if keep is not None and (not isinstance(keep, int) or keep < 0):
        raise ValueError(f"keep: must be a non-negative integer, got {keep!r}")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: the pruned fraction R must lie in [0, 1], got {ratio}")
    return ratio


def resolve_keep(n_visual: int, *, budget: float | int | None = None, keep: int | None = None,
                 ratio: float | None = None) -> int:
    """Kept count from exactly one of: `budget` (fraction or paper budget), `keep` (absolute count at this
    scale), `ratio` (FastV's R, the fraction PRUNED; kept = round(n * (1 - R)), Python round as in FastV)."""
    given = [x is not None for x in (budget, keep, ratio)]
    if sum(given) != 1:
        raise ValueError("budget/keep/ratio: give exactly one of them")
    if budget is not None:
        return keep_count(budget, n_visual)
    if keep is not None:
        return check_count(keep, n_visual, "keep")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: the pruned fraction R must lie in [0, 1], got {ratio}")
    return int(round(n_visual * (1.0 - ratio)))
