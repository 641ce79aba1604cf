"""The shared paper-scale fixtures: the tiny llava-hf checkpoint folder through `load_paper_vlm`, the fixture
files through their loaders, and the COCO Karpathy caption loader."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

from common.data.benchmarks import BENCHMARKS, load_benchmark
from common.data.captions import CAPTION_PROMPT, karpathy_path, load_coco_karpathy
from common.data.llava_instruct import load_instruct, load_pretrain
from common.data.sample import Sample
from common.models.llava_hf import load_paper_vlm
from common.models.tiny import IMAGE_TOKEN, save_tiny_llava_hf
from tests.paper_fixtures import (
    BENCHMARK_WRITERS,
    tiny_paper_setup,
    write_coco_captions,
    write_eval_benchmarks,
    write_image,
    write_json,
)

# ---------------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model folder (4 layers, 576 visual tokens) and data root, written once for the module."""
    return tiny_paper_setup(tmp_path_factory.mktemp("paper"))


@pytest.fixture(scope="module")
def vlm(setup):
    return load_paper_vlm(setup[0], device="cpu")


def test_checkpoint_folder_has_the_llava_hf_files(setup):
    model_dir, _ = setup
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "preprocessor_config.json",
            "processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json"} <= names
    assert any(n.startswith("model-00001-of-") for n in names)  # sharded like the 7B folder
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["vision_feature_select_strategy"] == "default" and cfg["vision_feature_layer"] == -2
    assert cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"] == 24
    proc = json.loads((model_dir / "processor_config.json").read_text())
    assert proc["num_additional_image_tokens"] == 1 and proc["patch_size"] == cfg["vision_config"]["patch_size"]


def test_vocabulary_and_prompt(vlm):
    assert type(vlm.processor).__name__ == "LlavaProcessor"
    tok = vlm.tokenizer
    vocab = tok.get_vocab()
    assert vocab[IMAGE_TOKEN] == len(vocab) - 1 == vlm.image_token_id
    for w in ("USER:", "ASSISTANT:", "yes", "no", "A", "B", "C", "D", "What", "Is", "How", "many"):
        assert w in vocab, w
    ids = tok("USER: Is there a dog in the image? ASSISTANT:").input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    sample = Sample(id="x", family="pope", images=[Image.new("RGB", (4, 4))], question="Is it red?", answer="no")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}]
    assert vlm.processor.apply_chat_template(messages, add_generation_prompt=True) == vlm.prompt(sample)


def test_576_placeholders_per_image_and_greedy_generation(vlm, setup):
    samples = load_benchmark("pope", setup[1])
    batch = vlm.build_inputs(samples)
    assert (batch["input_ids"] == vlm.image_token_id).sum(1).tolist() == [576] * len(samples)
    assert vlm.num_visual_tokens == 576 and batch["pixel_values"].shape[0] == len(samples)
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=3, do_sample=False)
    answers = vlm.decode(out[:, batch["input_ids"].shape[1]:])
    assert len(answers) == len(samples) and all(answers)


def test_answers_depend_on_the_image(vlm, tmp_path):
    """Greedy answers to one question about different pictures differ: tests of pruning can see an effect."""
    paths = [write_image(tmp_path / f"img{k}.jpg") for k in range(6)]
    samples = [Sample(id=str(k), family="pope", images=[Image.open(p)], question="What is in the image?",
                      answer="") for k, p in enumerate(paths)]
    batch = vlm.build_inputs(samples)
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=3, do_sample=False)
    answers = vlm.decode(out[:, batch["input_ids"].shape[1]:])
    assert len(set(answers)) >= 3, answers


@pytest.mark.parametrize("num_layers", [4, 32])
def test_saved_model_loads_and_generates(tmp_path, num_layers):
    path = save_tiny_llava_hf(tmp_path / "m", num_layers=num_layers, seed=1)
    model = load_paper_vlm(path, device="cpu")
    assert model.model.config.text_config.num_hidden_layers == num_layers
    samples = [Sample(id=str(k), family="gqa", images=[Image.new("RGB", (10, 7), c)], question="What color is it?",
                      answer="red") for k, c in enumerate([(250, 0, 0), (0, 0, 250)])]
    batch = model.build_inputs(samples)
    assert (batch["input_ids"] == model.image_token_id).sum(1).tolist() == [576, 576]
    with torch.no_grad():
        out = model.model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 2)


