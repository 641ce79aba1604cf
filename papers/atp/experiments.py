"""ATP-LLaVA's tables and figures (`make atp-table1` ... `make atp-fig4`, `make atp-ratios`), as functions of a `Run`.

Toy scale: the first toy LLaVA (`papers.atp.runs.BASE_CHECKPOINT`, 144 visual tokens on a 12 x 12 grid) with ATP
modules trained on ToyWorld (checkpoints/atp-toy-*; a missing run is trained first); ToyWorld's test split,
families gqa, pope, textvqa, count (fine-grained), scene (coarse-grained), mc, 40 each. Paper scale
(`--scale paper --model-path <llava-hf LLaVA-1.5> --data-root <playground/data/eval> --train-root
<playground/data>`): the runs are trained on LLaVA-665k (`papers.atp.train.train_paper`, into <out_dir>/runs or
`--set atp.runs_dir=...`) and scored on the paper's benchmarks (GQA, MMB, MME, POPE, SQA-I, VQAv2; SEED has no
loader yet, so its column stays empty). Tables put the paper's numbers beside ours, matched by budget (paper
tokens of 576 <-> the same fraction of the model's visual tokens). Token counts are averages over decoder layers
(`common.flops.average_visual_tokens`), as in the paper.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from common import flops as F
from common.attention import decoder_of
from common.evaluation import EvalResult, hash_samples
from common.factory import make_reducer
from common.models.load import checkpoint_sha256
from common.plots import new_figure
from common.reduction import BuildTarget, Reducer, reduce_tokens
from common.run import MissingInputs, Run, target
from common.schedule import PAPER_VISUAL, Budget, map_layer, pruning_layer
from papers.atp import reported as R
from papers.atp.method import ATPReducer
from papers.atp.runs import (ABLATIONS_T4, ABLATIONS_T5, BASE_CHECKPOINT, FIXED, FROZEN, MAIN, MAIN_88, Options,
                             TrainConfig, runs_dir)
from papers.atp.train import ensure_run, is_trained, load_run, missing_training_data

__all__ = ["Options", "FAMILIES", "PAPER_FAMILIES", "score_row", "fastv_keep_for_average"]

FAMILIES = ("gqa", "pope", "textvqa", "count", "scene", "mc")  # toy scale
# paper scale, Table 1's benchmarks in its order; "seed" has no loader yet (an empty column)
PAPER_FAMILIES = ("gqa", "mmb", "mme", "pope", "seed", "sqa", "vqav2")
NO_LOADER = {"seed": "SEED-Bench has no loader yet"}
NOT_PERCENT = ("mme",)  # MME's perception score (out of 2000) stays out of the mean; retention % includes it
N_PER_FAMILY = 40
N_CALIB_TOY = 8  # calibration samples per family (SparseVLM rows): 48 ToyWorld val images
MAX_NEW_TOKENS = {"toy": 8, "paper": 16}
SCALES = ("toy", "paper")
PAPER_LAYOUT_HINT = ("Expected LLaVA-1.5's evaluation files under data_root (playground/data/eval) and, for runs still "
                     "to train, its stage-2 data under train_root (playground/data); see papers/atp/README.md, "
                     "'Paper scale'.")
WHY_NOT = "ATP's runs train on ToyWorld (toy) or LLaVA-665k (paper); the mini model has no ATP recipe"


# ------------------------------------------------------------------------------------------- the run
def families(run: Run) -> tuple[str, ...]:
    return run.families(FAMILIES if run.scale == "toy" else PAPER_FAMILIES)


def scored(fams: Sequence[str]) -> tuple[str, ...]:
    """The families that have a loader (the others are empty columns)."""
    return tuple(f for f in fams if f not in NO_LOADER)


def eval_samples(run: Run):
    return run.samples(scored(families(run)), n=run.n(N_PER_FAMILY))


def require(run: Run, runs: Sequence[TrainConfig] = ()) -> None:
    """Paper scale: before any work, one `MissingInputs` naming every absent benchmark file, and the training
    data if one of `runs` is still to train."""
    if run.scale != "paper":
        return
    missing = []
    try:
        run.require(scored(families(run)))
    except MissingInputs as err:
        missing += err.missing
    folder = runs_dir(run.scale, run.out_dir, run.options(Options))
    if any(not is_trained(folder / c.name(run.scale)) for c in runs):
        missing += missing_training_data(run.cfg.train_root)
    if missing:
        raise MissingInputs(missing, PAPER_LAYOUT_HINT)


def evaluate(run: Run, reducer: Reducer | None, *, vlm: Any = None, run_key: dict | None = None,
             samples=None, positions: str = "original") -> EvalResult:
    return run.evaluate(samples if samples is not None else eval_samples(run), reducer, vlm=vlm, run_key=run_key,
                        max_new_tokens=MAX_NEW_TOKENS[run.scale],
                        reduction_kwargs={"positions": positions} if positions != "original" else None)


@dataclass
class Trained:
    """A trained run, ready to evaluate: its model (the base one unless the run tuned the decoder), reducer,
    prediction-cache key and card."""

    cfg: TrainConfig
    vlm: Any
    reducer: ATPReducer
    run_key: dict
    card: dict

    def evaluate(self, run: Run, samples=None) -> EvalResult:
        return evaluate(run, self.reducer, vlm=self.vlm, run_key=self.run_key, samples=samples,
                        positions=self.reducer.atp.config.positions)


def trained(run: Run, cfg: TrainConfig) -> Trained:
    folder = ensure_run(run, cfg)
    vlm = run.load_vlm() if (folder / "decoder.safetensors").exists() else run.vlm
    atp, card = load_run(folder, vlm)
    return Trained(cfg, vlm, run.reducer("atp", modules=atp.to(run.device)),
                   {**run.run_key, "atp": checkpoint_sha256(folder)}, card)


def family_scores(res: EvalResult, fams: Sequence[str]) -> dict[str, float | None]:
    """Each family's score; None where there is none (no loader, or answers not public: VQAv2 test-dev)."""
    out = {}
    for f in fams:
        v = float(res.metrics[f]["score"]) if f in res.metrics else math.nan
        out[f] = None if math.isnan(v) else v
    return out


