"""ATP-LLaVA's tables and figures at toy scale (`make atp-table1` ... `make atp-fig4`, `make atp-ratios`).

Model: the toy LLaVA (`checkpoints/toy-llava`, 144 visual tokens on a 12 x 12 grid) with ATP modules trained
by `papers.atp.train` (checkpoints/atp-toy-*; a missing one is trained first). Data: ToyWorld test split,
families gqa, pope, textvqa, count (fine-grained), scene (coarse-grained), mc, `N_PER_FAMILY` each. The
paper's benchmarks (LLaVA-1.5-7B on GQA, MMB, MME, POPE, SEED, SQA-I, VQAv2) cannot be run here; tables put
the paper's numbers beside ours, matched by budget (paper tokens of 576 <-> the same fraction of 144).
Token counts are averages over decoder layers (`common.flops.average_visual_tokens`), as in the paper.
"""
from __future__ import annotations

import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import flops as F
from common.artifacts import file_sha256, provenance, save_figure, write_table
from common.attention import decoder_of
from common.evaluation import EvalResult, evaluate
from common.experiment import FIGURES, artifact, load_vlm
from common.models.checkpoint import CARD, data_version
from common.registry import build_reducer
from common.schedule import map_layer
from papers.atp import reported as R
from papers.atp.method import ATPReducer
from papers.atp.train import BASE_CHECKPOINT, CHECKPOINTS, TrainConfig, load_run, run as train_run

OUT = FIGURES / "atp"
FAMILIES = ("gqa", "pope", "textvqa", "count", "scene", "mc")
N_PER_FAMILY = 40
MAX_NEW_TOKENS = 8
PAPER_VISUAL = 576
SCALE_NOTE = "toy scale: toy LLaVA (checkpoints/toy-llava), ToyWorld test split"

# The training runs every table needs (paper budget, decoder regime, ablation flags); see papers/atp/train.py.
MAIN = TrainConfig(budget=144, decoder="finetune")
MAIN_88 = TrainConfig(budget=88, decoder="finetune")
# a frozen decoder cannot adapt to pruning at layer 1, so its budget weight grows while over budget (TrainConfig)
FROZEN = TrainConfig(budget=144, decoder="frozen", lambda_growth=0.05)
FIXED = {  # Table 2 rows: ratio label -> run
    "3/4": TrainConfig(budget=144, fixed_keep=(130,), paper_layers=(1,)),
    "2/3": TrainConfig(budget=144, fixed_keep=(162, 54, 18)),
    "1/2": TrainConfig(budget=144, fixed_keep=(136, 68, 34)),
}
ABLATIONS_T4 = {  # explicit flags instead of the lost check marks (A16)
    "full (RP+SP+PP)": MAIN,
    "w/o RP": TrainConfig(budget=144, decoder="finetune", atp={"use_rp": False}),
    "w/o SP": TrainConfig(budget=144, decoder="finetune", atp={"use_sp": False}),
    "w/o PP": TrainConfig(budget=144, decoder="finetune", atp={"positions": "renumber"}),
    "RP only (w/o SP, w/o PP)": TrainConfig(budget=144, decoder="finetune", atp={"use_sp": False, "positions": "renumber"}),
}
ABLATIONS_T5 = {
    "both": MAIN,
    "self only": TrainConfig(budget=144, decoder="finetune", atp={"scores": "self"}),
    "cross only": TrainConfig(budget=144, decoder="finetune", atp={"scores": "cross"}),
}


def all_runs() -> list[TrainConfig]:
    """Every training run the targets use, main runs first (`python -m papers.atp.train --all`)."""
    runs = [MAIN, FROZEN, MAIN_88, *FIXED.values(), *ABLATIONS_T4.values(), *ABLATIONS_T5.values()]
    return list({c.name(): c for c in runs}.values())


# ------------------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=1)
def test_samples(n_per_family: int = N_PER_FAMILY):
    from common.data.toyworld import toyworld_split

    return toyworld_split("test", n_per_family * len(FAMILIES), seed=0, families=FAMILIES,
                          version=data_version(BASE_CHECKPOINT))


def ensure_run(cfg: TrainConfig) -> Path:
    """The checkpoint folder of a training run, trained now if missing."""
    folder = CHECKPOINTS / cfg.name()
    if not (folder / CARD).exists():
        print(f"training missing checkpoint {folder.name} ...", flush=True)
        train_run(cfg)
    return folder


