"""LLaVA-STF's tables and figures, as functions of a `Run` (`make stf-table1` ... `make stf-fig3`, SCALE=toy|paper).

Each table trains nothing itself: it evaluates trained projector variants (`papers.stf.variants.VARIANTS`) found
in `<variants_root>/stf-<variant>/` and puts the paper's numbers beside ours, matched by role (the baseline row
beside LLaVA-1.5, MBTF+STF beside "ours", ...). A variant that is not trained stops the run with one
`MissingInputs` naming every absent folder and the commands that train it, unless `--set stf.train_missing=true`,
which trains them first (`papers.stf.train`). The Make targets of the tables depend on their training targets, so
`make stf-table3` from a fresh clone trains what it needs.

toy (default): the first toy LLaVA (`checkpoints/toy-llava-v1`) with each projector variant trained by
    `papers.stf.train` into checkpoints/stf-<variant>/; ToyWorld test split, families gqa, pope, textvqa, count,
    scene, mc (`run.n(40)` each), greedy answers scored by `common.metrics`. Toy families mirror GQA (gqa),
    POPE (pope), TextVQA (textvqa) and MMB/SQA (mc); the paper columns shown are those four and its average.
paper: variants of an llava-hf LLaVA-1.5 trained by `papers.stf.paper_train` on LLaVA-558K / 665K-format data
    (`--train-root`), evaluated on LLaVA's evaluation files (`--data-root`): GQA, SQA (ScienceQA-IMG), TextVQA,
    POPE and MMBench (dev) are scored here; MMBench-CN and VizWiz have no loader and VQAv2's test-dev answers
    are not public, so those columns stay empty and the titles say so. Every paper column is shown.
"""
from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoConfig

from common.artifacts import portable
from common.flops import DecoderDims, stf_flops
from common.models.checkpoint import load_card
from common.models.load import checkpoint_sha256
from common.run import MissingInputs, Run, target
from papers.stf import reported as R
from papers.stf.modules import STFConfig, config_for_model
from papers.stf.paper_train import (LAYOUT_HINT, load_paper_variant, missing_model, missing_training_inputs,
                                   train_paper_variant)
from papers.stf.param_counts import LLAVA15, REFERENCE_PARAMS, count_params, meta_projector, structure
from papers.stf.train import (BASE_CHECKPOINT, EVAL_FAMILIES, LONG_STAGE2_STEPS, LONG_VARIANTS, STFTrainConfig,
                              load_variant, long_dir, train_variant)
from papers.stf.variants import Options, is_trained, variant_dir, variants_root

N_PER_FAMILY = 40  # toy default of `run.n`; every sample at paper scale
MAX_NEW_TOKENS = {"toy": 8, "paper": 16}
# toy family -> paper benchmark it mirrors (common/data/toyworld.py)
MIRRORS = {"gqa": "GQA", "pope": "POPE", "textvqa": "VQAT", "mc": "MMB"}
# paper benchmark -> the family `run.samples` reads at paper scale (None: not scored here, and why)
PAPER_FAMILIES: dict[str, str | None] = {"GQA": "gqa", "SQA": "sqa", "VQAT": "textvqa", "POPE": "pope",
                                         "MMB": "mmb", "MMBCN": None, "VQAv2": None, "VisWiz": None}
NOT_SCORED = {"MMBCN": "no MMBench-CN loader", "VQAv2": "test-dev answers are not public (EvalAI server)",
              "VisWiz": "no VizWiz loader"}
CASE_FAMILIES = {"toy": ("textvqa", "count", "gqa"),  # reading (paper: blurred text), counting (bars, cows), reasoning
                 "paper": ("textvqa", "gqa", "mmb")}
SCALES = ("toy", "paper")
TARGET = dict(paper="stf", checkpoint=BASE_CHECKPOINT, scales=SCALES)  # every STF artifact but stf-longer


