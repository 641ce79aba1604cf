"""ATP module (papers/atp/module.py) and its hard-pruning reducer (papers/atp/method.py) on tiny random LLaVAs.

Golden numbers come from the spec (papers/atp.md §3.4 table, §6.1, §11)."""

import contextlib

import pytest
import torch

from common import flops as F
from common import spans as S
from common.attention import decoder_of
from common.models.tiny import make_batch, sample_of, tiny_llava
from common.reduction import reduce_tokens
from common.factory import build_reducer
from papers.atp.method import ATPReducer
from papers.atp.module import (ATPConfig, ATPModules, atp_layers, atp_loss, average_tokens_soft, load_atp,
                               minmax, qk_of, rank_percentile, save_atp, soft_atp, soft_training, spatial_scores, target_loss,
                               token_scores)

N_LAYERS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_llava(num_layers=N_LAYERS)


@pytest.fixture(scope="module")
def batch():
    return make_batch(3, n_image_tokens=16)


def kinds_of(b):
    return S.kinds_of(S.compute_spans(b.input_ids, b.attention_mask, b.image_token_id))


def decisions(st, atp):
    """The modules' decisions of the last prefill, in module order (the hook keeps each `Selection.info`)."""
    return [st.info[l] for l in atp.config.layers]


def make_atp(seed=0, **kw):
    cfg = dict(n_visual=16, layers=atp_layers((4, 14, 24), N_LAYERS), n_layers=N_LAYERS, hidden=16)
    cfg.update(kw)
    torch.manual_seed(seed)
    return ATPModules(ATPConfig(**cfg))


# ------------------------------------------------------------------------------------------ fixed parts
def test_spatial_scores_levels_and_counts_on_the_paper_grid():
    s = spatial_scores(24)
    levels = sorted(set(round(v, 4) for v in s.tolist()))
    assert levels == [0.0, 0.25, 0.6667, 0.8125, 0.9167, 0.9531, 0.9792, 0.9948]  # §3.4 table
    counts = {theta: int((s > theta).sum()) for theta in (0.995, 0.98, 0.96, 0.93, 0.2)}
    # §11 oracle; its last row says 144 (the stride-2 grid) but the stride-3 grid is not nested in it, so
    # the union of all grids under the §3.4 construction is 144 + 64 - 16 = 192 (a slip in the spec)
    assert counts == {0.995: 0, 0.98: 1, 0.96: 4, 0.93: 12, 0.2: 192}
    assert s[0] == pytest.approx(1 - 3 / 576) and s[1] == 0  # (0,0) is on every grid; (0,1) on none


def test_spatial_scores_toy_grid_and_validation():
    s = spatial_scores(12).view(12, 12)
    assert s[0, 0] == pytest.approx(1 - 3 / 144) and s[6, 6] == pytest.approx(1 - 3 / 36)
    assert s[2, 2] == pytest.approx(0.25) and s[3, 3] == pytest.approx(1 - 3 / 9) and s[1, 2] == 0
    with pytest.raises(ValueError, match="lambda_sample"):
        spatial_scores(12, lambda_sample=4.0)
    with pytest.raises(ValueError, match="grid"):
        spatial_scores(1)


def test_layer_mapping():
    assert atp_layers((4, 14, 24), 32) == (4, 14, 24)
    assert atp_layers((4, 14, 24), 8) == (1, 4, 6)
    assert atp_layers((1, 13, 25), 8) == (1, 3, 6)  # paper layer 1 maps to 0: moved to 1 (needs layer 0)
    assert atp_layers((1, 13, 25), 32) == (1, 13, 25)


@pytest.mark.parametrize("kw, arg", [
    (dict(n_visual=15), "n_visual"), (dict(layers=(0, 3)), "layers"), (dict(layers=(2, 3)), "layers"),
    (dict(layers=(2, 9)), "layers"), (dict(use_rp=False, use_sp=False), "use_rp"), (dict(scores="x"), "scores"),
    (dict(positions="x"), "positions"), (dict(tau=0.0), "tau"), (dict(fixed_keep=(4, 8, 2)), "fixed_keep"),
    (dict(threshold_on="x"), "threshold_on"),
])
def test_config_errors_name_the_argument(kw, arg):
    cfg = dict(n_visual=16, layers=(1, 4, 6), n_layers=8)
    cfg.update(kw)
    with pytest.raises(ValueError, match=arg):
        ATPConfig(**cfg)


