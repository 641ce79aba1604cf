"""The mini-scale report (issue 9): `make mini-report` / `python -m common.mini_report`.

Writes, for the mini model (DINOv2-S + SmolLM2-135M + trained projector, `common.models.mini`):
- figures/mini/methods.{csv,md,tex,json}: easy-vqa test accuracy with all 64 visual tokens, blind, and FastV,
  ToMe, random, SparseVLM and DyRate at the paper budgets 192 / 128 / 64 of 576 (the same fractions of 64),
  beside the toy-scale result of the same setting, read from figures/toyworld/methods.csv (made by
  `python -m common.mini_report --scale toy`; cells say "missing" when that file does not exist);
- figures/mini/masks.{png,pdf,json}: which visual tokens FastV and SparseVLM keep on real photos with real
  questions (`common.data.photos`), drawn by `common.plots.plot_token_mask`;
- figures/mini/dyrate_attention.{png,pdf,json}: DyRate's Fig. 2 analysis for the mini model, the newest
  token's attention share per token type over generation steps, describing the photos
  (`papers.dyrate.analysis.generation_shares` + `common.plots.plot_share_curves`).

Settings (rows), one code path for both scales:
- all / blind: every visual token; blind = every image one uniform mean-colour image (`common.toy_report`).
- FastV, ToMe: at layer K = max(1, map_layer(2, L)) (the papers' K = 2 of 32; 2 for SmolLM2's 30 layers,
  1 for the 8-layer toy decoder). random: `RandomDrop` before the LLM (layer 0), seeded.
- SparseVLM: official mode, `scale` calibrated (`papers.sparsevlm.method.calibrate`) so the layer-averaged
  visual tokens match the budget on calibration prompts from the TRAIN split (easy-vqa train / ToyWorld val).
- DyRate: FixedPrune form, `DyRate(K, rate=1 - budget)` re-deciding at every generation step (recompute mode,
  no KV cache). No rate predictor is trained at these scales, so this row is DyRate's pruning mechanism at a
  fixed budget, not its learned schedule (papers/dyrate trains one for the toy model's captions only).
Budgets keep the same fraction of visual tokens as 192/128/64 of 576 (DESIGN.md §6); the table gives the
tokens kept after pruning and the average over decoder layers.
Predictions are cached in .cache/eval, so a re-run only recomputes what changed.
"""
from __future__ import annotations

import argparse
import csv
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from common.attention import decoder_of
from common.data.sample import Sample
from common.evaluation import EvalResult, evaluate
from common.schedule import PAPER_VISUAL, keep_count, map_layer

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = {"mini": REPO_ROOT / "figures" / "mini", "toy": REPO_ROOT / "figures" / "toyworld"}
TABLE = "methods"
BUDGETS = (192, 128, 64)
METHODS = ("fastv", "tome", "random", "sparsevlm", "dyrate")
LABEL = {"fastv": "FastV", "tome": "ToMe", "random": "random", "sparsevlm": "SparseVLM", "dyrate": "DyRate (fixed rate)"}
MAX_NEW_TOKENS = {"mini": 4, "toy": {"caption": 40, "default": 4}}


@dataclass(frozen=True)
class Setting:
    """One row: `method` in all / blind / METHODS, at a paper `budget` (of 576) for the reducers."""

    method: str
    budget: int | None = None

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{LABEL[self.method]} {self.budget}"


SETTINGS: tuple[Setting, ...] = (Setting("all"), Setting("blind"),
                                 *(Setting(m, b) for m in METHODS for b in BUDGETS))


def pruning_layer(n_layers: int) -> int:
    """The papers' K = 2 (of 32) mapped to this depth, at least 1 (FastV/DyRate need layer K-1's attention)."""
    return max(1, map_layer(2, n_layers))


def fixed_rate(budget: int, n_visual: int) -> float:
    """DyRate's pruning rate R that keeps exactly `keep_count(budget, n_visual)` tokens (N - floor(R N))."""
    from papers.dyrate.predictor import kept_count

    keep = keep_count(budget, n_visual)
    rate = (n_visual - keep) / n_visual
    if kept_count(n_visual, rate) != keep:  # floating-point floor just below an integer
        rate = min(1.0, rate + 1e-9)
    return rate


