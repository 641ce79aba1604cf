"""Shared plot style and the reusable plots: pruning-mask overlays and attention-share curves.

    from common.plots import apply_style, new_figure, plot_token_mask, plot_share_curves
    from common.artifacts import save_figure
    fig, ax = new_figure()
    plot_share_curves(steps, {"image": img_share, "response": resp_share}, ax=ax)
    save_figure(fig, "figures/dyrate/fig2")

Every figure goes through `apply_style()` (a seaborn theme, one palette, fixed font sizes) so the four
papers' figures look alike; `save_figure` in `common.artifacts` writes them.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

# No `matplotlib.use(...)` here: headless runs get Agg by default, and forcing it would stop the walkthrough
# notebooks' inline backend from showing any figure.
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

PALETTE = "colorblind"
# Fixed colours per token type, so every attention plot uses the same ones.
_COLORS = sns.color_palette(PALETTE, 10)
TOKEN_TYPE_COLORS = {"image": _COLORS[0], "response": _COLORS[1], "instruction": _COLORS[2], "system": _COLORS[7]}
PRUNED_RGBA = (0.05, 0.05, 0.05, 0.7)  # dark veil over pruned tokens
FIG_WIDTH = 6.0  # inches; one column of a paper at the shared dpi


def apply_style() -> None:
    """The project's matplotlib/seaborn style (idempotent)."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1,
                  rc={"figure.dpi": 100, "savefig.bbox": "tight", "axes.titlesize": "medium",
                      "legend.frameon": False, "pdf.fonttype": 42, "svg.hashsalt": "tokenprune"})


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = FIG_WIDTH, height: float | None = None,
               squeeze: bool = True, **kwargs: Any) -> tuple[plt.Figure, Any]:
    """`plt.subplots` under the shared style; height defaults to a 4:3 panel aspect."""
    apply_style()
    if height is None:
        height = width / ncols * 0.75 * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=squeeze, constrained_layout=True, **kwargs)


def _as_image_array(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image: expected an [H, W] or [H, W, C] image, got shape {arr.shape}")
    return arr


def plot_token_mask(image: Any, keep_mask: np.ndarray | Sequence[np.ndarray], ax: Any = None,
                    title: str | Sequence[str] | None = None) -> list[Any]:
    """Show which visual tokens are kept: the image with pruned grid cells darkened.

    Args:
        image: PIL image or array [H, W(, C)].
        keep_mask: bool array [H_grid, W_grid] (True = kept), or a list of such, one panel per layer.
        ax: an axis (one mask) or a sequence of axes (one per mask); default: a new row of panels.
        title: one title, or one per panel (default per panel: "kept k/n").
    Returns the list of axes drawn on.
    """
    img = _as_image_array(image)
    if isinstance(keep_mask, (list, tuple)):
        masks = [np.asarray(m) for m in keep_mask]
    else:
        arr = np.asarray(keep_mask)
        masks = [arr] if arr.ndim == 2 else list(arr)  # [n_layers, H_grid, W_grid] also works
    for i, m in enumerate(masks):
        if m.ndim != 2:
            raise ValueError(f"keep_mask: expected [H_grid, W_grid] masks, mask {i} has shape {m.shape}")
    if ax is None:
        _, axes = new_figure(1, len(masks), width=min(FIG_WIDTH * len(masks) / 2, 2.4 * len(masks)) + 0.6,
                             height=2.6, squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != len(masks):
        raise ValueError(f"ax: {len(axes)} axes for {len(masks)} masks")
    titles = [title] * len(masks) if isinstance(title, str) or title is None else list(title)
    if len(titles) != len(masks):
        raise ValueError(f"title: {len(titles)} titles for {len(masks)} masks")
    h, w = img.shape[:2]
    for a, m, t in zip(axes, masks, titles):
        keep = m.astype(bool)
        veil = np.zeros((*keep.shape, 4))
        veil[~keep] = PRUNED_RGBA
        a.imshow(img, extent=(0, w, h, 0), cmap="gray" if img.ndim == 2 else None)
        a.imshow(veil, extent=(0, w, h, 0), interpolation="nearest")
        a.set_xticks([])
        a.set_yticks([])
        a.grid(False)
        a.set_title(t if t is not None else f"kept {int(keep.sum())}/{keep.size}")
    return axes


def plot_share_curves(steps: Sequence[float] | np.ndarray, shares: Mapping[str, np.ndarray], ax: Any = None, *,
                      band: str = "sem", ylabel: str = "attention share", xlabel: str = "generation step",
                      colors: Mapping[str, Any] | None = None) -> Any:
    """Mean curve per group with a shaded band, e.g. attention share per token type over generation steps.

    Args:
        steps: x values [n_steps].
        shares: name -> array [n_samples, n_steps]; NaN marks steps a sample did not reach.
        band: "sem" (standard error), "std", or "none".
        colors: name -> colour (default: token-type colours where the name matches, else the palette).
    Returns the axis.
    """
    if band not in ("sem", "std", "none"):
        raise ValueError(f"band: expected 'sem', 'std' or 'none', got {band!r}")
    x = np.asarray(steps, dtype=float)
    if ax is None:
        _, ax = new_figure()
    palette = iter(sns.color_palette(PALETTE, max(len(shares), 1)))
    for name, values in shares.items():
        y = np.asarray(values, dtype=float)
        if y.ndim == 1:
            y = y[None, :]
        if y.ndim != 2 or y.shape[1] != x.size:
            raise ValueError(f"shares[{name!r}]: expected [n_samples, {x.size}], got shape {np.shape(values)}")
        color = (colors or {}).get(name) or TOKEN_TYPE_COLORS.get(name) or next(palette)
        count = np.sum(~np.isnan(y), axis=0)
        with warnings.catch_warnings():  # steps no sample reached: NaN, drawn as a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(y, axis=0)
            spread = np.nanstd(y, axis=0)
        if band == "sem":
            spread = spread / np.sqrt(np.maximum(count, 1))
        ax.plot(x, mean, label=name, color=color)
        if band != "none":
            ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.25, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax
