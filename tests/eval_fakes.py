"""Test support for the evaluation harness: a tiny random LLaVA behind the `VisionLanguageModel` contract,
a handful of synthetic samples of every answer type, and a torchrun worker for tests/test_distributed.py.

Run as a script under torchrun (what test_distributed does):
    python -m torch.distributed.run --nproc_per_node 2 tests/eval_fakes.py OUT.json CACHE_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BatchEncoding  # noqa: E402

from common.data.sample import Sample  # noqa: E402
from common.models.tiny import BOS_ID, PAD_ID, tiny_llava  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCD0123456789"  # no space: predictions keep their length


class TinyVLM:
    """`VisionLanguageModel` over `common.models.tiny.tiny_llava`: characters are tokens, images are
    resized to the tower's resolution, every image becomes `num_visual_tokens` placeholders."""

    def __init__(self, seed: int = 0, image_size: int = 32, patch: int = 8, num_layers: int = 2):
        self.model = tiny_llava(seed=seed, image_size=image_size, patch=patch, num_layers=num_layers)
        self.name = f"tiny-llava-s{seed}"
        self.image_token_id = self.model.config.image_token_id
        self.image_size = image_size
        self.num_visual_tokens = (image_size // patch) ** 2
        self.calls = 0

    def _text_ids(self, text: str) -> list[int]:
        return [3 + (ord(c) % 100) for c in text]

    def build_inputs(self, samples: Sequence[Sample]) -> BatchEncoding:
        self.calls += 1
        rows, pixels = [], []
        for s in samples:
            ids = [BOS_ID] + self._text_ids("user:") + [self.image_token_id] * (self.num_visual_tokens * len(s.images))
            rows.append(ids + self._text_ids(s.question))
            for im in s.images:
                arr = np.asarray(im.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.float32)
                pixels.append(torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1))
        L = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, L - len(r):] = torch.tensor(r)
            mask[i, L - len(r):] = 1
        return BatchEncoding({"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.stack(pixels)})

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        # tiny_llava never stops early (no EOS), so no generated position is padding: decode every id
        return ["".join(ALPHABET[int(t) % len(ALPHABET)] for t in row) for row in token_ids]


class FailingVLM(TinyVLM):
    """Raises on the (k+1)-th batch: an interrupted run."""

    def __init__(self, fail_after: int, **kw):
        super().__init__(**kw)
        self.fail_after = fail_after

    def build_inputs(self, samples):
        if self.calls >= self.fail_after:
            raise KeyboardInterrupt(f"simulated interrupt after {self.fail_after} batches")
        return super().build_inputs(samples)


def _image(rng: np.random.Generator, size: int = 24) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_samples(n_per_family: int = 3, seed: int = 0) -> list[Sample]:
    """Synthetic samples of every answer type (gqa exact, pope yes/no with splits, count number,
    mc choice, caption, two-frame video, VQAv2-style ten references), interleaved like ToyWorld."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for i in range(n_per_family):
        img = _image(rng)
        out += [
            Sample(f"gqa-{i}", "gqa", [img], "what color is the circle ?", "red",
                   meta={"rephrase_group": f"g{i // 2}"}),
            Sample(f"pope-{i}", "pope", [_image(rng)], "is there a cat ?", "yes" if i % 2 else "no", "yesno",
                   meta={"pope_split": ("random", "popular", "adversarial")[i % 3]}),
            Sample(f"count-{i}", "count", [_image(rng)], "how many ?", str(i), "number"),
            Sample(f"mc-{i}", "mc", [_image(rng)], "shape ? options : A circle , B cross", "AB"[i % 2], "choice",
                   choices=["A", "B"], meta={"options": ["circle", "cross"]}),
            Sample(f"caption-{i}", "caption", [_image(rng)], "describe the image .", "a red circle",
                   "caption", references=["a red circle", "a small red circle on gray"]),
            Sample(f"video-{i}", "video", [_image(rng), _image(rng)], "which shape moved ?", "circle"),
            Sample(f"vqav2-{i}", "vqav2", [_image(rng)], "what is it ?", "dog",
                   references=["dog"] * 4 + ["cat"] * 6),
        ]
    return out


MAX_NEW_TOKENS = {"caption": 6, "default": 3}


def _worker(out_path: str, cache_dir: str) -> None:
    from common.evaluation import evaluate, init_distributed

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    vlm = TinyVLM()
    res = evaluate(vlm, make_samples(), batch_size=4, max_new_tokens=MAX_NEW_TOKENS, cache_dir=cache_dir,
                   run_key={"checkpoint": "tiny-random-seed0"}, progress=False)
    path = Path(out_path).with_suffix(f".rank{rank}.json")
    path.write_text(json.dumps({"world": world, **res.to_json()}, sort_keys=True))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
