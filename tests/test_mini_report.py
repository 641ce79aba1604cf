"""`make mini-report`'s code on a handful of easy-vqa questions with an untrained projector (16 visual tokens):
every setting runs through the harness, the table is written beside a toy-scale file (or marks it missing),
and the mask and attention figures render on a real photo."""
from __future__ import annotations

import csv

import pytest
import torch

from common.models import mini_parts

MISSING = mini_parts.missing_packages()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"mini packages missing: {'; '.join(MISSING)}")


@pytest.fixture(scope="module")
def vlm():
    from common.models.mini import MiniConfig, MiniVLM

    return MiniVLM.fresh(MiniConfig(pool=4), seed=0)  # 4 x 4 = 16 visual tokens: fast


@pytest.fixture(scope="module")
def results(vlm):
    from common import mini_report as R
    from common.data.easyvqa import easyvqa_split

    torch.set_num_threads(1)
    settings = [R.Setting("all"), R.Setting("blind"), *(R.Setting(m, 64) for m in R.METHODS)]
    return R.run_settings(vlm, easyvqa_split("test", 2, seed=1), easyvqa_split("train", 2, seed=1), scale="mini",
                          run_key={"test": "mini-report"}, settings=settings, cache_dir=None, calib_iters=2,
                          progress=False)


def test_every_setting_keeps_its_budget(results):
    # 64 of 576 -> keep_count = round(16 / 9) = 2 of 16 tokens
    assert results["all"][0].visual_tokens == 16 and results["blind"][0].visual_tokens == 16
    for label in ("FastV 64", "ToMe 64", "random 64", "DyRate (fixed rate) 64"):
        res = results[label][0]
        assert res.visual_tokens_per_layer[-1] == 2.0, label
        assert len(res.predictions) == 2
    # SparseVLM's budget is the layer average (calibrated; 2 bisection steps here, so only roughly)
    assert results["SparseVLM 64"][0].visual_tokens < 16


def test_table_beside_toy_rows(results, vlm, tmp_path):
    from common import mini_report as R

    toy = tmp_path / "toy.csv"
    toy.write_text("setting,score,tokens kept\nall,58.1,144\nFastV 64,40.0,16\n")
    kw = dict(scale="mini", vlm=vlm, data_desc="easy-vqa test, 2 questions", run_key={"test": 1}, seed=0,
              command="pytest", started=0.0)
    paths = R.write(results, out_dir=tmp_path / "a", toy_csv=toy, **kw)
    rows = {r["setting"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert list(rows) == list(results)
    assert rows["all"]["toy score"] == "58.1" and rows["FastV 64"]["toy tokens kept"] == "16.0"
    assert rows["ToMe 64"]["toy score"] == "missing"
    assert rows["FastV 64"]["tokens kept (of 16)"] == "2.0"
    assert rows["SparseVLM 64"]["note"].startswith("scale=")
    missing = R.write(results, out_dir=tmp_path / "b", toy_csv=tmp_path / "none.csv", **kw)
    assert {r["toy score"] for r in csv.DictReader(open(missing["csv"]))} == {"missing"}


def test_figures_render_on_a_real_photo(results, vlm, tmp_path):
    from common import mini_report as R
    from common.data.photos import real_photos

    photo = real_photos(limit=1)
    reds = {"FastV 64": results["FastV 64"][1], "SparseVLM 64": results["SparseVLM 64"][1]}
    masks, titles, answer = R.kept_masks(vlm, photo[0], reds["FastV 64"])
    assert [int(m.sum()) for m in masks] == [16, 2] and titles[1].startswith("L2: 2")
    out = R.mask_figure(vlm, photo, reds, tmp_path / "masks", {"test": 1})
    assert out["png"].stat().st_size > 1000
    out = R.attention_figure(vlm, photo, tmp_path / "att", {"test": 1}, max_new_tokens=3)
    assert out["pdf"].exists()
