"""The artifact registry and CLI behind every Make target."""
from __future__ import annotations

import pytest

from common import experiment


def test_register_and_run_a_target(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(experiment, "ARTIFACTS", experiment.Registry("artifact"))
    monkeypatch.setattr(experiment, "_import_all_experiments", lambda: None)
    experiment.artifact("demo-table1", scales=("toy", "paper"))(lambda scale: calls.append(scale))
    experiment.artifact("demo-fig1", kind="figure")(lambda scale: calls.append("fig-" + scale))
    assert experiment.main(["demo-table1", "--scale", "paper"]) == 0
    assert experiment.main(["--table-number", "1"]) == 0
    assert experiment.main(["--kind", "figure"]) == 0
    assert calls == ["paper", "toy", "fig-toy"]
    with pytest.raises(SystemExit, match="scale 'paper' not supported"):
        experiment.main(["demo-fig1", "--scale", "paper"])
    with pytest.raises(SystemExit, match="unknown target 'nope'"):
        experiment.main(["nope"])
    with pytest.raises(KeyError, match="already registered"):
        experiment.artifact("demo-table1")(lambda scale: None)
    with pytest.raises(ValueError, match="^kind"):
        experiment.artifact("demo-x", kind="movie")


def test_load_vlm_rejects_unknown_scale_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="^scale"):
        experiment.load_vlm("huge")
    with pytest.raises(FileNotFoundError, match="^checkpoint"):
        experiment.load_vlm("toy", tmp_path / "missing")


def test_every_registered_target_lists():
    experiment._import_all_experiments()  # must not fail with the papers as they are
    for name, art in experiment.ARTIFACTS.items():
        assert name.split("-")[0] in {"sparsevlm", "stf", "atp", "dyrate", "toyworld", "mini", "common"}, name
        assert set(art.scales) <= set(experiment.SCALES)
