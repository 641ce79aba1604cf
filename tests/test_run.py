"""The run layer: one configuration channel, one `Run` per scale, targets, missing inputs, the timer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.paths import CHECKPOINTS
from common.run import (TARGETS, ConfigError, MissingInputs, Run, RunConfig, Timer, UnsupportedScale, run_target,
                        target)
from common.schedule import Budget

TOY = CHECKPOINTS / "toy-llava"


@dataclass(frozen=True)
class Knobs:
    calib_iters: int = 10
    strict: bool = False
    label: str = "x"


# ------------------------------------------------------------------------------------------- config
def test_layers_of_configuration(tmp_path):
    """defaults < config file < environment < flags."""
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"scale": "mini", "n": 7, "batch_size": 4, "options": {"p": {"calib_iters": 3}}}))
    cfg = RunConfig.from_cli(["--config", str(f)], environ={})
    assert (cfg.scale, cfg.n, cfg.batch_size, cfg.n_calib) == ("mini", 7, 4, 16)
    cfg = RunConfig.from_cli(["--config", str(f)], environ={"SCALE": "paper", "MODEL_PATH": "/m"})
    assert cfg.scale == "paper" and cfg.model_path == Path("/m")
    cfg = RunConfig.from_cli(["--config", str(f), "--scale", "toy", "--set", "p.strict=true", "--benchmarks", "gqa,pope"],
                             environ={"SCALE": "paper"})
    assert cfg.scale == "toy" and cfg.benchmarks == ("gqa", "pope")
    assert cfg.options_for("p", Knobs) == Knobs(calib_iters=3, strict=True)


def test_toml_config(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('scale = "paper"\nn = 2\n[options.sparsevlm]\ncalib_iters = 4\n')
    cfg = RunConfig.from_file(f)
    assert cfg.scale == "paper" and cfg.n == 2 and cfg.options_for("sparsevlm", Knobs).calib_iters == 4


@pytest.mark.parametrize("make,match", [
    (lambda p: RunConfig.from_mapping({"scale": "toy", "nn": 3}), r"unknown key\(s\) \['nn'\]"),
    (lambda p: RunConfig(scale="huge"), "scale: expected one of toy, mini, paper"),
    (lambda p: RunConfig(dtype="fp8"), "dtype"),
    (lambda p: RunConfig(batch_size=0), "batch_size"),
    (lambda p: RunConfig(options={"p": {"calib_itres": 3}}).options_for("p", Knobs), r"options.p: unknown key\(s\) \['calib_itres'\]"),
    (lambda p: RunConfig(options={"p": {"calib_iters": "many"}}).options_for("p", Knobs), "options.p.calib_iters: expected int"),
    (lambda p: RunConfig.from_cli(["--set", "nodot=3"], environ={}), "paper.key=value"),
    (lambda p: RunConfig.from_file(p / "missing.toml"), "does not exist"),
])
def test_configuration_errors_name_the_key(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        make(tmp_path)


def test_only_documented_environment_is_read(monkeypatch):
    monkeypatch.setenv("SPARSEVLM_N", "3")  # an old per-paper variable: ignored now
    monkeypatch.setenv("DTYPE", "bf16")
    cfg = RunConfig.from_cli([])
    assert cfg.n is None and cfg.dtype == "bf16"


# ------------------------------------------------------------------------------------------- the run
@pytest.fixture
def toy_run(tmp_path):
    Run.clear_cache()
    cfg = RunConfig(scale="toy", n=2, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    yield Run.for_scale(cfg, paper="testpaper", checkpoint=TOY)
    Run.clear_cache()


def test_toy_run_gives_model_data_reducers_and_writes(toy_run, tmp_path):
    run = toy_run
    assert Run.for_scale(run.cfg, paper="testpaper", checkpoint=TOY) is run  # one per process and config
    assert (run.n_layers, run.n_visual) == (8, 144) and len(run.checkpoint_hash) == 64
    samples = run.samples(["gqa", "pope"], n=run.n(default=40))
    assert [s.family for s in samples] == ["gqa", "pope", "gqa", "pope"]
    red = run.reducer("fastv", Budget.paper(64))
    assert red.K == 1 and red.budget.keep(144) == 16  # K = 2 of 32 on 8 layers, at least 1
    res = run.evaluate(samples, red, max_new_tokens=4)
    assert res.visual_tokens < 144 and set(res.metrics) == {"gqa", "pope"}
    assert "scale: toy" in run.title("T") and "toy-llava" in run.title("T")
    run.start("testpaper-table9")
    paths = run.write_table("table9", [{"a": 1.0}], title=run.title("T"))
    side = json.loads(paths["json"].read_text())["provenance"]
    assert side["config"]["scale"] == "toy" and side["inputs"]["checkpoint"] == run.checkpoint_hash
    assert side["command"] == "python -m reports.experiment testpaper-table9"
    assert paths["csv"].parent == tmp_path / "out"
    with pytest.raises(ValueError, match="never written from nothing"):
        run.write_table("empty", [], title="T")


def test_only_rank_zero_writes(toy_run):
    toy_run.rank = 1
    try:
        assert toy_run.write_table("t", [{"a": 1}], title="T") == {}
        assert not (toy_run.out_dir / "t.csv").exists()
    finally:
        toy_run.rank = 0


def test_n_defaults_by_scale(tmp_path):
    toy = Run(RunConfig(scale="toy"), paper="p", checkpoint=TOY)
    paper = Run(RunConfig(scale="paper"), paper="p")
    assert toy.n(40) == 40 and paper.n(40) is None  # paper scale: every sample unless --n
    assert Run(RunConfig(scale="paper", n=3), paper="p").n(40) == 3


def test_paper_scale_names_every_missing_input_at_once(tmp_path):
    (tmp_path / "eval" / "gqa").mkdir(parents=True)
    run = Run(RunConfig(scale="paper", model_path=tmp_path / "nomodel", data_root=tmp_path / "eval"), paper="p")
    with pytest.raises(MissingInputs) as err:
        run.require(["gqa", "pope"])
    msg = str(err.value)
    assert "nomodel/config.json" in msg and "gqa/llava_gqa_testdev_balanced.jsonl" in msg
    assert "pope/llava_pope_test.jsonl" in msg and "pope/val2014/" in msg and "Paper scale" in msg
    with pytest.raises(MissingInputs, match="data_root: not set"):
        Run(RunConfig(scale="paper", model_path=tmp_path), paper="p").require(["gqa"])


def test_timer_measures_and_names_the_device():
    import torch

    t = Timer(torch.device("cpu"))
    times = t.measure(lambda: sum(range(1000)), repeats=3, warmup=1)
    assert len(times) == 3 and all(x >= 0 for x in times) and t.label.startswith("CPU")


# ------------------------------------------------------------------------------------------- targets
def test_targets_run_through_the_run_layer(tmp_path):
    calls = []

    @target("testpaper-table1", paper="testpaper", scales=("toy",), checkpoint=TOY, why_not="needs ToyWorld")
    def table1(run):
        calls.append(run)
        return {}

    try:
        Run.clear_cache()
        run_target("testpaper-table1", RunConfig(out_dir=tmp_path))
        assert calls[0].paper == "testpaper" and calls[0].target_name == "testpaper-table1"
        with pytest.raises(UnsupportedScale, match="scale 'paper' not supported .*needs ToyWorld"):
            run_target("testpaper-table1", RunConfig(scale="paper"))
        with pytest.raises(KeyError, match="unknown target"):
            run_target("testpaper-table0", RunConfig())
    finally:
        TARGETS.unregister("testpaper-table1")
        Run.clear_cache()


def test_dispatcher_exit_codes(tmp_path, capsys):
    from reports.experiment import main

    @target("testpaper-fig1", paper="testpaper", scales=("paper",), kind="figure")
    def fig1(run):
        run.require(["gqa"])
        raise AssertionError("never reached: inputs are missing")

    try:
        Run.clear_cache()
        assert main(["testpaper-fig1", "--scale", "paper", "--data-root", str(tmp_path)]) == 2
        assert "missing inputs" in capsys.readouterr().err
        assert main(["testpaper-fig1", "--scale", "toy"]) == 3
        assert main(["testpaper-fig1", "--scale", "toy", "--kind", "figure", "--skip-unsupported"]) in (0, 2, 3)
    finally:
        TARGETS.unregister("testpaper-fig1")
        Run.clear_cache()


def test_offline_model_folder_reports_missing_local_files(tmp_path):
    """A folder with a config but no processor/tokenizer files is reported as missing local files, never as a
    failed hub download (nothing is downloaded)."""
    from common.models.load import load_vlm

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingInputs) as err:
        load_vlm("paper", tmp_path)
    msg = str(err.value)
    assert "weights" in msg and "preprocessor_config.json" in msg and "tokenizer.json" in msg
    assert "config" not in msg.split("\n")[1] and "huggingface.co" not in msg
    with pytest.raises(MissingInputs, match="is not a folder"):
        load_vlm("paper", tmp_path / "absent")


def test_load_vlm_rejects_unknown_scale_and_missing_checkpoint(tmp_path):
    from common.models.load import load_vlm

    with pytest.raises(ValueError, match="^scale"):
        load_vlm("huge")
    with pytest.raises(FileNotFoundError, match="^checkpoint"):
        load_vlm("toy", tmp_path / "missing")


def test_every_registered_target_is_well_formed():
    from reports.experiment import PAPERS, import_papers

    import_papers()
    assert TARGETS, "no targets registered"
    for name, t in TARGETS.items():
        assert t.paper in PAPERS and name.startswith(t.paper + "-"), name
        assert set(t.scales) <= {"toy", "mini", "paper"} and t.kind in ("table", "figure")
        if "paper" not in t.scales:  # a toy-only artifact says why a GPU user cannot regenerate it
            assert t.why_not, name
