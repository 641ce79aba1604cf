"""DyRate's predictor maths (papers/dyrate/predictor.py) and the differentiable policy pass (policy.py)."""
from __future__ import annotations

import pytest
import torch

from common.flops import dyrate_generation_flops
from common.models.tiny import make_batch, num_image_tokens, tiny_llava
from papers.dyrate.predictor import (
    DEFAULT_RATES, RatePredictor, check_rates, gumbel_onehot, kept_count, nested_keep_masks, relative_flops,
    step_costs,
)
from papers.dyrate.policy import policy_pass, policy_softmax, teacher_batch


def test_nested_masks_are_monotone_and_ranked():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 20, generator=g)
    M = nested_keep_masks(scores, DEFAULT_RATES)  # [2, 3, C, 20]
    assert M.shape == (2, 3, 10, 20)
    assert M[..., 0, :].all()  # r_1 = 0 keeps everything
    assert (M[..., 1:, :] <= M[..., :-1, :]).all()  # nested
    assert M.sum(-1)[0, 0].tolist() == [20 - int(r * 20 + 1e-9) for r in DEFAULT_RATES]
    # the kept tokens of every rate are the highest-scoring ones
    for c in range(10):
        kept, dropped = scores[0, 0][M[0, 0, c]], scores[0, 0][~M[0, 0, c]]
        if dropped.numel():
            assert kept.min() > dropped.max()


def test_nested_masks_break_ties_to_lower_index():
    M = nested_keep_masks(torch.zeros(6), (0.0, 0.5))
    assert M[1].tolist() == [True, True, True, False, False, False]


def test_kept_count_uses_floor_like_common_flops():
    assert kept_count(144, 0.3) == 144 - 43 and kept_count(576, 0.5) == 288 and kept_count(10, 0.0) == 10


def test_gumbel_onehot_is_onehot_unbiased_and_differentiable():
    logits = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    y = gumbel_onehot(logits.expand(20000, 3), 1.0, g)
    assert torch.equal(y.detach().sum(-1), torch.ones(20000)) and set(y.detach().unique().tolist()) == {0.0, 1.0}
    freq = y.detach().mean(0)
    torch.testing.assert_close(freq, torch.softmax(logits.detach()[0], -1), atol=0.015, rtol=0)
    (y * torch.tensor([0.0, 1.0, 2.0])).sum().backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tau"):
        gumbel_onehot(logits, 0.0)


def test_relative_flops_matches_common_flops():
    rates = (0.0, 0.5, 0.9)
    per_step = [2, 0, 1, 1, 2]  # class per generation step
    dense, pruned = step_costs(40, 16, len(per_step), rates, "llava-1.5-7b")
    y = torch.nn.functional.one_hot(torch.tensor(per_step), 3).double()
    got = relative_flops(y, dense, pruned, K=2, n_layers=32)
    ref = dyrate_generation_flops(40, 16, [rates[c] for c in per_step], 2, "llava-1.5-7b")["ratio"]
    assert float(got) == pytest.approx(ref, rel=1e-12)
    # dyrate.md §7.1 golden number: FastV K=3, R=0.5, 576 visual + 55 text tokens on 7B -> 57.92 %
    dense, pruned = step_costs(631, 576, 1, (0.0, 0.5), "llava-1.5-7b")
    assert float(relative_flops(torch.tensor([[0.0, 1.0]]), dense, pruned, K=3, n_layers=32)) == \
        pytest.approx(0.5792, abs=5e-5)


def test_relative_flops_ignores_invalid_steps():
    dense, pruned = step_costs(40, 16, 3, (0.0, 0.5), "llava-1.5-7b")
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    full = relative_flops(y[:2], dense[:2], pruned[:2], 2, 32)
    masked = relative_flops(y, dense, pruned, 2, 32, valid=torch.tensor([True, True, False]))
    assert float(full) == pytest.approx(float(masked))


def test_check_rates_rejects_bad_grids():
    for bad, what in (((0.5, 0.6), "r_1"), ((0.0,), "two"), ((0.0, 0.5, 0.4), "increase"), ((0.0, 1.5), "increase")):
        with pytest.raises(ValueError, match=what):
            check_rates(bad)


def test_predictor_init_io_and_errors(tmp_path):
    p = RatePredictor(4, K=2)
    a = torch.rand(5, 16)
    assert torch.equal(p(a), torch.zeros(5, 10))  # W = 0, b = 0: uniform
    with torch.no_grad():
        p.linear.weight.normal_()
    p.save(tmp_path / "pred", card={"note": "x"})
    q = RatePredictor.load(tmp_path / "pred")
    assert torch.equal(q(a), p(a)) and q.rates == p.rates and q.K == 2
    with pytest.raises(ValueError, match="features"):
        p(torch.rand(5, 12))
    with pytest.raises(ValueError, match="K"):
        RatePredictor(4, K=0)
    with pytest.raises(ValueError, match="n_heads"):
        RatePredictor(0)
    with pytest.raises(FileNotFoundError, match="card.json"):
        RatePredictor.load(tmp_path / "nothing")


def test_policy_softmax_is_masked_softmax_at_eps_zero():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, 7, generator=g)
    allowed = torch.ones(1, 1, 5, 7, dtype=torch.bool).tril(2)
    policy = (torch.rand(2, 5, 7, generator=g) > 0.4).float()
    policy[..., 0] = 1
    got = policy_softmax(z, allowed, policy, eps=0.0)
    ref = torch.softmax(z.masked_fill(~(allowed & policy[:, None].bool()), float("-inf")), -1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(policy_softmax(z, allowed, policy), ref, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llava(seed=0, num_layers=4)
    batch = make_batch(batch_size=2, n_image_tokens=num_image_tokens(model), seed=1)
    g = torch.Generator().manual_seed(3)
    resp = [torch.randint(3, 100, (n,), generator=g) for n in (5, 3)]
    return model, teacher_batch(batch.input_ids, batch.attention_mask, batch.pixel_values, resp,
                                batch.image_token_id)


def test_policy_pass_gradient_reaches_only_the_predictor(tiny):
    model, tb = tiny
    pred = RatePredictor(4, K=2)
    for p in model.parameters():
        p.requires_grad_(False)
    out = policy_pass(model, tb, pred, generator=torch.Generator().manual_seed(0))
    assert out.y.shape == (2, 5, 10) and torch.equal(out.y.detach().sum(-1), torch.ones(2, 5))
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tb.targets.flatten(), ignore_index=-100)
    loss.backward()
    assert pred.linear.weight.grad.abs().sum() > 0 and pred.linear.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert model.config.text_config._attn_implementation == "sdpa"  # restored


def test_policy_pass_rate_zero_equals_plain_forward(tiny):
    """A predictor that always says r = 0 leaves the logits unchanged (eps = 0)."""
    model, tb = tiny
    pred = RatePredictor(4, K=2)
    with torch.no_grad():
        pred.linear.bias[0] = 10.0
        out = policy_pass(model, tb, pred, hard=True, eps=0.0)
        ref = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, pixel_values=tb.pixel_values,
                    position_ids=tb.position_ids()).logits[:, tb.prompt_length - 1: tb.prompt_length - 1 + tb.n_steps]
    v = tb.valid
    torch.testing.assert_close(out.logits[v], ref[v], atol=1e-4, rtol=0)


def test_teacher_batch_checks():
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="responses"):
        teacher_batch(ids, torch.ones_like(ids), None, [torch.ones(2)], 1)
    with pytest.raises(ValueError, match="responses"):
        teacher_batch(ids, torch.ones_like(ids), None, [torch.ones(2), torch.ones(0)], 1)
