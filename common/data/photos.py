"""Real photos shipped inside installed packages, each with a real question: for qualitative pruning figures.

No natural-image VQA set can be installed offline (shared/offline-assets.md §4c), but a few photos ship with
the project's own dependencies (scikit-learn, matplotlib) and more with scikit-image or Debian's `opencv-doc`
when they are installed. `real_photos()` returns those present here as `Sample`s (family "photo"); the
questions and reference answers were written by looking at each photo.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from common.data.sample import Sample

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
# (source, file inside it, question, answer, answer_type); source: an importable package or "opencv-doc"
PHOTOS: tuple[tuple[str, str, str, str, str], ...] = (
    ("sklearn", "datasets/images/china.jpg", "Is there a building in the image?", "yes", "yesno"),
    ("sklearn", "datasets/images/flower.jpg", "What color is the flower?", "orange", "exact"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "Is there a person in the image?", "yes", "yesno"),
    ("skimage", "data/chelsea.png", "What animal is in the image?", "cat", "exact"),
    ("skimage", "data/coffee.png", "Is there a cup in the image?", "yes", "yesno"),
    ("skimage", "data/rocket.jpg", "Is there a rocket in the image?", "yes", "yesno"),
    ("opencv-doc", "fruits.jpg", "Is there an apple in the image?", "yes", "yesno"),
    ("opencv-doc", "baboon.jpg", "What animal is in the image?", "monkey", "exact"),
)


def _root(source: str) -> Path | None:
    if source == "opencv-doc":
        return OPENCV_DOC if OPENCV_DOC.is_dir() else None
    spec = importlib.util.find_spec(source)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def real_photos(limit: int | None = None) -> list[Sample]:
    """The photos of PHOTOS available here (RGB), in table order, at most `limit`."""
    out = []
    for source, rel, question, answer, kind in PHOTOS:
        root = _root(source)
        path = root / rel if root is not None else None
        if path is None or not path.is_file():
            continue
        with Image.open(path) as im:
            image = im.convert("RGB")
        out.append(Sample(id=f"photo-{Path(rel).stem}", family="photo", images=[image], question=question,
                          answer=answer, answer_type=kind, meta={"source": f"{source}:{rel}"}))
        if limit is not None and len(out) >= limit:
            break
    return out
