"""Checkpoints: model weights (safetensors) + HF config + tokenizer.json + a JSON card.

The card (DESIGN.md §7) records the config, data seed, steps, wall time and final metrics, so a table
can cite which checkpoint produced it. Training state (optimizer, RNG, step) lives in a separate
`train_state.pt` used only for resuming.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from common.artifacts import atomic_write_bytes, atomic_write_text, file_sha256
from common.data.tokenizer import save_tokenizer

__all__ = ["WEIGHTS", "CARD", "TOKENIZER", "CONFIG", "PT_FORMAT", "atomic_write_text", "file_sha256", "save_tensors",
           "save_checkpoint", "load_weights", "load_card", "data_version", "save_train_state", "load_train_state"]

WEIGHTS, CARD, TOKENIZER, CONFIG = "model.safetensors", "card.json", "tokenizer.json", "config.json"
PT_FORMAT = {"format": "pt"}  # safetensors metadata of model checkpoints (transformers reads it)


def save_tensors(state: Mapping[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically, so an interrupted save never leaves a truncated checkpoint
    behind a valid card. Tensors are detached, made contiguous and cloned (safetensors refuses tensors
    that share storage, e.g. tied embeddings); the bytes equal `safetensors.torch.save_file`'s with the
    same `metadata` (model checkpoints pass {"format": "pt"}, which transformers expects)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def _atomic_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(out: str | Path, model: PreTrainedModel, tokenizer: Tokenizer | None = None,
                    card: dict | None = None) -> Path:
    """Write weights, config, tokenizer and card into `out` (files replaced atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out / WEIGHTS, metadata=PT_FORMAT)
    _atomic_json(model.config.to_dict(), out / CONFIG)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out / TOKENIZER)
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


def save_train_state(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(path: str | Path) -> dict | None:
    path = Path(path)
    return torch.load(path, weights_only=False) if path.exists() else None
