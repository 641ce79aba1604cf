"""Sharded evaluation: `torchrun --nproc_per_node 2` on CPU (gloo) gives the same results as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from common.evaluation import evaluate
from eval_fakes import MAX_NEW_TOKENS, TinyVLM, make_samples

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(out: Path, cache: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)]),
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "eval_fakes.py"), str(out), str(cache)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("wall_time_s", "generation_time_s", "cache_dir", "world")}


def test_two_processes_match_one(tmp_path):
    single = evaluate(TinyVLM(), make_samples(), batch_size=4, max_new_tokens=MAX_NEW_TOKENS,
                      cache_dir=tmp_path / "single", run_key={"checkpoint": "tiny-random-seed0"}, progress=False)
    out = tmp_path / "dist.json"
    _torchrun(out, tmp_path / "dist-cache")
    ranks = [json.loads(out.with_suffix(f".rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    expected = _strip(single.to_json())
    for r in ranks:  # every rank returns the whole result, in the original order
        assert _strip(r) == expected
    # each rank wrote its own shard of the cache, and together they hold every sample once
    folder = tmp_path / "dist-cache" / single.key[:16]
    shards = sorted(p.name for p in folder.glob("predictions*.jsonl"))
    assert shards == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]
    ids = [json.loads(line)["id"] for p in folder.glob("predictions*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(ids) == sorted(single.ids)

    # a single process resumes from the two shards without recomputing anything
    again = evaluate(TinyVLM(), make_samples(), batch_size=4, max_new_tokens=MAX_NEW_TOKENS,
                     cache_dir=tmp_path / "dist-cache", run_key={"checkpoint": "tiny-random-seed0"}, progress=False)
    assert again.n_computed == 0 and again.predictions == single.predictions
