"""SparseVLM's tables and figures, one function per artifact (Make targets `sparsevlm-table1` ... `-table4`,
`sparsevlm-fig3` ... `-fig8`; `python -m common.experiment <target>`).

Scales (DESIGN.md §2), one code path:
- toy (default): the trained toy LLaVA (checkpoints/toy-llava) on ToyWorld's test split (calibration on its
  val split); artifacts in figures/sparsevlm/.
- paper: `SCALE=paper MODEL_PATH=<llava-hf folder> DATA_ROOT=<LLaVA playground/data/eval>`: LLaVA-1.5 through
  `common.models.llava_hf` and the real benchmarks through `common.data.benchmarks`; artifacts in
  figures/sparsevlm/paper/. Budget calibration uses the first samples of the benchmarks (token counts
  only, never answers).

Knobs (environment; defaults in `Settings`): SPARSEVLM_N samples per family (toy 60; paper: all),
SPARSEVLM_N_CONB, SPARSEVLM_N_CALIB, SPARSEVLM_BATCH, SPARSEVLM_CALIB_ITERS, SPARSEVLM_CACHE (prediction
cache), SPARSEVLM_OUT (output folder). Predictions are cached in .cache/eval (`common.evaluation`),
calibrations in .cache/sparsevlm, so targets share work and re-runs are cheap.

Settings common to every table (sparsevlm.md §8, §10 #19): FastV prunes at K = layer 2 of 32 mapped to the
model's depth (at least 1) and keeps the NOMINAL budget from there (Table 4 treats FastV "192" as 192
tokens); ToMe merges the projected visual tokens before the LLM (layer 0; spec §8's alternative to merging
inside CLIP), so its nominal count is also its layer average; SparseVLM (official mode) is calibrated so its
visual tokens AVERAGED OVER LAYERS (merged tokens included, counted at each layer's input) match the budget
(sparsevlm.md §3.8). Every table prints the achieved layer-averaged count of every method.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from common.artifacts import atomic_write_text, provenance, save_figure, write_table
from common.baselines.fastv import FastV
from common.baselines.tome import ToMe
from common.data.sample import Sample
from common.data.toyworld_render import Scene
from common.evaluation import EvalResult, evaluate, hash_samples
from common.experiment import FIGURES, REPO_ROOT, TOY_CHECKPOINT, artifact, load_vlm
from common.flops import DecoderDims, kv_cache_bytes_per_token, schedule_flops
from common.metrics import consistency
from common.reduction import reduce_tokens
from common.schedule import PAPER_VISUAL, map_layer
from papers.sparsevlm import reported as R
from papers.sparsevlm.method import Calibration, SparseVLM, calibrate, resolve_score_layers

SCALES = ("toy", "paper")
MAX_NEW_TOKENS = {"caption": 48, "default": 8}
PAPER_BUDGETS = (192, 128, 64)
CALIB_DIR = Path(os.environ.get("SPARSEVLM_CALIB_DIR") or REPO_ROOT / ".cache" / "sparsevlm")
TOY_IMAGE_FAMILIES = ("gqa", "pope", "textvqa", "count", "scene", "mc")


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Sizes of one run. `n`: samples per family (None: all); `n_conb`: rephrase groups per family for the
    consistency column (3 phrasings each); `n_calib`: calibration samples."""

    scale: str
    n: int | None = 60
    n_conb: int = 10
    n_calib: int = 16
    batch_size: int = 16
    seed: int = 0
    cache_dir: str = str(REPO_ROOT / ".cache" / "eval")
    calib_iters: int = 10

    @classmethod
    def for_scale(cls, scale: str) -> "Settings":
        if scale not in SCALES:
            raise ValueError(f"scale: SparseVLM's experiments support {SCALES}, got {scale!r}")
        env = os.environ
        n_env = env.get("SPARSEVLM_N")
        n = int(n_env) if n_env else (60 if scale == "toy" else None)
        return cls(scale=scale, n=n, n_conb=int(env.get("SPARSEVLM_N_CONB", 10)),
                   n_calib=int(env.get("SPARSEVLM_N_CALIB", 16)), batch_size=int(env.get("SPARSEVLM_BATCH", 16)),
                   cache_dir=env.get("SPARSEVLM_CACHE") or str(REPO_ROOT / ".cache" / "eval"),
                   calib_iters=int(env.get("SPARSEVLM_CALIB_ITERS", 10)))


@dataclass(frozen=True)
class Column:
    """A column of Table 1: the paper's benchmark and the family that stands in for it at this scale."""

    paper: str
    family: str | None


TOY_COLUMNS = (Column("GQA", "gqa"), Column("MMB", "mc"), Column("MME", "count"), Column("POPE", "pope"),
               Column("SQA", "mc"), Column("VQAv2", "scene"), Column("TextVQA", "textvqa"), Column("ConB", "conb"))
PAPER_COLUMNS = (Column("GQA", "gqa"), Column("MMB", "mmb"), Column("MME", "mme"), Column("POPE", "pope"),
                 Column("SQA", "sqa"), Column("VQAv2", "vqav2"), Column("TextVQA", "textvqa"), Column("ConB", None))
TOY_MIRRORS = {"gqa": "attribute/relation questions", "mc": "multiple choice (MMB and SQA share it)",
               "count": "counting (fine-grained perception, like MME's count/existence subtasks)",
               "pope": "object existence, random/popular/adversarial negatives",
               "scene": "open scene questions (VQAv2-like)", "textvqa": "reading digit tiles",
               "conb": "agreement of answers to 3 rephrasings (ConBench-like)", "video": "3-frame clips"}


@dataclass
class Ctx:
    """A loaded model and its data for one scale; built once per process."""

    settings: Settings
    vlm: Any
    run_key: dict
    model_desc: str
    data_desc: str
    out_dir: Path
    columns: tuple[Column, ...]
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    calibrations: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        cfg = self.vlm.model.config
        return int(getattr(cfg, "text_config", cfg).num_hidden_layers)

    @property
    def n_visual(self) -> int:
        return int(self.vlm.num_visual_tokens)

    def describe(self) -> dict:
        return {"scale": self.settings.scale, "model": self.model_desc, "data": self.data_desc,
                "settings": self.settings.__dict__, "decoder_layers": self.n_layers,
                "visual_tokens_per_image": self.n_visual, "fastv_K": fastv_layer(self.n_layers),
                "sparsevlm_score_layers": list(resolve_score_layers(self.n_layers))}


