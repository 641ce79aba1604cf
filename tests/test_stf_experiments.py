"""papers.stf.experiments: Table 1 golden against the paper's structure, and every table/figure rendered from
fake evaluation results (no trained variant needed), plus the missing-checkpoint message."""
from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import mean

import pytest

import papers.stf.train as T
from common.experiment import ARTIFACTS
from papers.stf import experiments as E
from papers.stf import reported as R

FAKE_TOKENS = {v: n for v, n in (("baseline", 144), ("mbtf", 144), ("stf", 36), ("mbtf-stf", 36),
                                 ("avgpool", 36), ("tokenconcat", 36), ("mbtf-avgpool", 36),
                                 ("mbtf-tokenconcat", 36), ("mbtf-stf-k2-e2", 72), ("mbtf-stf-k3-e1", 16),
                                 ("mbtf-stf-k3-e3", 48), ("mbtf-stf-k4-e4", 36), ("mbtf-stf-k4-e8", 72))}


@dataclass
class FakeResult:
    metrics: dict
    ids: list
    predictions: list


def fake_evaluator(variant: str):
    """Scores 50 + 2 i + (index of the variant), predictions: the reference, or 'zzz' for MBTF+STF's counts."""
    base = list(FAKE_TOKENS).index(variant)
    metrics = {f: {"score": 50.0 + 2 * i + base} for i, f in enumerate(E.FAMILIES)}
    samples = E.test_samples()
    preds = ["zzz" if variant == "mbtf-stf" and s.family == "count" else s.answer for s in samples]
    return FakeResult(metrics, [s.id for s in samples], preds), {"visual_tokens": FAKE_TOKENS[variant],
                                                                 "weights_sha256": "f" * 64}


def test_registered_targets():
    assert {"stf-table1", "stf-table2", "stf-table3", "stf-table4", "stf-table5", "stf-table5-controlled",
            "stf-fig1", "stf-fig3"} <= set(ARTIFACTS)
    assert ARTIFACTS["stf-fig1"].kind == ARTIFACTS["stf-fig3"].kind == "figure"
    for target, variants in E.table_variants().items():
        assert variants and set(variants) <= set(T.VARIANTS), target


def test_table1_golden_against_the_paper(tmp_path):
    E.table1(out=tmp_path)
    rows = json.loads((tmp_path / "table1.json").read_text())["rows"]
    paper = [r for r in rows if r["scale"] == "LLaVA-1.5-7B"]
    assert [(r["module"], r["layer"], r["output size"], r["kernel"], r["stride"], r["act"]) for r in paper] \
        == list(R.TABLE1)
    assert all(r["output size"] == r["paper output size"] and r["act"] == r["paper act"] for r in paper)
    assert sum(r["params"] for r in paper if r["module"] == "MBTF") == R.TABLE1_PARAMS["MBTF"] == 37_753_856
    assert sum(r["params"] for r in paper if r["module"] == "STF") == R.TABLE1_PARAMS["STF (paper)"]
    toy = [r for r in rows if r["scale"] == "toy"]
    assert [r["output size"] for r in toy] == ["12x12x512", "12x12x128", "6x6x512", "6x6x512", "6x6x128"]
    prows = json.loads((tmp_path / "table1_params.json").read_text())["rows"]
    llava = {(r["kind"], r["variant"]): r for r in prows if r["scale"] == "LLaVA-1.5-7B"}
    assert llava[("stf", "paper")]["params (rounded)"] == "151.0M"
    assert llava[("stf", "code")]["params (rounded)"] == "134.2M"
    for r in llava.values():
        assert r["stf.md §3.6 params"] in (None, r["params"])
        assert round(r["LLM GFLOPs (2 N_v P)"] / 1e3, 1) == r["paper TFLOPs"]  # 7.6 / 1.9
    assert (tmp_path / "table1.md").read_text().count("| LLaVA-1.5-7B |") == 5


def test_comparison_tables_put_paper_beside_toy(tmp_path):
    rows = E.comparison_table("stf-table3", "table3", "t3", E.T3, R.TABLE3, R.TABLE3_AVG,
                              evaluator=fake_evaluator, out=tmp_path)
    by = {r["method"]: r for r in rows}
    mb = by["MBTF"]
    assert mb["toy variant"] == "mbtf" and mb["toy tokens"] == 144 and mb["paper GQA"] == 63.2
    assert mb["paper Avg."] == 66.6 and mb["paper TFLOPs"] == 7.6
    assert mb["toy mean"] == round(mean(50.0 + 2 * i + 1 for i in range(len(E.FAMILIES))), 2)
    # LLM FLOPs over the vision tokens are linear in the token count: 144 vs 36 tokens -> 4x
    assert by["LLaVA-1.5 (baseline)"]["toy LLM MFLOPs"] == pytest.approx(4 * by["STF"]["toy LLM MFLOPs"], rel=1e-3)
    md = (tmp_path / "table3.md").read_text()
    assert "toy scale" in md and R.MODEL.split(" (")[0] in md
    rows4 = E.comparison_table("stf-table4", "table4", "t4", E.T4, R.TABLE4, R.TABLE4_AVG,
                               evaluator=fake_evaluator, out=tmp_path)
    k8 = [r for r in rows4 if r["method"].startswith("k=8")]
    assert len(k8) == 2 and all(r["toy variant"] == "-" and "gqa" not in r for r in k8)
    assert [r["paper Avg."] for r in k8] == [62.1, 61.5]
    k3 = [r for r in rows4 if r["method"].startswith("k=3")]
    assert [r["toy tokens"] for r in k3] == [16, 48] and all(r["paper TFLOPs"] is None for r in k3)
    rows2 = E.comparison_table("stf-table2", "table2", "t2", E.T2, R.TABLE2, R.TABLE2_AVG,
                               evaluator=fake_evaluator, out=tmp_path)
    assert len(rows2) == len(R.TABLE2) and [r["toy variant"] for r in rows2].count("-") == len(R.TABLE2) - 3
    rows5c = E.comparison_table("stf-table5-controlled", "t5c", "t5c", E.T5C, E.T5C_PAPER, E.T5C_AVG,
                                evaluator=fake_evaluator, out=tmp_path)
    assert [r.get("paper Avg.") for r in rows5c] == [None, None, 64.7, None, 65.4, None, 65.6, 66.3]


