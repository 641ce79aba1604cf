"""The toy VLM: an HF `LlavaForConditionalGeneration` (small CLIP tower + small Llama decoder) for ToyWorld.

It is the real LLaVA architecture at a size that trains from scratch on 2 CPU cores, so every method runs
on the same classes (and the same hook) as LLaVA-1.5 at paper scale (DESIGN.md §2).

Prompt template (word-level tokens, one image = `grid**2` placeholders, a clip = one block per frame):

    <bos> image : <image>*N [<image>*N ...] question : {question} answer : -> {answer} <eos>

`python -m common.models.toy_train --out checkpoints/toy-llava` (= `make toy-model`) trains it; the recipe
is in `common.models.toy_train`, the generic loop in `common.models.train`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import BatchEncoding, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from common.data.sample import Sample
from common.data.tokenizer import BOS, EOS, IMAGE, PAD, build_tokenizer, load_tokenizer
from common.models.batching import IGNORE, answer_rows, left_pad
from common.models.checkpoint import TOKENIZER, WEIGHTS, atomic_write_text, load_weights, save_checkpoint

CONFIG_FILE = "toy_config.json"


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy LLaVA. Defaults were chosen by measuring step time on the 2-core CI machine:
    8 decoder layers (so paper layers map as l -> round(l/4)) at a width that trains in < 1 hour."""

    grid: int = 12  # visual tokens per side: 12 -> 144 per image (DESIGN.md §5)
    patch: int = 8  # pixels per patch = ToyWorld's cell size
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256
    text_hidden: int = 128  # 1.1 s per step of 32 samples (1 thread); 192 wide took ~2x longer
    text_layers: int = 8
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 1024  # 3 video frames = 432 visual tokens + text

    @property
    def image_size(self) -> int:
        return self.grid * self.patch

    @property
    def num_visual_tokens(self) -> int:
        return self.grid * self.grid