def base_vlm():
    return load_vlm("toy", BASE_CHECKPOINT)


def base_key() -> dict:
    return {"checkpoint": _hash_folder(BASE_CHECKPOINT)}


def _hash_folder(folder: Path) -> str:
    files = sorted(Path(folder).glob("*.safetensors"))
    return ",".join(file_sha256(f)[:16] for f in files)


def atp_setup(cfg: TrainConfig):
    """(vlm with the run's decoder, ATP reducer, run key) for a trained run."""
    folder = ensure_run(cfg)
    vlm = base_vlm()
    atp, card = load_run(folder, vlm)
    key = {**base_key(), "atp": _hash_folder(folder)}
    return vlm, ATPReducer(modules=atp, record=True), key, card


def run_eval(vlm, reducer, key: dict, samples=None, positions: str = "original") -> EvalResult:
    samples = samples if samples is not None else test_samples()
    if positions == "original":
        return evaluate(vlm, samples, reducer=reducer, batch_size=16, max_new_tokens=MAX_NEW_TOKENS, run_key=key,
                        progress=False)
    # "w/o PP": the hook renumbers survivors; evaluate() has no positions option, so swap the context
    import common.evaluation as E
    from common.reduction import reduce_tokens

    saved = E._reduction_context
    E._reduction_context = lambda v, r: reduce_tokens(v.model, r, image_token_id=v.image_token_id,
                                                      positions=positions)
    try:
        return evaluate(vlm, samples, reducer=reducer, batch_size=16, max_new_tokens=MAX_NEW_TOKENS,
                        run_key={**key, "positions": positions}, progress=False)
    finally:
        E._reduction_context = saved


def family_scores(res: EvalResult) -> dict[str, float]:
    return {f: float(res.metrics[f]["score"]) for f in FAMILIES if f in res.metrics}


def score_row(name: str, res: EvalResult, upper: EvalResult | None, n_visual: int) -> dict[str, Any]:
    """One table row: per-family scores, their mean, retention vs the unpruned model, average tokens."""
    sc = family_scores(res)
    row: dict[str, Any] = {"method": name, "avg tokens (toy)": round(res.visual_tokens, 2),
                           "paper-equiv. tokens": round(res.visual_tokens * PAPER_VISUAL / n_visual, 1)}
    row.update({f: round(v, 1) for f, v in sc.items()})
    row["mean"] = round(statistics.mean(sc.values()), 2)
    if upper is not None:
        up = family_scores(upper)
        ret = [sc[f] / up[f] * 100 for f in sc if up.get(f)]
        row["retention %"] = round(statistics.mean(ret), 1) if ret else None
    return row


def fastv_keep_for_average(avg: float, n_visual: int, K: int, n_layers: int) -> int:
    """FastV's kept count c whose all-layer average equals `avg`: (n_layers avg - n_visual K) / (n_layers - K)
    (atp.md §9), rounded to the nearest token."""
    c = (n_layers * avg - n_visual * K) / (n_layers - K)
    if not 0 <= c <= n_visual:
        raise ValueError(f"avg: {avg} tokens on average cannot be reached by pruning at layer {K}")
    return int(round(c))


def _prov(target: str, config: dict, started: float, inputs: dict | None = None) -> dict:
    return provenance(command=f"make {target}", config={"scale": "toy", **config}, seeds={"data": 0},
                      inputs=inputs or base_key(), started=started)


def _n_layers(vlm) -> int:
    return len(decoder_of(vlm.model).layers)


