"""Write tables (CSV, Markdown, LaTeX) and figures (PNG, PDF) atomically, each with a JSON provenance sidecar.

Only this module renders records to files (DESIGN.md §7; DomainBed's `collect_results`). Two promises:

* **Deterministic.** The same rows give byte-identical CSV / Markdown / LaTeX, and the same figure gives
  byte-identical PNG / PDF (fixed dpi, no creation dates or software versions in the metadata).
  Everything that changes from run to run (timestamps, wall time, git commit) lives only in the JSON.
* **Atomic.** Every file is written to a temporary file in the same folder, fsynced, then moved over the
  old one with `os.replace`; an error mid-write leaves the old file intact and no temporary file behind.

Usage:
    prov = provenance(command="make flops-tables", config={"scale": "toy"}, seeds={"data": 0})
    write_table(rows, "figures/atp/flops", title="ATP-LLaVA FLOPs", provenance=prov)
    save_figure(fig, "figures/atp/fig2", provenance=prov)
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.paths import REPO_ROOT

# Packages whose versions every sidecar records (missing ones are recorded as null).
TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pillow", "matplotlib",
                    "seaborn", "scikit-learn")

FloatFormat = str | Callable[[float], str]


# --------------------------------------------------------------------------------------------------
# Atomic file writes and hashing
# --------------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text with "\\n" line endings on every platform."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path | str, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (for checkpoint and data hashes in sidecars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def portable(value: Any) -> Any:
    """`value` with every path inside the repository written relative to its root (recursing into dicts,
    lists and tuples), so sidecars and cards committed from one machine do not carry its local layout."""
    if isinstance(value, Mapping):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v) for v in value)
    if isinstance(value, (str, Path)):
        text = str(value)
        root = str(REPO_ROOT)
        if text == root:
            return "."
        if text.startswith(root + os.sep):
            return text[len(root) + 1:]
    return value


def provenance(command: str | None = None, config: Mapping[str, Any] | None = None,
               seeds: Mapping[str, Any] | None = None, inputs: Mapping[str, Any] | None = None,
               started: float | None = None) -> dict[str, Any]:
    """Everything needed to say where an artifact came from, as a JSON-ready dict.

    Args:
        command: the command that made the artifact (default: this process's command line).
        config: the experiment configuration (scale, model, budgets ...).
        seeds: named seeds, e.g. {"data": 0, "torch": 0}.
        inputs: named input hashes, e.g. {"checkpoint": "<sha256>"}; a `Path` value is hashed here
            with `file_sha256`.
        started: `time.time()` at the start of the run; gives `wall_time_s`.
    """
    hashed = {}
    for name, value in (inputs or {}).items():
        hashed[name] = file_sha256(value) if isinstance(value, Path) else value
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": portable(dict(config or {})),
        "seeds": dict(seeds or {}),
        "inputs": hashed,
        "packages": {"python": platform.python_version(),
                     **{name: _package_version(name) for name in TRACKED_PACKAGES}},
        "platform": platform.platform(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": None if started is None else round(time.time() - started, 3),
    }


_collect_provenance = provenance  # write_table/save_figure take a `provenance` argument that shadows the name


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

_MD_SPECIALS = str.maketrans({"\\": "\\\\", "|": "\\|", "_": "\\_", "*": "\\*", "`": "\\`", "\n": " "})
_TEX_SPECIALS = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\n": " ",
})


def escape_markdown(text: str) -> str:
    """Escape characters that Markdown tables or emphasis would eat (`|`, `_`, `*`, backticks, `\\`)."""
    return str(text).translate(_MD_SPECIALS)


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters (`& % $ # _ { } ~ ^ \\`)."""
    return str(text).translate(_TEX_SPECIALS)


def format_float(value: float) -> str:
    """Default float format for Markdown/LaTeX: up to 4 decimals, trailing zeros trimmed (143.9375, 302.4,
    0.15); 4 significant digits in exponent form outside [1e-3, 1e6)."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    return f"{value:.4g}"


def _format_cell(value: Any, float_format: FloatFormat) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        return float_format(value) if callable(float_format) else format(value, float_format)
    return str(value)


def _csv_cell(value: Any) -> str:
    # Full precision in the CSV (repr is the shortest string that round-trips, and deterministic).
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return repr(float(value))
    return str(value)


def _is_numeric_column(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) not in (None, "")]
    return bool(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def render_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str,
                    float_format: FloatFormat = format_float) -> str:
    align = ["---:" if _is_numeric_column(rows, c) else ":---" for c in columns]
    lines = [f"**{escape_markdown(title)}**", "",
             "| " + " | ".join(escape_markdown(c) for c in columns) + " |",
             "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(escape_markdown(_format_cell(row.get(c), float_format)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def render_latex(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str,
                 float_format: FloatFormat = format_float) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`)."""
    spec = "".join("r" if _is_numeric_column(rows, c) else "l" for c in columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{escape_latex(title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(escape_latex(c) for c in columns) + r" \\", r"\midrule"]
    for row in rows:
        lines.append(" & ".join(escape_latex(_format_cell(row.get(c), float_format)) for c in columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], stem: Path | str, *, title: str,
                columns: Sequence[str] | None = None, provenance: Mapping[str, Any] | None = None,
                float_format: FloatFormat = format_float) -> dict[str, Path]:
    """Write `rows` as stem.csv, stem.md, stem.tex and the sidecar stem.json; return {suffix: path}.

    Args:
        rows: one dict per row.
        stem: output path without suffix, e.g. "figures/atp/flops".
        title: table title (Markdown heading line, LaTeX caption); name the model, data and scale here.
        columns: column order; default: keys in order of first appearance over the rows. Keys not in
            `columns` are left out; missing cells are empty.
        provenance: `provenance(...)`'s dict for the sidecar (default: a fresh `provenance()`).
        float_format: callable or format spec (e.g. ".3f") for floats in Markdown and LaTeX (default
            `format_float`). The CSV
            keeps full precision (Python's shortest round-trip repr).
    The CSV, Markdown and LaTeX depend only on the rows, columns, title and format; the sidecar holds the
    provenance and the rows.
    """
    if isinstance(rows, Mapping) or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("rows: expected a list of dicts")
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    else:
        columns = list(columns)
        if len(set(columns)) != len(columns):
            raise ValueError(f"columns: duplicate names in {columns}")
    if not columns:
        raise ValueError("columns: a table needs at least one column")
    stem = Path(stem)
    if stem.suffix in (".csv", ".md", ".tex", ".json"):
        raise ValueError(f"stem: pass the path without a suffix, got {stem}")
    prov = dict(provenance) if provenance is not None else _collect_provenance()
    sidecar = {"title": title, "columns": columns, "rows": [{c: row.get(c) for c in columns} for row in rows],
               "provenance": prov}
    texts = {
        "csv": render_csv(rows, columns),
        "md": render_markdown(rows, columns, title=title, float_format=float_format),
        "tex": render_latex(rows, columns, title=title, float_format=float_format),
        "json": _dump_json(sidecar),
    }
    return {suffix: atomic_write_text(stem.with_name(f"{stem.name}.{suffix}"), text) for suffix, text in texts.items()}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

FIGURE_DPI = 150
# Strip every field that would differ between runs or machines (dates, software versions).
_PNG_METADATA = {"Software": None}
_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def save_figure(fig: Any, stem: Path | str, *, provenance: Mapping[str, Any] | None = None,
                dpi: int = FIGURE_DPI) -> dict[str, Path]:
    """Save a matplotlib figure as stem.png and stem.pdf (deterministic bytes) plus the sidecar stem.json."""
    stem = Path(stem)
    if stem.suffix in (".png", ".pdf", ".json"):
        raise ValueError(f"stem: pass the path without a suffix, got {stem}")
    prov = dict(provenance) if provenance is not None else _collect_provenance()
    out = {}
    for suffix, meta in (("png", _PNG_METADATA), ("pdf", _PDF_METADATA)):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix, dpi=dpi, metadata=meta)
        out[suffix] = atomic_write_bytes(stem.with_name(f"{stem.name}.{suffix}"), buf.getvalue())
    sidecar = {"files": {s: p.name for s, p in out.items()}, "dpi": dpi, "provenance": prov}
    out["json"] = atomic_write_text(stem.with_name(f"{stem.name}.json"), _dump_json(sidecar))
    return out
