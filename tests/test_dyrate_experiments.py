"""DyRate's experiment plumbing (papers/dyrate/experiments.py) on a tiny random VLM: per-step rate records,
the one FLOPs accounting for every method, caching, decoding strategies, trend tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.flops import DecoderDims, dyrate_generation_flops
from papers.dyrate.analysis import ShareTrace
from papers.dyrate.experiments import (
    Ctx, Method, Settings, _dp_rate_matching, attention_trends, generate_records, method_flops,
)
from papers.dyrate.predictor import RatePredictor
from tests.eval_fakes import TinyVLM, make_samples


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    vlm = TinyVLM(num_layers=4)
    samples = make_samples(2)
    pred = RatePredictor(4, K=2)
    with torch.no_grad():
        pred.linear.bias[0] = 1.0
        pred.linear.weight[5, 3::4] = 1000.0  # rate 0 at step 1, 0.5 afterwards
    return Ctx(Settings(batch_size=2, caption_tokens=4, qa_tokens=2, cache=str(tmp_path_factory.mktemp("c"))),
               vlm, DecoderDims.from_config(vlm.model.config), pred, {"model": "tiny"},
               [s for s in samples if s.family == "caption"], [s for s in samples if s.family == "gqa"], "tiny")


def test_records_and_flops_per_method(ctx):
    caps = ctx.captions
    van = generate_records(ctx, caps, Method("v", "vanilla"), 4)
    assert [r["steps"] for r in van] == [4, 4] and method_flops(ctx, Method("v", "vanilla"), van) == 1.0
    fv = Method("f", "fastv", K=2, rate=0.5)
    recs = generate_records(ctx, caps, fv, 4)
    ref = [dyrate_generation_flops(r["n_prompt"], r["n_visual"], [0.5] * 4, 2, ctx.dims) for r in recs]
    assert method_flops(ctx, fv, recs) == pytest.approx(sum(f["reduced"] for f in ref) / sum(f["dense"] for f in ref))
    vtw = Method("w", "vtw", K=2)
    assert method_flops(ctx, vtw, generate_records(ctx, caps, vtw, 4)) < method_flops(ctx, fv, recs) < 1.0
    dy = generate_records(ctx, caps, Method("d", "dyrate", K=2), 4)
    assert all(r["rates"] == [0.0, 0.5, 0.5, 0.5] for r in dy)
    # FixedPrune at 0.5 from step 1 costs less than DyRate, which keeps everything at step 1
    fp = Method("p", "fp", K=2, rate=0.5)
    assert method_flops(ctx, fp, generate_records(ctx, caps, fp, 4)) < method_flops(ctx, Method("d", "dyrate", K=2), dy)


def test_records_are_cached(ctx, monkeypatch):
    m = Method("cached", "fastv", K=2, rate=0.25)
    first = generate_records(ctx, ctx.captions, m, 4)

    def boom(*a, **k):
        raise AssertionError("generate ran although the records were cached")

    monkeypatch.setattr(ctx.vlm.model, "generate", boom)
    assert generate_records(ctx, ctx.captions, m, 4) == first


@pytest.mark.parametrize("decoding", ["beam2", "topk6"])
def test_decoding_strategies_run_with_dyrate(ctx, decoding):
    recs = generate_records(ctx, ctx.captions, Method("d", "dyrate", K=2, decoding=decoding), 4)
    assert len(recs) == 2 and all(len(r["rates"]) == r["steps"] for r in recs)


def test_depth_prune_flops_and_matching(ctx):
    recs = generate_records(ctx, ctx.captions, Method("v", "vanilla"), 4)
    f = {r0: method_flops(ctx, Method("dp", "dp", K=1, rate=r0), recs) for r0 in (0.1, 0.3)}
    assert f[0.3] < f[0.1] < 1.0
    assert _dp_rate_matching(ctx, 1, recs, f[0.3]) == 0.3


def test_attention_trends_signs():
    T = 6
    img = np.linspace(0.6, 0.1, T)
    shares = np.zeros((3, T, 2, 1, 4))
    shares[..., 1] = img[None, :, None, None]
    shares[..., 3] = (0.9 - img)[None, :, None, None]
    shares[..., 0] = 0.1
    tr = ShareTrace(shares, (0, 1), np.zeros((3, T)), np.ones((3, T), bool))
    rows = attention_trends(tr)
    assert [r["layers"] for r in rows] == ["layer 0", "layer 1", "mean over layers"]
    assert rows[-1]["image slope/step"] == pytest.approx(-0.1) and rows[-1]["response slope/step"] == pytest.approx(0.1)
    assert rows[0]["image share step 1"] == pytest.approx(0.6)


def test_claims_decisions_from_artifacts(tmp_path):
    """`claims` reads the sidecars and decides each claim; thresholds on the fitted change over the caption."""
    import json

    from papers.dyrate.experiments import claims

    def put(name, rows):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))

    put("fig_attention_trends", [{"layers": "mean over layers", "image slope/step": -0.01, "response slope/step": 0.02,
                                  "image share step 1": 0.5, "steps (>=3 samples)": 11}])
    put("fig_rate_trend", [{"rate slope/step": 0.001, "corr(rate, image share)": -0.3, "steps (>=3 samples)": 11}])
    cap = lambda m, c, f: {"method": m, "ours CIDEr (toy)": c, "ours FLOPs %": f}  # noqa: E731
    put("table2", [cap("Original", 100, 100), cap("FastV (a) K=3", 90, 70), cap("FastV (b) K=2", 95, 60),
                   cap("VTW k=4", 20, 55), cap("DyRate", 97, 48)])
    put("table3", [{"method": "DyRate", "ours FLOPs %": 48.0, "DyRate target FLOPs %": 50.5}])
    put("table5", [{"strategy": "FP R=0.70", "ours CIDEr": 93, "ours FLOPs %": 48},
                   {"strategy": "DP start=1", "ours CIDEr": 99, "ours FLOPs %": 47}])
    qa = {c: 50.0 for c in ("GQA", "SQA", "VQA", "POPE", "MMB", "MME")}
    put("table1", [{"method": "Original", "source": "ours (toy)", **qa}, {"method": "DyRate", "source": "ours (toy)", **qa},
                   {"method": "DyRate", "source": "paper (LLaVA-1.5-7B)", **qa}])
    held = [r["held"] for r in claims(tmp_path)]
    # image -0.1 (yes), response +0.2 (yes), rate +0.01 (no: below +0.05), FLOPs 2.5 points (yes),
    # >= Original (no), >= FastV at lower FLOPs (yes), VTW behind (yes), beats FP (yes), >= DP (no), QA (yes)
    assert held == ["yes", "yes", "no", "yes", "no", "yes", "yes", "yes", "no", "yes"]
    with pytest.raises(FileNotFoundError, match="table9|fig_"):
        claims(tmp_path / "missing")
