"""Loaders for the `paper` scale's real benchmarks, read from local files in LLaVA-1.5's evaluation layout.

Nothing here touches the network. `data_root` is LLaVA's `playground/data/eval` folder (or any folder laid
out the same way); `load_benchmark(name, data_root)` returns `Sample`s, `iter_benchmark` yields them one by
one. If `data_root` is None the environment variable `DATA_ROOT` is used.

Formats and where they come from. Everything below was checked against haotian-liu/LLaVA: `docs/Evaluation.md`,
`scripts/v1_5/eval/{pope,textvqa,gqa,mme,sqa,mmbench,vqav2}.sh`, `llava/eval/{eval_pope,eval_textvqa,
eval_science_qa,model_vqa_science,model_vqa_mmbench}.py` and the question files of `eval.zip` as committed
under `playground/data/eval/` at 32cebc3 (first lines read). Paths are relative to `data_root`.

| name    | questions (LLaVA jsonl unless noted)          | images                           | answers                                    |
|---------|-----------------------------------------------|----------------------------------|--------------------------------------------|
| pope    | pope/llava_pope_test.jsonl                    | pope/val2014/                    | pope/coco/coco_pope_{random,popular,adversarial}.json |
| textvqa | textvqa/llava_textvqa_val_v051_ocr.jsonl      | textvqa/train_images/            | textvqa/TextVQA_0.5.1_val.json             |
| gqa     | gqa/llava_gqa_testdev_balanced.jsonl          | gqa/data/images/ (or gqa/images/)| gqa/data/testdev_balanced_questions.json (or gqa/) |
| mme     | MME/llava_mme.jsonl                           | MME/MME_Benchmark_release_version/ | the per-category txt files in the same folder |
| sqa     | scienceqa/llava_test_CQM-A.json (JSON list)   | scienceqa/images/test/           | in the question file; scienceqa/problems.json cross-checked if present |
| mmb     | mmbench/mmbench_dev_20230712.tsv (base64 images) | inside the tsv                | the tsv's `answer` column                  |
| vqav2   | vqav2/llava_vqav2_mscoco_test-dev2015.jsonl   | vqav2/test2015/                  | none: test-dev answers are not public      |

A question line is `{"question_id": ..., "image": "x.jpg", "text": "<question>\\n<instruction>", "category": ...}`.
`Sample.question` is the `text` exactly as LLaVA shows it to the model (minus the `<image>` token), so
prompts match the published numbers; `meta["raw_question"]` holds the bare question.

Per benchmark:
- pope: `category` is the negative-sampling split (`meta["pope_split"]`). Labels are joined the way
  `eval_pope.py` joins them: the k-th question of a category <-> the k-th line of `coco_pope_<category>.json`
  (JSON lines with `label` "yes"/"no"); we also check that both name the same image. `split` picks one of
  random/popular/adversarial. answer_type "yesno".
- textvqa: answers joined like `eval_textvqa.py`: key (image_id, first line of the prompt, lower-cased)
  into `data` of TextVQA_0.5.1_val.json; all ten `answers` are the references (VQA soft accuracy). The LLaVA
  prompt includes the "Reference OCR token:" line (LLaVA-1.5's published TextVQA setting). The jsonl's
  question_id is the image id and is not unique, so `Sample.id` uses the annotation's `question_id`.
- gqa: answers from GQA's own `testdev_balanced_questions.json` (a dict question id -> record with `answer`,
  `imageId`, `types`, ...), the file GQA's official `eval.py` reads; single reference, exact match.
- mme: the jsonl `question_id` is the image path and is shared by the two questions of an image (MME's
  acc+ pairs: `meta["pair_id"]`); `Sample.id` appends "#0"/"#1". Answers are joined like LLaVA's
  `convert_answer_to_mme.py`: `<category>/questions_answers_YN/<stem>.txt` when `<category>/images/` exists,
  else `<category>/<stem>.txt`; each line "question<TAB>Yes|No", keyed by the question with
  " Please answer yes or no." (also the two-space variant found in a few files). Without llava_mme.jsonl
  the loader walks the category folders itself, in sorted order, and phrases prompts as llava_mme.jsonl does.
  `split` picks one category (e.g. "OCR"). A nested `MME_Benchmark_release_version/MME_Benchmark/` (as some
  unpacked copies have it) is used when present.
- sqa: ScienceQA-IMG = the entries of llava_test_CQM-A.json that have an `image` (text-only questions have
  no image and are skipped, as LLaVA's IMG accuracy does). The question is the human turn without `<image>`
  plus "\\nAnswer with the option's letter from the given choices directly." (`--single-pred-prompt` of
  sqa.sh); options are parsed from its trailing "A. ..." lines; the answer is the gpt turn's letter.
  If scienceqa/problems.json exists, its `choices` and `answer` index must agree (else ValueError).
- mmb: columns read by name (`index, question, hint, A..D, answer, category, image, ...`). Options stop at
  the first missing one (empty, "nan" or "none", as `model_vqa_mmbench.py`'s `is_none`). Prompt =
  [hint + "\\n"] + question + "\\nA. ..." + "\\nAnswer with the option's letter from the given choices directly."
  Single pass, no circular evaluation (mmbench.sh does not pass `--all-rounds`). A tsv without an `answer`
  column (test split) yields samples without references, like vqav2.
- vqav2: the test-dev answers are not public (LLaVA submits to the EvalAI server). Samples carry
  answer "", `references == []` and `meta["has_answer"] = False`; a `UserWarning` says so. Scoring them
  locally is impossible by construction.

`choices` of "choice" samples are the options with their letters, e.g. ["A. chiasmus", "B. apostrophe"];
`answer` is the letter; `meta["options"]` holds the bare option texts.

Unsure (no stored copy to check against, so from the public dataset releases and memory):
- the field names of GQA's `testdev_balanced_questions.json` records beyond `answer`/`imageId`;
- the column set of the MMBench tsv beyond those `model_vqa_mmbench.py` reads (`index, question, hint,
  A-D, image`) plus `answer` and `category`; extra columns are kept in `meta` as they are;
- the VQAv2 jsonl name and line format follow vqav2.sh and the other jsonl files (not seen directly).

Images are read into memory compressed (bytes) and decoded by PIL on first use, so a loaded benchmark holds
no open file handles and costs about its image files' size; samples of the same image share one object.
Errors in the data (a missing image, a bad JSON line, an answer that is not of the expected kind, a
question with no answer) raise ValueError naming the file and line number.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import os
import re
import warnings
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, UnidentifiedImageError

from common.data.sample import Sample

__all__ = ["BENCHMARKS", "load_benchmark", "iter_benchmark", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "DATA_ROOT"
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
MME_SUFFIX = " Please answer yes or no."
POPE_SPLITS = ("adversarial", "popular", "random")  # the order of llava_pope_test.jsonl
OPTION_LETTERS = "ABCDEFGHIJ"


# ----------------------------------------------------------------------------------------------------
# Shared readers
# ----------------------------------------------------------------------------------------------------


def _fail(path: Path, line: int | None, msg: str) -> ValueError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return ValueError(f"{where}: {msg}")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) for every non-blank line of a JSON-lines file."""
    if not path.is_file():
        raise _fail(path, None, "file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(path, lineno, f"bad JSON line ({e.msg})") from None
            if not isinstance(rec, dict):
                raise _fail(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise _fail(path, None, "file not found")
    with path.open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise _fail(path, e.lineno, f"bad JSON ({e.msg})") from None


def _read_json_list(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line where the entry starts, entry) for every object of a JSON file holding one list."""
    if not path.is_file():
        raise _fail(path, None, "file not found")
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    seen_pos, seen_line = 0, 1

    def line_at(p: int) -> int:  # incremental, so the whole file is scanned once
        nonlocal seen_pos, seen_line
        seen_line += text.count("\n", seen_pos, p)
        seen_pos = p
        return seen_line

    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise _fail(path, line_at(pos), "expected a JSON list")
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        lineno = line_at(pos)
        try:
            rec, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _fail(path, e.lineno, f"bad JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise _fail(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
        yield lineno, rec
        pos = ws.match(text, pos).end()
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            raise _fail(path, line_at(pos), "bad JSON (expected ',' or ']')")
        pos = ws.match(text, pos + 1).end()


def _field(rec: dict[str, Any], key: str, path: Path, lineno: int | None) -> Any:
    if key not in rec:
        raise _fail(path, lineno, f"missing field {key!r}")
    return rec[key]


class _Images:
    """Opens each image file once (as in-memory bytes, decoded lazily by PIL) and shares it between the
    samples of nearby lines; only the `keep` most recently used files are remembered, so iterating a whole
    benchmark does not pin every image in memory."""

    def __init__(self, keep: int = 64) -> None:
        self._cache: OrderedDict[Path, Image.Image] = OrderedDict()
        self._keep = keep

    def get(self, image_path: Path, src: Path, lineno: int | None) -> Image.Image:
        if image_path in self._cache:
            self._cache.move_to_end(image_path)
            return self._cache[image_path]
        if not image_path.is_file():
            raise _fail(src, lineno, f"image file not found: {image_path}")
        img = _open_bytes(image_path.read_bytes(), src, lineno, str(image_path))
        self._cache[image_path] = img
        if len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return img


def _open_bytes(data: bytes, src: Path, lineno: int | None, what: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as e:
        raise _fail(src, lineno, f"cannot read image {what}: {e}") from None


def _first_existing(root: Path, candidates: tuple[str, ...], kind: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise ValueError(f"{kind} not found under {root}; tried {', '.join(candidates)}")


def _strip_instruction(text: str) -> str:
    """The bare question: the first line of a LLaVA prompt (drops the instruction / OCR lines)."""
    return text.split("\n", 1)[0].strip()


def _yesno(value: Any, path: Path, lineno: int | None) -> str:
    v = str(value).strip().lower()
    if v not in ("yes", "no"):
        raise _fail(path, lineno, f"unknown answer {value!r} for a yes/no question (expected yes or no)")
    return v


def _check_split(name: str, split: str | None, allowed: tuple[str, ...], default: str | None) -> str | None:
    if split is None:
        return default
    if split not in allowed:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {allowed}")
    return split


def _llava_jsonl(
    qfile: Path, image_dir: Path, images: _Images
) -> Iterator[tuple[int, dict[str, Any], Image.Image]]:
    """LLaVA question lines with their image; checks the fields every loader needs."""
    for lineno, rec in _read_jsonl(qfile):
        _field(rec, "question_id", qfile, lineno)
        _field(rec, "text", qfile, lineno)
        image = images.get(image_dir / str(_field(rec, "image", qfile, lineno)), qfile, lineno)
        yield lineno, rec, image


# ----------------------------------------------------------------------------------------------------
# Loaders (one per benchmark); each yields Samples in file order
# ----------------------------------------------------------------------------------------------------


def _pope(root: Path, split: str | None) -> Iterator[Sample]:
    split = _check_split("pope", split, POPE_SPLITS, None)
    base = root / "pope"
    qfile, image_dir = base / "llava_pope_test.jsonl", base / "val2014"
    labels: dict[str, tuple[Path, list[tuple[int, dict[str, Any]]]]] = {}
    seen: dict[str, int] = defaultdict(int)
    images = _Images()
    for lineno, rec in _read_jsonl(qfile):
        cat = str(_field(rec, "category", qfile, lineno))
        if cat not in POPE_SPLITS:
            raise _fail(qfile, lineno, f"unknown POPE category {cat!r}; expected one of {POPE_SPLITS}")
        if split is not None and cat != split:
            continue
        if cat not in labels:
            lfile = base / "coco" / f"coco_pope_{cat}.json"
            labels[cat] = (lfile, list(_read_jsonl(lfile)))
        lfile, rows = labels[cat]
        k = seen[cat]
        seen[cat] += 1
        if k >= len(rows):
            raise _fail(
                qfile, lineno, f"question {k + 1} of category {cat!r} has no label: {lfile} has {len(rows)} lines"
            )
        l_lineno, l_rec = rows[k]
        if str(_field(l_rec, "image", lfile, l_lineno)) != str(_field(rec, "image", qfile, lineno)):
            raise _fail(qfile, lineno, f"image {rec['image']!r} differs from {l_rec['image']!r} at {lfile}:{l_lineno} "
                                       "(labels are joined by order)")
        answer = _yesno(_field(l_rec, "label", lfile, l_lineno), lfile, l_lineno)
        image = images.get(image_dir / str(rec["image"]), qfile, lineno)
        text = str(_field(rec, "text", qfile, lineno))
        yield Sample(
            id=f"pope/{rec['question_id']}", family="pope", images=[image], question=text, answer=answer,
            answer_type="yesno",
            meta={"pope_split": cat, "image_file": rec["image"], "raw_question": _strip_instruction(text)},
        )


def _textvqa(root: Path, split: str | None) -> Iterator[Sample]:
    _check_split("textvqa", split, ("val",), "val")
    base = root / "textvqa"
    qfile, afile = base / "llava_textvqa_val_v051_ocr.jsonl", base / "TextVQA_0.5.1_val.json"
    ann = _read_json(afile)
    if not isinstance(ann, dict) or not isinstance(ann.get("data"), list):
        raise _fail(afile, None, "expected an object with a `data` list")
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for a in ann["data"]:
        by_key[(str(a.get("image_id")), str(a.get("question", "")).lower())].append(a)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for lineno, rec, image in _llava_jsonl(qfile, base / "train_images", _Images()):
        text = str(rec["text"])
        question = _strip_instruction(text)
        key = (str(rec["question_id"]), question.lower())
        if key not in by_key:
            raise _fail(qfile, lineno, f"no answer in {afile} for image {rec['question_id']!r}, question {question!r}")
        # The same question asked twice about one image: the k-th asking gets the k-th annotation
        # (eval_textvqa.py keeps only the last; ours keeps ids unique).
        a = by_key[key][min(used[key], len(by_key[key]) - 1)]
        used[key] += 1
        answers = a.get("answers")
        if not isinstance(answers, list) or not answers:
            raise _fail(afile, None, f"question {a.get('question_id')!r} has no `answers` list")
        answers = [str(x) for x in answers]
        yield Sample(
            id=f"textvqa/{a.get('question_id', rec['question_id'])}", family="textvqa", images=[image],
            question=text, answer=answers[0], answer_type="exact", references=answers,
            meta={"image_file": rec["image"], "raw_question": question, "image_id": rec["question_id"]},
        )


def _gqa(root: Path, split: str | None) -> Iterator[Sample]:
    tier = _check_split("gqa", split, ("testdev_balanced",), "testdev_balanced")
    base = root / "gqa"
    qfile = base / f"llava_gqa_{tier}.jsonl"
    afile = _first_existing(base, (f"data/{tier}_questions.json", f"{tier}_questions.json"), "GQA questions file")
    image_dir = _first_existing(base, ("data/images", "images"), "GQA image folder")
    ann = _read_json(afile)
    if not isinstance(ann, dict):
        raise _fail(afile, None, "expected an object keyed by question id")
    for lineno, rec, image in _llava_jsonl(qfile, image_dir, _Images()):
        qid = str(rec["question_id"])
        a = ann.get(qid)
        if not isinstance(a, dict) or "answer" not in a:
            raise _fail(qfile, lineno, f"question {qid!r} has no answer in {afile}")
        text = str(rec["text"])
        yield Sample(
            id=f"gqa/{qid}", family="gqa", images=[image], question=text, answer=str(a["answer"]),
            answer_type="exact",
            meta={"image_file": rec["image"], "raw_question": _strip_instruction(text), "types": a.get("types", {}),
                  "full_answer": a.get("fullAnswer")},
        )


def _mme_answer_file(data_dir: Path, category: str, stem: str) -> Path:
    cat_dir = data_dir / category
    qa_dir = cat_dir / "questions_answers_YN" if (cat_dir / "images").is_dir() else cat_dir
    return qa_dir / f"{stem}.txt"


def _mme_answers(path: Path, src: Path, lineno: int | None) -> dict[str, tuple[int, str]]:
    """question (with MME's suffix) -> (line number, "Yes"/"No" as written) of one MME answer file."""
    if not path.is_file():
        raise _fail(src, lineno, f"MME answer file not found: {path}")
    out: dict[str, tuple[int, str]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise _fail(path, i, f"expected 'question<TAB>answer', got {line!r}")
        out[parts[0]] = (i, parts[1])
    return out


def _mme(root: Path, split: str | None) -> Iterator[Sample]:
    base = root / "MME"
    data_dir = base / "MME_Benchmark_release_version"
    if (data_dir / "MME_Benchmark").is_dir():  # some unpacked releases nest one more level
        data_dir = data_dir / "MME_Benchmark"
    qfile = base / "llava_mme.jsonl"
    if not qfile.is_file():
        yield from _mme_from_folders(data_dir, split)
        return
    images = _Images()
    answer_files: dict[Path, dict[str, tuple[int, str]]] = {}
    occurrence: dict[str, int] = defaultdict(int)
    for lineno, rec in _read_jsonl(qfile):
        qid = str(_field(rec, "question_id", qfile, lineno))
        category = str(rec.get("category", qid.split("/")[0]))
        if split is not None and category != split:
            continue
        image = images.get(data_dir / str(_field(rec, "image", qfile, lineno)), qfile, lineno)
        text = str(_field(rec, "text", qfile, lineno))
        question = text.replace(SHORT_ANSWER, "").strip()
        afile = _mme_answer_file(data_dir, qid.split("/")[0], Path(qid).stem)
        if afile not in answer_files:
            answer_files[afile] = _mme_answers(afile, qfile, lineno)
        gt = answer_files[afile]
        key = question + MME_SUFFIX
        if key not in gt:
            key = question + "  Please answer yes or no."  # a few MME files have two spaces
        if key not in gt:
            raise _fail(qfile, lineno, f"question {question!r} not found in {afile}")
        a_line, raw = gt[key]
        n = occurrence[qid]
        occurrence[qid] += 1
        yield Sample(
            id=f"mme/{qid}#{n}", family="mme", images=[image], question=text, answer=_yesno(raw, afile, a_line),
            answer_type="yesno",
            meta={"mme_category": category, "pair_id": qid, "image_file": rec["image"], "raw_question": question},
        )


def _mme_from_folders(data_dir: Path, split: str | None) -> Iterator[Sample]:
    if not data_dir.is_dir():
        raise ValueError(f"MME: neither llava_mme.jsonl nor the folder {data_dir} exists")
    categories = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name != "eval_tool")
    if split is not None and split not in categories:
        raise ValueError(f"mme: unknown split (category) {split!r}; found {categories}")
    images = _Images()
    for category in categories if split is None else [split]:
        cat_dir = data_dir / category
        has_sub = (cat_dir / "images").is_dir()
        img_dir = cat_dir / "images" if has_sub else cat_dir
        qa_dir = cat_dir / "questions_answers_YN" if has_sub else cat_dir
        for afile in sorted(qa_dir.glob("*.txt")):
            stem = afile.stem
            found = [p for p in sorted(img_dir.glob(f"{stem}.*")) if p.suffix.lower() != ".txt"]
            if not found:
                raise _fail(afile, None, f"image file not found: {img_dir / stem}.*")
            rel = found[0].relative_to(data_dir).as_posix()
            image = images.get(found[0], afile, None)
            for n, (q, (a_line, raw)) in enumerate(_mme_answers(afile, afile, None).items()):
                question = q.replace("  Please answer yes or no.", "").replace(MME_SUFFIX, "").strip()
                yield Sample(
                    id=f"mme/{rel}#{n}", family="mme", images=[image], question=f"{question}\n{SHORT_ANSWER}",
                    answer=_yesno(raw, afile, a_line), answer_type="yesno",
                    meta={"mme_category": category, "pair_id": rel, "image_file": rel, "raw_question": question},
                )


_OPTION_LINE = re.compile(r"^([A-J])\. (.*)$")


def _sqa(root: Path, split: str | None) -> Iterator[Sample]:
    _check_split("sqa", split, ("test",), "test")
    base = root / "scienceqa"
    qfile, image_dir = base / "llava_test_CQM-A.json", base / "images" / "test"
    pfile = base / "problems.json"
    problems = _read_json(pfile) if pfile.is_file() else None
    images = _Images()
    for lineno, rec in _read_json_list(qfile):
        if "image" not in rec:
            continue  # text-only question: not part of SQA-IMG
        pid = str(_field(rec, "id", qfile, lineno))
        convs = rec.get("conversations")
        if not isinstance(convs, list) or len(convs) < 2 or not all(isinstance(c, dict) for c in convs[:2]):
            raise _fail(qfile, lineno, f"id {pid!r}: expected a human and a gpt turn in `conversations`")
        prompt = str(convs[0].get("value", "")).replace("<image>", "").strip()
        letter = str(convs[1].get("value", "")).strip()
        parsed: list[tuple[str, str]] = []  # trailing "A. text" lines
        for line in reversed(prompt.split("\n")):
            m = _OPTION_LINE.match(line)
            if not m:
                break
            parsed.insert(0, (m.group(1), m.group(2)))
        letters = OPTION_LETTERS[: len(parsed)]
        if not parsed or "".join(l for l, _ in parsed) != letters:
            raise _fail(qfile, lineno, f"id {pid!r}: the question does not end in option lines 'A. ...', 'B. ...'")
        if letter not in letters:
            raise _fail(qfile, lineno, f"id {pid!r}: unknown answer {letter!r}; options are {list(letters)}")
        options = [o for _, o in parsed]
        meta: dict[str, Any] = {"options": options, "image_file": rec["image"], "raw_question": prompt}
        if problems is not None:
            p = problems.get(pid) if isinstance(problems, dict) else None
            if not isinstance(p, dict):
                raise _fail(qfile, lineno, f"id {pid!r} is missing from {pfile}")
            if [str(c) for c in p.get("choices", [])] != options or p.get("answer") != letters.index(letter):
                raise _fail(qfile, lineno, f"id {pid!r}: options/answer disagree with {pfile} "
                                           f"(choices {p.get('choices')}, answer index {p.get('answer')})")
            meta.update({k: p[k] for k in ("subject", "grade", "topic", "category") if k in p})
        image = images.get(image_dir / str(rec["image"]), qfile, lineno)
        yield Sample(
            id=f"sqa/{pid}", family="sqa", images=[image], question=f"{prompt}\n{LETTER_ANSWER}", answer=letter,
            answer_type="choice", choices=[f"{l}. {o}" for l, o in parsed], meta=meta,
        )


def _is_none(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def _mmb(root: Path, split: str | None) -> Iterator[Sample]:
    name = split or "mmbench_dev_20230712"
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"mmb: split must be a tsv file stem such as 'mmbench_dev_20230712'; got {name!r}")
    tsv = root / "mmbench" / f"{name}.tsv"
    if not tsv.is_file():
        raise _fail(tsv, None, "file not found")
    csv.field_size_limit(2**31 - 1)  # base64 images are long fields
    warned = False
    with tsv.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"index", "question", "A", "B", "image"} - set(reader.fieldnames or [])
        if missing:
            raise _fail(tsv, 1, f"missing columns {sorted(missing)}")
        has_answer = "answer" in (reader.fieldnames or [])
        for row in reader:
            lineno = reader.line_num
            options = []
            for letter in "ABCD":
                if _is_none(row.get(letter)):
                    break
                options.append(row[letter])
            letters = OPTION_LETTERS[: len(options)]
            question = row["question"]
            hint = row.get("hint")
            prompt = question if _is_none(hint) else f"{hint}\n{question}"
            prompt += "".join(f"\n{l}. {o}" for l, o in zip(letters, options)) + f"\n{LETTER_ANSWER}"
            try:
                data = base64.b64decode(row["image"] or "", validate=True)
            except (binascii.Error, ValueError):
                raise _fail(tsv, lineno, "image column is not valid base64") from None
            image = _open_bytes(data, tsv, lineno, f"in row index {row['index']}")
            meta = {k: v for k, v in row.items() if k not in ("image", "question", "hint", "answer", *"ABCD")}
            meta.update({"options": options, "raw_question": question, "hint": None if _is_none(hint) else hint})
            if has_answer:
                answer = (row.get("answer") or "").strip()
                if answer not in letters:
                    raise _fail(tsv, lineno, f"unknown answer {answer!r}; options are {list(letters)}")
                refs: list[str] | None = None
            else:
                answer, refs = "", []
                meta["has_answer"] = False
                if not warned:
                    warnings.warn(f"{tsv} has no `answer` column: samples have no references", stacklevel=3)
                    warned = True
            sample = Sample(
                id=f"mmb/{row['index']}", family="mmb", images=[image], question=prompt, answer=answer,
                answer_type="choice", choices=[f"{l}. {o}" for l, o in zip(letters, options)], meta=meta,
            )
            if refs is not None:
                sample.references = refs  # Sample defaults references to [answer]; here there is none
            yield sample


def _vqav2(root: Path, split: str | None) -> Iterator[Sample]:
    split = _check_split("vqav2", split, ("test-dev2015",), "test-dev2015")
    base = root / "vqav2"
    qfile, image_dir = base / f"llava_vqav2_mscoco_{split}.jsonl", base / "test2015"
    warnings.warn(
        "VQAv2 test-dev answers are not public: samples have answer '' and no references "
        "(score them on the EvalAI server)", stacklevel=3,
    )
    for lineno, rec, image in _llava_jsonl(qfile, image_dir, _Images()):
        text = str(rec["text"])
        sample = Sample(
            id=f"vqav2/{rec['question_id']}", family="vqav2", images=[image], question=text, answer="",
            answer_type="exact",
            meta={"has_answer": False, "image_file": rec["image"], "raw_question": _strip_instruction(text)},
        )
        sample.references = []  # Sample defaults references to [answer]; test-dev has none
        yield sample


BENCHMARKS: dict[str, Callable[[Path, str | None], Iterator[Sample]]] = {
    "pope": _pope,
    "textvqa": _textvqa,
    "gqa": _gqa,
    "mme": _mme,
    "sqa": _sqa,
    "mmb": _mmb,
    "vqav2": _vqav2,
}
"""Benchmark name (= `Sample.family`) -> loader(data_root, split) yielding samples in file order."""

# What each loader reads, relative to data_root: each entry is one required input given as its accepted
# alternatives (the first is the layout LLaVA's eval.zip unpacks to). `missing_inputs` checks these before a
# run starts, so a missing file is reported once, by name, with the layout expected, not mid-table.
LAYOUT: dict[str, tuple[tuple[str, ...], ...]] = {
    "pope": (("pope/llava_pope_test.jsonl",), ("pope/coco/",), ("pope/val2014/",)),
    "textvqa": (("textvqa/llava_textvqa_val_v051_ocr.jsonl",), ("textvqa/TextVQA_0.5.1_val.json",),
                ("textvqa/train_images/",)),
    "gqa": (("gqa/llava_gqa_testdev_balanced.jsonl",),
            ("gqa/data/testdev_balanced_questions.json", "gqa/testdev_balanced_questions.json"),
            ("gqa/data/images/", "gqa/images/")),
    "mme": (("MME/MME_Benchmark_release_version/",),),
    "sqa": (("scienceqa/llava_test_CQM-A.json",), ("scienceqa/images/test/",)),
    "mmb": (("mmbench/mmbench_dev_20230712.tsv",),),
    "vqav2": (("vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",), ("vqav2/test2015/",)),
}


def missing_inputs(name: str, data_root: str | os.PathLike[str]) -> list[str]:
    """The inputs of benchmark `name` that are absent under `data_root`, one line each ("" list: complete).

    A line names the expected path (and its accepted alternatives), so the message doubles as the layout."""
    if name not in LAYOUT:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(LAYOUT)}")
    root = Path(data_root).expanduser()
    out = []
    for alternatives in LAYOUT[name]:
        if not any((root / a).is_dir() if a.endswith("/") else (root / a).is_file() for a in alternatives):
            shown = " or ".join(f"{root / a}{'/ (a folder)' if a.endswith('/') else ''}" for a in alternatives)
            out.append(f"{name}: missing {shown}")
    return out


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def _resolve_root(data_root: str | os.PathLike[str] | None) -> Path:
    if data_root is None:
        env = os.environ.get(DATA_ROOT_ENV)
        if not env:
            raise ValueError(
                f"data_root is None and ${DATA_ROOT_ENV} is not set (point it at LLaVA's playground/data/eval)"
            )
        data_root = env
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data_root {str(root)!r} is not a directory")
    return root


def iter_benchmark(
    name: str, data_root: str | os.PathLike[str] | None = None, split: str | None = None, limit: int | None = None
) -> Iterator[Sample]:
    """Yield the samples of benchmark `name` (one of `BENCHMARKS`) in file order, at most `limit`.

    Files are validated as they are read, so an error may come after some samples were yielded.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None; got {limit!r}")
    root = _resolve_root(data_root)
    if limit == 0:
        return
    seen: dict[str, int] = defaultdict(int)
    for n, sample in enumerate(BENCHMARKS[name](root, split), start=1):
        k = seen[sample.id]
        seen[sample.id] += 1
        if k:  # ids are cache keys: keep them unique even if a file repeats a question
            sample.id = f"{sample.id}#{k}"
        yield sample
        if limit is not None and n >= limit:
            return


def load_benchmark(
    name: str, data_root: str | os.PathLike[str] | None = None, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """All samples (or the first `limit`) of benchmark `name` read from `data_root` (see the module docstring).

    Args:
        name: "pope", "textvqa", "gqa", "mme", "sqa", "mmb" or "vqav2" (also each sample's `family`).
        data_root: LLaVA's `playground/data/eval` folder; None reads `$DATA_ROOT`.
        split: pope: random | popular | adversarial (None = all three); mme: one category (None = all);
            mmb: the tsv stem (default mmbench_dev_20230712); gqa: testdev_balanced; textvqa: val;
            sqa: test; vqav2: test-dev2015.
        limit: keep only the first `limit` samples in file order.
    """
    return list(iter_benchmark(name, data_root, split, limit))
