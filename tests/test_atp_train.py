"""ATP training loop (papers/atp/train.py) on a tiny random LLaVA: the budget loss drives the token count to
the target, runs are deterministic, `frozen` leaves the decoder untouched and `finetune` trains it."""
import itertools

import pytest
import torch

from common import spans as S
from common.attention import decoder_of
from common.models.tiny import make_batch, tiny_llava
from common import flops as F
from papers.atp.runs import TrainConfig, build_atp_config, matched_fixed_counts, n_target_of
from papers.atp.train import IGNORE, TrainBatch, measure_tokens, train_atp


def tiny_batches(seed=0):
    for i in itertools.count():
        b = make_batch(4, n_image_tokens=16, seed=seed + i)
        ans = torch.randint(3, 100, (4, 2), generator=torch.Generator().manual_seed(i))
        ids = torch.cat([b.input_ids, ans], 1)
        am = torch.cat([b.attention_mask, torch.ones(4, 2, dtype=torch.long)], 1)
        labels = torch.full_like(ids, IGNORE)
        labels[:, -2:] = ans
        kinds = S.kinds_of(S.compute_spans(ids, am, b.image_token_id))
        kinds[:, -2:] = S.RESPONSE
        yield TrainBatch({"input_ids": ids, "attention_mask": am, "pixel_values": b.pixel_values}, labels, kinds)


def cfg_for(**kw):
    base = dict(budget=144, steps=40, lr_atp=3e-2, lr_llm=1e-3, atp={"hidden": 16, "tau": 20.0})
    base.update(kw)
    return TrainConfig(**base)


def run_tiny(cfg):
    model = tiny_llava(num_layers=8)
    atp_cfg = build_atp_config(cfg, 16, 8)
    atp, rows = train_atp(model, tiny_batches(), cfg, atp_cfg, log=lambda s: None)
    return model, atp, rows


def test_build_config_maps_layers_and_budgets():
    cfg = build_atp_config(TrainConfig(budget=88), 144, 8)
    assert cfg.layers == (1, 3, 6) and n_target_of(TrainConfig(budget=88), 144) == pytest.approx(22.0)
    fixed = build_atp_config(TrainConfig(fixed_keep=(162, 54, 18)), 144, 8)
    assert fixed.fixed_keep == (37, 12, 4) and fixed.layers == (1, 4, 6)  # average 36 = 144/576 of 144
    avg = F.average_visual_tokens(F.visual_tokens_per_layer(144, [1, 4, 6], [37, 12, 4], 8), 8)
    assert abs(avg - 36) / 36 < 0.02
    assert matched_fixed_counts((162, 54, 18), (4, 14, 24), 576, 32, 144) == (162, 54, 18)  # Table 2 itself
    assert matched_fixed_counts((130,), (1,), 576, 32, 143.9375) == (130,)
    assert TrainConfig(fixed_keep=(162, 54, 18)).name() == "atp-toy-144-fixed-162-54-18"
    assert TrainConfig(atp={"use_sp": False}).name() == "atp-toy-144-frozen-nosp"


def test_budget_loss_reaches_target_and_frozen_decoder_is_untouched():
    model, atp, rows = run_tiny(cfg_for())
    ref = tiny_llava(num_layers=8)
    for a, b in zip(decoder_of(model).parameters(), decoder_of(ref).parameters()):
        assert torch.equal(a, b)
    target = n_target_of(cfg_for(), 16)  # 4 tokens of 16
    first, last = rows[0]["avg_tokens_soft"], sum(r["avg_tokens_soft"] for r in rows[-5:]) / 5
    assert abs(last - target) < 0.5 * abs(first - target)
    b = next(tiny_batches(99))
    prompt = {k: v[:, :-2] if k != "pixel_values" else v for k, v in b.inputs.items()}
    m = measure_tokens(model, atp, [prompt], 127)
    assert len(m["avg_tokens"]) == 4 and set(m["theta"]) == set(atp.config.layers)


def test_training_is_deterministic_and_finetune_moves_the_decoder():
    cfg = cfg_for(steps=5, decoder="finetune")
    m1, a1, r1 = run_tiny(cfg)
    m2, a2, r2 = run_tiny(cfg)
    assert [r["loss"] for r in r1] == [r["loss"] for r in r2]
    for p, q in zip(a1.parameters(), a2.parameters()):
        assert torch.equal(p, q)
    ref = tiny_llava(num_layers=8)
    assert any(not torch.equal(a, b) for a, b in zip(decoder_of(m1).parameters(), decoder_of(ref).parameters()))


def test_fixed_ratio_training_keeps_fixed_counts():
    cfg = cfg_for(steps=3, fixed_keep=(288, 144, 72))
    model, atp, rows = run_tiny(cfg)
    assert rows[-1]["kept_hard"] == [float(c) for c in atp.config.fixed_keep] and atp.config.fixed_keep[0] < 16


def test_budget_weight_grows_while_over_budget_and_never_drops_below_its_start():
    cfg = cfg_for(steps=12, lambda_target=0.05, lambda_growth=0.5)
    _, _, rows = run_tiny(cfg)
    target = n_target_of(cfg, 16)
    assert min(r["lambda_target"] for r in rows) == pytest.approx(0.05)
    for a, b in zip(rows, rows[1:]):
        if a["avg_tokens_soft"] > target:
            assert b["lambda_target"] > a["lambda_target"], (a, b)
        else:
            assert b["lambda_target"] <= a["lambda_target"], (a, b)
    assert any(r["lambda_target"] > 0.05 for r in rows)
    _, _, fixed = run_tiny(cfg_for(steps=4, lambda_target=0.1, lambda_growth=0.0))
    assert {r["lambda_target"] for r in fixed} == {0.1}
