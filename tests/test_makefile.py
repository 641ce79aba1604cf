"""Every registered table/figure has a Make target, and every artifact target in the Makefile is registered."""
from __future__ import annotations

import re
from pathlib import Path

from common.run import TARGETS
from reports.experiment import import_papers

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def _artifact_targets() -> set[str]:
    text = MAKEFILE.read_text().replace("\\\n", " ")
    names: set[str] = set()
    for var in re.findall(r"^[A-Z]+_ARTIFACTS := (.+)$", text, flags=re.M):
        names.update(t for t in var.split() if not t.startswith("$("))
    return names


def test_every_registered_artifact_has_a_make_target():
    import_papers()
    registered = set(TARGETS)
    in_make = _artifact_targets()
    assert registered - in_make == set(), "registered but no Make target"
    assert in_make - registered == set(), "Make target without a registered artifact"
