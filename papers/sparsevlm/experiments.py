"""SparseVLM's tables and figures, one function of a `Run` per artifact (Make targets `sparsevlm-table1` ...
`-table4`, `sparsevlm-fig3` ... `-fig8`; `python -m reports.experiment <target> [--scale paper ...]`).

Scales, one code path (the run layer supplies the model, the samples and the output folder):
- toy (default): the trained toy LLaVA (checkpoints/toy-llava) on ToyWorld's test split (calibration on its
  val split); artifacts in figures/sparsevlm/.
- paper: `--scale paper --model-path <llava-hf folder> --data-root <LLaVA playground/data/eval>` (or SCALE,
  MODEL_PATH, DATA_ROOT): LLaVA-1.5 and the real benchmarks; artifacts in figures/sparsevlm/paper/. Budget
  calibration uses the first `n_calib` samples of each benchmark (token counts only, never answers). Every
  target checks its inputs first (`Run.require`), so a missing file stops it before any work.
Knobs of this paper: `Options` (`--set sparsevlm.calib_iters=5` ...); sizes: `--n`, `--n-calib`.
Predictions and calibrations are cached under the run's cache folder, so targets share work.

Settings common to every table: FastV prunes at K = layer 2 of 32 mapped to the model's depth
(`common.schedule.pruning_layer`) and keeps the NOMINAL budget from there (Table 4 treats FastV "192" as 192
tokens); ToMe merges the projected visual tokens before the LLM (layer 0; an alternative to merging inside
CLIP), so its nominal count is also its layer average; other registered budget baselines (e.g. random) run at
their registry defaults; SparseVLM (official mode) is calibrated per benchmark so its visual tokens AVERAGED
OVER LAYERS (merged tokens included, counted at each layer's input) match the budget. Every table prints the
achieved layer-averaged count of every method.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib.patches
import numpy as np
import torch
from matplotlib import cm
from PIL import Image

from common.data.sample import Sample
from common.data.toyworld import TEMPLATES
from common.data.toyworld_render import Scene
from common.evaluation import EvalResult
from common.factory import budget_methods, make_reducer
from common.flops import DecoderDims, kv_cache_bytes_per_token, schedule_flops
from common.metrics import consistency
from common.models.load import DEFAULT_CHECKPOINTS
from common.plots import new_figure, plot_token_mask
from common.reduction import BuildTarget, Reducer, reduce_tokens
from common.run import Run, nanmean, target
from common.schedule import PAPER_BUDGETS, PAPER_VISUAL, Budget, pruning_layer
from papers.sparsevlm import reported as R
from papers.sparsevlm.method import SampleTrace, SparseVLM, resolve_score_layers, traces

SCALES = ("toy", "paper")
TOY_CHECKPOINT = DEFAULT_CHECKPOINTS["toy"]
NO_MINI = ("mini scale: easy-vqa has no stand-ins for SparseVLM's benchmarks (`make mini-report` runs SparseVLM "
           "against the baselines there)")
MAX_NEW_TOKENS = {"caption": 48, "default": 8}
N_TOY = 60  # samples per family at toy scale (a question moves a family's accuracy by ~1.7 points)
CONB = "conb"  # ConBench stand-in: agreement of answers to 3 rephrasings (toy only)
CONB_FAMILIES = ("gqa", "pope", "textvqa", "count", "scene", "mc")
VANILLA = "vanilla"
LABELS = {VANILLA: "Vanilla", "tome": "ToMe", "fastv": "FastV", "sparsevlm": "SparseVLM"}  # the paper's names
PAPER_ORDER = ("tome", "fastv")  # the paper's baselines come first, others of the registry after them
BASELINE_OPTIONS = {"tome": {"layer": 0}}  # the paper's settings that differ from a method's registry default


@dataclass(frozen=True)
class Options:
    """SparseVLM's own knobs (`--set sparsevlm.<name>=<value>`).

    n_conb: rephrase groups per family for the ConB column (3 phrasings each; toy scale).
    calib_iters: bisection steps of each budget calibration.
    repeats: timed repeats per sample in Table 4 (median; one untimed warm-up before them).
    latency_samples: samples of Table 4's latency, KV and FLOPs measurements (batch 1).
    new_tokens: generated tokens in Table 4's total latency.
    fig4_budgets: Fig. 4's budgets (paper tokens of 576).
    """

    n_conb: int = 10
    calib_iters: int = 10
    repeats: int = 5
    latency_samples: int = 4
    new_tokens: int = 16
    fig4_budgets: tuple[int, ...] = (448, 320, 192, 128, 64)


@dataclass(frozen=True)
class Column:
    """A column of Table 1: the paper's benchmark and the family that stands in for it at this scale."""

    paper: str
    family: str | None


TOY_COLUMNS = (Column("GQA", "gqa"), Column("MMB", "mc"), Column("MME", "count"), Column("POPE", "pope"),
               Column("SQA", "mc"), Column("VQAv2", "scene"), Column("TextVQA", "textvqa"), Column("ConB", CONB))
PAPER_COLUMNS = (Column("GQA", "gqa"), Column("MMB", "mmb"), Column("MME", "mme"), Column("POPE", "pope"),
                 Column("SQA", "sqa"), Column("VQAv2", "vqav2"), Column("TextVQA", "textvqa"), Column("ConB", None))
