"""Fixture files in the real formats of the `paper` scale's data, and a tiny llava-hf model, for CPU tests.

Every paper-scale test writes its inputs with these functions, so the formats live in one place:

- evaluation benchmarks in LLaVA-1.5's `playground/data/eval` layout (`write_eval_benchmarks`; the formats
  are documented in `common.data.benchmarks`);
- LLaVA-1.5's training data: stage-1 `LLaVA-Pretrain/blip_laion_cc_sbu_558k.json` and stage-2
  `llava_v1_5_mix665k.json`, with their images (`common.data.llava_instruct` reads them);
- COCO captions in Karpathy's `dataset_coco.json` (`common.data.captions` reads them);
- `tiny_paper_setup`: all of the above plus a tiny random llava-hf checkpoint folder
  (`common.models.tiny.save_tiny_llava_hf`), i.e. what `MODEL_PATH` and `DATA_ROOT` point at.

Images are a few pixels wide (the processor resizes them) and differ from file to file, so a tiny model's
answers differ between images. Writers only write files: pytest fixtures belong to the test modules.
"""
from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

SA = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


# ----------------------------------------------------------------------------------------------------
# File helpers
# ----------------------------------------------------------------------------------------------------


def write_image(path: Path, color: tuple[int, int, int] | None = None, size: tuple[int, int] = (12, 9)) -> Path:
    """A small RGB image: one `color`, or (None) a colour and a contrasting corner block derived from the
    file name, so different files hold different pictures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is not None:
        Image.new("RGB", size, color).save(path)
        return path
    h = zlib.crc32(path.name.encode())
    base = (h & 255, (h >> 8) & 255, (h >> 16) & 255)
    img = Image.new("RGB", size, base)
    img.paste(tuple(255 - c for c in base), (0, 0, size[0] // 2, size[1] // 2))
    img.save(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


def write_questions(path: Path, rows: list[tuple]) -> Path:
    """LLaVA's question JSONL, the one format the benchmark writers share: (question_id, image, text, category)
    rows, each text ending with the short-answer prompt as in LLaVA's eval files."""
    return write_jsonl(path, [{"question_id": qid, "image": image, "text": f"{text}\n{SA}", "category": category}
                              for qid, image, text, category in rows])


def b64_png(color: tuple[int, int, int]) -> str:
    """A one-colour PNG as base64 text, the way MMBench's tsv stores images."""
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------------------------------
# Evaluation benchmarks (layouts as in LLaVA's playground/data/eval; see common.data.benchmarks)
# ----------------------------------------------------------------------------------------------------


def write_pope(root: Path) -> None:
    base = root / "pope"
    for name in ("COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"):
        write_image(base / "val2014" / name)
    a, b = "COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"
    write_questions(base / "llava_pope_test.jsonl", [
        (1, a, "Is there a snowboard in the image?", "adversarial"),
        (2, a, "Is there a dog in the image?", "adversarial"),
        (3, b, "Is there a truck in the image?", "popular"),
        (4, b, "Is there an umbrella in the imange?", "random"),
    ])
    coco = base / "coco"
    write_jsonl(coco / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": a, "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": a, "text": "Is there a dog in the image?", "label": "no"},
    ])
    write_jsonl(coco / "coco_pope_popular.json", [
        {"question_id": 1, "image": b, "text": "Is there a truck in the image?", "label": "yes"},
    ])
    write_jsonl(coco / "coco_pope_random.json", [
        {"question_id": 1, "image": b, "text": "Is there an umbrella in the imange?", "label": "no"},
    ])


def write_textvqa(root: Path) -> None:
    base = root / "textvqa"
    write_image(base / "train_images" / "831bcec304a17054.jpg")
    write_image(base / "train_images" / "94ad4aad01e27a32.jpg", (0, 0, 255))
    ocr = "Reference OCR token: MORANGIE, AGED, 10"
    write_questions(base / "llava_textvqa_val_v051_ocr.jsonl", [
        ("831bcec304a17054", "831bcec304a17054.jpg", f"What brand liquor is on the right?\n{ocr}", "default"),
        ("831bcec304a17054", "831bcec304a17054.jpg", f"How long has the drink on the right been aged?\n{ocr}",
         "default"),
        ("94ad4aad01e27a32", "94ad4aad01e27a32.jpg", "What number is on the player's jersey?\nReference OCR token: ",
         "default"),
    ])
    def entry(qid, image_id, q, answers):
        return {"question": q, "image_id": image_id, "image_classes": ["Bottle"], "flickr_original_url": "",
                "flickr_300k_url": "", "image_width": 1024, "image_height": 768, "answers": answers,
                "question_tokens": q.lower().split(), "question_id": qid, "set_name": "val"}
    write_json(base / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [
            entry(34602, "831bcec304a17054", "what brand liquor is on the right?", ["bowmore islay"] * 7 + ["bowmore"] * 3),
            entry(34603, "831bcec304a17054", "how long has the drink on the right been aged?", ["10 years"] * 6 + ["10"] * 4),
            entry(34604, "94ad4aad01e27a32", "what number is on the player's jersey?", ["22"] * 10),
        ]})