def test_rank_percentile_is_uniform_over_present_tokens():
    torch.manual_seed(0)
    x = torch.rand(2, 10) ** 8  # clustered near 0, as min-max scores with one outlier are
    present = torch.ones(2, 10, dtype=torch.bool)
    present[1, ::3] = False
    r = rank_percentile(x, present)
    assert sorted(r[0].tolist()) == pytest.approx([i / 9 for i in range(10)])
    assert sorted(r[1, present[1]].tolist()) == pytest.approx([i / 5 for i in range(6)])
    assert (r[1, ~present[1]] == 0).all()
    assert torch.equal(r[0].argsort(), x[0].argsort())  # order preserved


def test_rank_threshold_prunes_the_fraction_theta_whatever_the_score_spread():
    """threshold_on='rank': RP alone keeps (1 - theta_r) of the present tokens even when the scores cluster (why
    min-max thresholds froze at toy scale); with min-max, the kept count at the same theta depends on the spread."""
    kept = {}
    for mode in ("rank", "score"):
        atp = make_atp(threshold_on=mode, use_sp=False, init_theta_r=0.5)
        s = torch.rand(4, 16, generator=torch.Generator().manual_seed(1)) ** 8
        s[:, 0] = 0.0  # one outlier stretches the min-max range
        d = atp.decide(0, s, s, torch.ones(4, 16))
        kept[mode] = d.keep.sum(-1).float()
        theta = d.theta_r
        if mode == "rank":
            assert torch.allclose(kept[mode], ((1 - theta) * 16).round(), atol=1.0)
    assert (kept["score"] <= 4).all()  # skewed scores: most min-max values sit far below theta = 0.5


def test_budget_losses_match_paper_oracles():
    """§11: Eq. 12 at the Table 2 averages = 3.847; the soft all-layer average equals common.flops's."""
    cfg = ATPConfig(n_visual=576, layers=(4, 14, 24), n_layers=32)
    masks = [torch.zeros(1, 576) for _ in range(3)]
    for g, c in zip(masks, (126, 88, 20)):
        g[0, :c] = 1.0
    assert atp_loss(masks, cfg).item() == pytest.approx((126 * 4 + 88 * 14 + 20 * 24) / 576, abs=1e-5)
    exact = F.average_visual_tokens(F.visual_tokens_per_layer(576, [4, 14, 24], [126, 88, 20], 32), 32)
    assert exact == 143.875 and average_tokens_soft(masks, cfg).item() == pytest.approx(exact)
    assert target_loss(masks, cfg, 144).item() == pytest.approx(0.125)


# ------------------------------------------------------------------------------------------------ scores
def test_token_scores_match_loop_reference():
    torch.manual_seed(0)
    H, L, d = 2, 9, 4
    q, k = torch.randn(H, L, d), torch.randn(H, L, d)
    vis, txt = torch.tensor([2, 3, 4, 5]), torch.tensor([6, 7, 8])
    g = torch.tensor([1.0, 0.5, 0.0, 1.0])
    s_self, s_cross = token_scores(q, k, vis, txt, scaling=0.5, g=g, eps=0.0)
    logits = (q @ k.transpose(1, 2)) * 0.5  # [H, L, L] pre-mask
    ref_self = torch.stack([sum(g[m] * logits[:, vis[m], vis[n]] for m in range(4)) / g.sum() for n in range(4)], 1)
    assert torch.allclose(s_self, ref_self.mean(0), atol=1e-5)
    ref_cross = torch.zeros(4)
    for t in txt:
        row = logits[:, t, : t + 1].exp()
        row[:, vis] *= g  # Sec 3.8: exponentials times the mask before the sum
        ref_cross += (row / row.sum(-1, keepdim=True))[:, vis].mean(0) / len(txt)
    assert torch.allclose(s_cross, ref_cross, atol=1e-5)


def test_minmax_ignores_absent_tokens():
    x = torch.tensor([[5.0, 1.0, 3.0, 100.0]])
    out = minmax(x, torch.tensor([[True, True, True, False]]))
    assert out.tolist() == [[1.0, 0.0, 0.5, 0.0]]


# ---------------------------------------------------------------------------------------- the module
def test_thresholds_in_unit_interval_and_shapes(model, batch):
    atp = make_atp()
    red = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    assert sorted(st.info) == list(atp.config.layers)
    for d in decisions(st, atp):
        assert d.theta_r.shape == (3,) and d.s_red.shape == (3, 16) and d.keep.shape == (3, 16)
        assert bool(((d.theta_r > 0) & (d.theta_r < 1) & (d.theta_s > 0) & (d.theta_s < 1)).all())
        assert bool((d.keep == (d.keep_r | d.keep_s)).all()) and bool((d.keep <= d.present).all())


def test_hard_pruning_keeps_exactly_the_mask(model, batch):
    atp = make_atp(tau=1e4)
    red = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    ds = decisions(st, atp)
    for d in ds:
        for b in range(3):
            assert sorted(st.kept[d.layer][b].tolist()) == torch.nonzero(d.keep[b]).flatten().tolist()
            assert st.kept_counts[d.layer][b] == int(d.keep[b].sum())
    # irreversible: each module keeps a subset of what the previous one kept
    for a, b in zip(ds, ds[1:]):
        assert bool((b.keep <= a.keep).all())


