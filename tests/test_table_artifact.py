"""common.table_artifact: the registered function starts the clock, builds, writes the Table, returns rows."""
import json
import time

import pytest

from common.artifacts import provenance
from common.experiment import ARTIFACTS
from common.table_artifact import Table, table_artifact


@pytest.fixture
def target(monkeypatch):
    name = "test-table-artifact"
    monkeypatch.delitem(ARTIFACTS, name, raising=False)
    yield name
    ARTIFACTS.pop(name, None)


def test_registers_builds_writes_and_returns_rows(tmp_path, target):
    seen = {}

    @table_artifact(target, scales=("toy", "mini"))
    def table9(scale: str, started: float) -> Table:
        """make test-table-artifact: two rows."""
        seen.update(scale=scale, started=started, now=time.time())
        rows = [{"method": "a", "score": 1.5}, {"method": "b", "score": 2.0}]
        return Table(rows, tmp_path / "t9", f"Table 9 at {scale}", provenance(config={"scale": scale}, started=started),
                     columns=["score", "method"])

    art = ARTIFACTS[target]
    assert art.fn is table9 and art.kind == "table" and art.scales == ("toy", "mini")
    assert table9.__name__ == "table9" and table9.__doc__.startswith("make test-table-artifact")
    before = time.time()
    rows = table9("mini")
    assert rows == [{"method": "a", "score": 1.5}, {"method": "b", "score": 2.0}]
    assert seen["scale"] == "mini" and before <= seen["started"] <= seen["now"]
    assert (tmp_path / "t9.csv").read_text() == "score,method\n1.5,a\n2.0,b\n"
    side = json.loads((tmp_path / "t9.json").read_text())
    assert side["title"] == "Table 9 at mini" and side["columns"] == ["score", "method"]
    assert side["provenance"]["config"] == {"scale": "mini"} and side["provenance"]["wall_time_s"] >= 0
    assert table9() == rows  # scale defaults to "toy"


def test_builder_must_return_a_table(target):
    @table_artifact(target)
    def broken(scale: str, started: float):
        return [{"a": 1}]

    with pytest.raises(TypeError, match="build: .*broken returned list, expected a Table"):
        broken("toy")


def test_duplicate_target_is_refused(target):
    table_artifact(target)(lambda scale, started: None)
    with pytest.raises(KeyError, match=target):
        table_artifact(target)(lambda scale, started: None)