def test_other_grid_sizes_and_determinism(tmp_path):
    a = save_tiny_llava_hf(tmp_path / "a", n_visual=16, patch=8)
    b = save_tiny_llava_hf(tmp_path / "b", n_visual=16, patch=8)
    for f in sorted(p.name for p in a.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    vlm = load_paper_vlm(a, device="cpu")
    s = Sample(id="x", family="gqa", images=[Image.new("RGB", (5, 5))] * 2, question="What is it?", answer="")
    assert (vlm.build_inputs([s])["input_ids"] == vlm.image_token_id).sum() == 32  # two frames x 16
    for bad in (0, 15, 577):
        with pytest.raises(ValueError, match="perfect square"):
            save_tiny_llava_hf(tmp_path / "bad", n_visual=bad)
    with pytest.raises(ValueError, match="vocab_words"):
        save_tiny_llava_hf(tmp_path / "bad", vocab_words=["two words"])


# ---------------------------------------------------------------------------------------------- fixture files


def test_setup_data_root_serves_every_loader(setup):
    _, root = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VQAv2 test-dev has no answers
        counts = {name: len(load_benchmark(name, root)) for name in BENCHMARKS}
    assert counts == {"pope": 4, "textvqa": 3, "gqa": 2, "mme": 4, "sqa": 2, "mmb": 2, "vqav2": 2}
    assert len(load_pretrain(root)) == 8 and len(load_instruct(root)) == 8
    assert len(load_coco_karpathy(root)) == 3


def test_write_eval_benchmarks_subset_and_unknown(tmp_path):
    write_eval_benchmarks(tmp_path, ["gqa", "pope"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gqa", "pope"]
    with pytest.raises(ValueError, match=r"unknown benchmarks \['coco'\]"):
        write_eval_benchmarks(tmp_path, ["coco"])
    assert set(BENCHMARK_WRITERS) == set(BENCHMARKS)


def test_fixture_images_differ_between_files(tmp_path):
    a, b = write_image(tmp_path / "a.jpg"), write_image(tmp_path / "b.jpg")
    assert Image.open(a).convert("RGB").tobytes() != Image.open(b).convert("RGB").tobytes()
    assert max(Image.open(a).size) <= 16


# ---------------------------------------------------------------------------------------------- COCO captions


def test_karpathy_splits_and_samples(tmp_path):
    write_coco_captions(tmp_path, n=6)
    test = load_coco_karpathy(tmp_path)
    assert [s.id for s in test] == ["coco-391895", "coco-393895", "coco-395895"]
    s = test[0]
    assert s.family == "caption" and s.answer_type == "caption" and s.question == CAPTION_PROMPT
    assert len(s.references) == 5 and s.answer == s.references[0] == "A red car parked on the street."  # stripped
    assert s.meta == {"cocoid": 391895, "image_file": "val2014/COCO_val2014_000000391895.jpg", "split": "test"}
    assert s.images[0].convert("RGB").size[0] > 0
    assert [len(load_coco_karpathy(tmp_path, split)) for split in ("val", "restval", "train")] == [1, 1, 1]
    assert load_coco_karpathy(tmp_path, "train")[0].meta["image_file"].startswith("train2014/")
    assert len(load_coco_karpathy(tmp_path, limit=2)) == 2 and load_coco_karpathy(tmp_path, limit=0) == []


def test_karpathy_data_root_from_environment(tmp_path, monkeypatch):
    write_coco_captions(tmp_path, n=1)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert [s.id for s in load_coco_karpathy()] == ["coco-391895"]


def test_karpathy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*coco/annotations/dataset_coco\.json \(Karpathy-split "
                                                r"COCO captions, images under .*coco/val2014/\)"):
        karpathy_path(tmp_path)
    path = write_coco_captions(tmp_path, n=3)
    with pytest.raises(ValueError, match="unknown Karpathy split 'dev'"):
        load_coco_karpathy(tmp_path, "dev")
    with pytest.raises(ValueError, match="limit"):
        load_coco_karpathy(tmp_path, limit=-2)
    data = json.loads(path.read_text())
    (tmp_path / "coco" / "val2014" / data["images"][2]["filename"]).unlink()
    with pytest.raises(ValueError, match=r"dataset_coco\.json: images\[2\]: image file not found: .*val2014"):
        load_coco_karpathy(tmp_path)
    data["images"][1]["sentences"] = [{"tokens": []}]
    write_json(path, data)
    with pytest.raises(ValueError, match=r"dataset_coco\.json: images\[1\]: every sentence needs a non-empty `raw`"):
        load_coco_karpathy(tmp_path, "val")
    del data["images"][0]["cocoid"]
    write_json(path, data)
    with pytest.raises(ValueError, match=r"dataset_coco\.json: images\[0\]: missing \['cocoid'\]"):
        load_coco_karpathy(tmp_path)
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"dataset_coco\.json:1: bad JSON"):
        load_coco_karpathy(tmp_path)
