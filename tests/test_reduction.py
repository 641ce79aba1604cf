"""The reduction hook: exactness, reversibility, KV-cache consistency, batching, positions, errors.

Tiny random fp32 models (common.models.tiny); every registered reducer is exercised (tests/_reducer_cases.py).
"""
from __future__ import annotations

import pytest
import torch

from common.models.tiny import make_batch, sample_of, tiny_llama, tiny_llava
from common.reduction import DecodeContext, FixedKeep, Reducer, Selection, reduce_tokens
from common.factory import build_reducer, reducer_names
from common.schedule import Budget
from common import spans as S
from common.hf_compat import cache_kwargs
from tests._reducer_cases import CASES

ATOL = 1e-5


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _generate(model, inputs, n=6, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


def test_every_registered_reducer_has_a_case():
    assert sorted(CASES) == reducer_names()


def test_none_reducer_is_a_noop(model, batch):
    ref = _logits(model, batch.inputs())
    with reduce_tokens(model, None) as st:
        out = _logits(model, batch.inputs())
    assert torch.equal(ref, out) and st.kept == {}


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n]["keep_all"] is not None])
@pytest.mark.parametrize("force", [False, True])
def test_keep_all_is_exact(model, batch, name, force):
    """Keeping every token gives the unhooked logits (force=True also runs the gather/mask path)."""
    ref = _logits(model, batch.inputs())
    red = build_reducer(name, **CASES[name]["keep_all"])
    with reduce_tokens(model, red, _force_gather=force) as st:
        out = _logits(model, batch.inputs())
    # compare at the original positions of the output layout (padding rows of the batch may move)
    for b in range(batch.input_ids.shape[0]):
        lay = st.layout[b]
        v = lay >= 0
        torch.testing.assert_close(out[b, v], ref[b, lay[v]], atol=ATOL, rtol=0)
    assert all(c == [batch.n_visual] * 3 for c in st.kept_counts.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_unchanged_after_context(name, batch):
    model = tiny_llava(seed=0, num_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    impl = model.config.text_config._attn_implementation
    ref = _logits(model, batch.inputs())
    _generate(model, batch.inputs(), n=2)  # transformers installs its own (inert) capture hooks lazily
    hooks = _hook_snapshot(model)
    with reduce_tokens(model, build_reducer(name, **CASES[name]["prune"])):
        _generate(model, batch.inputs(), n=2)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.text_config._attn_implementation == impl
    assert _hook_snapshot(model) == hooks
    assert torch.equal(_logits(model, batch.inputs()), ref)


def _hook_snapshot(model):
    return {n: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for n, m in model.named_modules()}


def test_hooks_removed_after_error(batch):
    model = tiny_llava(seed=0, num_layers=4)
    hooks = _hook_snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with reduce_tokens(model, build_reducer("fastv", K=2)):
            raise RuntimeError("boom")
    assert _hook_snapshot(model) == hooks
    assert model.config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_cached_generate_matches_cache_free_recomputation(model, batch, name, positions):
    """Greedy decoding on the pruned KV cache == recomputing everything each step with the same pruning."""
    red = build_reducer(name, **CASES[name]["prune"])
    with reduce_tokens(model, red, positions=positions) as st:
        with torch.no_grad():
            res = model.generate(**batch.inputs(), max_new_tokens=6, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        kept = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
    # FixedKeep replays the kept set; merging reducers (new values) are re-run instead: their choice depends
    # only on the visual tokens' states, which causal attention makes independent of later tokens
    replay = red if name in ("tome", "avgpool") else FixedKeep(kept)
    with reduce_tokens(model, replay, positions=positions):
        with torch.no_grad():
            ref = model.generate(**batch.inputs(), max_new_tokens=6, do_sample=False, use_cache=False,
                                 output_logits=True, return_dict_in_generate=True)
    assert torch.equal(res.sequences, ref.sequences)
    for a, b in zip(res.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_per_sample(model, batch, name):
    """Left-padded samples of different lengths, pruned to different layouts, match running each alone."""
    red = build_reducer(name, **CASES[name]["prune"])
    with reduce_tokens(model, red) as st:
        out = _logits(model, batch.inputs())
        gen = _generate(model, batch.inputs())
    kept_b = {l: [k.clone() for k in ks] for l, ks in st.kept.items()}
    for i in range(batch.input_ids.shape[0]):
        single = sample_of(batch, i)
        with reduce_tokens(model, red) as st1:
            o1 = _logits(model, single.inputs())
            g1 = _generate(model, single.inputs())
        n = o1.shape[1]
        torch.testing.assert_close(o1[0], out[i, -n:], atol=1e-4, rtol=0)
        assert g1[0, -6:].tolist() == gen[i, -6:].tolist()
        for l in kept_b:
            assert torch.equal(st1.kept[l][0], kept_b[l][i])


@pytest.mark.parametrize("budget,expected", [(Budget.paper(192), 5), (Budget.paper(128), 4), (Budget.paper(64), 2),
                                             (Budget.paper(144), 4), (Budget.fraction(0.5), 8)])
def test_kept_counts_follow_the_budget(model, batch, budget, expected):
    for name in ("fastv", "random", "tome"):
        layer_kw = dict(K=2) if name == "fastv" else dict(layer=2)
        with reduce_tokens(model, build_reducer(name, budget=budget, **layer_kw)) as st:
            out = _logits(model, batch.inputs())
        assert st.kept_counts == {2: [expected] * 3}, name
        assert [int(k.numel()) for k in st.kept[2]] == [expected] * 3
        n_text = batch.attention_mask.sum(1) - batch.n_visual
        assert out.shape[1] == int(n_text.max()) + expected
        avg = st.average_visual_tokens()
        assert torch.allclose(avg, torch.tensor((2 * 16 + 2 * expected) / 4.0).expand(3))


class _Spy(Reducer):
    """Prunes half at layer 1 (even visual indices), keeps all at layer 3 and records what it saw there."""

    name = "spy"
    layers = (1, 3)

    def select(self, ctx):
        if ctx.layer == 1:
            return Selection([torch.arange(0, n, 2) for n in ctx.n_visual])
        self.seen = ctx
        return Selection([torch.arange(n) for n in ctx.n_visual])


@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_positions_masks_and_cache_lengths(model, batch, positions):
    spy = _Spy()
    with reduce_tokens(model, spy, positions=positions) as st:
        with torch.no_grad():
            res = model.generate(**batch.inputs(), max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    ctx = spy.seen
    am = batch.attention_mask
    orig_pos = (am.cumsum(1) - 1).clamp(min=0)  # generate numbers positions by the 2D mask
    lay = st.layout
    for b in range(3):
        v = lay[b] >= 0
        if positions == "original":
            assert torch.equal(ctx.position_ids[b, v], orig_pos[b, lay[b, v]])
        else:
            assert torch.equal(ctx.position_ids[b, v], torch.arange(int(v.sum())))
        # survivors keep their order, and the visual survivors are the even visual tokens
        assert bool((lay[b, v][1:] > lay[b, v][:-1]).all())
        assert torch.equal(st.kept[1][b], torch.arange(0, 16, 2))
        assert int((ctx.kinds[b] == S.VISUAL).sum()) == 8
    L, Lp = batch.input_ids.shape[1], lay.shape[1]
    cache = res.past_key_values
    new = 3 - 1  # the last generated token is not fed back
    assert [cache.get_seq_length(i) for i in range(4)] == [L + new, Lp + new, Lp + new, Lp + new]


class _HideOdd(Reducer):
    """Mask-only decode mode: hide every odd visual token from the new token's query, from layer `at` on."""

    name = "hide_odd"
    layers = ()

    def __init__(self, at):
        self.decode_layers = (at,)

    def on_decode_step(self, ctx: DecodeContext):
        self.steps = getattr(self, "steps", 0) + 1
        return [torch.nonzero(vo % 2 == 1).flatten() for vo in ctx.visual_orig]


def test_decode_mask_only_mode(model, batch):
    inputs = batch.inputs()
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    red = _HideOdd(0)
    with reduce_tokens(model, red) as st:
        with torch.no_grad():
            res = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    assert red.steps == 3 and len(st.decode_hidden) == 3
    assert torch.equal(res.logits[0], plain.logits[0])  # prefill untouched
    # reference for step 1: the same cache, with the hidden keys removed through an explicit 4D mask
    with torch.no_grad():
        am = batch.attention_mask
        pre = model(**inputs, use_cache=True, position_ids=(am.cumsum(1) - 1).masked_fill(am == 0, 0))
        tok = res.sequences[:, batch.input_ids.shape[1]:batch.input_ids.shape[1] + 1]
        L = batch.input_ids.shape[1]
        allowed = torch.cat([batch.attention_mask.bool(), torch.ones(3, 1, dtype=torch.bool)], 1)
        for b, sp in enumerate(S.compute_spans(batch.input_ids, batch.attention_mask, batch.image_token_id)):
            allowed[b, sp.visual_positions()[1::2]] = False
        pos = batch.attention_mask.sum(1, keepdim=True)
        ref = model(input_ids=tok, **cache_kwargs(pre.past_key_values), attention_mask=allowed[:, None, None, :],
                    position_ids=pos).logits[:, -1]
    torch.testing.assert_close(res.logits[1], ref, atol=ATOL, rtol=0)
    assert not torch.allclose(res.logits[1], plain.logits[1])
    # from a later layer on: differs from hiding everywhere, and the cache keeps every token
    with reduce_tokens(model, _HideOdd(2)):
        with torch.no_grad():
            late = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    assert not torch.allclose(late.logits[1], res.logits[1])
    assert late.past_key_values.get_seq_length(3) == L + 3


def test_fastv_keeps_the_tokens_of_the_fastv_rule(batch):
    """End to end: FastV's kept set = top-k of eager layer K-1 attention, last row, mean over heads."""
    model = tiny_llava(seed=0, num_layers=4)
    eager = tiny_llava(seed=0, num_layers=4, attn="eager")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        att = eager(**batch.inputs(), output_attentions=True).attentions[1]  # [B, H, L, L]
    spans = S.compute_spans(batch.input_ids, batch.attention_mask, batch.image_token_id)
    with reduce_tokens(model, build_reducer("fastv", K=2, budget=Budget.pruned(0.75))) as st:
        _logits(model, batch.inputs())
    for b, sp in enumerate(spans):
        s = att[b, :, -1, sp.visual_positions()].mean(0)
        expected = torch.sort(torch.topk(s, 4).indices).values
        assert torch.equal(st.kept[2][b], expected)


def test_llama_text_only_model():
    """A bare LlamaForCausalLM with a placeholder id works the same way."""
    model = tiny_llama(seed=0)
    b = make_batch(n_image_tokens=12, image_size=None)
    with reduce_tokens(model, build_reducer("fastv", K=1, budget=Budget.pruned(0.5)), image_token_id=127) as st:
        g = _generate(model, b.inputs(), n=4)
    assert st.kept_counts == {1: [6, 6, 6]} and g.shape[1] == b.input_ids.shape[1] + 4


def test_pruning_really_shrinks_later_layers(model, batch):
    seen = {}

    def spy(i):
        def hook(mod, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).shape[1]
        return hook

    layers = model.model.language_model.layers
    with reduce_tokens(model, build_reducer("fastv", K=2, budget=Budget.count(2))):
        hs = [l.register_forward_pre_hook(spy(i), with_kwargs=True) for i, l in enumerate(layers)]
        try:
            _logits(model, batch.inputs())
        finally:
            for h in hs:
                h.remove()
    L = batch.input_ids.shape[1]
    assert seen[0] == seen[1] == L and seen[2] == seen[3] == int((batch.attention_mask.sum(1) - 14).max())


# ------------------------------------------------------------------------------------------ errors
def test_budget_larger_than_visual_tokens(model, batch):
    with pytest.raises(ValueError, match="more than the 16 visual tokens"):
        with reduce_tokens(model, build_reducer("fastv", K=2, budget=Budget.count(100))):
            _logits(model, batch.inputs())


@pytest.mark.parametrize("make,arg", [(lambda: Budget.fraction(-0.1), "budget"), (lambda: Budget.paper(-3), "budget"),
                                      (lambda: Budget.paper(1000), "budget"), (lambda: Budget.count(-1), "count"),
                                      (lambda: Budget.pruned(1.5), "R"), (lambda: Budget.fraction(192), "Budget.paper"),
                                      (lambda: build_reducer("fastv", K=0), "K")])
def test_bad_arguments_name_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("bare", [1, 1.0, 192, 0.5])
def test_a_bare_number_is_never_a_budget(bare):
    """`FastV(budget=1)` once kept 0 of 16 tokens (1 of 576) while `budget=1.0` kept all: numbers are refused."""
    for name in ("fastv", "tome", "random"):
        with pytest.raises(TypeError, match="Budget.paper"):
            build_reducer(name, budget=bare)


def test_layer_out_of_range(model):
    with pytest.raises(ValueError, match="layers"):
        with reduce_tokens(model, build_reducer("fastv", K=4)):
            pass
    with pytest.raises(ValueError, match="layers"):
        with reduce_tokens(model, build_reducer("random", layer=9)):
            pass


def test_no_image_tokens(model):
    ids = torch.randint(3, 100, (2, 9))
    with pytest.raises(ValueError, match="input_ids"):
        with reduce_tokens(model, build_reducer("random", layer=1)):
            _logits(model, {"input_ids": ids})


def test_selection_out_of_range(model, batch):
    class Bad(Reducer):
        layers = (1,)

        def select(self, ctx):
            return Selection([torch.tensor([999])] * ctx.batch_size)

    with pytest.raises(ValueError, match="out of range"):
        with reduce_tokens(model, Bad()):
            _logits(model, batch.inputs())


def test_scores_come_from_the_normal_forward(model, batch, monkeypatch):
    """FastV's layer K-1 is neither run twice nor switched to eager: one slice per prefill, none at decode."""
    from common import attention as A
    calls = []
    real = A.attention_slice
    monkeypatch.setattr(A, "attention_slice", lambda *a, **k: calls.append(1) or real(*a, **k))
    with reduce_tokens(model, build_reducer("fastv", K=2)):
        _generate(model, batch.inputs(), n=3)
    assert len(calls) == 1


def test_eager_models_work_too(batch):
    """With attn_implementation="eager" the hook builds eager (additive float) masks the same way."""
    model = tiny_llava(seed=0, num_layers=4, attn="eager")
    ref = _logits(model, batch.inputs())
    with reduce_tokens(model, build_reducer("fastv", K=2, budget=Budget.pruned(0.0)), _force_gather=True) as st:
        out = _logits(model, batch.inputs())
    for b in range(3):
        v = st.layout[b] >= 0
        torch.testing.assert_close(out[b, v], ref[b, st.layout[b, v]], atol=ATOL, rtol=0)
    with reduce_tokens(model, build_reducer("fastv", K=2, budget=Budget.pruned(0.5))) as st:
        res = _generate(model, batch.inputs())
        kept = st.kept
    with reduce_tokens(model, FixedKeep(kept)):
        again = _generate(model, batch.inputs(), use_cache=False)
    assert torch.equal(res, again)
    assert model.config.text_config._attn_implementation == "eager"
