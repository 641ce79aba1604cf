"""LLaVA conversations -> labelled training batches for an llava-hf model (the paper scale's SFT data path).

    convs = load_instruct(data_root)                                  # common.data.llava_instruct
    batch_fn = sft_batch_fn(vlm, convs, batch_size=32, seed=0)        # vlm: common.models.llava_hf.LlavaHF
    train(vlm.model, batch_fn, TrainConfig(steps=..., grad_accum=4))  # common.models.train

Text ("chat" template, llava-hf's evaluation prompt extended to several turns, as LLaVA's vicuna_v1 template
without its system prompt):

    USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

The turn holding the image starts with `<image>\\n` exactly as `LlavaHF.prompt` does at evaluation (LLaVA's
`preprocess_multimodal` moves the marker there too); text-only conversations have no marker and add no
`pixel_values` row. The "plain" template is LLaVA-1.5's stage-1 format (`--version plain`):
`<image>{caption}\\n`, the instruction dropped.

Labels are -100 everywhere except on the tokens of each answer, from the space after `ASSISTANT:` through
the end-of-turn `</s>`: the token that starts an answer is what the model must generate after the prompt.
Which tokens those are is read from the fast tokenizer's character offsets, so no tokenizer-specific
length arithmetic (LLaVA's "tokenization mismatch") is involved. The processor expands each `<image>` into
the model's visual tokens; truncation to `max_length` never cuts an image's block of tokens: a cut inside
one moves before it and drops that image's `pixel_values`. Rows are right-padded, as in LLaVA's training
(positions then count from the first token of every row).

`sft_batch_fn` is a pure function of the step, so `common.models.train`'s resume guarantee holds: global
batch `step` holds positions `step * batch_size ...` of an endless stream that visits the conversations in
a fresh seeded permutation every epoch, and each rank takes its own contiguous slice of `batch_size /
world` rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from common.data.llava_instruct import Conversation
from common.models.batching import IGNORE
from common.models.llava_hf import PROMPT, LlavaHF
from common.models.train import rank_world

__all__ = ["TEMPLATES", "SFTExample", "conversation_text", "sft_example", "collate", "sft_batch", "batch_indices",
           "sft_batch_fn"]

TEMPLATES = ("chat", "plain")


@dataclass
class SFTExample:
    """One tokenised conversation: `input_ids` and `labels` [L] (long), `pixel_values` [n_images, 3, H, W] or None."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None


def conversation_text(conv: Conversation, eos: str, image_token: str = "<image>", template: str = "chat"
                      ) -> tuple[str, list[tuple[int, int]]]:
    """The training text of a conversation and the character spans (start, end) the loss sees."""
    if template == "plain":
        if conv.image is None:
            raise ValueError(f"conversation {conv.id!r}: the plain template needs an image")
        text = image_token
        return text + conv.turns[0][1] + "\n", [(len(text), len(text) + len(conv.turns[0][1]) + 1)]
    if template != "chat":
        raise ValueError(f"template: expected one of {TEMPLATES}, got {template!r}")
    text, spans = "", []
    for k, (human, answer) in enumerate(conv.turns):
        if conv.image is not None and k == conv.image_turn:
            text += PROMPT.format(images=image_token, question=human)
        else:
            text += f"USER: {human} ASSISTANT:"
        start = len(text)
        text += f" {answer}{eos}"
        spans.append((start, len(text)))
    return text, spans


def _expanded(spans: list[tuple[int, int]], markers: list[int], grow: int) -> list[tuple[int, int]]:
    """`spans` moved to the text in which each marker (at the given positions) became `grow` characters longer."""
    def shift(pos: int) -> int:
        return pos + grow * sum(m < pos for m in markers)
    return [(shift(s), shift(e)) for s, e in spans]


