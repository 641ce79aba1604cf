"""ATP experiments: registered targets, transcribed paper numbers (checked against the spec's arithmetic and
common.flops), and the row/budget helpers. The targets themselves need the toy checkpoint (make atp-*); the
paper scale is tests/test_atp_paper.py."""
import pytest

from common import flops as F
from common.run import TARGETS
from papers.atp import reported as R
from papers.atp.experiments import fastv_keep_for_average, score_row
from papers.atp.runs import BASE_CHECKPOINT, MAIN, Options, all_runs, runs_dir


def test_all_targets_registered():
    want = {f"atp-table{i}" for i in range(1, 7)} | {"atp-fig2", "atp-fig4", "atp-ratios"}
    assert want <= set(TARGETS)
    assert TARGETS["atp-fig4"].kind == "figure" and TARGETS["atp-table3"].kind == "table"
    for name in want:  # the committed runs were trained on the first toy model
        assert TARGETS[name].paper == "atp" and TARGETS[name].checkpoint == BASE_CHECKPOINT
        assert set(TARGETS[name].scales) == ({"toy"} if name == "atp-fig2" else {"toy", "paper"})
        assert TARGETS[name].why_not


def test_runs_live_by_scale(tmp_path):
    assert len(all_runs()) == 12 and all_runs()[0] is MAIN and MAIN.name() == "atp-toy-144-finetune"
    assert runs_dir("toy", tmp_path, Options()).name == "checkpoints"
    assert runs_dir("paper", tmp_path, Options()) == tmp_path / "runs"
    assert runs_dir("paper", tmp_path, Options(runs_dir=str(tmp_path / "x"))) == tmp_path / "x"
    assert MAIN.name("paper") == "atp-paper-144-finetune"


def test_table2_averages_reproduce_with_common_flops():
    for _, tokens, _, layers, kept, _ in R.TABLE2[1:]:
        avg = F.average_visual_tokens(F.visual_tokens_per_layer(576, list(layers), list(kept), 32), 32)
        assert avg == R.TABLE2_EXACT_AVG[tuple(kept)] and abs(avg - tokens) < 0.5


def test_transcribed_means_match_the_spec():
    # atp.md §7.2-7.5: four-benchmark means
    assert R.mean(R.TABLE2[4][5]) == pytest.approx(64.80) and R.mean(R.TABLE2[1][5]) == pytest.approx(60.125)
    assert R.mean(R.TABLE3["Frozen"]) == pytest.approx(62.775)
    assert [round(R.mean(v), 3) for v in R.TABLE4.values()] == [64.8, 63.8, 62.675, 63.75]
    assert round(R.mean(R.TABLE5["both"]) - R.mean(R.TABLE5["self only"]), 3) == 0.425
    # Table 1: ATP-144's retention printed 98.1; the mean of its per-benchmark retentions is 98.0 (A17)
    up, atp = R.TABLE1[("LLaVA-1.5", 576)], R.TABLE1[("ATP-LLaVA", 144)]
    assert round(sum(a / u for a, u in zip(atp, up)) / 7 * 100, 1) == 98.0
    # Table 6: storage = 0.525 MB x tokens
    for (name, tok), (_, mb, _, _) in R.TABLE6.items():
        assert mb == pytest.approx(F.kv_cache_mb(tok, mb_per_token=F.PAPER_KV_MB_PER_TOKEN))


def test_fastv_keep_for_average():
    assert fastv_keep_for_average(144, 576, 2, 32) == 115  # atp.md §9: 115.2
    assert fastv_keep_for_average(48, 144, 1, 8) == 34  # (384 - 144) / 7 = 34.3
    with pytest.raises(ValueError, match="avg"):
        fastv_keep_for_average(10, 144, 4, 8)


class _Res:
    def __init__(self, scores, tokens):
        self.metrics = {f: {"score": v} for f, v in scores.items()}
        self.visual_tokens = tokens


def test_score_row_retention_and_paper_equivalent_tokens():
    up = _Res({"gqa": 80.0, "count": 50.0}, 144)
    res = _Res({"gqa": 60.0, "count": 50.0}, 36)
    row = score_row("x", res, up, 144)
    assert row["paper-equiv. tokens"] == 144.0 and row["mean"] == 55.0 and row["retention %"] == 87.5
