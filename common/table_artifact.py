"""Register a Make target whose function only builds one table; the frame around it lives here, once.

Why: every table artifact of the papers wrote out the same frame around its rows: register the Make target,
start the clock before anything loads (so the sidecar's wall time covers loading the model), build the rows,
then `write_table` them under figures/<paper>/ with a title and a provenance sidecar (papers/stf and
papers/dyrate had it once per table). STYLE.md asks that experiment functions return records and that only
`common.artifacts` renders them; with this decorator they return a `Table` and the frame is this module.

    @table_artifact("dyrate-table3")
    def table3(scale: str, started: float) -> Table:
        \"\"\"`make dyrate-table3`: ...\"\"\"
        ctx = _ctx(scale)
        rows = [...]
        return Table(rows, OUT / "table3", title="...", provenance=_prov(ctx, started))

`table3("toy")` (what `python -m common.experiment dyrate-table3` calls) then writes the table and returns
its rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.artifacts import write_table
from common.experiment import artifact

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Table:
    """One table to write: its rows, output path without suffix, title, provenance sidecar, column order.

    `provenance` is `common.artifacts.provenance(...)`'s dict, made with the `started` the builder receives;
    `columns` None means keys in order of first appearance (as `write_table`).
    """

    rows: Rows
    stem: Path
    title: str
    provenance: Mapping[str, Any]
    columns: Sequence[str] | None = None

    def write(self) -> Rows:
        """Write stem.csv / .md / .tex and the .json sidecar (`common.artifacts.write_table`); return the rows."""
        write_table(self.rows, self.stem, title=self.title, columns=self.columns, provenance=self.provenance)
        return self.rows


def table_artifact(target: str, *, scales: tuple[str, ...] = ("toy",)) -> Callable[[Callable[[str, float], Table]],
                                                                                   Callable[[str], Rows]]:
    """Register `build(scale, started) -> Table` as the table generator of Make target `target`.

    The registered function `run(scale="toy")` takes `started = time.time()`, calls `build`, writes the
    `Table` and returns its rows; it keeps `build`'s name and docstring (which opens with the Make target).
    """

    def deco(build: Callable[[str, float], Table]) -> Callable[[str], Rows]:
        def run(scale: str = "toy") -> Rows:
            table = build(scale, time.time())
            if not isinstance(table, Table):
                raise TypeError(f"build: {build.__qualname__} returned {type(table).__name__}, expected a Table")
            return table.write()

        run.__name__, run.__qualname__, run.__doc__ = build.__name__, build.__qualname__, build.__doc__
        run.__module__ = build.__module__
        return artifact(target, scales=scales, kind="table")(run)

    return deco