def sft_example(vlm: LlavaHF, conv: Conversation, *, max_length: int | None = None, template: str = "chat"
                ) -> SFTExample:
    """Tokenise one conversation with the model's processor (images expanded into visual tokens) and label it."""
    if not vlm.tokenizer.is_fast:
        raise ValueError("vlm: labelling needs a fast tokenizer (character offsets); the model folder has no "
                         "tokenizer.json")
    text, spans = conversation_text(conv, vlm.tokenizer.eos_token, vlm.image_token, template)
    images = [conv.load_image()] if conv.image is not None else None
    enc = vlm.processor(text=[text], images=images, return_offsets_mapping=True, return_tensors="pt")
    ids, offsets = enc["input_ids"][0], enc["offset_mapping"][0]
    n_images = 0 if images is None else len(images)
    per_image = vlm.num_visual_tokens
    slots = (ids == vlm.image_token_id).nonzero().flatten()
    if len(slots) != n_images * per_image:
        raise ValueError(f"conversation {conv.id!r}: the processor wrote {len(slots)} image tokens for {n_images} "
                         f"image(s) of {per_image} visual tokens each")
    markers = [m.start() for m in re.finditer(re.escape(vlm.image_token), text)]
    spans = _expanded(spans, markers, (per_image - 1) * len(vlm.image_token))
    a, b = offsets[:, 0], offsets[:, 1]
    target = torch.zeros(len(ids), dtype=torch.bool)
    for s, e in spans:
        target |= (b > a) & (a < e) & (b > s)
    labels = torch.where(target, ids, torch.full_like(ids, IGNORE))
    pixel_values = enc.get("pixel_values")
    if max_length is not None and len(ids) > max_length:
        blocks = slots.view(n_images, per_image)[:, [0, -1]].tolist() if n_images else []  # (first, last) per image
        cut = max_length
        for first, last in blocks:
            if first < cut <= last:
                cut = first  # never split an image's tokens
        kept = sum(last < cut for _, last in blocks)
        ids, labels = ids[:cut], labels[:cut]
        pixel_values = pixel_values[:kept] if kept else None
    return SFTExample(ids, labels, pixel_values)


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, `labels` [B, max len] and, if any row has images, their
    `pixel_values` in row order."""
    if not examples:
        raise ValueError("examples: need at least one")
    width = max(len(x.input_ids) for x in examples)
    out = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
           "labels": torch.full((len(examples), width), IGNORE, dtype=torch.long)}
    for i, x in enumerate(examples):
        n = len(x.input_ids)
        out["input_ids"][i, :n] = x.input_ids
        out["attention_mask"][i, :n] = 1
        out["labels"][i, :n] = x.labels
    pixels = [x.pixel_values for x in examples if x.pixel_values is not None]
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    return out


def sft_batch(vlm: LlavaHF, conversations: Sequence[Conversation], *, max_length: int | None = None,
              template: str = "chat") -> dict[str, torch.Tensor]:
    """One labelled batch of these conversations (for the loss `common.models.train.answer_loss`)."""
    return collate([sft_example(vlm, c, max_length=max_length, template=template) for c in conversations],
                   vlm.tokenizer.pad_token_id)


def batch_indices(n: int, batch_size: int, step: int, seed: int = 0, rank: int = 0, world: int = 1) -> list[int]:
    """Indices (into `n` conversations) of rank `rank`'s slice of global batch `step`: positions
    `step * batch_size + j` of an endless stream in which epoch e is `default_rng([seed, e]).permutation(n)`."""
    if n < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need n >= 1, batch_size >= 1, step >= 0; got {n}, {batch_size}, {step}")
    if not 0 <= rank < world or batch_size % world:
        raise ValueError(f"batch_size {batch_size} must split evenly over world {world} (rank {rank})")
    per = batch_size // world
    first = step * batch_size + rank * per
    return [int(_permutation(n, seed, p // n)[p % n]) for p in range(first, first + per)]


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def sft_batch_fn(vlm: LlavaHF, conversations: Sequence[Conversation], batch_size: int, seed: int = 0, *,
                 rank: int | None = None, world: int | None = None, max_length: int | None = None,
                 template: str = "chat") -> Callable[[int], dict[str, torch.Tensor]]:
    """`batch_fn(step)` for `common.models.train.train`: this rank's rows of global batch `step`.

    Args:
        vlm: the model being trained (its processor and tokenizer build the rows).
        conversations: the training set (e.g. `common.data.llava_instruct.load_instruct(root)`).
        batch_size: rows of one GLOBAL micro-batch, over all ranks; each rank gets `batch_size / world`.
            With `TrainConfig.grad_accum = g` an optimiser step sees `g * batch_size` conversations
            (LLaVA-1.5: 128 in stage 2, 256 in stage 1).
        seed: the data order's seed (the epoch permutations).
        rank, world: default to `torch.distributed`'s when it is initialised, else 0 and 1.
        max_length: truncate longer rows (LLaVA-1.5: 2048); None keeps them whole.
        template: "chat" (USER/ASSISTANT turns) or "plain" (LLaVA's stage-1 captions).
    """
    if template not in TEMPLATES:
        raise ValueError(f"template: expected one of {TEMPLATES}, got {template!r}")
    if not conversations:
        raise ValueError("conversations: need at least one")
    default_rank, default_world = rank_world()
    rank = default_rank if rank is None else rank
    world = default_world if world is None else world
    batch_indices(len(conversations), batch_size, 0, seed, rank, world)  # validates the split now, not at step 0
    convs = list(conversations)

    def batch_fn(step: int) -> dict[str, torch.Tensor]:
        chosen = [convs[i] for i in batch_indices(len(convs), batch_size, step, seed, rank, world)]
        return sft_batch(vlm, chosen, max_length=max_length, template=template)

    return batch_fn