_CONTEXTS: dict[str, Ctx] = {}


def _hash_folder(path: Path) -> str:
    from common.toy_report import hash_checkpoint

    return hash_checkpoint(path)


def context(scale: str) -> Ctx:
    """The `Ctx` of a scale (cached per process, so several targets in one call load the model once)."""
    if scale in _CONTEXTS:
        return _CONTEXTS[scale]
    st = Settings.for_scale(scale)
    out = Path(os.environ.get("SPARSEVLM_OUT") or (FIGURES / "sparsevlm" if scale == "toy"
                                                    else FIGURES / "sparsevlm" / scale))
    if scale == "toy":
        vlm = load_vlm("toy")
        ctx = Ctx(st, vlm, {"checkpoint": _hash_folder(TOY_CHECKPOINT)}, f"toy LLaVA ({vlm.name})",
                  f"ToyWorld test split (seed {st.seed}, {st.n} per family)", out, TOY_COLUMNS)
    else:
        from common.models.llava_hf import load_paper_vlm

        vlm = load_paper_vlm()
        cfg = Path(os.environ["MODEL_PATH"]) / "config.json"
        ctx = Ctx(st, vlm, {"model_config": hashlib.sha256(cfg.read_bytes()).hexdigest(),
                            "model_path": str(Path(os.environ["MODEL_PATH"]).resolve())},
                  f"{vlm.name} (HF LLaVA)", f"LLaVA eval files under $DATA_ROOT ({st.n or 'all'} per benchmark)",
                  out, PAPER_COLUMNS)
    _CONTEXTS[scale] = ctx
    return ctx


# ------------------------------------------------------------------------------------------------ data
def family_samples(ctx: Ctx, family: str, split: str = "test") -> list[Sample]:
    """The samples of a family (toy: ToyWorld; paper: a benchmark loader), cached in `ctx`.

    split "val" gives the calibration samples of the family (toy: ToyWorld's val split; paper: the first
    `n_calib` samples of the benchmark, whose answers calibration never reads).
    """
    key = f"{split}:{family}"
    if key in ctx.samples:
        return ctx.samples[key]
    st = ctx.settings
    calib = split == "val"
    if st.scale == "toy":
        from common.data.toyworld import toyworld_split
        from common.models.checkpoint import data_version

        version = data_version(TOY_CHECKPOINT)
        if family == "conb":
            fams = TOY_IMAGE_FAMILIES
            n = max(1, st.n_calib // (3 * len(fams))) if calib else st.n_conb
            out = toyworld_split(split, n * len(fams), seed=st.seed + 1, families=fams, rephrasings=3,
                                 version=version)
        else:
            out = toyworld_split(split, st.n_calib if calib else st.n, seed=st.seed, families=(family,),
                                 version=version)
    else:
        from common.data.benchmarks import load_benchmark

        if family in ("conb", "video"):
            raise NotImplementedError(f"{family}: no {family} data at the paper scale")
        out = load_benchmark(family, limit=st.n_calib if calib else st.n)
    if not out:
        raise ValueError(f"family {family!r}: no samples")
    ctx.samples[key] = out
    return out


def run(ctx: Ctx, family: str, reducer: Any) -> EvalResult:
    """`evaluate` one family with a reducer (cached per sample in .cache/eval)."""
    return evaluate(ctx.vlm, family_samples(ctx, family), reducer=reducer, batch_size=ctx.settings.batch_size,
                    max_new_tokens=MAX_NEW_TOKENS, cache_dir=ctx.settings.cache_dir, run_key=ctx.run_key,
                    progress=False)


def family_score(ctx: Ctx, family: str, res: EvalResult) -> float:
    """The headline number of a family: consistency for the ConB stand-in, MME's total, else `score`."""
    if family == "conb":
        return consistency(family_samples(ctx, family), res.predictions)["consistency"]
    if family == "mme":
        m = res.metrics["mme"]
        return m.get("perception", 0.0) + m.get("cognition", 0.0) if "perception" in m else m["score"]
    fams = list(res.metrics)
    return float(res.metrics[fams[0]]["score"]) if len(fams) == 1 else float(
        np.mean([res.metrics[f]["score"] for f in fams]))


# --------------------------------------------------------------------------------------------- methods
def fastv_layer(n_layers: int) -> int:
    """FastV's K = 2 of 32 mapped to the model's depth (at least 1: K needs the attention of layer K-1)."""
    return max(1, map_layer(2, n_layers))


def budget_fraction(budget: float, total: float = PAPER_VISUAL) -> float:
    return float(budget) / float(total)


def fastv(ctx: Ctx, budget: float, total: float = PAPER_VISUAL) -> FastV:
    return FastV(K=fastv_layer(ctx.n_layers), budget=budget_fraction(budget, total))


def tome(ctx: Ctx, budget: float, total: float = PAPER_VISUAL) -> ToMe:
    return ToMe(layer=0, budget=budget_fraction(budget, total))


def _batches(ctx: Ctx, samples: Sequence[Sample]) -> list[dict]:
    model = ctx.vlm.model
    dev, dtype = model.device, model.dtype
    out = []
    for i in range(0, len(samples), ctx.settings.batch_size):
        inputs = dict(ctx.vlm.build_inputs(samples[i:i + ctx.settings.batch_size]))
        out.append({k: (v.to(dev, dtype=dtype) if v.is_floating_point() else v.to(dev)) if torch.is_tensor(v) else v
                    for k, v in inputs.items()})
    return out


def sparsevlm(ctx: Ctx, budget: float, family: str, *, total: float = PAPER_VISUAL, **cfg: Any):
    """A SparseVLM calibrated on `family` so that its layer-averaged visual tokens equal `budget` of `total`
    (paper tokens) over that benchmark, as the official scripts tune (scale, bias) per benchmark
    (sparsevlm.md §3.7-3.8). Cached on disk by (model, calibration data, target, config)."""
    calib = family_samples(ctx, family, "val")
    n_vis = float(np.mean([len(s.images) for s in calib])) * ctx.n_visual
    target = budget_fraction(budget, total) * n_vis
    key_src = json.dumps({"run_key": ctx.run_key, "data": hash_samples(calib), "target": round(target, 6),
                          "cfg": cfg, "batch": ctx.settings.batch_size, "v": 1}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    if key in ctx.calibrations:
        return ctx.calibrations[key]
    path = CALIB_DIR / f"{key}.json"
    if path.exists():
        rec = json.loads(path.read_text())
        knob = "scale" if cfg.get("mode", "official") == "official" else "lam"
        cal = Calibration(SparseVLM(**{**cfg, knob: rec["value"]}), knob, rec["value"], rec["target"],
                          rec["achieved"], rec["n_visual"], rec["feasible"])
    else:
        print(f"[sparsevlm] calibrating {family} for {budget:g} of {total:g} {cfg or ''}", flush=True)
        res = calibrate(ctx.vlm.model, _batches(ctx, calib), target, image_token_id=ctx.vlm.image_token_id,
                        n_visual=n_vis, iters=ctx.settings.calib_iters, **cfg)
        cal = res
        CALIB_DIR.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"value": res.value, "target": res.target, "achieved": res.achieved,
                                    "n_visual": res.n_visual, "feasible": res.feasible, "config": cfg,
                                    "family": family, "budget": budget, "total": total}, indent=1, sort_keys=True))
    ctx.calibrations[key] = cal
    return cal


