"""A whole artifact under `torchrun --nproc_per_node 2` (gloo, CPU): the run layer shards the evaluation, every
rank gets every prediction, and only rank 0 writes; the table equals the one-process table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _toy_report(out: Path, cache: Path, procs: int) -> None:
    # a one-line script: torchrun's own parser would take the report's flags (`--n` is ambiguous to it)
    script = out.parent / f"toy_report_{procs}.py"
    argv = ["--n", "3", "--out-dir", str(out), "--cache-dir", str(cache), "--quiet"]
    script.write_text(f"import sys\nfrom reports.toy_report import main\nsys.exit(main({argv!r}))\n")
    args = [str(script)]
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_two_ranks_write_the_one_process_table(tmp_path):
    _toy_report(tmp_path / "one", tmp_path / "cache-one", 1)
    _toy_report(tmp_path / "two", tmp_path / "cache-two", 2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # one writer, no extras
    csv = next(p.name for p in one.iterdir() if p.suffix == ".csv")
    assert (two / csv).read_bytes() == (one / csv).read_bytes()
    shards = sorted(p.name for p in (tmp_path / "cache-two" / "eval").rglob("predictions*.jsonl"))
    assert shards and all(".rank" in s for s in shards)  # the batches really were dealt to the two ranks