def test_figures_render_from_fake_results(tmp_path):
    E.fig1(evaluator=fake_evaluator, out=tmp_path)
    assert (tmp_path / "fig1.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "fig1_values.json").read_text())["rows"]
    viz = next(r for r in rows if r["scale"] == "paper" and r["family"] == "VisWiz")
    assert viz["avgpool - full"] == -6.0  # 44.0 vs 50.0, the paper's largest drop
    toy = [r for r in rows if r["scale"] == "toy"]
    assert len(toy) == len(E.FAMILIES) and all(r["avgpool - full"] == 4.0 for r in toy)  # fake offsets 4 vs 0
    E.fig3(evaluator=fake_evaluator, out=tmp_path)
    cases = json.loads((tmp_path / "fig3_cases.json").read_text())["rows"]
    assert [c["family"] for c in cases] == ["textvqa", "textvqa", "count", "count", "gqa", "gqa"]
    count = [c for c in cases if c["family"] == "count"]
    assert all(c["MBTF+STF (36 tokens)"] == "zzz" and c["baseline (144 tokens)"] == c["reference"] for c in count)
    assert (tmp_path / "fig3.png").exists()


def test_missing_variants_name_the_make_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "CHECKPOINTS", tmp_path)
    monkeypatch.delenv("STF_TRAIN_MISSING", raising=False)
    assert E.missing_variants(["baseline", "stf", "baseline"]) == ["baseline", "stf"]
    with pytest.raises(SystemExit, match="make stf-train-baseline stf-train-stf"):
        E.require_variants("stf-table3", ["baseline", "stf"])
    (tmp_path / "stf-stf").mkdir()
    (tmp_path / "stf-stf" / "card.json").write_text("{}")
    assert E.missing_variants(["baseline", "stf"]) == ["baseline"]


def test_real_path_on_tiny_trained_variants(tmp_path, monkeypatch):
    """train_variant -> load_variant -> evaluate -> table/figure, end to end on a tiny toy LLaVA."""
    from common.data.toyworld import toyworld_split
    from common.models.toy import ToyConfig, ToyVLM

    tiny = ToyConfig(vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
                     text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64)
    ToyVLM.fresh(tiny).save(tmp_path / "base", card={"name": "tiny"})
    monkeypatch.setattr(T, "CHECKPOINTS", tmp_path / "ckpt")
    monkeypatch.setattr(E, "OUT", tmp_path / "fig")
    monkeypatch.chdir(tmp_path)  # evaluate's cache (.cache/eval) goes here
    small = toyworld_split("test", 2 * len(E.FAMILIES), seed=0, families=E.FAMILIES)
    monkeypatch.setattr(E, "test_samples", lambda: small)
    fast = T.STFTrainConfig(batch=4, val_per_family=1)
    for v in ("baseline", "avgpool", "mbtf-stf"):
        T.train_variant(v, steps=(1, 1), base=tmp_path / "base", config=fast, progress=False)
    E.table2()
    rows = {r["method"]: r for r in json.loads((tmp_path / "fig" / "table2.json").read_text())["rows"]}
    assert rows["STC (ours) = MBTF+STF"]["toy tokens"] == 36 and rows["LLaVA-1.5 (full tuning)"]["toy tokens"] == 144
    assert all(0 <= rows["LLaVA-1.5 (AvgPool)"][f] <= 100 for f in E.FAMILIES)
    E.fig3()
    assert len(json.loads((tmp_path / "fig" / "fig3_cases.json").read_text())["rows"]) == 6


def test_stage2_length_check_pairs_default_and_long_runs(tmp_path):
    def evaluator(variant, long):
        res, card = fake_evaluator(variant)
        if long:  # the long run scores 10 points more on every family
            res = FakeResult({f: {"score": m["score"] + 10} for f, m in res.metrics.items()}, res.ids, res.predictions)
        return res, {**card, "final_loss": {"2": 0.5 if long else 0.6}}

    E.longer(evaluator=evaluator, out=tmp_path)
    rows = json.loads((tmp_path / "longer.json").read_text())["rows"]
    assert [(r["toy variant"], r["stage-2 steps"]) for r in rows] == [
        (v, s) for v in T.LONG_VARIANTS for s in (T.STFTrainConfig.stage2_steps, T.LONG_STAGE2_STEPS)]
    for short, long in zip(rows[::2], rows[1::2]):
        assert long["toy mean"] - short["toy mean"] == pytest.approx(10)
        assert long["final stage-2 loss"] < short["final stage-2 loss"]
