"""The evaluation runner (common/evaluation.py): batching, caching, resuming, errors, token accounting."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import pytest

import common.evaluation as E
from common.evaluation import CacheError, describe_reducer, evaluate, hash_samples
from common.schedule import Budget
from eval_fakes import MAX_NEW_TOKENS, FailingVLM, TinyVLM, make_samples

RUN_KEY = {"checkpoint": "tiny-random-seed0"}


def _eval(vlm, samples, tmp_path, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    return evaluate(vlm, samples, cache_dir=tmp_path / "cache", run_key=RUN_KEY, progress=False, **kw)


def test_evaluate_end_to_end_and_cache_hit(tmp_path):
    samples = make_samples()
    vlm = TinyVLM()
    res = _eval(vlm, samples, tmp_path)
    assert res.ids == [s.id for s in samples]
    assert len(res.predictions) == len(samples) and res.n_computed == len(samples)
    assert set(res.metrics) == {"gqa", "pope", "count", "mc", "caption", "video", "vqav2"}
    assert "f1" in res.metrics["pope"] and "cider" in res.metrics["caption"]
    assert all("score" in m for m in res.metrics.values())
    # captions get 6 new tokens, the rest 3 (tiny_llava never emits EOS)
    assert all(len(p) == (6 if i.startswith("caption") else 3) for i, p in zip(res.ids, res.predictions))
    # 16 visual tokens per image, the video samples have 2 frames; no reducer -> all kept at every layer
    full = [16 * (2 if s.family == "video" else 1) for s in samples]
    assert res.visual_tokens_full == pytest.approx(sum(full) / len(full))
    assert res.visual_tokens == res.visual_tokens_full
    assert res.visual_tokens_per_layer == [res.visual_tokens_full] * 2
    # batches never mix generation lengths or image counts: 3 captions and 3 clips form their own batches
    assert vlm.calls == -(-(len(samples) - 6) // 4) + 1 + 1

    again = TinyVLM()
    res2 = _eval(again, samples, tmp_path)
    assert again.calls == 0 and res2.n_computed == 0
    assert res2.predictions == res.predictions and res2.metrics == res.metrics and res2.key == res.key


def test_batched_predictions_do_not_depend_on_batch_size(tmp_path):
    samples = make_samples(1)
    a = _eval(TinyVLM(), samples, tmp_path / "a", batch_size=1)
    b = _eval(TinyVLM(), samples, tmp_path / "b", batch_size=5)
    assert a.predictions == b.predictions


def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path):
    samples = make_samples()
    reference = _eval(TinyVLM(), samples, tmp_path / "ref")

    k = 2
    with pytest.raises(KeyboardInterrupt):
        _eval(FailingVLM(fail_after=k), samples, tmp_path)
    lines = (tmp_path / "cache" / reference.key[:16] / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * k  # every finished batch was kept

    resumed_vlm = TinyVLM()
    resumed = _eval(resumed_vlm, samples, tmp_path)
    assert resumed.n_computed == len(samples) - 4 * k
    assert resumed.predictions == reference.predictions
    assert resumed.metrics == reference.metrics
    assert resumed.visual_tokens == reference.visual_tokens


def test_cache_key_separates_runs(tmp_path):
    samples = make_samples(1)
    base = _eval(TinyVLM(), samples, tmp_path)
    other_ckpt = evaluate(TinyVLM(), samples, cache_dir=tmp_path / "cache", run_key={"checkpoint": "x"},
                          max_new_tokens=MAX_NEW_TOKENS, progress=False)
    longer = _eval(TinyVLM(), samples, tmp_path, max_new_tokens=4)
    fewer = _eval(TinyVLM(), samples[:-1], tmp_path)
    assert len({base.key, other_ckpt.key, longer.key, fewer.key}) == 4
    assert other_ckpt.n_computed == len(samples) and fewer.n_computed == len(samples) - 1


def test_hash_samples_sees_pixels():
    samples = make_samples(1)
    h = hash_samples(samples)
    samples[0].images[0].putpixel((0, 0), (1, 2, 3))
    assert hash_samples(samples) != h


@dataclass
class _Cfg:
    keep: float
    seed: int


class _DataclassReducer:
    name = "dc"

    def __init__(self):
        self.cfg = _Cfg(0.33, 0)

    def config(self):
        return self.cfg


def test_describe_reducer():
    assert describe_reducer(None) is None
    d = describe_reducer(_DataclassReducer())
    assert d["name"] == "dc" and d["config"]["keep"] == 0.33 and d["config"]["seed"] == 0

    class Plain:
        name = "plain"

        def __init__(self):
            self.ratio = 0.5
            self._private = object()
            self.fn = lambda x: x  # named by type, never by address

    assert describe_reducer(Plain()) == describe_reducer(Plain())
    assert describe_reducer(Plain())["config"]["ratio"] == 0.5


def test_corrupt_cache_line_names_file_and_line_and_keeps_data(tmp_path):
    samples = make_samples(1)
    res = _eval(TinyVLM(), samples, tmp_path)
    path = tmp_path / "cache" / res.key[:16] / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "{not json\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(CacheError, match=r"predictions\.jsonl:3: corrupt cache line"):
        _eval(TinyVLM(), samples, tmp_path)
    assert path.read_bytes() == before  # nothing deleted

    lines[2] = json.dumps({"id": "nope", "prediction": "x", "visual_tokens": [1], "visual_tokens_full": 1,
                           "time_s": 0.0}) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(CacheError, match=r":3: sample id 'nope' is not in the evaluated benchmark"):
        _eval(TinyVLM(), samples, tmp_path)

    lines[2] = json.dumps({"id": samples[2].id, "prediction": 5}) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(CacheError, match=r":3: field 'prediction' missing or not a str"):
        _eval(TinyVLM(), samples, tmp_path)


def test_torn_last_line_is_recomputed(tmp_path):
    samples = make_samples(1)
    res = _eval(TinyVLM(), samples, tmp_path)
    path = tmp_path / "cache" / res.key[:16] / "predictions.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] + b'{"id": "gqa-')  # last record torn
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = _eval(TinyVLM(), samples, tmp_path)
    assert again.n_computed == 1 and again.predictions == res.predictions
    assert path.read_bytes().count(b"\n") == len(samples)


def test_unknown_answer_type_fails_before_generating(tmp_path):
    samples = make_samples(1)
    samples[3].answer_type = "essay"
    vlm = TinyVLM()
    with pytest.raises(ValueError, match=rf"samples: sample '{samples[3].id}' has unknown answer_type 'essay'"):
        _eval(vlm, samples, tmp_path)
    assert vlm.calls == 0


def test_duplicate_ids_and_bad_arguments(tmp_path):
    samples = make_samples(1)
    with pytest.raises(ValueError, match="samples: ids must be unique"):
        _eval(TinyVLM(), samples + samples[:1], tmp_path)
    with pytest.raises(TypeError, match="run_key"):
        evaluate(TinyVLM(), samples, run_key=None, cache_dir=None)
    with pytest.raises(ValueError, match="max_new_tokens: no entry for family"):
        _eval(TinyVLM(), samples, tmp_path, max_new_tokens={"caption": 4})


def test_no_cache_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = evaluate(TinyVLM(), make_samples(1), cache_dir=None, run_key=RUN_KEY, max_new_tokens=2, progress=False)
    assert res.cache_dir is None and not any(tmp_path.iterdir())


class _State:
    """What `reduce_tokens` yields: kept visual tokens entering each layer, per sample."""

    def __init__(self, batch):
        self.batch = batch

    @property
    def kept_counts(self):
        return {0: [16] * self.batch, 1: [4] * self.batch}


def test_reducer_state_gives_kept_counts(tmp_path, monkeypatch):
    seen = []

    @contextlib.contextmanager
    def fake_reduce(vlm, reducer):
        seen.append(reducer)
        yield _State(fake_reduce.batch)

    def run_batch(vlm, batch, reducer, n, key, kw, red_kw, _orig=E._run_batch):
        fake_reduce.batch = len(batch)
        return _orig(vlm, batch, reducer, n, key, kw, red_kw)

    monkeypatch.setattr(E, "_reduction_context", fake_reduce)
    monkeypatch.setattr(E, "_run_batch", run_batch)
    samples = [s for s in make_samples(2) if s.family != "video"]
    res = _eval(TinyVLM(), samples, tmp_path, reducer=_DataclassReducer())
    assert seen and all(isinstance(r, _DataclassReducer) for r in seen)
    assert res.visual_tokens_per_layer == [16.0, 4.0] and res.visual_tokens == 10.0
    assert res.config["reducer"]["config"] == {"__class__": "_Cfg", "keep": 0.33, "seed": 0}


def test_kept_from_state_formats():
    class S:
        kept_counts = [[8, 8], [4, 2]]

    assert E._kept_from_state(S(), [8, 8], 2) == [[8, 4], [8, 2]]

    class D:  # `ReductionState.kept_counts`: only pruning layers; earlier layers see every token
        kept_counts = {1: [3, 2], 3: [1, 1]}

    assert E._kept_from_state(D(), [9, 8], 4) == [[9, 3, 3, 1], [8, 2, 2, 1]]
    with pytest.raises(ValueError, match="one entry per sample"):
        E._kept_from_state(S(), [1, 1, 1], 2)
    assert E._kept_from_state(object(), [2, 2], 2) is None


def test_random_drop_reducer_counts_and_resume(tmp_path):
    """With the real hook (common.reduction) and the random-drop baseline at layer 0."""
    from common.baselines.random_drop import RandomDrop

    samples = make_samples(2)
    reducer = RandomDrop(layer=0, budget=Budget.fraction(0.25), seed=0)
    full = _eval(TinyVLM(), samples, tmp_path / "full")
    ref = _eval(TinyVLM(), samples, tmp_path / "ref", reducer=reducer)
    n_frames = [len(s.images) for s in samples]
    assert ref.visual_tokens == pytest.approx(4 * sum(n_frames) / len(samples))  # 25% of 16 per frame
    assert ref.visual_tokens_full == full.visual_tokens_full
    assert ref.key != full.key and ref.config["reducer"]["config"]["budget"]["value"] == 0.25
    assert ref.predictions != full.predictions

    with pytest.raises(KeyboardInterrupt):
        _eval(FailingVLM(fail_after=1), samples, tmp_path, reducer=RandomDrop(layer=0, budget=Budget.fraction(0.25), seed=0))
    resumed = _eval(TinyVLM(), samples, tmp_path, reducer=RandomDrop(layer=0, budget=Budget.fraction(0.25), seed=0))
    assert resumed.n_computed == len(samples) - 4
    assert resumed.predictions == ref.predictions and resumed.metrics == ref.metrics
    other_seed = _eval(TinyVLM(), samples, tmp_path, reducer=RandomDrop(layer=0, budget=Budget.fraction(0.25), seed=1))
    assert other_seed.key != ref.key


def test_reduction_kwargs_reach_the_hook_and_the_key(tmp_path):
    from common.baselines.random_drop import RandomDrop

    samples = [s for s in make_samples(1) if s.family in ("gqa", "pope")]
    red = RandomDrop(layer=1, budget=Budget.fraction(0.25), seed=0)
    orig = _eval(TinyVLM(), samples, tmp_path, reducer=red)
    renum = _eval(TinyVLM(), samples, tmp_path, reducer=red, reduction_kwargs={"positions": "renumber"})
    assert renum.key != orig.key and renum.config["reduction"] == {"positions": "renumber"}
    assert "reduction" not in orig.config  # keys of runs without it are unchanged
    with pytest.raises(ValueError, match="positions"):
        _eval(TinyVLM(), samples, tmp_path / "bad", reducer=red, reduction_kwargs={"positions": "shuffled"})
