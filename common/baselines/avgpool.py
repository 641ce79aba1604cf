"""2x2 average pooling of a visual-token grid (STF's "LLaVA-1.5 (AvgPool)" baseline, stf.md §10.1 item 3).

    X~[i, j] = 1/4 * sum_{a,b in {0,1}} X[2i + a, 2j + b]       (= F.avg_pool2d(x, 2, 2), row-major flatten)

`avgpool_tokens` / `AvgPool` are pure functions on [B, H*W, C] features (before the projector, as STF uses
them, with a retrained projector). The registered reducer `avgpool` applies the same pooling training-free
to the projected visual tokens entering the LLM (layer 0 by default), one frame group at a time; each pooled
token takes the RoPE position of its window's top-left token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.reduction import ReductionContext, Reducer, Selection
from common.registry import POOLERS, register


def _grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(f"grid: {n} tokens are not a square grid; pass grid=(H, W)")
        grid = (s, s)
    H, W = grid
    if H * W != n:
        raise ValueError(f"grid: {H}x{W} does not match {n} tokens")
    return H, W


def avgpool_tokens(x: torch.Tensor, grid: tuple[int, int] | None = None, window: int = 2) -> torch.Tensor:
    """[B, H*W, C] -> [B, (H/w)*(W/w), C]: mean over non-overlapping w x w windows, row-major."""
    B, n, C = x.shape
    H, W = _grid(n, grid)
    if H % window or W % window:
        raise ValueError(f"window: a {window}x{window} window does not tile the {H}x{W} grid")
    xb = x.transpose(1, 2).reshape(B, C, H, W)
    return F.avg_pool2d(xb, window, window).flatten(2).transpose(1, 2)


@POOLERS.register("avgpool")
class AvgPool(nn.Module):
    """Module form of `avgpool_tokens` (no parameters)."""

    def __init__(self, grid: tuple[int, int] | None = None, window: int = 2):
        super().__init__()
        self.grid, self.window = grid, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avgpool_tokens(x, self.grid, self.window)


def window_anchors(grid: tuple[int, int], window: int = 2) -> torch.Tensor:
    """[(H/w)*(W/w)] flat index of each window's top-left token, row-major."""
    H, W = grid
    r = torch.arange(0, H, window)[:, None] * W + torch.arange(0, W, window)[None, :]
    return r.flatten()


@register("avgpool")
class AvgPoolReducer(Reducer):
    """Training-free 2x2 average pooling of the visual tokens entering `layer` (default 0: pre-LLM)."""

    def __init__(self, layer: int = 0, window: int = 2, grid: tuple[int, int] | None = None):
        if not isinstance(layer, int) or layer < 0:
            raise ValueError(f"layer: must be a non-negative layer index, got {layer!r}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window: must be a positive integer, got {window!r}")
        self.layers = (layer,)
        self.window, self.grid = window, grid

    def select(self, ctx: ReductionContext) -> Selection:
        keep, merged, merged_pos = [], [], []
        for b in range(ctx.batch_size):
            vis = ctx.visual_index[b]
            if bool((ctx.visual_orig[b] < 0).any()):
                raise ValueError("avgpool: the visual tokens were already merged; pool an intact grid")
            parts, poss = [], []
            start = 0
            for s, e in ctx.spans[b].images:  # one grid per frame group
                n = e - s
                idx = vis[start:start + n]
                start += n
                grid = _grid(n, self.grid)
                parts.append(avgpool_tokens(ctx.hidden[b, idx][None], grid, self.window)[0])
                poss.append(ctx.position_ids[b, idx[window_anchors(grid, self.window).to(idx.device)]])
            keep.append(torch.zeros(0, dtype=torch.long, device=ctx.hidden.device))
            merged.append(torch.cat(parts))
            merged_pos.append(torch.cat(poss))
        return Selection(keep, merged=merged, merged_positions=merged_pos)
