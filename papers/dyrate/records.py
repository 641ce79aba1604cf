"""Generation records: one generation run per (method, sample set), with what every DyRate table reads.

Every method is expressed as "a rate per generation step at a layer", so one FLOPs formula
(`common.flops.dyrate_generation_flops`, no KV cache, all tokens counted) serves all of them: the original
model = rate 0; FastV = its constant R at K; VTW = rate 1 at its layer; FixedPrune = its rate at K; DyRate =
the predicted R_t at K (read from the reducer's trace, per step). DP prunes at several layers and goes through
`schedule_flops` with its per-layer schedule.

FastV, FixedPrune, DyRate and DP re-decide at every step (generation without a KV cache, FastV's original
"inplace" form); the original model and VTW use the cache, which gives identical outputs for them. Reducers
come from the registry (`Run.reducer`), so a method row is a registered name with its options.

Records are cached as JSON under `run.cache_dir / "dyrate"`, keyed by the model, the samples, the reducer's
own description (`common.evaluation.describe_reducer`, the predictor's weights included), the decoding and the
batch size. Under torchrun the batches are dealt to the ranks and the records gathered on every rank.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from common.artifacts import atomic_write_text
from common.evaluation import describe_reducer
from common.flops import DecoderDims, dyrate_generation_flops, schedule_flops
from common.metrics import score_all
from common.reduction import Reducer, reduce_tokens
from common.run import Run, stable_hash
from common.schedule import Budget
from papers.dyrate.inputs import SampleSet
from papers.dyrate.method import DyRate
from papers.dyrate.predictor import RatePredictor, kept_count

DECODING: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False},
    "beam2": {"do_sample": False, "num_beams": 2},
    "beam5": {"do_sample": False, "num_beams": 5},
    "topk6": {"do_sample": True, "top_k": 6, "top_p": 1.0, "temperature": 1.0},
}
CACHE_VERSION = 3


@dataclass(frozen=True)
class Method:
    """One row: a registered reducer (`name`; None = the original model) with its budget and options.

    K and rate describe the method for the FLOPs accounting: the layer it acts at and the share of the visual
    tokens it removes at every step (0 for DP, whose schedule is per layer). `learned`: pass the run's
    predictor (DyRate's learned form). `cache`: generate with the KV cache (same outputs for the methods
    that do not re-decide per step, and faster).
    """

    label: str
    name: str | None = None
    budget: Budget | None = None
    options: tuple[tuple[str, Any], ...] = ()
    K: int = 0
    rate: float = 0.0
    learned: bool = False
    decoding: str = "greedy"
    cache: bool = False

    def __post_init__(self) -> None:
        if self.decoding not in DECODING:
            raise ValueError(f"decoding: expected one of {sorted(DECODING)}, got {self.decoding!r}")

    def reducer(self, run: Run, predictor: RatePredictor | None = None) -> Reducer | None:
        """The row's reducer for `run`'s model, through the registry factory."""
        if self.name is None:
            return None
        options = dict(self.options)
        if self.learned:
            if predictor is None:
                raise ValueError(f"{self.label}: the learned form needs the run's predictor")
            options["predictor"] = predictor
        return run.reducer(self.name, self.budget, **options)


def original(decoding: str = "greedy") -> Method:
    return Method("Original", decoding=decoding, cache=True)


def fastv(K: int, R: float, label: str | None = None) -> Method:
    """FastV at the paper's K (not depth-mapped) pruning the share R, re-decided at every step."""
    return Method(label or f"FastV K={K} R={R}", "fastv", Budget.pruned(R), (("K", K),), K=K, rate=R)


def vtw(K: int) -> Method:
    return Method(f"VTW k={K}", "vtw", None, (("K", K),), K=K, rate=1.0, cache=True)


def fixed_prune(K: int, rate: float, label: str) -> Method:
    """DyRate's fixed-rate form (FixedPrune, FP)."""
    return Method(label, "dyrate", None, (("K", K), ("rate", rate)), K=K, rate=rate)


def dyrate(K: int, decoding: str = "greedy") -> Method:
    return Method("DyRate", "dyrate", None, (("K", K),), K=K, learned=True, decoding=decoding)


def depth_prune(start: int, R0: float) -> Method:
    return Method(f"DP start={start} R0={R0:.2f}", "dyrate-dp", None, (("start", start), ("R0", R0)), K=start)


# ------------------------------------------------------------------------------------------ generation
def n_generated(tokens: torch.Tensor, eos: Sequence[int]) -> list[int]:
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


