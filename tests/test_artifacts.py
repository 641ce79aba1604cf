"""common.artifacts: deterministic, atomic table/figure writing with provenance sidecars."""
from __future__ import annotations

import json
import os

import pytest

from common import artifacts as A

ROWS = [
    {"method": "fast_v", "tokens": 192, "acc": 0.8812345, "note": "50% & more"},
    {"method": "sparse_vlm", "tokens": 64, "acc": 0.87, "note": None, "extra": "x"},
]


def _prov() -> dict:
    return A.provenance(command="pytest", config={"scale": "toy"}, seeds={"data": 0})


def test_write_table_files_and_sidecar(tmp_path):
    paths = A.write_table(ROWS, tmp_path / "sub" / "table1", title="Table 1 (toy)", provenance=_prov())
    assert set(paths) == {"csv", "md", "tex", "json"}
    assert all(p.exists() and p.parent == tmp_path / "sub" for p in paths.values())
    sidecar = json.loads(paths["json"].read_text())
    assert sidecar["title"] == "Table 1 (toy)"
    assert sidecar["columns"] == ["method", "tokens", "acc", "note", "extra"]
    assert sidecar["rows"][0] == {"method": "fast_v", "tokens": 192, "acc": 0.8812345, "note": "50% & more",
                                  "extra": None}
    prov = sidecar["provenance"]
    for key in ("git_commit", "git_dirty", "command", "config", "seeds", "inputs", "packages", "created_utc",
                "wall_time_s"):
        assert key in prov
    assert prov["command"] == "pytest" and prov["config"] == {"scale": "toy"} and prov["seeds"] == {"data": 0}
    for pkg in ("python", "torch", "transformers", "numpy"):
        assert prov["packages"][pkg]


def test_csv_full_precision_and_column_order(tmp_path):
    paths = A.write_table(ROWS, tmp_path / "t", title="t", columns=["tokens", "method", "acc"], provenance={})
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "tokens,method,acc"  # given order; unlisted keys dropped
    assert lines[1] == "192,fast_v,0.8812345"
    assert lines[2] == "64,sparse_vlm,0.87"
    md = paths["md"].read_text().splitlines()
    assert md[2] == "| tokens | method | acc |"
    assert md[3] == "| ---: | :--- | ---: |"  # numbers right-aligned
    assert "0.8812" in md[4] and "0.8812345" not in md[4]  # Markdown uses the float format


def test_byte_identical_rewrite(tmp_path):
    a = A.write_table(ROWS, tmp_path / "a", title="T", provenance=_prov())
    first = {k: p.read_bytes() for k, p in a.items() if k != "json"}
    b = A.write_table(ROWS, tmp_path / "a", title="T", provenance=A.provenance(command="other", started=0.0))
    assert {k: p.read_bytes() for k, p in b.items() if k != "json"} == first


def test_escaping(tmp_path):
    rows = [{"col_a": "x_y 50% a&b $1 #2 {z}", "b|c": "p*q"}]
    paths = A.write_table(rows, tmp_path / "esc", title="A_b 5% & c", provenance={})
    md = paths["md"].read_text()
    assert r"x\_y 50% a&b" in md and r"b\|c" in md and r"p\*q" in md and r"**A\_b 5% & c**" in md
    tex = paths["tex"].read_text()
    assert r"x\_y 50\% a\&b \$1 \#2 \{z\}" in tex
    assert r"\caption{A\_b 5\% \& c}" in tex
    assert r"col\_a & b|c \\" in tex
    assert A.escape_latex("a\\b~^") == r"a\textbackslash{}b\textasciitilde{}\textasciicircum{}"


def test_latex_structure(tmp_path):
    tex = A.write_table(ROWS, tmp_path / "t", title="T", provenance={})["tex"].read_text().splitlines()
    assert tex[3] == r"\begin{tabular}{lrrll}"
    assert tex[5] == r"method & tokens & acc & note & extra \\"
    assert tex[7] == r"fast\_v & 192 & 0.8812 & 50\% \& more &  \\"
    assert tex[-1] == r"\end{table}"


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    A.atomic_write_text(target, "old\n")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        A.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left behind


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path, monkeypatch):
    """mkstemp creates 0600 files; artifacts and checkpoints are shared, so they get 0666 minus the umask."""
    target = A.atomic_write_text(tmp_path / "a.json", "{}\n")
    (tmp_path / "b.json").write_text("{}\n")
    assert target.stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777
    monkeypatch.setattr(A, "_UMASK", 0o002)
    assert A.atomic_write_text(tmp_path / "c.json", "{}\n").stat().st_mode & 0o777 == 0o664


def test_write_table_error_mid_render_leaves_old_files(tmp_path, monkeypatch):
    stem = tmp_path / "t"
    A.write_table(ROWS, stem, title="T", provenance={})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(A, "render_latex", boom)
    with pytest.raises(RuntimeError):
        A.write_table([{"method": "other"}], stem, title="T", provenance={})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        A.write_table({"a": 1}, tmp_path / "t", title="T", provenance={})
    with pytest.raises(ValueError, match="columns"):
        A.write_table(ROWS, tmp_path / "t", title="T", columns=["a", "a"], provenance={})
    with pytest.raises(ValueError, match="stem"):
        A.write_table(ROWS, tmp_path / "t.csv", title="T", provenance={})


def test_file_sha256_and_inputs(tmp_path):
    f = tmp_path / "ckpt.bin"
    f.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert A.file_sha256(f) == digest
    prov = A.provenance(inputs={"checkpoint": f, "data": "given-hash"}, started=0.0)
    assert prov["inputs"] == {"checkpoint": digest, "data": "given-hash"}
    assert prov["wall_time_s"] > 0


def test_save_figure_deterministic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def make():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [1, 0, 2], label="a_b")
        ax.legend()
        return fig

    fig = make()
    p1 = A.save_figure(fig, tmp_path / "f1", provenance=_prov())
    first = {k: p1[k].read_bytes() for k in ("png", "pdf")}
    p2 = A.save_figure(make(), tmp_path / "f1", provenance=_prov())
    plt.close("all")
    assert {k: p2[k].read_bytes() for k in ("png", "pdf")} == first
    assert first["png"].startswith(b"\x89PNG") and first["pdf"].startswith(b"%PDF")
    assert b"CreationDate" not in first["pdf"]
    sidecar = json.loads(p2["json"].read_text())
    assert sidecar["files"] == {"png": "f1.png", "pdf": "f1.pdf"} and sidecar["provenance"]["command"] == "pytest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.json", "f1.pdf", "f1.png"]


def test_provenance_writes_repository_paths_relative():
    """A committed sidecar must not carry the local checkout's absolute path; paths outside the repo stay."""
    root = A.REPO_ROOT
    prov = A.provenance(command="pytest", config={
        "cache": str(root / ".cache" / "eval"), "nested": {"ckpt": root / "checkpoints" / "toy-llava"},
        "list": [str(root)], "outside": "/data/llava", "lookalike": str(root) + "-other/x", "n": 3})
    assert prov["config"] == {"cache": ".cache/eval", "nested": {"ckpt": "checkpoints/toy-llava"}, "list": ["."],
                              "outside": "/data/llava", "lookalike": str(root) + "-other/x", "n": 3}