def method_reducer(ctx: Ctx, method: str, budget: int, family: str):
    """(reducer, note) for a Table 1 method at a paper budget on a family."""
    if method == "Vanilla":
        return None, ""
    if method == "ToMe":
        return tome(ctx, budget), "merge before the LLM"
    if method == "FastV":
        return fastv(ctx, budget), f"K={fastv_layer(ctx.n_layers)}, nominal"
    cal = sparsevlm(ctx, budget, family)
    return cal.reducer, f"scale={cal.value:.3g}" + ("" if cal.feasible else " (unreachable)")


def equivalent(ctx: Ctx, results: Sequence[EvalResult]) -> tuple[float, float]:
    """(toy tokens, paper-equivalent tokens of 576) per image, layer-averaged, over `results`."""
    toy = float(np.mean([r.visual_tokens / (r.visual_tokens_full / ctx.n_visual) for r in results]))
    return toy, toy / ctx.n_visual * PAPER_VISUAL


def _nanmean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _pct(x: float, ref: float) -> float:
    return 100.0 * x / ref if ref and not math.isnan(ref) and not math.isnan(x) else math.nan


def _prov(ctx: Ctx, target: str, started: float, extra: dict | None = None) -> dict:
    p = provenance(command=f"python -m common.experiment {target} --scale {ctx.settings.scale}",
                   config={**ctx.describe(), **(extra or {})}, seeds={"data": ctx.settings.seed},
                   inputs=ctx.run_key, started=started)
    return p


def _title(ctx: Ctx, what: str) -> str:
    return f"{what} (scale: {ctx.settings.scale}; model: {ctx.model_desc}; data: {ctx.data_desc})"


# ---------------------------------------------------------------------------------------------- Table 1
def table1_scores(ctx: Ctx, method: str, budget: int) -> dict[str, Any]:
    """Per-family scores, layer-averaged tokens and a note of one Table 1 method at one budget."""
    fams = list(dict.fromkeys(c.family for c in ctx.columns if c.family is not None))
    scores, results, notes = {}, [], []
    for fam in fams:
        try:
            reducer, note = method_reducer(ctx, method, budget, fam)
            res = run(ctx, fam, reducer)
        except (ValueError, NotImplementedError) as err:  # paper scale: a benchmark not on disk
            print(f"[sparsevlm] {fam}: skipped ({err})", flush=True)
            scores[fam] = math.nan
            continue
        scores[fam] = family_score(ctx, fam, res)
        results.append(res)
        if note and note not in notes:
            notes.append(note if method != "SparseVLM" else f"{fam}: {note}")
    toy, paper = equivalent(ctx, results) if results else (math.nan, math.nan)
    return {"scores": scores, "toy_tokens": toy, "paper_tokens": paper, "note": "; ".join(notes)}


