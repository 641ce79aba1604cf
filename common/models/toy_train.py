"""Training recipe of the toy LLaVA on ToyWorld (`make toy-model`).

Two stages, as LLaVA-1.5, with one honest deviation:
  1. alignment on captions. LLaVA trains only the projector here (CLIP and Vicuna are pretrained and
     frozen). Our CLIP tower and Llama decoder start from random weights, so a frozen tower would carry
     no features and a frozen LM no language: *changed from LLaVA*: stage 1 trains everything (tower,
     projector and LM) on captions, which teaches the tower to see every object (colour, shape, size,
     digit, place) before any question is asked.
  2. instruction tuning on every ToyWorld family (all weights trained, as LLaVA trains projector + LM;
     the tower stays trainable for the same reason as above).
The loss is on answer tokens only. Each stage is resumable (common.models.train); a stage that finished
is skipped on rerun. Batches are pure functions of (seed, stage, step), so a resumed run is identical.
Video clips (3 frames = 3x the visual tokens) go in their own smaller batches every `video_every` steps,
so a clip never pads a whole batch of single images to its length.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from common.data.sample import Sample
from common.data.toyworld import FAMILIES, QA_FAMILIES, make_sample, toyworld_split
from common.models.toy import ToyConfig, ToyVLM
from common.models.train import TrainConfig, train

# Family weights of the instruction-tuning mix (video comes in its own batches). Fine-grained families
# (relations, counting, reading) get more weight: they are the slowest to learn.
MIX: dict[str, float] = {"gqa": 3.0, "pope": 1.5, "textvqa": 1.5, "count": 2.5, "scene": 0.5, "mc": 1.5,
                         "caption": 1.0}


@dataclass
class ToyTrainConfig:
    stage1_steps: int = 200
    stage2_steps: int = 1800  # ~2000 steps x ~1.1 s (one core) = ~37 min in all
    batch: int = 32
    video_every: int = 6  # every 6th stage-2 step is a batch of batch // 3 clips (~same tokens as 32 images)
    lr1: float = 1e-3
    lr2: float = 1e-3
    seed: int = 0  # data seed and init seed
    save_every: int = 25
    val_per_family: int = 48
    # One thread: on 2 cores shared with other jobs, 2 threads thrash (measured 15 s vs 1.1 s per step).
    threads: int = 1


def stage_batch(vlm: ToyVLM, stage: int, step: int, tc: ToyTrainConfig) -> dict[str, torch.Tensor]:
    """The batch of `step` in `stage`: a pure function of (seed, stage, step)."""
    rng = random.Random(f"toy-batch:{tc.seed}:{stage}:{step}")
    if stage == 1:
        fams = ["caption"] * tc.batch
    elif tc.video_every and step % tc.video_every == tc.video_every - 1:
        fams = ["video"] * max(1, tc.batch // 3)
    else:
        fams = rng.choices(list(MIX), weights=list(MIX.values()), k=tc.batch)
    base = (stage * 10_000_000) + step * tc.batch
    samples = [make_sample("train", tc.seed, base + j, f, vlm.cfg.grid) for j, f in enumerate(fams)]
    return vlm.build_training_batch(samples)


@torch.no_grad()
def first_token_accuracy(vlm: ToyVLM, samples: Sequence[Sample], batch: int = 32,
                         blind: bool = False) -> dict[str, float]:
    """Per-family accuracy (%) of the greedy first answer token (= greedy decoding for one-word answers).

    `blind=True` zeroes the pixel values (a grey image), the "no vision" control. Captions are skipped.
    """
    hits: dict[str, list[int]] = {}
    qa = [s for s in samples if s.family != "caption"]
    vlm.model.eval()
    for i in range(0, len(qa), batch):
        chunk = qa[i:i + batch]
        inp = vlm.build_inputs(chunk)
        if blind:
            inp["pixel_values"] = torch.zeros_like(inp["pixel_values"])
        logits = vlm.model(**inp).logits[:, -1]
        pred = logits.argmax(-1).tolist()
        for s, p in zip(chunk, pred):
            hits.setdefault(s.family, []).append(int(p == vlm.answer_ids(s)[0]))
    acc = {f: 100.0 * sum(h) / len(h) for f, h in sorted(hits.items())}
    acc["avg"] = sum(acc.values()) / len(acc) if acc else 0.0
    return acc


def run(out: str | Path, tc: ToyTrainConfig, mc: ToyConfig, progress: bool = True) -> dict:
    """Train both stages (resuming where a previous run stopped) and write the checkpoint to `out`."""
    torch.set_num_threads(tc.threads)
    out = Path(out)
    work = out / "_train"
    work.mkdir(parents=True, exist_ok=True)
    vlm = ToyVLM.fresh(mc, seed=tc.seed)
    t0 = time.time()
    log = lambda stage: (lambda step, rec: print(json.dumps({"stage": stage, **rec}), flush=True))  # noqa: E731
    hist = {}
    for stage, steps, lr in ((1, tc.stage1_steps, tc.lr1), (2, tc.stage2_steps, tc.lr2)):
        cfg = TrainConfig(steps=steps, lr=lr, seed=tc.seed + stage, save_every=tc.save_every)
        hist[stage] = train(vlm.model, lambda step, s=stage: stage_batch(vlm, s, step, tc), cfg,
                            state_path=work / f"stage{stage}.pt", progress=progress, desc=f"stage {stage}",
                            on_log=log(stage))
    wall = time.time() - t0
    val = toyworld_split("val", tc.val_per_family * len(FAMILIES), seed=tc.seed, grid=mc.grid)
    acc = first_token_accuracy(vlm, val)
    blind = first_token_accuracy(vlm, val, blind=True)
    card = {
        "name": "toy-llava", "model_config": asdict(mc), "train_config": asdict(tc), "mix": MIX,
        "data": {"generator": "common.data.toyworld", "seed": tc.seed, "split": "train"},
        "steps": {"stage1": tc.stage1_steps, "stage2": tc.stage2_steps},
        "params": sum(p.numel() for p in vlm.model.parameters()),
        "wall_time_s_last_session": round(wall, 1),
        "val_metrics": {"metric": "first-token accuracy (%), greedy", "n_per_family": tc.val_per_family,
                        "full": acc, "blind": blind},
        "final_loss": {str(k): (h[-1]["loss"] if h else None) for k, h in hist.items()},
        "torch": torch.__version__, "platform": platform.platform(),
        "deviation": "stage 1 trains vision tower + projector + LM on captions (tower is trained from scratch)",
    }
    vlm.save(out, card=card)
    print(json.dumps({"val": acc, "blind": blind}), flush=True)
    return card


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m common.models.toy train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="checkpoints/toy-llava")
    for f, v in asdict(ToyTrainConfig()).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    for f, v in asdict(ToyConfig()).items():
        p.add_argument(f"--model-{f.replace('_', '-')}", type=type(v), default=v, dest=f"model_{f}")
    p.add_argument("--no-progress", action="store_true")
    a = vars(p.parse_args(argv))
    tc = ToyTrainConfig(**{k: a[k] for k in asdict(ToyTrainConfig())})
    mc = ToyConfig(**{k: a[f"model_{k}"] for k in asdict(ToyConfig())})
    run(a["out"], tc, mc, progress=not a["no_progress"])


if __name__ == "__main__":
    main()
