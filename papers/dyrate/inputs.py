"""What DyRate's artifacts read at each scale: captions, the short-answer benchmarks, training captions.

| scale | captions (Tables II-V, figures) | short answers (Table I) | predictor training / validation |
|---|---|---|---|
| toy | ToyWorld test captions | ToyWorld families standing in for the paper's benchmarks | ToyWorld train / val captions |
| paper | COCO Karpathy test, `<data_root>/coco/` | LLaVA-1.5's eval files under `data_root` (GQA, SQA, TextVQA, POPE, MMB, MME) | under `train_root`: COCO Karpathy train / val, or LLaVA-Pretrain / mix665k conversations |

The paper's captions are NoCaps, Flickr30k and COCO-2017; COCO Karpathy test is the caption set we can read
locally in a standard layout, so the paper-scale "ours" column is COCO (Karpathy test) CIDEr beside the
paper's three columns. VizWiz has no loader yet: its Table I column stays empty at every scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, overload

from common.data.captions import KARPATHY_JSON, load_coco_karpathy
from common.data.llava_instruct import (
    INSTRUCT_JSON, PRETRAIN_IMAGES, PRETRAIN_JSON, Conversation, load_conversations,
)
from common.data.sample import Sample
from common.evaluation import hash_samples
from common.run import MissingInputs, Run

# paper column -> family of each scale (None: no data, the column stays empty)
QA_COLUMNS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "toy": (("GQA", "gqa"), ("VisWiz", None), ("SQA", "mc"), ("VQA", "textvqa"), ("POPE", "pope"), ("MMB", "mc"),
            ("MME", "count")),
    "paper": (("GQA", "gqa"), ("VisWiz", None), ("SQA", "sqa"), ("VQA", "textvqa"), ("POPE", "pope"),
              ("MMB", "mmb"), ("MME", "mme")),
}
QA_NOTES = {
    "toy": "GQA<-gqa, SQA & MMB<-mc (multiple choice), VQA(TextVQA)<-textvqa (digit tiles), POPE<-pope, "
           "MME<-count; VisWiz has no ToyWorld analogue",
    "paper": "VQA = TextVQA, MME = perception score; VisWiz is empty: no VizWiz loader yet",
}
CAPTION_DATA = {"toy": "ToyWorld test captions (3 references each)",
                "paper": "COCO Karpathy test captions (5 references each)"}
TRAIN_SOURCES = ("coco", "pretrain", "instruct")
LAYOUT_HINT = "See the README's 'Paper scale' section (and papers/dyrate/README.md) for the layout."


@dataclass(frozen=True)
class SampleSet:
    """Samples with their content hash (computed once: a paper-scale set is thousands of images)."""

    name: str  # "captions" or "qa": names cache files
    samples: list[Sample]
    key: str

    @classmethod
    def of(cls, name: str, samples: Sequence[Sample]) -> "SampleSet":
        return cls(name, list(samples), hash_samples(samples))

    def __len__(self) -> int:
        return len(self.samples)


def qa_columns(run: Run) -> tuple[tuple[str, str | None], ...]:
    return QA_COLUMNS[run.scale]


def qa_families(run: Run) -> list[str]:
    """The families Table I reads, sorted (the order the ToyWorld split interleaves them in)."""
    return sorted({f for _, f in qa_columns(run) if f})


# ------------------------------------------------------------------------------------------ preflight
def caption_missing(root: Path | None) -> list[str]:
    if root is None:
        return []  # `Run.require` names the unset data_root
    path = Path(root) / KARPATHY_JSON
    if path.is_file():
        return []
    return [f"coco captions: missing {path} (Karpathy's dataset_coco.json; test images under {Path(root) / 'coco'}/"
            f"val2014/)"]


def train_missing(root: Path | None, source: str) -> list[str]:
    """The training inputs of `source` absent under `train_root`, one line each."""
    if source not in TRAIN_SOURCES:
        raise ValueError(f"train_data: expected one of {TRAIN_SOURCES}, got {source!r}")
    if root is None:
        return ["train_root: not set (--train-root or TRAIN_ROOT=<LLaVA's playground/data>)"]
    root = Path(root)
    need = {"coco": [(KARPATHY_JSON, "Karpathy's dataset_coco.json"), ("coco/train2014/", "its train images")],
            "pretrain": [(PRETRAIN_JSON, "LLaVA-1.5 stage-1 data"), (PRETRAIN_IMAGES + "/", "its images")],
            "instruct": [(INSTRUCT_JSON, "LLaVA-1.5 stage-2 data, images under coco/, gqa/, ocr_vqa/, "
                                         "textvqa/, vg/")]}[source]
    return [f"{source} training data: missing {root / rel} ({what})" for rel, what in need
            if not ((root / rel).is_dir() if rel.endswith("/") else (root / rel).is_file())]


def require(run: Run, *, captions: bool = False, qa: bool = False, extra: Sequence[str] = ()) -> None:
    """Fail before any work when an input of this artifact is absent: ONE `MissingInputs` naming every missing
    file (model, benchmarks, captions, and the `extra` lines, e.g. a predictor folder)."""
    missing: list[str] = []
    try:
        run.require(qa_families(run) if qa else [])
    except MissingInputs as err:
        missing += err.missing
    if captions and run.scale == "paper":
        missing += caption_missing(run.cfg.data_root)
    missing += list(extra)
    if missing:
        raise MissingInputs(missing, LAYOUT_HINT if run.scale == "paper" else "")


# ------------------------------------------------------------------------------------------ evaluation sets
def captions(run: Run, n: int | None) -> SampleSet:
    """`n` test captions (None: all)."""
    require(run, captions=True)
    if run.scale == "paper":
        return SampleSet.of("captions", load_coco_karpathy(run.cfg.data_root, "test", limit=n))
    return SampleSet.of("captions", run.samples(["caption"], n=n))


def qa(run: Run, n: int | None) -> SampleSet:
    """`n` samples of every Table I family (None: all), families interleaved (toy) or in sequence (paper)."""
    return SampleSet.of("qa", run.samples(qa_families(run), n=n))


# ------------------------------------------------------------------------------------------ training sets
class ConversationCaptions(Sequence[Sample]):
    """LLaVA training conversations as caption-style samples, images opened only when a batch asks for them:
    the first turn's instruction is the prompt, its answer the response the predictor is trained on."""

    def __init__(self, conversations: Sequence[Conversation]):
        self.conversations = list(conversations)

    def __len__(self) -> int:
        return len(self.conversations)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        c = self.conversations[i]
        question, answer = c.turns[0]
        return Sample(id=f"train/{c.id}", family="caption", images=[c.load_image()], question=question,
                      answer=answer, answer_type="caption")


