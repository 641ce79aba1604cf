"""Prefill wall time of keep-all vs FastV on a small LLaVA-architecture random model (`make bench-reduction`).

Model: `LlavaForConditionalGeneration` with a tiny CLIP tower (336 px / patch 14 -> 576 visual tokens, as
LLaVA-1.5) and an 8-layer Llama decoder, d = 512, FFN width 1376 (LLaVA-1.5-7B's m/d = 11008/4096), in the
run's dtype (fp32 on CPU, fp16 on CUDA unless `--dtype`); prompt = 8 system + 576 visual + 32 instruction
tokens, batch 1. FastV (built by the registry factory) prunes at K = 2 (the paper setting, not mapped to the
8 layers) to the paper budgets 192/128/64 of 576 visual tokens (33/22/11 %).

Each setting's time is the median of `--repeats` timed prefill forwards (after warm-up, settings
interleaved), vision tower included (it is the same for every row), timed by the run's `Timer` (CUDA
synchronised; the table names the device). The predicted speed-up is the FLOPs ratio of the FastV paper's
per-layer cost `4nd^2 + 2n^2 d + 2ndm` (`common.flops.fastv_flops`); `efficiency` = measured speed-up /
predicted speed-up (1.0 = pruning saves exactly what the formula promises). Not a test: timings depend on
the machine. Writes figures/common/bench_reduction.{csv,md,tex,json}.

    python -m reports.bench_reduction [--repeats 9] [--threads 1] [--device cpu|cuda] [--dtype fp32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import LlavaForConditionalGeneration

from common.artifacts import provenance
from common.factory import make_reducer
from common.flops import fastv_flops
from common.models.tiny import make_batch, tiny_llava_config
from common.paths import FIGURES
from common.reduction import BuildTarget, Reducer, reduce_tokens
from common.run import Run, RunConfig, Timer, add_arguments
from common.schedule import FASTV_K, PAPER_BUDGETS, PAPER_VISUAL, Budget

PAPER = "common"  # figures/common/
TABLE = "bench_reduction"
N_SYSTEM, N_VISUAL, N_INSTR = 8, PAPER_VISUAL, 32
N_LAYERS = 8


def build_model(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0) -> LlavaForConditionalGeneration:
    cfg = tiny_llava_config(num_layers=N_LAYERS, hidden=512, heads=8, kv_heads=8, image_size=336, patch=14, vocab=256)
    cfg.text_config.intermediate_size = 1376
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg).eval().to(device=device, dtype=dtype)


def time_settings(model: torch.nn.Module, inputs: Mapping[str, Any], reducers: Mapping[str, Reducer | None],
                  timer: Timer, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median prefill time of each setting; settings are interleaved round-robin so that machine load
    drifts hit all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in reducers}
    with torch.no_grad():
        for i in range(warmup + repeats):
            for name, red in reducers.items():
                with reduce_tokens(model, red) as st:
                    dt = timer.measure(lambda: model(**inputs, use_cache=True, logits_to_keep=1), repeats=1,
                                       warmup=0)[0]
                if red is not None and st.kept_counts[red.K] != [red.n_keep(N_VISUAL)]:
                    raise RuntimeError(f"{name}: kept {st.kept_counts} instead of {red.n_keep(N_VISUAL)}")
                if i >= warmup:
                    times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(run: Run, repeats: int = 7, warmup: int = 2,
          model: LlavaForConditionalGeneration | None = None) -> list[dict[str, Any]]:
    """One row per setting: keep all, then FastV at each paper budget (on `build_model` unless `model`, an
    LLaVA with 576 visual tokens per 336 px image and a 256-token vocabulary, is given)."""
    model = build_model(run.device, run.dtype, seed=run.cfg.seed) if model is None else model
    b = make_batch(batch_size=1, n_image_tokens=N_VISUAL, image_token_id=model.config.image_token_id, vocab=256,
                   sys_lens=[N_SYSTEM], instr_lens=[N_INSTR], image_size=336)
    inputs = {k: v.to(run.device, dtype=run.dtype) if v.is_floating_point() else v.to(run.device)
              for k, v in b.inputs().items()}
    n = int(b.input_ids.shape[1])
    dims = model.config.text_config
    target = BuildTarget(n_layers=dims.num_hidden_layers, n_visual=N_VISUAL, model=model,
                         image_token_id=model.config.image_token_id)
    reducers: dict[str, Reducer | None] = {"keep all": None}
    reducers.update({f"fastv{bud}": make_reducer("fastv", Budget.paper(bud), target, K=FASTV_K)
                     for bud in PAPER_BUDGETS})
    t = time_settings(model, inputs, reducers, run.timer, repeats, warmup)
    base_t, base_f = t["keep all"], fastv_flops(n, n, FASTV_K, dims)
    rows = [dict(setting=f"keep all ({N_VISUAL})", kept_visual=N_VISUAL, kept_fraction=1.0, prefill_ms=1e3 * base_t,
                 measured_speedup=1.0, predicted_speedup=1.0, efficiency=1.0)]
    for budget in PAPER_BUDGETS:
        kept = reducers[f"fastv{budget}"].n_keep(N_VISUAL)
        tb = t[f"fastv{budget}"]
        f = fastv_flops(n, n - N_VISUAL + kept, FASTV_K, dims)
        meas, pred = base_t / tb, base_f / f
        rows.append(dict(setting=f"FastV K={FASTV_K} keep {kept}", kept_visual=kept, kept_fraction=kept / N_VISUAL,
                         prefill_ms=1e3 * tb, measured_speedup=meas, predicted_speedup=pred, efficiency=meas / pred))
    return rows


def write(run: Run, rows: Sequence[dict[str, Any]], repeats: int, command: str) -> dict[str, Path]:
    title = (f"Prefill wall time, keep-all vs FastV (K={FASTV_K}), {N_LAYERS}-layer d=512 LLaVA-architecture random "
             f"model, {N_SYSTEM}+{N_VISUAL}+{N_INSTR} tokens, batch 1, {run.timer.label}, "
             f"{str(run.dtype).removeprefix('torch.')}, median of {repeats}")
    prov = provenance(command=command, started=run.started,
                      config=dict(repeats=repeats, device=str(run.device), timer=run.timer.label, dtype=str(run.dtype),
                                  threads=torch.get_num_threads(), seed=run.cfg.seed))
    return run.write_table(TABLE, rows, title=title, float_format=".3f", provenance=prov)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m reports.bench_reduction",
                                                   description=__doc__.splitlines()[0]))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least sensitive to other load)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig.from_args(args)
    if cfg.out_dir is None:
        cfg = cfg.replace(out_dir=FIGURES / PAPER)
    run = Run.for_scale(cfg, paper=PAPER)
    rows = bench(run, args.repeats)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    write(run, rows, args.repeats, " ".join(["python -m reports.bench_reduction",
                                             *(sys.argv[1:] if argv is None else argv)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
