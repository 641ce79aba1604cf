"""Tiny random-initialised HF models for tests, built offline from configs (transformers' `LlamaModelTester` idea).

`tiny_llava` is a real `LlavaForConditionalGeneration` (CLIP vision tower + Llama decoder) with a few thousand
parameters; `tiny_llama` is a bare `LlamaForCausalLM` in which one token id plays the image placeholder.
`make_batch` builds a LEFT-padded batch in the layout of `common.models.base.VisionLanguageModel.build_inputs`:
``[system tokens][N image tokens][instruction tokens]`` with a different length per sample.
`save_tiny_llava_hf` writes a tiny LLaVA plus its processor as an llava-hf checkpoint folder, so the `paper`
scale's loading path (`common.models.llava_hf.load_paper_vlm`) runs offline in CPU tests.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
               dtype: torch.dtype = torch.float32, vision_layers: int = 2) -> LlavaForConditionalGeneration:
    """A random `LlavaForConditionalGeneration` in eval mode; same seed -> identical weights."""
    cfg = tiny_llava_config(num_layers=num_layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                            image_size=image_size, patch=patch, vocab=vocab, vision_layers=vision_layers, attn=attn)
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


# ----------------------------------------------------------------------------------------------------
# A tiny llava-hf checkpoint folder (model + processor) for the `paper` scale's loading path
# ----------------------------------------------------------------------------------------------------

SPECIAL_WORDS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")  # ids PAD_ID, BOS_ID, EOS_ID, 3
IMAGE_TOKEN = "<image>"

# Words of llava-hf prompts (common.models.llava_hf.PROMPT), of the benchmarks' instructions
# (common.data.benchmarks) and of common questions/answers, so fixture prompts are mostly known words.
# The first 21 are the vocabulary of the 16-token tiny checkpoint the SparseVLM tests started with, in its order.
PROMPT_WORDS: tuple[str, ...] = (
    "USER:", "ASSISTANT:", "yes", "no", "is", "there", "a", "the", "in", "image", "what", "color", "?", ".",
    "red", "blue", "green", "circle", "square", "how", "many",
    "Yes", "No", "A", "B", "C", "D", "E", "Is", "Are", "are", "What", "Which", "which", "Who", "who", "Where",
    "where", "How", "Does", "does", "do", "an", "The", "of", "on", "to", "this", "that", "it", "and", "or", "with",
    "for", "from", "picture", "photo", "shown", "number", "name", "kind", "type", "left", "right", "top",
    "bottom", "Answer", "answer", "question", "using", "single", "word", "phrase", "option", "'", "s", "letter",
    "given", "choices", "directly", "Please", "Reference", "OCR", "token:", "Provide", "one", "-", "sentence",
    "caption", "provided", ",", "yellow", "black", "white", "gray", "orange", "purple", "brown", "dog", "cat",
    "car", "man", "woman", "person", "bus", "truck", "tree", "sky", "table", "0", "1", "2", "3", "4", "5", "6",
    "7", "8", "9", "10",
)
MIN_VOCAB = 128  # the tiny models' usual size; short word lists are padded with filler words "w<id>"

# llava-hf's conversation format ("USER: <image>\n{text} ASSISTANT:"), written for this tiny processor.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() }}: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }} {% else %}"
    "{% for c in m['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }} {% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _tiny_tokenizer(words: Sequence[str]):
    """A word-level fast tokenizer built offline: specials, `words`, fillers up to MIN_VOCAB, `<image>` last;
    encoding prepends BOS (`add_special_tokens=True`, the default), as llava-hf's LLaMA tokenizer does.

    Words are split on whitespace and on the punctuation ?.,'"-!;() (not ":", so "USER:" stays one word);
    `<image>` is a special added token, so runs of placeholders ("<image><image>...") split without spaces.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL_WORDS)}
    for w in words:
        if w == IMAGE_TOKEN or w.split() != [w]:
            raise ValueError(f"vocab_words: {w!r} is not a single word other than {IMAGE_TOKEN}")
        vocab.setdefault(w, len(vocab))
    while len(vocab) < MIN_VOCAB - 1:
        vocab[f"w{len(vocab)}"] = len(vocab)
    vocab[IMAGE_TOKEN] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[?.,'\"!;()-]"), behavior="isolated"),
    ])
    # BOS first, as the LLaMA tokenizer of llava-hf does for every prompt
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=[IMAGE_TOKEN],
                                   padding_side="left")


