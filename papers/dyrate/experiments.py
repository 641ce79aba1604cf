"""DyRate's tables and figures, one function per artifact (`python -m common.experiment <target>`):

    dyrate-predictor      train checkpoints/dyrate-predictor if it is missing (DYRATE_RETRAIN=1 forces it)
    dyrate-table1         short answers: ToyWorld QA accuracy vs relative FLOPs (paper Table I)
    dyrate-table2         captioning CIDEr (paper Table II)
    dyrate-table3         efficiency: relative FLOPs, per-token latency, CIDEr, auto R (paper Table III)
    dyrate-table4         decoding strategies with DyRate (paper Table IV)
    dyrate-table5         rate-strategy ablation: FixedPrune / DepthBasedPrune / DyRate (paper Table V)
    dyrate-fig-attention  attention share per token type over generation steps, band over samples (Fig. 2)
    dyrate-fig-rate       DyRate's predicted rate over generation steps, beside the image share (Fig. 4's trend)
    dyrate-fig-curves     CIDEr and QA accuracy vs relative FLOPs for FastV, VTW, FixedPrune and DyRate

Scale: toy only (the trained toy LLaVA, checkpoints/toy-llava; ToyWorld test split). The mini/paper models
are not wired here yet.

Shared settings (dyrate.md §6-§7, §11-§12). Every method is expressed as "a rate per generation step at a
layer", so one FLOPs formula (`common.flops.dyrate_generation_flops`, no KV cache, all tokens counted)
serves all of them: vanilla = rate 0; FastV = constant R at K; VTW = rate 1 at its layer; DyRate = the
predicted R_t at K; DP (several layers) goes through `schedule_flops`. FastV and DyRate re-decide at every
step (generation without a KV cache, FastV's original "inplace" form); vanilla and VTW use the cache, which
gives identical outputs for them. Layers: DyRate and FastV (b) prune after layer K = 2 and FastV (a) after
layer 3 (the paper's FastV settings, dyrate.md §6.2; not depth-mapped: mapped to a shallow toy decoder
they collapse to layer 1); VTW removes the image at half depth (k = 16 of 32 mapped, the paper's 55.2%).
Predictions are cached per configuration in .cache/dyrate (DYRATE_CACHE); sizes via DYRATE_N_CAPTION,
DYRATE_N_QA, DYRATE_BATCH.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from common.artifacts import atomic_write_text, file_sha256, provenance, save_figure, write_table
from common.baselines.fastv import FastV
from common.baselines.vtw import VTW
from common.data.sample import Sample
from common.evaluation import hash_samples
from common.experiment import FIGURES, REPO_ROOT, TOY_CHECKPOINT, artifact, load_vlm
from common.flops import DecoderDims, dyrate_generation_flops, schedule_flops
from common.metrics import score_all
from common.models.checkpoint import data_version
from common.reduction import Reducer, reduce_tokens
from common.schedule import map_layer
from common.table_artifact import Table, table_artifact
from papers.dyrate import reported as R
from papers.dyrate.analysis import TOKEN_TYPES, ShareTrace, generation_shares, share_trend
from papers.dyrate.method import DepthPrune, DyRate
from papers.dyrate.predictor import RatePredictor, kept_count
from papers.dyrate.train import PREDICTOR_DIR, TrainConfig, train_predictor

OUT = FIGURES / "dyrate"
QA_COLUMNS = (("GQA", "gqa"), ("VisWiz", None), ("SQA", "mc"), ("VQA", "textvqa"), ("POPE", "pope"),
              ("MMB", "mc"), ("MME", "count"))  # paper column -> ToyWorld family standing in for it
QA_MIRRORS = "GQA<-gqa, SQA & MMB<-mc (multiple choice), VQA(TextVQA)<-textvqa (digit tiles), POPE<-pope, " \
             "MME<-count; VisWiz has no ToyWorld analogue"


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    n_caption: int = 64  # ToyWorld test captions
    n_qa: int = 32  # test samples per QA family
    batch_size: int = 16
    caption_tokens: int = 48  # max new tokens for captions (lmms-eval uses 64 for ~16-64-token captions)
    qa_tokens: int = 8
    K: int = 2
    seed: int = 0
    cache: str = str(REPO_ROOT / ".cache" / "dyrate")

    @classmethod
    def from_env(cls) -> "Settings":
        e = os.environ
        return cls(n_caption=int(e.get("DYRATE_N_CAPTION", cls.n_caption)), n_qa=int(e.get("DYRATE_N_QA", cls.n_qa)),
                   batch_size=int(e.get("DYRATE_BATCH", cls.batch_size)), cache=e.get("DYRATE_CACHE", cls.cache))


@dataclass(frozen=True)
class Method:
    """One row: `kind` in vanilla / fastv / vtw / dyrate / fp / dp, with its layer and rate."""

    label: str
    kind: str
    K: int = 0
    rate: float = 0.0
    decoding: str = "greedy"  # greedy, beam2, beam5, topk6

    def reducer(self, ctx: "Ctx") -> Reducer | None:
        if self.kind == "vanilla":
            return None
        if self.kind == "fastv":
            return FastV(K=self.K, ratio=self.rate)
        if self.kind == "vtw":
            return VTW(K=self.K)
        if self.kind == "fp":
            return DyRate(K=self.K, rate=self.rate)
        if self.kind == "dyrate":
            return DyRate(K=self.K, predictor=ctx.predictor)
        if self.kind == "dp":
            return DepthPrune(start=self.K, n_layers=ctx.dims.n_layers, R0=self.rate)
        raise ValueError(f"kind: unknown method kind {self.kind!r}")

    @property
    def use_cache(self) -> bool:
        return self.kind in ("vanilla", "vtw")


@dataclass
class Ctx:
    settings: Settings
    vlm: Any
    dims: DecoderDims
    predictor: RatePredictor
    run_key: dict
    captions: list[Sample]
    qa: list[Sample]
    model_desc: str


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def ensure_predictor(vlm: Any, retrain: bool = False) -> RatePredictor:
    """The committed predictor, trained first if missing (or if DYRATE_RETRAIN=1)."""
    if retrain or not (PREDICTOR_DIR / "card.json").exists():
        from common.data.toyworld import toyworld_split

        cfg = TrainConfig()
        samples = toyworld_split("train", cfg.n_train, seed=cfg.data_seed, families=("caption",))
        pred, card = train_predictor(vlm, samples, cfg)
        card["vlm"] = {"name": getattr(vlm, "name", None), "checkpoint_sha256": _toy_hashes()}
        card["validation"] = validate_predictor(vlm, pred, card["target"])
        pred.save(PREDICTOR_DIR, card)
    return RatePredictor.load(PREDICTOR_DIR)


def _toy_hashes() -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(TOY_CHECKPOINT.glob("*.safetensors"))}


@lru_cache(maxsize=1)
def _ctx(scale: str = "toy") -> Ctx:
    if scale != "toy":
        raise ValueError(f"scale: DyRate's experiments run at toy scale only, got {scale!r}")
    from common.data.toyworld import toyworld_split

    torch.set_num_threads(2)
    s = Settings.from_env()
    vlm = load_vlm("toy")
    pred = ensure_predictor(vlm, retrain=os.environ.get("DYRATE_RETRAIN") == "1")
    dims = DecoderDims.from_config(vlm.model.config)
    fams = sorted({f for _, f in QA_COLUMNS if f})
    run_key = {"toy": _toy_hashes(), "predictor": file_sha256(PREDICTOR_DIR / "predictor.safetensors")}
    return Ctx(s, vlm, dims, pred, run_key,
               toyworld_split("test", s.n_caption, seed=s.seed, families=("caption",)),
               toyworld_split("test", s.n_qa * len(fams), seed=s.seed, families=fams,
                              version=data_version(TOY_CHECKPOINT)),
               f"toy LLaVA ({dims.n_layers} layers, d={dims.hidden}, {vlm.num_visual_tokens} visual tokens)")


# ------------------------------------------------------------------------------------------ generation
def _n_generated(tokens: torch.Tensor, eos: Sequence[int]) -> list[int]:
    """Steps each sample ran: up to and including its first EOS."""
    out = []
    for row in tokens.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos:
                n = i + 1
                break
        out.append(n)
    return out


def _decoding_kwargs(decoding: str) -> dict[str, Any]:
    return {"greedy": {"do_sample": False}, "beam2": {"do_sample": False, "num_beams": 2},
            "beam5": {"do_sample": False, "num_beams": 5},
            "topk6": {"do_sample": True, "top_k": 6, "top_p": 1.0, "temperature": 1.0}}[decoding]


def generate_records(ctx: Ctx, samples: Sequence[Sample], method: Method, max_new_tokens: int) -> list[dict]:
    """Per sample: prediction, steps run, prompt length, visual tokens and the rate at every step (cached)."""
    s = ctx.settings
    what = {k: v for k, v in asdict(method).items() if k != "label"}  # the label is presentation only
    key = _sha({"run": ctx.run_key, "data": hash_samples(samples), "method": what, "mnt": max_new_tokens,
                "bs": s.batch_size, "v": 2})
    path = Path(s.cache) / f"{method.kind}-{method.decoding}-{key[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    vlm, model = ctx.vlm, ctx.vlm.model
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    records = []
    for i in range(0, len(samples), s.batch_size):
        batch = list(samples[i:i + s.batch_size])
        inputs = dict(vlm.build_inputs(batch))
        red = method.reducer(ctx)
        kw = {**_decoding_kwargs(method.decoding), "use_cache": method.use_cache}
        torch.manual_seed(s.seed + i)
        with torch.no_grad(), reduce_tokens(model, red, image_token_id=vlm.image_token_id):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kw)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = vlm.decode(new)
        steps = _n_generated(new, eos)
        n_prompt = inputs["attention_mask"].sum(1).tolist()
        n_vis = (inputs["input_ids"] == vlm.image_token_id).sum(1).tolist()
        trace = red.trace.rates() if isinstance(red, DyRate) else None
        shares = red.trace.shares() if isinstance(red, DyRate) else None
        beams = trace.shape[0] // len(batch) if trace is not None else 1
        for b, smp in enumerate(batch):
            rec = {"id": smp.id, "prediction": texts[b].strip(), "steps": steps[b], "n_prompt": int(n_prompt[b]),
                   "n_visual": int(n_vis[b])}
            if trace is not None:  # beams: the mean over the sample's beams per step (approximate FLOPs)
                r = trace[b * beams:(b + 1) * beams].mean(0)[: steps[b]].tolist()
                rec["shares"] = shares[b * beams:(b + 1) * beams].mean(0)[: steps[b]].tolist()
            else:
                r = [0.0 if method.kind in ("vanilla", "dp") else (1.0 if method.kind == "vtw" else method.rate)] \
                    * steps[b]
            rec["rates"] = r + [r[-1] if r else 0.0] * (steps[b] - len(r))
            records.append(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(records))
    return records


def method_flops(ctx: Ctx, method: Method, records: Sequence[dict]) -> float:
    """Sum of generation FLOPs over samples / the dense sum (no KV cache, all tokens; dyrate.md §7.2)."""
    red = dense = 0
    for r in records:
        if method.kind == "dp":
            dp = DepthPrune(start=method.K, n_layers=ctx.dims.n_layers, R0=method.rate)
            kept = [r["n_visual"] - kept_count(r["n_visual"], x) for x in dp.rates_per_layer()]
            for t in range(r["steps"]):
                n_t = r["n_prompt"] + t
                red += schedule_flops([n_t - k for k in kept], ctx.dims)
                dense += schedule_flops(n_t, ctx.dims)
            continue
        f = dyrate_generation_flops(r["n_prompt"], r["n_visual"], r["rates"], max(method.K, 0), ctx.dims)
        red += f["reduced"]
        dense += f["dense"]
    return red / dense


def scores(samples: Sequence[Sample], records: Sequence[dict]) -> dict[str, dict[str, float]]:
    return score_all(samples, {r["id"]: r["prediction"] for r in records})


# ----------------------------------------------------------------------------------------- methods
def methods(ctx: Ctx) -> dict[str, Method]:
    L, K = ctx.dims.n_layers, ctx.settings.K
    return {
        "vanilla": Method("Original", "vanilla"),
        "fastv_a": Method("FastV (a) K=3 R=50%", "fastv", K=min(3, L - 1), rate=0.5),
        "fastv_b": Method("FastV (b) K=2 R=50%", "fastv", K=min(2, L - 1), rate=0.5),
        "vtw": Method(f"VTW k={max(1, map_layer(16, L))}", "vtw", K=max(1, map_layer(16, L))),
        "dyrate": Method("DyRate", "dyrate", K=K),
    }


def _prov(ctx: Ctx, started: float, **config) -> dict:
    return provenance(config={"scale": "toy", "model": ctx.model_desc, **asdict(ctx.settings), **config},
                      seeds={"data": ctx.settings.seed}, inputs=ctx.run_key, started=started)


def _mean_rate(records: Sequence[dict]) -> float:
    rates = [x for r in records for x in r["rates"]]
    return float(np.mean(rates)) if rates else 0.0


def _table(ctx: Ctx, number: int, rows: list[dict], about: str, started: float) -> Table:
    """figures/dyrate/table<number>, titled "DyRate Table <roman> at toy scale: <model>, <about>"."""
    roman = ("I", "II", "III", "IV", "V")[number - 1]
    return Table(rows, OUT / f"table{number}", f"DyRate Table {roman} at toy scale: {ctx.model_desc}, {about}",
                 _prov(ctx, started))


# ------------------------------------------------------------------------------------------- tables
@artifact("dyrate-predictor", kind="table")
def predictor_target(scale: str) -> None:
    """`make dyrate-predictor`: train the predictor if checkpoints/dyrate-predictor is missing."""
    _ctx(scale)
    card = json.loads((PREDICTOR_DIR / "card.json").read_text())
    print(json.dumps({k: card.get(k) for k in ("target", "validation", "train_time_s")}, indent=1))


@table_artifact("dyrate-table1")
def table1(scale: str, started: float) -> Table:
    """`make dyrate-table1`: ToyWorld short-answer accuracy (%) and relative FLOPs, paper Table I beside."""
    ctx = _ctx(scale)
    rows = []
    paper_name = {"vanilla": "LLaVA-1.5", "fastv_b": "FastV", "vtw": "VTW", "dyrate": "DyRate"}
    for key, m in methods(ctx).items():
        recs = generate_records(ctx, ctx.qa, m, ctx.settings.qa_tokens)
        sc = scores(ctx.qa, recs)
        row = {"method": m.label, "source": "ours (toy)"}
        for col, fam in QA_COLUMNS:
            row[col] = sc[fam]["score"] if fam else None
        row["FLOPs %"] = 100 * method_flops(ctx, m, recs)
        row["mean rate"] = _mean_rate(recs)
        rows.append(row)
        if key in paper_name:
            rows.append({"method": m.label, "source": "paper (LLaVA-1.5-7B)",
                         **dict(zip(R.TABLE1_BENCHMARKS, R.TABLE1[paper_name[key]]))})
    return _table(ctx, 1, rows, f"ToyWorld test ({ctx.settings.n_qa}/family; {QA_MIRRORS}); paper rows: "
                  f"{R.TABLE1_SOURCE}", started)


# method key -> its row in the paper's caption Tables II and III
PAPER_CAPTION_ROWS = {"vanilla": "Original", "fastv_a": "FastV (a)", "fastv_b": "FastV (b)", "vtw": "VTW",
                      "dyrate": "DyRate"}


@lru_cache(maxsize=None)
def _caption_run(key: str) -> tuple[Method, list[dict], float, float]:
    ctx = _ctx()
    m = methods(ctx)[key]
    recs = generate_records(ctx, ctx.captions, m, ctx.settings.caption_tokens)
    return m, recs, scores(ctx.captions, recs)["caption"]["cider"], method_flops(ctx, m, recs)


@table_artifact("dyrate-table2")
def table2(scale: str, started: float) -> Table:
    """`make dyrate-table2`: ToyWorld caption CIDEr-D, paper Table II (as printed) beside."""
    ctx = _ctx(scale)
    rows = []
    for key in methods(ctx):
        m, recs, cider, fl = _caption_run(key)
        row = {"method": m.label, "ours CIDEr (toy)": cider, "ours FLOPs %": 100 * fl}
        for model in ("LLaVA-1.5-7B", "LLaVA-1.5-13B"):
            for bench, v in zip(R.TABLE2_BENCHMARKS, R.TABLE2[(model, PAPER_CAPTION_ROWS[key])]):
                row[f"paper {model[10:]} {bench}"] = v
        rows.append(row)
    return _table(ctx, 2, rows, f"{ctx.settings.n_caption} ToyWorld test captions (3 references each); paper: "
                  f"{R.TABLE2_SOURCE}", started)


def _latency(ctx: Ctx, m: Method, n: int = 6) -> float:
    """Mean wall-clock ms per generated token, batch 1, no KV cache for every method (the paper's latency is
    most plausibly per forward without a cache, dyrate.md §7.3); the first sample is warm-up."""
    vlm, model = ctx.vlm, ctx.vlm.model
    total_t, total_n = 0.0, 0
    for i, smp in enumerate(ctx.captions[: n + 1]):
        inputs = dict(vlm.build_inputs([smp]))
        red = m.reducer(ctx)
        t = time.perf_counter()
        with torch.no_grad(), reduce_tokens(model, red, image_token_id=vlm.image_token_id):
            out = model.generate(**inputs, max_new_tokens=ctx.settings.caption_tokens, do_sample=False,
                                 use_cache=False)
        dt = time.perf_counter() - t
        if i:
            total_t += dt
            total_n += out.shape[1] - inputs["input_ids"].shape[1]
    return 1000 * total_t / max(total_n, 1)


@table_artifact("dyrate-table3")
def table3(scale: str, started: float) -> Table:
    """`make dyrate-table3`: relative FLOPs, per-token latency on this CPU, CIDEr, auto R; paper Table III beside."""
    ctx = _ctx(scale)
    card = json.loads((PREDICTOR_DIR / "card.json").read_text())
    rows = []
    for key in methods(ctx):
        m, recs, cider, fl = _caption_run(key)
        p7 = R.TABLE3[("LLaVA-1.5-7B", PAPER_CAPTION_ROWS[key])]
        rows.append({"method": m.label, "ours FLOPs %": 100 * fl, "ours latency ms/token": _latency(ctx, m),
                     "ours CIDEr": cider, "auto R": key == "dyrate",
                     "DyRate target FLOPs %": 100 * card["target"] if key == "dyrate" else None,
                     "paper 7B TFLOPs %": p7[0], "paper 7B latency ms": p7[1], "paper 7B 'NoCaps'": p7[2]})
    return _table(ctx, 3, rows, f"{ctx.settings.n_caption} ToyWorld test captions, latency on this 2-core CPU "
                  f"(batch 1, no KV cache); paper: {R.TABLE3_SOURCE}", started)


@table_artifact("dyrate-table4")
def table4(scale: str, started: float) -> Table:
    """`make dyrate-table4`: decoding strategies (greedy, beam 2/5, top-k 6 sampling), dense and with DyRate."""
    ctx = _ctx(scale)
    paper = dict(zip(("greedy", "beam2", "beam5", "topk6"), R.TABLE4.values()))
    names = {"greedy": "Greedy", "beam2": "Beam-2", "beam5": "Beam-5", "topk6": "top-k = 6 sampling"}
    rows = []
    for dec in ("greedy", "beam2", "beam5", "topk6"):
        row = {"strategy": names[dec]}
        for base, label in ((Method("Original", "vanilla", decoding=dec), "dense"),
                            (Method("DyRate", "dyrate", K=ctx.settings.K, decoding=dec), "DyRate")):
            recs = generate_records(ctx, ctx.captions, base, ctx.settings.caption_tokens)
            row[f"ours CIDEr ({label})"] = scores(ctx.captions, recs)["caption"]["cider"]
            if label == "DyRate":
                row["DyRate mean rate"] = _mean_rate(recs)
        row["paper NoCaps CIDEr"] = paper[dec]
        rows.append(row)
    return _table(ctx, 4, rows, f"{ctx.settings.n_caption} ToyWorld test captions (beams: the rate is averaged "
                  f"over beams); paper: {R.TABLE4_SOURCE}", started)


@table_artifact("dyrate-table5")
def table5(scale: str, started: float) -> Table:
    """`make dyrate-table5`: FixedPrune at DyRate's mean rate, DepthBasedPrune, DyRate; paper Table V beside."""
    ctx = _ctx(scale)
    _, dy_recs, dy_cider, dy_fl = _caption_run("dyrate")
    K, L = ctx.settings.K, ctx.dims.n_layers
    mean_rate = round(_mean_rate(dy_recs), 2)
    start = max(1, map_layer(4, L))
    # DP's R0 at the start layer: chosen so that its FLOPs land near DyRate's (bisection on a coarse grid)
    dp_rate = _dp_rate_matching(ctx, start, dy_recs, dy_fl)
    plan = [("LLaVA", Method("Original", "vanilla")), ("FastV", methods(ctx)["fastv_b"]),
            ("Ours (DP, label lost)", Method(f"DP start={start} R0={dp_rate:.2f}", "dp", K=start, rate=dp_rate)),
            ("Ours (FP, label lost)", Method(f"FP R={mean_rate:.2f} (DyRate's mean)", "fp", K=K, rate=mean_rate))]
    rows = []
    for paper_key, m in plan:
        recs = generate_records(ctx, ctx.captions, m, ctx.settings.caption_tokens)
        p = R.TABLE5[paper_key]
        rows.append({"strategy": m.label, "ours CIDEr": scores(ctx.captions, recs)["caption"]["cider"],
                     "ours FLOPs %": 100 * method_flops(ctx, m, recs), "paper row": paper_key,
                     "paper NoCaps CIDEr": p[0], "paper FLOPs %": p[1]})
    rows.append({"strategy": "DyRate (learned, per step)", "ours CIDEr": dy_cider, "ours FLOPs %": 100 * dy_fl,
                 "paper row": None, "paper NoCaps CIDEr": None, "paper FLOPs %": None})
    return _table(ctx, 5, rows, f"{ctx.settings.n_caption} ToyWorld test captions; DP = R'_l = min(1, R0 l / "
                  f"start) [R, a guess]; paper: {R.TABLE5_SOURCE}", started)