def score_row(name: str, res: EvalResult, upper: EvalResult | None, n_visual: int,
              fams: Sequence[str] = FAMILIES, scale: str = "toy") -> dict[str, Any]:
    """One table row: per-family scores, their mean, retention vs the unpruned model, average tokens."""
    sc = family_scores(res, fams)
    row: dict[str, Any] = {"method": name, f"avg tokens ({scale})": round(res.visual_tokens, 2),
                           "paper-equiv. tokens": round(res.visual_tokens * PAPER_VISUAL / n_visual, 1)}
    row.update({f: (None if v is None else round(v, 1)) for f, v in sc.items()})
    pct = [v for f, v in sc.items() if v is not None and f not in NOT_PERCENT]
    row["mean"] = round(statistics.mean(pct), 2) if pct else None
    if upper is not None:
        up = family_scores(upper, fams)
        ret = [sc[f] / up[f] * 100 for f in sc if sc[f] is not None and up.get(f)]
        row["retention %"] = round(statistics.mean(ret), 1) if ret else None
    return row


def fastv_keep_for_average(avg: float, n_visual: int, K: int, n_layers: int) -> int:
    """FastV's kept count c whose all-layer average equals `avg`: (n_layers avg - n_visual K) / (n_layers - K)
    (atp.md §9), rounded to the nearest token."""
    c = (n_layers * avg - n_visual * K) / (n_layers - K)
    if not 0 <= c <= n_visual:
        raise ValueError(f"avg: {avg} tokens on average cannot be reached by pruning at layer {K}")
    return int(round(c))


