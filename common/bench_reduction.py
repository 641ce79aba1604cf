"""Prefill wall time of keep-all vs FastV on a small LLaVA-architecture random model (`make bench-reduction`).

Model: `LlavaForConditionalGeneration` with a tiny CLIP tower (336 px / patch 14 -> 576 visual tokens, as
LLaVA-1.5) and an 8-layer Llama decoder, d = 512, FFN width 1376 (LLaVA-1.5-7B's m/d = 11008/4096), fp32;
prompt = 8 system + 576 visual + 32 instruction tokens, batch 1. FastV prunes at K = 2 (paper setting) to
192/128/64 of 576 visual tokens (33/22/11 %).

Each setting's time is the median of `--repeats` timed prefill forwards (after warm-up, settings
interleaved), vision tower included (it is the same for every row). The predicted speed-up is the FLOPs
ratio of the FastV paper's per-layer cost `4nd^2 + 2n^2 d + 2ndm` (`common.flops.fastv_flops`);
`efficiency` = measured speed-up / predicted speed-up (1.0 = pruning saves exactly what the formula
promises). Not a test: timings depend on the machine. Writes figures/common/bench_reduction.{csv,md,tex,json}.

    python -m common.bench_reduction [--repeats 9] [--threads 1] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from common.baselines.fastv import FastV
from common.flops import fastv_flops
from common.models.tiny import make_batch, tiny_llava_config
from common.reduction import reduce_tokens

N_SYSTEM, N_VISUAL, N_INSTR = 8, 576, 32
BUDGETS = (192, 128, 64)  # paper budgets of 576 -> kept fraction 33.3 / 22.2 / 11.1 %
K = 2


def build_model(device: str = "cpu", seed: int = 0) -> LlavaForConditionalGeneration:
    cfg = tiny_llava_config(num_layers=8, hidden=512, heads=8, kv_heads=8, image_size=336, patch=14, vocab=256)
    cfg.text_config.intermediate_size = 1376
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg).eval().to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_settings(model, inputs, reducers: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median prefill time of each setting; settings are interleaved round-robin so that machine load
    drifts hit all of them alike."""
    device = str(inputs["input_ids"].device)
    times = {k: [] for k in reducers}
    with torch.no_grad():
        for i in range(warmup + repeats):
            for name, red in reducers.items():
                with reduce_tokens(model, red) as st:
                    _sync(device)
                    t0 = time.perf_counter()
                    model(**inputs, use_cache=True, logits_to_keep=1)
                    _sync(device)
                    dt = time.perf_counter() - t0
                if red is not None and st.kept_counts[K] != [red.keep]:
                    raise RuntimeError(f"{name}: kept {st.kept_counts} instead of {red.keep}")
                if i >= warmup:
                    times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def run(repeats: int = 7, device: str = "cpu") -> list[dict]:
    model = build_model(device)
    b = make_batch(batch_size=1, n_image_tokens=N_VISUAL, image_token_id=model.config.image_token_id, vocab=256,
                   sys_lens=[N_SYSTEM], instr_lens=[N_INSTR], image_size=336)
    inputs = {k: v.to(device) for k, v in b.inputs().items()}
    n = int(b.input_ids.shape[1])
    dims = model.config.text_config
    reducers = {"keep all": None, **{f"fastv{bud}": FastV(K=K, keep=bud) for bud in BUDGETS}}
    t = time_settings(model, inputs, reducers, repeats)
    base_t, base_f = t["keep all"], fastv_flops(n, n, K, dims)
    rows = [dict(setting=f"keep all ({N_VISUAL})", kept_visual=N_VISUAL, kept_fraction=1.0, prefill_ms=1e3 * base_t,
                 measured_speedup=1.0, predicted_speedup=1.0, efficiency=1.0)]
    for budget in BUDGETS:
        tb = t[f"fastv{budget}"]
        f = fastv_flops(n, n - N_VISUAL + budget, K, dims)
        meas, pred = base_t / tb, base_f / f
        rows.append(dict(setting=f"FastV K={K} keep {budget}", kept_visual=budget, kept_fraction=budget / N_VISUAL,
                         prefill_ms=1e3 * tb, measured_speedup=meas, predicted_speedup=pred, efficiency=meas / pred))
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least sensitive to other load)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="figures/common/bench_reduction")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run(a.repeats, a.device)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    try:
        from common.artifacts import provenance, write_table
    except ImportError:  # artifacts not available: the printed table is the result
        return rows
    title = (f"Prefill wall time, keep-all vs FastV (K={K}), 8-layer d=512 LLaVA-architecture random model, "
             f"{N_SYSTEM}+{N_VISUAL}+{N_INSTR} tokens, batch 1, {a.device}, median of {a.repeats}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, a.out, title=title, float_format=".3f",
                provenance=provenance(command="python -m common.bench_reduction",
                                      config=dict(repeats=a.repeats, device=a.device, threads=torch.get_num_threads())))
    return rows


if __name__ == "__main__":
    main()