# ------------------------------------------------------------------------------------------ scale layout
@dataclass(frozen=True)
class Layout:
    """How a scale's tables name our columns: `prefix` ("toy" / "ours"), score columns keyed by family, the
    FLOPs unit, and which paper benchmarks are shown beside them."""

    scale: str
    prefix: str
    columns: Mapping[str, str | None]  # score column -> family (None: not scored at this scale)
    flops: tuple[str, float]  # unit of the LLM FLOPs column and its size
    paper_benchmarks: tuple[str, ...]

    def flops_cell(self, flops: float) -> float:
        """MFLOPs to 2 decimals (toy); TFLOPs to 3 significant digits (7.61 for 576 tokens on Vicuna-7B, and
        still nonzero for a tiny test model)."""
        value = flops / self.flops[1]
        return round(value, 2) if self.scale == "toy" else float(f"{value:.3g}")

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in self.columns.values() if f is not None)

    def header(self) -> list[str]:
        p = self.prefix
        extra = ["paper mean (same benchmarks)"] if self.scale == "paper" else []
        return ["method", f"{p} variant", f"{p} tokens", f"{p} LLM {self.flops[0]}", *self.columns, f"{p} mean",
                "paper TFLOPs", *[f"paper {b}" for b in self.paper_benchmarks], "paper Avg.", *extra]


def layout(run: Run) -> Layout:
    if run.scale == "toy":
        fams = run.families(EVAL_FAMILIES)
        return Layout("toy", "toy", {f: f for f in fams}, ("MFLOPs", 1e6), tuple(MIRRORS.values()))
    chosen = set(run.families([f for f in PAPER_FAMILIES.values() if f]))
    cols = {f"ours {b}": (f if f in chosen else None) for b, f in PAPER_FAMILIES.items()}
    return Layout("paper", "ours", cols, ("TFLOPs", 1e12), R.BENCHMARKS)


# ------------------------------------------------------------------------------------------ variants
@dataclass
class Evaluated:
    """One trained variant on the run's test samples."""

    scores: dict[str, float]  # family -> score (%)
    tokens: int
    flops: float  # LLM FLOPs over the vision tokens of one image (STF's calflops convention)
    result: Any  # common.evaluation.EvalResult
    sha256: str


def _root(run: Run) -> Path:
    return variants_root(run.scale, run.out_dir, run.options(Options))


def _train_command(run: Run, names: Sequence[str]) -> str:
    targets = " ".join(f"stf-train-{n}" for n in names)
    flags = "" if run.scale == "toy" else " SCALE=paper MODEL_PATH=... TRAIN_ROOT=..."
    return f"`make {targets}{flags}`"


def prepare(run: Run, target_name: str, folders: Mapping[str, Path], families: Sequence[str]) -> None:
    """Check every input before any work (benchmark files, variant folders, and with `train_missing` the training
    data), raising one `MissingInputs` that names all of them; then train the missing variants if asked."""
    opts = run.options(Options)
    lines: list[str] = []
    hints: list[str] = []
    if run.scale == "paper":
        try:
            run.require(families)
        except MissingInputs as err:
            lines += err.missing
            hints.append("Benchmarks: LLaVA-1.5's evaluation layout under data_root (see the README's "
                         "'Paper scale').")
    absent = [n for n, f in folders.items() if not is_trained(f)]
    if absent and not opts.train_missing:
        lines += [f"{folders[n]}/ (variant {n}: not trained)" for n in absent]
        hints.append(f"{target_name}: train them with {_train_command(run, absent)}, or rerun with "
                     "--set stf.train_missing=true to train them first.")
    elif absent and run.scale == "paper":
        missing = missing_training_inputs(run.cfg.train_root)
        if missing:
            lines += missing
            hints.append(LAYOUT_HINT)
    if lines:
        raise MissingInputs(lines, "\n".join(hints))
    for n in absent:
        print(f"{target_name}: training missing variant {n} -> {folders[n]} ...", flush=True)
        if run.scale == "paper":
            train_paper_variant(run, n, folders[n], opts)
        else:
            train_variant(n, folders[n], base=run.checkpoint or BASE_CHECKPOINT)


