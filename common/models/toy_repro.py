"""Retrain the committed toy model from scratch and compare it with the committed one (`make toy-model-repro`).

ToyWorld's acceptance asks that `make toy-model` from scratch reproduce the committed checkpoint's metrics
within 1 point. This retrains with the recipe recorded in the committed card (not today's defaults, so a
changed default cannot hide a drift), into a scratch folder, then reports per-family val differences and
whether the weights are byte-identical (they should be: every batch and initialisation is seeded).

    python -m common.models.toy_repro [--committed checkpoints/toy-llava] [--out .cache/toy-llava-repro]

Exits 1 when a family's val accuracy (the card's `val_metrics.full`) differs by more than `--tolerance`.
A rerun resumes the scratch training (common.models.train) instead of starting over.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from common.models.checkpoint import WEIGHTS, atomic_write_text, load_card
from common.models.toy import ToyConfig
from common.models.toy_train import ToyTrainConfig, run


def compare(retrained: str | Path, committed: str | Path, tolerance: float = 1.0) -> dict:
    """Per-family val differences (retrained - committed, points) and whether the weights are identical."""
    new, old = load_card(retrained), load_card(committed)
    a, b = new["val_metrics"]["full"], old["val_metrics"]["full"]
    if set(a) != set(b):
        raise ValueError(f"val families differ: retrained {sorted(a)} vs committed {sorted(b)}")
    diff = {f: round(a[f] - b[f], 4) for f in sorted(b)}
    worst = max(abs(d) for d in diff.values())
    return {
        "committed": str(committed), "retrained": str(retrained), "tolerance_points": tolerance,
        "val_diff_points": diff, "max_abs_diff_points": worst, "within_tolerance": worst <= tolerance,
        "weights_identical": (Path(retrained) / WEIGHTS).read_bytes() == (Path(committed) / WEIGHTS).read_bytes(),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m common.models.toy_repro", description=__doc__.splitlines()[0])
    p.add_argument("--committed", type=Path, default=Path("checkpoints/toy-llava"))
    p.add_argument("--out", type=Path, default=Path(".cache/toy-llava-repro"))
    p.add_argument("--tolerance", type=float, default=1.0, help="largest allowed val difference, points")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.out.resolve() == a.committed.resolve():
        raise SystemExit("--out must differ from --committed: the retrained model would overwrite the one "
                         "it is compared with")
    card = load_card(a.committed)
    run(a.out, ToyTrainConfig(**card["train_config"]), ToyConfig(**card["model_config"]), progress=not a.no_progress)
    report = compare(a.out, a.committed, a.tolerance)
    atomic_write_text(a.out / "repro.json", json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not report["within_tolerance"]:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
