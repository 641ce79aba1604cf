"""Every registered token-reduction method at the paper budgets, on the toy and the mini model.

    make toy-methods    # python -m reports.methods --scale toy   -> figures/toyworld/methods.*
    make mini-report    # python -m reports.methods --scale mini  -> figures/mini/methods.*, masks.*, dyrate_attention.*

Rows (settings), one code path for both scales:
- all / blind: every visual token; blind = every image one uniform mean-colour image (`common.data.blind`).
- every registered method that keeps a budget (`common.factory.budget_methods()`, in registration order: the
  baselines, then each paper's method, imported here through `reports.experiment.import_papers`) at the paper
  budgets 192 / 128 / 64 of 576, i.e. the same fractions of this model's visual tokens, each built by
  `run.reducer(name, Budget.paper(b), calibrate_on=...)`: the method maps its paper settings to the model
  (FastV / ToMe at K = 2 of 32 -> 1 of the toy's 8 layers, 2 of SmolLM2's 30; random before the LLM;
  SparseVLM's knob calibrated so the layer-averaged visual tokens match the budget on `--n-calib` (default 32)
  samples of the TRAIN side of the data; DyRate at the fixed rate that keeps exactly the budget, re-decided
  at every generation step: its pruning mechanism, not its learned schedule). A new baseline registered with
  `takes_budget = True` appears here with no other edit.
The table gives the score, the visual tokens kept after pruning and their average over decoder layers; the
mini table puts the toy model's result of the same setting beside each row (read from
figures/toyworld/methods.csv; "missing" when absent).

Mini scale only, two figures on real photos (`common.data.photos`, `--photos`, default 3):
- masks.*: which visual tokens FastV and SparseVLM keep at 128 of 576 (`common.plots.plot_token_mask`);
- dyrate_attention.*: DyRate's Fig. 2 analysis for this model, the newest token's attention share per token
  type over generation steps (`papers.dyrate.analysis.generation_shares`).

Run flags are `common.run`'s (`--n` test samples per family, default 300 in all, `--seed`, `--n-calib`,
`--batch-size`, `--device`, `--dtype`, `--cache-dir`, `--out-dir`, `--model-path`); under torchrun the
evaluations are sharded. Predictions are cached, so a re-run only recomputes what changed.
"""
from __future__ import annotations

import argparse
import csv
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from common.data.blind import blind_samples
from common.data.easyvqa import overall_accuracy
from common.data.photos import real_photos
from common.data.sample import Sample
from common.data.toyworld import QA_FAMILIES
from common.evaluation import EvalResult
from common.factory import budget_methods
from common.models.load import DEFAULT_CHECKPOINTS
from common.paths import FIGURES, REPO_ROOT
from common.plots import new_figure, plot_share_curves, plot_token_mask
from common.reduction import Reducer, reduce_tokens
from common.run import Run, RunConfig, add_arguments
from common.schedule import PAPER_BUDGETS, PAPER_VISUAL, Budget, pruning_layer
from papers.dyrate.analysis import generation_shares
from reports.experiment import entry_point, import_papers

TABLE = "methods"
COMMAND = "python -m reports.methods"
N_TOTAL = 300  # default test samples in all (the committed tables)
N_CALIB = 32  # calibration samples (SparseVLM's knob)
# Row labels of the registered names the committed tables show; any other method is labelled by its name.
LABEL = {"fastv": "FastV", "tome": "ToMe", "sparsevlm": "SparseVLM", "dyrate": "DyRate (fixed rate)"}
MASK_METHODS, MASK_BUDGET = ("fastv", "sparsevlm"), 128  # the masks figure's reducers


@dataclass(frozen=True)
class Scale:
    """What the report reads at one scale: the test families, the family whose train side calibrates, the
    folder under figures/ and the generation length."""

    paper: str
    families: tuple[str, ...]
    calibrate_on: str
    max_new_tokens: int | Mapping[str, int]


SCALES = {
    "toy": Scale("toyworld", QA_FAMILIES, "gqa", {"caption": 40, "default": 4}),
    # any easy-vqa family brings all three question types (shape, color, yes/no)
    "mini": Scale("mini", ("easyvqa-shape",), "easyvqa-shape", 4),
}


@dataclass(frozen=True)
class Setting:
    """One row: `method` ("all", "blind" or a registered reducer) at a paper `budget` (of 576) for reducers."""

    method: str
    budget: int | None = None

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{LABEL.get(self.method, self.method)} {self.budget}"


