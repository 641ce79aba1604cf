"""ToyWorld baseline report: the trained toy LLaVA per family with all, no (blind) and random subsets of its
visual tokens. `make toy-report` / `python -m reports.toy_report [run flags]` -> figures/toyworld/baseline.*

Settings (the columns):
- all:         every visual token (144 per frame at the default 12 x 12 grid).
- blind:       every image replaced by ONE uniform image whose colour is the mean RGB over all evaluated
               images (`common.data.blind`). The decoder still gets the same number of visual tokens at the
               same positions, made by the same vision tower and projector, but they carry no information about
               the sample, so the column measures what the question alone gives (the language prior). Zeroing
               the image-token embeddings instead would feed the decoder vectors it never saw in training, and
               dropping the tokens would change the sequence layout. A per-image mean would leak the answer of
               "what color is the background ?".
- random 33% / 22% / 11%: the registry's "random" (`RandomDrop`) at layer 0 (pre-LLM), seeded with the run's
               seed, keeping the paper budgets 192 / 128 / 64 of 576 as fractions (48 / 32 / 16 of 144 tokens),
               so that 11% hurts clearly.

Rows: one per family with its headline metric (`common.metrics.PRIMARY_METRIC`: POPE F1 averaged over its
three splits, caption CIDEr-D, else accuracy, all in percent), an "average" row over the QA families (all
but caption), and the visual tokens per frame each setting keeps (toy count and paper-equivalent of 576).

Run flags are `common.run`'s (`--model-path` another toy checkpoint, `--n` test samples per family (default
40), `--seed`, `--batch-size` (default 32), `--device`, `--dtype`, `--cache-dir`, `--out-dir`); under
`torchrun --nproc_per_node N -m reports.toy_report` the evaluation is sharded. Predictions are cached, so a
re-run only recomputes what changed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from common.data.blind import blind_samples
from common.data.sample import Sample
from common.data.toyworld import FAMILIES
from common.evaluation import EvalResult
from common.metrics import PRIMARY_METRIC
from common.models.load import DEFAULT_CHECKPOINTS
from common.run import Run, RunConfig, add_arguments
from common.schedule import PAPER_BUDGETS, PAPER_VISUAL, Budget
from reports.experiment import entry_point

PAPER = "toyworld"  # artifacts go to figures/toyworld/
TABLE = "baseline"
COMMAND = "python -m reports.toy_report"
N_PER_FAMILY = 40  # 320 test samples over the 8 families
BATCH_SIZE = 32
# (column, budget kept by "random"; None: every token). "blind" keeps every token of blank images.
SETTINGS: tuple[tuple[str, Budget | None], ...] = (
    ("all", None),
    ("blind", None),
    *((f"random {round(100 * b / PAPER_VISUAL)}%", Budget.paper(b)) for b in PAPER_BUDGETS),
)
# Measured with the toy tokenizer on 800 test captions: at most 35 tokens (mean 22.6); every other answer is
# one token. Each limit leaves room for EOS and a little more, so a rambling answer still shows as wrong.
MAX_NEW_TOKENS = {"caption": 40, "default": 4}
METRIC_LABEL = {"accuracy": "accuracy", "f1": "F1 (mean of 3 splits)", "cider": "CIDEr-D"}


def run_settings(run: Run, samples: Sequence[Sample], *, max_new_tokens: Any = None,
                 progress: bool = False) -> dict[str, EvalResult]:
    """`run.evaluate` once per setting of `SETTINGS`; {column: result}."""
    blind = blind_samples(samples)
    results = {}
    for column, budget in SETTINGS:
        if progress and run.is_main:
            print(f"[toy-report] {column}", file=sys.stderr, flush=True)
        reducer = None if budget is None else run.reducer("random", budget, seed=run.cfg.seed)
        results[column] = run.evaluate(blind if column == "blind" else samples, reducer,
                                       max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, progress=progress)
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


def baseline_report(run: Run, *, max_new_tokens: Any = None, progress: bool = False,
                    command: str = COMMAND) -> dict[str, Path]:
    """Evaluate every setting on `run`'s toy model and write `run.out_dir`/baseline.* ({} off rank 0)."""
    n_visual = run.n_visual  # loads the model first: a missing checkpoint fails before any work
    samples = run.samples(FAMILIES, n=run.n(default=N_PER_FAMILY))
    results = run_settings(run, samples, max_new_tokens=max_new_tokens, progress=progress)
    rows = table_rows(results, n_visual)
    prov = run.provenance(
        {"n_samples": len(samples), "settings": {c: c if b is None else b.label() for c, b in SETTINGS},
         "reducer": "random (RandomDrop, layer 0)",
         "blind": "every image replaced by one uniform image of the mean RGB over all evaluated images",
         "max_new_tokens": max_new_tokens or MAX_NEW_TOKENS, "decoding": "greedy"},
        inputs={"data": results["all"].config["data"]}, seeds={"random_drop": run.cfg.seed})
    prov["command"] = command
    prov["results"] = {col: {k: v for k, v in res.to_json().items() if k not in ("ids", "predictions")}
                       for col, res in results.items()}
    title = run.title(f"ToyWorld baseline ({len(samples)} test samples, seed {run.cfg.seed}): score per family in "
                      "%, with all visual tokens, blind (every image a uniform mean-colour image) and a random "
                      "subset kept before the LLM")
    return run.write_table(TABLE, rows, title=title, columns=["family", "metric", *results], float_format=".1f",
                           provenance=prov)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0]))
    parser.set_defaults(batch_size=BATCH_SIZE)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cfg = RunConfig.from_args(args)
    if cfg.scale != "toy":
        print(f"toy-report: scale {cfg.scale!r} not supported (ToyWorld is the toy scale's data; the mini and "
              "paper scales have `make mini-report` and the papers' tables)", file=sys.stderr)
        return 3
    run = Run.for_scale(cfg, paper=PAPER, checkpoint=DEFAULT_CHECKPOINTS["toy"])
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    return entry_point("toy-report", lambda: baseline_report(run, progress=not args.quiet, command=command),
                       quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
