"""papers.stf.experiments at toy scale: Table 1 golden against the paper's structure, every table/figure rendered
from fake evaluations of trained variants (no training needed), the missing-variant error, and the real path on
tiny trained variants (train -> load -> evaluate -> table)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from statistics import mean

import pytest
from transformers import AutoConfig

import papers.stf.train as T
from common.flops import DecoderDims, stf_flops
from common.models.toy import ToyConfig, ToyVLM
from common.paths import REPO_ROOT
from common.run import TARGETS, MissingInputs, Run, RunConfig, run_target
from papers.stf import experiments as E
from papers.stf import reported as R
from papers.stf.variants import VARIANTS, variant_dir

FAKE_TOKENS = {v: n for v, n in (("baseline", 144), ("mbtf", 144), ("stf", 36), ("mbtf-stf", 36),
                                 ("avgpool", 36), ("tokenconcat", 36), ("mbtf-avgpool", 36),
                                 ("mbtf-tokenconcat", 36), ("mbtf-stf-k2-e2", 72), ("mbtf-stf-k3-e1", 16),
                                 ("mbtf-stf-k3-e3", 48), ("mbtf-stf-k4-e4", 36), ("mbtf-stf-k4-e8", 72))}
N = 4  # samples per family in the fake runs (the scores are fake; only fig3 reads the samples)


@pytest.fixture(autouse=True)
def _fresh_runs():
    Run.clear_cache()
    yield
    Run.clear_cache()


class FakeResult:
    def __init__(self, ids, predictions):
        self.ids, self.predictions = ids, predictions


def fake_evaluated(run, name, samples, offset: float = 0.0) -> E.Evaluated:
    """Scores 50 + 2 i + (index of the variant) + offset; predictions: the reference, or 'zzz' for MBTF+STF's counts."""
    base = list(FAKE_TOKENS).index(name)
    scores = {f: 50.0 + 2 * i + base + offset for i, f in enumerate(E.layout(run).families)}
    preds = ["zzz" if name == "mbtf-stf" and s.family == "count" else s.answer for s in samples]
    dims = DecoderDims.from_config(AutoConfig.from_pretrained(run.checkpoint))
    tokens = FAKE_TOKENS[name]
    return E.Evaluated(scores, tokens, stf_flops(tokens, dims), FakeResult([s.id for s in samples], preds), "f" * 64)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A toy RunConfig whose variants folder holds finished cards for every variant, evaluated by `fake_evaluated`
    (a (variant, long) key scores 10 points more when long)."""
    root = tmp_path / "variants"
    for v in FAKE_TOKENS:
        for folder in (variant_dir(root, v), T.long_dir(v, root)):
            folder.mkdir(parents=True)
            (folder / "card.json").write_text(json.dumps({"final_loss": {"2": 0.5 if "long" in folder.name else 0.6}}))

    def evaluate_folders(run, folders, samples):
        return {k: fake_evaluated(run, k[0] if isinstance(k, tuple) else k, samples,
                                  10.0 if isinstance(k, tuple) and k[1] else 0.0) for k in folders}

    monkeypatch.setattr(E, "evaluate_folders", evaluate_folders)
    return RunConfig(n=N, out_dir=tmp_path / "fig", cache_dir=tmp_path / "cache",
                     options={"stf": {"variants_root": str(root)}})


def rows_of(cfg, stem):
    return json.loads((cfg.out_dir / f"{stem}.json").read_text())["rows"]


def test_registered_targets():
    names = {"stf-table1", "stf-table2", "stf-table3", "stf-table4", "stf-table5", "stf-table5-controlled",
             "stf-fig1", "stf-fig3", "stf-longer"}
    assert names <= set(TARGETS)
    assert TARGETS["stf-fig1"].kind == TARGETS["stf-fig3"].kind == "figure"
    assert all(TARGETS[n].scales == ("toy", "paper") for n in names - {"stf-longer"})
    assert TARGETS["stf-longer"].scales == ("toy",) and TARGETS["stf-longer"].why_not
    assert TARGETS["stf-table3"].checkpoint == T.BASE_CHECKPOINT
    for scale in ("toy", "paper"):
        for name, variants in E.table_variants(scale).items():
            assert variants and set(variants) <= set(VARIANTS), (scale, name)
    assert "mbtf-stf-k8-e16" in E.table_variants("paper")["stf-table4"]
    assert "mbtf-stf-k8-e16" not in E.table_variants("toy")["stf-table4"]


def test_table1_golden_against_the_paper(tmp_path):
    cfg = RunConfig(out_dir=tmp_path, cache_dir=tmp_path / "cache")
    run_target("stf-table1", cfg)
    rows = rows_of(cfg, "table1")
    paper = [r for r in rows if r["scale"] == "LLaVA-1.5-7B"]
    assert [(r["module"], r["layer"], r["output size"], r["kernel"], r["stride"], r["act"]) for r in paper] \
        == list(R.TABLE1)
    assert all(r["output size"] == r["paper output size"] and r["act"] == r["paper act"] for r in paper)
    assert sum(r["params"] for r in paper if r["module"] == "MBTF") == R.TABLE1_PARAMS["MBTF"] == 37_753_856
    assert sum(r["params"] for r in paper if r["module"] == "STF") == R.TABLE1_PARAMS["STF (paper)"]
    toy = [r for r in rows if r["scale"] == "toy"]  # read from checkpoints/toy-llava-v1/config.json
    assert [r["output size"] for r in toy] == ["12x12x512", "12x12x128", "6x6x512", "6x6x512", "6x6x128"]
    prows = rows_of(cfg, "table1_params")
    llava = {(r["kind"], r["variant"]): r for r in prows if r["scale"] == "LLaVA-1.5-7B"}
    assert llava[("stf", "paper")]["params (rounded)"] == "151.0M"
    assert llava[("stf", "code")]["params (rounded)"] == "134.2M"
    for r in llava.values():
        assert r["stf.md §3.6 params"] in (None, r["params"])
        assert round(r["LLM GFLOPs (2 N_v P)"] / 1e3, 1) == r["paper TFLOPs"]  # 7.6 / 1.9
    toy_p = {(r["kind"], r["variant"]): r for r in prows if r["scale"] == "toy"}
    assert toy_p[("mbtf_stf", "paper")]["params"] == 853_760 and toy_p[("mlp", "paper")]["tokens"] == 144
    assert (tmp_path / "table1.md").read_text().count("| LLaVA-1.5-7B |") == 5


def test_comparison_tables_put_paper_beside_toy(fake):
    run_target("stf-table3", fake)
    by = {r["method"]: r for r in rows_of(fake, "table3")}
    mb = by["MBTF"]
    assert mb["toy variant"] == "mbtf" and mb["toy tokens"] == 144 and mb["paper GQA"] == 63.2
    assert mb["paper Avg."] == 66.6 and mb["paper TFLOPs"] == 7.6
    assert mb["toy mean"] == round(mean(50.0 + 2 * i + 1 for i in range(len(E.EVAL_FAMILIES))), 2)
    # LLM FLOPs over the vision tokens are linear in the token count: 144 vs 36 tokens -> 4x; the toy LLM's
    # dimensions come from the checkpoint's config (8 layers of 128, 122-word vocabulary)
    assert by["LLaVA-1.5 (baseline)"]["toy LLM MFLOPs"] == pytest.approx(4 * by["STF"]["toy LLM MFLOPs"], rel=1e-3)
    assert by["LLaVA-1.5 (baseline)"]["toy LLM MFLOPs"] == 495.23
    md = (fake.out_dir / "table3.md").read_text()
    assert "toy scale" in md and "8-layer Llama 128-d" in md and R.MODEL.split(" (")[0] in md
    assert json.loads((fake.out_dir / "table3.json").read_text())["provenance"]["config"]["n_per_family"] == N
    run_target("stf-table4", fake)
    rows4 = rows_of(fake, "table4")
    k8 = [r for r in rows4 if r["method"].startswith("k=8")]
    assert len(k8) == 2 and all(r["toy variant"] == "-" and r.get("gqa") is None for r in k8)
    assert [r["paper Avg."] for r in k8] == [62.1, 61.5]
    k3 = [r for r in rows4 if r["method"].startswith("k=3")]
    assert [r["toy tokens"] for r in k3] == [16, 48] and all(r["paper TFLOPs"] is None for r in k3)
    run_target("stf-table2", fake)
    rows2 = rows_of(fake, "table2")
    assert len(rows2) == len(R.TABLE2) and [r["toy variant"] for r in rows2].count("-") == len(R.TABLE2) - 3
    run_target("stf-table5-controlled", fake)
    assert [r.get("paper Avg.") for r in rows_of(fake, "table5_controlled")] == [None, None, 64.7, None, 65.4,
                                                                                  None, 65.6, 66.3]


def test_figures_render_from_fake_results(fake):
    run_target("stf-fig1", fake)
    assert (fake.out_dir / "fig1.png").stat().st_size > 10_000
    rows = rows_of(fake, "fig1_values")
    viz = next(r for r in rows if r["scale"] == "paper" and r["family"] == "VisWiz")
    assert viz["avgpool - full"] == -6.0  # 44.0 vs 50.0, the paper's largest drop
    toy = [r for r in rows if r["scale"] == "toy"]
    assert len(toy) == len(E.EVAL_FAMILIES) and all(r["avgpool - full"] == 4.0 for r in toy)  # fake offsets 4 vs 0
    run_target("stf-fig3", fake)
    cases = rows_of(fake, "fig3_cases")
    assert [c["family"] for c in cases] == ["textvqa", "textvqa", "count", "count", "gqa", "gqa"]
    count = [c for c in cases if c["family"] == "count"]
    assert all(c["MBTF+STF (36 tokens)"] == "zzz" and c["baseline (144 tokens)"] == c["reference"] for c in count)
    assert (fake.out_dir / "fig3.png").exists()


def test_stage2_length_check_pairs_default_and_long_runs(fake):
    run_target("stf-longer", fake)
    rows = rows_of(fake, "longer")
    assert [(r["toy variant"], r["stage-2 steps"]) for r in rows] == [
        (v, s) for v in T.LONG_VARIANTS for s in (T.STFTrainConfig.stage2_steps, T.LONG_STAGE2_STEPS)]
    for short, long in zip(rows[::2], rows[1::2]):
        assert long["toy mean"] - short["toy mean"] == pytest.approx(10)
        assert long["final stage-2 loss"] < short["final stage-2 loss"]


def test_missing_variants_name_the_make_targets(tmp_path):
    root = tmp_path / "variants"
    (root / "stf-stf").mkdir(parents=True)
    (root / "stf-stf" / "card.json").write_text("{}")  # trained; the other three are not
    cfg = RunConfig(n=N, out_dir=tmp_path / "fig", cache_dir=tmp_path / "cache",
                    options={"stf": {"variants_root": str(root)}})
    with pytest.raises(MissingInputs) as err:
        run_target("stf-table3", cfg)
    assert [m.split("/ ")[0] for m in err.value.missing] == [str(root / f"stf-{v}") for v in
                                                              ("baseline", "mbtf", "mbtf-stf")]
    assert "make stf-train-baseline stf-train-mbtf stf-train-mbtf-stf" in str(err.value)
    assert "stf.train_missing=true" in str(err.value)
    assert not (tmp_path / "fig").exists()


def test_real_path_on_tiny_trained_variants(tmp_path):
    """train_variant -> load_variant -> run.evaluate -> table/figure, end to end on a tiny toy LLaVA."""
    tiny = ToyConfig(vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
                     text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64)
    ToyVLM.fresh(tiny).save(tmp_path / "base", card={"name": "tiny"})
    root = tmp_path / "variants"
    fast = T.STFTrainConfig(batch=4, val_per_family=1)
    for v in ("baseline", "avgpool", "mbtf-stf"):
        T.train_variant(v, variant_dir(root, v), steps=(1, 1), base=tmp_path / "base", config=fast, progress=False)
    cfg = RunConfig(model_path=tmp_path / "base", n=2, out_dir=tmp_path / "fig", cache_dir=tmp_path / "cache",
                    options={"stf": {"variants_root": str(root)}})
    run_target("stf-table2", cfg)
    rows = {r["method"]: r for r in rows_of(cfg, "table2")}
    assert rows["STC (ours) = MBTF+STF"]["toy tokens"] == 36 and rows["LLaVA-1.5 (full tuning)"]["toy tokens"] == 144
    assert all(0 <= rows["LLaVA-1.5 (AvgPool)"][f] <= 100 for f in E.EVAL_FAMILIES)
    assert "2-layer Llama 32-d" in (cfg.out_dir / "table2.md").read_text()
    prov = json.loads((cfg.out_dir / "table2.json").read_text())["provenance"]
    assert set(prov["inputs"]) == {"checkpoint", "stf-baseline", "stf-avgpool", "stf-mbtf-stf"}
    run_target("stf-fig3", cfg)
    assert len(rows_of(cfg, "fig3_cases")) == 6


@pytest.mark.parametrize("scale", ["toy", "paper"])
def test_make_trains_what_each_artifact_needs(scale):
    """The Makefile's training prerequisites of every STF artifact are the variants it evaluates at that scale."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name, variants in E.table_variants(scale).items():
        out = subprocess.run(["make", "-n", name, f"SCALE={scale}"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
        assert sorted(re.findall(r"-m papers\.stf\.train (\S+)", out)) == sorted(variants), (scale, name)