def make_reducer(s: Setting, vlm: Any, calib: Sequence[dict], seed: int = 0, calib_iters: int = 10):
    """The reducer of a setting for `vlm` (None for all / blind). SparseVLM is calibrated on `calib` batches."""
    if s.method in ("all", "blind"):
        return None
    K = pruning_layer(len(decoder_of(vlm.model).layers))
    if s.method == "fastv":
        from common.baselines.fastv import FastV

        return FastV(K=K, budget=s.budget)
    if s.method == "tome":
        from common.baselines.tome import ToMe

        return ToMe(layer=K, budget=s.budget)
    if s.method == "random":
        from common.baselines.random_drop import RandomDrop

        return RandomDrop(layer=0, budget=s.budget, seed=seed)
    if s.method == "sparsevlm":
        from papers.sparsevlm.method import calibrate, paper_budget_target

        target = paper_budget_target(s.budget, vlm.num_visual_tokens)
        return calibrate(vlm.model, calib, target, image_token_id=vlm.image_token_id, iters=calib_iters,
                         verbose=False).reducer
    if s.method == "dyrate":
        from papers.dyrate.method import DyRate

        return DyRate(K=K, rate=fixed_rate(s.budget, vlm.num_visual_tokens))
    raise ValueError(f"setting: unknown method {s.method!r}; expected all, blind or one of {METHODS}")


def run_settings(vlm: Any, samples: Sequence[Sample], calib: Sequence[Sample], *, scale: str, run_key: dict,
                 settings: Sequence[Setting] = SETTINGS, seed: int = 0, batch_size: int = 16,
                 cache_dir: str | Path | None = ".cache/eval", calib_iters: int = 10,
                 progress: bool = True) -> dict[str, tuple[EvalResult, Any]]:
    """`evaluate` once per setting; {label: (result, reducer)}."""
    from common.toy_report import blind_samples

    calib_batches = [dict(vlm.build_inputs(calib[i:i + batch_size])) for i in range(0, len(calib), batch_size)]
    blind = None
    out = {}
    for s in settings:
        if progress:
            print(f"[{scale}-report] {s.label}", file=sys.stderr, flush=True)
        if s.method == "blind":
            blind = blind if blind is not None else blind_samples(samples)
        red = make_reducer(s, vlm, calib_batches, seed, calib_iters)
        gen = red.generate_kwargs() if hasattr(red, "generate_kwargs") else None
        res = evaluate(vlm, blind if s.method == "blind" else samples, reducer=red, batch_size=batch_size,
                       max_new_tokens=MAX_NEW_TOKENS[scale], cache_dir=cache_dir, run_key=run_key,
                       generate_kwargs=gen, progress=progress)
        out[s.label] = (res, red)
    return out


# ---------------------------------------------------------------------------------------------- table
def scores(res: EvalResult, scale: str) -> dict[str, float]:
    """The headline score (`score`: easy-vqa overall accuracy / ToyWorld's mean over QA families) + parts."""
    if scale == "mini":
        from common.data.easyvqa import overall_accuracy

        out = {"score": overall_accuracy(res.metrics)}
        out.update({f.split("-", 1)[1]: m["accuracy"] for f, m in res.metrics.items()})
        return out
    qa = [f for f in res.metrics if f != "caption" and not np.isnan(res.metrics[f]["score"])]
    return {"score": float(np.mean([res.metrics[f]["score"] for f in qa]))}


def rows_of(results: dict[str, tuple[EvalResult, Any]], scale: str, n_visual: int) -> list[dict[str, Any]]:
    """One row per setting: scores, tokens kept after pruning (per frame of `n_visual` tokens) and their
    average over decoder layers."""
    rows = []
    for label, (res, red) in results.items():
        frames = res.visual_tokens_full / n_visual  # mean frames per sample
        row = {"setting": label, **scores(res, scale),
               "tokens kept": res.visual_tokens_per_layer[-1] / frames,
               "avg tokens/layer": res.visual_tokens / frames}
        if red is not None and hasattr(red, "score_layers"):  # SparseVLM's calibrated knob
            row["note"] = f"scale={red.config.scale:.3g}"
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


