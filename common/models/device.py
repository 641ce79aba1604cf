"""Where a model runs and in which precision: one reading of "auto" for every scale and entry point."""
from __future__ import annotations

import os

import torch


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto" (or None): float16 on CUDA (the papers' setting), float32 elsewhere; else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype: expected auto, fp16, bf16 or fp32, got {dtype!r}")
    return table[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" (or None): the process's CUDA device when there is one (under torchrun: cuda:LOCAL_RANK), else CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cpu")
    return torch.device(device)
