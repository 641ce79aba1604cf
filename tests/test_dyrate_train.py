"""DyRate's predictor training loop (papers/dyrate/train.py) on a tiny random VLM."""
from __future__ import annotations

import pytest
import torch

import papers.dyrate.train as train_module
from common.flops import DecoderDims
from papers.dyrate.train import TrainConfig, batch_costs, make_teacher_batch, toy_target, train_predictor
from tests.eval_fakes import TinyVLM, make_samples


@pytest.fixture(scope="module")
def setup():
    vlm = TinyVLM(num_layers=4)
    caps = [s for s in make_samples(8) if s.family == "caption"]
    return vlm, caps


def test_flops_penalty_pulls_towards_the_target(setup):
    """From the uniform start (mean rate 0.45) a lower target drives the sampled FLOPs down."""
    vlm, caps = setup
    cfg = TrainConfig(K=2, target=0.88, lam=50.0, epochs=6, batch_size=4, lr=5e-2, seed=0)
    pred, card = train_predictor(vlm, caps, cfg, encode=vlm._text_ids, log=lambda s: None)
    h = card["history"]
    first, last = h[0]["flops"], sum(x["flops"] for x in h[-4:]) / 4
    assert abs(last - 0.88) < abs(first - 0.88) and last < first
    assert card["steps"] == 12 and card["target"] == 0.88 and card["train"]["lam"] == 50.0
    assert pred.linear.weight.abs().sum() > 0 and not any(p.requires_grad for p in vlm.model.parameters())


def test_teacher_batch_and_costs(setup):
    vlm, caps = setup
    tb = make_teacher_batch(vlm, caps[:3], vlm._text_ids)
    assert tb.n_steps == max(len(vlm._text_ids(s.answer)) for s in caps[:3])  # no EOS in the tiny model
    dense, pruned = batch_costs(tb, (0.0, 0.5), DecoderDims.from_config(vlm.model.config))
    assert dense.shape == (3, tb.n_steps) and pruned.shape == (3, tb.n_steps, 2)
    torch.testing.assert_close(pruned[..., 0], dense)  # r = 0 costs the dense layer
    assert (pruned[..., 1] < dense).all()


def test_toy_target_is_the_constant_rate_cost():
    dims = DecoderDims(6, 128, 512)
    t = toy_target(170, 144, 2, dims)
    assert toy_target(170, 144, 2, dims, rate=0.0) == 1.0 and 2 / 6 < t < 1.0


def test_config_checks():
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target=0.0)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_argmax_calibration_meets_the_target(setup):
    """The bias shift makes argmax inference on the training rows meet the target (to the grid's resolution)."""
    from papers.dyrate.predictor import RatePredictor
    from papers.dyrate.train import argmax_flops, calibrate_rate_bias, collect_features

    vlm, caps = setup
    dims = DecoderDims.from_config(vlm.model.config)
    pred = RatePredictor(4, K=2)
    with torch.no_grad():
        pred.linear.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    feats, costs = collect_features(vlm, [make_teacher_batch(vlm, caps[:4], vlm._text_ids)], pred, dims)
    lo, hi = argmax_flops(pred, feats, costs, 4, beta=50.0), argmax_flops(pred, feats, costs, 4, beta=-50.0)
    target = (lo + hi) / 2
    beta = calibrate_rate_bias(pred, feats, costs, 4, target)
    got = argmax_flops(pred, feats, costs, 4)
    assert got <= target and argmax_flops(pred, feats, costs, 4, beta=-1e-3) >= got
    assert lo < target < hi and isinstance(beta, float)


def test_interrupted_training_resumes_to_the_same_predictor(setup, tmp_path, monkeypatch):
    """A run stopped after two steps and rerun with the same state file ends where an uninterrupted run ends."""
    vlm, caps = setup
    cfg = TrainConfig(K=2, target=0.88, lam=50.0, epochs=2, batch_size=3, lr=5e-2, seed=0, save_every=1)
    ref, ref_card = train_predictor(vlm, caps, cfg, encode=vlm._text_ids, log=lambda s: None)
    real, calls = train_module.batch_loss, []

    def stop_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    state = tmp_path / "state" / "train.pt"
    monkeypatch.setattr(train_module, "batch_loss", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        train_predictor(vlm, caps, cfg, encode=vlm._text_ids, log=lambda s: None, state_path=state)
    monkeypatch.setattr(train_module, "batch_loss", real)
    logs = []
    pred, card = train_predictor(vlm, caps, cfg, encode=vlm._text_ids, log=logs.append, state_path=state)
    assert logs[0].startswith("resumed at step 2 of 6")
    assert torch.equal(pred.linear.weight, ref.linear.weight) and torch.equal(pred.linear.bias, ref.linear.bias)
    assert card["history"] == ref_card["history"]
    with pytest.raises(ValueError, match="another recipe"):
        train_predictor(vlm, caps, TrainConfig(K=2, target=0.5, epochs=2, batch_size=3), encode=vlm._text_ids,
                        log=lambda s: None, state_path=state)