def load_trained(run: Run, folder: Path) -> Any:
    """A trained variant on the run's device and dtype."""
    if run.scale == "paper":
        return load_paper_variant(run, folder)
    vlm = load_variant(folder)
    vlm.model.to(device=run.device, dtype=run.dtype)
    return vlm


def variant_key(run: Run, folder: Path) -> dict[str, Any]:
    """What identifies a trained variant in prediction caches (as `Run.run_key` does for the run's model)."""
    key: dict[str, Any] = {"checkpoint": checkpoint_sha256(folder), "scale": run.scale}
    if run.dtype != torch.float32:
        key["dtype"] = str(run.dtype)
    return key


def evaluate_folders(run: Run, folders: Mapping[Any, Path], samples) -> dict[Any, Evaluated]:
    """Evaluate each variant folder on `samples`, one model in memory at a time."""
    out = {}
    for name, folder in folders.items():
        vlm = load_trained(run, folder)
        key = variant_key(run, folder)
        res = run.evaluate(samples, vlm=vlm, run_key=key, max_new_tokens=MAX_NEW_TOKENS[run.scale])
        n = int(vlm.num_visual_tokens)
        dims = DecoderDims.from_config(vlm.model.config)
        out[name] = Evaluated({f: float(m["score"]) for f, m in res.metrics.items()}, n, stf_flops(n, dims), res,
                              key["checkpoint"])
        del vlm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def evaluate_variants(run: Run, target_name: str, names: Sequence[str]) -> tuple[dict[str, Evaluated], list]:
    """Prepare (check / train) and evaluate the variants `names`: ({variant: Evaluated}, samples)."""
    lay = layout(run)
    folders = {n: variant_dir(_root(run), n) for n in dict.fromkeys(names)}
    prepare(run, target_name, folders, lay.families)
    samples = run.samples(lay.families, n=run.n(N_PER_FAMILY))
    return evaluate_folders(run, folders, samples), samples


def scope_note(run: Run, n_samples: int | None = None) -> str:
    """What "ours" is, for titles: model, variants, data and sample count."""
    if run.scale == "toy":
        c = AutoConfig.from_pretrained(run.checkpoint)
        vc, tc = c.vision_config, c.text_config
        g = vc.image_size // vc.patch_size
        note = (f"toy scale: toy LLaVA ({vc.num_hidden_layers}-block CLIP {vc.hidden_size}-d, {g}x{g} patches, "
                f"{tc.num_hidden_layers}-layer Llama {tc.hidden_size}-d) + trained projector variants "
                f"({_portable_root(run)}/stf-*), ToyWorld test split")
        return note + (f", {n_samples}/family" if n_samples else "")
    lay = layout(run)
    empty = "; ".join(f"{b}: {NOT_SCORED.get(b, 'not selected')}" for b, f in
                      ((c.removeprefix("ours "), f) for c, f in lay.columns.items()) if f is None)
    return (f"paper scale: projector variants of {Path(run.cfg.model_path).name} trained by papers.stf.paper_train "
            f"({_portable_root(run)}/stf-*), LLaVA eval files under {run.cfg.data_root}, "
            f"{'all' if run.n(None) is None else run.n(None)} samples per benchmark; empty columns: {empty}")


def _portable_root(run: Run) -> str:
    return portable(str(_root(run)))


