"""Left-padded prompt batches shared by the VLM adapters (`VisionLanguageModel.build_inputs` /
`build_training_batch`): every adapter builds token-id rows its own way, the padding and the answer-only
labels are the same for all of them."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from common.data.sample import Sample

IGNORE = -100  # label of tokens the loss skips (PyTorch's cross_entropy ignore_index)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None
             ) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` [B, max len], LEFT-padded (the evaluation contract); `labels`
    padded with IGNORE when given."""
    if not rows:
        raise ValueError("rows: need at least one row")
    width = max(len(r) for r in rows)
    out = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
    if labels is not None:
        out["labels"] = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        out["input_ids"][i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        out["attention_mask"][i, width - len(r):] = 1
        if labels is not None:
            out["labels"][i, width - len(r):] = torch.tensor(labels[i], dtype=torch.long)
    return out


def answer_rows(samples: Sequence[Sample], prompt_ids: Callable[[Sample], list[int]],
                answer_ids: Callable[[Sample], list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt + answer rows, labels that keep only the answer ids): LLaVA's instruction-tuning loss."""
    rows, labels = [], []
    for s in samples:
        p, a = prompt_ids(s), answer_ids(s)
        rows.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    return rows, labels
