"""Tiny random-initialised HF models for tests, built offline from configs (transformers' `LlamaModelTester` idea).

`tiny_llava` is a real `LlavaForConditionalGeneration` (CLIP vision tower + Llama decoder) with a few thousand
parameters; `tiny_llama` is a bare `LlamaForCausalLM` in which one token id plays the image placeholder.
`make_batch` builds a LEFT-padded batch in the layout of `common.models.base.VisionLanguageModel.build_inputs`:
``[system tokens][N image tokens][instruction tokens]`` with a different length per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

# Reserved ids of the tiny vocabularies (the rest are ordinary text tokens).
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2


def _llama_config(num_layers: int, hidden: int, heads: int, kv_heads: int, vocab: int, attn: str) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=4096,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attn_implementation=attn,
        # random weights at HF's default 0.02 give near-uniform logits and repetitive greedy text; a larger
        # init makes greedy decoding sensitive to which tokens are kept, which is what the tests need
        initializer_range=0.15,
    )


def tiny_llava_config(
    num_layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    image_size: int = 32,
    patch: int = 8,
    vocab: int = 128,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn: str = "sdpa",
) -> LlavaConfig:
    """A LLaVA-1.5-shaped config: CLIP ViT (CLS dropped, penultimate layer) -> 2-layer MLP -> Llama decoder.

    The image token is the last vocabulary id, so `(image_size // patch) ** 2` placeholders stand for one image.
    """
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch,
        projection_dim=vision_hidden,
        attn_implementation=attn,
    )
    text = _llama_config(num_layers, hidden, heads, kv_heads, vocab, attn)
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=PAD_ID,
    )
    cfg._attn_implementation = attn
    return cfg


def tiny_llava(seed: int = 0, num_layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               image_size: int = 32, patch: int = 8, vocab: int = 128, attn: str = "sdpa",
               dtype: torch.dtype = torch.float32) -> LlavaForConditionalGeneration:
    """A random `LlavaForConditionalGeneration` in eval mode; same seed -> identical weights."""
    cfg = tiny_llava_config(num_layers=num_layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                            image_size=image_size, patch=patch, vocab=vocab, attn=attn)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None  # never stop early: tests compare fixed-length outputs
    model.generation_config.suppress_tokens = [cfg.image_token_id]  # a generated placeholder is no image
    return model


def tiny_llama(seed: int = 0, num_layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               vocab: int = 128, attn: str = "sdpa", dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random `LlamaForCausalLM` in eval mode; use `image_token_id = vocab - 1` as the placeholder id."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(num_layers, hidden, heads, kv_heads, vocab, attn)).to(dtype).eval()
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    model.generation_config.suppress_tokens = [vocab - 1]
    return model


def num_image_tokens(model) -> int:
    """Visual tokens per image of a tiny LLaVA (CLS dropped)."""
    vc = model.config.vision_config
    return (vc.image_size // vc.patch_size) ** 2


@dataclass
class TinyBatch:
    input_ids: torch.Tensor  # [B, L] long, left-padded with PAD_ID
    attention_mask: torch.Tensor  # [B, L] long, 0 on padding
    pixel_values: torch.Tensor | None  # [B * frames, 3, H, W] float, or None for a text-only model
    image_token_id: int
    n_visual: int  # visual tokens per sample

    def inputs(self) -> dict:
        d = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            d["pixel_values"] = self.pixel_values
        return d


def make_batch(
    batch_size: int = 3,
    n_image_tokens: int = 16,
    image_token_id: int = 127,
    vocab: int = 128,
    sys_lens: list[int] | None = None,
    instr_lens: list[int] | None = None,
    frames: int = 1,
    image_size: int | None = 32,
    seed: int = 0,
) -> TinyBatch:
    """A left-padded batch ``[pad][BOS + system][image x frames][instruction]``; lengths differ per sample.

    `image_size=None` gives no `pixel_values` (for `tiny_llama`). Text ids are drawn from ``[3, vocab - 1)``.
    """
    g = torch.Generator().manual_seed(seed)
    sys_lens = sys_lens or [3 + (i % 3) for i in range(batch_size)]
    instr_lens = instr_lens or [4 + (2 * i) % 5 for i in range(batch_size)]
    if len(sys_lens) != batch_size or len(instr_lens) != batch_size:
        raise ValueError("sys_lens and instr_lens need one entry per sample")
    rows = []
    for s, q in zip(sys_lens, instr_lens):
        sys_ids = torch.randint(3, vocab - 1, (s,), generator=g)
        sys_ids[0] = BOS_ID
        img = torch.full((n_image_tokens * frames,), image_token_id)
        instr = torch.randint(3, vocab - 1, (q,), generator=g)
        rows.append(torch.cat([sys_ids, img, instr]))
    L = max(len(r) for r in rows)
    input_ids = torch.full((batch_size, L), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, L), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, L - len(r):] = r
        attention_mask[i, L - len(r):] = 1
    pixel_values = None
    if image_size is not None:
        pixel_values = torch.randn(batch_size * frames, 3, image_size, image_size, generator=g)
    return TinyBatch(input_ids, attention_mask, pixel_values, image_token_id, n_image_tokens * frames)


def sample_of(batch: TinyBatch, i: int, frames: int = 1) -> TinyBatch:
    """Sample `i` of a batch alone, with its padding removed (for batched-vs-single comparisons)."""
    keep = batch.attention_mask[i].bool()
    pv = None if batch.pixel_values is None else batch.pixel_values[i * frames:(i + 1) * frames]
    return TinyBatch(batch.input_ids[i:i + 1, keep], batch.attention_mask[i:i + 1, keep], pv,
                     batch.image_token_id, batch.n_visual)