def calibration_target(run: Run) -> BuildTarget:
    """The model plus calibration batches for budget-calibrated methods (SparseVLM): the "val" samples of every
    family of the table (8 per family at toy scale, `n_calib` at paper scale)."""
    vlm = run.vlm
    n = N_CALIB_TOY if run.scale == "toy" else run.cfg.n_calib
    calib = run.samples(scored(families(run)), "val", n=n)
    key = {"run": run.run_key, "families": list(scored(families(run))), "data": hash_samples(calib),
           "batch_size": run.cfg.batch_size}
    return BuildTarget(run.n_layers, run.n_visual, vlm.model, vlm.image_token_id,
                       calibration_batches=lambda: run.batches(calib), cache_dir=run.cache_dir / "calibration",
                       cache_key=key)


def _scale_note(run: Run) -> str:
    notes = "; ".join(f"{f}: {why} (empty column)" for f, why in NO_LOADER.items() if f in families(run))
    return run.title("ATP-LLaVA") + (f"; {notes}" if notes else "")


# ------------------------------------------------------------------------------------------- Table 1
@target("atp-table1", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table1(run: Run) -> dict[str, Path]:
    """ATP-LLaVA vs FastV, SparseVLM, random and fixed-ratio pruning at matched averages."""
    require(run, [FIXED["2/3"], MAIN, MAIN_88])
    opts = run.options(Options)
    fams, n0, nl = families(run), run.n_visual, run.n_layers
    upper = evaluate(run, None)
    row = score_row(f"LLaVA ({run.scale}, unpruned)", upper, upper, n0, fams, run.scale)
    rows = [row | {"paper tokens": PAPER_VISUAL, "paper avg retention %": R.TABLE1_AVG_RETENTION[("LLaVA-1.5", 576)]}]
    K = pruning_layer(nl)
    for budget in (192, 128):
        keep = fastv_keep_for_average(budget / PAPER_VISUAL * n0, n0, K, nl)
        res = evaluate(run, run.reducer("fastv", Budget.count(keep), K=K))
        rows.append(score_row(f"FastV (K={K})", res, upper, n0, fams, run.scale)
                    | {"paper tokens": budget, "paper avg retention %": R.TABLE1_AVG_RETENTION[("FastV", budget)]})
    calib = calibration_target(run)
    for budget in (192, 128):
        res = evaluate(run, make_reducer("sparsevlm", Budget.paper(budget), calib, calib_iters=opts.calib_iters))
        rows.append(score_row("SparseVLM (calibrated)", res, upper, n0, fams, run.scale)
                    | {"paper tokens": budget, "paper avg retention %": R.TABLE1_AVG_RETENTION[("SparseVLM", budget)]})
    rnd = run.reducer("random", Budget.count(int(round(144 / PAPER_VISUAL * n0))), layer=0, seed=0)
    rows.append(score_row("random (pre-LLM)", evaluate(run, rnd), upper, n0, fams, run.scale) | {"paper tokens": 144})
    fixed = trained(run, FIXED["2/3"])
    rows.append(score_row("fixed ratio 2/3 (trained)", fixed.evaluate(run), upper, n0, fams, run.scale)
                | {"paper tokens": 144})
    for cfg, budget in ((MAIN, 144), (MAIN_88, 88)):
        res = trained(run, cfg).evaluate(run)
        rows.append(score_row("ATP-LLaVA (ours, adaptive)", res, upper, n0, fams, run.scale)
                    | {"paper tokens": budget, "paper avg retention %": R.TABLE1_AVG_RETENTION[("ATP-LLaVA", budget)]})
    cols = ["method", "paper tokens", f"avg tokens ({run.scale})", "paper-equiv. tokens", *fams, "mean",
            "retention %", "paper avg retention %"]
    return run.write_table("table1", rows, columns=cols,
                           title=f"{_scale_note(run)} Table 1, {run.n(N_PER_FAMILY) or 'all'}/family; paper: "
                                 f"{R.TABLE1_SOURCE}",
                           provenance=run.provenance({"n_per_family": run.n(N_PER_FAMILY), "fastv_K": K}))


# ------------------------------------------------------------------------------------------- Table 2
@target("atp-table2", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table2(run: Run) -> dict[str, Path]:
    """Pre-defined (fixed-ratio, trained) pruning schedules vs adaptive ATP at ~144 tokens."""
    paper = dict(zip(("upper", "3/4", "2/3", "1/2", "ATP-144", "ATP-88"), R.TABLE2))
    runs = [(f"Pre-defined ratio {lab}", cfg, paper[lab]) for lab, cfg in FIXED.items()]
    runs += [("ATP-LLaVA 144", MAIN, paper["ATP-144"]), ("ATP-LLaVA 88", MAIN_88, paper["ATP-88"])]
    require(run, [cfg for _, cfg, _ in runs])
    fams, n0, s = families(run), run.n_visual, run.scale
    upper = evaluate(run, None)
    rows = [score_row("Upper bound (unpruned)", upper, upper, n0, fams, s) | _t2_paper(paper["upper"])]
    for name, cfg, prow in runs:
        t = trained(run, cfg)
        kept = [round(c, 1) for c in t.card["mean_kept"]]
        rows.append(score_row(name, t.evaluate(run), upper, n0, fams, s) | _t2_paper(prow)
                    | {f"layers ({s})": str(list(t.reducer.atp.config.layers)), f"retained ({s}, val)": str(kept)})
    cols = ["method", f"layers ({s})", f"retained ({s}, val)", f"avg tokens ({s})", "paper-equiv. tokens", *fams,
            "mean", "retention %", "paper layers", "paper retained", "paper avg tokens", "paper 4-bench mean"]
    return run.write_table("table2", rows, columns=cols, title=f"{_scale_note(run)} Table 2; paper: {R.TABLE2_SOURCE}",
                           provenance=run.provenance({"runs": [c.name(s) for _, c, _ in runs]}))


def _t2_paper(prow) -> dict:
    strategy, tokens, ratio, layers, kept, scores = prow
    exact = R.TABLE2_EXACT_AVG[tuple(kept)] if kept else 576
    return {"paper layers": str(list(layers)), "paper retained": str(list(kept)), "paper avg tokens": exact,
            "paper 4-bench mean": round(R.mean(scores), 3)}


# --------------------------------------------------------------------------------------- Tables 3-5
def _ablation_table(run: Run, runs: dict[str, TrainConfig], paper: dict[str, tuple], source: str,
                    number: int) -> dict[str, Path]:
    require(run, list(runs.values()))
    fams, n0, s = families(run), run.n_visual, run.scale
    upper = evaluate(run, None)
    rows = []
    for name, cfg in runs.items():
        row = score_row(name, trained(run, cfg).evaluate(run), upper, n0, fams, s) | {"run": cfg.name(s)}
        p = paper.get(name)
        row["paper 4-bench mean"] = round(R.mean(p), 3) if p else None
        rows.append(row)
    cols = ["method", "run", f"avg tokens ({s})", "paper-equiv. tokens", *fams, "mean", "retention %",
            "paper 4-bench mean"]
    return run.write_table(f"table{number}", rows, columns=cols,
                           title=f"{_scale_note(run)} Table {number}; paper: {source}",
                           provenance=run.provenance({"runs": {k: c.name(s) for k, c in runs.items()}}))


@target("atp-table3", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table3(run: Run) -> dict[str, Path]:
    """Frozen vs fine-tuned decoder (PP kept in both: our PP is 1-D original positions)."""
    return _ablation_table(run, {"Frozen": FROZEN, "Trainable": MAIN}, R.TABLE3, R.TABLE3_SOURCE, 3)


@target("atp-table4", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table4(run: Run) -> dict[str, Path]:
    """Spatial Augmented Pruning ablation, all five flag combinations (A16)."""
    paper = {"full (RP+SP+PP)": R.TABLE4["full (RP+SP+PP)"], "w/o RP": R.TABLE4["w/o RP"]}
    return _ablation_table(run, ABLATIONS_T4, paper, R.TABLE4_SOURCE, 4)


@target("atp-table5", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table5(run: Run) -> dict[str, Path]:
    """Redundant-score ablation (self-modality only / cross-modality only)."""
    return _ablation_table(run, ABLATIONS_T5, R.TABLE5, R.TABLE5_SOURCE, 5)


# ------------------------------------------------------------------------------------------- Table 6
@torch.no_grad()
def prefill_seconds(run: Run, vlm, reducer: Reducer | None, samples, reps: int = 3) -> float:
    """Median over `reps` of the summed batch-1 prefill wall time of `samples` (`run.timer`: CUDA synchronised)."""
    inputs = [dict(b) for s in samples for b in run.batches([s], vlm)]

    def prefill() -> None:
        for x in inputs:
            with reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id):
                vlm.model(**x)

    return run.timer.median(prefill, repeats=reps, warmup=0)


@target("atp-table6", paper="atp", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def table6(run: Run) -> dict[str, Path]:
    """KV-cache memory, measured prefill latency ratio and Eq. 15-16 FLOPs."""
    require(run, [MAIN, MAIN_88])
    fams, n0, nl, s = families(run), run.n_visual, run.n_layers, run.scale
    vlm = run.vlm
    dims = F.DecoderDims.from_config(decoder_of(vlm.model).config)
    samples = eval_samples(run)
    lat_samples = samples[:: max(1, len(samples) // 48)][:48]
    n_text = statistics.mean(int((dict(vlm.build_inputs([x]))["input_ids"] != vlm.image_token_id).sum())
                             for x in lat_samples)
    upper = evaluate(run, None)
    K = pruning_layer(nl)
    fastv = run.reducer("fastv", Budget.count(fastv_keep_for_average(144 / PAPER_VISUAL * n0, n0, K, nl)), K=K)
    setups = [("Upper bound", None, vlm, run.run_key, 576, upper), ("FastV", fastv, vlm, run.run_key, 144, None)]
    for cfg, budget in ((MAIN, 144), (MAIN_88, 88)):
        t = trained(run, cfg)
        setups.append(("ATP-LLaVA", t.reducer, t.vlm, t.run_key, budget, t.evaluate(run)))
    device = "CPU" if run.device.type == "cpu" else "CUDA"
    base_t = dense_flops = None
    rows = []
    for name, red, v, key, budget, res in setups:
        res = res or evaluate(run, red, vlm=v, run_key=key)
        flops = []
        for sched in (r["visual_tokens"] for r in res.records):  # Eq. 15-16 per instance, from its schedule
            layers = [l for l in range(1, nl) if sched[l] != sched[l - 1]]
            out = F.atp_flops(n0, layers, [sched[l] for l in layers], dims, n_text=int(round(n_text)))
            flops.append(out["total"])
            dense_flops = out["dense"]
        secs = prefill_seconds(run, v, red, lat_samples)
        base_t = base_t or secs
        tok = res.visual_tokens
        pa = R.TABLE6.get((name, budget))
        pd = R.TABLE6_DELTA.get((name, budget), (None, None, None))
        rows.append({
            "method": name, "paper tokens": budget, f"avg tokens ({s})": round(tok, 2),
            f"KV MB ({s}, fp16)": round(F.kv_cache_mb(tok, dims), 4),
            "KV reduction %": round(100 * (1 - tok / n0), 1),
            f"{device} prefill s (batch 1)": round(secs, 3), "latency reduction %": round(100 * (1 - secs / base_t), 1),
            f"Eq.15-16 GFLOPs ({s})": round(statistics.mean(flops) / 1e9, 4),
            "FLOPs reduction %": round(100 * (1 - statistics.mean(flops) / dense_flops), 1),
            "mean score": score_row(name, res, upper, n0, fams, s)["mean"],
            "paper storage MB": pa[1] if pa else None, "paper CUDA ms": pa[2] if pa else None,
            "paper FLOPs T": pa[3] if pa else None, "paper storage Δ %": pd[0], "paper CUDA Δ %": pd[1],
            "paper FLOPs Δ %": pd[2],
        })
    return run.write_table("table6", rows, title=f"{_scale_note(run)} Table 6 (latency: {run.timer.label}, "
                           f"{len(lat_samples)} prompts, batch 1, prefill only); paper: {R.TABLE6_SOURCE}",
                           provenance=run.provenance({"n_text": n_text, "latency_prompts": len(lat_samples),
                                                      "timer": run.timer.label}))


# ------------------------------------------------------------------------------------------- figures
FIG2_LAYERS = (2, 4, 8, 16, 24)  # paper layers (of 32), mapped
FIG2_RATIOS = (0.25, 0.5, 0.75, 0.9)  # fraction pruned
FIG2_FAMILIES = {"fine-grained (count)": "count", "coarse-grained (scene)": "scene"}
FIG2_N = 60


@target("atp-fig2", paper="atp", kind="figure", checkpoint=BASE_CHECKPOINT,
        why_not="its fine- vs coarse-grained split is ToyWorld's count vs scene families")
def fig2(run: Run) -> dict[str, Path]:
    """Accuracy when pruning (FastV-style, training-free) at one layer and ratio, fine vs coarse."""
    nl = run.n_layers
    layers = sorted({max(1, map_layer(l, nl)) for l in FIG2_LAYERS})
    fig, axes = new_figure(1, 2, width=8.0, height=3.2)
    records = []
    for ax, (label, fam) in zip(axes, FIG2_FAMILIES.items()):
        samples = run.samples([fam], n=FIG2_N)
        base = family_scores(evaluate(run, None, samples=samples), [fam])[fam]
        for l in layers:
            accs = []
            for r in FIG2_RATIOS:
                res = evaluate(run, run.reducer("fastv", Budget.pruned(r), K=l), samples=samples)
                accs.append(family_scores(res, [fam])[fam])
                records.append({"family": fam, "layer": l, "ratio": r, "acc": accs[-1], "unpruned": base})
            ax.plot([100 * r for r in FIG2_RATIOS], accs, marker="o", label=f"layer {l}")
        ax.axhline(base, color="gray", ls="--", lw=1, label="unpruned")
        ax.set_title(label)
        ax.set_xlabel("visual tokens pruned (%)")
        ax.set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7)
    return run.save_figure("fig2", fig, provenance=run.provenance({"layers": layers, "ratios": FIG2_RATIOS,
                                                                   "records": records, "n": FIG2_N}))


def decisions_of(run: Run, t: Trained, samples) -> tuple[list, list[str]]:
    """Per prefill batch, the modules' `Decision`s (on the CPU), and the family of every sample in order."""
    out, fam_of = [], []
    with torch.no_grad():
        for chunk, inputs in zip((samples[i:i + run.cfg.batch_size] for i in range(0, len(samples), run.cfg.batch_size)),
                                 run.batches(samples, t.vlm)):
            with reduce_tokens(t.vlm.model, t.reducer, image_token_id=t.vlm.image_token_id) as st:
                t.vlm.model(**inputs)
            out.append([st.info[l].to("cpu") for l in t.reducer.layers])
            fam_of += [s.family for s in chunk]
    return out, fam_of


def _mask_image(d_list, b: int, grid: int) -> np.ndarray:
    """[n_modules, grid, grid] codes: 0 pruned, 1 kept by SP only, 2 by RP only, 3 by both."""
    return np.stack([(d.keep_s[b].numpy().astype(int) + 2 * d.keep_r[b].numpy().astype(int)).reshape(grid, grid)
                     for d in d_list])


FIG4_COLORS = {1: (0.0, 0.45, 0.7, 0.55), 2: (0.9, 0.6, 0.0, 0.55), 3: (0.0, 0.6, 0.5, 0.55)}
FIG4_FAMILIES = ("count", "scene", "gqa", "textvqa")


@target("atp-fig4", paper="atp", kind="figure", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def fig4(run: Run, n_examples: int = 4) -> dict[str, Path]:
    """Per-instance keep masks of ATP-144 after each module; colour = the criterion that kept a token (blue:
    spatial, orange: redundancy, green: both); dark = pruned."""
    require(run, [MAIN])
    t = trained(run, MAIN)
    grid = t.reducer.atp.config.grid
    samples = [s for s in eval_samples(run) if run.scale != "toy" or s.family in FIG4_FAMILIES][::7][:n_examples]
    nm = len(t.reducer.layers)
    fig, axes = new_figure(len(samples), nm, width=2.0 * nm + 0.5, height=2.1 * len(samples), squeeze=False)
    for i, s in enumerate(samples):
        (ds,), _ = decisions_of(run, t, [s])
        codes = _mask_image(ds, 0, grid)
        img = np.asarray(s.images[0].convert("RGB"))
        h, w = img.shape[:2]
        for j, d in enumerate(ds):
            ax = axes[i][j]
            veil = np.zeros((grid, grid, 4))
            veil[codes[j] == 0] = (0.05, 0.05, 0.05, 0.75)
            for c, rgba in FIG4_COLORS.items():
                veil[codes[j] == c] = rgba
            ax.imshow(img, extent=(0, w, h, 0))
            ax.imshow(veil, extent=(0, w, h, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"layer {d.layer}: {int(d.keep[0].sum())} kept\nθr={float(d.theta_r[0]):.2f} "
                         f"θs={float(d.theta_s[0]):.3f}", fontsize=7)
        axes[i][0].set_ylabel(s.question[:28], fontsize=6)
    return run.save_figure("fig4", fig, provenance=run.provenance({"run": MAIN.name(run.scale),
                                                                   "samples": [s.id for s in samples]}))


@target("atp-ratios", paper="atp", kind="figure", scales=SCALES, checkpoint=BASE_CHECKPOINT, why_not=WHY_NOT)
def fig_ratios(run: Run) -> dict[str, Path]:
    """Learned per-layer kept ratios and thresholds across test instances, per family."""
    require(run, [MAIN])
    t = trained(run, MAIN)
    history, fam_of = decisions_of(run, t, eval_samples(run))
    layers = t.reducer.layers
    n0 = t.reducer.atp.config.n_visual
    kept = {l: torch.cat([p[k].keep.sum(-1).float() for p in history]) / n0 for k, l in enumerate(layers)}
    thr = {l: torch.cat([p[k].theta_r for p in history]) for k, l in enumerate(layers)}
    ths = {l: torch.cat([p[k].theta_s for p in history]) for k, l in enumerate(layers)}
    fig, axes = new_figure(1, 3, width=10.0, height=3.2)
    fams = list(scored(families(run)))
    for k, l in enumerate(layers):
        for fi, f in enumerate(fams):
            vals = [float(x) for x, ff in zip(kept[l], fam_of) if ff == f]
            xs = k + (fi - len(fams) / 2) * 0.12 + np.zeros(len(vals))
            axes[0].scatter(xs, vals, s=6, alpha=0.6, label=f if k == 0 else None)
    axes[0].set_xticks(range(len(layers)), [f"module @ layer {l}" for l in layers], fontsize=7)
    axes[0].set_ylabel("kept fraction of visual tokens")
    axes[0].legend(fontsize=6, markerscale=2)
    for ax, th, name in ((axes[1], thr, "θ_r"), (axes[2], ths, "θ_s")):
        ax.violinplot([th[l].numpy() for l in layers], showmeans=True)
        ax.set_xticks(range(1, len(layers) + 1), [str(l) for l in layers])
        ax.set_xlabel("module layer")
        ax.set_title(f"{name} across instances")
    stats = {str(l): {"kept_mean": float(kept[l].mean()), "kept_std": float(kept[l].std()),
                      "theta_r_std": float(thr[l].std()), "theta_s_std": float(ths[l].std()),
                      "kept_by_family": {f: float(np.mean([float(x) for x, ff in zip(kept[l], fam_of) if ff == f]))
                                         for f in fams}} for l in layers}
    return run.save_figure("ratios", fig, provenance=run.provenance({"run": MAIN.name(run.scale), "stats": stats}))
