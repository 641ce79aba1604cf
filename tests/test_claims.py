"""README claim blocks (common/claims.py, papers/{stf,atp}/summary.py): verdicts follow their stated rules."""
import json

import pytest

from common.claims import BEGIN, END, update_readme
from papers.atp import summary as atp_summary
from papers.stf import summary as stf_summary

FAMS = ("gqa", "pope", "textvqa", "count", "scene", "mc")


def write(folder, stem, rows, config=None):
    (folder / f"{stem}.json").write_text(json.dumps({"rows": rows, "provenance": {"config": config or {}}}))


def stf_row(variant, mean, tokens=36, method=None):
    return {"method": method or variant, "toy variant": variant, "toy tokens": tokens, "toy mean": mean,
            **{f: mean for f in FAMS}}


def test_update_readme_replaces_only_the_block(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n")
    update_readme(p, "new")
    assert p.read_text() == f"head\n{BEGIN}\nnew\n{END}\ntail\n"
    p.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- claims:begin -->"):
        update_readme(p, "x")


@pytest.mark.parametrize("stf_mean, held", [(55.0, "yes"), (50.0, "**no**")])
def test_stf_table3_verdict_follows_the_tie_rule(tmp_path, stf_mean, held):
    write(tmp_path, "table3", [stf_row("baseline", 56.0, 144), stf_row("mbtf", 57.0, 144), stf_row("stf", 54.0),
                               stf_row("mbtf-stf", stf_mean)], {"n_per_family": 40})
    rows = stf_summary.claims(tmp_path)
    first = rows[0]
    assert first.claim.startswith("Table 3: MBTF+STF") and first.verdict.startswith(held)
    mbtf_adds = rows[1].verdict.startswith("yes")
    assert mbtf_adds == (stf_mean > 54.0)


def test_stf_table4_best_setting_and_missing_tables(tmp_path):
    assert stf_summary.claims(tmp_path) == []
    write(tmp_path, "table4", [stf_row("baseline", 60, 144), stf_row("mbtf-stf", 50), stf_row("mbtf-stf-k2-e2", 52, 72)])
    (row,) = stf_summary.claims(tmp_path)
    assert row.verdict.startswith("**no**") and row.ours.index("mbtf-stf-k2-e2") < row.ours.index("mbtf-stf 50")


def test_stf_standard_error_of_a_mean():
    r = {f: 50.0 for f in FAMS}
    assert stf_summary.standard_error(r, 40) == pytest.approx(100 * (6 * 0.25 / 40) ** 0.5 / 6)


def atp_t2(avg144, avg88):
    fixed = [{"method": f"Pre-defined ratio {r}", "avg tokens (toy)": 36.0, "mean": 40.0} for r in ("3/4", "2/3")]
    return fixed + [{"method": "ATP-LLaVA 144", "avg tokens (toy)": avg144, "mean": 50.0},
                    {"method": "ATP-LLaVA 88", "avg tokens (toy)": avg88, "mean": 45.0}]


@pytest.mark.parametrize("avg144, avg88, held", [(37.5, 22.5, True), (38.0, 22.5, False), (36.0, 20.0, False)])
def test_atp_budget_claim_uses_the_5_percent_tolerance(tmp_path, avg144, avg88, held):
    write(tmp_path, "table2", atp_t2(avg144, avg88))
    budget = atp_summary.claims(tmp_path)[0]
    assert budget.claim.startswith("Learned thresholds") and budget.verdict.startswith("yes") == held


def test_atp_adaptivity_claim_reads_the_ratio_spread(tmp_path):
    stats = {"1": {"kept_mean": 0.34, "kept_std": 0.001, "theta_r_std": 0.0, "theta_s_std": 0.0},
             "4": {"kept_mean": 0.1, "kept_std": 0.05, "theta_r_std": 0.02, "theta_s_std": 0.0}}
    (tmp_path / "ratios.json").write_text(json.dumps({"provenance": {"config": {"stats": stats}}}))
    (row,) = atp_summary.claims(tmp_path)
    assert row.verdict.startswith("yes")
    stats["4"]["kept_std"] = 0.01
    (tmp_path / "ratios.json").write_text(json.dumps({"provenance": {"config": {"stats": stats}}}))
    assert atp_summary.claims(tmp_path)[0].verdict.startswith("**no**")


def test_stf_longer_check_reads_the_gap(tmp_path):
    def row(v, n, m):
        return {"toy variant": v, "stage-2 steps": n, "toy mean": m, "textvqa": m}
    write(tmp_path, "longer", [row("baseline", 480, 58), row("baseline", 1440, 59), row("tokenconcat", 480, 45),
                               row("tokenconcat", 1440, 52), row("mbtf-stf", 480, 45), row("mbtf-stf", 1440, 54)])
    (claim,) = stf_summary.claims(tmp_path)
    assert claim.verdict.startswith("yes") and "+13.0 -> +5.0" in claim.ours


@pytest.mark.parametrize("paper", ["sparsevlm", "atp", "stf"])
def test_committed_readme_claim_blocks_match_the_committed_artifacts(paper):
    """Regenerating a paper's artifacts without rewriting its README block (`python -m papers.<paper>.summary
    --readme`) leaves the README claiming numbers the artifacts no longer hold: this catches it."""
    import importlib
    from pathlib import Path

    from common.claims import markdown

    summary = importlib.import_module(f"papers.{paper}.summary")
    readme = (Path(summary.__file__).parent / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown(summary.claims(), summary.EMPTY).strip()


def test_dyrate_readme_shows_the_committed_claims_table():
    """DyRate's claims are an artifact of their own (`make dyrate-claims`); its README must show that table."""
    from common.paths import FIGURES, REPO_ROOT

    table = [ln for ln in (FIGURES / "dyrate" / "claims.md").read_text().splitlines() if ln.startswith("|")]
    readme = (REPO_ROOT / "papers" / "dyrate" / "README.md").read_text()
    assert len(table) > 2 and "\n".join(table) in readme


def _held_of(paper: str) -> tuple[int, int]:
    """(claims that hold, paper claims) as the verdicts state them: a claim holds when every verdict in its
    row is "yes"; our own checks ("Our check ...") are not the paper's claims."""
    import importlib

    from common.claims import Claim
    from common.paths import FIGURES

    if paper == "dyrate":
        rows = json.loads((FIGURES / "dyrate" / "claims.json").read_text())["rows"]
        return sum(r["held"] == "yes" for r in rows), len(rows)
    rows = [r if isinstance(r, Claim) else Claim(*r) for r in importlib.import_module(f"papers.{paper}.summary").claims()]
    rows = [r for r in rows if not r.claim.startswith("Our check")]
    return sum("yes" in r.verdict and "**no**" not in r.verdict for r in rows), len(rows)


@pytest.mark.parametrize("paper", ["sparsevlm", "stf", "atp", "dyrate"])
def test_top_readme_counts_the_claims_the_artifacts_hold(paper):
    """The top README summarises each paper as "N of M claims hold" in two places; after a regeneration
    those sentences drifted once (SparseVLM said 7 of 13 after its README said 6). Keep them tied."""
    import re

    from common.paths import REPO_ROOT

    lines = [ln for ln in (REPO_ROOT / "README.md").read_text().splitlines() if f"papers/{paper}/" in ln]
    counts = [tuple(map(int, m)) for ln in lines for m in re.findall(r"(\d+) of (\d+) claims? holds?", ln)]
    assert counts, f"README.md: no 'N of M claims hold' for {paper}"
    assert set(counts) == {_held_of(paper)}
