"""A generic, resumable training loop (toy LLaVA now; STF / ATP / DyRate training later).

The loop knows nothing about the model or the data: it takes a model, a `batch_fn(step) -> batch`
that is a pure function of the step (so a resumed run sees exactly the batches an uninterrupted run
would), a loss function, the parameters to train and a `TrainConfig`. Every `save_every` steps it
writes model + optimizer + RNG state + step atomically; a rerun with the same `state_path` resumes
from there and ends in the same state as an uninterrupted run.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.models.checkpoint import load_train_state, save_train_state

Batch = dict[str, torch.Tensor]


@dataclass
class TrainConfig:
    steps: int
    lr: float = 1e-3
    warmup_frac: float = 0.03  # LLaVA / STF: cosine schedule with 3% warmup
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac, not to 0: short runs keep learning
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.save_every < 1 or self.log_every < 1:
            raise ValueError("save_every and log_every must be >= 1")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine from lr to lr * min_lr_frac over the remaining steps."""
    warm = max(1, round(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def answer_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (answer) tokens, averaged per sample, then over the batch.

    Per-sample averaging keeps a 30-token caption from outweighing thirty one-word answers.
    """
    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, :-1].float()  # [B, T-1, V]
    target = labels[:, 1:]  # [B, T-1]
    tok = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # [B, T-1]
    n = (target != -100).sum(1).clamp(min=1)
    return (tok.sum(1) / n).mean()


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])


def train(model: torch.nn.Module, batch_fn: Callable[[int], Batch], cfg: TrainConfig,
          state_path: str | Path | None = None, loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = answer_loss,
          params: Iterable[torch.nn.Parameter] | None = None, progress: bool = True, desc: str = "train",
          on_log: Callable[[int, dict], None] | None = None, extend: bool = False) -> list[dict]:
    """Train `model` for `cfg.steps` steps (AdamW, warmup + cosine, grad clipping); returns the log history.

    If `state_path` holds a saved state, training resumes after its step. The state is written every
    `cfg.save_every` steps and at the end. `params` defaults to every parameter with requires_grad.
    `extend=True` lets a finished (or interrupted) run continue to a larger `cfg.steps`; the schedule is
    then recomputed for the new length, so the result is not the same as a run planned that long.
    """
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("params: nothing to train (no parameter requires grad)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state_path = Path(state_path) if state_path is not None else None
    start, history, window = 0, [], (0.0, 0)  # window: (loss sum, steps) since the last log record
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    saved = load_train_state(state_path) if state_path is not None else None
    if saved is not None:
        if saved["config"]["steps"] != cfg.steps and not (extend and saved["step"] <= cfg.steps):
            raise ValueError(f"state_path: saved run has {saved['config']['steps']} steps, config asks {cfg.steps}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        _set_rng_state(saved["rng"])
        start, history, window = saved["step"], saved["history"], tuple(saved.get("window", (0.0, 0)))

    def save(step: int) -> None:
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            save_train_state(state_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(),
                "step": step, "history": history, "config": asdict(cfg), "window": (run_loss, run_n),
            })

    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, disable=not progress,
               file=sys.stderr, mininterval=10, dynamic_ncols=True)
    (run_loss, run_n), t0 = window, time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_fn(model, batch_fn(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        run_loss, run_n = run_loss + loss.item(), run_n + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": run_loss / run_n, "lr": lr_at(step, cfg),
                   "s_per_step": (time.time() - t0) / max(1, run_n)}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if on_log is not None:
                on_log(step + 1, rec)
            run_loss, run_n, t0 = 0.0, 0, time.time()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    bar.close()
    model.eval()
    return history
