"""LLaVA-STF at paper scale on a tiny random llava-hf LLaVA with 576 visual tokens (24 x 24, so the 2 x 2 fusion
applies) and fixture LLaVA-558K / 665K / evaluation files: token counts at LLaVA's grid, the two-stage recipe with
resume, a trained variant saved and reloaded through the run's loader, Table 3 end to end, and missing inputs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import papers.stf.paper_train as P
from common.models.load import load_vlm
from common.run import MissingInputs, Run, RunConfig, run_target
from papers.stf import experiments as E
from papers.stf.train import main as train_main
from papers.stf.variants import VARIANTS, Options, attach_projector, variant_dir
from tests.paper_fixtures import tiny_paper_setup

# 24 x 24 grid: tokens (24/k)^2 E, or 576 without a reducer
PAPER_TOKENS = {"baseline": 576, "mbtf": 576, "stf": 144, "mbtf-stf": 144, "avgpool": 144, "tokenconcat": 144,
                "mbtf-avgpool": 144, "mbtf-tokenconcat": 144, "mbtf-stf-k2-e2": 288, "mbtf-stf-k3-e1": 64,
                "mbtf-stf-k3-e3": 192, "mbtf-stf-k4-e4": 144, "mbtf-stf-k4-e8": 288, "mbtf-stf-k8-e16": 144,
                "mbtf-stf-k8-e32": 288}
# two optimiser steps per stage, global batches of 4 and 2 conversations, micro-batches of 2 (stage 1 accumulates 2)
FAST = {"stage1_steps": 2, "stage2_steps": 2, "stage1_batch": 4, "stage2_batch": 2, "micro_batch": 2, "save_every": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_paper_setup(tmp_path_factory.mktemp("stf-paper"))


@pytest.fixture(autouse=True)
def _fresh_runs():
    Run.clear_cache()
    yield
    Run.clear_cache()


def config(setup, tmp_path, data_root=None, train_root=None, **stf) -> RunConfig:
    model_dir, data = setup
    return RunConfig(scale="paper", model_path=model_dir, data_root=data_root or data, train_root=train_root or data,
                     out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", n=2, options={"stf": {**FAST, **stf}})


def weights(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model (one file or shards)."""
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_every_variant_at_llava_geometry(setup):
    vlm = load_vlm("paper", setup[0])
    sample_prompt = {"text": ["USER: <image>\nWhat is in the image? ASSISTANT:"]}
    image = torch.zeros(3, 48, 48, dtype=torch.uint8)
    assert vlm.num_visual_tokens == 576
    for name, n in PAPER_TOKENS.items():
        proj = attach_projector(vlm, name, num_blocks=8)
        assert vlm.num_visual_tokens == proj.num_tokens == n, name
        ids = vlm.processor(**sample_prompt, images=[image], return_tensors="pt")["input_ids"]
        assert int((ids == vlm.image_token_id).sum()) == n, name  # the processor expands <image> to n placeholders
    assert set(PAPER_TOKENS) == set(VARIANTS) and name == "mbtf-stf-k8-e32"
    assert vlm.model.config.vision_feature_layer == [1, 2]  # MBTF: M = 8 capped at the 2-block tower
    fresh = load_vlm("paper", setup[0])
    attach_projector(fresh, "stf")
    assert fresh.model.config.vision_feature_layer == -2  # LLaVA-1.5's penultimate block, as its own projector read


def test_two_stages_resume_and_reload(setup, tmp_path, monkeypatch):
    cfg = config(setup, tmp_path)
    run = Run.for_scale(cfg, paper="stf")
    opts = cfg.options_for("stf", Options)
    card = P.train_paper_variant(run, "mbtf-stf", tmp_path / "a", opts, progress=False)
    assert card["visual_tokens"] == 144 and card["stf_config"]["kind"] == "mbtf_stf"
    assert card["data"]["stage1"]["grad_accum"] == 2 and card["data"]["stage2"]["steps"] == 2
    assert card["data"]["stage2"]["conversations"] == 8 and card["data"]["stage1"]["sha256"]
    base, trained = weights(setup[0]), weights(tmp_path / "a")
    tower = [k for k in base if "vision_tower" in k]
    llm = [k for k in base if "language_model" in k]
    assert tower and all(torch.equal(base[k], trained[k]) for k in tower)  # frozen in both stages
    assert any(not torch.equal(base[k], trained[k]) for k in llm)  # stage 2 trains the LLM
    # an interrupted run (stage 2, second step) resumes to the same weights
    real = P.sft_batch_fn

    def crashing(vlm, convs, batch_size, seed=0, **kw):
        fn = real(vlm, convs, batch_size, seed, **kw)
        if kw.get("template") != "chat":
            return fn

        def batch(step):
            if step == 1 and not crashing.done:
                crashing.done = True
                raise KeyboardInterrupt
            return fn(step)
        return batch

    crashing.done = False
    monkeypatch.setattr(P, "sft_batch_fn", crashing)
    with pytest.raises(KeyboardInterrupt):
        P.train_paper_variant(run, "mbtf-stf", tmp_path / "b", opts, progress=False)
    assert not (tmp_path / "b" / "card.json").exists()
    resumed = P.train_paper_variant(run, "mbtf-stf", tmp_path / "b", opts, progress=False)
    again = weights(tmp_path / "b")
    assert trained.keys() == again.keys() and all(torch.equal(trained[k], again[k]) for k in trained)
    assert resumed["final_loss"] == card["final_loss"]
    # the saved folder reloads through the run's loader with its projector and token count
    vlm = P.load_paper_variant(run, tmp_path / "a")
    assert vlm.num_visual_tokens == 144 and isinstance(vlm.model.model.multi_modal_projector, P.STFProjector)
    batch = run.batches(run.samples(["pope"], n=1), vlm)[0]
    assert int((batch["input_ids"] == vlm.image_token_id).sum()) == 144
    with torch.no_grad():
        assert torch.isfinite(vlm.model(**batch).logits).all()


