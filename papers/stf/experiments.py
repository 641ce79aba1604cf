"""LLaVA-STF's tables and figures at toy scale (`make stf-table1` ... `make stf-fig3`).

Model: the toy LLaVA (`checkpoints/toy-llava`: 3-block CLIP tower of width 128, 12 x 12 = 144 patch tokens,
8-layer Llama of width 128) with each projector variant trained by `papers.stf.train` into
`checkpoints/stf-<variant>/` (both stages, frozen tower). Data: ToyWorld test split, families gqa, pope, textvqa,
count, scene, mc, `N_PER_FAMILY` each, greedy answers scored by `common.metrics`. The paper's benchmarks
(LLaVA-1.5-7B on GQA ... VizWiz) cannot be run here: every table puts the paper's numbers beside ours, matched by
role (the baseline row beside LLaVA-1.5, MBTF+STF beside "ours", ...). Toy families mirror GQA (gqa), POPE (pope),
TextVQA (textvqa) and MMB/SQA (mc); the paper columns shown are those four and its 8-benchmark average.

A table needs its variants trained. Missing ones make it fail with the `make stf-train-<variant>` targets to run
(6-11 minutes each), unless STF_TRAIN_MISSING=1, which trains them here first. The Make targets of the tables
depend on their training targets, so `make stf-table3` from a fresh clone trains what it needs.
"""
from __future__ import annotations

import os
import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.artifacts import file_sha256, provenance, save_figure, write_table
from common.experiment import FIGURES, artifact
from common.data.tokenizer import build_tokenizer
from common.flops import stf_flops
from common.models.checkpoint import CARD, WEIGHTS, data_version
from common.models.toy import ToyConfig
from common.table_artifact import Table, table_artifact
from papers.stf import reported as R
from papers.stf.modules import STFConfig
from papers.stf.param_counts import LLAVA15, REFERENCE_PARAMS, count_params, meta_projector, structure
from papers.stf.train import (BASE_CHECKPOINT, EVAL_FAMILIES, LONG_STAGE2_STEPS, LONG_VARIANTS,
                              STFTrainConfig, checkpoint_dir, load_variant, long_dir, train_variant)

OUT = FIGURES / "stf"
FAMILIES = EVAL_FAMILIES
N_PER_FAMILY = 40
MAX_NEW_TOKENS = 8
# toy family -> paper benchmark it mirrors (DESIGN.md §5, common/data/toyworld.py)
MIRRORS = {"gqa": "GQA", "pope": "POPE", "textvqa": "VQAT", "mc": "MMB"}
SCALE_NOTE = ("toy scale: toy LLaVA (3-block CLIP 128-d, 12x12 patches, 8-layer Llama 128-d) + trained projector "
              "variants (checkpoints/stf-*), ToyWorld test split")
# the toy LLM (ToyConfig defaults) for the FLOPs column, 2 N_v P as the paper's calflops numbers (stf.md §7).
# The vocabulary is today's tokenizer's (123 words), one more than the base checkpoint's: 0.01% of the count.
_TOY = ToyConfig()
TOY_DIMS = {"num_hidden_layers": _TOY.text_layers, "hidden_size": _TOY.text_hidden,
            "intermediate_size": _TOY.text_intermediate,
            "vocab_size": len(build_tokenizer(data_version=1).get_vocab()), "num_attention_heads": _TOY.text_heads}

Scores = Mapping[str, float]  # family -> score (%)


# ------------------------------------------------------------------------------------------ variants
def missing_variants(names: Sequence[str]) -> list[str]:
    return [n for n in dict.fromkeys(names) if not (checkpoint_dir(n) / CARD).exists()]


