"""Errors the whole project raises for one kind of problem, so entry points can treat each kind one way."""
from __future__ import annotations

from typing import Sequence


class MissingInputs(FileNotFoundError):
    """Inputs a run needs are absent. The message names every missing file and the layout expected, so one
    run reports all of them at once; entry points turn it into a non-zero exit, never an empty artifact."""

    def __init__(self, missing: Sequence[str], hint: str = ""):
        self.missing = list(missing)
        lines = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(f"missing inputs ({len(self.missing)}):\n{lines}" + (f"\n{hint}" if hint else ""))
