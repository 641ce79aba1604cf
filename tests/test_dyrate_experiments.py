"""DyRate's experiments (papers/dyrate/experiments.py, records.py, inputs.py) through the run layer, on a tiny
random llava-hf LLaVA with 576 visual tokens and fixture files in the real formats: per-step rate records,
the one FLOPs accounting for every method, caching, decoding strategies, trend tables, the claims, the
predictor's paper-scale training and a paper-scale table end to end, and missing inputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.flops import dyrate_generation_flops
from common.run import MissingInputs, Run, RunConfig, run_target
from papers.dyrate.analysis import ShareTrace
from papers.dyrate.experiments import attention_trends, claims, dp_rate_matching, vtw_layers
from papers.dyrate.inputs import captions
from papers.dyrate.predictor import RatePredictor
from papers.dyrate.records import (
    depth_prune, dims_of, dyrate, fastv, fixed_prune, generate_records, method_flops, original, vtw,
)
from tests.paper_fixtures import tiny_paper_setup

T = 4


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """(tmp folder, model folder, data root): a 4-layer random LLaVA with 576 visual tokens + every fixture."""
    tmp = tmp_path_factory.mktemp("dyrate-paper")
    model_dir, data_root = tiny_paper_setup(tmp)
    return tmp, model_dir, data_root


def _cfg(paper, name: str, **kw) -> RunConfig:
    tmp, model_dir, data_root = paper
    return RunConfig(scale="paper", model_path=model_dir, data_root=data_root, train_root=data_root,
                     out_dir=tmp / name / "out", cache_dir=tmp / name / "cache", n=2, **kw)


@pytest.fixture(scope="module")
def run(paper):
    return Run.for_scale(_cfg(paper, "unit"), paper="dyrate")


@pytest.fixture(scope="module")
def caps(run):
    return captions(run, 2)


def _stepwise_predictor() -> RatePredictor:
    """Rate 0 at step 1 (no response token yet), 0.5 once the response has any attention share."""
    p = RatePredictor(4, K=2)
    with torch.no_grad():
        p.linear.bias[0] = 1.0
        p.linear.weight[5, 3::4] = 1000.0  # the response share of every head
    return p


def test_records_and_flops_per_method(run, caps):
    van = generate_records(run, caps, original(), T)
    assert [r["steps"] for r in van] == [T, T] and method_flops(run, original(), van) == 1.0
    assert all(r["n_visual"] == 576 for r in van)
    fv = fastv(2, 0.5)
    recs = generate_records(run, caps, fv, T)
    ref = [dyrate_generation_flops(r["n_prompt"], r["n_visual"], [0.5] * T, 2, dims_of(run)) for r in recs]
    assert method_flops(run, fv, recs) == pytest.approx(sum(f["reduced"] for f in ref) / sum(f["dense"] for f in ref))
    w = vtw(2)
    assert method_flops(run, w, generate_records(run, caps, w, T)) < method_flops(run, fv, recs) < 1.0
    pred = _stepwise_predictor()
    dy = generate_records(run, caps, dyrate(2), T, pred)
    assert all(r["rates"] == [0.0, 0.5, 0.5, 0.5] for r in dy)
    assert all(len(r["shares"]) == T and abs(sum(r["shares"][0]) - 1) < 1e-4 for r in dy)
    # FixedPrune at 0.5 from step 1 costs less than DyRate, which keeps everything at step 1
    fp = fixed_prune(2, 0.5, "FP")
    assert method_flops(run, fp, generate_records(run, caps, fp, T)) < method_flops(run, dyrate(2), dy)
    with pytest.raises(ValueError, match="predictor"):
        generate_records(run, caps, dyrate(2), T)


def test_records_are_cached_per_reducer(run, caps, monkeypatch):
    m = fastv(2, 0.25)
    first = generate_records(run, caps, m, T)

    def boom(*a, **k):
        raise AssertionError("generate ran although the records were cached")

    monkeypatch.setattr(run.vlm.model, "generate", boom)
    assert generate_records(run, caps, fastv(2, 0.25, label="renamed"), T) == first  # the label is presentation
    with pytest.raises(AssertionError, match="generate ran"):
        generate_records(run, caps, fastv(2, 0.75), T)  # another budget is another reducer
    other = RatePredictor(4, K=2)
    with pytest.raises(AssertionError, match="generate ran"):
        generate_records(run, caps, dyrate(2), T, other)  # the predictor's weights are part of the key


@pytest.mark.parametrize("decoding", ["beam2", "topk6"])
def test_decoding_strategies_run_with_dyrate(run, caps, decoding):
    recs = generate_records(run, caps, dyrate(2, decoding), T, _stepwise_predictor())
    assert len(recs) == 2 and all(len(r["rates"]) == r["steps"] for r in recs)


def test_depth_prune_flops_and_matching(run, caps):
    recs = generate_records(run, caps, original(), T)
    f = {r0: method_flops(run, depth_prune(1, r0), recs) for r0 in (0.1, 0.3)}
    assert f[0.3] < f[0.1] < 1.0
    assert dp_rate_matching(run, 1, recs, f[0.3]) == 0.3


def test_vtw_layers_cover_a_shallow_decoder():
    assert vtw_layers(8) == list(range(1, 8)) and vtw_layers(32) == [4, 8, 12, 16, 20, 24, 28]


def test_attention_trends_signs():
    steps = 6
    img = np.linspace(0.6, 0.1, steps)
    shares = np.zeros((3, steps, 2, 1, 4))
    shares[..., 1] = img[None, :, None, None]
    shares[..., 3] = (0.9 - img)[None, :, None, None]
    shares[..., 0] = 0.1
    tr = ShareTrace(shares, (0, 1), np.zeros((3, steps)), np.ones((3, steps), bool))
    rows = attention_trends(tr)
    assert [r["layers"] for r in rows] == ["layer 0", "layer 1", "mean over layers"]
    assert rows[-1]["image slope/step"] == pytest.approx(-0.1) and rows[-1]["response slope/step"] == pytest.approx(0.1)
    assert rows[0]["image share step 1"] == pytest.approx(0.6)


def test_claims_decisions_from_artifacts(tmp_path):
    """`claims` reads the sidecars and decides each claim; thresholds on the fitted change over the caption."""

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


def test_paper_scale_predictor_and_table2_end_to_end(paper):
    """SCALE=paper on a 576-token LLaVA: the predictor trains for 2 steps on fixture COCO train captions
    (checked on a held-out val caption), then Table II runs from the Karpathy test captions with it."""
    opts = {"dyrate": {"n_train": 1, "train_batch_size": 1, "train_epochs": 2, "n_val": 1, "caption_tokens": 6,
                       "n_latency": 1}}
    cfg = _cfg(paper, "e2e", options=opts)
    out = run_target("dyrate-predictor", cfg)
    folder = cfg.out_dir / "predictor"
    card = json.loads((folder / "card.json").read_text())
    assert out == {"card": folder / "card.json"} and not (folder / "state").exists()
    assert card["steps"] == 2 and card["train"]["K"] == 2 and card["target"] == pytest.approx(1 / 3)
    assert card["vlm"]["checkpoint"] == Run.for_scale(cfg, paper="dyrate").checkpoint_hash
    assert card["validation"]["n_val"] == 1 and 0 < card["validation"]["achieved_flops"] <= 1

    files = run_target("dyrate-table2", cfg)
    assert files["csv"].parent == cfg.out_dir
    body = json.loads(files["json"].read_text())
    rows = {r["method"]: r for r in body["rows"]}
    assert list(rows) == ["Original", "FastV (a) K=3 R=50%", "FastV (b) K=2 R=50%", "VTW k=2", "DyRate"]
    assert all(np.isfinite(r["ours CIDEr (paper)"]) for r in rows.values())
    assert rows["Original"]["ours FLOPs %"] == 100.0
    assert rows["VTW k=2"]["ours FLOPs %"] < rows["FastV (b) K=2 R=50%"]["ours FLOPs %"] < 100.0
    assert rows["DyRate"]["paper 7B NoCaps"] == 75.0
    assert "scale: paper" in body["title"] and "COCO Karpathy test" in body["title"]
    assert body["provenance"]["config"]["n_caption"] == 2 and "predictor" in body["provenance"]["inputs"]

    other = cfg.out_dir / "other-predictor"  # a predictor trained on another model is refused, with the fix named
    shutil.copytree(folder, other)
    card["vlm"]["checkpoint"] = "0" * 64
    (other / "card.json").write_text(json.dumps(card))
    moved = cfg.replace(options={"dyrate": {**opts["dyrate"], "predictor_dir": str(other)}})
    with pytest.raises(ValueError, match="trained for the model 000000000000.*retrain"):
        run_target("dyrate-table2", moved)


def test_missing_caption_file_is_one_clear_error(paper, tmp_path):
    """No COCO captions under data_root: one MissingInputs naming the file and the layout, nothing written."""
    _, model_dir, data_root = paper
    empty = tmp_path / "eval"
    empty.mkdir()
    cfg = RunConfig(scale="paper", model_path=model_dir, data_root=empty, train_root=tmp_path / "none",
                    out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", n=2)
    with pytest.raises(MissingInputs) as err:
        run_target("dyrate-table2", cfg)
    msg = str(err.value)
    assert "coco/annotations/dataset_coco.json" in msg and "val2014" in msg and "Paper scale" in msg
    # the predictor it would have to train first cannot be trained either: named in the same message
    assert "dataset_coco.json (Karpathy's" in msg and "predictor:" in msg
    assert not (tmp_path / "out").exists()

    cfg = cfg.replace(data_root=data_root)
    (data_root / "pope" / "llava_pope_test.jsonl").rename(data_root / "pope" / "moved.jsonl")
    try:
        with pytest.raises(MissingInputs, match="pope/llava_pope_test.jsonl"):
            run_target("dyrate-table1", cfg)
    finally:
        (data_root / "pope" / "moved.jsonl").rename(data_root / "pope" / "llava_pope_test.jsonl")
    assert not (tmp_path / "out").exists()
