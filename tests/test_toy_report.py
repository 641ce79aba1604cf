"""The ToyWorld baseline report (common/toy_report.py) on a tiny random model: no trained checkpoint needed."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from common import toy_report as R
from common.data.toyworld import toyworld_split
from eval_fakes import TinyVLM


@pytest.fixture(scope="module")
def samples():
    return toyworld_split("test", 16, seed=0)  # two per family


def test_blind_samples_are_uniform_and_carry_no_information(samples):
    blind = R.blind_samples(samples)
    colours = {tuple(np.asarray(im).reshape(-1, 3)[0]) for s in blind for im in s.images}
    assert len(colours) == 1  # one colour for every sample: nothing about the sample survives
    for s, b in zip(samples, blind):
        assert len(b.images) == len(s.images) and b.images[0].size == s.images[0].size
        assert np.ptp(np.asarray(b.images[0]).reshape(-1, 3), axis=0).max() == 0
        assert (b.id, b.question, b.answer) == (s.id, s.question, s.answer)
    assert samples[0].meta.get("blind") is None  # originals untouched


def test_report_on_tiny_model(samples, tmp_path):
    vlm = TinyVLM()
    run_key = {"checkpoint": "tiny-random-seed0"}
    kw = dict(run_key=run_key, batch_size=8, cache_dir=tmp_path / "cache",
              max_new_tokens={"caption": 6, "default": 2}, progress=False)
    results = R.run_settings(vlm, samples, **kw)
    assert list(results) == [c for c, _ in R.SETTINGS]
    paths = R.write_report(results, vlm=vlm, out_stem=tmp_path / "toyworld" / "baseline", n_samples=len(samples),
                           data_desc="ToyWorld test split, seed 0", run_key=run_key, seed=0,
                           command="pytest", started=0.0)
    assert {p.name for p in paths.values()} >= {"baseline.csv", "baseline.md", "baseline.json"}

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["family"] for r in rows] == ["gqa", "pope", "textvqa", "count", "scene", "mc", "caption", "video",
                                           "average", "visual tokens / frame", "visual tokens / frame"]
    assert list(rows[0]) == ["family", "metric", "all", "blind", "random 33%", "random 22%", "random 11%"]
    assert rows[1]["metric"].startswith("F1") and rows[6]["metric"] == "CIDEr-D"
    qa = [r for r in rows[:8] if r["family"] != "caption"]
    assert float(rows[8]["all"]) == pytest.approx(sum(float(r["all"]) for r in qa) / 7)
    toy = rows[9]
    # 16 tokens per frame: all and blind keep 16; 192/128/64 of 576 keep round(16 x fraction) per sample
    assert float(toy["all"]) == float(toy["blind"]) == 16.0
    assert 16 > float(toy["random 33%"]) > float(toy["random 22%"]) > float(toy["random 11%"]) > 0
    assert float(rows[10]["all"]) == 576.0

    md = paths["md"].read_text()
    assert "scale: toy" in md and "model: tiny-llava-s0" in md and "ToyWorld test split" in md
    side = json.loads(paths["json"].read_text())
    assert side["provenance"]["inputs"]["checkpoint"] == "tiny-random-seed0"
    assert set(side["provenance"]["results"]) == set(results)

    # a re-run is served from the cache and gives a byte-identical CSV
    csv_bytes = paths["csv"].read_bytes()
    again = R.run_settings(TinyVLM(), samples, **kw)
    assert all(r.n_computed == 0 for r in again.values())
    R.write_report(again, vlm=vlm, out_stem=tmp_path / "toyworld" / "baseline", n_samples=len(samples),
                   data_desc="ToyWorld test split, seed 0", run_key=run_key, seed=0, command="pytest", started=0.0)
    assert paths["csv"].read_bytes() == csv_bytes


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: .* has no trained toy model"):
        R.main(["--checkpoint", str(tmp_path / "nope"), "--quiet"])


def test_hash_checkpoint(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"123")
    (tmp_path / "card.json").write_text("{}")
    h = R.hash_checkpoint(tmp_path)
    assert h == R.hash_checkpoint(tmp_path)
    (tmp_path / "_train").mkdir()
    (tmp_path / "_train" / "state.pt").write_bytes(b"resumable state")
    assert R.hash_checkpoint(tmp_path) == h  # training state is not the model
    (tmp_path / "card.json").write_text("{ }")
    assert R.hash_checkpoint(tmp_path) != h
    with pytest.raises(FileNotFoundError):
        R.hash_checkpoint(tmp_path / "empty")


def test_main_with_a_fresh_toy_checkpoint(tmp_path):
    """The CLI path end to end (load, hash, evaluate, write) on an untrained, shrunken `ToyVLM`."""
    from common.models.toy import ToyConfig, ToyVLM

    cfg = ToyConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64, text_hidden=32,
                    text_layers=2, text_heads=2, text_intermediate=64)
    ToyVLM.fresh(cfg, seed=0).save(tmp_path / "ckpt", card={"note": "untrained"})
    paths = R.main(["--checkpoint", str(tmp_path / "ckpt"), "--n", "8", "--out", str(tmp_path / "out" / "baseline"),
                    "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 8 + 3 and float(rows[-2]["random 11%"]) == pytest.approx(16.0)  # 64/576 of 144
    side = json.loads(paths["json"].read_text())
    assert side["provenance"]["inputs"]["checkpoint"] == R.hash_checkpoint(tmp_path / "ckpt")
    assert "model: toy-llava" in paths["md"].read_text()