def write_gqa(root: Path) -> None:
    base = root / "gqa"
    write_image(base / "data" / "images" / "n161313.jpg")
    write_image(base / "data" / "images" / "n235859.jpg", (0, 255, 0))
    write_questions(base / "llava_gqa_testdev_balanced.jsonl", [
        ("201307251", "n161313.jpg", "Is it overcast?", "default"),
        ("201640614", "n235859.jpg", "Who is wearing the dress?", "default"),
    ])
    write_json(base / "data" / "testdev_balanced_questions.json", {
        "201307251": {"question": "Is it overcast?", "imageId": "n161313", "answer": "no", "fullAnswer": "No, it is clear.",
                      "isBalanced": True, "types": {"structural": "verify", "semantic": "global", "detailed": "weatherVerify"}},
        "201640614": {"question": "Who is wearing the dress?", "imageId": "n235859", "answer": "woman",
                      "fullAnswer": "The woman is wearing a dress.", "isBalanced": True,
                      "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    })


def write_mme(root: Path, with_jsonl: bool = True) -> None:
    base = root / "MME"
    data = base / "MME_Benchmark_release_version"
    write_image(data / "code_reasoning" / "0020.png")
    (data / "code_reasoning" / "0020.txt").write_text(
        "Is a python code shown in the picture? Please answer yes or no.\tYes\n"
        "Is a c++ code shown in the picture? Please answer yes or no.\tNo\n", encoding="utf-8")
    write_image(data / "artwork" / "images" / "14777.jpg")
    (data / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (data / "artwork" / "questions_answers_YN" / "14777.txt").write_text(
        "Does this artwork belong to the type of religious? Please answer yes or no.\tYes\n"
        "Does this artwork belong to the type of historical?  Please answer yes or no.\tNo\n", encoding="utf-8")
    if with_jsonl:
        code, art = "code_reasoning/0020.png", "artwork/images/14777.jpg"  # MME's question id is its image
        write_questions(base / "llava_mme.jsonl", [
            (code, code, "Is a python code shown in the picture?", "code_reasoning"),
            (code, code, "Is a c++ code shown in the picture?", "code_reasoning"),
            (art, art, "Does this artwork belong to the type of religious?", "artwork"),
            (art, art, "Does this artwork belong to the type of historical?", "artwork"),
        ])


SQA_ENTRIES = [
    {"id": "4", "conversations": [
        {"from": "human", "value": "Which figure of speech is used in this text?\nSing, O goddess.\nA. chiasmus\nB. apostrophe"},
        {"from": "gpt", "value": "B"}]},
    {"id": "5", "image": "5/image.png", "conversations": [
        {"from": "human", "value": "<image>\nContext: A parachute test.\nWhich of the following could Gordon's test show?\n"
                                   "A. if the spacecraft was damaged\nB. how steady a parachute was\nC. whether it would swing"},
        {"from": "gpt", "value": "B"}]},
    {"id": "11", "image": "11/image.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the name of the colony shown?\nA. Maryland\nB. New Hampshire\nC. Rhode Island\nD. Vermont"},
        {"from": "gpt", "value": "B"}]},
]


def write_sqa(root: Path, problems: bool = True) -> None:
    base = root / "scienceqa"
    write_image(base / "images" / "test" / "5" / "image.png")
    write_image(base / "images" / "test" / "11" / "image.png", (9, 9, 9))
    write_json(base / "llava_test_CQM-A.json", SQA_ENTRIES)
    if problems:
        write_json(base / "problems.json", {
            "4": {"question": "Which figure of speech is used in this text?", "choices": ["chiasmus", "apostrophe"],
                  "answer": 1, "image": None, "subject": "language science", "grade": "grade11", "split": "test"},
            "5": {"question": "Which of the following could Gordon's test show?",
                  "choices": ["if the spacecraft was damaged", "how steady a parachute was", "whether it would swing"],
                  "answer": 1, "image": "image.png", "subject": "natural science", "grade": "grade8", "split": "test"},
            "11": {"question": "What is the name of the colony shown?",
                   "choices": ["Maryland", "New Hampshire", "Rhode Island", "Vermont"], "answer": 1, "image": "image.png",
                   "subject": "social science", "grade": "grade2", "topic": "us-history", "split": "test"},
        })


MMB_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
              "comment", "split"]


def write_mmb(root: Path, rows: list[list[str]] | None = None, header=MMB_HEADER, name="mmbench_dev_20230712") -> None:
    if rows is None:
        rows = [
            ["241", "What is the main object?", "nan", "a cat", "a dog", "a car", "a tree", "B", "object_localization",
             b64_png((1, 2, 3)), "COCO", "finegrained_perception (instance-level)", "nan", "dev"],
            ["242", "Which season is shown?", "The photo was taken outdoors.", "spring", "summer", "winter", "nan", "C",
             "scene", b64_png((4, 5, 6)), "COCO", "coarse_perception", "nan", "dev"],
        ]
    path = root / "mmbench" / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def write_vqav2(root: Path) -> None:
    base = root / "vqav2"
    write_image(base / "test2015" / "COCO_test2015_000000262144.jpg")
    image = "COCO_test2015_000000262144.jpg"
    write_questions(base / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        (262144000, image, "Is the ball flying towards the batter?", "default"),
        (262144001, image, "What is the batter about to do?", "default"),
    ])