def settings(methods: Sequence[str] | None = None, budgets: Sequence[int] = PAPER_BUDGETS) -> list[Setting]:
    """all, blind, then every method (default: the registry's budget methods) at every budget."""
    methods = budget_methods() if methods is None else methods
    return [Setting("all"), Setting("blind"), *(Setting(m, b) for m in methods for b in budgets)]


def eval_samples(run: Run, scale: Scale) -> list[Sample]:
    """`--n` samples per family, else N_TOTAL in all (families interleaved, so a prefix spreads evenly)."""
    if run.cfg.n is not None:
        return run.samples(scale.families, n=run.cfg.n)
    per_family = -(-N_TOTAL // len(scale.families))
    return run.samples(scale.families, n=per_family)[:N_TOTAL]


def run_settings(run: Run, samples: Sequence[Sample], scale: Scale, chosen: Sequence[Setting] | None = None,
                 *, progress: bool = False) -> dict[str, tuple[EvalResult, Reducer | None]]:
    """`run.evaluate` once per setting (`chosen`, default `settings()`); {label: (result, reducer)}."""
    blind = blind_samples(samples)
    out = {}
    for s in settings() if chosen is None else chosen:
        if progress and run.is_main:
            print(f"[{run.scale}-methods] {s.label}", file=sys.stderr, flush=True)
        red = None if s.budget is None else run.reducer(s.method, Budget.paper(s.budget),
                                                        calibrate_on=scale.calibrate_on)
        res = run.evaluate(blind if s.method == "blind" else samples, red, max_new_tokens=scale.max_new_tokens,
                           progress=progress)
        out[s.label] = (res, red)
    return out


# ---------------------------------------------------------------------------------------------- table
def scores(res: EvalResult, scale: str) -> dict[str, float]:
    """The headline score (`score`: easy-vqa overall accuracy / ToyWorld's mean over QA families) + parts."""
    if scale == "mini":
        out = {"score": overall_accuracy(res.metrics)}
        out.update({f.split("-", 1)[1]: m["accuracy"] for f, m in res.metrics.items()})
        return out
    qa = [f for f in res.metrics if f != "caption" and not np.isnan(res.metrics[f]["score"])]
    return {"score": float(np.mean([res.metrics[f]["score"] for f in qa]))}


def calibrated_knob(reducer: Reducer | None) -> str:
    """The knob a method tuned to its budget on data (its `calibration`, e.g. SparseVLM's `scale`) for the note
    column; "" if none."""
    cal = getattr(reducer, "calibration", None)
    return "" if cal is None else f"{cal.knob}={cal.value:.3g}"


def rows_of(results: Mapping[str, tuple[EvalResult, Any]], scale: str, n_visual: int) -> list[dict[str, Any]]:
    """One row per setting: scores, tokens kept after pruning (per frame of `n_visual` tokens) and their
    average over decoder layers."""
    rows = []
    for label, (res, red) in results.items():
        frames = res.visual_tokens_full / n_visual  # mean frames per sample
        row = {"setting": label, **scores(res, scale),
               "tokens kept": res.visual_tokens_per_layer[-1] / frames,
               "avg tokens/layer": res.visual_tokens / frames}
        if calibrated_knob(red):
            row["note"] = calibrated_knob(red)
        rows.append(row)
    return rows


def read_toy_rows(path: Path) -> dict[str, dict[str, str]]:
    """{setting: row} of a toy-scale methods.csv, or {} when it does not exist."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {r["setting"]: r for r in csv.DictReader(f)}


def side_by_side(mini_rows: Sequence[dict], toy: dict[str, dict[str, str]], n_visual: int) -> list[dict]:
    """The mini rows with the toy score and tokens of the same setting beside them ("missing" if absent)."""
    out = []
    for r in mini_rows:
        t = toy.get(r["setting"])
        out.append({**r, f"tokens kept (of {n_visual})": r["tokens kept"],
                    "toy score": float(t["score"]) if t else "missing",
                    "toy tokens kept": float(t["tokens kept"]) if t else "missing"})
    return out


def write_methods_table(run: Run, results: Mapping[str, tuple[EvalResult, Any]], *, n_samples: int,
                        command: str = COMMAND, toy_csv: Path | None = None) -> dict[str, Path]:
    """The methods table of the run's scale (mini: beside the toy rows of `toy_csv`, default
    figures/toyworld/methods.csv)."""
    n = run.n_visual
    rows = rows_of(results, run.scale, n)
    prov = run.provenance({"n_samples": n_samples, "settings": list(results),
                           "pruning_layer": pruning_layer(run.n_layers), "calibrate_on": SCALES[run.scale].calibrate_on,
                           "max_new_tokens": SCALES[run.scale].max_new_tokens, "decoding": "greedy"},
                          inputs=run.run_key)
    prov["command"] = command
    what = f"{n_samples} test samples, seed {run.cfg.seed}"
    if run.scale == "mini":
        toy_csv = toy_csv or FIGURES / SCALES["toy"].paper / f"{TABLE}.csv"
        rows = side_by_side(rows, read_toy_rows(toy_csv), n)
        where = toy_csv.relative_to(REPO_ROOT) if toy_csv.is_relative_to(REPO_ROOT) else toy_csv
        prov["config"]["toy_results"] = str(where) if toy_csv.exists() else "missing"
        columns = ["setting", "score", "shape", "color", "yesno", f"tokens kept (of {n})", "avg tokens/layer",
                   "toy score", "toy tokens kept", "note"]
        title = run.title(f"Mini scale, easy-vqa ({what}; {n} visual tokens): accuracy % (overall and per question "
                          "type) per token-reduction setting at paper budgets 192/128/64 of "
                          f"{PAPER_VISUAL}, beside the toy model's ToyWorld QA average for the same setting")
    else:
        columns = ["setting", "score", "tokens kept", "avg tokens/layer", "note"]
        title = run.title(f"Toy scale, ToyWorld QA families ({what}; {n} visual tokens): mean score % over the QA "
                          f"families per token-reduction setting at paper budgets 192/128/64 of {PAPER_VISUAL}")
    return run.write_table(TABLE, rows, title=title, columns=columns, float_format=".1f", provenance=prov)


# -------------------------------------------------------------------------------------------- figures
def kept_masks(run: Run, sample: Sample, reducer: Reducer) -> tuple[list[np.ndarray], list[str], str]:
    """Greedy answer of one sample under `reducer`, and a [grid, grid] keep mask after each pruning layer
    (merged tokens have no place on the image; titles count them)."""
    vlm = run.vlm
    inputs = run.batches([sample])[0]
    with torch.no_grad(), reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id) as st:
        out = vlm.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = vlm.decode(out[:, inputs["input_ids"].shape[1]:])[0]
    g = int(round(vlm.num_visual_tokens ** 0.5))
    masks, titles = [np.ones((g, g), bool)], [f"all {g * g}"]
    last = (masks[0].flatten(), 0)
    for layer in sorted(st.kept):
        k = st.kept[layer][0]
        m = np.zeros(g * g, bool)
        m[k[k >= 0].cpu().numpy()] = True
        merged = int((k < 0).sum())
        if np.array_equal(m, last[0]) and merged == last[1]:
            continue  # a hook layer where nothing changed (SparseVLM scores at s and prunes at s + 1)
        masks.append(m.reshape(g, g))
        titles.append(f"L{layer}: {int(m.sum())}" + (f"+{merged}m" if merged else ""))
        last = (m, merged)
    return masks, titles, answer


def mask_figure(run: Run, photos: Sequence[Sample], reducers: Mapping[str, Reducer],
                prov: dict[str, Any]) -> dict[str, Path]:
    """Rows: photos x reducers; the image with its kept tokens after each pruning layer (plot_token_mask)."""
    vlm = run.vlm
    panels = []
    for s in photos:
        for name, red in reducers.items():
            masks, titles, answer = kept_masks(run, s, red)
            panels.append((s, name, masks[1:], titles[1:], answer))
    ncol = 1 + max(len(p[2]) for p in panels)
    fig, axes = new_figure(len(panels), ncol, width=2.0 * ncol, height=2.1 * len(panels), squeeze=False)
    data = []
    size = vlm.cfg.image_size if hasattr(vlm, "cfg") and hasattr(vlm.cfg, "image_size") else None
    for row, (s, name, masks, titles, answer) in zip(axes, panels):
        img = s.images[0].resize((size, size)) if size else s.images[0]  # the model's view: squashed square
        row[0].imshow(img)
        row[0].set_xticks([])
        row[0].set_yticks([])
        row[0].grid(False)
        row[0].set_title(name, fontsize=8)
        row[0].set_xlabel(textwrap.fill(f"{s.question} -> {answer!r} (ref. {s.answer})", 34), fontsize=7)
        plot_token_mask(img, masks, ax=list(row[1:1 + len(masks)]), title=titles)
        for a in row[1 + len(masks):]:
            a.set_axis_off()
        data.append({"id": s.id, "question": s.question, "reference": s.answer, "reducer": name, "answer": answer,
                     "kept_per_panel": [int(m.sum()) for m in masks]})
    fig.suptitle(f"Kept visual tokens on real photos ({vlm.name}; {vlm.num_visual_tokens} tokens)", fontsize=9)
    return run.save_figure("masks", fig, provenance={**prov, "data": data})


def attention_figure(run: Run, photos: Sequence[Sample], prov: dict[str, Any],
                     max_new_tokens: int = 24) -> dict[str, Path]:
    """DyRate Fig. 2 for this model: attention share of the newest token per token type over generation
    steps, mean over layers and photos (prompt: "Describe the image.")."""
    vlm = run.vlm
    prompts = [replace(s, question="Describe the image.", answer="", answer_type="caption") for s in photos]
    tr = generation_shares(vlm.model, run.batches(prompts)[0], max_new_tokens=max_new_tokens,
                           image_token_id=vlm.image_token_id)
    fig, ax = new_figure()
    plot_share_curves(np.arange(1, tr.shares.shape[1] + 1), tr.per_type(), ax=ax)
    ax.set_title(f"{vlm.name}: attention share of the newest token, mean over {len(tr.layers)} layers, "
                 f"{len(photos)} photos", fontsize=8)
    return run.save_figure("dyrate_attention", fig, provenance={
        **prov, "data": {"steps": int(tr.shares.shape[1]), "texts": vlm.decode(torch.as_tensor(tr.tokens))}})


def photo_figures(run: Run, results: Mapping[str, tuple[EvalResult, Any]], n_photos: int,
                  command: str = COMMAND) -> dict[str, Path]:
    """The masks and attention figures on `n_photos` real photos (rank 0 only)."""
    if not run.is_main or n_photos <= 0:
        return {}
    photos = real_photos(n_photos)
    prov = run.provenance({"photos": [s.meta["source"] for s in photos]}, inputs=run.run_key)
    prov["command"] = command
    reducers = {label: results[label][1] for label in (Setting(m, MASK_BUDGET).label for m in MASK_METHODS)
                if label in results}
    paths = {f"masks.{k}": v for k, v in mask_figure(run, photos, reducers, prov).items()}
    paths.update({f"attention.{k}": v for k, v in attention_figure(run, photos, prov).items()})
    return paths


# ----------------------------------------------------------------------------------------------- main
def methods_report(run: Run, *, budgets: Sequence[int] = PAPER_BUDGETS, photos: int = 0, progress: bool = False,
                   command: str = COMMAND, toy_csv: Path | None = None) -> dict[str, Path]:
    """The methods table of `run`'s scale (and, with `photos`, the mini figures); {} off rank 0."""
    scale = SCALES[run.scale]
    _ = run.vlm  # load the model first: a missing checkpoint fails before any work
    samples = eval_samples(run, scale)
    results = run_settings(run, samples, scale, settings(budgets=budgets), progress=progress)
    paths = write_methods_table(run, results, n_samples=len(samples), command=command, toy_csv=toy_csv)
    paths.update(photo_figures(run, results, photos, command=command))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0]))
    parser.set_defaults(n_calib=N_CALIB)
    parser.add_argument("--photos", type=int, default=3, help="real photos in the mini figures (0: none)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cfg = RunConfig.from_args(args)
    if cfg.scale not in SCALES:
        print(f"methods: scale {cfg.scale!r} not supported (toy or mini; at paper scale each paper's Table 1 "
              "compares the methods on the benchmarks)", file=sys.stderr)
        return 3
    scale = SCALES[cfg.scale]
    if cfg.out_dir is None:
        cfg = cfg.replace(out_dir=FIGURES / scale.paper)
    if cfg.scale == "mini" and args.photos > cfg.batch_size:
        parser.error(f"--photos: at most --batch-size ({cfg.batch_size}) photos, one batch")
    import_papers()
    run = Run.for_scale(cfg, paper=scale.paper, checkpoint=DEFAULT_CHECKPOINTS[cfg.scale])
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    photos = args.photos if cfg.scale == "mini" else 0
    return entry_point(f"{cfg.scale}-methods", lambda: methods_report(run, photos=photos, progress=not args.quiet,
                                                                       command=command), quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