def _dp_rate_matching(ctx: Ctx, start: int, records: Sequence[dict], target: float) -> float:
    """The R0 on a 0.05 grid whose DP FLOPs over `records`' prompts and lengths are closest to `target`."""
    grid = [round(float(x), 2) for x in np.arange(0.05, 1.0001, 0.05)]
    return min(grid, key=lambda R0: abs(method_flops(ctx, Method("dp", "dp", K=start, rate=R0), records) - target))


# ------------------------------------------------------------------------------------------ figures
def _caption_shares(ctx: Ctx) -> ShareTrace:
    """Attention shares of every layer over the test captions, dense model, padded to the same steps."""
    s = ctx.settings
    path = Path(s.cache) / f"shares-{_sha({'run': ctx.run_key, 'data': hash_samples(ctx.captions), 'mnt': s.caption_tokens})[:16]}.npz"
    if path.exists():
        z = np.load(path)
        return ShareTrace(z["shares"], tuple(z["layers"].tolist()), z["tokens"], z["active"])
    parts = []
    for i in range(0, len(ctx.captions), s.batch_size):
        inputs = dict(ctx.vlm.build_inputs(ctx.captions[i:i + s.batch_size]))
        parts.append(generation_shares(ctx.vlm.model, inputs, max_new_tokens=s.caption_tokens,
                                       image_token_id=ctx.vlm.image_token_id))
    T = max(p.shares.shape[1] for p in parts)

    def pad(a, fill):
        w = [(0, 0)] * a.ndim
        w[1] = (0, T - a.shape[1])
        return np.pad(a, w, constant_values=fill)

    tr = ShareTrace(np.concatenate([pad(p.shares, np.nan) for p in parts]), parts[0].layers,
                    np.concatenate([pad(p.tokens, -1) for p in parts]), np.concatenate([pad(p.active, False) for p in parts]))
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


