"""The toy LLaVA: the VisionLanguageModel contract, input layout, training and exact resume."""
from __future__ import annotations

import json

import pytest
import torch

from common.data.toyworld import toyworld_split
from common.models.base import VisionLanguageModel
from common.models.checkpoint import load_card
from common.models.toy import ToyConfig, ToyVLM
from common.models.toy_train import (
    PositionKeeper, ToyTrainConfig, first_token_accuracy, run, stage0_batch, stage_batch,
)
from common.models.train import TrainConfig, answer_loss, lr_at, train

TINY = ToyConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                 text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64)


@pytest.fixture(scope="module")
def samples():
    return toyworld_split("val", 8, seed=0)  # one per family, the last is a 3-frame clip


def test_protocol_and_visual_token_counts():
    vlm = ToyVLM.fresh(TINY)
    assert isinstance(vlm, VisionLanguageModel)
    assert vlm.num_visual_tokens == 144 and vlm.model.config.image_token_index == vlm.image_token_id
    big = ToyVLM.fresh(ToyConfig(**{**TINY.__dict__, "grid": 24}))
    assert big.num_visual_tokens == 576
    s = toyworld_split("val", 1, seed=0, families=("gqa",), grid=24)
    inp = big.build_inputs(s)
    assert (inp["input_ids"] == big.image_token_id).sum() == 576
    with torch.no_grad():  # LLaVA raises unless the tower yields one feature per placeholder (CLS dropped)
        logits = big.model(**inp).logits
    assert logits.shape[:2] == inp["input_ids"].shape


def test_build_inputs_left_padded(samples):
    vlm = ToyVLM.fresh(TINY)
    inp = vlm.build_inputs(samples)
    ids, mask = inp["input_ids"], inp["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == len(samples)
    assert inp["pixel_values"].shape == (sum(len(s.images) for s in samples), 3, 96, 96)
    assert (mask[:, -1] == 1).all()  # left padding: every row ends with a real token
    for row, m, s in zip(ids, mask, samples):
        n_pad = int((m == 0).sum())
        assert (row[:n_pad] == vlm.pad_id).all() and (m[n_pad:] == 1).all()
        assert int((row == vlm.image_token_id).sum()) == 144 * len(s.images)
        assert row[n_pad] == vlm.bos_id
    assert vlm.decode(vlm.tokenizer.encode("red") and torch.tensor([[vlm.tokenizer.token_to_id("red"),
                                                                      vlm.eos_id, 7]])) == ["red"]


def test_training_batch_labels_only_answers(samples):
    vlm = ToyVLM.fresh(TINY)
    b = vlm.build_training_batch(samples)
    for row, lab, s in zip(b["input_ids"], b["labels"], samples):
        kept = lab[lab != -100].tolist()
        assert kept == vlm.answer_ids(s)
        assert row[-len(kept):].tolist() == kept


def test_bad_image_size_raises():
    vlm = ToyVLM.fresh(TINY)
    s = toyworld_split("val", 1, seed=0, families=("gqa",), grid=24)
    with pytest.raises(ValueError, match="samples"):
        vlm.build_inputs(s)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=-1)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_frac=0.1, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=0.01)
    assert all(lr_at(i, cfg) >= lr_at(i + 1, cfg) for i in range(10, 99))


def _tiny_batch_fn(vlm, tc):
    return lambda step: stage_batch(vlm, 2, step, tc)


def test_tiny_model_loss_decreases():
    torch.set_num_threads(1)
    vlm = ToyVLM.fresh(TINY, seed=0)
    tc = ToyTrainConfig(batch=4, video_every=0)
    fixed = stage_batch(vlm, 2, 0, tc)
    before = answer_loss(vlm.model, fixed).item()
    train(vlm.model, lambda step: fixed, TrainConfig(steps=12, lr=3e-3, warmup_frac=0.0), progress=False)
    with torch.no_grad():
        after = answer_loss(vlm.model, fixed).item()
    assert after < before - 1.0, (before, after)


def test_resume_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    tc = ToyTrainConfig(batch=3, video_every=0)
    cfg = TrainConfig(steps=4, lr=1e-3, save_every=2)
    a = ToyVLM.fresh(TINY, seed=1)
    ha = train(a.model, _tiny_batch_fn(a, tc), cfg, state_path=tmp_path / "a.pt", progress=False)

    b = ToyVLM.fresh(TINY, seed=1)

    class Stop(Exception):
        pass

    def interrupted(step):
        if step == 3:
            raise Stop  # dies during step 3, after the state of step 2 was saved
        return stage_batch(b, 2, step, tc)

    with pytest.raises(Stop):
        train(b.model, interrupted, cfg, state_path=tmp_path / "b.pt", progress=False)
    c = ToyVLM.fresh(TINY, seed=7)  # a fresh process: different init, overwritten by the saved state
    hc = train(c.model, _tiny_batch_fn(c, tc), cfg, state_path=tmp_path / "b.pt", progress=False)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hc], rel=1e-6)


