"""SparseVLM's reducer (papers/sparsevlm/method.py) on tiny random LLaVAs: exactness, Eq. 8 counts and the skip
rule, recycling counts and maths, attention slice vs eager attention, batching, cached decoding, errors."""
from __future__ import annotations

import math

import pytest
import torch

from common.models.tiny import make_batch, num_image_tokens, sample_of, tiny_llava
from common.reduction import reduce_tokens
from papers.sparsevlm.method import (
    SparseVLM, SparseVLMConfig, calibrate, equivalent_tokens, hook_layers, kept_count, rater_relevance, recycle,
    recycle_counts, resolve_score_layers, select_raters,
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
    assert hook_layers((2, 6)) == (0, 2, 3, 6, 7)
    with pytest.raises(ValueError, match="score_layers"):
        resolve_score_layers(4, [3])
    with pytest.raises(ValueError, match="n_layers"):
        resolve_score_layers(1)


# ------------------------------------------------------------------------------ counts in the model
def _check_counts(st, red, cfg):
    n_full = 64
    for b, tr in enumerate(red.trace):
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
    assert red.score_layers == (0, 2, 4, 6)
    assert sorted(st.kept_counts) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert all(len(tr.layers) == 4 for tr in red.trace)
    _check_counts(st, red, red.config)
    assert any(lt.kept.numel() < lt.visual_orig.numel() for tr in red.trace for lt in tr.layers)


def test_skip_rule_when_rank_reaches_lv(model, batch):
    """Once no more visual tokens are left than raters, P has full column rank: L_v == rank skips the layer
    (nothing pruned, nothing recycled)."""
    red = SparseVLM(scale=0.2)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    skipped = [lt for tr in red.trace for lt in tr.layers if lt.rank == lt.visual_orig.numel()]
    assert skipped, "expected a layer whose P has full column rank"
    for lt in skipped:
        assert lt.kept.numel() == lt.visual_orig.numel() and lt.recycled is None
    _check_counts(st, red, red.config)


@pytest.mark.parametrize("rows", ["text", "all"])
def test_rater_ablation_keeps_the_counts_changes_the_choice(model, batch, rows):
    """Fig. 5's variants score with other rows of P but take the count from the raters' rank."""
    ref = SparseVLM(scale=3.0)
    with reduce_tokens(model, ref) as st_ref:
        _logits(model, batch.inputs())
    red = SparseVLM(scale=3.0, rater_rows=rows)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    first = [(a.layers[0], b.layers[0]) for a, b in zip(ref.trace, red.trace)]
    assert all(x.rank == y.rank and x.kept.numel() == y.kept.numel() for x, y in first)
    assert any(not torch.equal(x.kept, y.kept) for x, y in first)
    assert st.kept_counts[1] == st_ref.kept_counts[1]


def test_recycling_off_adds_nothing(model, batch):
    red = SparseVLM(scale=3.0, recycle=False)
    with reduce_tokens(model, red) as st:
        _logits(model, batch.inputs())
    assert all((k >= 0).all() for ks in st.kept.values() for k in ks)
    assert all(lt.recycled is None for tr in red.trace for lt in tr.layers)


def test_significance_equals_eager_attention(batch):
    """Pbar at the first scoring layer = the mean over rater rows and heads of the eager attention
    probabilities of that layer (the slice is computed from the layer's input, never L x L)."""
    eager = tiny_llava(seed=0, num_layers=8, image_size=64, patch=8, attn="eager")
    with torch.no_grad():
        att = eager(**batch.inputs(), output_attentions=True).attentions[0].mean(1)  # [B, L, L]
    red = SparseVLM(scale=3.0)
    with reduce_tokens(eager, red):
        _logits(eager, batch.inputs())
    for b, tr in enumerate(red.trace):
        lt = tr.layers[0]
        rows = tr.instruction_positions[tr.raters]
        vis = torch.nonzero(batch.input_ids[b] == batch.image_token_id).flatten()
        want = att[b][rows][:, vis].mean(0)
        torch.testing.assert_close(lt.scores, want, atol=1e-5, rtol=0)
        assert lt.rank == int(torch.linalg.matrix_rank(att[b][rows][:, vis]))


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


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="fast"), "mode"), (dict(scale=-1.0), "scale"), (dict(tau=1.5), "tau"), (dict(lam=float("nan")), "lam"),
    (dict(rater_rows="some"), "rater_rows"), (dict(score_layers=(1, 2)), "score_layers"),
    (dict(score_layers=(-1,)), "score_layers"), (dict(bias="x"), "bias"), (dict(colour=1), "colour"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SparseVLM(**kwargs)


def test_score_layer_beyond_depth_raises_on_binding(model, batch):
    with pytest.raises(ValueError, match="score_layers"):
        with reduce_tokens(model, SparseVLM(score_layers=(7,))):
            pass
