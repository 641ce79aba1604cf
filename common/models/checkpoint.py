"""Checkpoints: model weights (safetensors) + HF config + tokenizer.json + a JSON card.

The card (DESIGN.md §7) records the config, data seed, steps, wall time and final metrics, so a table
can cite which checkpoint produced it. Training state (optimizer, RNG, step) lives in a separate
`train_state.pt` used only for resuming.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import PreTrainedModel

WEIGHTS, CARD, TOKENIZER, CONFIG = "model.safetensors", "card.json", "tokenizer.json", "config.json"


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(out: str | Path, model: PreTrainedModel, tokenizer: Tokenizer | None = None,
                    card: dict | None = None) -> Path:
    """Write weights, config, tokenizer and card into `out` (files replaced atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage (tied embeddings).
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors writes 0600
    os.replace(tmp, out / WEIGHTS)
    _atomic_json(model.config.to_dict(), out / CONFIG)
    if tokenizer is not None:
        tokenizer.save(str(out / TOKENIZER))
    if card is not None:
        card = dict(card)
        card["weights_sha256"] = file_sha256(out / WEIGHTS)
        _atomic_json(card, out / CARD)
    return out


def load_weights(model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """Load `model.safetensors` from a checkpoint folder into `model` (strict: every key must match)."""
    state = load_file(str(Path(path) / WEIGHTS))
    model.load_state_dict(state, strict=True)
    return model


def load_card(path: str | Path) -> dict:
    return json.loads((Path(path) / CARD).read_text())


def data_version(path: str | Path) -> int:
    """The ToyWorld data version a toy checkpoint was trained on, so that it is evaluated on the same
    question design (card `data.version`; cards written before versions existed are version 1)."""
    card = Path(path) / CARD
    if not card.exists():
        raise FileNotFoundError(f"path: {card} is missing; run `make toy-model`")
    return int(load_card(path).get("data", {}).get("version", 1))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_train_state(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(path: str | Path) -> dict | None:
    path = Path(path)
    return torch.load(path, weights_only=False) if path.exists() else None