# -------------------------------------------------------------------------------------------- figures
def kept_masks(vlm: Any, sample: Sample, reducer: Any) -> tuple[list[np.ndarray], list[str], str]:
    """Greedy answer of one sample under `reducer`, and a [grid, grid] keep mask after each pruning layer
    (merged tokens have no place on the image; titles count them)."""
    from common.reduction import reduce_tokens

    inputs = dict(vlm.build_inputs([sample]))
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


def mask_figure(vlm: Any, photos: Sequence[Sample], reducers: dict[str, Any], stem: Path, prov: dict) -> dict:
    """Rows: photos; per reducer, the image with its kept tokens after each pruning layer (plot_token_mask)."""
    from common.artifacts import save_figure
    from common.plots import new_figure, plot_token_mask

    panels = []
    for s in photos:
        for name, red in reducers.items():
            masks, titles, answer = kept_masks(vlm, s, red)
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
    return save_figure(fig, stem, provenance={**prov, "data": data})


def attention_figure(vlm: Any, photos: Sequence[Sample], stem: Path, prov: dict, max_new_tokens: int = 24) -> dict:
    """DyRate Fig. 2 for this model: attention share of the newest token per token type over generation
    steps, mean over layers and photos (prompt: "Describe the image.")."""
    from dataclasses import replace

    from common.artifacts import save_figure
    from common.plots import new_figure, plot_share_curves
    from papers.dyrate.analysis import generation_shares

    prompts = [replace(s, question="Describe the image.", answer="", answer_type="caption") for s in photos]
    tr = generation_shares(vlm.model, dict(vlm.build_inputs(prompts)), max_new_tokens=max_new_tokens,
                           image_token_id=vlm.image_token_id)
    fig, ax = new_figure()
    plot_share_curves(np.arange(1, tr.shares.shape[1] + 1), tr.per_type(), ax=ax)
    ax.set_title(f"{vlm.name}: attention share of the newest token, mean over {len(tr.layers)} layers, "
                 f"{len(photos)} photos", fontsize=8)
    return save_figure(fig, stem, provenance={**prov, "data": {"steps": int(tr.shares.shape[1]),
                                                               "texts": vlm.decode(torch.as_tensor(tr.tokens))}})


# ----------------------------------------------------------------------------------------------- main
def load(scale: str, checkpoint: Path | None, n: int, seed: int) -> tuple[Any, list[Sample], list[Sample], dict, str]:
    """(vlm, test samples, calibration samples, run key, data description) of a scale."""
    from common.toy_report import hash_checkpoint

    if scale == "mini":
        from common.data.easyvqa import easyvqa_split
        from common.models.mini import DEFAULT_CHECKPOINT, load_mini_vlm, parts_info

        ckpt = checkpoint or DEFAULT_CHECKPOINT
        vlm = load_mini_vlm(ckpt)
        key = {"checkpoint": hash_checkpoint(ckpt), "parts": {k: v.get("sha256") for k, v in parts_info().items()}}
        return (vlm, easyvqa_split("test", n, seed), easyvqa_split("train", 32, seed), key,
                f"easy-vqa test, {n} questions")
    from common.data.toyworld import FAMILIES, toyworld_split
    from common.models.checkpoint import data_version
    from common.toy_report import DEFAULT_CHECKPOINT as TOY, load_toy_vlm

    ckpt = checkpoint or TOY
    qa = [f for f in FAMILIES if f != "caption"]
    version = data_version(ckpt)
    return (load_toy_vlm(ckpt), toyworld_split("test", n, seed=seed, families=qa, version=version),
            toyworld_split("val", 32, seed=seed, families=qa, version=version), {"checkpoint": hash_checkpoint(ckpt)},
            f"ToyWorld test (QA families), {n} samples")