def test_run_writes_a_loadable_checkpoint(tmp_path, samples):
    torch.set_num_threads(1)
    tc = ToyTrainConfig(stage0_steps=1, stage1_steps=1, stage2_steps=2, stage3_steps=0, batch=2, video_every=2,
                        save_every=1, val_per_family=1)
    card = run(tmp_path / "ck", tc, TINY, progress=False)
    for f in ("model.safetensors", "config.json", "tokenizer.json", "card.json", "toy_config.json"):
        assert (tmp_path / "ck" / f).exists()
    assert load_card(tmp_path / "ck")["steps"] == {"stage0": 1, "stage1": 1, "stage2": 2} == card["steps"]
    assert set(card["val_metrics"]["full"]) == {"gqa", "pope", "textvqa", "count", "scene", "mc", "video", "avg"}
    vlm = ToyVLM.load(tmp_path / "ck")
    with torch.no_grad():
        out = vlm.model.generate(**vlm.build_inputs(samples[:2]), max_new_tokens=2)
    assert len(vlm.decode(out[:, -2:])) == 2
    acc = first_token_accuracy(vlm, samples)
    assert 0.0 <= acc["avg"] <= 100.0
    json.dumps(card)  # the card is plain JSON


def test_stage0_patch_labels_match_the_pixels():
    """Stage 0's dense labels are non-background exactly on the patches whose pixels differ from the background."""
    b = stage0_batch(12, 0, ToyTrainConfig(batch=3))
    pix = b["pixel_values"]  # [B, 3, 96, 96]
    bg = pix[:, :, :1, :1]
    drawn = (pix != bg).any(1).reshape(3, 12, 8, 12, 8).any(-1).any(2).reshape(3, 144)
    assert torch.equal(drawn, b["color"] > 0)
    assert torch.equal(b["color"] > 0, b["shape"] > 0) and torch.equal(b["color"] > 0, b["size"] > 0)
    assert ((b["digit"] > 0) <= (b["shape"] == 6)).all()  # digits only on tiles (shape index 6 = "tile")


def test_extend_needs_opt_in(tmp_path):
    torch.set_num_threads(1)
    tc = ToyTrainConfig(batch=2, video_every=0)
    vlm = ToyVLM.fresh(TINY)
    fn = _tiny_batch_fn(vlm, tc)
    train(vlm.model, fn, TrainConfig(steps=2, save_every=1), state_path=tmp_path / "s.pt", progress=False)
    with pytest.raises(ValueError, match="state_path"):
        train(vlm.model, fn, TrainConfig(steps=3, save_every=1), state_path=tmp_path / "s.pt", progress=False)
    hist = train(vlm.model, fn, TrainConfig(steps=3, save_every=1, log_every=1), state_path=tmp_path / "s.pt",
                 progress=False, extend=True)
    assert [h["step"] for h in hist] == [2, 3]


def test_dialogue_batch_first_turn_is_the_eval_prompt_and_every_answer_is_supervised():
    from common.data.toyworld import make_dialogue

    vlm = ToyVLM.fresh(TINY)
    dialogues = [make_dialogue("train", 0, i, {"gqa": 1.0, "count": 1.0, "mc": 1.0}, 4) for i in range(3)]
    b = vlm.build_dialogue_batch(dialogues)
    assert b["pixel_values"].shape[0] == 3
    for row, lab, turns in zip(b["input_ids"], b["labels"], dialogues):
        row = row[row != vlm.pad_id].tolist()
        first = vlm.prompt_ids(turns[0]) + vlm.answer_ids(turns[0])
        assert row[:len(first)] == first  # turn 1 looks exactly like an evaluation prompt + answer
        assert lab[lab != -100].tolist() == sum((vlm.answer_ids(s) for s in turns), [])
        assert row.count(vlm.image_token_id) == 144
    with pytest.raises(ValueError, match="dialogue"):
        vlm.build_dialogue_batch([[]])