def require_variants(target: str, names: Sequence[str]) -> None:
    """Train the missing variants (STF_TRAIN_MISSING=1) or fail naming the Make targets that train them."""
    missing = missing_variants(names)
    if not missing:
        return
    if os.environ.get("STF_TRAIN_MISSING") == "1":
        for n in missing:
            print(f"training missing variant {n} -> {checkpoint_dir(n)} ...", flush=True)
            train_variant(n)
        return
    targets = " ".join(f"stf-train-{n}" for n in missing)
    raise SystemExit(f"{target}: trained variants missing: {', '.join(missing)}. Run `make {targets}` "
                     f"(6-11 min each on 2 cores), or rerun with STF_TRAIN_MISSING=1 to train them here.")


@lru_cache(maxsize=1)
def test_samples(n_per_family: int = N_PER_FAMILY):
    from common.data.toyworld import toyworld_split

    return toyworld_split("test", n_per_family * len(FAMILIES), seed=0, families=FAMILIES,
                          version=data_version(BASE_CHECKPOINT))


def evaluate_variant(name: str, folder: Path | None = None):
    """(EvalResult, card) of a trained variant (default folder checkpoints/stf-<name>) on the test split (cached
    by checkpoint hash)."""
    from common.evaluation import evaluate
    from common.models.checkpoint import load_card

    folder = folder or checkpoint_dir(name)
    vlm = load_variant(folder)
    key = {"checkpoint": file_sha256(folder / WEIGHTS)}
    res = evaluate(vlm, test_samples(), batch_size=16, max_new_tokens=MAX_NEW_TOKENS, run_key=key, progress=False)
    return res, load_card(folder)


def family_scores(res) -> dict[str, float]:
    return {f: float(res.metrics[f]["score"]) for f in FAMILIES if f in res.metrics}


# ------------------------------------------------------------------------------------------ rows
def toy_cells(variant: str | None, scores: Mapping[str, Scores], tokens: Mapping[str, int]) -> dict[str, Any]:
    """Our columns for one toy variant: tokens, toy LLM GFLOPs over the vision tokens, family scores, mean."""
    if variant is None or variant not in scores:
        return {"toy variant": variant or "-"}
    sc = scores[variant]
    n = int(tokens[variant])
    row: dict[str, Any] = {"toy variant": variant, "toy tokens": n,
                           "toy LLM MFLOPs": round(stf_flops(n, TOY_DIMS) / 1e6, 2)}
    row.update({f: round(sc[f], 1) for f in FAMILIES if f in sc})
    row["toy mean"] = round(statistics.mean(sc[f] for f in FAMILIES if f in sc), 2)
    return row


def paper_cells(entry: tuple[float, R.Row] | None, printed_avg: float | None) -> dict[str, Any]:
    """The paper's columns: TFLOPs, the four mirrored benchmarks, printed average."""
    if entry is None:
        return {"paper TFLOPs": None}
    tflops, row = entry
    by = dict(zip(R.BENCHMARKS, row))
    cells: dict[str, Any] = {"paper TFLOPs": tflops}
    cells.update({f"paper {b}": by[b] for b in MIRRORS.values()})
    cells["paper Avg."] = printed_avg
    return cells


