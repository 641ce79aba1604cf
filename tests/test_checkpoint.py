"""common.models.checkpoint: weights, tokenizer and cards are written atomically, in the formats the
libraries themselves write, so a checkpoint interrupted mid-save never pairs a truncated file with a card."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.data.tokenizer import build_tokenizer
from common.models import checkpoint as C


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 3, generator=g)
    return {"embed.weight": emb, "head.weight": emb, "bias": torch.arange(4), "t": torch.randn(2, 3, generator=g).T}


def test_save_tensors_writes_the_bytes_save_file_writes(tmp_path):
    state = _state()  # tied (shared-storage) and non-contiguous tensors: save_file alone refuses both
    for metadata in (None, C.PT_FORMAT):  # ATP / DyRate files carry none, model checkpoints the format
        path = C.save_tensors(state, tmp_path / "w.safetensors", metadata=metadata)
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp_path / "ref.safetensors"),
                  metadata=metadata)
        assert path.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_save_tensors_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = C.save_tensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        C.save_tensors({"a": torch.ones(2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_saved_tokenizer_equals_tokenizers_own_save(tmp_path):
    from common.data.tokenizer import save_tokenizer

    tok = build_tokenizer(["a", "red", "cube", "two", "blue", "balls"])
    tok.save(str(tmp_path / "ref.json"))
    save_tokenizer(tok, tmp_path / "ours.json")
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "ref.json").read_bytes()
