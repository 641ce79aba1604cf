"""The ToyWorld baseline report (reports/toy_report.py) on an untrained, shrunken toy model saved to a
temporary folder: the same path as `make toy-report` (run layer, loader, hasher, evaluation, writer)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from common.data.blind import blind_samples
from common.data.toyworld import toyworld_split
from common.models.load import checkpoint_sha256
from common.models.toy import ToyConfig, ToyVLM
from common.run import Run, RunConfig
from reports import toy_report as R

TINY = ToyConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64, text_hidden=32,
                 text_layers=2, text_heads=2, text_intermediate=64)
MAX_NEW = {"caption": 6, "default": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "ckpt"
    ToyVLM.fresh(TINY, seed=0).save(path, card={"note": "untrained"})
    return path


def _run(checkpoint, tmp_path, **kw) -> Run:
    torch.set_num_threads(1)
    Run.clear_cache()
    cfg = RunConfig(scale="toy", model_path=checkpoint, n=1, batch_size=8, out_dir=tmp_path / "out",
                    cache_dir=tmp_path / "cache", **kw)
    return Run.for_scale(cfg, paper=R.PAPER)


def test_blind_samples_are_uniform_and_carry_no_information():
    samples = toyworld_split("test", 16, seed=0)  # two per family
    blind = blind_samples(samples)
    colours = {tuple(np.asarray(im).reshape(-1, 3)[0]) for s in blind for im in s.images}
    assert len(colours) == 1  # one colour for every sample: nothing about the sample survives
    for s, b in zip(samples, blind):
        assert len(b.images) == len(s.images) and b.images[0].size == s.images[0].size
        assert np.ptp(np.asarray(b.images[0]).reshape(-1, 3), axis=0).max() == 0
        assert (b.id, b.question, b.answer) == (s.id, s.question, s.answer)
    assert samples[0].meta.get("blind") is None  # originals untouched


def test_report_on_tiny_model(checkpoint, tmp_path):
    run = _run(checkpoint, tmp_path)
    paths = R.baseline_report(run, max_new_tokens=MAX_NEW, command="pytest")
    assert {p.name for p in paths.values()} >= {"baseline.csv", "baseline.md", "baseline.json"}
    assert paths["csv"].parent == tmp_path / "out"

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["family"] for r in rows] == ["gqa", "pope", "textvqa", "count", "scene", "mc", "caption", "video",
                                           "average", "visual tokens / frame", "visual tokens / frame"]
    assert list(rows[0]) == ["family", "metric", "all", "blind", "random 33%", "random 22%", "random 11%"]
    assert rows[1]["metric"].startswith("F1") and rows[6]["metric"] == "CIDEr-D"
    qa = [r for r in rows[:8] if r["family"] != "caption"]
    assert float(rows[8]["all"]) == pytest.approx(sum(float(r["all"]) for r in qa) / 7)
    toy = rows[9]
    # 144 tokens per frame: all and blind keep 144; 192/128/64 of 576 keep 48/32/16 per frame
    assert float(toy["all"]) == float(toy["blind"]) == 144.0
    assert [float(toy[c]) for c in ("random 33%", "random 22%", "random 11%")] == [48.0, 32.0, 16.0]
    assert float(rows[10]["all"]) == 576.0 and float(rows[10]["random 11%"]) == 64.0

    md = paths["md"].read_text()
    assert "scale: toy" in md and "model: toy LLaVA" in md and "8 test samples" in md
    side = json.loads(paths["json"].read_text())["provenance"]
    assert side["inputs"]["checkpoint"] == checkpoint_sha256(checkpoint)  # the one hasher
    assert side["command"] == "pytest" and set(side["results"]) == {c for c, _ in R.SETTINGS}
    assert side["config"]["settings"]["random 11%"] == "64/576"

    # a re-run is served from the cache and gives a byte-identical CSV
    csv_bytes = paths["csv"].read_bytes()
    again = R.run_settings(run, run.samples(R.FAMILIES, n=1), max_new_tokens=MAX_NEW)
    assert all(r.n_computed == 0 for r in again.values())
    R.baseline_report(run, max_new_tokens=MAX_NEW, command="pytest")
    assert paths["csv"].read_bytes() == csv_bytes


def test_missing_checkpoint_exits_2_and_writes_nothing(tmp_path, capsys):
    Run.clear_cache()
    rc = R.main(["--model-path", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and "nope does not exist (make toy-model)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_other_scales_exit_3(tmp_path, capsys):
    assert R.main(["--scale", "mini", "--out-dir", str(tmp_path), "--quiet"]) == 3
    assert "not supported" in capsys.readouterr().err


def test_main_takes_the_run_flags(checkpoint, tmp_path):
    """The CLI path end to end; --n is per family, the batch size defaults to 32 (the committed table's)."""
    Run.clear_cache()
    argv = ["--model-path", str(checkpoint), "--n", "1", "--out-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--seed", "3", "--quiet"]
    assert R.main(argv) == 0
    side = json.loads((tmp_path / "out" / "baseline.json").read_text())["provenance"]
    assert side["config"]["run"]["batch_size"] == 32 and side["config"]["n_samples"] == 8
    assert side["seeds"] == {"data": 3, "random_drop": 3}
    assert side["command"] == "python -m reports.toy_report " + " ".join(argv)