def test_soft_masks_become_the_hard_masks_at_low_temperature(model, batch):
    """tau = 1e4: sigmoid masks are 0/1, and the soft (training) path prunes the same tokens as inference."""
    atp = make_atp(tau=1e4, seed=3)
    red = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    with torch.no_grad(), soft_atp(model, atp, kinds_of(batch)) as ss:
        model(**batch.inputs())
    assert len(ss.masks) == 3
    for g, d in zip(ss.masks, decisions(st, atp)):
        assert float(((g < 1e-3) | (g > 1 - 1e-3)).float().mean()) > 0.95  # a score may sit near theta
        assert torch.equal(g > 0.5, d.keep)
    assert any(bool((~d.keep).any()) for d in decisions(st, atp))  # the test prunes something


def test_keep_all_is_exact(model, batch):
    atp = make_atp(fixed_keep=(16, 16, 16))
    with torch.no_grad():
        ref = model(**batch.inputs()).logits
        with reduce_tokens(model, ATPReducer(modules=atp), image_token_id=batch.image_token_id):
            out = model(**batch.inputs()).logits
    assert torch.equal(out, ref)


def test_fixed_ratio_keeps_topk_of_redundancy(model, batch):
    atp = make_atp(fixed_keep=(12, 6, 3))
    red = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    assert [st.kept_counts[l] for l in atp.config.layers] == [[12] * 3, [6] * 3, [3] * 3]
    d = decisions(st, atp)[0]
    for b in range(3):  # every kept token scores at least as high as every dropped one
        assert d.s_red[b][d.keep[b]].min() >= d.s_red[b][~d.keep[b]].max()


def test_batched_equals_single(model, batch):
    atp = make_atp(tau=1e4)
    red = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    batched = {l: [k.tolist() for k in st.kept[l]] for l in atp.config.layers}
    for i in range(3):
        one = sample_of(batch, i)
        with torch.no_grad(), reduce_tokens(model, red, image_token_id=one.image_token_id) as st1:
            model(**one.inputs())
        for l in atp.config.layers:
            assert st1.kept[l][0].tolist() == batched[l][i]


@pytest.mark.parametrize("ste", [False, True])
def test_gradients_reach_every_module(model, batch, ste):
    atp = make_atp(ste=ste, tau=10.0, init_theta_r=0.5)
    atp.train()
    with soft_atp(model, atp, kinds_of(batch)) as ss:
        logits = model(**batch.inputs()).logits
    if ste:
        assert all(bool(torch.minimum(g, 1 - g).abs().max() < 1e-6) for g in ss.masks)  # hard forward
    loss = logits[:, -1].logsumexp(-1).mean() + atp_loss(ss.masks, atp.config) + target_loss(ss.masks, atp.config, 4)
    loss.backward()
    for net in atp.nets:
        assert net.head_r.weight.grad is not None and net.head_r.weight.grad.abs().sum() > 0
        assert net.z.weight.grad.abs().sum() > 0


def test_renumber_positions_train_path_runs(model, batch):
    atp = make_atp(positions="renumber", tau=1e4)
    with torch.no_grad(), soft_atp(model, atp, kinds_of(batch)) as ss:
        out = model(**batch.inputs()).logits
    assert torch.isfinite(out).all() and len(ss.masks) == 3


def test_registry_checkpoint_roundtrip(tmp_path, model, batch):
    atp = make_atp(seed=5)
    save_atp(atp, tmp_path / "ckpt", {"note": "test"})
    loaded, card = load_atp(tmp_path / "ckpt")
    assert card["note"] == "test" and loaded.config == atp.config
    red = build_reducer("atp", checkpoint=tmp_path / "ckpt")
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        model(**batch.inputs())
    red2 = ATPReducer(modules=atp)
    with torch.no_grad(), reduce_tokens(model, red2, image_token_id=batch.image_token_id) as st2:
        model(**batch.inputs())
    assert st.kept_counts == st2.kept_counts
    with pytest.raises(ValueError, match="modules/checkpoint"):
        ATPReducer()


def test_rejects_wrong_visual_count(model):
    b = make_batch(1, n_image_tokens=16)
    atp = ATPModules(ATPConfig(n_visual=64, layers=(1, 4, 6), n_layers=8, hidden=8))
    with pytest.raises(ValueError, match="visual tokens"):
        with torch.no_grad(), reduce_tokens(model, ATPReducer(modules=atp), image_token_id=b.image_token_id):
            model(**b.inputs())
    with pytest.raises(ValueError, match="kinds"):
        with soft_atp(model, atp, kinds_of(b)):
            pass