@artifact("dyrate-fig-attention", kind="figure")
def fig_attention(scale: str) -> None:
    """`make dyrate-fig-attention`: the share of the newest token's attention per token type over generation
    steps (mean and s.e.m. band over the test captions), for three layers and the mean over layers."""
    from common.plots import apply_style, new_figure, plot_share_curves

    t0 = time.time()
    ctx = _ctx(scale)
    tr = _caption_shares(ctx)
    apply_style()
    L = len(tr.layers)
    picks = sorted({0, ctx.settings.K - 1, L // 2, L - 1})
    fig, axes = new_figure(1, len(picks) + 1, height=3.0, width=3.2 * (len(picks) + 1))
    hm = tr.head_mean()
    steps = np.arange(1, tr.shares.shape[1] + 1)
    for ax, l in zip(axes, picks):
        plot_share_curves(steps, tr.per_type(hm[:, :, l]), ax=ax)
        ax.set_title(f"layer {l}")
    plot_share_curves(steps, tr.per_type(), ax=axes[-1])
    axes[-1].set_title("mean over layers")
    fig.suptitle(f"Attention share of the newest token, {ctx.model_desc}, {len(ctx.captions)} ToyWorld captions")
    save_figure(fig, OUT / "fig_attention", provenance=_prov(ctx, t0))
    write_table(attention_trends(tr), OUT / "fig_attention_trends",
                title=f"Trend of the attention shares over generation steps (least-squares slope of the mean "
                      f"curve; steps with >= 3 samples), {ctx.model_desc}", provenance=_prov(ctx, t0))


@artifact("dyrate-fig-rate", kind="figure")
def fig_rate(scale: str) -> None:
    """`make dyrate-fig-rate`: DyRate's predicted rate R_t per generation step (mean, band, a few samples) and
    the image share of layer K-1 it reads, on the test captions (the records of `dyrate-table2`)."""
    from common.plots import apply_style, new_figure, plot_share_curves

    t0 = time.time()
    ctx = _ctx(scale)
    _, recs, _, _ = _caption_run("dyrate")
    T = ctx.settings.caption_tokens
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
    plot_share_curves(steps, {"image": img}, ax=axes[1], ylabel=f"image share, layer {ctx.settings.K - 1}")
    axes[1].set_title("what the predictor reads (image share)")
    save_figure(fig, OUT / "fig_rate", provenance=_prov(ctx, t0))
    ok = ~np.isnan(rates)
    corr = float(np.corrcoef(rates[ok], img[ok])[0, 1]) if ok.sum() > 2 and np.std(rates[ok]) > 0 else float("nan")
    write_table([{"rate slope/step": share_trend(rates), "image-share slope/step": share_trend(img),
                  "mean rate step 1": float(np.nanmean(rates[:, 0])), "mean rate": float(np.nanmean(rates)),
                  "corr(rate, image share)": corr, "samples": len(recs),
                  "steps (>=3 samples)": int((np.sum(ok, 0) >= 3).sum())}],
                OUT / "fig_rate_trend", title=f"DyRate's predicted rate over generation steps, {ctx.model_desc}",
                provenance=_prov(ctx, t0))


@artifact("dyrate-fig-curves", kind="figure")
def fig_curves(scale: str) -> None:
    """`make dyrate-fig-curves`: caption CIDEr and QA accuracy vs relative generation FLOPs."""
    from common.plots import apply_style, new_figure

    t0 = time.time()
    ctx = _ctx(scale)
    K, L = ctx.settings.K, ctx.dims.n_layers
    families = {
        "FastV (K=2)": [Method(f"FastV K={K} R={r}", "fastv", K=K, rate=r) for r in (0.25, 0.5, 0.75, 0.9)],
        "VTW": [Method(f"VTW k={k}", "vtw", K=k) for k in range(1, L)],
        "DyRate": [methods(ctx)["dyrate"]],
        "Original": [methods(ctx)["vanilla"]],
    }
    apply_style()
    fig, axes = new_figure(1, 2, height=3.2, width=9.0)
    rows = []
    for name, ms in families.items():
        xs_c, ys_c, xs_q, ys_q = [], [], [], []
        for m in ms:
            rc = generate_records(ctx, ctx.captions, m, ctx.settings.caption_tokens)
            rq = generate_records(ctx, ctx.qa, m, ctx.settings.qa_tokens)
            cider = scores(ctx.captions, rc)["caption"]["cider"]
            sq = scores(ctx.qa, rq)
            acc = float(np.mean([v["score"] for v in sq.values()]))
            xs_c.append(100 * method_flops(ctx, m, rc))
            ys_c.append(cider)
            xs_q.append(100 * method_flops(ctx, m, rq))
            ys_q.append(acc)
            rows.append({"method": m.label, "caption FLOPs %": xs_c[-1], "CIDEr": cider, "QA FLOPs %": xs_q[-1],
                         "QA mean accuracy": acc})
        style = "*" if name in ("DyRate", "Original") else "o-"
        axes[0].plot(xs_c, ys_c, style, label=name, ms=9 if "*" in style else 4)
        axes[1].plot(xs_q, ys_q, style, label=name, ms=9 if "*" in style else 4)
    axes[0].set(xlabel="relative generation FLOPs (%)", ylabel="CIDEr-D", title="ToyWorld captions")
    axes[1].set(xlabel="relative generation FLOPs (%)", ylabel="mean accuracy (%)", title="ToyWorld QA families")
    axes[0].legend()
    save_figure(fig, OUT / "fig_curves", provenance=_prov(ctx, t0))
    write_table(rows, OUT / "fig_curves", title=f"Points of dyrate-fig-curves, {ctx.model_desc}",
                provenance=_prov(ctx, t0))


# ---------------------------------------------------------------------------------- predictor check
def validate_predictor(vlm: Any, pred: RatePredictor, target: float, n: int = 48, seed: int = 0) -> dict[str, float]:
    """Achieved relative FLOPs of argmax inference (recompute mode) on ToyWorld val captions."""
    from common.data.toyworld import toyworld_split

    samples = toyworld_split("val", n, seed=seed, families=("caption",))
    dims = DecoderDims.from_config(vlm.model.config)
    eos = vlm.model.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    red_total = dense_total = 0
    all_rates = []
    for i in range(0, n, 16):
        batch = samples[i:i + 16]
        inputs = dict(vlm.build_inputs(batch))
        red = DyRate(K=pred.K, predictor=pred)
        with torch.no_grad(), reduce_tokens(vlm.model, red, image_token_id=vlm.image_token_id):
            out = vlm.model.generate(**inputs, max_new_tokens=48, do_sample=False, use_cache=False)
        steps = _n_generated(out[:, inputs["input_ids"].shape[1]:], eos)
        rates = red.trace.rates()
        for b, n_b in enumerate(steps):
            n_vis = int((inputs["input_ids"][b] == vlm.image_token_id).sum())
            f = dyrate_generation_flops(int(inputs["attention_mask"][b].sum()), n_vis,
                                        rates[b, :n_b].tolist(), pred.K, dims)
            red_total += f["reduced"]
            dense_total += f["dense"]
            all_rates += rates[b, :n_b].tolist()
    achieved = red_total / dense_total
    return {"achieved_flops": achieved, "target": target, "gap_points": 100 * (achieved - target),
            "mean_rate": float(np.mean(all_rates)), "n_val": n}


# ------------------------------------------------------------------------------------------- claims
def _rows(name: str, out: Path | None = None) -> list[dict]:
    path = (out or OUT) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run its Make target first (see the module docstring)")
    return json.loads(path.read_text())["rows"]


def claims(out: Path | None = None) -> list[dict]:
    """The paper's claims, each with the number that decides it at our scale, read from the artifacts."""
    trend = {r["layers"]: r for r in _rows("fig_attention_trends", out)}["mean over layers"]
    rate = _rows("fig_rate_trend", out)[0]
    t2 = {r["method"]: r for r in _rows("table2", out)}
    t3 = {r["method"]: r for r in _rows("table3", out)}
    t5 = _rows("table5", out)
    dy, van = t2["DyRate"], t2["Original"]
    fastv = [r for k, r in t2.items() if k.startswith("FastV")]
    vtw = [r for k, r in t2.items() if k.startswith("VTW")][0]
    fp = [r for r in t5 if str(r["strategy"]).startswith("FP")][0]
    dp = [r for r in t5 if str(r["strategy"]).startswith("DP")][0]
    target = t3["DyRate"]["DyRate target FLOPs %"]
    achieved = t3["DyRate"]["ours FLOPs %"]
    t1 = [r for r in _rows("table1", out) if r["source"] == "ours (toy)"]
    cols = [c for c, f in QA_COLUMNS if f]
    qa = {r["method"]: float(np.mean([r[c] for c in cols])) for r in t1}

    def row(claim, paper, ours, held):
        return {"claim": claim, "paper": paper, "ours (toy)": ours, "held": "yes" if held else "no"}

    # a trend counts when the fitted change over the caption (slope x steps) passes a threshold
    img_change = trend["image slope/step"] * (trend["steps (>=3 samples)"] - 1)
    res_change = trend["response slope/step"] * (trend["steps (>=3 samples)"] - 1)
    rate_change = rate["rate slope/step"] * (rate["steps (>=3 samples)"] - 1)

    best_fastv = max(fastv, key=lambda r: r["ours CIDEr (toy)"])
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
            f"{achieved:.2f}% achieved vs {target:.2f}% target", abs(achieved - target) <= 3.0),
        row("captioning: DyRate >= Original at a fraction of the FLOPs (Table II/III)", "75.00 vs 74.89 (7B)",
            f"CIDEr {dy['ours CIDEr (toy)']:.1f} at {dy['ours FLOPs %']:.1f}% vs {van['ours CIDEr (toy)']:.1f}",
            dy["ours CIDEr (toy)"] >= van["ours CIDEr (toy)"]),
        row("captioning: DyRate >= FastV at lower FLOPs", "75.00 @33% vs 74.75 @57.9%",
            f"{dy['ours CIDEr (toy)']:.1f} @{dy['ours FLOPs %']:.1f}% vs best FastV {best_fastv['ours CIDEr (toy)']:.1f} "
            f"@{best_fastv['ours FLOPs %']:.1f}%",
            dy["ours CIDEr (toy)"] >= best_fastv["ours CIDEr (toy)"] and dy["ours FLOPs %"] <= best_fastv["ours FLOPs %"]),
        row("captioning: VTW falls far behind", "44.54 vs 74.89",
            f"{vtw['ours CIDEr (toy)']:.1f} @{vtw['ours FLOPs %']:.1f}% vs Original {van['ours CIDEr (toy)']:.1f}",
            vtw["ours CIDEr (toy)"] < min(dy["ours CIDEr (toy)"], best_fastv["ours CIDEr (toy)"])),
        row("a per-step rate beats a fixed rate at the same FLOPs (Table V: FP)", "105.00 @58.1% (FP)",
            f"DyRate {dy['ours CIDEr (toy)']:.1f} @{dy['ours FLOPs %']:.1f}% vs FP {fp['ours CIDEr']:.1f} "
            f"@{fp['ours FLOPs %']:.1f}%", dy["ours CIDEr (toy)"] > fp["ours CIDEr"]),
        row("depth-based pruning (DP) at similar FLOPs", "107.00 @28.8% (DP?)",
            f"DP {dp['ours CIDEr']:.1f} @{dp['ours FLOPs %']:.1f}% vs DyRate {dy['ours CIDEr (toy)']:.1f}",
            dy["ours CIDEr (toy)"] >= dp["ours CIDEr"]),
        row("short answers: DyRate competitive with the original (Table I)", "e.g. GQA 61.9 vs 62.0",
            "mean over the toy QA columns: " + ", ".join(f"{k} {v:.1f}" for k, v in qa.items()),
            qa.get("DyRate", 0) >= qa.get("Original", 0) - 3.0),
    ]


@artifact("dyrate-claims")
def claims_table(scale: str) -> None:
    """`make dyrate-claims`: the paper's claims beside the toy numbers that decide them (run the other targets first)."""
    if scale != "toy":
        raise ValueError(f"scale: DyRate's experiments run at toy scale only, got {scale!r}")
    producers = {"table1": table1, "table2": table2, "table3": table3, "table5": table5,
                 "fig_attention_trends": fig_attention, "fig_rate_trend": fig_rate}
    for name, fn in producers.items():  # `make tables` may run this before the others: make what is missing
        if not (OUT / f"{name}.json").exists():
            fn(scale)
    write_table(claims(), OUT / "claims", title="DyRate's claims at toy scale (read from figures/dyrate/*.json)",
                provenance=provenance(config={"scale": scale}))