@artifact("sparsevlm-table1", scales=SCALES)
def table1(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-table1`: vanilla, ToMe, FastV and SparseVLM at 192/128/64 tokens (SparseVLM Table 1)."""
    started = time.time()
    ctx = context(scale)
    bench = [c.paper for c in ctx.columns]
    rows, ours = [], {}
    configs = [("Vanilla", 576)] + [(m, b) for b in PAPER_BUDGETS for m in ("ToMe", "FastV", "SparseVLM")]
    for method, budget in configs:
        print(f"[sparsevlm-table1] {method} {budget}", flush=True)
        ours[(method, budget)] = table1_scores(ctx, method, budget)
    van = ours[("Vanilla", 576)]["scores"]
    uniq = list(dict.fromkeys(c.family for c in ctx.columns if c.family is not None))
    for method, budget in configs:
        o = ours[(method, budget)]
        raw = {c.paper: (o["scores"].get(c.family, math.nan) if c.family else math.nan) for c in ctx.columns}
        pct = {c.paper: (_pct(o["scores"][c.family], van[c.family]) if c.family else math.nan) for c in ctx.columns}
        avg = _nanmean([_pct(o["scores"][f], van[f]) for f in uniq])
        key = (method, budget)
        base = {"tokens": budget, "method": method}
        rows.append({**base, "source": "paper", "row": "raw", **dict(zip(bench, R.TABLE1_RAW[key])),
                     "avg %": R.TABLE1_AVG[key], "equiv. tokens (of 576)": budget, "note": "LLaVA-1.5-7B"})
        rows.append({**base, "source": "paper", "row": "% vanilla", **dict(zip(bench, R.TABLE1_PCT[key]))})
        rows.append({**base, "source": "ours", "row": "raw", **raw, "avg %": avg,
                     "equiv. tokens (of 576)": o["paper_tokens"], "toy tokens": o["toy_tokens"], "note": o["note"]})
        rows.append({**base, "source": "ours", "row": "% vanilla", **pct})
        ours[key]["avg_pct"] = avg
    claims = {}
    for b in PAPER_BUDGETS:
        s, f, t = (ours[(m, b)]["avg_pct"] for m in ("SparseVLM", "FastV", "ToMe"))
        claims[f"{b}: SparseVLM avg % (paper {R.TABLE1_AVG[('SparseVLM', b)]})"] = s
        claims[f"{b}: SparseVLM - best baseline (paper {R.TABLE1_AVG[('SparseVLM', b)] - max(R.TABLE1_AVG[('FastV', b)], R.TABLE1_AVG[('ToMe', b)]):.1f})"] = s - max(f, t)
    mirrors = "; ".join(f"{c.paper}={c.family}" for c in ctx.columns)
    title = _title(ctx, "SparseVLM Table 1: accuracy at 576/192/128/64 visual tokens, paper (LLaVA-1.5-7B) beside "
                        f"ours; raw and % of vanilla; columns mirror: {mirrors}; avg % over distinct families")
    prov = _prov(ctx, "sparsevlm-table1", started, {"mirrors": TOY_MIRRORS if scale == "toy" else None})
    prov["claims"] = claims
    prov["results"] = {f"{m} {b}": v for (m, b), v in ours.items()}
    cols = ["tokens", "method", "source", "row", *bench, "avg %", "equiv. tokens (of 576)", "toy tokens", "note"]
    return write_table(rows, ctx.out_dir / "table1", title=title, columns=cols, provenance=prov, float_format=".1f")


# ---------------------------------------------------------------------------------------------- Table 2
@artifact("sparsevlm-table2", scales=("toy",))
def table2(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-table2`: video QA, vanilla vs FastV vs SparseVLM at 93.4% pruning (135 of 2048)."""
    started = time.time()
    ctx = context(scale)
    keep, total = R.TABLE2_TOKENS[1], R.TABLE2_TOKENS[0]
    cal = sparsevlm(ctx, keep, "video", total=total)
    methods = {"Video-LLaVA": None, "FastV": fastv(ctx, keep, total), "SparseVLM": cal.reducer}
    res = {m: run(ctx, "video", r) for m, r in methods.items()}
    acc = {m: r.metrics["video"]["score"] for m, r in res.items()}
    rows = []
    for m in methods:
        pr = R.TABLE2[m]
        row = {"method": "Vanilla (Video-LLaVA)" if m == "Video-LLaVA" else m, "source": "paper"}
        row.update({f"{b} acc": pr[b][0] for b in R.TABLE2_BENCHMARKS})
        row.update({f"{b} score": pr[b][1] for b in R.TABLE2_BENCHMARKS})
        row.update({"avg acc %": R.TABLE2_AVG[m][0], "avg score delta": R.TABLE2_AVG[m][1],
                    "equiv. tokens": total if m == "Video-LLaVA" else keep, "of": total})
        rows.append(row)
        toy, _ = equivalent(ctx, [res[m]])
        frames = res[m].visual_tokens_full / ctx.n_visual
        rows.append({"method": row["method"], "source": "ours", "ToyWorld video acc": acc[m],
                     "avg acc %": _pct(acc[m], acc["Video-LLaVA"]), "equiv. tokens": toy * frames,
                     "of": res[m].visual_tokens_full})
    cols = ["method", "source", *[f"{b} {k}" for b in R.TABLE2_BENCHMARKS for k in ("acc", "score")],
            "ToyWorld video acc", "avg acc %", "avg score delta", "equiv. tokens", "of"]
    title = _title(ctx, "SparseVLM Table 2: video QA at 93.4% pruning (paper: Video-LLaVA, 2048 -> 135 tokens, "
                        "GPT-3.5 judge; ours: ToyWorld 3-frame clips, exact-match accuracy, no judge score)")
    prov = _prov(ctx, "sparsevlm-table2", started, {"calibrated_scale": cal.value, "feasible": cal.feasible})
    prov["claims"] = {"SparseVLM % of vanilla (paper 86.5)": _pct(acc["SparseVLM"], acc["Video-LLaVA"]),
                      "FastV % of vanilla (paper 52.1)": _pct(acc["FastV"], acc["Video-LLaVA"])}
    return write_table(rows, ctx.out_dir / "table2", title=title, columns=cols, provenance=prov, float_format=".2f")


# ---------------------------------------------------------------------------------------------- Table 3
TABLE3_FAMILIES = {"toy": (("TextVQA", "textvqa"), ("POPE", "pope")), "paper": (("TextVQA", "textvqa"), ("POPE", "pope"))}


@artifact("sparsevlm-table3", scales=SCALES)
def table3(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-table3`: token recycling (TR) on/off at 64/96/128/192 tokens, TextVQA- and POPE-like."""
    started = time.time()
    ctx = context(scale)
    rows, claims = [], {}
    for bench, fam in TABLE3_FAMILIES[scale]:
        vals: dict[bool, list[float]] = {False: [], True: []}
        toks: dict[bool, list[float]] = {False: [], True: []}
        for b in R.TABLE3_TOKENS:
            cal = sparsevlm(ctx, b, fam)
            for tr in (False, True):
                red = cal.reducer if tr else cal.reducer.with_(recycle=False)  # same lambda, TR off (§10 #17)
                res = run(ctx, fam, red)
                vals[tr].append(family_score(ctx, fam, res))
                toks[tr].append(equivalent(ctx, [res])[1])
        for tr in (False, True):
            label = f"{bench}" + (" + TR" if tr else "")
            paper = R.TABLE3[(bench, tr)]
            rows.append({"benchmark": label, "source": "paper", **{str(t): v for t, v in zip(R.TABLE3_TOKENS, paper)},
                         "avg": R.TABLE3_AVG[(bench, tr)]})
            ours_row = {"benchmark": label, "source": f"ours ({fam})", **{str(t): v for t, v in zip(R.TABLE3_TOKENS, vals[tr])},
                        "avg": float(np.mean(vals[tr]))}
            ours_row["equiv. tokens (of 576)"] = " / ".join(f"{x:.0f}" for x in toks[tr])
            rows.append(ours_row)
        gains = [a - b for a, b in zip(vals[True], vals[False])]
        rows.append({"benchmark": f"{bench} TR gain", "source": "ours", **{str(t): g for t, g in zip(R.TABLE3_TOKENS, gains)},
                     "avg": float(np.mean(gains))})
        pg = [a - b for a, b in zip(R.TABLE3[(bench, True)], R.TABLE3[(bench, False)])]
        rows.append({"benchmark": f"{bench} TR gain", "source": "paper", **{str(t): g for t, g in zip(R.TABLE3_TOKENS, pg)},
                     "avg": R.TABLE3_AVG[(bench, True)] - R.TABLE3_AVG[(bench, False)]})
        claims[f"{bench}: TR gain at 64/96/128/192 (paper {pg})"] = gains
    cols = ["benchmark", "source", *[str(t) for t in R.TABLE3_TOKENS], "avg", "equiv. tokens (of 576)"]
    title = _title(ctx, "SparseVLM Table 3: token recycling (TR) on/off; budgets are layer-averaged tokens of 576, "
                        "calibrated with TR; w/o TR reuses the same lambda (its count has no merged tokens)")
    prov = _prov(ctx, "sparsevlm-table3", started)
    prov["claims"] = claims
    return write_table(rows, ctx.out_dir / "table3", title=title, columns=cols, provenance=prov, float_format=".1f")


# ---------------------------------------------------------------------------------------------- Table 4
def _timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def efficiency(ctx: Ctx, reducer: Any, samples: Sequence[Sample], repeats: int = 5, new_tokens: int = 16) -> dict:
    """Median prefill and total (prefill + `new_tokens` greedy steps) latency in ms, KV cache and FLOPs of
    one sample at a time (batch 1, the paper's setting), averaged over `samples`."""
    model = ctx.vlm.model
    dims = DecoderDims.from_config(model.config)
    pre, tot, kv, kv_vis, flops, vis = [], [], [], [], [], []
    for s in samples:
        inputs = _batches(ctx, [s])[0]
        with torch.no_grad(), reduce_tokens(model, reducer, image_token_id=ctx.vlm.image_token_id) as st:
            pre.append(1e3 * _timed(lambda: model(**inputs), repeats))
            tot.append(1e3 * _timed(lambda: model.generate(**inputs, max_new_tokens=new_tokens,
                                                           min_new_tokens=new_tokens, do_sample=False), repeats))
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
        cache = out.past_key_values
        kv.append(sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                      for layer in cache.layers) / 1e6)
        L = int(inputs["input_ids"].shape[1])
        n_vis = int((inputs["input_ids"] == ctx.vlm.image_token_id).sum())
        per_layer = st.visual_tokens_per_layer()[:, 0] if reducer is not None else torch.full((dims.n_layers,), float(n_vis))
        vis.append(float(per_layer.mean()))
        # KV of the visual tokens: each layer caches the tokens it processed
        kv_vis.append(float(per_layer.sum()) * kv_cache_bytes_per_token(dims, bytes_per_element=model.dtype.itemsize)
                      / dims.n_layers / 1e6)
        seq = [int(round(L - n_vis + v)) for v in per_layer.tolist()]
        flops.append(schedule_flops(seq, dims, ffn_matrices=3))
    return {"prefill_ms": float(np.mean(pre)), "total_ms": float(np.mean(tot)), "kv_mb": float(np.mean(kv)),
            "kv_visual_mb": float(np.mean(kv_vis)), "gmacs": float(np.mean(flops)) / 1e9,
            "visual_tokens": float(np.mean(vis))}


