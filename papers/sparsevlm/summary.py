"""The README's claim-by-claim table, computed from the artifacts' JSON sidecars (figures/sparsevlm/*.json).

    python -m papers.sparsevlm.summary            # print the table
    python -m papers.sparsevlm.summary --readme   # rewrite the block between the claims markers of README.md

Each verdict is a fixed rule on our numbers, stated in its row (e.g. "SparseVLM above both baselines"), so
the README cannot drift from the artifacts. Missing artifacts give "not run".
"""
from __future__ import annotations

from pathlib import Path

from common.claims import fmt, load_sidecar, main as claims_main, markdown as claims_markdown, yes
from common.paths import FIGURES

HERE = Path(__file__).resolve().parent
EMPTY = "_No artifacts yet: run `make sparsevlm-table1` ... `sparsevlm-fig8`._"


def claims(folder: Path = FIGURES / "sparsevlm") -> list[tuple[str, str, str, str]]:
    """(claim, paper, ours, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    t1 = load_sidecar(folder, "table1")
    if t1:
        ours = {(r["method"], r["tokens"]): r for r in t1["rows"] if r["source"] == "ours" and r["row"] == "raw"}
        paper = {192: (95.8, 88.1, 88.4), 128: (93.3, 81.9, 80.4), 64: (86.9, 72.1, 70.2)}
        margins = []
        for b in (192, 128, 64):
            s, fv, tm = (ours[(m, b)] for m in ("SparseVLM", "FastV", "ToMe"))
            margin = s["avg %"] - max(fv["avg %"], tm["avg %"])
            margins.append(margin)
            rows.append((f"Table 1, {b} tokens: SparseVLM keeps more of vanilla's accuracy than FastV and ToMe "
                         "(avg % of vanilla: SparseVLM / FastV / ToMe)",
                         " / ".join(map(str, paper[b])),
                         f"{fmt(s['avg %'])} / {fmt(fv['avg %'])} / {fmt(tm['avg %'])}; layer-averaged tokens of 576: "
                         f"{fmt(s['equiv. tokens (of 576)'], 0)} / {fmt(fv['equiv. tokens (of 576)'], 0)} / "
                         f"{fmt(tm['equiv. tokens (of 576)'], 0)}",
                         yes(margin > 0) + " (SparseVLM above both baselines)"))
        rows.append(("Table 1: SparseVLM's margin over the best baseline grows as the budget shrinks (192 -> 64)",
                     "+7.4 / +11.4 / +14.8", " / ".join(f"{m:+.1f}" for m in margins),
                     yes(margins[0] < margins[1] < margins[2]) + " (strictly growing)"))
    t2 = load_sidecar(folder, "table2")
    if t2:
        o = {r["method"]: r for r in t2["rows"] if r["source"] == "ours"}
        s, fv = o["SparseVLM"]["avg acc %"], o["FastV"]["avg acc %"]
        rows.append(("Table 2, video at 93.4% pruning: SparseVLM keeps more of vanilla than FastV (% of vanilla)",
                     "86.5 / 52.1", f"{fmt(s)} / {fmt(fv)} (vanilla accuracy {fmt(o['Vanilla (Video-LLaVA)']['ToyWorld video acc'])}%)",
                     yes(s > fv)))
    t3 = load_sidecar(folder, "table3")
    if t3:
        for bench in ("TextVQA", "POPE"):
            g = next(r for r in t3["rows"] if r["benchmark"] == f"{bench} TR gain" and r["source"] == "ours")
            p = next(r for r in t3["rows"] if r["benchmark"] == f"{bench} TR gain" and r["source"] == "paper")
            gains = [g[str(t)] for t in (64, 96, 128, 192)]
            rows.append((f"Table 3, {bench}: recycling helps, more as the budget shrinks (gain at 64 / 96 / 128 / 192)",
                         " / ".join(f"{p[str(t)]:+.1f}" for t in (64, 96, 128, 192)),
                         " / ".join(f"{x:+.1f}" for x in gains) + f" (avg {g['avg']:+.1f})",
                         yes(g["avg"] > 0) + " (helps on average); " + yes(gains[0] > gains[-1]) +
                         " (larger at 64 than at 192)"))
    t4 = load_sidecar(folder, "table4")
    if t4:
        o = {r["method"]: r for r in t4["rows"] if r["source"].startswith("ours")}
        s, fv = o["SparseVLM"], o["FastV"]
        rows.append(("Table 4: SparseVLM at 64 saves more FLOPs and KV memory than FastV at 192 (reduction %, "
                     "SparseVLM / FastV)", "FLOPs 84.4 / 76.0; KV 88.9 / 66.7",
                     f"FLOPs {fmt(s['FLOPs red. %'])} / {fmt(fv['FLOPs red. %'])}; KV {fmt(s['KV red. %'])} / {fmt(fv['KV red. %'])}",
                     yes(s["FLOPs red. %"] > fv["FLOPs red. %"] and s["KV red. %"] > fv["KV red. %"])))
        rows.append(("Table 4: SparseVLM at 64 is faster than FastV at 192 (time reduction %, SparseVLM / FastV)",
                     "53.9 / 30.7 (A100, CUDA time)",
                     f"total {fmt(s['time red. %'])} / {fmt(fv['time red. %'])}; prefill {fmt(s['prefill red. %'])} / "
                     f"{fmt(fv['prefill red. %'])} ({_timer(t4)}, batch 1)",
                     yes(s["time red. %"] > fv["time red. %"] and s["time red. %"] > 0)))
    f4 = load_sidecar(folder, "fig4")
    if f4:
        gaps = list(f4["provenance"]["claims"].values())[0]
        mean = {b: sum(v) / len(v) for b, v in gaps.items()}
        rows.append(("Fig. 4 (toy model only; the paper: Mini-Gemini): SparseVLM above FastV across budgets "
                     "(mean gap over 448..64 tokens)", "+10.2 to +21.6",
                     "; ".join(f"{b} {m:+.1f}" for b, m in mean.items()), yes(all(m > 0 for m in mean.values()))))
    f5 = load_sidecar(folder, "fig5")
    if f5:
        c = f5["provenance"]["claims"]
        a = c["TextVQA raters - text only (paper +0.79)"]
        b = c["POPE raters - all tokens (paper +4.3)"]
        rows.append(("Fig. 5, 142 tokens: raters beat all text tokens on TextVQA", "+0.79", f"{a:+.2f}", yes(a > 0)))
        rows.append(("Fig. 5, 142 tokens: text-aware rating beats all-token rating on POPE", "+4.3", f"{b:+.2f}", yes(b > 0)))
    f7 = load_sidecar(folder, "fig7")
    if f7:
        s = f7["provenance"]["summary"]
        rows.append(("Fig. 7: the image is more redundant than the text (share relevant to the question: "
                     "text / image ROI)", "88% / 38%",
                     f"{fmt(s['raters / text tokens'], 0)}% / {fmt(s['ROI / image'], 0)}% (tokens holding 80% of the raters' "
                     f"attention: {fmt(s['tokens with 80% of rater attention'], 0)}%)",
                     yes(s["ROI / image"] < s["raters / text tokens"])))
    return rows


def _timer(sidecar: dict) -> str:
    """The device Table 4 was timed on (`Run.timer.label`; a sidecar without it was timed on this CPU)."""
    cfg = sidecar["provenance"]["config"]
    return cfg.get("timer") or f"this CPU, {cfg.get('threads')} thread(s)"


def markdown(folder: Path = FIGURES / "sparsevlm") -> str:
    return claims_markdown(claims(folder), EMPTY)


if __name__ == "__main__":
    claims_main(claims, HERE / "README.md", FIGURES / "sparsevlm", EMPTY, __doc__.splitlines()[0])