BENCHMARK_WRITERS = {"pope": write_pope, "textvqa": write_textvqa, "gqa": write_gqa, "mme": write_mme,
                     "sqa": write_sqa, "mmb": write_mmb, "vqav2": write_vqav2}
"""Benchmark name (as in `common.data.benchmarks.BENCHMARKS`) -> writer(root)."""


def write_eval_benchmarks(root: Path, names: Iterable[str] | None = None) -> Path:
    """Every benchmark (or those in `names`) into one `playground/data/eval`-style folder; returns `root`."""
    names = sorted(BENCHMARK_WRITERS) if names is None else list(names)
    unknown = sorted(set(names) - set(BENCHMARK_WRITERS))
    if unknown:
        raise ValueError(f"names: unknown benchmarks {unknown}; known: {sorted(BENCHMARK_WRITERS)}")
    for name in names:
        BENCHMARK_WRITERS[name](root)
    return root


# ----------------------------------------------------------------------------------------------------
# LLaVA-1.5 training data (layouts of the LLaVA-Pretrain and LLaVA-Instruct releases under playground/data)
# ----------------------------------------------------------------------------------------------------

# Brief-caption instructions of LLaVA's stage-1 data (listed in the LLaVA paper's appendix)
CAPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
)
CAPTIONS = (
    "a red car parked on the street", "a dog sitting in the grass", "two people riding bicycles on a road",
    "a white bus in front of a building", "a cat sleeping on a blue sofa", "a green tree under a cloudy sky",
    "a man holding an umbrella in the rain", "a bowl of orange fruit on a table",
)


def write_llava_pretrain(root: Path, n: int = 8) -> Path:
    """`n` entries of LLaVA-1.5's stage-1 data: `<root>/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json` with the
    images under `<root>/LLaVA-Pretrain/images/<first 5 digits>/<id>.jpg`. As in the release, `<image>` comes
    before the instruction in some entries and after it in others. Returns the JSON path."""
    base = root / "LLaVA-Pretrain"
    entries = []
    for k in range(n):
        pid = f"{12 + 4537 * k:09d}"
        image = f"{pid[:5]}/{pid}.jpg"
        write_image(base / "images" / image)
        instruction = CAPTION_INSTRUCTIONS[k % len(CAPTION_INSTRUCTIONS)]
        human = f"<image>\n{instruction}" if k % 2 == 0 else f"{instruction}\n<image>"
        entries.append({"id": pid, "image": image, "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": CAPTIONS[k % len(CAPTIONS)]}]})
    return write_json(base / "blip_laion_cc_sbu_558k.json", entries)


def _human(value: str) -> dict[str, str]:
    return {"from": "human", "value": value}


def _gpt(value: str) -> dict[str, str]:
    return {"from": "gpt", "value": value}