def comparison_rows(entries: Sequence[tuple[str, Any, str | None]], paper: Mapping[Any, tuple[float, R.Row]],
                    paper_avg: Mapping[Any, float], scores: Mapping[str, Scores],
                    tokens: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per (label, paper key, toy variant): our toy cells beside the paper's cells."""
    rows = []
    for label, key, variant in entries:
        rows.append({"method": label, **toy_cells(variant, scores, tokens),
                     **paper_cells(paper.get(key), paper_avg.get(key))})
    return rows


def columns() -> list[str]:
    return ["method", "toy variant", "toy tokens", "toy LLM MFLOPs", *FAMILIES, "toy mean", "paper TFLOPs",
            *[f"paper {b}" for b in MIRRORS.values()], "paper Avg."]


def _prov(target: str, config: dict, started: float, inputs: dict) -> dict:
    return provenance(command=f"make {target}", config={"scale": "toy", "n_per_family": N_PER_FAMILY, **config},
                      seeds={"data": 0}, inputs=inputs, started=started)


def collect(target: str, variants: Sequence[str],
            evaluator: Callable[[str], tuple[Any, dict]] | None = None):
    """Train-or-fail, evaluate every variant; (scores, tokens, results, input hashes)."""
    if evaluator is None:  # the real path; tests pass a fake evaluator
        require_variants(target, variants)
        evaluator = evaluate_variant
    scores, tokens, results, inputs = {}, {}, {}, {}
    for v in dict.fromkeys(variants):
        res, card = evaluator(v)
        scores[v], tokens[v], results[v] = family_scores(res), int(card["visual_tokens"]), res
        inputs[f"stf-{v}"] = card.get("weights_sha256")
    return scores, tokens, results, inputs


def collect_target(target: str, evaluator: Callable[[str], tuple[Any, dict]] | None, started: float, **config):
    """`collect` for the variants Make target `target` needs (`table_variants`), with the provenance of its
    files (config: the variants and `config`) in place of the input hashes: (scores, tokens, results, prov)."""
    variants = table_variants()[target]
    scores, tokens, results, inputs = collect(target, variants, evaluator)
    return scores, tokens, results, _prov(target, {"variants": variants, **config}, started, inputs)


def comparison(target: str, stem: str, title: str, entries, paper, paper_avg, started: float,
               evaluator: Callable[[str], tuple[Any, dict]] | None = None, out: Path | None = None) -> Table:
    """Our trained toy variants beside the paper's rows (`comparison_rows`), as the Table <out or OUT>/<stem>."""
    variants = [v for _, _, v in entries if v is not None]
    scores, tokens, _, inputs = collect(target, variants, evaluator)
    return Table(comparison_rows(entries, paper, paper_avg, scores, tokens), (out or OUT) / stem,
                 f"{title} | ours: {SCALE_NOTE}, {N_PER_FAMILY}/family | paper: {R.MODEL}",
                 _prov(target, {"variants": variants}, started, inputs), columns())


def comparison_table(target: str, stem: str, title: str, entries, paper, paper_avg,
                     evaluator: Callable[[str], tuple[Any, dict]] | None = None, out: Path | None = None) -> list[dict]:
    """Build and write one `comparison` now; its rows (tests pass a fake `evaluator` and a folder `out`)."""
    return comparison(target, stem, title, entries, paper, paper_avg, time.time(), evaluator, out).write()


# ------------------------------------------------------------------------------------------ Table 1
def toy_stf_config(cfg: ToyConfig = _TOY, **kw) -> STFConfig:
    """The MBTF + STF projector of the toy model (every tower block fused, as `papers.stf.train`)."""
    return STFConfig(vision_hidden=cfg.vision_hidden, llm_hidden=cfg.text_hidden, grid=(cfg.grid, cfg.grid),
                     num_vision_layers=cfg.vision_layers, num_blocks=cfg.vision_layers, **kw)


def table1_rows() -> tuple[list[dict], list[dict]]:
    """(structure rows, parameter/FLOPs rows) at LLaVA-1.5-7B size and toy size; no training."""
    paper = {(m, layer): (size, kern, stride, act) for m, layer, size, kern, stride, act in R.TABLE1}
    rows = []
    for scale, cfg in (("LLaVA-1.5-7B", LLAVA15), ("toy", toy_stf_config())):
        for r in structure(cfg):
            p = paper.get((r.module, r.layer)) if scale != "toy" else None
            rows.append({"scale": scale, "module": r.module, "layer": r.layer, "output size": r.output,
                         "kernel": r.kernel, "stride": r.stride, "act": r.act, "params": r.params,
                         "paper output size": p[0] if p else None, "paper kernel": p[1] if p else None,
                         "paper stride": p[2] if p else None, "paper act": p[3] if p else None})
    prows = []
    for scale, base in (("LLaVA-1.5-7B", LLAVA15), ("toy", toy_stf_config())):
        for variant in ("paper", "code"):
            for kind in ("mlp", "mbtf", "stf", "mbtf_stf"):
                cfg = STFConfig(**{**_fields(base), "kind": kind, "variant": variant, "blocks": None})
                proj = meta_projector(cfg)
                dims = "llava-1.5-7b" if scale != "toy" else TOY_DIMS
                ref = REFERENCE_PARAMS.get((kind, variant)) if scale != "toy" else None
                prows.append({"scale": scale, "kind": kind, "variant": variant, "tokens": cfg.num_tokens,
                              "params": count_params(proj), "params (rounded)": _rounded(count_params(proj)),
                              "stf.md §3.6 params": ref,
                              "LLM GFLOPs (2 N_v P)": round(stf_flops(cfg.num_tokens, dims) / 1e9, 3),
                              "paper TFLOPs": ({576: 7.6, 144: 1.9}.get(cfg.num_tokens) if scale != "toy" else None)})
    return rows, prows


def _rounded(n: int) -> str:
    """151019520 -> '151.0M' (the paper-scale figure), 33024 -> '33.0K'."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _fields(cfg: STFConfig) -> dict:
    return {k: getattr(cfg, k) for k in STFConfig.__dataclass_fields__}


@artifact("stf-table1")
def table1(scale: str = "toy", out: Path | None = None) -> None:
    """make stf-table1: MBTF / STF structures (Table 1) and parameter counts / TFLOPs; no training."""
    t0 = time.time()
    rows, prows = table1_rows()
    out = out or OUT
    prov = provenance(command="make stf-table1", config={"scale": "llava-1.5-7b and toy (shapes only)"}, started=t0)
    write_table(rows, out / "table1", title=f"LLaVA-STF Table 1: layer structure of MBTF and STF (k=2, E=1), ours "
                f"(papers.stf.modules, paper variant) at LLaVA-1.5-7B and toy size beside the paper's; "
                f"paper: {R.TABLE1_SOURCE}", provenance=prov)
    write_table(prows, out / "table1_params", title="Projector parameters and LLM TFLOPs over the vision tokens "
                "(stf.md §3.6, §7), paper and released-code variants; meta-device modules, no weights",
                provenance=prov)


# ------------------------------------------------------------------------------------------ Tables 2-5
T2 = [(label, label, {"LLaVA-1.5 (full tuning)": "baseline", "LLaVA-1.5 (AvgPool)": "avgpool",
                      "STC (ours) = MBTF+STF": "mbtf-stf"}.get(label)) for label in R.TABLE2]
T3 = [("LLaVA-1.5 (baseline)", "LLaVA-1.5 (baseline)", "baseline"), ("MBTF", "MBTF", "mbtf"),
      ("STF", "STF", "stf"), ("MBTF + STF (ours)", "MBTF + STF (ours)", "mbtf-stf")]
T4 = [("k=1, E=1 (baseline)", (1, 1), "baseline"), ("k=2, E=1", (2, 1), "mbtf-stf"),
      ("k=2, E=2", (2, 2), "mbtf-stf-k2-e2"), ("k=3, E=1 (toy only)", (3, 1), "mbtf-stf-k3-e1"),
      ("k=3, E=3 (toy only)", (3, 3), "mbtf-stf-k3-e3"), ("k=4, E=4", (4, 4), "mbtf-stf-k4-e4"),
      ("k=4, E=8", (4, 8), "mbtf-stf-k4-e8"), ("k=8, E=16 (8 does not tile 12)", (8, 16), None),
      ("k=8, E=32 (8 does not tile 12)", (8, 32), None)]
T5 = [("AvgPool", "AvgPool", "avgpool"), ("TokenConcat", "TokenConcat", "tokenconcat"),
      ("STF (ours) = MBTF+STF", "STF (ours)", "mbtf-stf")]
# Controlled Table 5 (stf.md §11.11): every reducer with and without MBTF; paper cells where the paper has the row.
T5C = [("no reduction", "-", "baseline"), ("no reduction + MBTF", "-", "mbtf"),
       ("AvgPool", "AvgPool", "avgpool"), ("AvgPool + MBTF", "-", "mbtf-avgpool"),
       ("TokenConcat", "TokenConcat", "tokenconcat"), ("TokenConcat + MBTF", "-", "mbtf-tokenconcat"),
       ("STF", "STF-only (Table 3)", "stf"), ("STF + MBTF", "STF (ours)", "mbtf-stf")]
T5C_PAPER = {**R.TABLE5, "STF-only (Table 3)": R.TABLE3["STF"]}
T5C_AVG = {**R.TABLE5_AVG, "STF-only (Table 3)": R.TABLE3_AVG["STF"]}


def table_variants() -> dict[str, list[str]]:
    """Toy variants each artifact needs (the Makefile's training prerequisites)."""
    pick = lambda entries: [v for *_, v in entries if v is not None]  # noqa: E731
    return {"stf-table2": pick(T2), "stf-table3": pick(T3), "stf-table4": pick(T4), "stf-table5": pick(T5),
            "stf-table5-controlled": pick(T5C), "stf-fig1": ["baseline", "avgpool", "mbtf-stf"],
            "stf-fig3": ["baseline", "mbtf-stf"]}


# Make target -> (what its docstring says, title, rows, paper cells, paper averages); each built by `comparison`
COMPARISONS = {
    "stf-table2": ("the trained toy variants beside the paper's comparison with efficient LLaVA models",
                   f"LLaVA-STF Table 2; {R.TABLE2_SOURCE}", T2, R.TABLE2, R.TABLE2_AVG),
    "stf-table3": ("effect of the fusion modules (baseline, MBTF, STF, MBTF+STF)",
                   f"LLaVA-STF Table 3; {R.TABLE3_SOURCE}", T3, R.TABLE3, R.TABLE3_AVG),
    "stf-table4": ("kernel size k and #fused tokens E (MBTF + STF)",
                   f"LLaVA-STF Table 4; {R.TABLE4_SOURCE}", T4, R.TABLE4, R.TABLE4_AVG),
    "stf-table5": ("fusion strategies as the paper compares them (STF row = MBTF+STF, uncontrolled)",
                   f"LLaVA-STF Table 5; {R.TABLE5_SOURCE}", T5, R.TABLE5, R.TABLE5_AVG),
    "stf-table5-controlled": ("every reducer with and without MBTF (not in the paper; stf.md §11.11)",
                              "Controlled Table 5 (ours, not in the paper): each 2x2 reducer with and without MBTF; "
                              "paper cells only where the paper has that row (its STF row is MBTF+STF)",
                              T5C, T5C_PAPER, T5C_AVG),
}


def _comparison_artifact(target: str):
    """Register `make <target>` (a COMPARISONS entry), written to figures/stf/<its table name>."""
    what, title, entries, paper, paper_avg = COMPARISONS[target]
    stem = target.removeprefix("stf-").replace("-", "_")  # stf-table5-controlled -> table5_controlled

    def build(scale: str, started: float) -> Table:
        return comparison(target, stem, title, entries, paper, paper_avg, started)

    build.__name__ = build.__qualname__ = stem
    build.__doc__ = f"make {target}: {what}."
    return table_artifact(target)(build)


table2, table3, table4, table5, table5_controlled = map(_comparison_artifact, COMPARISONS)


# ------------------------------------------------------------------------------------------ Figure 1
def _radar(ax, axes: Sequence[str], series: Mapping[str, Sequence[float]], title: str) -> None:
    """Radar with a per-axis min-max scale and value labels, as the paper's Fig. 1 (stf.md §9)."""
    import numpy as np

    n = len(axes)
    ang = [np.pi / 2 - 2 * np.pi * i / n for i in range(n)]  # clockwise from the top
    vals = np.array([list(v) for v in series.values()], dtype=float)
    lo, hi = vals.min(0), vals.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    for (name, v), color in zip(series.items(), ("tab:blue", "tab:orange", "tab:green")):
        r = 0.25 + 0.65 * (np.asarray(v, dtype=float) - lo) / span
        xs, ys = list(r * np.cos(ang)), list(r * np.sin(ang))
        ax.fill(xs + xs[:1], ys + ys[:1], alpha=0.15, color=color)
        ax.plot(xs + xs[:1], ys + ys[:1], color=color, label=name)
        for x, y, val in zip(xs, ys, v):
            ax.annotate(f"{val:.1f}", (x, y), fontsize=6, color=color, ha="center")
    for a, label in zip(ang, axes):
        ax.plot([0, np.cos(a)], [0, np.sin(a)], color="0.85", lw=0.5)
        ax.text(1.08 * np.cos(a), 1.08 * np.sin(a), label, ha="center", va="center", fontsize=8)
    ax.set_xlim(-1.25, 1.25), ax.set_ylim(-1.25, 1.25), ax.set_aspect("equal"), ax.axis("off")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)


FIG1_TOY = {"baseline": "toy LLaVA (100% tokens)", "avgpool": "toy AvgPool (25% tokens)",
            "mbtf-stf": "toy MBTF+STF (25% tokens)"}


def fig1_rows(scores: Mapping[str, Scores]) -> list[dict]:
    """Per family: full vs AvgPool 25% vs MBTF+STF 25% and the AvgPool gap, paper and toy side by side."""
    rows = []
    for bench_i, bench in enumerate(R.FIG1_AXES):
        full, pool, ours = (s[bench_i] for s in R.FIG1.values())
        rows.append({"scale": "paper", "family": bench, "full": full, "avgpool 25%": pool, "mbtf+stf 25%": ours,
                     "avgpool - full": round(pool - full, 1)})
    for f in FAMILIES:
        full, pool, ours = (scores[v][f] for v in FIG1_TOY)
        rows.append({"scale": "toy", "family": f, "full": round(full, 1), "avgpool 25%": round(pool, 1),
                     "mbtf+stf 25%": round(ours, 1), "avgpool - full": round(pool - full, 1)})
    return rows


def fig1_figure(scores: Mapping[str, Scores]):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 6))
    _radar(a, R.FIG1_AXES, R.FIG1, "paper: LLaVA-1.5-7B (Fig. 1)")
    _radar(b, FAMILIES, {FIG1_TOY[v]: [scores[v][f] for f in FAMILIES] for v in FIG1_TOY}, "ours: toy LLaVA, ToyWorld")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.18, wspace=0.1)
    return fig


