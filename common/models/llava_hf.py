"""The `paper` scale's model: an HF `LlavaForConditionalGeneration` (e.g. llava-hf/llava-1.5-7b-hf) read from a
local folder, wrapped as a `common.models.base.VisionLanguageModel`.

    vlm = load_paper_vlm("/models/llava-1.5-7b-hf")      # a local folder; nothing is downloaded
    batch = vlm.build_inputs(samples)                     # left-padded, <image> expanded to 576 placeholders

Prompt: llava-hf's conversation format ``USER: <image>\\n{question} ASSISTANT:`` (one ``<image>`` per frame
of a clip). The original haotian-liu LLaVA uses the vicuna_v1 template with a system prompt; the HF port's
README recommends this shorter form, which is what its published model card numbers use. Greedy decoding
is the caller's (`common.evaluation.evaluate`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoProcessor, BatchEncoding, LlavaForConditionalGeneration

from common.data.sample import Sample
from common.errors import MissingInputs
from common.models.device import resolve_device, resolve_dtype

PROMPT = "USER: {images}\n{question} ASSISTANT:"


class LlavaHF:
    """A loaded HF LLaVA plus its processor (implements `VisionLanguageModel`)."""

    def __init__(self, model: LlavaForConditionalGeneration, processor, name: str):
        self.model = model
        self.processor = processor
        self.name = name
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.image_token_id = int(model.config.image_token_id)
        vc = model.config.vision_config
        n = (vc.image_size // vc.patch_size) ** 2
        if getattr(model.config, "vision_feature_select_strategy", "default") == "full":
            n += 1  # the CLS token is kept
        self.num_visual_tokens = n
        self.image_token = getattr(processor, "image_token", "<image>")
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id

    def prompt(self, sample: Sample) -> str:
        return PROMPT.format(images=self.image_token * len(sample.images), question=sample.question)

    def build_inputs(self, samples: Sequence[Sample]) -> BatchEncoding:
        if not samples:
            raise ValueError("samples: build_inputs needs at least one sample")
        images = [im.convert("RGB") for s in samples for im in s.images]
        return self.processor(text=[self.prompt(s) for s in samples], images=images, return_tensors="pt",
                              padding=True)

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


# What an llava-hf checkpoint folder must hold: (description, accepted file names or glob patterns).
REQUIRED_FILES = (
    ("the model config", ("config.json",)),
    ("the weights", ("*.safetensors", "pytorch_model*.bin")),
    ("the image processor", ("preprocessor_config.json", "processor_config.json")),
    ("the tokenizer", ("tokenizer.json", "tokenizer.model")),
)


def missing_files(path: Path) -> list[str]:
    """What is absent from an llava-hf folder, one line per missing part (the files expected)."""
    if not path.is_dir():
        return [f"model_path: {path} is not a folder (expected a local copy of llava-hf/llava-1.5-7b-hf)"]
    out = []
    for what, names in REQUIRED_FILES:
        if not any(list(path.glob(n)) for n in names):
            out.append(f"model_path: {path} has no {what} (expected {' or '.join(names)})")
    return out


def load_paper_vlm(model_path: str | os.PathLike[str], *, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> LlavaHF:
    """Load an HF LLaVA checkpoint folder (config, weights, processor and tokenizer files) offline.

    Every missing part is reported at once as missing local files (never as a failed hub download: nothing is
    downloaded). device: "auto" = CUDA when available; dtype: "auto" = float16 on CUDA, float32 on CPU.
    """
    path = Path(model_path).expanduser()
    missing = missing_files(path)
    if missing:
        raise MissingInputs(missing, "Download the model once elsewhere (e.g. `huggingface-cli download "
                                     "llava-hf/llava-1.5-7b-hf --local-dir <folder>`) and pass that folder.")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                          attn_implementation="sdpa").to(device).eval()
    return LlavaHF(model, processor, name=f"llava-hf:{path.name}")
