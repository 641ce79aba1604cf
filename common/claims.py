"""A paper README's claim-by-claim block, generated from artifact sidecars so the README cannot drift from them.

Each paper's `summary.py` reads its `figures/<paper>/*.json` and returns `Claim` rows whose verdicts are fixed
rules stated in the row; this module renders them and rewrites the block between the markers of the README.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from common.artifacts import atomic_write_text

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"


@dataclass(frozen=True)
class Claim:
    """One row: what the paper says, its number, ours, and the verdict with the rule that produced it."""

    claim: str
    paper: str
    ours: str
    verdict: str


def load_sidecar(folder: Path, stem: str) -> dict | None:
    """`folder/stem.json` (an artifact's data + provenance), or None when the artifact was not generated."""
    p = folder / f"{stem}.json"
    return json.loads(p.read_text()) if p.exists() else None


def fmt(x: Any, digits: int = 1) -> str:
    """A number for a claim cell ("n/a" for None / NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(rows: Sequence[Claim | tuple[str, str, str, str]], empty: str) -> str:
    """The claims table (or `empty`, a hint naming the targets to run, when no artifact exists yet)."""
    if not rows:
        return empty
    lines = ["| claim | paper | ours (toy scale) | reproduced? |", "|---|---|---|---|"]
    for r in rows:
        c, p, o, v = (r.claim, r.paper, r.ours, r.verdict) if isinstance(r, Claim) else r
        lines.append(f"| {c} | {p} | {o} | {v} |")
    return "\n".join(lines)


def update_readme(readme: Path, body: str) -> None:
    """Replace the text between BEGIN and END in `readme` by `body` (the markers stay)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"readme: {readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(claims_of: Callable[[Path], Sequence[Claim]], readme: Path, folder: Path, empty: str,
         description: str, argv: Sequence[str] | None = None) -> str:
    """The `python -m papers.<paper>.summary [--readme] [--folder F]` command: print the block, and with --readme
    write it into the paper's README. Returns the block."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--readme", action="store_true", help=f"rewrite the claims block of {readme.name}")
    ap.add_argument("--folder", type=Path, default=folder, help="folder of the artifact sidecars")
    args = ap.parse_args(argv)
    body = markdown(claims_of(args.folder), empty)
    if args.readme:
        update_readme(readme, body)
    print(body)
    return body
