"""easy-vqa (Victor Zhou, MIT; the `easy-vqa==1.0` wheel) as `Sample`s: the mini scale's public VQA set.

Each image is 64 x 64 with one coloured shape on white; 4,000 train / 1,000 test images, 38,575 / 9,673
questions, 13 answers (3 shapes, 8 colours, yes/no). Questions fall into three families (by their answer):

| family | answers | answer_type | test questions |
|---|---|---|---|
| `easyvqa-shape` | circle, rectangle, triangle | exact | 1,257 |
| `easyvqa-color` | 8 colours | exact | 1,280 |
| `easyvqa-yesno` | yes, no (about half of them negated: "is there not a ...") | yesno | 7,136 |

Everything is read from the installed wheel (`pip install easy-vqa==1.0`); nothing is downloaded.
Sample ids are `easyvqa-<split>-<question index>` in the wheel's question order.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from common.data.sample import Sample

SPLITS = ("train", "test")
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
FAMILIES = ("easyvqa-shape", "easyvqa-color", "easyvqa-yesno")


def _easy_vqa():
    from common.models.mini_parts import require

    require("easy_vqa")
    import easy_vqa

    return easy_vqa


def family_of(answer: str) -> str:
    """The family of a question, read off its answer."""
    if answer in SHAPES:
        return "easyvqa-shape"
    if answer in COLORS:
        return "easyvqa-color"
    if answer in ("yes", "no"):
        return "easyvqa-yesno"
    raise ValueError(f"answer: {answer!r} is not one of easy-vqa's 13 answers")


@lru_cache(maxsize=2)
def questions(split: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(questions, answers, image ids) of a split, in the wheel's order."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    ev = _easy_vqa()
    q, a, ids = ev.get_train_questions() if split == "train" else ev.get_test_questions()
    return tuple(q), tuple(a), tuple(int(i) for i in ids)


@lru_cache(maxsize=2)
def image_paths(split: str) -> dict[int, str]:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    ev = _easy_vqa()
    return dict(ev.get_train_image_paths() if split == "train" else ev.get_test_image_paths())


@lru_cache(maxsize=8192)
def load_image(split: str, image_id: int) -> Image.Image:
    """One image (RGB, 64 x 64), read once and shared by every question about it."""
    with Image.open(image_paths(split)[image_id]) as im:
        return im.convert("RGB")


def sample(split: str, index: int) -> Sample:
    """Question `index` of `split` as a Sample (meta: image id, split)."""
    q, a, ids = questions(split)
    if not 0 <= index < len(q):
        raise ValueError(f"index: {index} is out of range for the {len(q)} {split} questions")
    family = family_of(a[index])
    return Sample(id=f"easyvqa-{split}-{index}", family=family, images=[load_image(split, ids[index])],
                  question=q[index], answer=a[index], answer_type="yesno" if family == "easyvqa-yesno" else "exact",
                  meta={"image_id": ids[index], "split": split})


def easyvqa_split(split: str, n: int | None = None, seed: int = 0) -> list[Sample]:
    """`n` questions of `split` (all when None), a seeded random subset in question order.

    The subset is drawn without replacement, so it keeps the split's family mix (74% yes/no on test)."""
    total = len(questions(split)[0])
    if n is None or n >= total:
        idx: Sequence[int] = range(total)
    else:
        if n < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        idx = sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
    return [sample(split, i) for i in idx]


def overall_accuracy(metrics: dict[str, dict[str, float]]) -> float:
    """Question-weighted accuracy (%) over the easy-vqa families of an `EvalResult.metrics`."""
    fams = [f for f in FAMILIES if f in metrics]
    if not fams:
        raise ValueError(f"metrics: no easy-vqa family in {sorted(metrics)}")
    n = sum(metrics[f]["n"] for f in fams)
    return sum(metrics[f]["accuracy"] * metrics[f]["n"] for f in fams) / n