TOY_MIRRORS = {"gqa": "attribute/relation questions", "mc": "multiple choice (MMB and SQA share it)",
               "count": "counting (fine-grained perception, like MME's count/existence subtasks)",
               "pope": "object existence, random/popular/adversarial negatives",
               "scene": "open scene questions (VQAv2-like)", "textvqa": "reading digit tiles",
               "conb": "agreement of answers to 3 rephrasings (ConBench-like)", "video": "3-frame clips"}
NO_CONB = "ConB: no ConBench loader (its ConScore needs a GPT judge), so the column is empty at paper scale"


# ------------------------------------------------------------------------------------------------ data
def columns(run: Run) -> tuple[Column, ...]:
    """Table 1's columns at this scale; a family left out by `--benchmarks` gives an empty column."""
    cols = TOY_COLUMNS if run.scale == "toy" else PAPER_COLUMNS
    fams = run.families([c.family for c in cols if c.family is not None])
    return tuple(c if c.family in fams else Column(c.paper, None) for c in cols)


def table_families(run: Run) -> list[str]:
    """The distinct families behind Table 1's columns."""
    return list(dict.fromkeys(c.family for c in columns(run) if c.family is not None))


def require(run: Run, families: Sequence[str]) -> None:
    """`Run.require` for families (ConB stands for the ToyWorld families it rephrases)."""
    fams = [f for fam in families for f in (CONB_FAMILIES if fam == CONB else (fam,))]
    run.require(list(dict.fromkeys(fams)))


