"""A generic, resumable training loop: toy LLaVA, mini projector, and the papers' paper-scale recipes.

The loop knows nothing about the model or the data: it takes a model, a `batch_fn(step) -> batch`
that is a pure function of the step (so a resumed run sees exactly the batches an uninterrupted run
would), a loss function, the parameters to train and a `TrainConfig`. Every `save_every` steps it
writes model + optimizer + RNG state + step atomically; a rerun with the same `state_path` resumes
from there and ends in the same state as an uninterrupted run.

Paper-scale options (all off by default, so a default `TrainConfig` trains exactly as before):
- `grad_accum`: micro-batches per optimiser step; `batch_fn` gets micro-step indices
  `step * grad_accum + i`, each micro-loss is divided by `grad_accum`.
- `bf16`: the loss function runs under `torch.autocast(bfloat16)` on the model's device type; the loss
  and the gradients of fp32 parameters stay fp32.
- `grad_checkpointing`: Hugging Face activation checkpointing (non-reentrant) for the run's duration.
- `state_params_only`: the state holds the trained parameters only (a 7B model with a frozen LLM keeps a
  state of the trained module's size, not 14 GB); the frozen rest is whatever the caller loaded.
- Distributed (`torchrun`): when `torch.distributed` is initialised with world > 1, every rank computes
  its own micro-batches (`batch_fn` shards by rank, e.g. `common.models.llava_sft.sft_batch_fn`), and the
  gradients of `params` are averaged over the ranks before clipping. This is done by hand rather than with
  `DistributedDataParallel`: it works with any `loss_fn` (which may call submodules, not `forward`),
  with `params` that are a subset of what requires grad, with parameters that get no gradient on some
  ranks (a text-only micro-batch leaves the projector unused), and with `grad_accum` without `no_sync`.
  Rank 0's parameters are broadcast at the start, only rank 0 writes the state, every rank resumes from
  it, and the logged loss is the mean over ranks (what one process with the global batch would log).
  With equal per-rank batch sizes and per-sample-averaged losses, two ranks compute exactly what one
  process computes with `grad_accum=2` over the same micro-batches (sums of halves are exact).
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from common.models.checkpoint import load_train_state, save_train_state

Batch = dict[str, torch.Tensor]
GRAD_BUCKET = 1 << 25  # elements per all-reduce call (128 MB of fp32 gradients)


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
    grad_accum: int = 1  # micro-batches per optimiser step (batch_fn gets step * grad_accum + i)
    bf16: bool = False  # autocast the loss function to bfloat16 on the model's device type
    grad_checkpointing: bool = False  # Hugging Face activation checkpointing during the run
    state_params_only: bool = False  # the resumable state holds the trained parameters, not the whole model

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.save_every < 1 or self.log_every < 1:
            raise ValueError("save_every and log_every must be >= 1")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


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


# ---------------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------------

def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _buckets(params: Sequence[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    """Consecutive runs of same-dtype, same-device gradients of at most GRAD_BUCKET elements (or one tensor)."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (size + p.numel() > GRAD_BUCKET or p.grad.dtype != bucket[0].grad.dtype
                       or p.grad.device != bucket[0].grad.device):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def average_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Replace every gradient by its mean over the ranks. A parameter without a gradient on some ranks
    counts as zero there; one without a gradient on every rank keeps none (AdamW then skips it, as one
    process would)."""
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(live):
        alone = len(bucket) == 1 and bucket[0].grad.is_contiguous()  # reduced in place
        flat = bucket[0].grad if alone else torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        if not alone:
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(g.view_as(p.grad))


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _broadcast_params(params: Sequence[torch.nn.Parameter]) -> None:
    """Every rank starts from rank 0's values (as DDP does), even if a trained module was initialised randomly."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


# ---------------------------------------------------------------------------------------------------
# Device, precision, checkpointing, state
# ---------------------------------------------------------------------------------------------------

def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where batches go)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch, device: torch.device):
    """A dict batch with its tensors on `device`; returned unchanged (same object) when nothing must move."""
    if not isinstance(batch, dict) or all(not torch.is_tensor(v) or v.device == device for v in batch.values()):
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def checkpointing_active(model: torch.nn.Module) -> bool:
    """Whether any module of `model` has Hugging Face activation checkpointing switched on."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextlib.contextmanager
def gradient_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Hugging Face activation checkpointing on every outermost HF model inside `model`, undone afterwards
    (including the input-embedding hook that transformers adds with it).

    Non-reentrant checkpointing, so gradients reach trained modules whose inputs come from frozen ones
    (a projector under a frozen LLM).
    """
    found: list[PreTrainedModel] = []
    prefixes: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in prefixes):
            continue
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            found.append(m)
            prefixes.append(f"{name}." if name else "")
    if not found:
        raise ValueError(f"grad_checkpointing: {type(model).__name__} holds no Hugging Face model that supports "
                         "gradient checkpointing")
    enabled = [(m, hasattr(m, "_require_grads_hook")) for m in found if not checkpointing_active(m)]
    kwargs = {"use_reentrant": False}
    for m, _ in enabled:
        if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name warns there
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        for m, had_hook in enabled:
            if hasattr(m, "activation_checkpointing_disable"):
                m.activation_checkpointing_disable()
            else:
                m.gradient_checkpointing_disable()
            if not had_hook and hasattr(m, "_require_grads_hook"):
                m.disable_input_require_grads()