# ------------------------------------------------------------------------------------------- Table 1
@artifact("atp-table1")
def table1(scale: str = "toy") -> None:
    """make atp-table1: ATP-LLaVA vs FastV, SparseVLM, random and fixed-ratio pruning at matched averages."""
    t0 = time.time()
    vlm = base_vlm()
    n0, nl = int(vlm.num_visual_tokens), _n_layers(vlm)
    key = base_key()
    upper = run_eval(vlm, None, key)
    rows = [score_row("LLaVA (toy, unpruned)", upper, upper, n0) | {"paper tokens": 576, "paper avg retention %":
                                                                       R.TABLE1_AVG_RETENTION[("LLaVA-1.5", 576)]}]
    K = max(1, map_layer(2, nl))  # FastV's K=2 of 32; >= 1 (it needs layer K-1)
    for budget in (192, 128):
        avg = budget / PAPER_VISUAL * n0
        fv = build_reducer("fastv", K=K, keep=fastv_keep_for_average(avg, n0, K, nl))
        rows.append(score_row(f"FastV (K={K})", run_eval(vlm, fv, key), upper, n0)
                    | {"paper tokens": budget, "paper avg retention %": R.TABLE1_AVG_RETENTION[("FastV", budget)]})
    try:
        from papers.sparsevlm.method import calibrate

        val = _val_batches(vlm)
        for budget in (192, 128):
            cal = calibrate(vlm.model, val, budget / PAPER_VISUAL * n0, image_token_id=vlm.image_token_id,
                            verbose=False)
            rows.append(score_row("SparseVLM (calibrated)", run_eval(vlm, cal.reducer, key), upper, n0)
                        | {"paper tokens": budget,
                           "paper avg retention %": R.TABLE1_AVG_RETENTION[("SparseVLM", budget)]})
    except ImportError as err:  # papers.sparsevlm is a sibling package; say so instead of failing
        print(f"SparseVLM rows skipped: {err}")
    rnd = build_reducer("random", layer=0, keep=int(round(144 / PAPER_VISUAL * n0)), seed=0)
    rows.append(score_row("random (pre-LLM)", run_eval(vlm, rnd, key), upper, n0) | {"paper tokens": 144})
    fvlm, fred, fkey, _ = atp_setup(FIXED["2/3"])
    rows.append(score_row("fixed ratio 2/3 (trained)", run_eval(fvlm, fred, fkey), upper, n0) | {"paper tokens": 144})
    for cfg, budget in ((MAIN, 144), (MAIN_88, 88)):
        avlm, ared, akey, _ = atp_setup(cfg)
        rows.append(score_row("ATP-LLaVA (ours, adaptive)", run_eval(avlm, ared, akey), upper, n0)
                    | {"paper tokens": budget, "paper avg retention %": R.TABLE1_AVG_RETENTION[("ATP-LLaVA", budget)]})
    cols = ["method", "paper tokens", "avg tokens (toy)", "paper-equiv. tokens", *FAMILIES, "mean", "retention %",
            "paper avg retention %"]
    write_table(rows, OUT / "table1", columns=cols,
                title=f"ATP-LLaVA Table 1 at {SCALE_NOTE}, {N_PER_FAMILY}/family; paper: {R.TABLE1_SOURCE}",
                provenance=_prov("atp-table1", {"n_per_family": N_PER_FAMILY, "fastv_K": K}, t0))


def _val_batches(vlm, n: int = 48) -> list[dict]:
    from common.data.toyworld import toyworld_split

    val = toyworld_split("val", n, seed=0, families=FAMILIES, version=data_version(BASE_CHECKPOINT))
    return [dict(vlm.build_inputs(val[i:i + 16])) for i in range(0, n, 16)]


# ------------------------------------------------------------------------------------------- Table 2
@artifact("atp-table2")
def table2(scale: str = "toy") -> None:
    """make atp-table2: pre-defined (fixed-ratio, trained) pruning schedules vs adaptive ATP at ~144 tokens."""
    t0 = time.time()
    vlm = base_vlm()
    n0 = int(vlm.num_visual_tokens)
    upper = run_eval(vlm, None, base_key())
    paper = dict(zip(("upper", "3/4", "2/3", "1/2", "ATP-144", "ATP-88"), R.TABLE2))
    rows = [score_row("Upper bound (unpruned)", upper, upper, n0) | _t2_paper(paper["upper"])]
    runs = [(f"Pre-defined ratio {lab}", cfg, paper[lab]) for lab, cfg in FIXED.items()]
    runs += [("ATP-LLaVA 144", MAIN, paper["ATP-144"]), ("ATP-LLaVA 88", MAIN_88, paper["ATP-88"])]
    for name, cfg, prow in runs:
        v, red, key, card = atp_setup(cfg)
        res = run_eval(v, red, key)
        kept = [round(c, 1) for c in card["mean_kept"]]
        rows.append(score_row(name, res, upper, n0) | _t2_paper(prow)
                    | {"layers (toy)": str(list(red.atp.config.layers)), "retained (toy, val)": str(kept)})
    cols = ["method", "layers (toy)", "retained (toy, val)", "avg tokens (toy)", "paper-equiv. tokens", *FAMILIES,
            "mean", "retention %", "paper layers", "paper retained", "paper avg tokens", "paper 4-bench mean"]
    write_table(rows, OUT / "table2", columns=cols,
                title=f"ATP-LLaVA Table 2 at {SCALE_NOTE}; paper: {R.TABLE2_SOURCE}",
                provenance=_prov("atp-table2", {"runs": [c.name() for _, c, _ in runs]}, t0))