@artifact("sparsevlm-table4", scales=SCALES)
def table4(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-table4`: KV-cache memory, measured CPU latency (median of repeats) and FLOPs for vanilla,
    FastV at 192 and SparseVLM at 64; accuracy as % of vanilla from Table 1's runs (cached)."""
    started = time.time()
    ctx = context(scale)
    setups = {"Baseline": ("Vanilla", 576), "FastV": ("FastV", 192), "SparseVLM": ("SparseVLM", 64)}
    fam = "gqa"
    samples = family_samples(ctx, fam)[:4]
    acc, eff = {}, {}
    for name, (method, budget) in setups.items():
        print(f"[sparsevlm-table4] {name}", flush=True)
        acc[name] = table1_scores(ctx, method, budget)
        reducer, _ = method_reducer(ctx, method, budget, fam)
        eff[name] = efficiency(ctx, reducer, samples, repeats=int(os.environ.get("SPARSEVLM_REPEATS", 5)))
    uniq = list(dict.fromkeys(c.family for c in ctx.columns if c.family is not None))
    van = acc["Baseline"]["scores"]
    rows = []
    base = eff["Baseline"]
    unit, scale_f = ("T", 1e-3) if base["gmacs"] >= 1e3 else (("G", 1.0) if base["gmacs"] >= 1 else ("M", 1e3))
    for name, (method, budget) in setups.items():
        p = R.TABLE4[name]
        rows.append({"method": name, "source": "paper (A100, LLaVA-7B)", "tokens": p["tokens"], "acc %": p["acc_pct"],
                     "KV memory (MB)": p["storage_mb"], "KV red. %": p["storage_red_pct"], "prefill (ms)": None,
                     "total (ms)": p["cuda_ms"], "time red. %": p["cuda_red_pct"], "FLOPs": p["tflops"],
                     "FLOPs unit": "T (printed)", "FLOPs red. %": p["flops_red_pct"]})
        e = eff[name]
        a = _nanmean([_pct(acc[name]["scores"][f], van[f]) for f in uniq])
        rows.append({"method": name, "source": f"ours ({scale}, CPU, batch 1)", "tokens": e["visual_tokens"],
                     "acc %": a, "KV memory (MB)": e["kv_visual_mb"],
                     "KV red. %": None if name == "Baseline" else 100 * (1 - e["kv_visual_mb"] / base["kv_visual_mb"]),
                     "prefill (ms)": e["prefill_ms"], "total (ms)": e["total_ms"],
                     "time red. %": None if name == "Baseline" else 100 * (1 - e["total_ms"] / base["total_ms"]),
                     "FLOPs": e["gmacs"] * scale_f, "FLOPs unit": f"{unit} MACs (3ndm, whole prompt)",
                     "FLOPs red. %": None if name == "Baseline" else 100 * (1 - e["gmacs"] / base["gmacs"]),
                     "prefill red. %": None if name == "Baseline" else 100 * (1 - e["prefill_ms"] / base["prefill_ms"]),
                     "KV total (MB)": e["kv_mb"]})
    cols = ["method", "source", "tokens", "acc %", "KV memory (MB)", "KV red. %", "prefill (ms)", "prefill red. %",
            "total (ms)", "time red. %", "FLOPs", "FLOPs unit", "FLOPs red. %", "KV total (MB)"]
    title = _title(ctx, "SparseVLM Table 4: efficiency (paper: A100 CUDA time, KV of the visual tokens at nominal "
                        "counts; ours: this CPU, median of repeated runs, KV of the visual tokens over layers as "
                        "processed, FLOPs = sum over layers of 4nd^2 + 2n^2d + 3ndm MACs with n the whole prompt; "
                        "tokens = layer-averaged visual tokens at this scale)")
    prov = _prov(ctx, "sparsevlm-table4", started, {"latency_samples": [s.id for s in samples], "new_tokens": 16,
                                                     "threads": torch.get_num_threads()})
    prov["measurements"] = eff
    return write_table(rows, ctx.out_dir / "table4", title=title, columns=cols, provenance=prov, float_format=".2f")


# ---------------------------------------------------------------------------------------------- figures
def _prefill_trace(ctx: Ctx, samples: Sequence[Sample], reducer: SparseVLM, generate: bool = False):
    """Run `reducer` on `samples` (one batch); returns (state, reducer.trace, answers or None, inputs)."""
    model = ctx.vlm.model
    inputs = _batches(ctx, samples)[0] if len(samples) <= ctx.settings.batch_size else None
    if inputs is None:
        raise ValueError("samples: at most one batch")
    with torch.no_grad(), reduce_tokens(model, reducer, image_token_id=ctx.vlm.image_token_id) as st:
        if generate:
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS["default"], do_sample=False)
            answers = ctx.vlm.decode(out[:, inputs["input_ids"].shape[1]:])
        else:
            model(**inputs)
            answers = None
        kept = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
        trace = list(reducer.trace)
    return kept, trace, answers, inputs


def _tokens(ctx: Ctx, ids: torch.Tensor) -> list[str]:
    return [ctx.vlm.decode(ids[i:i + 1].view(1, 1).cpu())[0] for i in range(ids.numel())]


def rater_words(ctx: Ctx, inputs: dict, trace, b: int) -> list[tuple[str, float, bool]]:
    """(token text, relevance R, is rater) of sample b's instruction tokens."""
    tr = trace[b]
    ids = inputs["input_ids"][b, tr.instruction_positions.to(inputs["input_ids"].device)]
    words = _tokens(ctx, ids)
    rat = set(tr.raters.tolist()) if tr.raters is not None else set()
    R_ = tr.relevance.tolist() if tr.relevance is not None else [0.0] * len(words)
    return [(w, r, i in rat) for i, (w, r) in enumerate(zip(words, R_))]


def _draw_words(ax, words: list[tuple[str, float, bool]], title: str = "", y: float = 0.5) -> None:
    """Words left to right, shaded by relevance (darker = more relevant), raters underlined in red."""
    from matplotlib import cm

    ax.set_axis_off()
    vals = np.array([w[1] for w in words]) if words else np.zeros(1)
    lo, hi = float(vals.min()), float(vals.max())
    x = 0.01
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    for w, r, is_rater in words:
        if not w.strip():
            continue
        shade = 0.15 + 0.85 * ((r - lo) / (hi - lo) if hi > lo else 0.5)
        t = ax.text(x, y, w, transform=ax.transAxes, fontsize=9, va="center",
                    color="white" if shade > 0.55 else "black",
                    bbox=dict(boxstyle="round,pad=0.2", fc=cm.Blues(shade), ec="red" if is_rater else "none",
                              lw=1.5 if is_rater else 0))
        bb = t.get_window_extent(renderer=renderer).transformed(ax.transAxes.inverted())
        x = bb.x1 + 0.012
    if title:
        ax.set_title(title, fontsize=9, loc="left")


def _fig_samples(ctx: Ctx, fams: Sequence[str], k: int = 1) -> list[Sample]:
    out = []
    for f in fams:
        try:
            out += family_samples(ctx, f)[:k]
        except (ValueError, NotImplementedError):
            continue
    return out


@artifact("sparsevlm-fig3", scales=SCALES, kind="figure")
def fig3(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig3`: per-word relevance R (Eq. 7) of sample prompts; darker = more visual relevance,
    red frame = rater (R above the mean)."""
    from common.plots import new_figure

    started = time.time()
    ctx = context(scale)
    fams = ("gqa", "pope", "textvqa", "mc") if scale == "toy" else ("gqa", "pope", "textvqa", "mmb")
    samples = _fig_samples(ctx, fams)
    red = SparseVLM()
    _, trace, _, inputs = _prefill_trace(ctx, samples, red)
    fig, axes = new_figure(len(samples), 1, width=7.5, height=0.75 * len(samples) + 0.5, squeeze=False)
    data = []
    for b, s in enumerate(samples):
        words = rater_words(ctx, inputs, trace, b)
        _draw_words(axes[b][0], words, f"({b + 1}) {s.family}")
        data.append({"id": s.id, "words": [{"token": w, "R": r, "rater": rr} for w, r, rr in words]})
    fig.suptitle(f"SparseVLM Fig. 3 at {scale} scale: text relevance R per prompt token (darker = more visual "
                 f"relevance; red frame = rater)", fontsize=9)
    prov = _prov(ctx, "sparsevlm-fig3", started)
    prov["data"] = data
    return save_figure(fig, ctx.out_dir / "fig3", provenance=prov)


FIG4_BUDGETS = (448, 320, 192, 128, 64)


@artifact("sparsevlm-fig4", scales=SCALES, kind="figure")
def fig4(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig4`: accuracy vs kept tokens for ToMe, FastV and SparseVLM on POPE/TextVQA/GQA.

    The paper uses Mini-Gemini as a second model family; no second model family exists here yet, so the
    figure is drawn for the main model only (title says so)."""
    from common.plots import new_figure

    started = time.time()
    ctx = context(scale)
    fams = (("POPE", "pope"), ("TextVQA", "textvqa"), ("GQA", "gqa"))
    data: dict[str, dict[str, list]] = {}
    fig, axes = new_figure(1, 3, width=9.0, height=3.0, squeeze=False)
    for ax, (bench, fam) in zip(axes[0], fams):
        van = family_score(ctx, fam, run(ctx, fam, None))
        d = {"vanilla": van}
        for method in ("ToMe", "FastV", "SparseVLM"):
            xs, ys = [], []
            for b in FIG4_BUDGETS:
                red, _ = method_reducer(ctx, method, b, fam)
                res = run(ctx, fam, red)
                xs.append(equivalent(ctx, [res])[1])
                ys.append(family_score(ctx, fam, res))
            ax.plot(xs, ys, marker="o", label=method)
            d[method] = list(zip(FIG4_BUDGETS, xs, ys))
        ax.axhline(van, color="gray", ls="--", label="vanilla (576)")
        ax.set_xlim(600, 0)
        ax.set_xlabel("visual tokens (layer average, of 576)")
        ax.set_title(bench + f" ({fam})")
        data[bench] = d
    axes[0][0].set_ylabel("score (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"SparseVLM Fig. 4 stand-in at {scale} scale: {ctx.model_desc} only (no second model family "
                 f"available; the paper uses Mini-Gemini)", fontsize=9)
    prov = _prov(ctx, "sparsevlm-fig4", started, {"note": "no second model family available: the main model only"})
    prov["data"] = data
    gaps = {bench: [s[2] - f[2] for s, f in zip(d["SparseVLM"], d["FastV"])] for bench, d in data.items()}
    prov["claims"] = {"SparseVLM - FastV per budget (paper: +10.2 to +21.6)": gaps}
    return save_figure(fig, ctx.out_dir / "fig4", provenance=prov)


@artifact("sparsevlm-fig5", scales=SCALES, kind="figure")
def fig5(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig5`: rater ablation at 142 layer-averaged tokens: significance from the attention of
    all tokens, all text tokens, or the selected raters; the same kept counts in all three (from the raters'
    rank), so only WHICH tokens are kept differs."""
    from common.plots import new_figure

    started = time.time()
    ctx = context(scale)
    variants = (("all tokens", "all"), ("text only", "text"), ("raters", "raters"))
    fams = (("TextVQA", "textvqa"), ("POPE", "pope"))
    data = {}
    for label, rows in variants:
        data[label] = {}
        for bench, fam in fams:
            # one calibration: the count comes from the raters' P in every variant (method.py, `rater_rows`)
            cal = sparsevlm(ctx, R.FIG5_TOKENS, fam)
            res = run(ctx, fam, cal.reducer.with_(rater_rows=rows))
            data[label][bench] = family_score(ctx, fam, res)
            data[label][f"{bench} scale"] = cal.value
            data[label][f"{bench} tokens"] = equivalent(ctx, [res])[1]
    fig, axes = new_figure(1, 2, width=7.0, height=2.8, squeeze=False)
    for ax, (bench, _) in zip(axes[0], fams):
        vals = [data[l][bench] for l, _ in variants]
        ax.bar([l for l, _ in variants], vals, color=["#bbbbbb", "#88aadd", "#2255aa"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        lo = min(vals)
        ax.set_ylim(max(0, lo - 10), max(vals) + 5)
        ax.set_title(bench)
    axes[0][0].set_ylabel("score (%)")
    fig.suptitle(f"SparseVLM Fig. 5 at {scale} scale: rater ablation at {R.FIG5_TOKENS} layer-averaged tokens of 576 "
                 f"({ctx.model_desc})", fontsize=9)
    prov = _prov(ctx, "sparsevlm-fig5", started)
    prov["data"] = data
    prov["claims"] = {
        "TextVQA raters - text only (paper +0.79)": data["raters"]["TextVQA"] - data["text only"]["TextVQA"],
        "POPE raters - all tokens (paper +4.3)": data["raters"]["POPE"] - data["all tokens"]["POPE"],
        "POPE text only - all tokens": data["text only"]["POPE"] - data["all tokens"]["POPE"],
    }
    return save_figure(fig, ctx.out_dir / "fig5", provenance=prov)


def _grid(n: int) -> int:
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise ValueError(f"n_visual: {n} visual tokens do not form a square grid")
    return g


def mask_panels(ctx: Ctx, items: Sequence[tuple[Sample, SparseVLM]], target: str, title: str) -> dict[str, Path]:
    """Figs. 6/8: per (sample, reducer), the image and its kept tokens after each pruning layer, the prompt with
    raters framed in red, and the generated answer (green). Merged (recycled) tokens have no single place on
    the image; panel titles count them."""
    from common.plots import new_figure, plot_token_mask

    started = time.time()
    runs = [(s, red, *_prefill_trace(ctx, [s], red, generate=True)) for s, red in items]
    g = _grid(ctx.n_visual)
    ncol = 1 + max(len([l for l in kept if l - 1 in red.score_layers]) for _, red, kept, *_ in runs)
    fig, axes = new_figure(2 * len(runs), ncol, width=max(6.0, 1.9 * ncol), height=2.6 * len(runs),
                           squeeze=False, gridspec_kw={"height_ratios": [4, 1.2] * len(runs)})
    gs = axes[0][0].get_gridspec()
    data = []
    for i, (s, red, kept, trace, answers, inputs) in enumerate(runs):
        ax_img = axes[2 * i]
        for a in axes[2 * i + 1]:
            a.remove()
        ax_txt = [fig.add_subplot(gs[2 * i + 1, :])]
        layers = [l for l in sorted(kept) if l - 1 in red.score_layers]
        masks, titles = [np.ones((g, g), bool)], [f"all {g * g}"]
        for l in layers:
            k = kept[l][0]
            m = np.zeros(g * g, bool)
            m[k[k >= 0].cpu().numpy()] = True
            masks.append(m.reshape(g, g))
            titles.append(f"L{l}: {int((k >= 0).sum())}+{int((k < 0).sum())}m")
        plot_token_mask(s.images[0], masks, ax=list(ax_img[:len(masks)]), title=titles)
        for a in ax_img[len(masks):]:
            a.set_axis_off()
        words = rater_words(ctx, inputs, trace, 0)
        _draw_words(ax_txt[0], words, y=0.75)
        ax_txt[0].text(0.01, 0.1, f"answer: {answers[0]}   (reference: {s.answer})", color="green",
                       transform=ax_txt[0].transAxes, fontsize=9)
        data.append({"id": s.id, "question": s.question, "answer": answers[0], "reference": s.answer,
                     "raters": [w for w, _, r in words if r], "reducer": repr(red),
                     "kept": {str(l): kept[l][0].tolist() for l in layers}})
    fig.suptitle(title, fontsize=9)
    prov = _prov(ctx, target, started)
    prov["data"] = data
    return save_figure(fig, ctx.out_dir / target.split("-")[-1], provenance=prov)


def same_image_questions(sample: Sample) -> list[Sample]:
    """Two ToyWorld questions about one image (Fig. 1/6: the kept patches should follow the question):
    the colour of two different objects, named by their shapes (objects with a unique shape)."""
    from common.data.toyworld import TEMPLATES

    objs = Scene.from_key(sample.meta["scene_key"]).objects
    shapes = [o.shape for o in objs]
    uniq = [o for o in objs if shapes.count(o.shape) == 1 and o.shape != "tile"]
    out = []
    for o in uniq[:2]:
        q = TEMPLATES["color_of"][0].format(shape=o.shape)
        out.append(Sample(id=f"{sample.id}-ask-{o.shape}", family="gqa", images=sample.images, question=q,
                          answer=o.color, meta={"scene_key": sample.meta["scene_key"]}))
    return out


@artifact("sparsevlm-fig6", scales=("toy",), kind="figure")
def fig6(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig6`: masks after each pruning layer for two questions about the same image, at 64."""
    ctx = context(scale)
    pool = family_samples(ctx, "gqa")
    samples = next((qs for qs in map(same_image_questions, pool) if len(qs) == 2), None)
    if samples is None:
        raise RuntimeError("no ToyWorld gqa image with two uniquely shaped objects in the sample set")
    cal = sparsevlm(ctx, 64, "gqa")
    return mask_panels(ctx, [(s, cal.reducer) for s in samples], "sparsevlm-fig6",
                       f"SparseVLM Fig. 6 at {scale} scale: kept visual tokens after each pruning layer (dark = "
                       f"pruned), same image, two questions; budget 64 of 576 ({ctx.model_desc})")


@artifact("sparsevlm-fig8", scales=SCALES, kind="figure")
def fig8(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig8`: more mask visualisations (one sample per family) at the 64-token budget."""
    ctx = context(scale)
    fams = ("gqa", "pope", "textvqa", "count") if scale == "toy" else ("gqa", "pope", "textvqa", "mme")
    items = [(s, sparsevlm(ctx, 64, s.family).reducer) for s in _fig_samples(ctx, fams)]
    return mask_panels(ctx, items, "sparsevlm-fig8",
                       f"SparseVLM Fig. 8 at {scale} scale: kept visual tokens after each pruning layer, one "
                       f"question per family; budget 64 of 576 ({ctx.model_desc})")


def grey_entropy(image) -> float:
    """Shannon entropy (bits) of the 8-bit grey-level histogram (Fig. 7's likely measure, sparsevlm.md §6)."""
    arr = np.asarray(image.convert("L")).ravel()
    p = np.bincount(arr, minlength=256).astype(float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


_PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
           "crosses": "cross", "tiles": "tile"}


def roi_share(sample: Sample) -> float:
    """Share of the image's cells covered by the objects the question names (by colour or shape word);
    1.0 for background questions. A heuristic stand-in for Fig. 7's manual ROI."""
    words = set(re.findall(r"[a-z]+", sample.question.lower()))
    words |= {_PLURAL[w] for w in words if w in _PLURAL}
    scene = Scene.from_key(sample.meta["scene_key"])
    if "background" in words:
        return 1.0
    cells = {c for o in scene.objects if o.shape in words or o.color in words for c in o.cells()}
    return len(cells) / (scene.grid * scene.grid)


def attention_mass_share(scores: torch.Tensor, mass: float = 0.8) -> float:
    """Smallest share of visual tokens that holds `mass` of the raters' attention (Pbar)."""
    s = torch.sort(scores.float(), descending=True).values
    c = torch.cumsum(s, 0) / s.sum().clamp(min=1e-12)
    return float((int((c < mass).sum()) + 1) / s.numel())


@artifact("sparsevlm-fig7", scales=("toy",), kind="figure")
def fig7(scale: str = "toy") -> dict[str, Path]:
    """`make sparsevlm-fig7`: visual vs textual redundancy: share of the prompt that rates (raters / text
    tokens), share of the image the question is about (ROI), share of visual tokens holding 80% of the raters'
    attention, and the grey-level entropy lost by 2x down-sampling (4x fewer tokens)."""
    from common.plots import new_figure

    started = time.time()
    ctx = context(scale)
    samples = [s for f in ("gqa", "pope", "textvqa", "count") for s in family_samples(ctx, f)]
    red = SparseVLM()
    text_share, roi, attn = [], [], []
    for i in range(0, len(samples), ctx.settings.batch_size):
        chunk = samples[i:i + ctx.settings.batch_size]
        _, trace, _, _ = _prefill_trace(ctx, chunk, red)
        for s, tr in zip(chunk, trace):
            if tr.raters is None:
                continue
            text_share.append(tr.raters.numel() / tr.instruction_positions.numel())
            roi.append(roi_share(s))
            attn.append(attention_mass_share(tr.layers[0].scores) if tr.layers else math.nan)
    ent, ent_ds = [], []
    for s in samples:
        im = s.images[0]
        ent.append(grey_entropy(im))
        ent_ds.append(grey_entropy(im.resize((im.width // 2, im.height // 2), resample=Image.BOX)))
    fig, axes = new_figure(1, 2, width=8.0, height=3.0, squeeze=False)
    ex = samples[0]
    axes[0][0].imshow(ex.images[0])
    scene = Scene.from_key(ex.meta["scene_key"])
    cell = ex.images[0].width / scene.grid
    words = set(re.findall(r"[a-z]+", ex.question.lower()))
    for o in scene.objects:
        if o.shape in words or o.color in words:
            axes[0][0].add_patch(__import__("matplotlib").patches.Rectangle(
                (o.col * cell, o.row * cell), o.span * cell, o.span * cell, fill=False, ec="red", lw=2))
    axes[0][0].set_axis_off()
    axes[0][0].set_title(f"\"{ex.question}\" -> ROI {100 * roi_share(ex):.0f}% of the image", fontsize=8)
    parts = {"raters / text tokens": text_share, "ROI / image": roi, "tokens with 80% of\nrater attention": attn}
    axes[0][1].boxplot([np.array(v) * 100 for v in parts.values()], tick_labels=list(parts))
    axes[0][1].set_ylabel("% of the modality")
    axes[0][1].tick_params(axis="x", labelsize=7)
    summary = {k.replace("\n", " "): float(np.nanmean(v) * 100) for k, v in parts.items()}
    summary.update({"entropy original (bits)": float(np.mean(ent)), "entropy 2x down-sampled (bits)": float(np.mean(ent_ds)),
                    "tokens original": ctx.n_visual, "tokens down-sampled": ctx.n_visual // 4})
    axes[0][1].set_title(f"mean: text {summary['raters / text tokens']:.0f}%, ROI {summary['ROI / image']:.0f}%; "
                         f"entropy {summary['entropy original (bits)']:.2f} -> "
                         f"{summary['entropy 2x down-sampled (bits)']:.2f} bits", fontsize=8)
    fig.suptitle(f"SparseVLM Fig. 7 at {scale} scale: visual vs textual redundancy ({len(roi)} questions; paper: "
                 f"88% of the text highlighted, ROI 38% of the image)", fontsize=9)
    prov = _prov(ctx, "sparsevlm-fig7", started)
    prov["summary"] = summary
    prov["paper"] = R.FIG7
    return save_figure(fig, ctx.out_dir / "fig7", provenance=prov)