def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state()  # the current device: each rank's own GPU
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def _trained_names(model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> list[str]:
    ids = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if len(names) != len(ids):
        raise ValueError("state_params_only: every trained parameter must be a parameter of the model")
    return names


def _load_model_state(model: torch.nn.Module, saved: dict, params: Sequence[torch.nn.Parameter]) -> None:
    """Load a saved state: the whole model, or (a `state_params_only` state) the trained parameters."""
    if not saved.get("model_params_only"):
        model.load_state_dict(saved["model"])
        return
    lacking = sorted(set(_trained_names(model, params)) - set(saved["model"]))
    if lacking:
        raise ValueError(f"state_path: the state holds no value for the trained parameters {lacking[:5]}")
    _, unexpected = model.load_state_dict(saved["model"], strict=False)
    if unexpected:
        raise ValueError(f"state_path: the saved parameters {unexpected[:5]} are not in the model")


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------

def train(model: torch.nn.Module, batch_fn: Callable[[int], Batch], cfg: TrainConfig,
          state_path: str | Path | None = None, loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = answer_loss,
          params: Iterable[torch.nn.Parameter] | None = None, progress: bool = True, desc: str = "train",
          on_log: Callable[[int, dict], None] | None = None, extend: bool = False) -> list[dict]:
    """Train `model` for `cfg.steps` steps (AdamW, warmup + cosine, grad clipping); returns the log history.

    If `state_path` holds a saved state, training resumes after its step. The state is written every
    `cfg.save_every` steps and at the end (by rank 0 only under torchrun). `params` defaults to every
    parameter with requires_grad. Dict batches are moved to the model's device. `on_log` runs on every
    rank with the same record. `extend=True` lets a finished (or interrupted) run continue to a larger
    `cfg.steps`; the schedule is then recomputed for the new length, so the result is not the same as a
    run planned that long.
    """
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("params: nothing to train (no parameter requires grad)")
    rank, world = rank_world()
    device = model_device(model)
    trained_names = _trained_names(model, params) if cfg.state_params_only else None
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
        if saved["config"].get("grad_accum", 1) != cfg.grad_accum:
            raise ValueError(f"state_path: saved run has grad_accum={saved['config'].get('grad_accum', 1)}, "
                             f"config asks {cfg.grad_accum} (its micro-batches would not line up)")
        _load_model_state(model, saved, params)
        opt.load_state_dict(saved["optimizer"])
        _set_rng_state(saved["rng"])
        start, history, window = saved["step"], saved["history"], tuple(saved.get("window", (0.0, 0)))
    if world > 1:
        _broadcast_params(params)

    def save(step: int) -> None:
        if state_path is not None and rank == 0:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            if trained_names is None:
                weights, extra = model.state_dict(), {}
            else:
                own = dict(model.named_parameters())
                weights, extra = {n: own[n].detach() for n in trained_names}, {"model_params_only": True}
            save_train_state(state_path, {
                "model": weights, "optimizer": opt.state_dict(), "rng": _rng_state(), "step": step,
                "history": history, "config": asdict(cfg), "window": (run_loss, run_n), "world": world, **extra,
            })
        if state_path is not None and world > 1:
            dist.barrier()  # no rank returns (or reads the state) before rank 0 has written it

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()

    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc,
               disable=not progress or rank != 0, file=sys.stderr, mininterval=10, dynamic_ncols=True)
    (run_loss, run_n), t0 = window, time.time()
    with gradient_checkpointing(model) if cfg.grad_checkpointing else contextlib.nullcontext():
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i in range(cfg.grad_accum):
                with amp():
                    loss = loss_fn(model, to_device(batch_fn(step * cfg.grad_accum + i), device)).float()
                (loss / cfg.grad_accum if cfg.grad_accum > 1 else loss).backward()
                step_loss += loss.item()
            step_loss /= cfg.grad_accum
            if world > 1:
                average_gradients(params, world)
                step_loss = _mean_over_ranks(step_loss, device)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            run_loss, run_n = run_loss + step_loss, run_n + 1
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
