"""The samples of a scale: ToyWorld (toy), easy-vqa (mini), LLaVA's benchmark files (paper).

A paper asks `Run.samples("gqa")` and never learns which loader answered. Family names are the benchmark
names at paper scale ("gqa", "pope", "textvqa", "mme", "sqa", "mmb", "vqav2") and ToyWorld's families at toy
scale ("gqa", "pope", "textvqa", "count", "scene", "mc", "caption", "video"); easy-vqa's families are
"easyvqa-shape", "easyvqa-color" and "easyvqa-yesno" (all three come with any easy-vqa family).
Splits: "test" (what tables score) and "val" (what calibration reads; at paper scale the benchmark's first
`n` samples, whose answers calibration never reads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

from common.data.benchmarks import LAYOUT, load_benchmark, missing_inputs
from common.data.easyvqa import easyvqa_split
from common.data.sample import Sample
from common.data.toyworld import FAMILIES, toyworld_split
from common.errors import MissingInputs

__all__ = ["MissingInputs", "ToyWorldData", "EasyVQAData", "LLaVABenchmarks"]


class DataSource(Protocol):
    def samples(self, families: Sequence[str], split: str, n: int | None, seed: int, **kw: Any) -> list[Sample]: ...

    def missing(self, families: Sequence[str]) -> list[str]: ...

    def describe(self) -> str: ...


class ToyWorldData:
    """ToyWorld splits in the question design (`data_version`) the toy checkpoint was trained on."""

    def __init__(self, data_version: int):
        self.data_version = data_version

    def samples(self, families: Sequence[str], split: str, n: int | None, seed: int, **kw: Any) -> list[Sample]:
        """`n` per family (default 40), families interleaved; `kw` passes to `toyworld_split` (rephrasings ...)."""
        per = 40 if n is None else n
        return toyworld_split(split, per * len(families), seed=seed, families=tuple(families),
                              version=self.data_version, **kw)

    def missing(self, families: Sequence[str]) -> list[str]:
        return [f"ToyWorld has no family {f!r} (known: {', '.join(FAMILIES)})" for f in families if f not in FAMILIES]

    def describe(self) -> str:
        return f"ToyWorld (data version {self.data_version})"


class EasyVQAData:
    """easy-vqa (a public VQA set in its PyPI wheel): "test" is its test split, "val" draws from train."""

    def samples(self, families: Sequence[str], split: str, n: int | None, seed: int, **kw: Any) -> list[Sample]:
        return easyvqa_split("test" if split == "test" else "train", n, seed)

    def missing(self, families: Sequence[str]) -> list[str]:
        return [f"easy-vqa has no family {f!r}" for f in families if not f.startswith("easyvqa")]

    def describe(self) -> str:
        return "easy-vqa"


class LLaVABenchmarks:
    """LLaVA-1.5's evaluation files under `data_root` (`common.data.benchmarks`)."""

    def __init__(self, data_root: Path | None):
        self.root = data_root

    def samples(self, families: Sequence[str], split: str, n: int | None, seed: int, **kw: Any) -> list[Sample]:
        self.require(families)
        out: list[Sample] = []
        for f in families:
            out += load_benchmark(f, self.root, split=kw.get("benchmark_split"), limit=n)
        return out

    def missing(self, families: Sequence[str]) -> list[str]:
        if self.root is None:
            return ["data_root: not set (--data-root or DATA_ROOT=<LLaVA's playground/data/eval>)"]
        if not Path(self.root).is_dir():
            return [f"data_root: {self.root} is not a directory"]
        out = []
        for f in families:
            if f not in LAYOUT:
                out.append(f"{f}: no loader for this benchmark at paper scale (known: {', '.join(sorted(LAYOUT))})")
            else:
                out += missing_inputs(f, self.root)
        return out

    def require(self, families: Sequence[str]) -> None:
        missing = self.missing(families)
        if missing:
            raise MissingInputs(missing, "Expected LLaVA-1.5's evaluation layout (playground/data/eval from its "
                                         "eval.zip, plus each benchmark's images); see the README's 'Paper scale'.")

    def describe(self) -> str:
        return f"LLaVA eval files under {self.root}"