def test_table3_end_to_end_at_paper_scale(setup, tmp_path):
    cfg = config(setup, tmp_path, train_missing=True, stage1_steps=1, stage2_steps=1, stage1_batch=2)  # 4 variants
    out = run_target("stf-table3", cfg)
    assert out["csv"] == tmp_path / "out" / "table3.csv"
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "table3.json").read_text())["rows"]}
    assert [rows[m]["ours tokens"] for m in rows] == [576, 576, 144, 144]
    base = rows["LLaVA-1.5 (baseline)"]
    assert base["ours LLM TFLOPs"] == pytest.approx(4 * rows["STF"]["ours LLM TFLOPs"], rel=1e-2)
    for col in ("ours GQA", "ours SQA", "ours VQAT", "ours POPE", "ours MMB"):
        assert 0 <= base[col] <= 100, col
    assert base["ours MMBCN"] is None and base["ours VisWiz"] is None and base["ours VQAv2"] is None
    assert base["paper GQA"] == 62.0 and base["paper VisWiz"] == 50.0 and base["paper Avg."] == 65.5
    assert base["paper mean (same benchmarks)"] == round((62.0 + 66.8 + 58.2 + 85.9 + 64.3) / 5, 2)
    md = (tmp_path / "out" / "table3.md").read_text()
    assert "no MMBench-CN loader" in md and "no VizWiz loader" in md and "paper scale" in md
    for v in ("baseline", "mbtf", "stf", "mbtf-stf"):  # trained into <out_dir>/variants by default
        assert (variant_dir(tmp_path / "out" / "variants", v) / "card.json").is_file()


def test_missing_benchmark_and_training_files(setup, tmp_path):
    model_dir, data = setup
    partial = tmp_path / "data"
    shutil.copytree(data, partial)
    (partial / "gqa" / "llava_gqa_testdev_balanced.jsonl").unlink()
    (partial / "llava_v1_5_mix665k.json").unlink()
    cfg = config(setup, tmp_path, data_root=partial, train_root=partial, train_missing=True)
    with pytest.raises(MissingInputs) as err:
        run_target("stf-table3", cfg)
    msg = str(err.value)
    assert "llava_gqa_testdev_balanced.jsonl" in msg and "llava_v1_5_mix665k.json" in msg
    assert "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json" in msg and "playground/data" in msg  # the layout expected
    assert "blip_laion" not in "".join(err.value.missing)  # stage 1's file is there: not reported missing
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
    # without train_missing, absent variants are named with the command that trains them
    Run.clear_cache()
    with pytest.raises(MissingInputs, match="make stf-train-baseline stf-train-mbtf stf-train-stf stf-train-mbtf-stf "
                                            "SCALE=paper"):
        run_target("stf-table3", config(setup, tmp_path))
    assert not (tmp_path / "out").exists()


def test_training_cli_names_missing_training_files(setup, tmp_path, capsys):
    rc = train_main(["stf", "--scale", "paper", "--model-path", str(setup[0]), "--train-root", str(tmp_path / "none"),
               "--out-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "blip_laion_cc_sbu_558k.json" in err and "llava_v1_5_mix665k.json" in err
    assert not (tmp_path / "out").exists()


def test_table1_at_the_model_geometry(setup, tmp_path):
    cfg = config(setup, tmp_path)
    run_target("stf-table1", cfg)
    rows = json.loads((tmp_path / "out" / "table1.json").read_text())["rows"]
    tiny = [r for r in rows if r["scale"] == setup[0].name]  # CLIP width 32 on a 24 x 24 grid, Llama width 64
    assert [r["output size"] for r in tiny] == ["24x24x128", "24x24x32", "12x12x128", "12x12x256", "12x12x64"]
    prows = json.loads((tmp_path / "out" / "table1_params.json").read_text())["rows"]
    assert {r["tokens"] for r in prows if r["scale"] == setup[0].name} == {576, 144}