def _t2_paper(prow) -> dict:
    strategy, tokens, ratio, layers, kept, scores = prow
    exact = R.TABLE2_EXACT_AVG[tuple(kept)] if kept else 576
    return {"paper layers": str(list(layers)), "paper retained": str(list(kept)), "paper avg tokens": exact,
            "paper 4-bench mean": round(R.mean(scores), 3)}


# --------------------------------------------------------------------------------------- Tables 3-5
def _ablation_table(target: str, runs: dict[str, TrainConfig], paper: dict[str, tuple], source: str,
                    number: int) -> None:
    t0 = time.time()
    vlm = base_vlm()
    n0 = int(vlm.num_visual_tokens)
    upper = run_eval(vlm, None, base_key())
    rows = []
    for name, cfg in runs.items():
        v, red, key, card = atp_setup(cfg)
        res = run_eval(v, red, key, positions=red.atp.config.positions)
        row = score_row(name, res, upper, n0) | {"run": cfg.name()}
        p = paper.get(name)
        row["paper 4-bench mean"] = round(R.mean(p), 3) if p else None
        rows.append(row)
    cols = ["method", "run", "avg tokens (toy)", "paper-equiv. tokens", *FAMILIES, "mean", "retention %",
            "paper 4-bench mean"]
    write_table(rows, OUT / f"table{number}", columns=cols, title=f"ATP-LLaVA Table {number} at {SCALE_NOTE}; "
                f"paper: {source}", provenance=_prov(target, {"runs": {k: c.name() for k, c in runs.items()}}, t0))


@artifact("atp-table3")
def table3(scale: str = "toy") -> None:
    """make atp-table3: frozen vs fine-tuned decoder (PP kept in both: our PP is 1-D original positions)."""
    _ablation_table("atp-table3", {"Frozen": FROZEN, "Trainable": MAIN}, R.TABLE3, R.TABLE3_SOURCE, 3)


@artifact("atp-table4")
def table4(scale: str = "toy") -> None:
    """make atp-table4: Spatial Augmented Pruning ablation, all five flag combinations (A16)."""
    paper = {"full (RP+SP+PP)": R.TABLE4["full (RP+SP+PP)"], "w/o RP": R.TABLE4["w/o RP"]}
    _ablation_table("atp-table4", ABLATIONS_T4, paper, R.TABLE4_SOURCE, 4)


@artifact("atp-table5")
def table5(scale: str = "toy") -> None:
    """make atp-table5: redundant-score ablation (self-modality only / cross-modality only)."""
    _ablation_table("atp-table5", ABLATIONS_T5, R.TABLE5, R.TABLE5_SOURCE, 5)


