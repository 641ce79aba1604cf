"""DyRate's tables and figures, one function of a `Run` per artifact (`python -m reports.experiment <target>`):

    dyrate-predictor      train the rate predictor if its folder is missing (--set dyrate.retrain=true forces it)
    dyrate-table1         short answers: accuracy vs relative FLOPs (paper Table I)
    dyrate-table2         captioning CIDEr (paper Table II)
    dyrate-table3         efficiency: relative FLOPs, per-token latency, CIDEr, auto R (paper Table III)
    dyrate-table4         decoding strategies with DyRate (paper Table IV)
    dyrate-table5         rate-strategy ablation: FixedPrune / DepthBasedPrune / DyRate (paper Table V)
    dyrate-fig-attention  attention share per token type over generation steps, band over samples (Fig. 2)
    dyrate-fig-rate       DyRate's predicted rate over generation steps, beside the image share (Fig. 4's trend)
    dyrate-fig-curves     CIDEr and QA accuracy vs relative FLOPs for FastV, VTW, FixedPrune and DyRate
    dyrate-claims         every claim of the paper beside the number that decides it (reads the sidecars)

Scales: toy (the trained toy LLaVA, ToyWorld; artifacts in figures/dyrate/) and paper (`SCALE=paper
MODEL_PATH=<llava-hf LLaVA-1.5> DATA_ROOT=<playground/data/eval> TRAIN_ROOT=<playground/data>`: COCO Karpathy
captions and LLaVA's benchmark files, `papers.dyrate.inputs`; artifacts in figures/dyrate/paper/). The mini
scale has no captions to train or score a predictor on; `make mini-report` shows DyRate's fixed-rate form.

Knobs: `Options` (`--set dyrate.<knob>=<value>`); sample counts also follow `--n`. Layers: DyRate and FastV (b)
prune after layer K = 2 and FastV (a) after layer 3 (the paper's FastV settings, not depth-mapped: mapped to a
shallow toy decoder they would collapse to layer 1); VTW removes the image at half depth (k = 16 of 32 mapped,
the paper's 55.2%). Generation records are cached under `<cache_dir>/dyrate` (`papers.dyrate.records`), so
targets share their generations.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from common.models.checkpoint import CARD
from common.models.load import DEFAULT_CHECKPOINTS, checkpoint_sha256
from common.paths import CHECKPOINTS, REPO_ROOT
from common.plots import apply_style, new_figure, plot_share_curves
from common.reduction import reduce_tokens
from common.run import MissingInputs, Run, stable_hash, target
from common.schedule import FASTV_K, map_layer
from papers.dyrate import reported as R
from papers.dyrate.analysis import TOKEN_TYPES, ShareTrace, generation_shares, share_trend
from papers.dyrate.inputs import (
    CAPTION_DATA, QA_COLUMNS, QA_NOTES, SampleSet, captions, qa, qa_columns, require, train_missing, training_captions,
    validation_captions,
)
from papers.dyrate.predictor import RatePredictor
from papers.dyrate.records import (
    Method, depth_prune, dims_of, dyrate, fastv, fixed_prune, generate_records, mean_rate, method_flops, original,
    scores, vtw,
)
from papers.dyrate.train import PAPER_TARGET, TrainConfig, train_predictor

SCALES = ("toy", "paper")
WHY_NOT = ("mini: easy-vqa has no captions to train or score the rate predictor on (`make mini-report` runs "
           "DyRate's fixed-rate form at the mini scale)")
TOY = DEFAULT_CHECKPOINTS["toy"]
TOY_PREDICTOR = CHECKPOINTS / "dyrate-predictor"


@dataclass(frozen=True)
class Options:
    """DyRate's knobs (`--set dyrate.<name>=<value>`). None: the scale's default (in brackets: toy / paper)."""

    n_caption: int | None = None  # test captions [--n, else 64 / all]
    n_qa: int | None = None  # samples per Table I family [--n, else 32 / all]
    caption_tokens: int | None = None  # max new tokens of a caption [48 / 64, lmms-eval's caption setting]
    qa_tokens: int = 8  # max new tokens of a short answer
    K: int | None = None  # DyRate's pruning layer [2 of 32, not depth-mapped, at most L-1]
    predictor_dir: str = ""  # the predictor's folder [checkpoints/dyrate-predictor / <out_dir>/predictor]
    retrain: bool = False  # dyrate-predictor: train the predictor even if its folder holds one
    train_data: str = "coco"  # paper-scale training captions under train_root: coco | pretrain | instruct
    n_train: int | None = None  # training captions [512 / 4096]
    n_val: int = 48  # held-out captions of the predictor's check after training
    train_epochs: int | None = None  # [4 / 2]
    train_batch_size: int | None = None  # [16 / 4: the policy pass keeps float32 attention of every layer]
    target: float | None = None  # FLOPs target [the paper's average rate 0.7 at the toy's size / the paper's 1/3]
    n_latency: int = 6  # captions timed per method in Table III (after one warm-up)


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setup:
    """A run's resolved settings: the knobs with the scale's defaults filled in."""

    opt: Options
    K: int
    n_caption: int | None
    n_qa: int | None
    caption_tokens: int
    qa_tokens: int

    @classmethod
    def of(cls, run: Run) -> "Setup":
        opt = run.options(Options)
        paper = run.scale == "paper"
        K = opt.K if opt.K is not None else min(FASTV_K, run.n_layers - 1)
        return cls(opt, K, opt.n_caption if opt.n_caption is not None else run.n(64),
                   opt.n_qa if opt.n_qa is not None else run.n(32),
                   opt.caption_tokens or (64 if paper else 48), opt.qa_tokens)

    def config(self) -> dict[str, Any]:
        """For sidecars."""
        return {"options": asdict(self.opt), "K": self.K, "n_caption": self.n_caption, "n_qa": self.n_qa,
                "caption_tokens": self.caption_tokens, "qa_tokens": self.qa_tokens}


def methods(run: Run, K: int) -> dict[str, Method]:
    """The rows of Tables I-III: the original model, FastV (a) and (b), VTW and DyRate."""
    L = run.n_layers
    ka, kb = min(3, L - 1), min(2, L - 1)
    return {
        "vanilla": original(),
        "fastv_a": fastv(ka, 0.5, f"FastV (a) K={ka} R=50%"),
        "fastv_b": fastv(kb, 0.5, f"FastV (b) K={kb} R=50%"),
        "vtw": vtw(max(1, map_layer(16, L))),
        "dyrate": dyrate(K),
    }


# method key -> its row in the paper's caption Tables II and III
PAPER_CAPTION_ROWS = {"vanilla": "Original", "fastv_a": "FastV (a)", "fastv_b": "FastV (b)", "vtw": "VTW",
                      "dyrate": "DyRate"}


# ------------------------------------------------------------------------------------------- predictor
def predictor_dir(run: Run, opt: Options) -> Path:
    if opt.predictor_dir:
        return Path(opt.predictor_dir).expanduser()
    return TOY_PREDICTOR if run.scale == "toy" else run.out_dir / "predictor"


def train_config(run: Run, s: Setup) -> TrainConfig:
    """The scale's training recipe (`TrainConfig`'s defaults at toy scale, where the committed one came from)."""
    o, paper = s.opt, run.scale == "paper"
    return TrainConfig(K=s.K, target=o.target if o.target is not None else (PAPER_TARGET if paper else None),
                       epochs=o.train_epochs or (2 if paper else 4),
                       batch_size=o.train_batch_size or (4 if paper else 16),
                       n_train=o.n_train or (4096 if paper else 512), data_seed=run.cfg.seed)


def ensure_predictor(run: Run, s: Setup, retrain: bool = False) -> tuple[RatePredictor, dict[str, Any], Path]:
    """The run's predictor and its card, trained first if its folder is missing (or `retrain`: only the
    `dyrate-predictor` target passes the option on, so `make dyrate` retrains once, not once per table)."""
    folder = predictor_dir(run, s.opt)
    if retrain or not (folder / CARD).exists():
        train_and_save(run, s, folder)
    card = json.loads((folder / CARD).read_text())
    made_for = card.get("vlm", {}).get("checkpoint")
    if made_for is not None and made_for != run.checkpoint_hash:
        raise ValueError(f"predictor_dir: {folder} was trained for the model {made_for[:12]}..., this run's model "
                         f"is {run.checkpoint_hash[:12]}...; retrain it (`dyrate-predictor --set "
                         "dyrate.retrain=true`) or point --set dyrate.predictor_dir=... at this model's predictor")
    return RatePredictor.load(folder), card, folder


def require_predictor(run: Run, opt: Options, retrain: bool = False) -> list[str]:
    """Preflight lines (before any model is loaded) for a predictor that would have to be trained first and
    cannot be."""
    folder = predictor_dir(run, opt)
    if run.scale != "paper" or ((folder / CARD).exists() and not retrain):
        return []
    lines = train_missing(run.cfg.train_root, opt.train_data)
    return [f"predictor: {folder} holds none, and training one needs: {ln}" for ln in lines]


def train_and_save(run: Run, s: Setup, folder: Path) -> None:
    """Train a predictor on the scale's training captions, check it on held-out ones, save it to `folder`
    (rank 0). Resumable: the state lives in `folder/state/` until the predictor is saved, and a rerun of an
    interrupted training continues from it."""
    cfg = train_config(run, s)
    state = folder / "state" / "train.pt"  # removed once the predictor is saved: a state left is an interrupted run
    train = training_captions(run, s.opt.train_data, cfg.n_train)
    val = validation_captions(run, s.opt.train_data, cfg.n_train, s.opt.n_val)
    pred, card = train_predictor(run.vlm, train, cfg, state_path=state, dtype=run.dtype,
                                 log=print if run.is_main else (lambda _: None))
    card["vlm"] = {"scale": run.scale, "name": getattr(run.vlm, "name", None), "checkpoint": run.checkpoint_hash}
    card["data"] = {"source": "ToyWorld train captions" if run.scale == "toy" else s.opt.train_data,
                    "validation": "ToyWorld val captions" if run.scale == "toy" else "held-out captions"}
    card["validation"] = validate_predictor(run, s, pred, card["target"], val)
    if run.is_main:
        pred.save(folder, card)
        shutil.rmtree(folder / "state", ignore_errors=True)
    if run.world > 1:
        dist.barrier()


def validate_predictor(run: Run, s: Setup, pred: RatePredictor, target_flops: float,
                       samples: Sequence) -> dict[str, float]:
    """Achieved relative FLOPs of argmax inference (recompute mode) on held-out captions."""
    data = SampleSet.of("validation", samples)
    recs = generate_records(run, data, dyrate(pred.K), s.caption_tokens, pred)
    achieved = method_flops(run, dyrate(pred.K), recs)
    return {"achieved_flops": achieved, "target": target_flops, "gap_points": 100 * (achieved - target_flops),
            "mean_rate": mean_rate(recs), "n_val": len(data)}


@target("dyrate-predictor", paper="dyrate", scales=SCALES, kind="table", checkpoint=TOY, why_not=WHY_NOT)
def predictor_target(run: Run) -> dict[str, Path]:
    """`make dyrate-predictor`: train the predictor if its folder is missing (toy: the committed
    checkpoints/dyrate-predictor; paper: <out_dir>/predictor from TRAIN_ROOT's captions); print its card."""
    opt = run.options(Options)
    require(run, extra=require_predictor(run, opt, opt.retrain))
    folder = predictor_dir(run, opt)
    trained = opt.retrain or not (folder / CARD).exists()
    _, card, folder = ensure_predictor(run, Setup.of(run), opt.retrain)
    if run.is_main:
        print(json.dumps({k: card.get(k) for k in ("target", "validation", "train_time_s")}, indent=1))
    return {"card": folder / CARD} if trained else {}


# ------------------------------------------------------------------------------------------- helpers
def _prov(run: Run, s: Setup, folder: Path | None = None) -> dict:
    inputs = {"predictor": checkpoint_sha256(folder)} if folder is not None else {}
    return run.provenance(s.config(), inputs=inputs)


def _table(run: Run, s: Setup, number: int, rows: list[dict], about: str, folder: Path) -> dict[str, Path]:
    """out_dir/table<number>, titled "DyRate Table <roman>: <about>" with the run's scale, model and data."""
    roman = ("I", "II", "III", "IV", "V")[number - 1]
    return run.write_table(f"table{number}", rows, title=run.title(f"DyRate Table {roman} ({_dims(run)}): {about}"),
                           provenance=_prov(run, s, folder))


def _dims(run: Run) -> str:
    d = dims_of(run)
    return f"{d.n_layers} layers, d={d.hidden}, {run.n_visual} visual tokens"


def _ours(run: Run) -> str:
    return f"ours ({run.scale})"


class Context:
    """What a DyRate artifact reads, loaded once per call: settings, predictor, sample sets."""

    def __init__(self, run: Run, *, captions_needed: bool = True, qa_needed: bool = False):
        self.run = run
        require(run, captions=captions_needed, qa=qa_needed, extra=require_predictor(run, run.options(Options)))
        self.s = Setup.of(run)
        self.predictor, self.card, self.folder = ensure_predictor(run, self.s)
        self.captions = captions(run, self.s.n_caption) if captions_needed else None
        self.qa = qa(run, self.s.n_qa) if qa_needed else None

    def caption_run(self, m: Method) -> tuple[list[dict], float, float]:
        """(records, CIDEr, relative FLOPs) of `m` on the test captions."""
        recs = generate_records(self.run, self.captions, m, self.s.caption_tokens, self.predictor)
        return recs, scores(self.captions, recs)["caption"]["cider"], method_flops(self.run, m, recs)

    def qa_run(self, m: Method) -> tuple[list[dict], dict[str, dict[str, float]], float]:
        recs = generate_records(self.run, self.qa, m, self.s.qa_tokens, self.predictor)
        return recs, scores(self.qa, recs), method_flops(self.run, m, recs)


# ------------------------------------------------------------------------------------------- tables
@target("dyrate-table1", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def table1(run: Run) -> dict[str, Path]:
    """`make dyrate-table1`: short-answer accuracy (%) and relative FLOPs, paper Table I beside."""
    c = Context(run, captions_needed=False, qa_needed=True)
    paper_name = {"vanilla": "LLaVA-1.5", "fastv_b": "FastV", "vtw": "VTW", "dyrate": "DyRate"}
    rows = []
    for key, m in methods(run, c.s.K).items():
        recs, sc, fl = c.qa_run(m)
        row = {"method": m.label, "source": _ours(run)}
        for col, fam in qa_columns(run):
            row[col] = sc[fam]["score"] if fam else None
        row["FLOPs %"] = 100 * fl
        row["mean rate"] = mean_rate(recs)
        rows.append(row)
        if key in paper_name:
            rows.append({"method": m.label, "source": "paper (LLaVA-1.5-7B)",
                         **dict(zip(R.TABLE1_BENCHMARKS, R.TABLE1[paper_name[key]]))})
    per = f"{c.s.n_qa}/family" if c.s.n_qa is not None else "every sample"
    return _table(run, c.s, 1, rows, f"{per}; {QA_NOTES[run.scale]}; paper rows: {R.TABLE1_SOURCE}", c.folder)


@target("dyrate-table2", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def table2(run: Run) -> dict[str, Path]:
    """`make dyrate-table2`: caption CIDEr-D, paper Table II (as printed) beside."""
    c = Context(run)
    rows = []
    for key, m in methods(run, c.s.K).items():
        _, cider, fl = c.caption_run(m)
        row = {"method": m.label, f"ours CIDEr ({run.scale})": cider, "ours FLOPs %": 100 * fl}
        for model in ("LLaVA-1.5-7B", "LLaVA-1.5-13B"):
            for bench, v in zip(R.TABLE2_BENCHMARKS, R.TABLE2[(model, PAPER_CAPTION_ROWS[key])]):
                row[f"paper {model[10:]} {bench}"] = v
        rows.append(row)
    return _table(run, c.s, 2, rows, f"{len(c.captions)} {CAPTION_DATA[run.scale]}; paper: {R.TABLE2_SOURCE}",
                  c.folder)


def _latency(c: Context, m: Method) -> float:
    """Mean wall-clock ms per generated token, batch 1, no KV cache for every method (the paper's latency is
    most plausibly per forward without a cache); the first sample is warm-up. CUDA work is synchronised."""
    run, vlm = c.run, c.run.vlm
    total_t, total_n = 0.0, 0
    for i, smp in enumerate(c.captions.samples[: c.s.opt.n_latency + 1]):
        inputs = run.batches([smp])[0]
        red = m.reducer(run, c.predictor)
        run.timer.sync()
        t = time.perf_counter()
        with torch.no_grad(), reduce_tokens(vlm.model, red, image_token_id=vlm.image_token_id):
            out = vlm.model.generate(**inputs, max_new_tokens=c.s.caption_tokens, do_sample=False, use_cache=False)
        run.timer.sync()
        dt = time.perf_counter() - t
        if i:
            total_t += dt
            total_n += out.shape[1] - inputs["input_ids"].shape[1]
    return 1000 * total_t / max(total_n, 1)


@target("dyrate-table3", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def table3(run: Run) -> dict[str, Path]:
    """`make dyrate-table3`: relative FLOPs, per-token latency, CIDEr, auto R; paper Table III beside."""
    c = Context(run)
    rows = []
    for key, m in methods(run, c.s.K).items():
        _, cider, fl = c.caption_run(m)
        p7 = R.TABLE3[("LLaVA-1.5-7B", PAPER_CAPTION_ROWS[key])]
        rows.append({"method": m.label, "ours FLOPs %": 100 * fl, "ours latency ms/token": _latency(c, m),
                     "ours CIDEr": cider, "auto R": key == "dyrate",
                     "DyRate target FLOPs %": 100 * c.card["target"] if key == "dyrate" else None,
                     "paper 7B TFLOPs %": p7[0], "paper 7B latency ms": p7[1], "paper 7B 'NoCaps'": p7[2]})
    return _table(run, c.s, 3, rows, f"{len(c.captions)} {CAPTION_DATA[run.scale]}, latency on {run.timer.label} "
                  f"(batch 1, no KV cache); paper: {R.TABLE3_SOURCE}", c.folder)


@target("dyrate-table4", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def table4(run: Run) -> dict[str, Path]:
    """`make dyrate-table4`: decoding strategies (greedy, beam 2/5, top-k 6 sampling), dense and with DyRate."""
    c = Context(run)
    paper = dict(zip(("greedy", "beam2", "beam5", "topk6"), R.TABLE4.values()))
    names = {"greedy": "Greedy", "beam2": "Beam-2", "beam5": "Beam-5", "topk6": "top-k = 6 sampling"}
    rows = []
    for dec in ("greedy", "beam2", "beam5", "topk6"):
        row = {"strategy": names[dec]}
        for m, label in ((original(dec), "dense"), (dyrate(c.s.K, dec), "DyRate")):
            recs, cider, _ = c.caption_run(m)
            row[f"ours CIDEr ({label})"] = cider
            if label == "DyRate":
                row["DyRate mean rate"] = mean_rate(recs)
        row["paper NoCaps CIDEr"] = paper[dec]
        rows.append(row)
    return _table(run, c.s, 4, rows, f"{len(c.captions)} {CAPTION_DATA[run.scale]} (beams: the rate is averaged "
                  f"over beams); paper: {R.TABLE4_SOURCE}", c.folder)


@target("dyrate-table5", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def table5(run: Run) -> dict[str, Path]:
    """`make dyrate-table5`: FixedPrune at DyRate's mean rate, DepthBasedPrune, DyRate; paper Table V beside."""
    c = Context(run)
    ms = methods(run, c.s.K)
    dy_recs, dy_cider, dy_fl = c.caption_run(ms["dyrate"])
    rate = round(mean_rate(dy_recs), 2)
    start = max(1, map_layer(4, run.n_layers))
    # DP's R0 at the start layer: chosen so that its FLOPs land near DyRate's (on a 0.05 grid)
    dp_rate = dp_rate_matching(run, start, dy_recs, dy_fl)
    plan = [("LLaVA", ms["vanilla"]), ("FastV", ms["fastv_b"]), ("Ours (DP, label lost)", depth_prune(start, dp_rate)),
            ("Ours (FP, label lost)", fixed_prune(c.s.K, rate, f"FP R={rate:.2f} (DyRate's mean)"))]
    rows = []
    for paper_key, m in plan:
        _, cider, fl = c.caption_run(m)
        p = R.TABLE5[paper_key]
        rows.append({"strategy": m.label, "ours CIDEr": cider, "ours FLOPs %": 100 * fl, "paper row": paper_key,
                     "paper NoCaps CIDEr": p[0], "paper FLOPs %": p[1]})
    rows.append({"strategy": "DyRate (learned, per step)", "ours CIDEr": dy_cider, "ours FLOPs %": 100 * dy_fl,
                 "paper row": None, "paper NoCaps CIDEr": None, "paper FLOPs %": None})
    return _table(run, c.s, 5, rows, f"{len(c.captions)} {CAPTION_DATA[run.scale]}; DP = R'_l = min(1, R0 l / "
                  f"start) [R, a guess]; paper: {R.TABLE5_SOURCE}", c.folder)


def dp_rate_matching(run: Run, start: int, records: Sequence[dict], target_flops: float) -> float:
    """The R0 on a 0.05 grid whose DP FLOPs over `records`' prompts and lengths are closest to `target_flops`."""
    grid = [round(float(x), 2) for x in np.arange(0.05, 1.0001, 0.05)]
    return min(grid, key=lambda R0: abs(method_flops(run, depth_prune(start, R0), records) - target_flops))


# ------------------------------------------------------------------------------------------ figures
def caption_shares(run: Run, data: SampleSet, max_new_tokens: int) -> ShareTrace:
    """Attention shares of every layer over `data`, dense model, padded to the same steps (cached). At paper
    scale the heads are averaged per batch (5000 captions x 32 layers x 32 heads would not fit in memory;
    every figure and table reads the head mean)."""
    key = stable_hash({"run": run.run_key, "data": data.key, "mnt": max_new_tokens, "bs": run.cfg.batch_size})
    path = run.cache_dir / "dyrate" / f"shares-{key[:16]}.npz"
    if path.exists():
        z = np.load(path)
        return ShareTrace(z["shares"], tuple(z["layers"].tolist()), z["tokens"], z["active"])
    vlm, bs = run.vlm, run.cfg.batch_size
    mine = []
    for i in list(range(0, len(data.samples), bs))[run.rank::run.world]:
        p = generation_shares(vlm.model, run.batches(data.samples[i:i + bs])[0], max_new_tokens=max_new_tokens,
                              image_token_id=vlm.image_token_id)
        if run.scale == "paper":
            p = ShareTrace(p.shares.mean(3, keepdims=True), p.layers, p.tokens, p.active)
        mine.append((i, p))
    parts = mine
    if run.world > 1:
        gathered: list[list] = [[] for _ in range(run.world)]
        dist.all_gather_object(gathered, mine)
        parts = sorted((x for g in gathered for x in g), key=lambda x: x[0])
    parts = [p for _, p in parts]
    T = max(p.shares.shape[1] for p in parts)

    def pad(a, fill):
        w = [(0, 0)] * a.ndim
        w[1] = (0, T - a.shape[1])
        return np.pad(a, w, constant_values=fill)

    tr = ShareTrace(np.concatenate([pad(p.shares, np.nan) for p in parts]), parts[0].layers,
                    np.concatenate([pad(p.tokens, -1) for p in parts]), np.concatenate([pad(p.active, False) for p in parts]))
    if run.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, shares=tr.shares, layers=np.array(tr.layers), tokens=tr.tokens, active=tr.active)
    return tr


def attention_trends(tr: ShareTrace) -> list[dict]:
    """Per layer (and the mean over layers): slope per step of each type's mean share, and its first/last values."""
    hm = tr.head_mean()  # [B, T, L, 4]
    views = [(f"layer {l}", hm[:, :, i]) for i, l in enumerate(tr.layers)] + [("mean over layers", tr.layer_mean())]
    rows = []
    for name, arr in views:
        row = {"layers": name}
        for i, t in enumerate(TOKEN_TYPES):
            row[f"{t} slope/step"] = share_trend(arr[..., i])
        img = arr[..., TOKEN_TYPES.index("image")]
        row["image share step 1"] = float(np.nanmean(img[:, 0]))
        n_ok = np.sum(~np.isnan(img), 0) >= 3
        row["image share last step (>=3 samples)"] = float(np.nanmean(img[:, np.nonzero(n_ok)[0][-1]]))
        row["steps (>=3 samples)"] = int(n_ok.sum())
        rows.append(row)
    return rows


@target("dyrate-fig-attention", paper="dyrate", scales=SCALES, kind="figure", checkpoint=TOY, why_not=WHY_NOT)
def fig_attention(run: Run) -> dict[str, Path]:
    """`make dyrate-fig-attention`: the share of the newest token's attention per token type over generation
    steps (mean and s.e.m. band over the test captions), for a few layers and the mean over layers."""
    require(run, captions=True)
    s = Setup.of(run)
    data = captions(run, s.n_caption)
    tr = caption_shares(run, data, s.caption_tokens)
    apply_style()
    L = len(tr.layers)
    picks = sorted({0, s.K - 1, L // 2, L - 1})
    fig, axes = new_figure(1, len(picks) + 1, height=3.0, width=3.2 * (len(picks) + 1))
    hm = tr.head_mean()
    steps = np.arange(1, tr.shares.shape[1] + 1)
    for ax, l in zip(axes, picks):
        plot_share_curves(steps, tr.per_type(hm[:, :, l]), ax=ax)
        ax.set_title(f"layer {l}")
    plot_share_curves(steps, tr.per_type(), ax=axes[-1])
    axes[-1].set_title("mean over layers")
    fig.suptitle(run.title(f"Attention share of the newest token ({_dims(run)}), {len(data)} "
                           f"{CAPTION_DATA[run.scale]}"))
    out = run.save_figure("fig_attention", fig, provenance=_prov(run, s))
    out.update(run.write_table("fig_attention_trends", attention_trends(tr), provenance=_prov(run, s), title=run.title(
        "Trend of the attention shares over generation steps (least-squares slope of the mean curve; steps with "
        ">= 3 samples)")))
    return out


@target("dyrate-fig-rate", paper="dyrate", scales=SCALES, kind="figure", checkpoint=TOY, why_not=WHY_NOT)
def fig_rate(run: Run) -> dict[str, Path]:
    """`make dyrate-fig-rate`: DyRate's predicted rate R_t per generation step (mean, band, a few samples) and
    the image share of layer K-1 it reads, on the test captions (the records of `dyrate-table2`)."""
    c = Context(run)
    recs, _, _ = c.caption_run(dyrate(c.s.K))
    T = c.s.caption_tokens
    rates, img = np.full((len(recs), T), np.nan), np.full((len(recs), T), np.nan)
    for i, r in enumerate(recs):
        rates[i, : r["steps"]] = r["rates"]
        img[i, : r["steps"]] = np.asarray(r["shares"])[:, TOKEN_TYPES.index("image")]
    steps = np.arange(1, T + 1)
    apply_style()
    fig, axes = new_figure(1, 2, height=3.0, width=9.0)
    plot_share_curves(steps, {"predicted rate R_t": rates}, ax=axes[0], ylabel="pruning rate")
    for row in rates[:5]:
        axes[0].plot(steps, row, lw=0.6, alpha=0.5, color="gray")
    axes[0].set_title("DyRate's rate over generation steps")
    plot_share_curves(steps, {"image": img}, ax=axes[1], ylabel=f"image share, layer {c.s.K - 1}")
    axes[1].set_title("what the predictor reads (image share)")
    out = run.save_figure("fig_rate", fig, provenance=_prov(run, c.s, c.folder))
    ok = ~np.isnan(rates)
    corr = float(np.corrcoef(rates[ok], img[ok])[0, 1]) if ok.sum() > 2 and np.std(rates[ok]) > 0 else float("nan")
    out.update(run.write_table("fig_rate_trend", [{
        "rate slope/step": share_trend(rates), "image-share slope/step": share_trend(img),
        "mean rate step 1": float(np.nanmean(rates[:, 0])), "mean rate": float(np.nanmean(rates)),
        "corr(rate, image share)": corr, "samples": len(recs), "steps (>=3 samples)": int((np.sum(ok, 0) >= 3).sum())}],
        title=run.title("DyRate's predicted rate over generation steps"), provenance=_prov(run, c.s, c.folder)))
    return out


def vtw_layers(n_layers: int) -> list[int]:
    """VTW's withdrawal layers for the curves: k = 4, 8, ..., 28 of 32 mapped to the model (every layer of a
    shallow decoder; seven points of a deep one)."""
    return sorted({max(1, map_layer(k, n_layers)) for k in range(4, 32, 4)})


@target("dyrate-fig-curves", paper="dyrate", scales=SCALES, kind="figure", checkpoint=TOY, why_not=WHY_NOT)
def fig_curves(run: Run) -> dict[str, Path]:
    """`make dyrate-fig-curves`: caption CIDEr and QA accuracy vs relative generation FLOPs."""
    c = Context(run, qa_needed=True)
    K = c.s.K
    ms = methods(run, K)
    families = {
        f"FastV (K={K})": [fastv(K, r) for r in (0.25, 0.5, 0.75, 0.9)],
        "VTW": [vtw(k) for k in vtw_layers(run.n_layers)],
        "DyRate": [ms["dyrate"]],
        "Original": [ms["vanilla"]],
    }
    apply_style()
    fig, axes = new_figure(1, 2, height=3.2, width=9.0)
    rows = []
    for name, group in families.items():
        xs_c, ys_c, xs_q, ys_q = [], [], [], []
        for m in group:
            _, cider, fl_c = c.caption_run(m)
            _, sq, fl_q = c.qa_run(m)
            acc = float(np.mean([v["score"] for v in sq.values()]))
            xs_c.append(100 * fl_c)
            ys_c.append(cider)
            xs_q.append(100 * fl_q)
            ys_q.append(acc)
            rows.append({"method": m.label, "caption FLOPs %": xs_c[-1], "CIDEr": cider, "QA FLOPs %": xs_q[-1],
                         "QA mean accuracy": acc})
        style = "*" if name in ("DyRate", "Original") else "o-"
        axes[0].plot(xs_c, ys_c, style, label=name, ms=9 if "*" in style else 4)
        axes[1].plot(xs_q, ys_q, style, label=name, ms=9 if "*" in style else 4)
    axes[0].set(xlabel="relative generation FLOPs (%)", ylabel="CIDEr-D", title="captions")
    axes[1].set(xlabel="relative generation FLOPs (%)", ylabel="mean accuracy (%)", title="short-answer families")
    axes[0].legend()
    out = run.save_figure("fig_curves", fig, provenance=_prov(run, c.s, c.folder))
    out.update(run.write_table("fig_curves", rows, title=run.title("Points of dyrate-fig-curves"),
                               provenance=_prov(run, c.s, c.folder)))
    return out


# ------------------------------------------------------------------------------------------- claims
def _rows(name: str, out: Path) -> list[dict]:
    path = out / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run its Make target first (see the module docstring)")
    return json.loads(path.read_text())["rows"]


def claims(out: Path, scale: str = "toy") -> list[dict]:
    """The paper's claims, each with the number that decides it at our scale, read from the artifacts in `out`."""
    ours, cider = f"ours ({scale})", f"ours CIDEr ({scale})"
    trend = {r["layers"]: r for r in _rows("fig_attention_trends", out)}["mean over layers"]
    rate = _rows("fig_rate_trend", out)[0]
    t2 = {r["method"]: r for r in _rows("table2", out)}
    t3 = {r["method"]: r for r in _rows("table3", out)}
    t5 = _rows("table5", out)
    dy, van = t2["DyRate"], t2["Original"]
    fastvs = [r for k, r in t2.items() if k.startswith("FastV")]
    vtw_row = [r for k, r in t2.items() if k.startswith("VTW")][0]
    fp = [r for r in t5 if str(r["strategy"]).startswith("FP")][0]
    dp = [r for r in t5 if str(r["strategy"]).startswith("DP")][0]
    goal = t3["DyRate"]["DyRate target FLOPs %"]
    achieved = t3["DyRate"]["ours FLOPs %"]
    t1 = [r for r in _rows("table1", out) if r["source"] == ours]
    cols = [c for c, f in QA_COLUMNS[scale] if f]
    qa_mean = {r["method"]: float(np.mean([r[c] for c in cols])) for r in t1}

    def row(claim, paper, value, held):
        return {"claim": claim, "paper": paper, ours: value, "held": "yes" if held else "no"}

    # a trend counts when the fitted change over the caption (slope x steps) passes a threshold
    img_change = trend["image slope/step"] * (trend["steps (>=3 samples)"] - 1)
    res_change = trend["response slope/step"] * (trend["steps (>=3 samples)"] - 1)
    rate_change = rate["rate slope/step"] * (rate["steps (>=3 samples)"] - 1)

    best_fastv = max(fastvs, key=lambda r: r[cider])
    return [
        row("image share of the newest token's attention falls as the answer grows (Fig. 2; fitted change "
            "over the caption <= -0.02)", "qualitative",
            f"change {img_change:+.3f} (mean over layers); step 1 {trend['image share step 1']:.3f}", img_change <= -0.02),
        row("response share rises (fitted change >= +0.02)", "qualitative", f"change {res_change:+.3f}",
            res_change >= 0.02),
        row("the predicted rate rises over generation steps (Fig. 4; fitted change >= +0.05)", "qualitative",
            f"change {rate_change:+.3f}; corr(rate, image share) {rate['corr(rate, image share)']:+.2f}",
            rate_change >= 0.05),
        row("the FLOPs constraint is met without manual search (target within 3 points)", "33.33% TFLOPs",
            f"{achieved:.2f}% achieved vs {goal:.2f}% target", abs(achieved - goal) <= 3.0),
        row("captioning: DyRate >= Original at a fraction of the FLOPs (Table II/III)", "75.00 vs 74.89 (7B)",
            f"CIDEr {dy[cider]:.1f} at {dy['ours FLOPs %']:.1f}% vs {van[cider]:.1f}", dy[cider] >= van[cider]),
        row("captioning: DyRate >= FastV at lower FLOPs", "75.00 @33% vs 74.75 @57.9%",
            f"{dy[cider]:.1f} @{dy['ours FLOPs %']:.1f}% vs best FastV {best_fastv[cider]:.1f} "
            f"@{best_fastv['ours FLOPs %']:.1f}%",
            dy[cider] >= best_fastv[cider] and dy["ours FLOPs %"] <= best_fastv["ours FLOPs %"]),
        row("captioning: VTW falls far behind", "44.54 vs 74.89",
            f"{vtw_row[cider]:.1f} @{vtw_row['ours FLOPs %']:.1f}% vs Original {van[cider]:.1f}",
            vtw_row[cider] < min(dy[cider], best_fastv[cider])),
        row("a per-step rate beats a fixed rate at the same FLOPs (Table V: FP)", "105.00 @58.1% (FP)",
            f"DyRate {dy[cider]:.1f} @{dy['ours FLOPs %']:.1f}% vs FP {fp['ours CIDEr']:.1f} "
            f"@{fp['ours FLOPs %']:.1f}%", dy[cider] > fp["ours CIDEr"]),
        row("depth-based pruning (DP) at similar FLOPs", "107.00 @28.8% (DP?)",
            f"DP {dp['ours CIDEr']:.1f} @{dp['ours FLOPs %']:.1f}% vs DyRate {dy[cider]:.1f}",
            dy[cider] >= dp["ours CIDEr"]),
        row("short answers: DyRate competitive with the original (Table I)", "e.g. GQA 61.9 vs 62.0",
            f"mean over the {scale} QA columns: " + ", ".join(f"{k} {v:.1f}" for k, v in qa_mean.items()),
            qa_mean.get("DyRate", 0) >= qa_mean.get("Original", 0) - 3.0),
    ]


# artifact -> the target that writes it (dyrate-claims makes the missing ones first)
PRODUCERS: dict[str, tuple[str, Callable[[Run], Any]]] = {
    "table1": ("dyrate-table1", table1), "table2": ("dyrate-table2", table2), "table3": ("dyrate-table3", table3),
    "table5": ("dyrate-table5", table5), "fig_attention_trends": ("dyrate-fig-attention", fig_attention),
    "fig_rate_trend": ("dyrate-fig-rate", fig_rate),
}


@target("dyrate-claims", paper="dyrate", scales=SCALES, checkpoint=TOY, why_not=WHY_NOT)
def claims_table(run: Run) -> dict[str, Path]:
    """`make dyrate-claims`: the paper's claims beside our numbers that decide them, read from the other
    artifacts' sidecars (the missing ones are made first: `make tables` may run this before them)."""
    for name, (target_name, fn) in PRODUCERS.items():
        if not (run.out_dir / f"{name}.json").exists():
            run.start(target_name)
            fn(run)
    run.start("dyrate-claims")
    where = run.out_dir.relative_to(REPO_ROOT) if run.out_dir.is_relative_to(REPO_ROOT) else run.out_dir
    return run.write_table("claims", claims(run.out_dir, run.scale), title=run.title(
        f"DyRate's claims (read from {where}/*.json)"), provenance=run.provenance(Setup.of(run).config()))
