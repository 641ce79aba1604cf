"""The one record type every benchmark loader yields and every evaluator consumes.

ToyWorld, easy-vqa and the real LLaVA-format benchmarks all produce `Sample`s, so methods and the
evaluation harness never know which scale or data set they run on (DESIGN.md §2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

AnswerType = Literal["exact", "yesno", "choice", "number", "caption"]
ANSWER_TYPES: tuple[str, ...] = ("exact", "yesno", "choice", "number", "caption")


@dataclass
class Sample:
    """One question about one image (or one clip of frames).

    Attributes:
        id: unique within its benchmark; used as the cache key of its prediction.
        family: task family, e.g. "gqa", "pope", "textvqa", "count", "scene", "mc", "caption", "video".
        images: one PIL image, or several frames for a clip (each frame gets its own visual tokens).
        question: the instruction text shown to the model (for "choice" it already lists the options).
        answer: the reference answer (for captions: the first reference).
        answer_type: how the prediction is scored (see common.evaluation).
        choices: option letters/strings for "choice" questions, else None.
        references: all reference answers (captions, VQAv2's ten answers); defaults to [answer].
        meta: anything a metric or a table needs (e.g. POPE's negative-sampling split, a rephrase group).
    """

    id: str
    family: str
    images: list[Image.Image]
    question: str
    answer: str
    answer_type: AnswerType = "exact"
    choices: list[str] | None = None
    references: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.images, Image.Image):
            self.images = [self.images]
        if not self.images:
            raise ValueError(f"Sample {self.id!r}: `images` must hold at least one image")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"Sample {self.id!r}: unknown answer_type {self.answer_type!r}; expected one of {ANSWER_TYPES}"
            )
        if not self.references:
            self.references = [self.answer]