# ------------------------------------------------------------------------------ stateless inference scores
class _Recorder(ATPReducer):
    """The reducer, keeping each context and its scores for the test (the real one keeps nothing)."""

    def select(self, ctx):
        self.seen.append((ctx, self.scores(ctx, ctx.attention, ctx.layer_module.self_attn.scaling)))
        return super().select(ctx)


def test_scores_equal_a_recomputation_from_the_previous_layers_input(model, batch):
    """S_self and S_cross read from layer i_k - 1's captured forward equal the scores recomputed from the hidden
    states that entered it (projections + RoPE + Eq. 3-4), in the pruned layout of later modules too."""
    atp = make_atp(tau=1e4, seed=2)
    red = _Recorder(modules=atp)
    red.seen = []
    inputs = {}
    layers = decoder_of(model).layers
    with torch.no_grad(), reduce_tokens(model, red, image_token_id=batch.image_token_id) as st:
        hooks = [layers[l - 1].register_forward_pre_hook(
            lambda m, a, kw, l=l: inputs.__setitem__(l, (a[0] if a else kw["hidden_states"], kw["position_embeddings"])),
            with_kwargs=True) for l in atp.config.layers]
        try:
            model(**batch.inputs())
        finally:
            for h in hooks:
                h.remove()
    assert len(red.seen) == 3 and any(c.n_visual != [16] * 3 for c, _ in red.seen)  # later modules see pruned rows
    for ctx, (s_self, s_cross) in red.seen:
        hidden, (cos, sin) = inputs[ctx.layer]
        layer = layers[ctx.layer - 1]
        for b in range(3):
            valid = torch.nonzero(ctx.kinds[b] != S.PAD).flatten()
            kv = ctx.kinds[b, valid]
            vis, txt = torch.nonzero(kv == S.VISUAL).flatten(), torch.nonzero(kv == S.INSTRUCTION).flatten()
            q, k = qk_of(layer, hidden[b, valid], cos[b, valid] if cos.shape[0] == 3 else cos[0, valid],
                         sin[b, valid] if sin.shape[0] == 3 else sin[0, valid])
            ref_self, ref_cross = token_scores(q, k, vis, txt, layer.self_attn.scaling)
            orig = ctx.visual_orig[b]
            assert torch.allclose(s_self[b, orig], ref_self, atol=1e-5, rtol=1e-5)
            assert torch.allclose(s_cross[b, orig], ref_cross, atol=1e-6, rtol=1e-5)
            absent = torch.ones(16, dtype=torch.bool)
            absent[orig] = False
            assert not s_self[b, absent].any() and not s_cross[b, absent].any()
    assert st.kept_counts  # it pruned through the hook as usual


def test_reducer_keeps_no_state_between_calls(model, batch):
    """A decision depends on its input only: interleaving another batch changes nothing, and the reducer holds
    nothing but its modules and its declaration."""
    atp = make_atp(tau=1e4, seed=4)
    red = ATPReducer(modules=atp)
    other = make_batch(2, n_image_tokens=16, seed=9)

    def kept(b):
        with torch.no_grad(), reduce_tokens(model, red, image_token_id=b.image_token_id) as st:
            model(**b.inputs())
        return {l: [k.tolist() for k in st.kept[l]] for l in atp.config.layers}

    first = kept(batch)
    kept(other)
    assert kept(batch) == first
    assert set(vars(red)) == {"atp", "layers", "needs"}
    assert red.layers == atp.config.layers and red.needs.attention.qk


# ------------------------------------------------------------------------------ activation checkpointing
def test_soft_training_under_activation_checkpointing_matches_the_plain_forward(batch):
    """The biased masks travel in each layer's arguments, so recomputed layers see them: loss and gradients equal
    the un-checkpointed forward's."""
    from common.models.train import gradient_checkpointing

    kinds = kinds_of(batch)
    results = []
    for ckpt in (False, True):
        m = tiny_llava(num_layers=N_LAYERS)
        atp = make_atp(tau=10.0, init_theta_r=0.5, seed=1)
        m.train()
        for p in m.parameters():
            p.requires_grad_(True)
        with (gradient_checkpointing(m) if ckpt else contextlib.nullcontext()), soft_training(m, atp) as soft:
            ss = soft.begin(kinds)
            loss = m(**batch.inputs()).logits[:, -1].logsumexp(-1).mean() + atp_loss(ss.masks, atp.config)
            loss.backward()
        grads = [p.grad for p in list(m.parameters()) + list(atp.parameters()) if p.grad is not None]
        results.append((loss.detach(), grads))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and len(g0) == len(g1)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(g0, g1))
