"""One entry point for every table and figure: `python -m common.experiment <target> [--scale toy]`.

Each paper's `experiments.py` registers its artifact functions under their Make target names with
`@artifact("sparsevlm-table1")`; the Makefile calls this module, so adding a table never means editing a
dispatcher (DomainBed's `collect_results` idea: experiments return records, `common.artifacts` renders them).
Scales (DESIGN.md §2): `toy` (default), `mini`, `paper`; `load_vlm` hides which model a scale means.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = REPO_ROOT / "figures"
SCALES = ("toy", "mini", "paper")
TOY_CHECKPOINT = REPO_ROOT / "checkpoints" / "toy-llava"
# The previous toy model (single-question rows, 3000 stage-2 steps; 53.6% val). ATP and STF artifacts were
# trained and measured on it and stay pinned to it until they are regenerated on TOY_CHECKPOINT
# (ATP ~30 min, STF ~2.7 h on 2 cores); see checkpoints/README.md.
TOY_CHECKPOINT_V1 = REPO_ROOT / "checkpoints" / "toy-llava-v1"


@dataclass(frozen=True)
class Artifact:
    """A registered table/figure generator. `fn(scale)` writes its files under figures/<paper>/."""

    target: str
    fn: Callable[[str], None]
    scales: tuple[str, ...] = ("toy",)
    kind: str = "table"  # "table" or "figure": what `make tables` / `make figures` collect


ARTIFACTS: Registry = Registry("artifact")


def artifact(target: str, *, scales: tuple[str, ...] = ("toy",), kind: str = "table"):
    """Register `fn(scale)` as the generator of Make target `target`."""
    if kind not in ("table", "figure"):
        raise ValueError(f"kind: expected 'table' or 'figure', got {kind!r}")

    def deco(fn: Callable[[str], None]) -> Callable[[str], None]:
        if target in ARTIFACTS:
            raise KeyError(f"artifact {target!r} is already registered (by {ARTIFACTS[target].fn.__module__})")
        ARTIFACTS[target] = Artifact(target, fn, tuple(scales), kind)
        return fn

    return deco


def _import_all_experiments() -> None:
    """Import every `papers/<p>/experiments.py` (and common ones) so that all targets are registered."""
    import papers

    for info in pkgutil.iter_modules(papers.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"papers.{info.name}.experiments")
            except ModuleNotFoundError as err:
                if err.name != f"papers.{info.name}.experiments":
                    raise


def load_vlm(scale: str = "toy", checkpoint: str | Path | None = None):
    """The `VisionLanguageModel` of a scale. toy: checkpoints/toy-llava (or `checkpoint`); paper: the HF
    LLaVA folder `checkpoint` or $MODEL_PATH (read offline, see common.models.llava_hf); mini: DINOv2-S +
    SmolLM2 with the projector of checkpoints/mini-llava (or `checkpoint`; see common.models.mini)."""
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    if scale == "toy":
        path = Path(checkpoint) if checkpoint else TOY_CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"checkpoint: {path} does not exist; run `make toy-model` first")
        from common.models.toy import ToyVLM

        return ToyVLM.load(path)
    if scale == "paper":
        from common.models.llava_hf import load_paper_vlm

        return load_paper_vlm(checkpoint)
    from common.models.mini import load_mini_vlm  # scale == "mini": DINOv2-S + SmolLM2 (`make setup-mini`)

    return load_mini_vlm(checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="Make target names, e.g. sparsevlm-table1; none = list them")
    parser.add_argument("--scale", default=os.environ.get("SCALE", "toy"), choices=SCALES)
    parser.add_argument("--kind", choices=("table", "figure"), help="run every registered artifact of this kind")
    parser.add_argument("--table-number", type=int, help="run every paper's table N (e.g. `make table1`)")
    args = parser.parse_args(argv)
    _import_all_experiments()
    targets = list(args.targets)
    if args.kind:
        targets += [t for t, a in sorted(ARTIFACTS.items()) if a.kind == args.kind]
    if args.table_number is not None:
        targets += [t for t in sorted(ARTIFACTS) if t.endswith(f"-table{args.table_number}")]
    if not targets:
        for name, a in sorted(ARTIFACTS.items()):
            print(f"{name:32s} {a.kind:7s} scales: {', '.join(a.scales)}")
        return 0
    for target in targets:
        art = ARTIFACTS.get(target)
        if art is None:
            raise SystemExit(f"unknown target {target!r}; known: {', '.join(sorted(ARTIFACTS))}")
        if args.scale not in art.scales:
            raise SystemExit(f"{target}: scale {args.scale!r} not supported (supported: {', '.join(art.scales)})")
        print(f"== {target} (scale={args.scale})", flush=True)
        art.fn(args.scale)
    return 0


if __name__ == "__main__":
    # Run the canonical module's main: under `python -m` this file is also imported as
    # `common.experiment` by the papers' experiments, and only that copy's registry gets their targets.
    from common.experiment import main as _main

    sys.exit(_main())