def _instruct_entry(kind: str, k: int) -> dict[str, Any]:
    """One stage-2 entry of source `kind`, in the style of that source's entries in llava_v1_5_mix665k.json."""
    if kind == "coco":  # LLaVA-Instruct-150K conversation: several turns about one image
        cid = f"{33471 + 17 * k:012d}"
        return {"id": cid, "image": f"coco/train2017/{cid}.jpg", "conversations": [
            _human("<image>\nWhat are the colors of the bus in the image?"),
            _gpt("The bus in the image is white and red."),
            _human("What feature can be seen on the back of the bus?"),
            _gpt("The back of the bus features an advertisement."),
        ]}
    if kind == "text":  # ShareGPT: text only, no "image" key
        return {"id": f"i6IyJda_{k}", "conversations": [
            _human("How many legs does a cat have?"), _gpt("A cat has four legs."),
            _human("And a bird?"), _gpt("A bird has two legs."),
        ]}
    if kind == "gqa":  # short answers, several questions per image
        gid = str(2354786 + k)
        return {"id": gid, "image": f"gqa/images/{gid}.jpg", "conversations": [
            _human(f"<image>\nIs the sky dark?\n{SA}"), _gpt("Yes"),
            _human(f"What is in front of the tree?\n{SA}"), _gpt("Car"),
        ]}
    if kind == "ocr_vqa":
        oid = str(689852649 + k)
        return {"id": oid, "image": f"ocr_vqa/images/{oid}.jpg", "conversations": [
            _human("<image>\nWho wrote this book?"), _gpt("Mark Twain"),
            _human("Is this a comedy book?"), _gpt("No"),
        ]}
    if kind == "textvqa":  # TextCaps captions
        tid = f"{0x011e7e629fb9ae7b + k:016x}"
        return {"id": tid, "image": f"textvqa/train_images/{tid}.jpg", "conversations": [
            _human("<image>\nProvide a one-sentence caption for the provided image."),
            _gpt("A red stop sign on a street corner."),
        ]}
    if kind == "vg":  # region grounding: normalised box coordinates as text
        vid = str(2346777 + k)
        return {"id": f"VG_{vid}", "image": f"vg/VG_100K/{vid}.jpg", "conversations": [
            _human("<image>\nPlease provide the bounding box coordinate of the region this sentence describes: "
                   "a red car."),
            _gpt("[0.12, 0.30, 0.54, 0.71]"),
        ]}
    raise ValueError(f"kind: unknown source {kind!r}")


# entry k of write_llava_instruct comes from INSTRUCT_SOURCES[k % 6]: entry 1 is text-only whenever n >= 2
INSTRUCT_SOURCES = ("coco", "text", "gqa", "ocr_vqa", "textvqa", "vg")


def write_llava_instruct(root: Path, n: int = 8) -> Path:
    """`n` entries of LLaVA-1.5's stage-2 data: `<root>/llava_v1_5_mix665k.json` with the images under `<root>`
    (coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K) and text-only ShareGPT
    entries without an "image" key, as in the release. Returns the JSON path."""
    entries = [_instruct_entry(INSTRUCT_SOURCES[k % len(INSTRUCT_SOURCES)], k) for k in range(n)]
    for e in entries:
        if "image" in e:
            write_image(root / e["image"])
    return write_json(root / "llava_v1_5_mix665k.json", entries)


# ----------------------------------------------------------------------------------------------------
# COCO captions, Karpathy split
# ----------------------------------------------------------------------------------------------------

# entry k of write_coco_captions is in KARPATHY_SPLITS[k % 6]; train images come from train2014, the rest from val2014
KARPATHY_SPLITS = ("test", "val", "test", "restval", "test", "train")


def write_coco_captions(root: Path, n: int = 6) -> Path:
    """`n` images of Karpathy's COCO split file `<root>/coco/annotations/dataset_coco.json` (five captions
    each) with the images under `<root>/coco/val2014/` (`train2014/` for the train split). Returns the JSON path."""
    images, sentid = [], 0
    for k in range(n):
        split = KARPATHY_SPLITS[k % len(KARPATHY_SPLITS)]
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 391895 + 1000 * k
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(root / "coco" / folder / filename)
        raws = [f"{CAPTIONS[(k + j) % len(CAPTIONS)].capitalize()}." for j in range(5)]
        raws[0] += " "  # a few raw captions in the real file end in a space
        sentences = [{"tokens": r.strip(" .").lower().split(), "raw": r, "imgid": k, "sentid": sentid + j}
                     for j, r in enumerate(raws)]
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                       "imgid": k, "split": split, "sentences": sentences, "cocoid": cocoid})
        sentid += len(sentences)
    return write_json(root / "coco" / "annotations" / "dataset_coco.json", {"images": images, "dataset": "coco"})


# ----------------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------------


def tiny_paper_setup(tmp_path: Path, *, num_layers: int = 4, n_visual: int = 576) -> tuple[Path, Path]:
    """A tiny llava-hf checkpoint folder and one data folder holding every fixture above: (model_dir, data_root).

    `data_root` holds the evaluation benchmarks and COCO captions (LLaVA's playground/data/eval layout) and the
    stage-1/stage-2 training data (playground/data layout) side by side, so one `DATA_ROOT` serves every loader.
    """
    from common.models.tiny import save_tiny_llava_hf

    model_dir = save_tiny_llava_hf(tmp_path / "llava-tiny-hf", num_layers=num_layers, n_visual=n_visual)
    data_root = tmp_path / "data"
    write_eval_benchmarks(data_root)
    write_coco_captions(data_root)
    write_llava_pretrain(data_root)
    write_llava_instruct(data_root)
    return model_dir, data_root