@artifact("stf-fig1", kind="figure")
def fig1(scale: str = "toy", evaluator=None, out: Path | None = None) -> None:
    """make stf-fig1: spatial redundancy, AvgPool with 25% tokens vs all tokens per benchmark family."""
    t0 = time.time()
    out = out or OUT
    scores, _, _, prov = collect_target("stf-fig1", evaluator, t0)
    write_table(fig1_rows(scores), out / "fig1_values", title=f"LLaVA-STF Fig. 1 values | paper: {R.FIG1_SOURCE} | ours: "
                f"{SCALE_NOTE}", provenance=prov)
    save_figure(fig1_figure(scores), out / "fig1", provenance=prov)


# ------------------------------------------------------------------------------------------ Figure 3
CASE_FAMILIES = ("textvqa", "count", "gqa")  # reading (paper: blurred text), counting (bars, cows), reasoning


def pick_cases(samples, base_pred: Mapping[str, str], stf_pred: Mapping[str, str], per_family: int = 2) -> list:
    """Per case family, the first test samples where the two models disagree (then the first others)."""
    picked = []
    for fam in CASE_FAMILIES:
        fs = [s for s in samples if s.family == fam]
        differ = [s for s in fs if base_pred[s.id] != stf_pred[s.id]]
        rest = [s for s in fs if base_pred[s.id] == stf_pred[s.id]]
        picked += (differ + rest)[:per_family]
    return picked