def write(results: dict, *, scale: str, vlm: Any, out_dir: Path, data_desc: str, run_key: dict, seed: int,
          command: str, started: float, toy_csv: Path | None = None) -> dict[str, Path]:
    """The methods table of a scale (mini: beside the toy rows of `toy_csv`, default figures/toyworld)."""
    from common.artifacts import provenance, write_table

    n = vlm.num_visual_tokens
    rows = rows_of(results, scale, n)
    prov = provenance(command=command, config={"scale": scale, "model": vlm.name, "data": data_desc,
                                               "settings": [s.label for s in SETTINGS],
                                               "pruning_layer": pruning_layer(len(decoder_of(vlm.model).layers)),
                                               "max_new_tokens": MAX_NEW_TOKENS[scale], "decoding": "greedy"},
                      seeds={"data": seed, "random": seed}, inputs={**run_key}, started=started)
    if scale == "mini":
        toy_csv = toy_csv or OUT["toy"] / f"{TABLE}.csv"
        rows = side_by_side(rows, read_toy_rows(toy_csv), n)
        where = toy_csv.relative_to(REPO_ROOT) if toy_csv.is_relative_to(REPO_ROOT) else toy_csv
        prov["config"]["toy_results"] = str(where) if toy_csv.exists() else "missing"
        columns = ["setting", "score", "shape", "color", "yesno", f"tokens kept (of {n})", "avg tokens/layer",
                   "toy score", "toy tokens kept", "note"]
        title = (f"Mini scale ({vlm.name}: DINOv2-S + SmolLM2-135M, {n} visual tokens; {data_desc}): accuracy % "
                 "(overall and per question type) per token-reduction setting at paper budgets 192/128/64 of "
                 f"{PAPER_VISUAL}, beside the toy model's ToyWorld QA average for the same setting")
    else:
        columns = ["setting", "score", "tokens kept", "avg tokens/layer", "note"]
        title = (f"Toy scale ({vlm.name}, {n} visual tokens; {data_desc}): mean score % over the QA families per "
                 f"token-reduction setting at paper budgets 192/128/64 of {PAPER_VISUAL}")
    return write_table(rows, out_dir / TABLE, title=title, columns=columns, provenance=prov, float_format=".1f")


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(prog="python -m common.mini_report", description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("mini", "toy"), default="mini")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--n", type=int, default=300, help="test questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--calib-iters", type=int, default=10, help="SparseVLM calibration bisection steps")
    p.add_argument("--photos", type=int, default=3, help="real photos in the figures (mini scale; 0: none)")
    p.add_argument("--cache-dir", default=".cache/eval", help="'' disables the prediction cache")
    p.add_argument("--out", type=Path, default=None, help="output folder (default figures/mini or figures/toyworld)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    started = time.time()
    vlm, samples, calib, run_key, desc = load(a.scale, a.checkpoint, a.n, a.seed)
    results = run_settings(vlm, samples, calib, scale=a.scale, run_key=run_key, seed=a.seed, batch_size=a.batch_size,
                           cache_dir=a.cache_dir or None, calib_iters=a.calib_iters, progress=not a.quiet)
    out_dir = a.out or OUT[a.scale]
    command = "python -m common.mini_report " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write(results, scale=a.scale, vlm=vlm, out_dir=out_dir, data_desc=desc, run_key=run_key, seed=a.seed,
                  command=command.strip(), started=started)
    if a.scale == "mini" and a.photos:
        from common.artifacts import provenance
        from common.data.photos import real_photos

        photos = real_photos(a.photos)
        prov = provenance(command=command.strip(), config={"scale": "mini", "model": vlm.name,
                                                           "photos": [s.meta["source"] for s in photos]},
                          inputs=run_key, started=started)
        reds = {"FastV 128": results["FastV 128"][1], "SparseVLM 128": results["SparseVLM 128"][1]}
        paths.update({f"masks.{k}": v for k, v in mask_figure(vlm, photos, reds, out_dir / "masks", prov).items()})
        paths.update({f"attention.{k}": v for k, v in
                      attention_figure(vlm, photos, out_dir / "dyrate_attention", prov).items()})
    if not a.quiet:
        print(paths["md"].read_text())
    return paths


if __name__ == "__main__":
    main()
