"""papers.stf.train on a tiny toy LLaVA: variants' token counts, the two stages' trainable sets, a 2+2-step run,
its checkpoint (card, reload), resume equality and clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import papers.stf.train as T
from common.data.toyworld import toyworld_split
from common.models.toy import ToyConfig, ToyVLM
from papers.stf.train import STFTrainConfig, load_variant, train_variant
from papers.stf.variants import VARIANTS, attach_projector, set_trainable

TINY = ToyConfig(vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
                 text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64)
FAST = STFTrainConfig(batch=4, val_per_family=1, save_every=1)
# 12 x 12 grid: tokens (12/k)^2 E, or 144 without a reducer (stf.md §7)
EXPECTED_TOKENS = {"baseline": 144, "mbtf": 144, "stf": 36, "mbtf-stf": 36, "avgpool": 36, "tokenconcat": 36,
                   "mbtf-avgpool": 36, "mbtf-tokenconcat": 36, "mbtf-stf-k2-e2": 72, "mbtf-stf-k3-e1": 16,
                   "mbtf-stf-k3-e3": 48, "mbtf-stf-k4-e4": 36, "mbtf-stf-k4-e8": 72}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("stf") / "base"
    ToyVLM.fresh(TINY, seed=0).save(path, card={"name": "tiny"})
    return path


@pytest.fixture(scope="module")
def sample():
    return toyworld_split("val", 6, seed=0, families=T.EVAL_FAMILIES)[:2]


def test_every_variant_sets_the_placeholder_count_and_runs(sample):
    paper_only = {"mbtf-stf-k8-e16", "mbtf-stf-k8-e32"}
    assert set(VARIANTS) == set(EXPECTED_TOKENS) | paper_only
    for name in paper_only:  # k=8 does not tile the toy's 12 x 12 grid: a clear error, not a wrong model
        with pytest.raises(ValueError, match="does not tile the 12x12 grid"):
            attach_projector(ToyVLM.fresh(TINY), name)
    for name, n in EXPECTED_TOKENS.items():
        vlm = ToyVLM.fresh(TINY)
        proj = attach_projector(vlm, name)
        assert vlm.num_visual_tokens == proj.num_tokens == n, name
        inp = vlm.build_inputs(sample)
        assert int((inp["input_ids"][0] == vlm.image_token_id).sum()) == n
        with torch.no_grad():
            logits = vlm.model(**inp).logits
        assert logits.shape[:2] == inp["input_ids"].shape and torch.isfinite(logits).all(), name
    mb = ToyVLM.fresh(TINY)
    assert attach_projector(mb, "mbtf-stf").config.blocks == (1, 2)  # every block of the 2-block tower
    one = ToyVLM.fresh(TINY)
    assert attach_projector(one, "stf").config.blocks == (-1,)  # the toy model's own feature layer


def test_stages_train_projector_then_projector_and_llm():
    vlm = ToyVLM.fresh(TINY)
    attach_projector(vlm, "mbtf-stf")
    inner = vlm.model.model

    def trainable(m):
        return {p.requires_grad for p in m.parameters()}

    set_trainable(vlm, 1)
    assert trainable(inner.multi_modal_projector) == {True}
    assert trainable(inner.language_model) == trainable(vlm.model.lm_head) == trainable(inner.vision_tower) == {False}
    set_trainable(vlm, 2)
    assert trainable(inner.multi_modal_projector) == trainable(inner.language_model) == {True}
    assert trainable(vlm.model.lm_head) == {True} and trainable(inner.vision_tower) == {False}


def test_train_two_steps_card_reload_and_frozen_tower(base, tmp_path, sample):
    card = train_variant("mbtf-stf", tmp_path / "run", steps=(2, 2), base=base, config=FAST, progress=False)
    assert card["visual_tokens"] == 36 and card["train_config"]["stage2_steps"] == 2
    assert card["stf_config"]["kind"] == "mbtf_stf" and card["weights_sha256"]
    assert set(card["val_metrics"]["full"]) >= {"gqa", "avg"}
    w0, w1 = load_file(str(base / "model.safetensors")), load_file(str(tmp_path / "run" / "model.safetensors"))
    tower = [k for k in w0 if "vision_tower" in k]
    llm = [k for k in w0 if "language_model" in k]
    assert tower and all(torch.equal(w0[k], w1[k]) for k in tower)  # frozen in both stages
    assert any(not torch.equal(w0[k], w1[k]) for k in llm)  # stage 2 trains the LLM
    vlm = load_variant(tmp_path / "run")
    assert vlm.num_visual_tokens == 36
    with torch.no_grad():
        out = vlm.model(**vlm.build_inputs(sample)).logits
    assert torch.isfinite(out).all()
    # a finished run is returned as is; another config in the same folder is refused
    mtime = (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns
    assert train_variant("mbtf-stf", tmp_path / "run", steps=(2, 2), base=base, config=FAST) == card
    assert (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="out_dir"):
        train_variant("mbtf-stf", tmp_path / "run", steps=(2, 3), base=base, config=FAST)


def test_interrupted_run_resumes_to_identical_weights(base, tmp_path, monkeypatch):
    full = train_variant("stf", tmp_path / "a", steps=(2, 4), base=base, config=FAST, progress=False)
    real = T.stage_batch
    calls = {"n": 0}

    def crashing(vlm, stage, step, tc):
        if stage == 2 and step == 3 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt
        return real(vlm, stage, step, tc)

    monkeypatch.setattr(T, "stage_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_variant("stf", tmp_path / "b", steps=(2, 4), base=base, config=FAST, progress=False)
    assert not (tmp_path / "b" / "card.json").exists()
    resumed = train_variant("stf", tmp_path / "b", steps=(2, 4), base=base, config=FAST, progress=False)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss"] == full["final_loss"]


def test_bad_arguments(base, tmp_path):
    with pytest.raises(ValueError, match="name"):
        train_variant("mbtf-stf-k5", tmp_path / "x", base=base)
    with pytest.raises(ValueError, match="steps"):
        train_variant("stf", tmp_path / "x", steps=(0, 2), base=base)
    with pytest.raises(FileNotFoundError, match="make toy-model"):
        train_variant("stf", tmp_path / "x", base=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="stf-train"):
        load_variant(tmp_path / "nowhere")
    assert json.loads(json.dumps(VARIANTS["mbtf-stf-k4-e8"].__dict__))["E"] == 8