@artifact("stf-fig3", kind="figure")
def fig3(scale: str = "toy", evaluator=None, out: Path | None = None) -> None:
    """make stf-fig3: case study, image + question + answers of the baseline (144 tokens) and MBTF+STF (36)."""
    import matplotlib.pyplot as plt

    t0 = time.time()
    out = out or OUT
    _, tokens, results, prov = collect_target("stf-fig3", evaluator, t0, families=CASE_FAMILIES)
    samples = test_samples()
    preds = {v: dict(zip(res.ids, res.predictions)) for v, res in results.items()}
    cases = pick_cases(samples, preds["baseline"], preds["mbtf-stf"])
    rows = [{"family": s.family, "id": s.id, "question": s.question, "reference": s.answer,
             f"baseline ({tokens['baseline']} tokens)": preds["baseline"][s.id],
             f"MBTF+STF ({tokens['mbtf-stf']} tokens)": preds["mbtf-stf"][s.id]} for s in cases]
    write_table(rows, out / "fig3_cases", title=f"LLaVA-STF Fig. 3 case study at toy scale (paper: {R.FIG3_SOURCE})",
                provenance=prov)
    fig, axs = plt.subplots(1, len(cases), figsize=(2.6 * len(cases), 3.6), squeeze=False)
    for ax, s, r in zip(axs[0], cases, rows):
        ax.imshow(s.images[0]), ax.axis("off")
        vals = list(r.values())
        ax.set_title(f"{s.question}\nref: {s.answer}\nbase: {vals[4]}\nSTF: {vals[5]}", fontsize=6, loc="left")
    fig.tight_layout()
    save_figure(fig, out / "fig3", provenance=prov)