def training_captions(run: Run, source: str, n: int, split: str = "train") -> Sequence[Sample]:
    """`n` training captions (toy: ToyWorld's `split`; paper: `source` under `train_root`). `split="val"`
    gives held-out captions of the same source (Karpathy val; for conversations, the `n` entries after the
    training ones: `n` is then (n_train, n_val))."""
    if run.scale != "paper":
        return run.samples(["caption"], split=split, n=n)
    missing = train_missing(run.cfg.train_root, source)
    if missing:
        raise MissingInputs(missing, LAYOUT_HINT)
    root = Path(run.cfg.train_root)
    if source == "coco":
        return load_coco_karpathy(root, "train" if split == "train" else "val", limit=n)
    json_path, images = ((root / PRETRAIN_JSON, root / PRETRAIN_IMAGES) if source == "pretrain"
                         else (root / INSTRUCT_JSON, root))
    return ConversationCaptions(load_conversations(json_path, images, limit=n, require_image=True))


def validation_captions(run: Run, source: str, n_train: int, n_val: int) -> list[Sample]:
    """Held-out captions for the predictor's check: never among its `n_train` training captions."""
    if run.scale != "paper" or source == "coco":
        return list(training_captions(run, source, n_val, split="val"))
    both = training_captions(run, source, n_train + n_val)
    return list(both[n_train:n_train + n_val])
