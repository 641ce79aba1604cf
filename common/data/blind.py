"""Blind copies of a benchmark: the reference point below which a model is not using the image at all."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from PIL import Image

from common.data.sample import Sample


def blind_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Copies of `samples` whose every image (and frame) is one uniform image of the mean RGB colour
    over all images of `samples`, each keeping its own size."""
    total, count = np.zeros(3), 0
    for s in samples:
        for im in s.images:
            arr = np.asarray(im.convert("RGB"), dtype=np.float64)
            total += arr.reshape(-1, 3).sum(0)
            count += arr.shape[0] * arr.shape[1]
    colour = tuple(int(round(c)) for c in total / max(count, 1))
    blanks: dict[tuple[int, int], Image.Image] = {}
    out = []
    for s in samples:
        imgs = [blanks.setdefault(im.size, Image.new("RGB", im.size, colour)) for im in s.images]
        out.append(replace(s, images=imgs, meta={**s.meta, "blind": True}))
    return out
