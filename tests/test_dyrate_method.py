"""The DyRate reducer (papers/dyrate/method.py) on tiny random LLaVAs: the acceptance check (rate 0 ==
vanilla greedy), equivalences with FastV and with the training pass, the three KV-cache modes, errors."""
from __future__ import annotations

import pytest
import torch

from common.baselines.fastv import FastV
from common.factory import build_reducer, make_reducer
from common.models.tiny import make_batch, num_image_tokens, tiny_llava
from common.reduction import BuildTarget, reduce_tokens
from common.schedule import Budget
from papers.dyrate.method import MODES, DepthPrune, DyRate, fixed_rate
from papers.dyrate.policy import policy_pass, teacher_batch
from papers.dyrate.predictor import RatePredictor

T = 6


def _gen(model, batch, reducer=None, **kw):
    ctx = reduce_tokens(model, reducer) if reducer is not None else None
    kw = {**(reducer.generate_kwargs() if reducer is not None else {}), **kw}
    with torch.no_grad():
        if ctx is None:
            return model.generate(**batch.inputs(), max_new_tokens=T, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, **kw)
        with ctx:
            return model.generate(**batch.inputs(), max_new_tokens=T, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, **kw)


@pytest.fixture(scope="module")
def vanilla(model, batch):
    return _gen(model, batch)


def _stepwise_predictor(step1_class=0, later_class=5):
    """Class `step1_class` at step 1 (no response token yet), `later_class` once any response share exists."""
    p = RatePredictor(4, K=2)
    with torch.no_grad():
        p.linear.bias[step1_class] = 1.0
        p.linear.weight[later_class, 3::4] = 1000.0  # the response share of every head
    return p


@pytest.mark.parametrize("mode", MODES)
def test_rate_zero_is_vanilla_greedy(model, batch, vanilla, mode):
    """Acceptance: rate 0 at every step generates exactly what the unpruned model generates."""
    red = DyRate(K=2, rate=0.0, mode=mode)
    out = _gen(model, batch, red)
    assert torch.equal(out.sequences, vanilla.sequences)
    assert red.trace.rates().shape == (3, T) and (red.trace.rates() == 0).all()


def test_rate_zero_predictor_is_vanilla_greedy(model, batch, vanilla):
    pred = RatePredictor(4, K=2)
    with torch.no_grad():
        pred.linear.bias[0] = 5.0
    out = _gen(model, batch, DyRate(K=2, predictor=pred))
    assert torch.equal(out.sequences, vanilla.sequences)


def test_fixed_rate_recompute_equals_fastv_without_cache(model, batch):
    """FastV re-pruning at every forward (its original no-cache form) == DyRate with a constant rate."""
    ours = _gen(model, batch, DyRate(K=2, rate=0.5))
    with reduce_tokens(model, FastV(K=2, budget=Budget.pruned(0.5))), torch.no_grad():
        ref = model.generate(**batch.inputs(), max_new_tokens=T, do_sample=False, use_cache=False,
                             output_logits=True, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(ours.logits), torch.stack(ref.logits), atol=1e-5, rtol=0)


def test_rate_changes_per_step_and_is_recorded(model, batch, vanilla):
    red = DyRate(K=2, predictor=_stepwise_predictor(0, 5))
    out = _gen(model, batch, red)
    rates = red.trace.rates()
    assert (rates[:, 0] == 0).all() and (rates[:, 1:] == 0.5).all()
    assert [s.step for s in red.trace.steps] == list(range(T))
    assert all(k.numel() == 8 for s in red.trace.steps[1:] for k in s.kept)  # 16 visual tokens, half kept
    assert torch.equal(out.logits[0], vanilla.logits[0])  # step 1 unpruned
    assert not torch.allclose(out.logits[1], vanilla.logits[1])
    with reduce_tokens(model, red) as st, torch.no_grad():
        model(**batch.inputs())
    assert st.info[2] is red.trace.steps[-1]  # each step's record is its Selection.info


