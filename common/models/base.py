"""The model-side contract: what evaluation, reducers and experiments may assume about a VLM.

Every scale (toy, mini, paper) wraps its model in a `VisionLanguageModel`, so the harness and the
methods never branch on which model they got (DESIGN.md §2). The wrapped `model` is an HF model whose
language decoder is Llama-family (`LlavaForConditionalGeneration` for toy and paper scale).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from transformers import BatchEncoding, PreTrainedModel

from common.data.sample import Sample


@runtime_checkable
class VisionLanguageModel(Protocol):
    """A VLM plus the preprocessing that turns `Sample`s into model inputs.

    `build_inputs` returns a *left-padded* batch (`input_ids`, `attention_mask`, `pixel_values`) in which
    every image is already expanded into its visual-token placeholders (`image_token_id`), so token spans
    (system / image / instruction) can be read off `input_ids` without knowing the chat template.
    """

    name: str
    model: PreTrainedModel
    image_token_id: int
    num_visual_tokens: int  # per image/frame, e.g. 144 (toy) or 576 (LLaVA-1.5)

    def build_inputs(self, samples: Sequence[Sample]) -> BatchEncoding: ...

    def decode(self, token_ids: torch.Tensor) -> list[str]: ...
