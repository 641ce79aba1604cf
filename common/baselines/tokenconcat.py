"""TokenConcat: concatenate each 2x2 window of visual tokens into one token (space-to-depth; STF's
"TokenConcat" baseline and the token step of STF itself, stf.md §3.4 and §10.1 item 4).

    X~[i, j] = [X[2i, 2j]; X[2i, 2j+1]; X[2i+1, 2j]; X[2i+1, 2j+1]]   in R^{4C}

Pure tensor code on [B, H*W, C] features before the projector: [B, HW/4, 4C], row-major over windows. The
width changes, so this needs a projector trained for 4C inputs; it is not a training-free reducer and is
registered as a pooler (`common.registry.POOLERS`) rather than a reducer.
"""
from __future__ import annotations

import torch
from torch import nn

from common.baselines.avgpool import _grid
from common.registry import POOLERS


def tokenconcat(x: torch.Tensor, grid: tuple[int, int] | None = None, window: int = 2) -> torch.Tensor:
    """[B, H*W, C] -> [B, (H/w)*(W/w), w*w*C]; within a window the order is row-major (top-left first)."""
    B, n, C = x.shape
    H, W = _grid(n, grid)
    if H % window or W % window:
        raise ValueError(f"window: a {window}x{window} window does not tile the {H}x{W} grid")
    x = x.reshape(B, H // window, window, W // window, window, C)  # [B, i, a, j, b, C]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, i, j, a, b, C]
    return x.reshape(B, (H // window) * (W // window), window * window * C)


@POOLERS.register("tokenconcat")
class TokenConcat(nn.Module):
    """Module form of `tokenconcat` (no parameters)."""

    def __init__(self, grid: tuple[int, int] | None = None, window: int = 2):
        super().__init__()
        self.grid, self.window = grid, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tokenconcat(x, self.grid, self.window)