def test_stage0_position_labels_cover_the_grid():
    b = stage0_batch(12, 0, ToyTrainConfig(batch=2))
    assert torch.equal(b["row"][0], torch.arange(144) // 12) and torch.equal(b["col"][1], torch.arange(144) % 12)


def test_generation_never_emits_the_image_placeholder(samples):
    """The image placeholder (and pad / bos) are suppressed: a generated placeholder would make the next
    cache-less step find more placeholders than image features (seen in DyRate's recompute mode)."""
    vlm = ToyVLM.fresh(TINY)
    with torch.no_grad():
        lm_head = vlm.model.lm_head.weight
        lm_head.zero_()
        lm_head[vlm.image_token_id] = 1.0  # an untrained head that prefers <image> whatever the input
        inp = vlm.build_inputs(samples[:2])
        out = vlm.model.generate(**inp, max_new_tokens=3, use_cache=False)
    new = out[:, inp["input_ids"].shape[1]:]
    assert not (new == vlm.image_token_id).any() and not (new == vlm.pad_id).any()


def test_packed_branches_compute_exactly_what_separate_samples_compute():
    """Each branch of a packed row sees the image prefix and itself only, at the positions a single-sample
    row gives it: its logits equal those of `build_training_batch` on that sample alone."""
    from common.data.toyworld import make_dialogue
    from common.models.toy_train import with_positions

    torch.set_num_threads(1)
    vlm = ToyVLM.fresh(TINY, seed=0)
    groups = [make_dialogue("train", 0, i, {"gqa": 1.0, "count": 1.0, "mc": 1.0, "textvqa": 1.0}, k)
              for i, k in ((0, 4), (1, 1), (2, 3))]
    packed = vlm.build_packed_batch(groups)
    assert packed["attention_mask"].dtype == torch.bool and packed["attention_mask"].shape[1] == 1
    with torch.no_grad():
        lp = vlm.model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        for i, g in enumerate(groups):
            lab = packed["labels"][i]
            assert lab[lab != -100].tolist() == sum((vlm.answer_ids(s) for s in g), [])
            single = with_positions(vlm.build_training_batch(g))
            ls = vlm.model(**{k: v for k, v in single.items() if k != "labels"}).logits
            want = torch.cat([ls[j, :-1][single["labels"][j, 1:] != -100] for j in range(len(g))])
            got = lp[i, :-1][lab[1:] != -100]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_mask_isolates_branches_and_positions_restart():
    from common.data.toyworld import make_dialogue

    vlm = ToyVLM.fresh(TINY, seed=0)
    g = make_dialogue("train", 0, 5, {"gqa": 1.0, "pope": 1.0}, 3)
    b = vlm.build_packed_batch([g, g[:1]])
    mask, pos = b["attention_mask"][:, 0], b["position_ids"]
    prefix = len(vlm.image_prefix_ids(g[0]))
    lens = [len(vlm.question_ids(s)) + len(vlm.answer_ids(s)) for s in g]
    width = b["input_ids"].shape[1]
    assert width == prefix + sum(lens)
    starts = [prefix + sum(lens[:k]) for k in range(3)]
    for k, s in enumerate(starts):
        assert pos[0, s].item() == prefix  # every branch restarts right after the image prefix
        last = s + lens[k] - 1
        seen = mask[0, last].nonzero().squeeze(1).tolist()
        assert seen == list(range(prefix)) + list(range(s, last + 1))  # prefix + itself, no other branch
    pad = width - (prefix + lens[0])  # row 1 is left-padded
    assert mask[1, :pad].equal(torch.eye(width, dtype=torch.bool)[:pad])  # padding attends to itself only
    assert not mask[1, pad:, :pad].any()  # and nobody attends to padding
    with pytest.raises(ValueError, match="at least one sample"):
        vlm.build_packed_batch([[]])


def test_position_keeper_reads_every_patch_of_training_forwards_only():
    torch.set_num_threads(1)
    vlm = ToyVLM.fresh(TINY, seed=0)
    keeper = PositionKeeper(vlm.model, TINY.text_hidden, TINY.grid)
    tc = ToyTrainConfig(batch=3, video_every=2)
    clips = stage_batch(vlm, 2, 1, tc)  # step 1 of video_every=2: a batch of 3-frame clips
    keeper.train()
    answer_loss(keeper.model, clips)
    n_images = clips["pixel_values"].shape[0]
    assert sum(f.numel() for f in keeper._projected) == n_images * TINY.grid ** 2 * TINY.text_hidden
    loss = keeper.position_loss()
    assert keeper._projected == [] and 0 < loss.item() < 2 * torch.log(torch.tensor(TINY.grid)).item()
    loss.backward()  # reaches both the heads and the projector (the tower is not in the graph's trained part)
    assert keeper.heads["col"].weight.grad is not None
    assert vlm.model.model.multi_modal_projector.linear_1.weight.grad is not None
    keeper.eval()
    with torch.no_grad():
        answer_loss(keeper.model, clips)
    assert keeper._projected == []  # evaluation forwards (the learning curve) are not kept
    keeper.train()
    keeper.remove()
    answer_loss(keeper.model, clips)
    assert keeper._projected == []  # removed: the model runs without it


def test_position_aux_run_trains_and_saves_a_plain_llava(tmp_path):
    torch.set_num_threads(1)
    tc = ToyTrainConfig(stage0_steps=1, stage1_steps=1, stage2_steps=2, stage3_steps=1, batch=2, video_every=2,
                        save_every=1, val_per_family=1, position_aux=0.5)
    card = run(tmp_path / "ck", tc, TINY, progress=False)
    assert card["train_config"]["position_aux"] == 0.5
    vlm = ToyVLM.load(tmp_path / "ck")  # the heads are not part of the checkpoint
    assert not any("heads" in k for k in vlm.model.state_dict())


def test_make_toy_model_defaults_are_the_committed_checkpoints_recipe():
    """`make toy-model` (the defaults) must retrain the committed model: same recipe, model size and data."""
    from dataclasses import asdict

    from common.paths import CHECKPOINTS

    TOY_CHECKPOINT = CHECKPOINTS / "toy-llava"

    card = load_card(TOY_CHECKPOINT)
    assert card["train_config"] == asdict(ToyTrainConfig())
    assert card["model_config"] == asdict(ToyConfig())  # the data version: test_checkpoint_data_version


def test_stage3_batches_are_stage2s_stream_with_targeted_dialogues():
    """Stage 3 continues stage 2's batch stream (its step numbers follow stage 2's) and differs from it only
    through the targeted dialogues: with both knobs at 0 its batches are stage 2's."""
    torch.set_num_threads(1)
    vlm = ToyVLM.fresh(TINY)
    off = ToyTrainConfig(batch=4, video_every=0)
    on = ToyTrainConfig(batch=4, video_every=0, repeat_scenes=1.0, pope_adversarial=1.0)
    for step in (5000, 5001):
        b2, b3_off, b3_on = (stage_batch(vlm, 2, step, off), stage_batch(vlm, 3, step, off),
                             stage_batch(vlm, 3, step, on))
        assert b2.keys() == b3_off.keys() and all(torch.equal(b2[k], b3_off[k]) for k in b2)
        assert not torch.equal(b2["pixel_values"], b3_on["pixel_values"])  # other dialogue scenes
        assert torch.equal(stage_batch(vlm, 2, step, on)["pixel_values"], b2["pixel_values"])  # stage 2 untouched


def test_stage3_extends_stage2s_run_and_leaves_its_state(tmp_path):
    torch.set_num_threads(1)
    tc = ToyTrainConfig(stage0_steps=1, stage1_steps=1, stage2_steps=2, stage3_steps=2, batch=2, video_every=0,
                        save_every=1, val_per_family=1, curve_every=0, repeat_scenes=0.5, pope_adversarial=0.5)
    card = run(tmp_path / "ck", tc, TINY, progress=False)
    work = tmp_path / "ck" / "_train"
    s2, s3 = (torch.load(work / f"stage{k}.pt", weights_only=False) for k in (2, 3))
    assert (s2["step"], s3["step"]) == (2, 4) and s3["history"][:len(s2["history"])] == s2["history"]
    assert card["steps"] == {"stage0": 1, "stage1": 1, "stage2": 2, "stage3": 2}
    assert card["final_loss"]["3"] == s3["history"][-1]["loss"]
    weights = (tmp_path / "ck" / "model.safetensors").read_bytes()
    run(tmp_path / "ck", tc, TINY, progress=False)  # every stage finished: a rerun changes nothing
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == weights


def test_toy_repro_retrains_the_committed_recipe_and_compares(tmp_path):
    """`make toy-model-repro` on a tiny committed model: the card's recipe (not today's defaults) retrains the
    same weights byte for byte; a metric moved past the tolerance fails the check."""
    import json

    from common.models.toy_repro import compare, main

    torch.set_num_threads(1)
    tc = ToyTrainConfig(stage0_steps=1, stage1_steps=1, stage2_steps=2, stage3_steps=1, batch=2, video_every=0,
                        save_every=1, val_per_family=1, curve_every=0, threads=1)
    committed = tmp_path / "committed"
    run(committed, tc, TINY, progress=False)
    report = main(["--committed", str(committed), "--out", str(tmp_path / "again"), "--no-progress"])
    assert report["weights_identical"] and report["within_tolerance"] and report["max_abs_diff_points"] == 0
    assert json.loads((tmp_path / "again" / "repro.json").read_text()) == report
    card = json.loads((committed / "card.json").read_text())
    card["val_metrics"]["full"]["gqa"] += 1.5
    (committed / "card.json").write_text(json.dumps(card))
    moved = compare(tmp_path / "again", committed)
    assert not moved["within_tolerance"] and moved["val_diff_points"]["gqa"] == -1.5
    with pytest.raises(SystemExit):
        main(["--committed", str(committed), "--out", str(tmp_path / "again"), "--no-progress"])
    with pytest.raises(SystemExit, match="must differ"):
        main(["--committed", str(committed), "--out", str(committed)])