# ------------------------------------------------------------------------------------------ stage-2 length check
@artifact("stf-longer")
def longer(scale: str = "toy", evaluator=None, out: Path | None = None) -> None:
    """make stf-longer (ours, not in the paper): baseline, TokenConcat and MBTF+STF with the default stage 2 and
    with 3x its steps. Tells information loss (a lossless reducer stays low) from reading not yet relearned."""
    t0 = time.time()
    if evaluator is None:
        require_variants("stf-longer", LONG_VARIANTS)
        missing = [v for v in LONG_VARIANTS if not (long_dir(v) / CARD).exists()]
        if missing:
            raise SystemExit(f"stf-longer: missing {', '.join(missing)}; run "
                             + " ".join(f"`make stf-train-long-{v}`" for v in missing))
        evaluator = lambda v, long: evaluate_variant(v, long_dir(v) if long else None)  # noqa: E731
    rows, inputs = [], {}
    for v in LONG_VARIANTS:
        for long in (False, True):
            res, card = evaluator(v, long)
            steps = LONG_STAGE2_STEPS if long else STFTrainConfig.stage2_steps
            inputs[f"stf-{'long-' if long else ''}{v}"] = card.get("weights_sha256")
            cells = toy_cells(v, {v: family_scores(res)}, {v: int(card["visual_tokens"])})
            rows.append({**cells, "stage-2 steps": steps, "final stage-2 loss": round(card["final_loss"]["2"], 3)})
    write_table(rows, (out or OUT) / "longer",
                title=f"Stage-2 length check (ours, not in the paper) | {SCALE_NOTE}, {N_PER_FAMILY}/family",
                provenance=_prov("stf-longer", {"variants": list(LONG_VARIANTS),
                                                "stage2_steps": [STFTrainConfig.stage2_steps, LONG_STAGE2_STEPS]},
                                 t0, inputs))
