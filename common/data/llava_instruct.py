"""LLaVA's training-data format, shared by the paper-scale training recipes: read conversations, open images late.

Format (haotian-liu/LLaVA, `docs/Data.md`, `scripts/v1_5/{pretrain,finetune}.sh`, `llava/train/train.py`): one
JSON file holding a list of entries

    {"id": "000000033471",
     "image": "coco/train2017/000000033471.jpg",          # relative to the image folder; absent if text-only
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "White and red."}, ...]}

where turns alternate human/gpt starting with human, and an entry with an image has exactly one `<image>`
marker, in a human turn (the first one in the releases; LLaVA's `preprocess_multimodal` moves it to the front).

| stage | data_root-relative JSON (`--data_path`)          | images (`--image_folder`)                       |
|-------|--------------------------------------------------|-------------------------------------------------|
| 1     | LLaVA-Pretrain/blip_laion_cc_sbu_558k.json       | LLaVA-Pretrain/images/                          |
| 2     | llava_v1_5_mix665k.json                          | data_root itself: coco/train2017, gqa/images,   |
|       |                                                  | ocr_vqa/images, textvqa/train_images, vg/VG_100K(_2) |

`data_root` is LLaVA's `playground/data`. Stage 1 is 558k BLIP-captioned LAION/CC/SBU images, one brief-caption
instruction each, with `<image>` before or after the instruction. Stage 2 mixes LLaVA-Instruct, VQA, OCR,
TextCaps and region data with text-only ShareGPT conversations (entries without "image").

The releases are large (mix665k is ~1 GB of JSON), so a `Conversation` keeps its image as a path and opens it
only in `load_image`; files are parsed entry by entry, so `limit` stops reading early. Errors in the data raise
ValueError naming the file, the line and the entry index (0-based position in the JSON list).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from common.data.benchmarks import _read_json_list

__all__ = ["Conversation", "IMAGE_TOKEN", "load_conversations", "load_instruct", "load_pretrain",
           "instruct_path", "pretrain_path"]

IMAGE_TOKEN = "<image>"
PRETRAIN_JSON = "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
PRETRAIN_IMAGES = "LLaVA-Pretrain/images"
INSTRUCT_JSON = "llava_v1_5_mix665k.json"
INSTRUCT_IMAGE_DIRS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K",
                       "vg/VG_100K_2")
ROLES = ("human", "gpt")


@dataclass
class Conversation:
    """One training entry.

    Attributes:
        id: the entry's `id`.
        image: absolute path of its image, or None for a text-only entry; opened by `load_image`.
        turns: (human, gpt) text pairs in order; the `<image>` marker (and the whitespace around it) is removed.
        image_turn: index in `turns` of the human text that held the marker (where the image's tokens go), or None.
    """

    id: str
    image: Path | None
    turns: list[tuple[str, str]]
    image_turn: int | None = None

    def load_image(self) -> Image.Image:
        """The image as RGB, read now (the file is closed again)."""
        if self.image is None:
            raise ValueError(f"conversation {self.id!r} is text-only: it has no image")
        with Image.open(self.image) as im:
            return im.convert("RGB")


def _expected(root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(f"expected {path} ({what})")
    return path


def pretrain_path(data_root: str | os.PathLike[str]) -> Path:
    """`<data_root>/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json`; FileNotFoundError naming the layout if absent."""
    root = Path(data_root).expanduser()
    return _expected(root, PRETRAIN_JSON, f"LLaVA-1.5 stage-1 data, images under {root / PRETRAIN_IMAGES}/")


def instruct_path(data_root: str | os.PathLike[str]) -> Path:
    """`<data_root>/llava_v1_5_mix665k.json`; FileNotFoundError naming the layout if absent."""
    root = Path(data_root).expanduser()
    dirs = ", ".join(f"{d}/" for d in INSTRUCT_IMAGE_DIRS)
    return _expected(root, INSTRUCT_JSON, f"LLaVA-1.5 stage-2 data, images under {root}/: {dirs}")


def _entries(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(entry index, line, entry) of a JSON list; a JSON error also names the entry it broke."""
    index = 0
    it = _read_json_list(path)
    while True:
        try:
            lineno, rec = next(it)
        except StopIteration:
            return
        except ValueError as e:
            raise ValueError(f"{e} (entry {index})") from None
        yield index, lineno, rec
        index += 1


def _turns(rec: dict[str, Any], where: str) -> tuple[list[tuple[str, str]], int | None]:
    """Pairs of (human, gpt) texts with the marker stripped, and the pair that held the marker."""
    convs = rec.get("conversations")
    if convs is None:
        raise ValueError(f"{where}: missing `conversations`")
    if not isinstance(convs, list) or not convs:
        raise ValueError(f"{where}: `conversations` must be a non-empty list of turns")
    texts: list[str] = []
    image_turn: int | None = None
    for t, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {t} must be an object with a string `value`")
        role = turn.get("from")
        if role != ROLES[t % 2]:
            raise ValueError(f"{where}: turn {t} is from {role!r}, expected {ROLES[t % 2]!r} "
                             "(turns alternate human/gpt, starting with human)")
        text = turn["value"]
        n = text.count(IMAGE_TOKEN)
        if n:
            if role != "human" or n > 1 or image_turn is not None:
                raise ValueError(f"{where}: turn {t}: {IMAGE_TOKEN} must appear once, in a human turn")
            image_turn = t // 2
            text = text.replace(IMAGE_TOKEN, "").strip()
        texts.append(text)
    if len(texts) % 2:
        raise ValueError(f"{where}: the last turn is from 'human' without a 'gpt' answer")
    return list(zip(texts[0::2], texts[1::2])), image_turn


def load_conversations(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    limit: int | None = None,
    require_image: bool = False,
) -> list[Conversation]:
    """The entries of a LLaVA training JSON, in file order (see the module docstring).

    Args:
        json_path: the JSON list (e.g. `pretrain_path(root)` or `instruct_path(root)`).
        image_root: the folder the entries' "image" paths are relative to; every named image must exist.
        limit: stop after this many conversations (the rest of the file is neither read nor checked).
        require_image: skip text-only entries (after checking them).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None; got {limit!r}")
    path = Path(json_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    root = Path(image_root).expanduser()
    out: list[Conversation] = []
    if limit == 0:
        return out
    for index, lineno, rec in _entries(path):
        where = f"{path}:{lineno}: entry {index}"
        if "id" not in rec:
            raise ValueError(f"{where}: missing `id`")
        where += f" (id {rec['id']!r})"
        turns, image_turn = _turns(rec, where)
        image: Path | None = None
        if "image" in rec:
            image = root / str(rec["image"])
            if not image.is_file():
                raise ValueError(f"{where}: image file not found: {image}")
            if image_turn is None:
                raise ValueError(f"{where}: names an image but no human turn holds {IMAGE_TOKEN}")
        elif image_turn is not None:
            raise ValueError(f"{where}: has {IMAGE_TOKEN} but no `image`")
        if image is None and require_image:
            continue
        out.append(Conversation(id=str(rec["id"]), image=image, turns=turns, image_turn=image_turn))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_pretrain(data_root: str | os.PathLike[str], *, limit: int | None = None) -> list[Conversation]:
    """LLaVA-1.5's stage-1 caption data under `data_root` (playground/data)."""
    return load_conversations(pretrain_path(data_root), Path(data_root).expanduser() / PRETRAIN_IMAGES, limit=limit)


def load_instruct(data_root: str | os.PathLike[str], *, limit: int | None = None,
                  require_image: bool = False) -> list[Conversation]:
    """LLaVA-1.5's stage-2 instruction data under `data_root` (playground/data)."""
    return load_conversations(instruct_path(data_root), data_root, limit=limit, require_image=require_image)
