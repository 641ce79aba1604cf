"""ToyWorld baseline report: the trained toy LLaVA per family with all, no (blind) and random subsets of
its visual tokens. `make toy-report` / `python -m common.toy_report` -> figures/toyworld/baseline.{csv,md,tex,json}.

Settings (the columns):
- all:         every visual token (144 per frame at the default 12 x 12 grid).
- blind:       every image replaced by ONE uniform image whose colour is the mean RGB over all evaluated
               images. The decoder still gets the same number of visual tokens at the same positions, made by
               the same vision tower and projector, but they carry no information about the sample, so the
               column measures what the question alone gives (the language prior). Zeroing the image-token
               embeddings instead would feed the decoder vectors it never saw in training (degenerate outputs
               rather than the prior), and dropping the tokens would change the sequence layout. A per-image
               mean would leak the answer of "what color is the background ?".
- random 33% / 22% / 11%: `RandomDrop` at layer 0 (pre-LLM), seeded, keeping the paper budgets 192 / 128 /
               64 of 576 as fractions (48 / 32 / 16 of 144 tokens); DESIGN.md §5 wants 11% to hurt clearly.

Rows: one per family with its headline metric (`common.metrics.PRIMARY_METRIC`: POPE F1 averaged over its
three splits, caption CIDEr-D, else accuracy, all in percent), an "average" row over the QA families (all
but caption), and the visual tokens per frame each setting keeps (toy count and paper-equivalent of 576).
Predictions are cached in .cache/eval, so a re-run only recomputes what changed.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from common.data.sample import Sample
from common.evaluation import EvalResult, evaluate
from common.metrics import PRIMARY_METRIC

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "toy-llava"
DEFAULT_OUT = REPO_ROOT / "figures" / "toyworld" / "baseline"
PAPER_VISUAL = 576
# (column, paper budget of 576 kept by RandomDrop, or "all" / "blind")
SETTINGS: tuple[tuple[str, Any], ...] = (
    ("all", "all"),
    ("blind", "blind"),
    ("random 33%", 192),
    ("random 22%", 128),
    ("random 11%", 64),
)
# Measured with the toy tokenizer on 800 test captions: at most 35 tokens (mean 22.6); every other answer is
# one token. Each limit leaves room for EOS and a little more, so a rambling answer still shows as wrong.
MAX_NEW_TOKENS = {"caption": 40, "default": 4}
METRIC_LABEL = {"accuracy": "accuracy", "f1": "F1 (mean of 3 splits)", "cider": "CIDEr-D"}


def hash_checkpoint(path: Path | str) -> str:
    """SHA-256 over the names and contents of the files of a checkpoint folder (or of one file).

    Only the folder's own files count (weights, config, tokenizer, card): subfolders such as a training
    run's resumable state (`_train/`) do not define the model."""
    from common.artifacts import file_sha256

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no checkpoint files")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path) if p != path else p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def blind_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Copies of `samples` whose every image (and frame) is one uniform image of the mean RGB colour
    over all images of `samples`, each keeping its own size."""
    total, count = np.zeros(3), 0
    for s in samples:
        for im in s.images:
            arr = np.asarray(im.convert("RGB"), dtype=np.float64)
            total += arr.reshape(-1, 3).sum(0)
            count += arr.shape[0] * arr.shape[1]
    colour = tuple(int(round(c)) for c in total / max(count, 1))
    blanks: dict[tuple[int, int], Image.Image] = {}
    out = []
    for s in samples:
        imgs = [blanks.setdefault(im.size, Image.new("RGB", im.size, colour)) for im in s.images]
        out.append(replace(s, images=imgs, meta={**s.meta, "blind": True}))
    return out


def _reducer_for(setting: Any, seed: int):
    if setting in ("all", "blind"):
        return None
    from common.baselines.random_drop import RandomDrop

    return RandomDrop(layer=0, budget=int(setting), seed=seed)


def run_settings(vlm: Any, samples: Sequence[Sample], *, run_key: dict, seed: int = 0, batch_size: int = 16,
                 cache_dir: str | Path | None = ".cache/eval", max_new_tokens: Any = None,
                 progress: bool = True) -> dict[str, EvalResult]:
    """`evaluate` once per setting of `SETTINGS`; {column: result}."""
    blind = None
    results = {}
    for column, setting in SETTINGS:
        if setting == "blind":
            blind = blind if blind is not None else blind_samples(samples)
        data = blind if setting == "blind" else samples
        if progress:
            print(f"[toy-report] {column}", file=sys.stderr, flush=True)
        results[column] = evaluate(vlm, data, reducer=_reducer_for(setting, seed), batch_size=batch_size,
                                   max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, cache_dir=cache_dir,
                                   run_key=run_key, progress=progress)
    return results


def table_rows(results: dict[str, EvalResult], num_visual_tokens: int, qa_families: Sequence[str] | None = None
               ) -> list[dict[str, Any]]:
    """Rows: family (headline metric), average over QA families, visual tokens per frame (toy, paper)."""
    first = next(iter(results.values()))
    families = list(first.metrics)
    qa = [f for f in families if f != "caption"] if qa_families is None else [f for f in families if f in qa_families]
    rows = []
    for fam in families:
        metric = PRIMARY_METRIC.get(fam, "accuracy")
        row = {"family": fam, "metric": METRIC_LABEL.get(metric, metric)}
        row.update({col: res.metrics[fam]["score"] for col, res in results.items()})
        rows.append(row)
    avg = {"family": "average", "metric": f"mean over {len(qa)} QA families"}
    for col, res in results.items():
        vals = [res.metrics[f]["score"] for f in qa if not math.isnan(res.metrics[f]["score"])]
        avg[col] = sum(vals) / len(vals) if vals else math.nan
    rows.append(avg)
    toy = {"family": "visual tokens / frame", "metric": f"toy (of {num_visual_tokens})"}
    paper = {"family": "visual tokens / frame", "metric": f"paper-equivalent (of {PAPER_VISUAL})"}
    for col, res in results.items():
        frames = res.visual_tokens_full / num_visual_tokens  # mean frames per sample
        per_frame = res.visual_tokens / frames
        toy[col] = per_frame
        paper[col] = per_frame * PAPER_VISUAL / num_visual_tokens
    rows += [toy, paper]
    return rows


def write_report(results: dict[str, EvalResult], *, vlm: Any, out_stem: Path | str, n_samples: int,
                 data_desc: str, run_key: dict, seed: int, command: str, started: float) -> dict[str, Path]:
    from common.artifacts import provenance, write_table

    rows = table_rows(results, vlm.num_visual_tokens)
    columns = ["family", "metric", *results]
    title = (f"ToyWorld baseline (scale: toy; model: {vlm.name}; data: {data_desc}, {n_samples} samples): "
             "score per family in %, with all visual tokens, blind (every image a uniform mean-colour image) "
             "and a random subset kept before the LLM")
    prov = provenance(
        command=command,
        config={"scale": "toy", "model": vlm.name, "data": data_desc, "n_samples": n_samples,
                "settings": {c: s for c, s in SETTINGS}, "reducer": "random (RandomDrop, layer 0)",
                "blind": "every image replaced by one uniform image of the mean RGB over all evaluated images",
                "max_new_tokens": MAX_NEW_TOKENS, "decoding": "greedy"},
        seeds={"data": seed, "random_drop": seed},
        inputs={**run_key, "data": next(iter(results.values())).config["data"]},
        started=started,
    )
    prov["results"] = {col: {k: v for k, v in res.to_json().items() if k not in ("ids", "predictions")}
                       for col, res in results.items()}
    return write_table(rows, out_stem, title=title, columns=columns, provenance=prov, float_format=".1f")


def load_toy_vlm(checkpoint: Path | str):
    """The trained toy LLaVA as a `VisionLanguageModel` (common.models.toy.ToyVLM)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint: {checkpoint} has no trained toy model; run `make toy-model` first")
    from common.models.toy import ToyVLM

    return ToyVLM.load(checkpoint)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(prog="python -m common.toy_report", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--n", type=int, default=320, help="test samples in all, spread evenly over the families")
    p.add_argument("--seed", type=int, default=0, help="ToyWorld data seed and RandomDrop seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dir", default=".cache/eval", help="'' disables the prediction cache")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output stem (no suffix)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    started = time.time()

    from common.data.toyworld import toyworld_split
    from common.evaluation import init_distributed
    from common.models.checkpoint import data_version

    rank, _, device = init_distributed()  # several GPUs: torchrun --nproc_per_node N -m common.toy_report
    vlm = load_toy_vlm(args.checkpoint)
    vlm.model.to(device)
    samples = toyworld_split("test", args.n, seed=args.seed, version=data_version(args.checkpoint))
    run_key = {"checkpoint": hash_checkpoint(args.checkpoint)}
    results = run_settings(vlm, samples, run_key=run_key, seed=args.seed, batch_size=args.batch_size,
                           cache_dir=args.cache_dir or None, progress=not args.quiet and rank == 0)
    if rank != 0:
        return {}
    command = "python -m common.toy_report " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_report(results, vlm=vlm, out_stem=args.out, n_samples=len(samples),
                         data_desc=f"ToyWorld test split, seed {args.seed}", run_key=run_key, seed=args.seed,
                         command=command.strip(), started=started)
    if not args.quiet:
        print(paths["md"].read_text())
    return paths


if __name__ == "__main__":
    main()
