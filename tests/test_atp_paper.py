"""ATP at paper scale on a tiny random llava-hf LLaVA with 576 visual tokens and fixture files in LLaVA's formats:
the LLaVA-665k training recipe (2 steps, bf16 autocast, activation checkpointing, resumed after an interruption),
Table 1 end to end through `common.run.run_target`, and missing inputs named before any work."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import papers.atp.experiments  # noqa: F401  (registers the atp-* targets)
import papers.atp.train as AT
import papers.sparsevlm.method  # noqa: F401  (Table 1's SparseVLM rows come from the registry)
from common.models.tiny import save_tiny_llava_hf
from common.run import MissingInputs, Run, RunConfig, run_target
from papers.atp.runs import MAIN, Options
from tests.paper_fixtures import write_eval_benchmarks, write_llava_instruct

TINY = {"train_steps": 2, "train_batch": 2, "grad_accum": 1, "train_limit": 4, "hidden": 16, "n_val": 1,
        "bf16": False, "grad_checkpointing": False, "calib_iters": 2, "save_every": 1}


@pytest.fixture(scope="module")
def paper_setup(tmp_path_factory):
    """(model folder, data root): 8 decoder layers, so the paper's module layers 4, 14, 24 map to 1, 4, 6."""
    root = tmp_path_factory.mktemp("atp-paper")
    model = save_tiny_llava_hf(root / "llava-tiny-hf", num_layers=8, n_visual=576)
    data = root / "data"
    write_eval_benchmarks(data)
    write_llava_instruct(data)
    return model, data


def paper_run(model, data, tmp_path, benchmarks=("gqa", "mme", "vqav2"), **options) -> RunConfig:
    return RunConfig(scale="paper", model_path=model, data_root=data, train_root=data, benchmarks=benchmarks,
                     out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", n=2, n_calib=1, batch_size=4,
                     options={"atp": {**TINY, **options}})


@pytest.fixture(autouse=True)
def _fresh_runs():
    Run.clear_cache()
    yield
    Run.clear_cache()


class Interrupted(Exception):
    pass


def test_recipe_trains_two_steps_and_resumes_to_the_same_run(paper_setup, tmp_path, monkeypatch):
    model, data = paper_setup
    run = Run.for_scale(paper_run(model, data, tmp_path), paper="atp")
    opts = run.options(Options)
    opts = type(opts)(**{**opts.__dict__, "bf16": True, "grad_checkpointing": True})
    whole = AT.train_paper(run, MAIN, tmp_path / "whole", opts)
    card = AT.load_atp(whole)[1]
    assert card["steps"] == 2 and card["recipe"]["bf16"] and card["recipe"]["grad_checkpointing"]
    assert card["conversations"] == 4 and len(card["mean_kept"]) == 3  # text-only entries skipped

    real = AT.sft_batch_fn
    calls = {"n": 0}

    def interrupted_once(*args, **kwargs):
        fn = real(*args, **kwargs)
        calls["n"] += 1

        def batch_fn(step):
            if calls["n"] == 1 and step == 1:
                raise Interrupted
            return fn(step)
        return batch_fn

    monkeypatch.setattr(AT, "sft_batch_fn", interrupted_once)
    with pytest.raises(Interrupted):
        AT.train_paper(run, MAIN, tmp_path / "resumed", opts)
    assert (tmp_path / "resumed" / AT.STATE).exists() and not AT.is_trained(tmp_path / "resumed")
    AT.train_paper(run, MAIN, tmp_path / "resumed", opts)  # picks up after step 1
    for name in ("atp.safetensors", "decoder.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_table1_end_to_end_at_paper_scale(paper_setup, tmp_path):
    model, data = paper_setup
    out = run_target("atp-table1", paper_run(model, data, tmp_path, train_steps=1, train_batch=1, train_limit=2))
    text = out["csv"].read_text().splitlines()
    assert text[0].startswith("method,paper tokens,avg tokens (paper)") and "gqa,mme,vqav2" in text[0]
    assert len(text) == 1 + 9  # unpruned, FastV x2, SparseVLM x2, random, fixed 2/3, ATP 144 / 88
    runs = tmp_path / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["atp-paper-144-finetune", "atp-paper-144-fixed-162-54-18",
                                                      "atp-paper-88-finetune"]
    fastv = [line for line in text if line.startswith("FastV")]
    assert fastv[0].split(",")[2] == "191.88"  # K=1 of 8 keeps 177 of 576 from layer 1: average 192 of 576


def test_missing_benchmark_file_is_named_before_any_work(paper_setup, tmp_path):
    model, data = paper_setup
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "gqa" / "llava_gqa_testdev_balanced.jsonl").unlink()
    with pytest.raises(MissingInputs) as err:
        run_target("atp-table1", paper_run(model, broken, tmp_path))
    assert err.value.missing == [f"gqa: missing {broken / 'gqa' / 'llava_gqa_testdev_balanced.jsonl'}"]
    assert "playground/data/eval" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_missing_training_file_is_named_before_any_work(paper_setup, tmp_path):
    model, data = paper_setup
    empty = tmp_path / "train"
    empty.mkdir()
    cfg = paper_run(model, data, tmp_path).replace(train_root=empty)
    with pytest.raises(MissingInputs) as err:
        run_target("atp-table1", cfg)
    assert len(err.value.missing) == 1 and "llava_v1_5_mix665k.json" in err.value.missing[0]
    assert "coco/train2017" in err.value.missing[0]  # the image layout expected
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