def test_decisions_do_not_depend_on_earlier_calls(model, batch):
    """Recompute mode re-decides every step from that step's attention alone: a reducer that already ran a
    generation decides the next one exactly like a fresh reducer."""
    used = DyRate(K=2, predictor=_stepwise_predictor(0, 5))
    _gen(model, batch, used)
    again, fresh = _gen(model, batch, used), _gen(model, batch, DyRate(K=2, predictor=_stepwise_predictor(0, 5)))
    assert torch.equal(again.sequences, fresh.sequences)


@pytest.mark.parametrize("n_layers, n_visual, budget, K, kept", [
    (32, 576, Budget.paper(64), 2, 64), (32, 576, Budget.paper(192), 2, 192), (8, 144, Budget.paper(128), 1, 32),
    (4, 16, Budget.pruned(0.5), 1, 8),
])
def test_budget_form_keeps_exactly_the_budget(n_layers, n_visual, budget, K, kept):
    """With a budget DyRate is its fixed-rate form at K = 2 of 32 mapped (at least 1), keeping budget.keep(N)."""
    red = make_reducer("dyrate", budget, BuildTarget(n_layers=n_layers, n_visual=n_visual))
    assert isinstance(red, DyRate) and DyRate.takes_budget and red.predictor is None
    assert red.K == K and red.rate == fixed_rate(budget, n_visual)
    assert n_visual - int(red.rate * n_visual) == kept == budget.keep(n_visual)
    with pytest.raises(ValueError, match="not both"):
        make_reducer("dyrate", budget, BuildTarget(n_layers=n_layers, n_visual=n_visual), rate=0.5)


def test_budget_form_prunes_to_the_budget(model, batch):
    red = make_reducer("dyrate", Budget.count(5), BuildTarget(n_layers=4, n_visual=16))
    with reduce_tokens(model, red) as st, torch.no_grad():
        model(**batch.inputs())
    assert st.kept_counts[1] == [5, 5, 5]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_learned_form_in_half_precision(dtype):
    """The predictor runs in float32 whatever the model's dtype; indices stay integers."""
    m = tiny_llava(seed=0, num_layers=4, dtype=dtype)
    b = make_batch(batch_size=2, n_image_tokens=num_image_tokens(m), seed=1).inputs()
    b["pixel_values"] = b["pixel_values"].to(dtype)
    red = DyRate(K=2, predictor=_stepwise_predictor(0, 5))
    with torch.no_grad(), reduce_tokens(m, red):
        m.generate(**b, max_new_tokens=3, do_sample=False, use_cache=False)
    assert (red.trace.rates()[:, 0] == 0).all() and (red.trace.rates()[:, 1:] == 0.5).all()
    assert all(k.dtype == torch.long and k.numel() == 8 for s in red.trace.steps[1:] for k in s.kept)


def test_policy_pass_equals_mask_mode_generation(model, batch):
    """§5.2 (B): the single teacher-forced pass with per-row masks == mask-mode KV-cache generation."""
    pred = _stepwise_predictor(0, 5)
    red = DyRate(K=2, predictor=pred, mode="mask")
    out = _gen(model, batch, red)
    P = batch.input_ids.shape[1]
    tb = teacher_batch(batch.input_ids, batch.attention_mask, batch.pixel_values,
                       [out.sequences[i, P:] for i in range(3)], batch.image_token_id)
    with torch.no_grad():
        po = policy_pass(model, tb, pred, hard=True, eps=0.0)
    torch.testing.assert_close(po.logits, torch.stack(out.logits, 1), atol=1e-4, rtol=0)
    assert torch.equal(pred.rate_tensor()[po.y.argmax(-1)], red.trace.rates())