def eos_ids(vlm: Any) -> list[int]:
    eos = vlm.model.generation_config.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def _records_of_batch(run: Run, samples: Sequence, inputs: dict, red: Reducer | None, m: Method,
                      max_new_tokens: int, seed: int) -> list[dict]:
    vlm = run.vlm
    torch.manual_seed(seed)
    with torch.no_grad(), reduce_tokens(vlm.model, red, image_token_id=vlm.image_token_id):
        out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=m.cache, **DECODING[m.decoding])
    new = out[:, inputs["input_ids"].shape[1]:]
    texts = vlm.decode(new)
    steps = n_generated(new, eos_ids(vlm))
    n_prompt = inputs["attention_mask"].sum(1).tolist()
    n_vis = (inputs["input_ids"] == vlm.image_token_id).sum(1).tolist()
    trace = red.trace.rates() if isinstance(red, DyRate) else None
    shares = red.trace.shares() if isinstance(red, DyRate) else None
    beams = trace.shape[0] // len(samples) if trace is not None else 1
    recs = []
    for b, smp in enumerate(samples):
        rec = {"id": smp.id, "prediction": texts[b].strip(), "steps": steps[b], "n_prompt": int(n_prompt[b]),
               "n_visual": int(n_vis[b])}
        if trace is not None:  # beams: the mean over the sample's beams per step (approximate FLOPs)
            r = trace[b * beams:(b + 1) * beams].mean(0)[: steps[b]].tolist()
            rec["shares"] = shares[b * beams:(b + 1) * beams].mean(0)[: steps[b]].tolist()
        else:
            r = [m.rate] * steps[b]
        rec["rates"] = r + [r[-1] if r else 0.0] * (steps[b] - len(r))
        recs.append(rec)
    return recs


def generate_records(run: Run, data: SampleSet, m: Method, max_new_tokens: int,
                     predictor: RatePredictor | None = None) -> list[dict]:
    """Per sample: prediction, steps run, prompt length, visual tokens and the rate at every step (cached)."""
    red = m.reducer(run, predictor)
    key = stable_hash({"run": run.run_key, "data": data.key, "reducer": describe_reducer(red),
                       "decoding": m.decoding, "cache": m.cache, "mnt": max_new_tokens,
                       "bs": run.cfg.batch_size, "seed": run.cfg.seed, "v": CACHE_VERSION})
    path = run.cache_dir / "dyrate" / f"{data.name}-{m.name or 'original'}-{m.decoding}-{key[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    bs = run.cfg.batch_size
    starts = list(range(0, len(data.samples), bs))[run.rank::run.world]
    mine: list[dict] = []
    for i in starts:
        batch = data.samples[i:i + bs]
        red = m.reducer(run, predictor)  # a fresh reducer per batch: nothing carries over
        mine += _records_of_batch(run, batch, run.batches(batch)[0], red, m, max_new_tokens, run.cfg.seed + i)
    records = mine
    if run.world > 1:
        parts: list[list[dict]] = [[] for _ in range(run.world)]
        dist.all_gather_object(parts, mine)
        by_id = {r["id"]: r for part in parts for r in part}
        records = [by_id[s.id] for s in data.samples]
    if run.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(records))
    return records


# ------------------------------------------------------------------------------------------ accounting
def dims_of(run: Run) -> DecoderDims:
    return DecoderDims.from_config(run.vlm.model.config)


def method_flops(run: Run, m: Method, records: Sequence[dict]) -> float:
    """Sum of generation FLOPs over samples / the dense sum (no KV cache, all tokens; module docstring)."""
    dims = dims_of(run)
    # a method that prunes at several layers (DP) states its per-layer schedule
    schedule = getattr(m.reducer(run), "rates_per_layer", None) if m.name and not m.learned else None
    red = dense = 0
    for r in records:
        if schedule is not None:
            kept = [r["n_visual"] - kept_count(r["n_visual"], x) for x in schedule()]
            for t in range(r["steps"]):
                n_t = r["n_prompt"] + t
                red += schedule_flops([n_t - k for k in kept], dims)
                dense += schedule_flops(n_t, dims)
            continue
        f = dyrate_generation_flops(r["n_prompt"], r["n_visual"], r["rates"], max(m.K, 0), dims)
        red += f["reduced"]
        dense += f["dense"]
    return red / dense


def scores(data: SampleSet, records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Every family's metrics (`common.metrics.score_all`: CIDEr-D for captions)."""
    return score_all(data.samples, {r["id"]: r["prediction"] for r in records})


def mean_rate(records: Sequence[dict]) -> float:
    rates = [x for r in records for x in r["rates"]]
    return float(np.mean(rates)) if rates else 0.0
