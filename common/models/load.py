"""One loader for the model of every scale, and one hasher for every checkpoint.

    vlm = load_vlm("toy")                                       # checkpoints/toy-llava
    vlm = load_vlm("paper", "/models/llava-1.5-7b-hf", device="cuda", dtype=torch.bfloat16)
    key = checkpoint_sha256("checkpoints/toy-llava")          # identifies a model in caches and sidecars

`checkpoint_sha256` hashes every file of a checkpoint folder (names and contents; subfolders such as a
training run's resumable state do not define the model). A 7B model is 13 GB, so a file's digest is
remembered in `.cache/file-hashes.json` under its path, size and modification time: unchanged files are
never read twice, and a file rewritten in place gets a new mtime and is hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from common.artifacts import atomic_write_text, file_sha256
from common.models.device import resolve_device, resolve_dtype
from common.models.llava_hf import load_paper_vlm
from common.models.mini import load_mini_vlm
from common.models.toy import ToyVLM
from common.paths import CACHE, CHECKPOINTS

SCALES = ("toy", "mini", "paper")
DEFAULT_CHECKPOINTS = {"toy": CHECKPOINTS / "toy-llava", "mini": CHECKPOINTS / "mini-llava"}
_HASH_MEMO = CACHE / "file-hashes.json"


def _memo_sha256(path: Path) -> str:
    """`file_sha256(path)`, remembered by (absolute path, size, mtime_ns)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        memo = json.loads(_HASH_MEMO.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = file_sha256(path)
    if st.st_size >= 1 << 26:  # only big files are worth remembering (64 MB: a few hundred ms to hash)
        memo[key] = digest
        try:
            atomic_write_text(_HASH_MEMO, json.dumps(memo, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache folder only costs the next run a re-hash
    return digest


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 over the names and contents of a checkpoint folder's own files (or of one file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    if not files:
        raise FileNotFoundError(f"checkpoint: {path} holds no files")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_memo_sha256(p)}\n".encode())
    return h.hexdigest()


def load_vlm(scale: str, checkpoint: str | os.PathLike[str] | None = None, *, device: Any = "auto",
             dtype: Any = "auto") -> Any:
    """The `VisionLanguageModel` of a scale, on `device` in `dtype`.

    toy: a `common.models.toy.ToyVLM` folder (default checkpoints/toy-llava); mini: DINOv2-S + SmolLM2 with
    the projector folder (default checkpoints/mini-llava; `make setup-mini`); paper: an llava-hf LLaVA folder
    (required), read offline.
    """
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if scale == "paper":
        if checkpoint is None:
            raise ValueError("model_path: the paper scale needs a local llava-hf LLaVA folder "
                             "(--model-path or MODEL_PATH=/models/llava-1.5-7b-hf)")
        return load_paper_vlm(checkpoint, device=dev, dtype=dt)
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINTS[scale]
    if not path.exists():
        fix = "make toy-model" if scale == "toy" else "make mini-model"
        raise FileNotFoundError(f"checkpoint: {path} does not exist; run `{fix}` first")
    if scale == "toy":
        vlm = ToyVLM.load(path)
    else:
        vlm = load_mini_vlm(path)
    vlm.model.to(device=dev, dtype=dt)
    return vlm
