"""Baselines: FastV's rule on hand-made attention, ToMe merges, VTW, random, AvgPool/TokenConcat, registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common import spans as S
from common.attention import CapturedAttention
from common.baselines.avgpool import AvgPool, avgpool_tokens, window_anchors
from common.baselines.fastv import FastV, fastv_scores, topk_stable
from common.baselines.tokenconcat import TokenConcat, tokenconcat
from common.baselines.tome import tome_merge
from common.models.tiny import make_batch, num_image_tokens, sample_of, tiny_llava
from common.reduction import ReductionContext, Reducer, reduce_tokens
from common.factory import build_reducer, reducer_names
from common.registry import POOLERS, REDUCERS, Registry
from common.schedule import Budget
from tests._reducer_cases import CASES


def _ctx(att_values, q_valid, n_visual):
    B, H, Q, K = att_values.shape
    ids = torch.full((B, 2 + K + 2), 5)
    ids[:, 2:2 + K] = 99
    spans = S.compute_spans(ids, None, 99)
    vis = [torch.arange(2, 2 + n) for n in n_visual]
    att = CapturedAttention(att_values, torch.zeros(B, Q, dtype=torch.long), torch.zeros(B, K, dtype=torch.long),
                            q_valid, torch.ones(B, K, dtype=torch.bool))
    return ReductionContext(2, torch.zeros(B, ids.shape[1], 8), S.kinds_of(spans), torch.arange(ids.shape[1])[None],
                            vis, [torch.arange(n) for n in n_visual], att, spans)


def test_fastv_rule_on_hand_made_attention():
    # 2 heads, last-token row over 6 visual tokens: the head mean ranks tokens 4 > 1 > 5 > 0 > 2 > 3
    a = torch.tensor([[0.10, 0.30, 0.05, 0.00, 0.40, 0.15],
                      [0.10, 0.20, 0.05, 0.02, 0.50, 0.13]])
    ctx = _ctx(a[None, :, None, :], torch.ones(1, 1, dtype=torch.bool), [6])
    assert FastV(K=2, budget=Budget.pruned(0.5)).select(ctx).keep[0].tolist() == [1, 4, 5]
    assert FastV(K=2, budget=Budget.count(1)).select(ctx).keep[0].tolist() == [4]
    # R=0.5 of 5 tokens keeps round(2.5) = 2 (Python round, as FastV)
    assert FastV(K=2).n_keep(5) == 2 and FastV(K=2).n_keep(7) == 4


def test_fastv_all_queries_averages_valid_rows():
    a = torch.zeros(1, 1, 3, 4)
    a[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    a[0, 0, 1] = torch.tensor([0, 1.0, 0, 0])
    a[0, 0, 2] = torch.tensor([0, 0, 0, 9.0])  # a padded query row: ignored
    s = fastv_scores(a, torch.tensor([[True, True, False]]))
    assert s.tolist() == [[0.5, 0.5, 0.0, 0.0]]
    assert topk_stable(torch.tensor([1.0, 2.0, 2.0, 0.5]), 2).tolist() == [1, 2]
    assert topk_stable(torch.tensor([3.0, 3.0, 3.0]), 2).tolist() == [0, 1]  # ties -> lower index


def test_tome_merge_is_a_size_weighted_average():
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    ident, vals, size = tome_merge(x, x, 4)  # needs two rounds: 10 -> 5 -> 4
    assert ident.numel() == 4 and bool((ident[1:] > ident[:-1]).all())
    # every original token ends up in exactly one merged token, weighted by how many it holds
    assert int(size.sum()) == 10 and bool((size >= 1).all())
    torch.testing.assert_close((vals * size).sum(0), x.sum(0))
    ident2, vals2, _ = tome_merge(x, x, 10)
    assert torch.equal(ident2, torch.arange(10)) and torch.equal(vals2, x)


def test_tome_total_mass_is_preserved():
    """Sum over merged tokens of size * value equals the sum of the originals (checked via merge_wavg sizes)."""
    from common.clustering import bipartite_soft_matching, merge_wavg
    x = torch.randn(1, 8, 3)
    merge, _ = bipartite_soft_matching(x, 3)
    xm, size = merge_wavg(merge, x)
    torch.testing.assert_close((xm * size).sum(1), x.sum(1))


def test_vtw_removes_every_visual_token():
    m = tiny_llava(seed=0, num_layers=4)
    b = make_batch(n_image_tokens=num_image_tokens(m))
    with reduce_tokens(m, build_reducer("vtw", K=2)) as st, torch.no_grad():
        out = m(**b.inputs()).logits
    assert st.kept_counts == {2: [0, 0, 0]}
    assert out.shape[1] == int((b.attention_mask.sum(1) - 16).max())
    assert st.visual_tokens_per_layer()[:, 0].tolist() == [16, 16, 0, 0]


def test_random_is_seeded_and_batch_invariant():
    m = tiny_llava(seed=0, num_layers=4)
    b = make_batch(n_image_tokens=num_image_tokens(m))
    runs = []
    for _ in range(2):
        with reduce_tokens(m, build_reducer("random", layer=0, budget=Budget.fraction(0.5), seed=3)) as st, torch.no_grad():
            m(**b.inputs())
        runs.append(st.kept[0])
    assert all(torch.equal(x, y) for x, y in zip(*runs))
    assert not torch.equal(runs[0][0], runs[0][1])  # different prompts -> different subsets
    with reduce_tokens(m, build_reducer("random", layer=0, budget=Budget.fraction(0.5), seed=3)) as st, torch.no_grad():
        m(**sample_of(b, 1).inputs())
    assert torch.equal(st.kept[0][0], runs[0][1])
    with reduce_tokens(m, build_reducer("random", layer=0, budget=Budget.fraction(0.5), seed=4)) as st, torch.no_grad():
        m(**b.inputs())
    assert not torch.equal(st.kept[0][0], runs[0][0])


def test_avgpool_and_tokenconcat_shapes_and_values():
    x = torch.randn(2, 16, 3)
    grid = x.transpose(1, 2).reshape(2, 3, 4, 4)
    pooled = avgpool_tokens(x)
    assert pooled.shape == (2, 4, 3)
    torch.testing.assert_close(pooled, F.avg_pool2d(grid, 2, 2).flatten(2).transpose(1, 2))
    torch.testing.assert_close(pooled[:, 0], x[:, [0, 1, 4, 5]].mean(1))
    cat = tokenconcat(x)
    assert cat.shape == (2, 4, 12)
    torch.testing.assert_close(cat[:, 1], torch.cat([x[:, 2], x[:, 3], x[:, 6], x[:, 7]], -1))
    torch.testing.assert_close(cat.view(2, 4, 4, 3).mean(2), pooled)
    assert AvgPool()(x).shape == (2, 4, 3) and TokenConcat()(x).shape == (2, 4, 12)
    assert window_anchors((4, 4)).tolist() == [0, 2, 8, 10]
    assert sorted(POOLERS) == ["avgpool", "tokenconcat"]
    with pytest.raises(ValueError, match="grid"):
        avgpool_tokens(torch.randn(1, 15, 3))
    with pytest.raises(ValueError, match="window"):
        tokenconcat(torch.randn(1, 9, 3))


def test_avgpool_reducer_pools_each_frame():
    m = tiny_llava(seed=0, num_layers=4)
    b = make_batch(n_image_tokens=num_image_tokens(m), frames=2)
    with reduce_tokens(m, build_reducer("avgpool"), tokens_per_frame=16) as st, torch.no_grad():
        m(**b.inputs())
    assert st.kept_counts == {0: [8, 8, 8]}


# ------------------------------------------------------------------------------------------ registry
def test_registry_refuses_duplicates_and_lists_known_names():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(KeyError, match="known: .*fastv"):
        build_reducer("fastvv")
    with pytest.raises(KeyError, match="already registered"):
        REDUCERS.register("fastv")(FastV)


@pytest.mark.parametrize("name", reducer_names())
def test_every_reducer_builds_and_names_itself(name):
    r = build_reducer(name, **CASES[name]["prune"])
    assert isinstance(r, Reducer) and r.name == name and r.layers