# ------------------------------------------------------------------------------------------ rows
def our_cells(lay: Layout, variant: str | None, ev: Mapping[str, Evaluated]) -> dict[str, Any]:
    """Our columns for one variant: tokens, LLM FLOPs over the vision tokens, scores, mean of the scored ones."""
    p = lay.prefix
    if variant is None or variant not in ev:
        return {f"{p} variant": variant or "-"}
    e = ev[variant]
    row: dict[str, Any] = {f"{p} variant": variant, f"{p} tokens": e.tokens,
                           f"{p} LLM {lay.flops[0]}": lay.flops_cell(e.flops)}
    scored = [f for f in lay.columns.values() if f is not None and f in e.scores]
    row.update({col: round(e.scores[f], 1) for col, f in lay.columns.items() if f is not None and f in e.scores})
    row[f"{p} mean"] = round(statistics.mean(e.scores[f] for f in scored), 2)
    return row


def paper_cells(lay: Layout, entry: tuple[float, R.Row] | None, printed_avg: float | None) -> dict[str, Any]:
    """The paper's columns: TFLOPs, the shown benchmarks, printed average (and at paper scale the mean over the
    benchmarks we score, for a like-for-like comparison)."""
    if entry is None:
        return {"paper TFLOPs": None}
    tflops, row = entry
    by = dict(zip(R.BENCHMARKS, row))
    cells: dict[str, Any] = {"paper TFLOPs": tflops}
    cells.update({f"paper {b}": by[b] for b in lay.paper_benchmarks})
    cells["paper Avg."] = printed_avg
    if lay.scale == "paper":
        same = [by[c.removeprefix("ours ")] for c, f in lay.columns.items() if f is not None]
        same = [v for v in same if v is not None]
        cells["paper mean (same benchmarks)"] = round(statistics.mean(same), 2) if same else None
    return cells


def comparison_rows(lay: Layout, entries: Sequence[tuple[str, Any, str | None]],
                    paper: Mapping[Any, tuple[float, R.Row]], paper_avg: Mapping[Any, float],
                    ev: Mapping[str, Evaluated]) -> list[dict[str, Any]]:
    """One row per (label, paper key, variant): our cells beside the paper's cells."""
    return [{"method": label, **our_cells(lay, variant, ev), **paper_cells(lay, paper.get(key), paper_avg.get(key))}
            for label, key, variant in entries]


# ------------------------------------------------------------------------------------------ Table 1
def _fields(cfg: STFConfig) -> dict:
    return {k: getattr(cfg, k) for k in STFConfig.__dataclass_fields__}