def save_tiny_llava_hf(
    path: str | os.PathLike[str],
    *,
    num_layers: int = 4,
    n_visual: int = 576,
    seed: int = 0,
    vocab_words: Sequence[str] | None = None,
    patch: int = 2,
) -> Path:
    """Save a tiny random LLaVA as an llava-hf checkpoint folder that `load_paper_vlm(path)` loads offline.

    Same files as llava-hf/llava-1.5-7b-hf (config.json, generation_config.json, sharded safetensors with
    their index, preprocessor_config.json, processor/tokenizer files, chat template): a `LlavaForConditionalGeneration`
    (CLIP ViT with 2 layers of width 32, penultimate layer, CLS dropped -> 2-layer MLP -> Llama decoder of
    width 64 with 4 heads / 2 KV heads and `initializer_range=0.15`, so greedy answers depend on the image)
    and a `LlavaProcessor` (CLIP image processor + word-level tokenizer) that expands each `<image>` into
    exactly `n_visual` placeholders, as llava-hf's expands it into 576.

    Args:
        path: the folder (created if needed).
        num_layers: decoder layers (LLaVA-1.5-7B has 32).
        n_visual: visual tokens per image; a perfect square g*g. The image side is `g * patch` pixels, so the
            default 576 tokens are a 24x24 grid of 2-pixel patches of a 48-pixel image (cheap on a CPU).
        seed: weights seed; same arguments -> identical files.
        vocab_words: ordinary words of the vocabulary (default PROMPT_WORDS); ids follow the four special
            tokens in this order, filler words pad the vocabulary to MIN_VOCAB and `<image>` is the last id.
        patch: CLIP patch size in pixels.

    Returns:
        `path` as a Path.
    """
    grid = math.isqrt(n_visual) if n_visual > 0 else 0
    if grid * grid != n_visual or grid == 0:
        raise ValueError(f"n_visual: must be a positive perfect square (576 = 24 x 24); got {n_visual}")
    if patch < 1:
        raise ValueError(f"patch: must be >= 1; got {patch}")
    from transformers import CLIPImageProcessor

    tokenizer = _tiny_tokenizer(PROMPT_WORDS if vocab_words is None else vocab_words)
    side = grid * patch
    model = tiny_llava(seed=seed, num_layers=num_layers, image_size=side, patch=patch, vocab=len(tokenizer))
    model.config.image_seq_length = n_visual
    # llava-hf's processor counts (side // patch)^2 patches + 1 CLS, minus the CLS again for the "default"
    # feature strategy: n_visual placeholders per image, matching the model's image features
    processor_args = {"image_token": IMAGE_TOKEN, "num_additional_image_tokens": 1, "patch_size": patch,
                      "vision_feature_select_strategy": "default"}
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # a few weight shards plus their index, like the 7B folder, so the sharded loading path is the one tested
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out, max_shard_size=n_bytes // 3 + 1)
    _write_processor_files(out, image_processor, tokenizer, processor_args)
    return out


def _write_processor_files(out: Path, image_processor, tokenizer, processor_args: dict) -> None:
    """The processor in the files of the llava-hf hub folder: preprocessor_config.json (image processor),
    processor_config.json (LlavaProcessor's own arguments), chat_template.json and the tokenizer files.
    `LlavaProcessor.save_pretrained` of newer transformers merges them into one processor_config.json;
    the hub layout is what users download, so it is what the tests must load."""
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre["processor_class"] = "LlavaProcessor"
    files = {
        "preprocessor_config.json": pre,
        "processor_config.json": {**processor_args, "processor_class": "LlavaProcessor"},
        "chat_template.json": {"chat_template": CHAT_TEMPLATE},
    }
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
