"""The cross-paper entry points in `reports/`: the methods table takes its rows from the reducer registry (a
baseline registered in this file alone appears in it), the entry points take the run flags, and the old
`common/` entry scripts are gone."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from common.models.tiny import tiny_llava
from common.models.toy import ToyConfig, ToyVLM
from common.reduction import ReductionContext, Reducer, Selection
from common.registry import REDUCERS, register
from common.run import Run, RunConfig
from common.schedule import Budget
from reports import bench_reduction, methods

TINY = ToyConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64, text_hidden=32,
                 text_layers=2, text_heads=2, text_intermediate=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "ckpt"
    ToyVLM.fresh(TINY, seed=0).save(path, card={"note": "untrained"})
    return path


@pytest.fixture
def norm_test():
    """A throwaway baseline known to nothing but the registry: keep the visual tokens of largest norm."""

    @register("norm-test")
    class NormTest(Reducer):
        takes_budget = True

        def __init__(self, layer: int = 0, budget: Budget = Budget.pruned(0.5)):
            self.layers, self.budget = (layer,), Budget.coerce(budget)

        def select(self, ctx: ReductionContext) -> Selection:
            keep = []
            for b in range(ctx.batch_size):
                norms = ctx.visual_hidden(b).float().norm(dim=-1)
                keep.append(torch.sort(norms.topk(self.budget.keep(ctx.n_visual[b])).indices).values)
            return Selection(keep)

    try:
        yield NormTest
    finally:
        REDUCERS.unregister("norm-test")


def test_a_baseline_registered_alone_appears_in_the_toy_methods_table(checkpoint, tmp_path, norm_test):
    torch.set_num_threads(1)
    Run.clear_cache()
    cfg = RunConfig(scale="toy", model_path=checkpoint, n=1, n_calib=2, batch_size=8, out_dir=tmp_path / "out",
                    cache_dir=tmp_path / "cache")
    run = Run.for_scale(cfg, paper="toyworld")
    paths = methods.methods_report(run, budgets=(128, 64), command="pytest")
    rows = {r["setting"]: r for r in csv.DictReader(paths["csv"].open())}
    assert paths["csv"] == tmp_path / "out" / "methods.csv"
    assert {"all", "blind", "FastV 64", "ToMe 64", "random 64"} <= set(rows)
    assert ["norm-test 128", "norm-test 64"] == [s for s in rows if s.startswith("norm-test")]
    # it kept its budget: 64 of 576 -> 16 of 144 tokens per frame (128 -> 32), from its layer (0) on
    assert float(rows["norm-test 64"]["tokens kept"]) == pytest.approx(16.0)
    assert float(rows["norm-test 64"]["avg tokens/layer"]) == pytest.approx(16.0)
    assert float(rows["norm-test 128"]["tokens kept"]) == pytest.approx(32.0)
    assert 0.0 <= float(rows["norm-test 64"]["score"]) <= 100.0
    side = json.loads(paths["json"].read_text())["provenance"]
    assert "norm-test 64" in side["config"]["settings"] and side["config"]["calibrate_on"] == "gqa"
    assert "7 test samples" in paths["md"].read_text()  # --n 1 per QA family


def test_methods_rows_follow_the_registry(norm_test):
    labels = [s.label for s in methods.settings(budgets=(192,))]
    assert labels[:2] == ["all", "blind"] and "norm-test 192" in labels
    assert labels.index("FastV 192") < labels.index("norm-test 192")  # registration order
    REDUCERS.unregister("norm-test")
    assert "norm-test 192" not in [s.label for s in methods.settings(budgets=(192,))]


def test_methods_cli_refuses_the_paper_scale(tmp_path, capsys):
    assert methods.main(["--scale", "paper", "--out-dir", str(tmp_path), "--quiet"]) == 3
    assert "not supported" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_bench_reduction_times_fastv_from_the_registry(tmp_path):
    torch.set_num_threads(1)
    Run.clear_cache()
    run = Run.for_scale(RunConfig(device="cpu", out_dir=tmp_path), paper=bench_reduction.PAPER)
    small = tiny_llava(num_layers=4, image_size=336, patch=14, vocab=256)  # 576 visual tokens, a cheap decoder
    rows = bench_reduction.bench(run, repeats=1, warmup=0, model=small)
    assert [r["setting"] for r in rows] == ["keep all (576)", "FastV K=2 keep 192", "FastV K=2 keep 128",
                                           "FastV K=2 keep 64"]
    assert [r["kept_visual"] for r in rows] == [576, 192, 128, 64]
    assert all(r["prefill_ms"] > 0 for r in rows)
    assert 1 < rows[1]["predicted_speedup"] < rows[2]["predicted_speedup"] < rows[3]["predicted_speedup"]
    paths = bench_reduction.write(run, rows, 1, "pytest")
    assert "CPU (1 torch threads)" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["provenance"]["config"]["timer"] == "CPU (1 torch threads)"


@pytest.mark.parametrize("old", ["toy_report", "mini_report", "flops_tables", "bench_reduction"])
def test_the_entry_points_left_common(old):
    assert importlib.util.find_spec(f"common.{old}") is None