def _rounded(n: int) -> str:
    """151019520 -> '151.0M' (the paper-scale figure), 33024 -> '33.0K'."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def table1_rows(model_config: Any, label: str, num_blocks: int | None = None) -> tuple[list[dict], list[dict]]:
    """(structure rows, parameter/FLOPs rows) at LLaVA-1.5-7B size and at the size of `model_config` (an HF
    `LlavaConfig`, rows labelled `label`); MBTF fuses `num_blocks` of its tower (None: all). No weights."""
    depth = model_config.vision_config.num_hidden_layers
    ours = config_for_model(model_config, num_blocks=min(num_blocks or depth, depth))
    ours_dims = DecoderDims.from_config(model_config)
    paper = {(m, layer): (size, kern, stride, act) for m, layer, size, kern, stride, act in R.TABLE1}
    rows = []
    for scale, cfg in (("LLaVA-1.5-7B", LLAVA15), (label, ours)):
        for r in structure(cfg):
            p = paper.get((r.module, r.layer)) if scale == "LLaVA-1.5-7B" else None
            rows.append({"scale": scale, "module": r.module, "layer": r.layer, "output size": r.output,
                         "kernel": r.kernel, "stride": r.stride, "act": r.act, "params": r.params,
                         "paper output size": p[0] if p else None, "paper kernel": p[1] if p else None,
                         "paper stride": p[2] if p else None, "paper act": p[3] if p else None})
    prows = []
    for scale, base, dims in (("LLaVA-1.5-7B", LLAVA15, "llava-1.5-7b"), (label, ours, ours_dims)):
        llava = scale == "LLaVA-1.5-7B"
        for variant in ("paper", "code"):
            for kind in ("mlp", "mbtf", "stf", "mbtf_stf"):
                cfg = STFConfig(**{**_fields(base), "kind": kind, "variant": variant, "blocks": None})
                n_params = count_params(meta_projector(cfg))
                prows.append({"scale": scale, "kind": kind, "variant": variant, "tokens": cfg.num_tokens,
                              "params": n_params, "params (rounded)": _rounded(n_params),
                              "stf.md §3.6 params": REFERENCE_PARAMS.get((kind, variant)) if llava else None,
                              "LLM GFLOPs (2 N_v P)": round(stf_flops(cfg.num_tokens, dims) / 1e9, 3),
                              "paper TFLOPs": {576: 7.6, 144: 1.9}.get(cfg.num_tokens) if llava else None})
    return rows, prows


@target("stf-table1", **TARGET)
def table1(run: Run) -> dict[str, Path]:
    """make stf-table1: MBTF / STF structures (Table 1) and parameter counts / TFLOPs at LLaVA-1.5-7B size and at
    the run's model size (the toy LLaVA, or --model-path's LLaVA); no training, no weights."""
    if run.scale == "paper" and missing_model(run.checkpoint):
        raise MissingInputs(missing_model(run.checkpoint))
    label = "toy" if run.scale == "toy" else Path(run.checkpoint).name
    num_blocks = None if run.scale == "toy" else run.options(Options).num_blocks
    rows, prows = table1_rows(AutoConfig.from_pretrained(run.checkpoint), label, num_blocks)
    prov = run.provenance({"shapes": f"LLaVA-1.5-7B and {label} (meta-device modules)"})
    out = run.write_table("table1", rows, provenance=prov, title=(
        f"LLaVA-STF Table 1: layer structure of MBTF and STF (k=2, E=1), ours (papers.stf.modules, paper variant) "
        f"at LLaVA-1.5-7B and {label} size beside the paper's; paper: {R.TABLE1_SOURCE}"))
    out.update({f"params.{k}": v for k, v in run.write_table("table1_params", prows, provenance=prov, title=(
        "Projector parameters and LLM TFLOPs over the vision tokens (stf.md §3.6, §7), paper and released-code "
        "variants; meta-device modules, no weights")).items()})
    return out


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
# At LLaVA's 24 x 24 grid every (k, E) of the paper tiles: its own seven rows.
T4_PAPER = [("k=1, E=1 (baseline)", (1, 1), "baseline"), ("k=2, E=1", (2, 1), "mbtf-stf"),
            ("k=2, E=2", (2, 2), "mbtf-stf-k2-e2"), ("k=4, E=4", (4, 4), "mbtf-stf-k4-e4"),
            ("k=4, E=8", (4, 8), "mbtf-stf-k4-e8"), ("k=8, E=16", (8, 16), "mbtf-stf-k8-e16"),
            ("k=8, E=32", (8, 32), "mbtf-stf-k8-e32")]
T5 = [("AvgPool", "AvgPool", "avgpool"), ("TokenConcat", "TokenConcat", "tokenconcat"),
      ("STF (ours) = MBTF+STF", "STF (ours)", "mbtf-stf")]
# Controlled Table 5 (ours): every reducer with and without MBTF; paper cells where the paper has the row.
T5C = [("no reduction", "-", "baseline"), ("no reduction + MBTF", "-", "mbtf"),
       ("AvgPool", "AvgPool", "avgpool"), ("AvgPool + MBTF", "-", "mbtf-avgpool"),
       ("TokenConcat", "TokenConcat", "tokenconcat"), ("TokenConcat + MBTF", "-", "mbtf-tokenconcat"),
       ("STF", "STF-only (Table 3)", "stf"), ("STF + MBTF", "STF (ours)", "mbtf-stf")]
T5C_PAPER = {**R.TABLE5, "STF-only (Table 3)": R.TABLE3["STF"]}
T5C_AVG = {**R.TABLE5_AVG, "STF-only (Table 3)": R.TABLE3_AVG["STF"]}


@dataclass(frozen=True)
class Comparison:
    """One comparison table: what its docstring says, title, rows per scale, paper cells and averages."""

    what: str
    title: str
    entries: Mapping[str, list]  # scale -> [(label, paper key, variant or None)]
    paper: Mapping[Any, tuple[float, R.Row]]
    paper_avg: Mapping[Any, float]

    def variants(self, scale: str) -> list[str]:
        return [v for *_, v in self.entries[scale] if v is not None]


def _both(entries: list) -> dict[str, list]:
    return {s: entries for s in SCALES}


COMPARISONS = {
    "stf-table2": Comparison("the trained variants beside the paper's comparison with efficient LLaVA models",
                             f"LLaVA-STF Table 2; {R.TABLE2_SOURCE}", _both(T2), R.TABLE2, R.TABLE2_AVG),
    "stf-table3": Comparison("effect of the fusion modules (baseline, MBTF, STF, MBTF+STF)",
                             f"LLaVA-STF Table 3; {R.TABLE3_SOURCE}", _both(T3), R.TABLE3, R.TABLE3_AVG),
    "stf-table4": Comparison("kernel size k and #fused tokens E (MBTF + STF)", f"LLaVA-STF Table 4; {R.TABLE4_SOURCE}",
                             {"toy": T4, "paper": T4_PAPER}, R.TABLE4, R.TABLE4_AVG),
    "stf-table5": Comparison("fusion strategies as the paper compares them (STF row = MBTF+STF, uncontrolled)",
                             f"LLaVA-STF Table 5; {R.TABLE5_SOURCE}", _both(T5), R.TABLE5, R.TABLE5_AVG),
    "stf-table5-controlled": Comparison(
        "every reducer with and without MBTF (not in the paper)",
        "Controlled Table 5 (ours, not in the paper): each 2x2 reducer with and without MBTF; paper cells only "
        "where the paper has that row (its STF row is MBTF+STF)", _both(T5C), T5C_PAPER, T5C_AVG),
}
FIG1_VARIANTS = ("baseline", "avgpool", "mbtf-stf")
FIG3_VARIANTS = ("baseline", "mbtf-stf")


def table_variants(scale: str = "toy") -> dict[str, list[str]]:
    """Variants each artifact needs at `scale` (the Makefile's training prerequisites)."""
    out = {name: c.variants(scale) for name, c in COMPARISONS.items()}
    return {**out, "stf-fig1": list(FIG1_VARIANTS), "stf-fig3": list(FIG3_VARIANTS)}


def write_comparison(run: Run, name: str) -> dict[str, Path]:
    """Evaluate the variants of COMPARISONS[name] and write the table (figures/stf/<table>, e.g. table5_controlled)."""
    c = COMPARISONS[name]
    variants = c.variants(run.scale)
    ev, _ = evaluate_variants(run, name, variants)
    lay = layout(run)
    rows = comparison_rows(lay, c.entries[run.scale], c.paper, c.paper_avg, ev)
    stem = name.removeprefix("stf-").replace("-", "_")
    return run.write_table(stem, rows, columns=lay.header(), provenance=_prov(run, ev, {"variants": variants}),
                           title=f"{c.title} | ours: {scope_note(run, run.n(N_PER_FAMILY))} | paper: {R.MODEL}")


def _prov(run: Run, ev: Mapping[str, Evaluated], config: Mapping[str, Any]) -> dict:
    return run.provenance({"n_per_family": run.n(N_PER_FAMILY), "variants_root": str(_root(run)), **config},
                          inputs={f"stf-{v}": e.sha256 for v, e in ev.items()})


def _comparison_target(name: str):
    """Register `make <name>` for a COMPARISONS entry."""

    def build(run: Run) -> dict[str, Path]:
        return write_comparison(run, name)

    build.__name__ = build.__qualname__ = name.removeprefix("stf-").replace("-", "_")
    build.__doc__ = f"make {name}: {COMPARISONS[name].what}."
    return target(name, **TARGET)(build)


table2, table3, table4, table5, table5_controlled = map(_comparison_target, COMPARISONS)


# ------------------------------------------------------------------------------------------ Figure 1
def _radar(ax, axes: Sequence[str], series: Mapping[str, Sequence[float]], title: str) -> None:
    """Radar with a per-axis min-max scale and value labels, as the paper's Fig. 1."""
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


FIG1_LABELS = {"baseline": "{s} LLaVA (100% tokens)", "avgpool": "{s} AvgPool (25% tokens)",
               "mbtf-stf": "{s} MBTF+STF (25% tokens)"}


def fig1_rows(scale: str, families: Sequence[str], scores: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Per family: full vs AvgPool 25% vs MBTF+STF 25% and the AvgPool gap, paper and ours side by side."""
    rows = []
    for bench_i, bench in enumerate(R.FIG1_AXES):
        full, pool, ours = (s[bench_i] for s in R.FIG1.values())
        rows.append({"scale": "paper", "family": bench, "full": full, "avgpool 25%": pool, "mbtf+stf 25%": ours,
                     "avgpool - full": round(pool - full, 1)})
    for f in families:
        full, pool, ours = (scores[v][f] for v in FIG1_VARIANTS)
        rows.append({"scale": scale, "family": f, "full": round(full, 1), "avgpool 25%": round(pool, 1),
                     "mbtf+stf 25%": round(ours, 1), "avgpool - full": round(pool - full, 1)})
    return rows


def fig1_figure(scale: str, families: Sequence[str], scores: Mapping[str, Mapping[str, float]], data: str):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 6))
    _radar(a, R.FIG1_AXES, R.FIG1, "paper: LLaVA-1.5-7B (Fig. 1)")
    _radar(b, families, {FIG1_LABELS[v].format(s=scale): [scores[v][f] for f in families] for v in FIG1_VARIANTS},
           f"ours: {data}")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.18, wspace=0.1)
    return fig


@target("stf-fig1", kind="figure", **TARGET)
def fig1(run: Run) -> dict[str, Path]:
    """make stf-fig1: spatial redundancy, AvgPool with 25% tokens vs all tokens per benchmark family."""
    ev, _ = evaluate_variants(run, "stf-fig1", FIG1_VARIANTS)
    fams = layout(run).families
    scores = {v: e.scores for v, e in ev.items()}
    prov = _prov(run, ev, {"variants": list(FIG1_VARIANTS)})
    out = run.write_table("fig1_values", fig1_rows(run.scale, fams, scores), provenance=prov,
                          title=f"LLaVA-STF Fig. 1 values | paper: {R.FIG1_SOURCE} | ours: {scope_note(run)}")
    data = "toy LLaVA, ToyWorld" if run.scale == "toy" else f"{Path(run.cfg.model_path).name}, LLaVA eval files"
    out.update({f"figure.{k}": p for k, p in run.save_figure("fig1", fig1_figure(run.scale, fams, scores, data),
                                                          provenance=prov).items()})
    return out


# ------------------------------------------------------------------------------------------ Figure 3
def pick_cases(samples, base_pred: Mapping[str, str], stf_pred: Mapping[str, str], families: Sequence[str],
               per_family: int = 2) -> list:
    """Per case family, the first test samples where the two models disagree (then the first others)."""
    picked = []
    for fam in families:
        fs = [s for s in samples if s.family == fam]
        differ = [s for s in fs if base_pred[s.id] != stf_pred[s.id]]
        rest = [s for s in fs if base_pred[s.id] == stf_pred[s.id]]
        picked += (differ + rest)[:per_family]
    return picked


@target("stf-fig3", kind="figure", **TARGET)
def fig3(run: Run) -> dict[str, Path]:
    """make stf-fig3: case study, image + question + answers of the baseline (all tokens) and MBTF+STF (25%)."""
    import matplotlib.pyplot as plt

    ev, samples = evaluate_variants(run, "stf-fig3", FIG3_VARIANTS)
    case_families = [f for f in CASE_FAMILIES[run.scale] if f in layout(run).families]
    preds = {v: dict(zip(e.result.ids, e.result.predictions)) for v, e in ev.items()}
    cases = pick_cases(samples, preds["baseline"], preds["mbtf-stf"], case_families)
    base_col = f"baseline ({ev['baseline'].tokens} tokens)"
    stf_col = f"MBTF+STF ({ev['mbtf-stf'].tokens} tokens)"
    rows = [{"family": s.family, "id": s.id, "question": s.question, "reference": s.answer,
             base_col: preds["baseline"][s.id], stf_col: preds["mbtf-stf"][s.id]} for s in cases]
    prov = _prov(run, ev, {"variants": list(FIG3_VARIANTS), "families": list(case_families)})
    out = run.write_table("fig3_cases", rows, provenance=prov,
                          title=f"LLaVA-STF Fig. 3 case study at {run.scale} scale (paper: {R.FIG3_SOURCE})")
    fig, axs = plt.subplots(1, len(cases), figsize=(2.6 * len(cases), 3.6), squeeze=False)
    for ax, s, r in zip(axs[0], cases, rows):
        ax.imshow(s.images[0]), ax.axis("off")
        question = s.question.splitlines()[0]
        ax.set_title(f"{question}\nref: {s.answer}\nbase: {r[base_col]}\nSTF: {r[stf_col]}", fontsize=6, loc="left")
    fig.tight_layout()
    out.update({f"figure.{k}": p for k, p in run.save_figure("fig3", fig, provenance=prov).items()})
    return out


# ------------------------------------------------------------------------------------------ stage-2 length check
@target("stf-longer", paper="stf", checkpoint=BASE_CHECKPOINT, scales=("toy",),
        why_not="a toy-scale check (3x the toy stage 2); at paper scale train with --set stf.stage2_steps=N into "
                "another stf.variants_root and compare the tables")
def longer(run: Run) -> dict[str, Path]:
    """make stf-longer (ours, not in the paper): baseline, TokenConcat and MBTF+STF with the default stage 2 and
    with 3x its steps. Tells information loss (a lossless reducer stays low) from reading not yet relearned."""
    root = _root(run)
    folders = {(v, long): (long_dir(v, root) if long else variant_dir(root, v))
               for v in LONG_VARIANTS for long in (False, True)}
    absent = [f for f in folders.values() if not is_trained(f)]
    if absent:
        raise MissingInputs([f"{f}/ (not trained)" for f in absent],
                            "stf-longer: train them with `make stf-longer` (its prerequisites stf-train-<v> and "
                            "stf-train-long-<v>)")
    lay = layout(run)
    samples = run.samples(lay.families, n=run.n(N_PER_FAMILY))
    ev = evaluate_folders(run, folders, samples)
    rows = []
    for (v, long), folder in folders.items():
        card = load_card(folder)
        steps = LONG_STAGE2_STEPS if long else STFTrainConfig.stage2_steps
        rows.append({**our_cells(lay, v, {v: ev[(v, long)]}), "stage-2 steps": steps,
                     "final stage-2 loss": round(card["final_loss"]["2"], 3)})
    inputs = {f"stf-{'long-' if long else ''}{v}": e.sha256 for (v, long), e in ev.items()}
    prov = run.provenance({"n_per_family": run.n(N_PER_FAMILY), "variants": list(LONG_VARIANTS),
                           "stage2_steps": [STFTrainConfig.stage2_steps, LONG_STAGE2_STEPS]}, inputs=inputs)
    return run.write_table("longer", rows, provenance=prov, title=(
        f"Stage-2 length check (ours, not in the paper) | {scope_note(run, run.n(N_PER_FAMILY))}"))