def family_samples(run: Run, family: str, split: str = "test") -> list[Sample]:
    """The samples of a family (`Run.samples`): `n` per family (toy default 60, paper all), `n_calib` of the
    "val" split (calibration), and for ConB `n_conb` rephrase groups of 3 per ToyWorld family."""
    calib = split == "val"
    if family == CONB:
        n = max(1, run.cfg.n_calib // (3 * len(CONB_FAMILIES))) if calib else run.options(Options).n_conb
        return run.samples(CONB_FAMILIES, split, n=n, seed=run.cfg.seed + 1, rephrasings=3)
    return run.samples([family], split, n=run.cfg.n_calib if calib else run.n(N_TOY))


def load_families(run: Run, families: Sequence[str]) -> dict[str, list[Sample]]:
    """{family: test samples}, read once per artifact."""
    return {f: family_samples(run, f) for f in dict.fromkeys(families)}


def family_score(samples: Sequence[Sample], family: str, res: EvalResult) -> float:
    """The headline number of a family: consistency for ConB, MME's total, else `score` (mean over parts)."""
    if family == CONB:
        return consistency(samples, res.predictions)["consistency"]
    if family == "mme":
        m = res.metrics["mme"]
        return m.get("perception", 0.0) + m.get("cognition", 0.0) if "perception" in m else m["score"]
    fams = list(res.metrics)
    return float(res.metrics[fams[0]]["score"]) if len(fams) == 1 else float(
        np.mean([res.metrics[f]["score"] for f in fams]))


def evaluate(run: Run, samples: Sequence[Sample], reducer: Reducer | None) -> EvalResult:
    """`run.evaluate` at SparseVLM's answer lengths."""
    return run.evaluate(samples, reducer, max_new_tokens=MAX_NEW_TOKENS)


# --------------------------------------------------------------------------------------------- methods
def build_target(run: Run, family: str) -> BuildTarget:
    """What a reducer may know of the model, with `family`'s calibration samples (SparseVLM's budget)."""
    if family != CONB:
        return run.build_target(calibrate_on=family)
    return run.build_target(calibrate_on=family_samples(run, CONB, "val"))  # a composite set: its own samples


def table_methods() -> list[str]:
    """Table 1's methods after vanilla: every registered budget method (`common.factory.budget_methods`), the
    paper's baselines first and SparseVLM last."""
    others = [m for m in budget_methods() if m != "sparsevlm"]
    return [m for m in PAPER_ORDER if m in others] + [m for m in others if m not in PAPER_ORDER] + ["sparsevlm"]


def method_reducer(run: Run, method: str, budget: int | float, family: str, *, of: int = PAPER_VISUAL,
                   **options: Any) -> tuple[Reducer | None, str]:
    """(reducer, note) of a method at a paper budget (`budget` of `of` tokens), SparseVLM calibrated on
    `family` (as the official scripts tune (scale, bias) per benchmark; the baselines need no data)."""
    if method == VANILLA:
        return None, ""
    opts = {**BASELINE_OPTIONS.get(method, {}), **options}
    if method == "sparsevlm":
        opts.setdefault("calib_iters", run.options(Options).calib_iters)
    tgt = build_target(run, family) if method == "sparsevlm" else run.build_target()
    red = make_reducer(method, Budget.paper(budget, of), tgt, **opts)
    return red, method_note(red)


def method_note(red: Reducer) -> str:
    """How a table row names a method's setting."""
    if isinstance(red, SparseVLM):
        cal = red.calibration
        return f"{cal.knob}={cal.value:.3g}" + ("" if cal.feasible else " (unreachable)")
    if red.name == "tome" and red.layers == (0,):
        return "merge before the LLM"
    if red.name == "fastv":
        return f"K={red.K}, nominal"
    return ""


def equivalent(run: Run, results: Sequence[EvalResult]) -> tuple[float, float]:
    """(model tokens, paper-equivalent tokens of 576) per image, layer-averaged, over `results`."""
    toy = float(np.mean([r.visual_tokens / (r.visual_tokens_full / run.n_visual) for r in results]))
    return toy, toy / run.n_visual * PAPER_VISUAL


def _pct(x: float, ref: float) -> float:
    return 100.0 * x / ref if ref and not math.isnan(ref) and not math.isnan(x) else math.nan


def describe(run: Run, **extra: Any) -> dict[str, Any]:
    """The sidecar of an artifact, with the settings every SparseVLM table shares."""
    return run.provenance({"fastv_K": pruning_layer(run.n_layers),
                           "sparsevlm_score_layers": list(resolve_score_layers(run.n_layers)),
                           "options": dataclasses.asdict(run.options(Options)), **extra})


# ---------------------------------------------------------------------------------------------- Table 1
def table1_scores(run: Run, samples: dict[str, list[Sample]], method: str, budget: int) -> dict[str, Any]:
    """Per-family scores, layer-averaged tokens and a note of one Table 1 method at one budget."""
    scores, results, notes = {}, [], []
    for fam, fam_samples in samples.items():
        reducer, note = method_reducer(run, method, budget, fam)
        res = evaluate(run, fam_samples, reducer)
        scores[fam] = family_score(fam_samples, fam, res)
        results.append(res)
        if note and note not in notes:
            notes.append(note if method != "sparsevlm" else f"{fam}: {note}")
    toy, paper = equivalent(run, results)
    return {"scores": scores, "toy_tokens": toy, "paper_tokens": paper, "note": "; ".join(notes)}


def paper_cells(label: str, budget: int, table: dict, bench: Sequence[str]) -> dict[str, Any]:
    """The paper's printed values of a row (empty for a method the paper does not report)."""
    vals = table.get((label, budget))
    return dict(zip(bench, vals)) if vals is not None else {}


@target("sparsevlm-table1", paper="sparsevlm", scales=SCALES, checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def table1(run: Run) -> dict[str, Path]:
    """`make sparsevlm-table1`: vanilla, every budget baseline and SparseVLM at 192/128/64 tokens."""
    cols = columns(run)
    fams = table_families(run)
    require(run, fams)
    samples = load_families(run, fams)
    bench = [c.paper for c in cols]
    rows, ours = [], {}
    configs = [(VANILLA, PAPER_VISUAL)] + [(m, b) for b in PAPER_BUDGETS for m in table_methods()]
    for method, budget in configs:
        print(f"[sparsevlm-table1] {method} {budget}", flush=True)
        ours[(method, budget)] = table1_scores(run, samples, method, budget)
    van = ours[(VANILLA, PAPER_VISUAL)]["scores"]
    for method, budget in configs:
        o = ours[(method, budget)]
        label = LABELS.get(method, method)
        raw = {c.paper: (o["scores"][c.family] if c.family else math.nan) for c in cols}
        pct = {c.paper: (_pct(o["scores"][c.family], van[c.family]) if c.family else math.nan) for c in cols}
        avg = nanmean([_pct(o["scores"][f], van[f]) for f in fams])
        base = {"tokens": budget, "method": label}
        printed = (label, budget) in R.TABLE1_RAW
        rows.append({**base, "source": "paper", "row": "raw", **paper_cells(label, budget, R.TABLE1_RAW, bench),
                     "avg %": R.TABLE1_AVG.get((label, budget)), "equiv. tokens (of 576)": budget if printed else None,
                     "note": "LLaVA-1.5-7B" if printed else "not in the paper"})
        rows.append({**base, "source": "paper", "row": "% vanilla", **paper_cells(label, budget, R.TABLE1_PCT, bench)})
        rows.append({**base, "source": "ours", "row": "raw", **raw, "avg %": avg,
                     "equiv. tokens (of 576)": o["paper_tokens"], "toy tokens": o["toy_tokens"], "note": o["note"]})
        rows.append({**base, "source": "ours", "row": "% vanilla", **pct})
        o["avg_pct"] = avg
    claims = {}
    for b in PAPER_BUDGETS:
        s, f, t = (ours[(m, b)]["avg_pct"] for m in ("sparsevlm", "fastv", "tome"))
        best_paper = max(R.TABLE1_AVG[("FastV", b)], R.TABLE1_AVG[("ToMe", b)])
        claims[f"{b}: SparseVLM avg % (paper {R.TABLE1_AVG[('SparseVLM', b)]})"] = s
        claims[f"{b}: SparseVLM - best baseline (paper {R.TABLE1_AVG[('SparseVLM', b)] - best_paper:.1f})"] = s - max(f, t)
    mirrors = "; ".join(f"{c.paper}={c.family}" for c in cols)
    note = "" if run.scale == "toy" else f"; {NO_CONB}"
    title = run.title("SparseVLM Table 1: accuracy at 576/192/128/64 visual tokens, paper (LLaVA-1.5-7B) beside "
                      f"ours; raw and % of vanilla; columns mirror: {mirrors}; avg % over distinct families{note}")
    prov = describe(run, mirrors=TOY_MIRRORS if run.scale == "toy" else None, methods=table_methods())
    prov["claims"] = claims
    prov["results"] = {f"{LABELS.get(m, m)} {b}": v for (m, b), v in ours.items()}
    cols_out = ["tokens", "method", "source", "row", *bench, "avg %", "equiv. tokens (of 576)", "toy tokens", "note"]
    return run.write_table("table1", rows, title=title, columns=cols_out, provenance=prov, float_format=".1f")


# ---------------------------------------------------------------------------------------------- Table 2
@target("sparsevlm-table2", paper="sparsevlm", scales=("toy",), checkpoint=TOY_CHECKPOINT,
        why_not="paper scale: needs Video-LLaVA (not an llava-hf LLaVA-1.5 folder), loaders for the TGIF, MSVD, "
                "MSRVTT and ActivityNet video QA files (none exist yet) and a GPT-3.5 judge for the scores; "
                "mini scale: easy-vqa has no video")
def table2(run: Run) -> dict[str, Path]:
    """`make sparsevlm-table2`: video QA, vanilla vs FastV vs SparseVLM at 93.4% pruning (135 of 2048)."""
    require(run, ["video"])
    samples = family_samples(run, "video")
    total, keep = R.TABLE2_TOKENS
    methods = {"Video-LLaVA": (None, ""), "FastV": method_reducer(run, "fastv", keep, "video", of=total),
               "SparseVLM": method_reducer(run, "sparsevlm", keep, "video", of=total)}
    res = {m: evaluate(run, samples, r) for m, (r, _) in methods.items()}
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
        toy, _ = equivalent(run, [res[m]])
        frames = res[m].visual_tokens_full / run.n_visual
        rows.append({"method": row["method"], "source": "ours", "ToyWorld video acc": acc[m],
                     "avg acc %": _pct(acc[m], acc["Video-LLaVA"]), "equiv. tokens": toy * frames,
                     "of": res[m].visual_tokens_full})
    cols = ["method", "source", *[f"{b} {k}" for b in R.TABLE2_BENCHMARKS for k in ("acc", "score")],
            "ToyWorld video acc", "avg acc %", "avg score delta", "equiv. tokens", "of"]
    title = run.title("SparseVLM Table 2: video QA at 93.4% pruning (paper: Video-LLaVA, 2048 -> 135 tokens, "
                      "GPT-3.5 judge; ours: ToyWorld 3-frame clips, exact-match accuracy, no judge score)")
    cal = methods["SparseVLM"][0].calibration
    prov = describe(run, calibrated_scale=cal.value, feasible=cal.feasible)
    prov["claims"] = {"SparseVLM % of vanilla (paper 86.5)": _pct(acc["SparseVLM"], acc["Video-LLaVA"]),
                      "FastV % of vanilla (paper 52.1)": _pct(acc["FastV"], acc["Video-LLaVA"])}
    return run.write_table("table2", rows, title=title, columns=cols, provenance=prov, float_format=".2f")


# ---------------------------------------------------------------------------------------------- Table 3
TABLE3_FAMILIES = (("TextVQA", "textvqa"), ("POPE", "pope"))


@target("sparsevlm-table3", paper="sparsevlm", scales=SCALES, checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def table3(run: Run) -> dict[str, Path]:
    """`make sparsevlm-table3`: token recycling (TR) on/off at 64/96/128/192 tokens, TextVQA and POPE."""
    require(run, [fam for _, fam in TABLE3_FAMILIES])
    rows, claims = [], {}
    for bench, fam in TABLE3_FAMILIES:
        samples = family_samples(run, fam)
        vals: dict[bool, list[float]] = {False: [], True: []}
        toks: dict[bool, list[float]] = {False: [], True: []}
        for b in R.TABLE3_TOKENS:
            red, _ = method_reducer(run, "sparsevlm", b, fam)
            for tr in (False, True):
                res = evaluate(run, samples, red if tr else red.with_(recycle=False))  # same knob, TR off
                vals[tr].append(family_score(samples, fam, res))
                toks[tr].append(equivalent(run, [res])[1])
        for tr in (False, True):
            label = f"{bench}" + (" + TR" if tr else "")
            paper = R.TABLE3[(bench, tr)]
            rows.append({"benchmark": label, "source": "paper", **{str(t): v for t, v in zip(R.TABLE3_TOKENS, paper)},
                         "avg": R.TABLE3_AVG[(bench, tr)]})
            rows.append({"benchmark": label, "source": f"ours ({fam})",
                         **{str(t): v for t, v in zip(R.TABLE3_TOKENS, vals[tr])}, "avg": float(np.mean(vals[tr])),
                         "equiv. tokens (of 576)": " / ".join(f"{x:.0f}" for x in toks[tr])})
        gains = [a - b for a, b in zip(vals[True], vals[False])]
        rows.append({"benchmark": f"{bench} TR gain", "source": "ours", **{str(t): g for t, g in zip(R.TABLE3_TOKENS, gains)},
                     "avg": float(np.mean(gains))})
        pg = [a - b for a, b in zip(R.TABLE3[(bench, True)], R.TABLE3[(bench, False)])]
        rows.append({"benchmark": f"{bench} TR gain", "source": "paper", **{str(t): g for t, g in zip(R.TABLE3_TOKENS, pg)},
                     "avg": R.TABLE3_AVG[(bench, True)] - R.TABLE3_AVG[(bench, False)]})
        claims[f"{bench}: TR gain at 64/96/128/192 (paper {pg})"] = gains
    cols = ["benchmark", "source", *[str(t) for t in R.TABLE3_TOKENS], "avg", "equiv. tokens (of 576)"]
    title = run.title("SparseVLM Table 3: token recycling (TR) on/off; budgets are layer-averaged tokens of 576, "
                      "calibrated with TR; w/o TR reuses the same lambda (its count has no merged tokens)")
    prov = describe(run)
    prov["claims"] = claims
    return run.write_table("table3", rows, title=title, columns=cols, provenance=prov, float_format=".1f")


# ---------------------------------------------------------------------------------------------- Table 4
def efficiency(run: Run, reducer: Reducer | None, samples: Sequence[Sample], opts: Options) -> dict[str, float]:
    """Median prefill and total (prefill + `new_tokens` greedy steps) latency in ms (`run.timer`: CUDA
    synchronised), KV cache and FLOPs of one sample at a time (batch 1, the paper's setting), averaged."""
    model = run.vlm.model
    dims = DecoderDims.from_config(model.config)
    n_new = opts.new_tokens
    pre, tot, kv, kv_vis, flops, vis = [], [], [], [], [], []
    for s in samples:
        inputs = run.batches([s])[0]
        with torch.no_grad(), reduce_tokens(model, reducer, image_token_id=run.vlm.image_token_id) as st:
            pre.append(1e3 * run.timer.median(lambda: model(**inputs), opts.repeats))
            tot.append(1e3 * run.timer.median(lambda: model.generate(**inputs, max_new_tokens=n_new,
                                                                     min_new_tokens=n_new, do_sample=False),
                                              opts.repeats))
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
        cache = out.past_key_values
        kv.append(sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                      for layer in cache.layers) / 1e6)
        L = int(inputs["input_ids"].shape[1])
        n_vis = int((inputs["input_ids"] == run.vlm.image_token_id).sum())
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


TABLE4_SETUPS = {"Baseline": (VANILLA, PAPER_VISUAL), "FastV": ("fastv", 192), "SparseVLM": ("sparsevlm", 64)}


@target("sparsevlm-table4", paper="sparsevlm", scales=SCALES, checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def table4(run: Run) -> dict[str, Path]:
    """`make sparsevlm-table4`: KV-cache memory, measured latency (median of repeats, on `run.timer`'s device)
    and FLOPs for vanilla, FastV at 192 and SparseVLM at 64; accuracy as % of vanilla from Table 1's runs."""
    fams = table_families(run)
    require(run, fams)
    opts = run.options(Options)
    samples = load_families(run, fams)
    fam = "gqa" if "gqa" in samples else fams[0]
    timed = samples[fam][:opts.latency_samples]
    acc, eff = {}, {}
    for name, (method, budget) in TABLE4_SETUPS.items():
        print(f"[sparsevlm-table4] {name}", flush=True)
        acc[name] = table1_scores(run, samples, method, budget)
        reducer, _ = method_reducer(run, method, budget, fam)
        eff[name] = efficiency(run, reducer, timed, opts)
    van = acc["Baseline"]["scores"]
    rows = []
    base = eff["Baseline"]
    unit, scale_f = ("T", 1e-3) if base["gmacs"] >= 1e3 else (("G", 1.0) if base["gmacs"] >= 1 else ("M", 1e3))
    device = run.timer.label
    for name in TABLE4_SETUPS:
        p = R.TABLE4[name]
        rows.append({"method": name, "source": "paper (A100, LLaVA-7B)", "tokens": p["tokens"], "acc %": p["acc_pct"],
                     "KV memory (MB)": p["storage_mb"], "KV red. %": p["storage_red_pct"], "prefill (ms)": None,
                     "total (ms)": p["cuda_ms"], "time red. %": p["cuda_red_pct"], "FLOPs": p["tflops"],
                     "FLOPs unit": "T (printed)", "FLOPs red. %": p["flops_red_pct"]})
        e = eff[name]
        a = nanmean([_pct(acc[name]["scores"][f], van[f]) for f in fams])

        def cut(k: str) -> float | None:  # reduction against the baseline, %
            return None if name == "Baseline" else 100 * (1 - e[k] / base[k])

        rows.append({"method": name, "source": f"ours ({run.scale}, {device}, batch 1)", "tokens": e["visual_tokens"],
                     "acc %": a, "KV memory (MB)": e["kv_visual_mb"], "KV red. %": cut("kv_visual_mb"),
                     "prefill (ms)": e["prefill_ms"], "total (ms)": e["total_ms"], "time red. %": cut("total_ms"),
                     "FLOPs": e["gmacs"] * scale_f, "FLOPs unit": f"{unit} MACs (3ndm, whole prompt)",
                     "FLOPs red. %": cut("gmacs"), "prefill red. %": cut("prefill_ms"), "KV total (MB)": e["kv_mb"]})
    cols = ["method", "source", "tokens", "acc %", "KV memory (MB)", "KV red. %", "prefill (ms)", "prefill red. %",
            "total (ms)", "time red. %", "FLOPs", "FLOPs unit", "FLOPs red. %", "KV total (MB)"]
    title = run.title("SparseVLM Table 4: efficiency (paper: A100 CUDA time, KV of the visual tokens at nominal "
                      f"counts; ours: {device}, median of repeated runs, KV of the visual tokens over layers as "
                      "processed, FLOPs = sum over layers of 4nd^2 + 2n^2d + 3ndm MACs with n the whole prompt; "
                      "tokens = layer-averaged visual tokens at this scale)")
    prov = describe(run, latency_samples=[s.id for s in timed], new_tokens=opts.new_tokens,
                    threads=torch.get_num_threads(), timer=device)
    prov["measurements"] = eff
    return run.write_table("table4", rows, title=title, columns=cols, provenance=prov, float_format=".2f")


# ---------------------------------------------------------------------------------------------- figures
def prefill_trace(run: Run, samples: Sequence[Sample], reducer: SparseVLM, generate: bool = False):
    """Run `reducer` on `samples` (one batch); returns (kept per layer, traces, answers or None, inputs)."""
    batches = run.batches(samples)
    if len(batches) != 1:
        raise ValueError(f"samples: at most one batch ({run.cfg.batch_size}), got {len(samples)}")
    inputs = batches[0]
    model = run.vlm.model
    with torch.no_grad(), reduce_tokens(model, reducer, image_token_id=run.vlm.image_token_id) as st:
        if generate:
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS["default"], do_sample=False)
            answers = run.vlm.decode(out[:, inputs["input_ids"].shape[1]:])
        else:
            model(**inputs)
            answers = None
    kept = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
    return kept, traces(st), answers, inputs


def rater_words(run: Run, inputs: dict, trace: Sequence[SampleTrace], b: int) -> list[tuple[str, float, bool]]:
    """(token text, relevance R, is rater) of sample b's instruction tokens."""
    tr = trace[b]
    ids = inputs["input_ids"][b, tr.instruction_positions.to(inputs["input_ids"].device)]
    words = [run.vlm.decode(ids[i:i + 1].view(1, 1).cpu())[0] for i in range(ids.numel())]
    rat = set(tr.raters.tolist()) if tr.raters is not None else set()
    R_ = tr.relevance.tolist() if tr.relevance is not None else [0.0] * len(words)
    return [(w, r, i in rat) for i, (w, r) in enumerate(zip(words, R_))]


def _draw_words(ax, words: list[tuple[str, float, bool]], title: str = "", y: float = 0.5) -> None:
    """Words left to right, shaded by relevance (darker = more relevant), raters framed in red."""
    ax.set_axis_off()
    vals = np.array([w[1] for w in words]) if words else np.zeros(1)
    lo, hi = float(vals.min()), float(vals.max())
    x = 0.01
    renderer = ax.figure.canvas.get_renderer()
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


def first_samples(run: Run, families: Sequence[str], k: int = 1) -> list[Sample]:
    """The first `k` test samples of each family (the same ones whatever `n` is)."""
    require(run, families)
    return [s for f in families for s in run.samples([f], n=k)]


FIG_FAMILIES = {"toy": ("gqa", "pope", "textvqa", "mc"), "paper": ("gqa", "pope", "textvqa", "mmb")}


@target("sparsevlm-fig3", paper="sparsevlm", scales=SCALES, kind="figure", checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def fig3(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig3`: per-word relevance R (Eq. 7) of sample prompts; darker = more visual relevance,
    red frame = rater (R above the mean)."""
    samples = first_samples(run, FIG_FAMILIES[run.scale])
    _, trace, _, inputs = prefill_trace(run, samples, SparseVLM())
    fig, axes = new_figure(len(samples), 1, width=7.5, height=0.75 * len(samples) + 0.5, squeeze=False)
    data = []
    for b, s in enumerate(samples):
        words = rater_words(run, inputs, trace, b)
        _draw_words(axes[b][0], words, f"({b + 1}) {s.family}")
        data.append({"id": s.id, "words": [{"token": w, "R": r, "rater": rr} for w, r, rr in words]})
    fig.suptitle(f"SparseVLM Fig. 3 at {run.scale} scale: text relevance R per prompt token (darker = more visual "
                 f"relevance; red frame = rater)", fontsize=9)
    prov = describe(run)
    prov["data"] = data
    return run.save_figure("fig3", fig, provenance=prov)


@target("sparsevlm-fig4", paper="sparsevlm", scales=SCALES, kind="figure", checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def fig4(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig4`: accuracy vs kept tokens for ToMe, FastV and SparseVLM on POPE/TextVQA/GQA.

    The paper uses Mini-Gemini as a second model family; none is available here, so the figure is drawn for
    the run's model only (the title says so)."""
    fams = (("POPE", "pope"), ("TextVQA", "textvqa"), ("GQA", "gqa"))
    require(run, [f for _, f in fams])
    budgets = tuple(run.options(Options).fig4_budgets)
    data: dict[str, dict[str, Any]] = {}
    fig, axes = new_figure(1, 3, width=9.0, height=3.0, squeeze=False)
    for ax, (bench, fam) in zip(axes[0], fams):
        samples = family_samples(run, fam)
        van = family_score(samples, fam, evaluate(run, samples, None))
        d: dict[str, Any] = {"vanilla": van}
        for method in ("tome", "fastv", "sparsevlm"):
            xs, ys = [], []
            for b in budgets:
                res = evaluate(run, samples, method_reducer(run, method, b, fam)[0])
                xs.append(equivalent(run, [res])[1])
                ys.append(family_score(samples, fam, res))
            ax.plot(xs, ys, marker="o", label=LABELS[method])
            d[LABELS[method]] = list(zip(budgets, xs, ys))
        ax.axhline(van, color="gray", ls="--", label="vanilla (576)")
        ax.set_xlim(600, 0)
        ax.set_xlabel("visual tokens (layer average, of 576)")
        ax.set_title(bench + f" ({fam})")
        data[bench] = d
    axes[0][0].set_ylabel("score (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"SparseVLM Fig. 4 stand-in at {run.scale} scale: {run.identity.model} only (no second model "
                 f"family available; the paper uses Mini-Gemini)", fontsize=9)
    prov = describe(run, note="no second model family available: the main model only")
    prov["data"] = data
    gaps = {bench: [s[2] - f[2] for s, f in zip(d["SparseVLM"], d["FastV"])] for bench, d in data.items()}
    prov["claims"] = {"SparseVLM - FastV per budget (paper: +10.2 to +21.6)": gaps}
    return run.save_figure("fig4", fig, provenance=prov)


@target("sparsevlm-fig5", paper="sparsevlm", scales=SCALES, kind="figure", checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def fig5(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig5`: rater ablation at 142 layer-averaged tokens: significance from the attention of
    all tokens, all text tokens, or the selected raters; the same kept counts in all three (from the raters'
    rank), so only WHICH tokens are kept differs."""
    variants = (("all tokens", "all"), ("text only", "text"), ("raters", "raters"))
    fams = (("TextVQA", "textvqa"), ("POPE", "pope"))
    require(run, [f for _, f in fams])
    samples = load_families(run, [f for _, f in fams])
    data: dict[str, dict[str, float]] = {}
    for label, rows in variants:
        data[label] = {}
        for bench, fam in fams:
            # one calibration: the count comes from the raters' P in every variant (method.py, `rater_rows`)
            red, _ = method_reducer(run, "sparsevlm", R.FIG5_TOKENS, fam)
            res = evaluate(run, samples[fam], red.with_(rater_rows=rows))
            data[label][bench] = family_score(samples[fam], fam, res)
            data[label][f"{bench} scale"] = red.calibration.value
            data[label][f"{bench} tokens"] = equivalent(run, [res])[1]
    fig, axes = new_figure(1, 2, width=7.0, height=2.8, squeeze=False)
    for ax, (bench, _) in zip(axes[0], fams):
        vals = [data[l][bench] for l, _ in variants]
        ax.bar([l for l, _ in variants], vals, color=["#bbbbbb", "#88aadd", "#2255aa"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(max(0, min(vals) - 10), max(vals) + 5)
        ax.set_title(bench)
    axes[0][0].set_ylabel("score (%)")
    fig.suptitle(f"SparseVLM Fig. 5 at {run.scale} scale: rater ablation at {R.FIG5_TOKENS} layer-averaged tokens "
                 f"of 576 ({run.identity.model})", fontsize=9)
    prov = describe(run)
    prov["data"] = data
    prov["claims"] = {
        "TextVQA raters - text only (paper +0.79)": data["raters"]["TextVQA"] - data["text only"]["TextVQA"],
        "POPE raters - all tokens (paper +4.3)": data["raters"]["POPE"] - data["all tokens"]["POPE"],
        "POPE text only - all tokens": data["text only"]["POPE"] - data["all tokens"]["POPE"],
    }
    return run.save_figure("fig5", fig, provenance=prov)


def _grid(n: int) -> int:
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise ValueError(f"n_visual: {n} visual tokens do not form a square grid")
    return g


def mask_panels(run: Run, items: Sequence[tuple[Sample, SparseVLM]], name: str, title: str) -> dict[str, Path]:
    """Figs. 6/8: per (sample, reducer), the image and its kept tokens after each pruning layer, the prompt with
    raters framed in red, and the generated answer (green). Merged (recycled) tokens have no single place on
    the image; panel titles count them."""
    runs = [(s, red, *prefill_trace(run, [s], red, generate=True)) for s, red in items]
    g = _grid(run.n_visual)
    ncol = 1 + max(len([l for l in kept if l - 1 in red.score_layers]) for _, red, kept, *_ in runs)
    fig, axes = new_figure(2 * len(runs), ncol, width=max(6.0, 1.9 * ncol), height=2.6 * len(runs),
                           squeeze=False, gridspec_kw={"height_ratios": [4, 1.2] * len(runs)})
    gs = axes[0][0].get_gridspec()
    data = []
    for i, (s, red, kept, trace, answers, inputs) in enumerate(runs):
        ax_img = axes[2 * i]
        for a in axes[2 * i + 1]:
            a.remove()
        ax_txt = fig.add_subplot(gs[2 * i + 1, :])
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
        words = rater_words(run, inputs, trace, 0)
        _draw_words(ax_txt, words, y=0.75)
        ax_txt.text(0.01, 0.1, f"answer: {answers[0]}   (reference: {s.answer})", color="green",
                    transform=ax_txt.transAxes, fontsize=9)
        data.append({"id": s.id, "question": s.question, "answer": answers[0], "reference": s.answer,
                     "raters": [w for w, _, r in words if r], "reducer": repr(red),
                     "kept": {str(l): kept[l][0].tolist() for l in layers}})
    fig.suptitle(title, fontsize=9)
    prov = describe(run)
    prov["data"] = data
    return run.save_figure(name, fig, provenance=prov)


def same_image_questions(sample: Sample) -> list[Sample]:
    """Two ToyWorld questions about one image (Fig. 1/6: the kept patches should follow the question):
    the colour of two different objects, named by their shapes (objects with a unique shape)."""
    objs = Scene.from_key(sample.meta["scene_key"]).objects
    shapes = [o.shape for o in objs]
    uniq = [o for o in objs if shapes.count(o.shape) == 1 and o.shape != "tile"]
    out = []
    for o in uniq[:2]:
        q = TEMPLATES["color_of"][0].format(shape=o.shape)
        out.append(Sample(id=f"{sample.id}-ask-{o.shape}", family="gqa", images=sample.images, question=q,
                          answer=o.color, meta={"scene_key": sample.meta["scene_key"]}))
    return out


def shared_image_pair(samples: Sequence[Sample]) -> list[Sample] | None:
    """The first two benchmark questions (different texts) about the same image file, or None."""
    seen: dict[str, Sample] = {}
    for s in samples:
        key = s.meta.get("image_file")
        if key is None:
            continue
        first = seen.setdefault(key, s)
        if first is not s and first.question != s.question:
            return [first, s]
    return None


FIG6_PAPER_FAMILIES = ("gqa", "textvqa", "pope")  # GQA asks many questions per image; TextVQA and POPE too
FIG6_POOL = 500  # benchmark questions searched for a shared image (paper scale, unless --n is set)


@target("sparsevlm-fig6", paper="sparsevlm", scales=SCALES, kind="figure", checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def fig6(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig6`: masks after each pruning layer for two questions about the same image, at 64.

    Toy: two colour questions about differently shaped objects of one ToyWorld scene. Paper: the first two
    questions of GQA (else TextVQA, POPE) that share an image file."""
    if run.scale == "toy":
        require(run, ["gqa"])
        fam = "gqa"
        pair = next((qs for qs in map(same_image_questions, family_samples(run, fam)) if len(qs) == 2), None)
    else:
        require(run, FIG6_PAPER_FAMILIES)
        pool = run.cfg.n or FIG6_POOL
        fam, pair = next(((f, p) for f in FIG6_PAPER_FAMILIES
                          if (p := shared_image_pair(run.samples([f], n=pool))) is not None), (None, None))
    if pair is None:
        raise ValueError("fig6: no two questions about one image among the samples searched; run with a larger --n")
    red, _ = method_reducer(run, "sparsevlm", 64, fam)
    return mask_panels(run, [(s, red) for s in pair], "fig6",
                       f"SparseVLM Fig. 6 at {run.scale} scale: kept visual tokens after each pruning layer (dark = "
                       f"pruned), same image, two questions ({fam}); budget 64 of 576 ({run.identity.model})")


@target("sparsevlm-fig8", paper="sparsevlm", scales=SCALES, kind="figure", checkpoint=TOY_CHECKPOINT, why_not=NO_MINI)
def fig8(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig8`: more mask visualisations (one sample per family) at the 64-token budget."""
    fams = ("gqa", "pope", "textvqa", "count") if run.scale == "toy" else ("gqa", "pope", "textvqa", "mme")
    items = [(s, method_reducer(run, "sparsevlm", 64, s.family)[0]) for s in first_samples(run, fams)]
    return mask_panels(run, items, "fig8",
                       f"SparseVLM Fig. 8 at {run.scale} scale: kept visual tokens after each pruning layer, one "
                       f"question per family; budget 64 of 576 ({run.identity.model})")


def grey_entropy(image) -> float:
    """Shannon entropy (bits) of the 8-bit grey-level histogram (Fig. 7's likely measure)."""
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


FIG7_FAMILIES = ("gqa", "pope", "textvqa", "count")


@target("sparsevlm-fig7", paper="sparsevlm", scales=("toy",), kind="figure", checkpoint=TOY_CHECKPOINT,
        why_not="paper scale: the question's region of interest comes from ToyWorld's scene description (the "
                "paper drew ROIs by hand; no benchmark file provides them); mini scale: the same")
def fig7(run: Run) -> dict[str, Path]:
    """`make sparsevlm-fig7`: visual vs textual redundancy: share of the prompt that rates (raters / text
    tokens), share of the image the question is about (ROI), share of visual tokens holding 80% of the raters'
    attention, and the grey-level entropy lost by 2x down-sampling (4x fewer tokens)."""
    require(run, FIG7_FAMILIES)
    samples = [s for f in FIG7_FAMILIES for s in family_samples(run, f)]
    red = SparseVLM()
    text_share, roi, attn = [], [], []
    bs = run.cfg.batch_size
    for i in range(0, len(samples), bs):
        chunk = samples[i:i + bs]
        _, trace, _, _ = prefill_trace(run, chunk, red)
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
            axes[0][0].add_patch(matplotlib.patches.Rectangle(
                (o.col * cell, o.row * cell), o.span * cell, o.span * cell, fill=False, ec="red", lw=2))
    axes[0][0].set_axis_off()
    axes[0][0].set_title(f"\"{ex.question}\" -> ROI {100 * roi_share(ex):.0f}% of the image", fontsize=8)
    parts = {"raters / text tokens": text_share, "ROI / image": roi, "tokens with 80% of\nrater attention": attn}
    axes[0][1].boxplot([np.array(v) * 100 for v in parts.values()], tick_labels=list(parts))
    axes[0][1].set_ylabel("% of the modality")
    axes[0][1].tick_params(axis="x", labelsize=7)
    summary = {k.replace("\n", " "): float(np.nanmean(v) * 100) for k, v in parts.items()}
    summary.update({"entropy original (bits)": float(np.mean(ent)), "entropy 2x down-sampled (bits)": float(np.mean(ent_ds)),
                    "tokens original": run.n_visual, "tokens down-sampled": run.n_visual // 4})
    axes[0][1].set_title(f"mean: text {summary['raters / text tokens']:.0f}%, ROI {summary['ROI / image']:.0f}%; "
                         f"entropy {summary['entropy original (bits)']:.2f} -> "
                         f"{summary['entropy 2x down-sampled (bits)']:.2f} bits", fontsize=8)
    fig.suptitle(f"SparseVLM Fig. 7 at {run.scale} scale: visual vs textual redundancy ({len(roi)} questions; paper: "
                 f"88% of the text highlighted, ROI 38% of the image)", fontsize=9)
    prov = describe(run)
    prov["summary"] = summary
    prov["paper"] = R.FIG7
    return run.save_figure("fig7", fig, provenance=prov)
