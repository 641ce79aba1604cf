"""COCO captions on the Karpathy split, read from local files as `Sample`s of family "caption".

Format: Karpathy's `dataset_coco.json` (from the "Deep Visual-Semantic Alignments" release, used by most
captioning evaluations for its 5000-image test split), at `<data_root>/coco/annotations/dataset_coco.json`:

    {"dataset": "coco",
     "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
                 "split": "test", "imgid": 0, "sentids": [...],
                 "sentences": [{"raw": "A man with a red helmet on a small moped on a dirt road. ",
                                "tokens": [...], "imgid": 0, "sentid": 770337}, ...]}, ...]}

`split` is one of train / restval / val / test (test and val: 5000 images each; restval is the rest of
val2014, which papers usually add to train). Images live at `<data_root>/coco/<filepath>/<filename>`.
`data_root` is the same folder as `common.data.benchmarks`' (LLaVA's playground/data/eval); None reads $DATA_ROOT.

Prompt: "Provide a one-sentence caption for the provided image.", the instruction LLaVA-1.5 trains its
TextCaps captions with (paper, Table 7) and lmms-eval's `coco2014_cap_val` / `coco2017_cap_val` tasks ask with.
(lmms-eval's `coco_karpathy_*` tasks ask "Describe the image briefly." instead; we keep one prompt for every
COCO caption evaluation.) References are all raw sentences, whitespace-stripped, scored with caption metrics
(`answer_type` "caption"); `Sample.answer` is the first.

Images are read into memory compressed and decoded on first use, as in `common.data.benchmarks`. Errors in the
data raise ValueError naming the file and the entry (`images[i]`); a missing annotation file raises
FileNotFoundError naming the expected layout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common.data.benchmarks import _Images, _read_json, _resolve_root
from common.data.sample import Sample

__all__ = ["CAPTION_PROMPT", "KARPATHY_SPLITS", "karpathy_path", "load_coco_karpathy"]

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
KARPATHY_JSON = "coco/annotations/dataset_coco.json"
KARPATHY_SPLITS = ("train", "restval", "val", "test")


def karpathy_path(data_root: str | os.PathLike[str] | None = None) -> Path:
    """`<data_root>/coco/annotations/dataset_coco.json`; FileNotFoundError naming the layout if absent."""
    root = _resolve_root(data_root)
    path = root / KARPATHY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"expected {path} (Karpathy-split COCO captions, images under "
                                f"{root / 'coco' / 'val2014'}/)")
    return path


def _sentences(entry: dict[str, Any], where: str) -> list[str]:
    sents = entry.get("sentences")
    if not isinstance(sents, list) or not sents:
        raise ValueError(f"{where}: `sentences` must be a non-empty list")
    raws = [s.get("raw") if isinstance(s, dict) else None for s in sents]
    if not all(isinstance(r, str) and r.strip() for r in raws):
        raise ValueError(f"{where}: every sentence needs a non-empty `raw` caption")
    return [r.strip() for r in raws]


def load_coco_karpathy(
    data_root: str | os.PathLike[str] | None = None, split: str = "test", limit: int | None = None
) -> list[Sample]:
    """The images of one Karpathy split, in file order, as caption `Sample`s (see the module docstring).

    Args:
        data_root: the folder holding `coco/`; None reads $DATA_ROOT.
        split: "test" (default), "val", "train" or "restval".
        limit: keep only the first `limit` images of the split.

    Each sample: id "coco-<cocoid>", family and answer_type "caption", question CAPTION_PROMPT, answer the
    first reference; meta holds "cocoid", "image_file" (relative to coco/) and "split".
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"split: unknown Karpathy split {split!r}; expected one of {KARPATHY_SPLITS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None; got {limit!r}")
    path = karpathy_path(data_root)
    coco = path.parent.parent
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected an object with an `images` list")
    images = _Images()
    out: list[Sample] = []
    for i, entry in enumerate(data["images"]):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        missing = [k for k in ("filepath", "filename", "split", "cocoid", "sentences") if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        if entry["split"] != split:
            continue
        refs = _sentences(entry, where)
        rel = f"{entry['filepath']}/{entry['filename']}"
        if not (coco / rel).is_file():
            raise ValueError(f"{where}: image file not found: {coco / rel}")
        image = images.get(coco / rel, path, None)
        out.append(Sample(
            id=f"coco-{entry['cocoid']}", family="caption", images=[image], question=CAPTION_PROMPT,
            answer=refs[0], answer_type="caption", references=refs,
            meta={"cocoid": entry["cocoid"], "image_file": rel, "split": split},
        ))
    return out