def build_model(cfg: ToyConfig, tokenizer: Tokenizer, seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised toy LLaVA (fp32). `vision_feature_select_strategy="default"` drops CLS,
    so each image gives exactly grid**2 visual tokens, as LLaVA-1.5 gives 576."""
    vocab = tokenizer.get_vocab()
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads, vocab_size=len(vocab), max_position_embeddings=cfg.max_positions,
        pad_token_id=vocab[PAD], bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=vocab[IMAGE],
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = vocab[PAD]
    model.generation_config.eos_token_id = vocab[EOS]
    model.generation_config.bos_token_id = vocab[BOS]
    model.generation_config.do_sample = False
    # A generated <image> placeholder would be no image: a cache-less decode step (DyRate's recompute mode)
    # then finds more placeholders than image features and fails. A weak model does emit it (measured).
    model.generation_config.suppress_tokens = [vocab[IMAGE], vocab[PAD], vocab[BOS]]
    return model.eval()


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] in [-1, 1] (the toy tower's only preprocessing)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


class ToyVLM:
    """The toy model behind the `VisionLanguageModel` contract (common/models/base.py)."""

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer: Tokenizer, cfg: ToyConfig,
                 name: str = "toy-llava"):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.name = name
        vocab = tokenizer.get_vocab()
        self.image_token_id = vocab[IMAGE]
        self.pad_id, self.bos_id, self.eos_id = vocab[PAD], vocab[BOS], vocab[EOS]
        self.num_visual_tokens = cfg.num_visual_tokens

    # -- inputs -----------------------------------------------------------------------------------
    def prompt_ids(self, sample: Sample) -> list[int]:
        return self.image_prefix_ids(sample) + self.question_ids(sample)

    def image_prefix_ids(self, sample: Sample) -> list[int]:
        """`<bos> image : <image>*N`: the part of the prompt every question about these images shares."""
        image_block = [self.image_token_id] * (self.num_visual_tokens * len(sample.images))
        return [self.bos_id, *self.tokenizer.encode("image :").ids, *image_block]

    def question_ids(self, sample: Sample) -> list[int]:
        return self.tokenizer.encode(f"question : {sample.question} answer :").ids

    def answer_ids(self, sample: Sample) -> list[int]:
        return [*self.tokenizer.encode(sample.answer).ids, self.eos_id]

    def pixel_values(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = self.cfg.image_size
        frames = []
        for s in samples:
            for im in s.images:
                if im.size != (size, size):
                    raise ValueError(f"samples: sample {s.id!r} has a {im.size} image; the toy model takes "
                                     f"{size}x{size} (grid {self.cfg.grid} x patch {self.cfg.patch})")
                frames.append(image_to_tensor(im))
        return torch.stack(frames)

    def build_inputs(self, samples: Sequence[Sample]) -> BatchEncoding:
        """Left-padded prompts (no answers) + pixel values, ready for `generate()`."""
        batch = left_pad([self.prompt_ids(s) for s in samples], self.pad_id)
        batch["pixel_values"] = self.pixel_values(samples)
        return BatchEncoding(batch)

    def build_training_batch(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """Prompt + answer; the loss sees only the answer tokens (and EOS), as in LLaVA's instruction tuning."""
        rows, labels = answer_rows(samples, self.prompt_ids, self.answer_ids)
        batch = left_pad(rows, self.pad_id, labels)
        batch["pixel_values"] = self.pixel_values(samples)
        return batch

    def build_dialogue_batch(self, dialogues: Sequence[Sequence[Sample]]) -> dict[str, torch.Tensor]:
        """Multi-turn training rows: the first turn is exactly `build_training_batch`'s row, later turns
        append `question : ... answer : {answer} <eos>` (all turns of a row share its first sample's
        images). The loss sees every turn's answer tokens."""
        rows, labels = [], []
        for turns in dialogues:
            if not turns:
                raise ValueError("dialogues: every dialogue needs at least one turn")
            row = self.prompt_ids(turns[0])
            lab = [IGNORE] * len(row)
            for k, s in enumerate(turns):
                if k:
                    q = self.question_ids(s)
                    row, lab = row + q, lab + [IGNORE] * len(q)
                a = self.answer_ids(s)
                row, lab = row + a, lab + a
            rows.append(row)
            labels.append(lab)
        batch = left_pad(rows, self.pad_id, labels)
        batch["pixel_values"] = self.pixel_values([d[0] for d in dialogues])
        return batch

    def build_packed_batch(self, groups: Sequence[Sequence[Sample]]) -> dict[str, torch.Tensor]:
        """Several questions about the same images in one row, each seeing only the images and itself.

        Row = image prefix, then one branch `question : ... answer : {answer} <eos>` per sample. A
        boolean 4D attention mask (True = attend) lets a branch see the prefix and its own earlier tokens,
        never another branch, and every branch's position ids restart right after the prefix: each branch
        computes exactly what `build_training_batch` computes for its sample alone (tested), so nothing
        leaks between questions, while the image's tokens are paid once for all of them. Why: the toy
        model learns object lookup from the number of supervised questions it sees, and a 144-token image
        costs ~10x a question. Rows are left-padded; pad queries attend only to themselves (no NaNs)."""
        rows, labels, branch, positions = [], [], [], []
        for g in groups:
            if not g:
                raise ValueError("groups: every group needs at least one sample")
            prefix = self.image_prefix_ids(g[0])
            if any(len(s.images) != len(g[0].images) for s in g):  # pixels come from the group's first sample
                raise ValueError("groups: the samples of a group must share their images")
            row, lab, br, pos = list(prefix), [IGNORE] * len(prefix), [0] * len(prefix), list(range(len(prefix)))
            for k, s in enumerate(g, start=1):
                q, a = self.question_ids(s), self.answer_ids(s)
                row += q + a
                lab += [IGNORE] * len(q) + a
                br += [k] * (len(q) + len(a))
                pos += range(len(prefix), len(prefix) + len(q) + len(a))  # restart right after the prefix
            rows.append(row)
            labels.append(lab)
            branch.append(br)
            positions.append(pos)
        batch = left_pad(rows, self.pad_id, labels)
        width = batch["input_ids"].shape[1]
        br = torch.full((len(rows), width), -1, dtype=torch.long)  # -1 = padding
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (b, p) in enumerate(zip(branch, positions)):
            br[i, width - len(b):] = torch.tensor(b)
            pos[i, width - len(p):] = torch.tensor(p)
        q_br, k_br = br[:, :, None], br[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = causal & (k_br >= 0) & ((k_br == 0) | (k_br == q_br))
        mask |= torch.eye(width, dtype=torch.bool)  # padded queries: attend to themselves only
        batch["attention_mask"] = mask[:, None]
        batch["position_ids"] = pos
        batch["pixel_values"] = self.pixel_values([g[0] for g in groups])
        return batch

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Generated ids -> text, cut at the first EOS, padding dropped."""
        out = []
        for row in token_ids.tolist():
            words = []
            for t in row:
                if t == self.eos_id:
                    break
                if t not in (self.pad_id, self.bos_id, self.image_token_id):
                    words.append(self.tokenizer.id_to_token(t))
            out.append(" ".join(words))
        return out

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path, card: dict | None = None) -> None:
        """Weights + HF config + tokenizer + card (common.models.checkpoint) and the ToyConfig."""
        save_checkpoint(path, self.model, self.tokenizer, card)
        atomic_write_text(Path(path) / CONFIG_FILE, json.dumps(asdict(self.cfg), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ToyVLM":
        path = Path(path)
        for f in (WEIGHTS, CONFIG_FILE, TOKENIZER):
            if not (path / f).exists():
                raise FileNotFoundError(f"path: {path / f} is missing; run `make toy-model`")
        cfg = ToyConfig(**json.loads((path / CONFIG_FILE).read_text()))
        tok = load_tokenizer(path)
        model = build_model(cfg, tok)
        load_weights(model, path)
        return cls(model.eval(), tok, cfg)

    @classmethod
    def fresh(cls, cfg: ToyConfig | None = None, seed: int = 0, data_version: int | None = None) -> "ToyVLM":
        """A randomly initialised model whose tokenizer covers ToyWorld data `data_version` (default version)."""
        cfg = cfg or ToyConfig()
        tok = build_tokenizer(data_version=data_version)
        return cls(build_model(cfg, tok, seed), tok, cfg)
