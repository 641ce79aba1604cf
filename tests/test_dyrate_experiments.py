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