def test_mask_mode_hides_and_keeps_cache(model, batch):
    red = DyRate(K=2, rate=0.75, mode="mask")
    with reduce_tokens(model, red) as st, torch.no_grad():
        res = model.generate(**batch.inputs(), max_new_tokens=T, do_sample=False, return_dict_in_generate=True)
    assert len(st.decode_hidden) == T - 1
    assert all(len(h) == 12 for step in st.decode_hidden for h in step[2])  # 16 - 4 kept
    assert res.past_key_values.get_seq_length(3) == batch.input_ids.shape[1] + T - 1
    assert (red.trace.rates()[:, 0] == 0).all() and (red.trace.rates()[:, 1:] == 0.75).all()


def test_drop_mode_never_grows_back(model, batch):
    """Rates 0.5 then 0 then 0.75...: drop mode keeps min(previous, allowed) and nested kept sets."""
    pred = RatePredictor(4, K=2)
    with torch.no_grad():
        pred.linear.weight.normal_(0, 40.0, generator=torch.Generator().manual_seed(2))
    red = DyRate(K=2, predictor=pred, mode="drop")
    with reduce_tokens(model, red) as st, torch.no_grad():
        model.generate(**batch.inputs(), max_new_tokens=T, do_sample=False)
    for b in range(3):
        sets = [set(s.kept[b].tolist()) for s in red.trace.steps]
        assert all(later <= earlier for earlier, later in zip(sets, sets[1:]))
        allowed = [16 - int(r * 16) for r in red.trace.rates()[b].tolist()]
        running = [min(allowed[: t + 1]) for t in range(T)]
        assert [len(s) for s in sets] == running
    assert st.kept_counts[2] == [len(red.trace.steps[0].kept[b]) for b in range(3)]  # step 1: physical drop


def test_registered_and_configured():
    dp = make_reducer("dyrate-dp", None, BuildTarget(n_layers=32, n_visual=576), R0=0.1)
    assert isinstance(dp, DepthPrune) and dp.start == 4 and dp.layers == tuple(range(4, 32))
    with pytest.raises(ValueError, match="R0"):
        make_reducer("dyrate-dp", Budget.paper(64), BuildTarget(n_layers=32, n_visual=576))
    red = build_reducer("dyrate", K=2, rate=0.5)
    assert isinstance(red, DyRate) and red.layers == (2,) and red.generate_kwargs() == {"use_cache": False}
    assert DyRate(K=2, rate=0.5, mode="mask").layers == () and DyRate(K=2, rate=0.5, mode="mask").decode_layers == (2,)
    cfg = DyRate(K=2, predictor=RatePredictor(4, K=2)).config()
    assert cfg["predictor"]["config"]["n_heads"] == 4 and len(cfg["predictor"]["weights"]) == 4 * 4 * 10 + 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=0, rate=0.5), "K"),
    (dict(K=2, rate=0.5, mode="cache"), "mode"),
    (dict(K=2), "exactly one"),
    (dict(K=2, rate=0.5, predictor=RatePredictor(4, K=2)), "exactly one"),
    (dict(K=3, predictor=RatePredictor(4, K=2)), "K=2"),
    (dict(K=2, rate=1.5), "rate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DyRate(**kwargs)


def test_depth_prune_schedule(model, batch):
    dp = DepthPrune(start=1, n_layers=4, R0=0.25)
    assert dp.rates_per_layer() == [0.0, 0.25, 0.5, 0.75]
    with reduce_tokens(model, dp) as st, torch.no_grad():
        model(**batch.inputs())
    assert [st.kept_counts[l][0] for l in (1, 2, 3)] == [12, 8, 4]
    with pytest.raises(ValueError, match="start"):
        DepthPrune(start=0, n_layers=4, R0=0.2)


def test_trace_shares_are_the_analysis_shares(model, batch):
    """The predictor's features are `analysis.generation_shares` of layer K-1 (same function, same rows)."""
    from papers.dyrate.analysis import generation_shares

    red = DyRate(K=2, rate=0.0)
    _gen(model, batch, red)
    ref = generation_shares(model, batch.inputs(), max_new_tokens=T, layers=[1]).head_mean()[:, :, 0]
    torch.testing.assert_close(red.trace.shares(), torch.as_tensor(ref), atol=1e-5, rtol=0)