# ------------------------------------------------------------------------------------------- Table 6
@torch.no_grad()
def prefill_seconds(vlm, reducer, samples, reps: int = 3) -> float:
    """Median over `reps` of the summed batch-1 prefill wall time of `samples` (CPU)."""
    from common.reduction import reduce_tokens

    inputs = [dict(vlm.build_inputs([s])) for s in samples]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for x in inputs:
            if reducer is None:
                vlm.model(**x)
            else:
                with reduce_tokens(vlm.model, reducer, image_token_id=vlm.image_token_id):
                    vlm.model(**x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@artifact("atp-table6")
def table6(scale: str = "toy") -> None:
    """make atp-table6: KV-cache memory, measured CPU prefill latency ratio and Eq. 15-16 FLOPs."""
    t0 = time.time()
    vlm = base_vlm()
    n0, nl = int(vlm.num_visual_tokens), _n_layers(vlm)
    dims = F.DecoderDims.from_config(decoder_of(vlm.model).config)
    samples = test_samples()
    lat_samples = samples[:: max(1, len(samples) // 48)][:48]
    n_text = statistics.mean(int((dict(vlm.build_inputs([s]))["input_ids"] != vlm.image_token_id).sum())
                             for s in lat_samples)
    upper = run_eval(vlm, None, base_key())
    K = max(1, map_layer(2, nl))  # FastV's K=2 of 32; >= 1 (it needs layer K-1)
    setups = [("Upper bound", None, vlm, base_key(), 576),
              ("FastV", build_reducer("fastv", K=K, keep=fastv_keep_for_average(144 / 576 * n0, n0, K, nl)), vlm,
               base_key(), 144)]
    for cfg, budget in ((MAIN, 144), (MAIN_88, 88)):
        v, red, key, _ = atp_setup(cfg)
        setups.append(("ATP-LLaVA", red, v, key, budget))
    base_t = None
    dense_flops = None
    rows = []
    for name, red, v, key, budget in setups:
        res = upper if red is None else run_eval(v, red, key)
        per_inst = [r["visual_tokens"] for r in res.records]
        flops = []
        for sched in per_inst:  # Eq. 15-16 per instance, from its per-layer visual-token schedule
            layers = [l for l in range(1, nl) if sched[l] != sched[l - 1]]
            out = F.atp_flops(n0, layers, [sched[l] for l in layers], dims, n_text=int(round(n_text)))
            flops.append(out["total"])
            dense_flops = out["dense"]
        secs = prefill_seconds(v, red, lat_samples)
        base_t = base_t or secs
        tok = res.visual_tokens
        pa = R.TABLE6.get((name, budget))
        pd = R.TABLE6_DELTA.get((name, budget), (None, None, None))
        rows.append({
            "method": name, "paper tokens": budget, "avg tokens (toy)": round(tok, 2),
            "KV MB (toy, fp16)": round(F.kv_cache_mb(tok, dims), 4),
            "KV reduction %": round(100 * (1 - tok / n0), 1),
            "CPU prefill s (batch 1)": round(secs, 3), "latency reduction %": round(100 * (1 - secs / base_t), 1),
            "Eq.15-16 GFLOPs (toy)": round(statistics.mean(flops) / 1e9, 4),
            "FLOPs reduction %": round(100 * (1 - statistics.mean(flops) / dense_flops), 1),
            "mean score": score_row(name, res, upper, n0)["mean"],
            "paper storage MB": pa[1] if pa else None, "paper CUDA ms": pa[2] if pa else None,
            "paper FLOPs T": pa[3] if pa else None, "paper storage Δ %": pd[0], "paper CUDA Δ %": pd[1],
            "paper FLOPs Δ %": pd[2],
        })
    write_table(rows, OUT / "table6", title=f"ATP-LLaVA Table 6 at {SCALE_NOTE} (latency: this machine's CPU, "
                f"{len(lat_samples)} prompts, batch 1, prefill only); paper: {R.TABLE6_SOURCE}",
                provenance=_prov("atp-table6", {"n_text": n_text, "latency_prompts": len(lat_samples)}, t0))


# ------------------------------------------------------------------------------------------- figures
FIG2_LAYERS = (2, 4, 8, 16, 24)  # paper layers (of 32), mapped
FIG2_RATIOS = (0.25, 0.5, 0.75, 0.9)  # fraction pruned
FIG2_FAMILIES = {"fine-grained (count)": "count", "coarse-grained (scene)": "scene"}
FIG2_N = 60


@artifact("atp-fig2", kind="figure")
def fig2(scale: str = "toy") -> None:
    """make atp-fig2: accuracy when pruning (FastV-style, training-free) at one layer and ratio, fine vs coarse."""
    from common.data.toyworld import toyworld_split
    from common.plots import new_figure

    t0 = time.time()
    vlm = base_vlm()
    nl = _n_layers(vlm)
    key = base_key()
    layers = sorted({max(1, map_layer(l, nl)) for l in FIG2_LAYERS})
    fig, axes = new_figure(1, 2, width=8.0, height=3.2)
    records = []
    for ax, (label, fam) in zip(axes, FIG2_FAMILIES.items()):
        samples = toyworld_split("test", FIG2_N, seed=0, families=(fam,), version=data_version(BASE_CHECKPOINT))
        base = family_scores(run_eval(vlm, None, key, samples))[fam]
        for l in layers:
            accs = []
            for r in FIG2_RATIOS:
                res = run_eval(vlm, build_reducer("fastv", K=l, ratio=r), key, samples)
                accs.append(family_scores(res)[fam])
                records.append({"family": fam, "layer": l, "ratio": r, "acc": accs[-1], "unpruned": base})
            ax.plot([100 * r for r in FIG2_RATIOS], accs, marker="o", label=f"layer {l}")
        ax.axhline(base, color="gray", ls="--", lw=1, label="unpruned")
        ax.set_title(label)
        ax.set_xlabel("visual tokens pruned (%)")
        ax.set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7)
    save_figure(fig, OUT / "fig2", provenance=_prov("atp-fig2", {"layers": layers, "ratios": FIG2_RATIOS,
                                                                  "records": records, "n": FIG2_N}, t0))


def _mask_image(d_list, b: int, grid: int) -> np.ndarray:
    """[n_modules, grid, grid] codes: 0 pruned, 1 kept by SP only, 2 by RP only, 3 by both."""
    return np.stack([(d.keep_s[b].numpy().astype(int) + 2 * d.keep_r[b].numpy().astype(int)).reshape(grid, grid)
                     for d in d_list])


FIG4_COLORS = {1: (0.0, 0.45, 0.7, 0.55), 2: (0.9, 0.6, 0.0, 0.55), 3: (0.0, 0.6, 0.5, 0.55)}


@artifact("atp-fig4", kind="figure")
def fig4(scale: str = "toy", n_examples: int = 4) -> None:
    """make atp-fig4: per-instance keep masks of ATP-144 after each module; colour = the criterion that kept a
    token (blue: spatial, orange: redundancy, green: both); dark = pruned."""
    from common.plots import new_figure

    t0 = time.time()
    v, red, key, _ = atp_setup(MAIN)
    grid = red.atp.config.grid
    samples = [s for s in test_samples() if s.family in ("count", "scene", "gqa", "textvqa")][::7][:n_examples]
    nm = len(red.atp.config.layers)
    fig, axes = new_figure(n_examples, nm, width=2.0 * nm + 0.5, height=2.1 * n_examples, squeeze=False)
    from common.reduction import reduce_tokens

    for i, s in enumerate(samples):
        with torch.no_grad(), reduce_tokens(v.model, red, image_token_id=v.image_token_id):
            v.model(**dict(v.build_inputs([s])))
        codes = _mask_image(red.last, 0, grid)
        img = np.asarray(s.images[0].convert("RGB"))
        h, w = img.shape[:2]
        for j, d in enumerate(red.last):
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
    save_figure(fig, OUT / "fig4", provenance=_prov("atp-fig4", {"run": MAIN.name(),
                                                                  "samples": [s.id for s in samples]}, t0))


@artifact("atp-ratios", kind="figure")
def fig_ratios(scale: str = "toy") -> None:
    """make atp-ratios: learned per-layer kept ratios and thresholds across test instances, per family."""
    from common.plots import new_figure

    t0 = time.time()
    v, red, key, _ = atp_setup(MAIN)
    samples = test_samples()
    red.history.clear()
    from common.reduction import reduce_tokens

    fam_of = []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            with reduce_tokens(v.model, red, image_token_id=v.image_token_id):
                v.model(**dict(v.build_inputs(chunk)))
            fam_of += [s.family for s in chunk]
    layers = red.atp.config.layers
    n0 = red.atp.config.n_visual
    kept = {l: torch.cat([p[k].keep.sum(-1).float() for p in red.history]) / n0 for k, l in enumerate(layers)}
    thr = {l: torch.cat([p[k].theta_r for p in red.history]) for k, l in enumerate(layers)}
    ths = {l: torch.cat([p[k].theta_s for p in red.history]) for k, l in enumerate(layers)}
    fig, axes = new_figure(1, 3, width=10.0, height=3.2)
    fams = list(FAMILIES)
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
    save_figure(fig, OUT / "ratios", provenance=_prov("atp-ratios", {"run": MAIN.name(), "stats": stats}, t0))
