"""SparseVLM's reducer (papers/sparsevlm/method.py) on tiny random LLaVAs: exactness, Eq. 8 counts and the skip
rule, recycling counts and maths, attention slice vs eager attention, batching, cached decoding, statelessness,
fp16/bf16, budgets (calibration, `for_model` and its disk cache), errors."""
from __future__ import annotations

import math

import pytest
import torch

from common.baselines.fastv import topk_stable
from common.models.tiny import make_batch, num_image_tokens, sample_of, tiny_llava
from common.factory import make_reducer
from common.reduction import BuildTarget, reduce_tokens
from common.schedule import Budget
from papers.sparsevlm.method import (
    SparseVLM, SparseVLMConfig, calibrate, equivalent_tokens, hook_layers, kept_count, rater_relevance, recycle,
    recycle_counts, resolve_score_layers, select_raters, traces,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    # 64 visual tokens (64 px / 8 px patches) and 8 layers: scoring layers (0, 2, 4, 6), enough to prune twice
    return tiny_llava(seed=0, num_layers=8, image_size=64, patch=8)


@pytest.fixture(scope="module")
def batch(model):
    return make_batch(batch_size=3, n_image_tokens=num_image_tokens(model), image_size=64, seed=1,
                      instr_lens=[6, 9, 12])


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# ------------------------------------------------------------------------------------------- exactness
def test_lambda_zero_is_exact(model, batch):
    """lambda = 0 deletes nothing at any layer: logits and generations equal the unhooked model's."""
    ref = _logits(model, batch.inputs())
    with torch.no_grad():
        gen_ref = model.generate(**batch.inputs(), max_new_tokens=5, do_sample=False)
    red = SparseVLM(mode="paper", lam=0.0)
    with reduce_tokens(model, red) as st:
        out = _logits(model, batch.inputs())
        with torch.no_grad():
            gen = model.generate(**batch.inputs(), max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.equal(gen, gen_ref)
    assert all(c == [64] * 3 for c in st.kept_counts.values())


# ----------------------------------------------------------------------------------------- pure maths
def test_kept_count_rules():
    off = SparseVLMConfig(scale=2.0, bias=1.0)
    assert kept_count(64, 5, off) == 11  # int(2 * 5 + 1)
    assert kept_count(64, 40, off) == 63  # capped at L_v - 1: one token always goes
    assert kept_count(10, 10, off) == 10  # L_v == rank: the layer is skipped
    assert kept_count(64, 5, SparseVLMConfig(scale=0.0, bias=-3.0)) == 0
    pap = SparseVLMConfig(mode="paper", lam=0.5)
    assert kept_count(64, 6, pap) == 64 - 29  # N = floor(0.5 * (64 - 6)) = 29 deleted
    assert kept_count(10, 9, pap) == 10  # N = floor(0.5) = 0: skipped
    assert kept_count(10, 0, SparseVLMConfig(mode="paper", lam=1.0)) == 0


def test_recycle_counts():
    off = SparseVLMConfig()
    assert recycle_counts(0, off) == (0, 0)
    assert recycle_counts(1, off) == (1, 1)
    assert recycle_counts(52, off) == (16, 2)  # int(0.3 * 52) + 1 = 16, int(16 / 10) + 1 = 2
    assert recycle_counts(100, off) == (31, 4)
    pap = SparseVLMConfig(mode="paper")
    assert recycle_counts(52, pap) == (16, 2)  # ceil(15.6), ceil(1.6)
    assert recycle_counts(3, pap) == (1, 1)
    assert recycle_counts(52, SparseVLMConfig(recycle=False)) == (0, 0)


def test_rater_relevance_softmax_over_text_and_threshold():
    g = torch.Generator().manual_seed(0)
    hv, hq = torch.randn(20, 8, generator=g), torch.randn(5, 8, generator=g)
    R = rater_relevance(hv, hq)
    assert R.shape == (5,)
    torch.testing.assert_close(R.sum(), torch.tensor(1.0))  # mean of row-stochastic rows over the text axis
    expected = torch.softmax(hv @ hq.T, dim=1).mean(0)
    torch.testing.assert_close(R, expected)
    tie = torch.tensor([0.25, 0.25, 0.25, 0.25])
    assert select_raters(tie, strict=True).numel() == 0
    assert select_raters(tie, strict=False).tolist() == [0, 1, 2, 3]
    assert select_raters(torch.tensor([0.1, 0.5, 0.4]), strict=True).tolist() == [1, 2]


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_recycle_merges_by_mean_or_sum(mode):
    g = torch.Generator().manual_seed(3)
    h = torch.cat([torch.randn(6, 4, generator=g) + 8, torch.randn(6, 4, generator=g) - 8])
    scores = torch.linspace(1.0, 0.0, 12)
    rec = recycle(h, scores, n_recycle=10, n_centres=2, mode=mode)
    assert rec.tokens.shape == (2, 4) and rec.members.tolist() == list(range(10))  # top-10 by score
    for c in range(2):
        grp = h[rec.members[rec.assignment == c]]
        want = grp.mean(0) if mode == "official" else grp.sum(0)
        torch.testing.assert_close(rec.tokens[c], want)
    assert sorted(rec.assignment[rec.centres].tolist()) == [0, 1]  # each centre in its own cluster
    # the two well-separated blobs end up in different clusters
    assert len(set(rec.assignment[:6].tolist())) == 1 and len(set(rec.assignment[6:].tolist())) == 1


# ------------------------------------------------------------------------------------------ layers
def test_score_layers_mapping():
    assert resolve_score_layers(32) == (2, 6, 15, 19)
    assert resolve_score_layers(4) == (0, 2)  # 2,6,15,19 -> 0,1,2,2: pushed two apart, the last dropped
    assert resolve_score_layers(8) == (0, 2, 4, 6)
    assert resolve_score_layers(8, [1, 5]) == (1, 5)
    assert hook_layers((2, 6)) == (3, 7)
    with pytest.raises(ValueError, match="score_layers"):
        resolve_score_layers(4, [3])
    with pytest.raises(ValueError, match="n_layers"):
        resolve_score_layers(1)


# ------------------------------------------------------------------------------ counts in the model
def _check_counts(st, cfg):
    n_full = 64
    for b, tr in enumerate(traces(st)):
        assert tr.raters is not None and tr.raters.numel() >= 1
        for lt in tr.layers:
            n = lt.visual_orig.numel()
            k = kept_count(n, lt.rank, cfg)
            assert lt.kept.numel() == k
            assert lt.rank <= min(lt.n_rows, n)
            lr, c = recycle_counts(n - k, cfg)
            assert (0 if lt.recycled is None else lt.recycled.tokens.shape[0]) == c
            assert (0 if lt.recycled is None else lt.recycled.members.numel()) == lr
            assert st.kept_counts[lt.layer][b] == k + c  # merged tokens are counted as visual
            assert int((st.kept[lt.layer][b] == -1).sum()) >= c
            n_full = n
    return n_full


@pytest.mark.parametrize("cfg", [dict(mode="official", scale=3.0), dict(mode="official", scale=2.0, bias=4.0),
                                 dict(mode="paper", lam=0.5), dict(mode="paper", lam=1.0)])
def test_counts_follow_eq8_and_recycling(model, batch, cfg):
    red = SparseVLM(**cfg)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    assert red.score_layers == (0, 2, 4, 6) and red.layers == (1, 3, 5, 7)
    assert sorted(st.kept_counts) == [1, 3, 5, 7]  # the hook is called at the pruning layers only
    trace = traces(st)
    assert len(trace) == 3 and all([lt.layer for lt in tr.layers] == [1, 3, 5, 7] for tr in trace)
    _check_counts(st, red.config)
    assert any(lt.kept.numel() < lt.visual_orig.numel() for tr in trace for lt in tr.layers)


def test_skip_rule_when_rank_reaches_lv(model, batch):
    """Once no more visual tokens are left than raters, P has full column rank: L_v == rank skips the layer
    (nothing pruned, nothing recycled)."""
    red = SparseVLM(scale=0.2)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    skipped = [lt for tr in traces(st) for lt in tr.layers if lt.rank == lt.visual_orig.numel()]
    assert skipped, "expected a layer whose P has full column rank"
    for lt in skipped:
        assert lt.kept.numel() == lt.visual_orig.numel() and lt.recycled is None
    _check_counts(st, red.config)


@pytest.mark.parametrize("rows", ["text", "all"])
def test_rater_ablation_keeps_the_counts_changes_the_choice(model, batch, rows):
    """Fig. 5's variants score with other rows of P but take the count from the raters' rank."""
    ref = SparseVLM(scale=3.0)
    with reduce_tokens(model, ref) as st_ref:
        _logits(model, batch.inputs())
    red = SparseVLM(scale=3.0, rater_rows=rows)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    first = [(a.layers[0], b.layers[0]) for a, b in zip(traces(st_ref), traces(st))]
    assert all(x.rank == y.rank and x.kept.numel() == y.kept.numel() for x, y in first)
    assert any(not torch.equal(x.kept, y.kept) for x, y in first)
    assert st.kept_counts[1] == st_ref.kept_counts[1]


def test_recycling_off_adds_nothing(model, batch):
    red = SparseVLM(scale=3.0, recycle=False)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    assert all((k >= 0).all() for ks in st.kept.values() for k in ks)
    assert all(lt.recycled is None for tr in traces(st) for lt in tr.layers)


def test_decisions_equal_an_eager_reference(batch):
    """An independent reference for the first pruning layer: raters from the decoder's input embeddings
    (`output_hidden_states[0]`), Pbar and rank from the eager attention probabilities of the scoring layer,
    top-K by Eq. 8's official rule. The reducer reads the same from its captured slice (never L x L)."""
    eager = tiny_llava(seed=0, num_layers=8, image_size=64, patch=8, attn="eager")
    with torch.no_grad():
        out = eager(**batch.inputs(), output_attentions=True, output_hidden_states=True)
    att, h0 = out.attentions[0].mean(1), out.hidden_states[0]  # [B, L, L], [B, L, D]
    red = SparseVLM(scale=3.0)
    with reduce_tokens(eager, red) as st:
        _logits(eager, batch.inputs())
    for b, tr in enumerate(traces(st)):
        vis = torch.nonzero(batch.input_ids[b] == batch.image_token_id).flatten()
        text = torch.arange(int(vis.max()) + 1, batch.input_ids.shape[1])
        R = rater_relevance(h0[b, vis], h0[b, text])
        raters = select_raters(R, strict=True)
        torch.testing.assert_close(tr.relevance, R)
        assert torch.equal(tr.instruction_positions, text) and torch.equal(tr.raters, raters)
        P = att[b][text[raters]][:, vis]
        lt = tr.layers[0]
        torch.testing.assert_close(lt.scores, P.mean(0), atol=1e-5, rtol=0)
        assert lt.rank == int(torch.linalg.matrix_rank(P)) and lt.n_rows == raters.numel()
        k = kept_count(vis.numel(), lt.rank, red.config)
        assert torch.equal(lt.kept, topk_stable(P.mean(0), k))
        assert torch.equal(st.kept[1][b][:k], lt.kept)  # the hook kept exactly those (merged ones follow)


def test_the_reducer_keeps_no_state_between_calls(model, batch):
    """Everything `select` needs arrives in its context: the reducer's attributes are the same before and
    after a prefill, and a second batch after the first decides as it would alone."""
    red = SparseVLM(scale=3.0)
    with reduce_tokens(model, red) as st:
        before = {k: repr(v) for k, v in vars(red).items()}
        _logits(model, sample_of(batch, 2).inputs())
        _logits(model, batch.inputs())
        assert {k: repr(v) for k, v in vars(red).items()} == before
        kept = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
    with reduce_tokens(model, SparseVLM(scale=3.0)) as fresh:
        _logits(model, batch.inputs())
    assert all(torch.equal(a, b) for l in kept for a, b in zip(kept[l], fresh.kept[l]))


def test_adjacent_scoring_layers(model, batch):
    """Scoring layers one apart: layer 2 is pruned (from layer 1's attention) and then scores layer 3's
    pruning on the tokens it kept."""
    red = SparseVLM(scale=2.0, score_layers=(1, 2))
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    assert red.layers == (2, 3) and sorted(st.kept_counts) == [2, 3]
    _check_counts(st, red.config)
    for b, tr in enumerate(traces(st)):
        assert tr.layers[1].visual_orig.numel() == st.kept_counts[2][b]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(batch, dtype):
    """bf16/fp16 models: scores and ranks in fp32, indices never in the activation dtype, recycled tokens
    finite and in the model's dtype, cached decoding works; the counts follow Eq. 8 as in fp32."""
    half = tiny_llava(seed=0, num_layers=8, image_size=64, patch=8).to(dtype)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.inputs().items()}
    red = SparseVLM(scale=3.0)
    with reduce_tokens(half, red) as st, torch.no_grad():
        half(**inputs)
        trace = traces(st)
        gen = half.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == batch.input_ids.shape[1] + 4
    _check_counts(st, red.config)
    recycled = [lt.recycled for tr in trace for lt in tr.layers if lt.recycled is not None]
    assert recycled and all(r.tokens.dtype == dtype and bool(torch.isfinite(r.tokens).all()) for r in recycled)
    assert all(lt.scores.dtype == torch.float32 and lt.kept.dtype == torch.long for tr in trace for lt in tr.layers)


# ------------------------------------------------------------------------------ batching and decoding
@pytest.mark.parametrize("cfg", [dict(scale=3.0), dict(mode="paper", lam=0.7)])
def test_batched_equals_per_sample(model, batch, cfg):
    red = SparseVLM(**cfg)
    with reduce_tokens(model, red) as st:
        out = _logits(model, batch.inputs())
        with torch.no_grad():
            gen = model.generate(**batch.inputs(), max_new_tokens=5, do_sample=False)
    kept = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
    for i in range(3):
        one = sample_of(batch, i)
        with reduce_tokens(model, red) as st1:
            o1 = _logits(model, one.inputs())
            with torch.no_grad():
                g1 = model.generate(**one.inputs(), max_new_tokens=5, do_sample=False)
        torch.testing.assert_close(o1[0], out[i, -o1.shape[1]:], atol=1e-4, rtol=0)
        assert g1[0, -5:].tolist() == gen[i, -5:].tolist()
        for l in kept:
            assert torch.equal(st1.kept[l][0], kept[l][i])


@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_cached_generate_matches_cache_free(model, batch, positions):
    """generate() on the pruned KV cache (recycled tokens included) == recomputing the pruned prompt each step."""
    red = SparseVLM(scale=3.0)
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with reduce_tokens(model, red, positions=positions), torch.no_grad():
        res = model.generate(**batch.inputs(), **kw)
    with reduce_tokens(model, red, positions=positions), torch.no_grad():
        ref = model.generate(**batch.inputs(), use_cache=False, **kw)
    assert torch.equal(res.sequences, ref.sequences)
    for a, b in zip(res.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_pruning_changes_the_output(model, batch):
    ref = _logits(model, batch.inputs())[:, -1]
    with reduce_tokens(model, SparseVLM(scale=0.5)):
        out = _logits(model, batch.inputs())[:, -1]
    assert (out - ref).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------- budgets
def test_calibrate_hits_a_reachable_target(model, batch, capsys):
    batches = [batch.inputs()]
    full = equivalent_tokens(model, batches, None, image_token_id=batch.image_token_id)
    assert full == 64
    cal = calibrate(model, batches, 30.0, iters=7)
    assert "equivalent tokens" in capsys.readouterr().out
    assert cal.feasible and cal.knob == "scale"
    assert abs(cal.achieved - 30.0) <= 3.0
    assert math.isclose(equivalent_tokens(model, batches, cal.reducer), cal.achieved)
    low = equivalent_tokens(model, batches, SparseVLM(scale=0.5))
    high = equivalent_tokens(model, batches, SparseVLM(scale=5.0))
    assert low < high  # more kept per rank -> more tokens on average
    cal_p = calibrate(model, batches, 30.0, iters=7, mode="paper", verbose=False)
    assert cal_p.knob == "lam" and abs(cal_p.achieved - 30.0) <= 3.0


def test_for_budget_uses_the_official_scale_bias():
    r = SparseVLM.for_budget(128)
    assert (r.config.scale, r.config.bias, r.config.mode) == (9.0, 6.0, "official")
    with pytest.raises(ValueError, match="budget"):
        SparseVLM.for_budget(100)


def test_for_model_calibrates_to_a_budget_and_caches_it(model, batch, tmp_path, capsys):
    """`make_reducer("sparsevlm", budget, target)` (what `Run.reducer` calls) calibrates the knob so the
    layer-averaged tokens match the budget, caches the value under the target's folder (a second build reads
    the file and never asks for batches), and passes options through."""
    calls = []

    def batches():
        calls.append(1)
        return [batch.inputs()]

    target = BuildTarget(8, 64, model, batch.image_token_id, calibration_batches=batches, cache_dir=tmp_path,
                         cache_key={"model": "tiny", "data": "batch"})
    red = make_reducer("sparsevlm", Budget.paper(192), target, calib_iters=6)
    assert isinstance(red, SparseVLM) and len(calls) == 1 and "calibrated scale=" in capsys.readouterr().out
    cal = red.calibration
    assert cal.knob == "scale" and cal.feasible and cal.target == pytest.approx(64 / 3)
    assert abs(cal.achieved - cal.target) <= 3.0
    assert math.isclose(equivalent_tokens(model, [batch.inputs()], red), cal.achieved)
    assert len(list(tmp_path.glob("sparsevlm-*.json"))) == 1
    again = make_reducer("sparsevlm", Budget.paper(192), target, calib_iters=6)
    assert len(calls) == 1 and again.config == red.config and again.calibration == cal
    # another budget or config is another calibration; explicit knobs and no budget skip it
    other = make_reducer("sparsevlm", Budget.paper(192), target, calib_iters=6, recycle=False)
    assert len(calls) == 2 and other.config.recycle is False
    assert make_reducer("sparsevlm", Budget.paper(64), target, scale=2.0).config.scale == 2.0 and len(calls) == 2
    assert make_reducer("sparsevlm", None, target).config == SparseVLMConfig()
    with pytest.raises(ValueError, match="calibrat"):
        make_reducer("sparsevlm", Budget.paper(192), BuildTarget(8, 64))
    with pytest.raises(ValueError, match="rater_rows"):
        make_reducer("sparsevlm", Budget.paper(128), target, rater_rows="some")


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="fast"), "mode"), (dict(scale=-1.0), "scale"), (dict(tau=1.5), "tau"), (dict(lam=float("nan")), "lam"),
    (dict(rater_rows="some"), "rater_rows"), (dict(score_layers=(2, 2)), "score_layers"),
    (dict(score_layers=(-1,)), "score_layers"), (dict(bias="x"), "bias"), (dict(colour=1), "colour"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SparseVLM(**kwargs)


def test_score_layer_beyond_depth_raises_on_binding(model, batch):
    with pytest.raises(ValueError, match="score_layers"):
        with reduce_tokens(model, SparseVLM(score_layers=(7,))):
            pass
