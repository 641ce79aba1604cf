"""Train DyRate's rate predictor with the VLM frozen (§5.2 of the paper's reconstruction; every choice [R]: the
paper gives none). The `dyrate-predictor` target calls it (`papers.dyrate.experiments`).

Objective: L = CE(teacher-forced response | DyRate masks) + lambda_F (F-hat - F_target)^2, with F-hat the
relative generation FLOPs of the batch (`predictor.relative_flops`, straight-through in the sampled rates)
and the masks from one per-row-mask pass (`policy.policy_pass`, option B). Only W and b of the predictor
are trained: AdamW, lr 1e-2 cosine-decayed to 1e-3, weight decay 0 (DiffRate's rate-parameter settings).

F_target: the paper's 33.33% is a share of LLaVA-1.5-7B's FLOPs with K = 2 of 32 layers, an average rate of
about 0.7. A shallow toy decoder with the same K pays a larger fixed share, so at toy scale the target keeps
the paper's *average rate* instead: the relative FLOPs of a constant rate 0.7 at the model's dimensions and
prompt length (`toy_target`); at paper scale it is the paper's 1/3 (`PAPER_TARGET`). The tables print both.

Batches are built when a step needs them (`make_teacher_batch`), so a paper-scale caption set never sits in
memory as tensors. With `state_path` the run is resumable: the predictor, optimiser, schedule, random state
and the epoch's batch order are saved every `save_every` steps, and a rerun continues where the saved run
stopped, ending in the state an uninterrupted run ends in. Under torchrun every rank takes its share of each
batch and the predictor's gradients are averaged over the ranks (the VLM is frozen, so only W and b are
synchronised); rank 0 calibrates and the others receive its result.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.data.sample import Sample
from common.flops import DecoderDims, fastv_relative_flops
from common.models.checkpoint import load_train_state, save_train_state
from papers.dyrate.policy import PassOutput, TeacherBatch, policy_pass, teacher_batch
from papers.dyrate.predictor import DEFAULT_RATES, RatePredictor, relative_flops, step_costs

PAPER_MEAN_RATE = 0.7  # 33.33% TFLOPs on 7B at K=2..3 <-> an average rate of 0.70-0.75
PAPER_TARGET = 1 / 3  # the paper's DyRate rows: 33.33% TFLOPs on LLaVA-1.5-7B and -13B


@dataclass
class TrainConfig:
    """Every knob of the predictor training (all [R], §5.2)."""

    K: int = 2  # pruning layer (layers 0..K-1 see everything); FastV's "after layer 2"
    rates: tuple[float, ...] = DEFAULT_RATES
    target: float | None = None  # F_target; None = `toy_target` at the model's dimensions
    calibrate: bool = True  # after training, shift the logits along the rate axis so ARGMAX meets the target
    lam: float = 5.0  # lambda_F (DiffRate's value)
    tau: float = 1.0  # Gumbel temperature
    lr: float = 1e-2
    lr_min: float = 1e-3
    epochs: int = 4
    warmup_epochs: int = 0  # epochs with lambda_F = 0 (DiffRate's --warmup_compression_rate); 0 = none
    batch_size: int = 16
    n_train: int = 512  # training captions
    data_seed: int = 0
    seed: int = 0  # Gumbel noise and shuffling
    loss: str = "ce"  # "ce" (teacher-forced CE) or "kl" (distil the unpruned model's next-token distribution)
    save_every: int = 20  # steps between resumable states (with a state_path)

    def __post_init__(self):
        if self.loss not in ("ce", "kl"):
            raise ValueError(f"loss: expected 'ce' or 'kl', got {self.loss!r}")
        if self.target is not None and not 0.0 < self.target <= 1.0:
            raise ValueError(f"target: a relative FLOPs share in (0, 1], got {self.target}")
        for name in ("epochs", "batch_size", "n_train", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    def recipe(self) -> dict[str, Any]:
        """What defines the trained predictor (a resumed run must share it; `save_every` does not matter)."""
        return {k: v for k, v in asdict(self).items() if k != "save_every"}


def toy_target(n_prompt: int, n_visual: int, K: int, dims: DecoderDims, rate: float = PAPER_MEAN_RATE) -> float:
    """Relative FLOPs of a constant `rate` (the paper's implied average rate) at this model's scale."""
    return fastv_relative_flops(n_visual, rate, K, dims, n_text=n_prompt - n_visual)


def default_encoder(vlm: Any) -> Callable[[str], list[int]]:
    """Text -> token ids without special tokens, from the VLM's tokenizer (HF or `tokenizers`)."""
    tok = getattr(vlm, "tokenizer", None)
    if tok is None:
        raise ValueError("vlm: has no tokenizer; pass encode=... to train_predictor")
    if type(tok).__module__.startswith("tokenizers"):  # a bare `tokenizers.Tokenizer`
        return lambda text: list(tok.encode(text, add_special_tokens=False).ids)
    return lambda text: list(tok(text, add_special_tokens=False)["input_ids"])


def _eos_of(vlm: Any) -> list[int]:
    eos = getattr(vlm.model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else [int(eos[0])]


def make_teacher_batch(vlm: Any, samples: Sequence[Sample], encode: Callable[[str], list[int]] | None = None,
                       ) -> TeacherBatch:
    """Prompts from `vlm.build_inputs`, responses = each sample's first reference + EOS (the VLM's own
    `answer_ids` when it has one, else `encode(text)` + the generation config's EOS)."""
    inputs = vlm.build_inputs(list(samples))
    if encode is None and hasattr(vlm, "answer_ids"):
        resp = [torch.tensor(vlm.answer_ids(s), dtype=torch.long) for s in samples]
    else:
        encode = encode or default_encoder(vlm)
        eos = _eos_of(vlm)
        resp = [torch.tensor(list(encode(s.answer)) + eos, dtype=torch.long) for s in samples]
    return teacher_batch(inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"), resp,
                         vlm.image_token_id, pad_id=int(getattr(vlm.model.generation_config, "pad_token_id", 0) or 0))


def batch_costs(tb: TeacherBatch, rates: Sequence[float], dims: DecoderDims) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample step costs [B, T] and [B, T, C] (`predictor.step_costs`) of a teacher batch (on the CPU)."""
    n_prompt = tb.attention_mask[:, : tb.prompt_length].sum(1).tolist()
    dense, pruned = zip(*(step_costs(int(n), sp.n_visual, tb.n_steps, rates, dims)
                          for n, sp in zip(n_prompt, tb.spans)))
    return torch.stack(dense), torch.stack(pruned)


def batch_loss(vlm: Any, tb: TeacherBatch, pred: RatePredictor, cfg: TrainConfig, target: float, lam: float,
               dims: DecoderDims, generator: torch.Generator | None, hard: bool = False,
               ) -> tuple[torch.Tensor, dict[str, float], PassOutput]:
    out = policy_pass(vlm.model, tb, pred, tau=cfg.tau, hard=hard, generator=generator)
    valid = tb.valid
    if cfg.loss == "ce":
        task = F.cross_entropy(out.logits[valid].float(), tb.targets[valid])
    else:
        with torch.no_grad():
            dense_logits = vlm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                                     pixel_values=tb.pixel_values, position_ids=tb.position_ids()).logits
            dense_logits = dense_logits[:, tb.prompt_length - 1: tb.prompt_length - 1 + tb.n_steps]
        task = F.kl_div(F.log_softmax(out.logits[valid].float(), -1), F.log_softmax(dense_logits[valid].float(), -1),
                        log_target=True, reduction="batchmean")
    dense, pruned = (c.to(out.y.device) for c in batch_costs(tb, pred.rates, dims))
    flops = relative_flops(out.y, dense, pruned, pred.K, dims.n_layers, valid).float()
    loss = task + lam * (flops - target) ** 2
    mean_rate = float((out.y.detach() * pred.rate_tensor(out.y.device)).sum(-1)[valid].mean())
    stats = {"loss": float(loss.detach()), "task": float(task.detach()), "flops": float(flops.detach()), "rate": mean_rate}
    return loss, stats, out


# ----------------------------------------------------------------------------------------------- training
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_grads(params: Iterable[torch.nn.Parameter], world: int) -> None:
    """Mean of the ranks' gradients (a rank without samples in a batch contributes zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if world > 1:
            dist.all_reduce(p.grad)
            p.grad /= world


def _from_rank0(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_predictor(vlm: Any, samples: Sequence[Sample], cfg: TrainConfig = TrainConfig(), *,
                    encode: Callable[[str], list[int]] | None = None, log: Callable[[str], None] = print,
                    state_path: str | Path | None = None, dtype: torch.dtype | None = None,
                    ) -> tuple[RatePredictor, dict[str, Any]]:
    """Train a `RatePredictor` on `samples` (captions) with `vlm` frozen; returns it (on the CPU) and a
    training card. `samples` may be any sequence that slices into Samples (read lazily, batch by batch);
    `state_path` makes the run resumable (module docstring); `dtype` is the images' dtype (the model's)."""
    t0 = time.time()
    model = vlm.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    text_cfg = getattr(model.config, "text_config", None) or model.config
    dims = DecoderDims.from_config(model.config)
    if not 1 <= cfg.K < dims.n_layers:
        raise ValueError(f"K: must lie in [1, {dims.n_layers}), got {cfg.K}")
    if len(samples) == 0:
        raise ValueError("samples: nothing to train on")
    rank, world = _world()
    torch.manual_seed(cfg.seed)
    pred = RatePredictor(int(text_cfg.num_attention_heads), cfg.rates, cfg.K).to(device)
    n_batches = math.ceil(len(samples) / cfg.batch_size)

    def batch_at(i: int, shard: bool = True) -> TeacherBatch | None:
        chunk = list(samples[i * cfg.batch_size:(i + 1) * cfg.batch_size])
        if shard and world > 1:
            chunk = chunk[rank::world]
        return make_teacher_batch(vlm, chunk, encode).to(device, dtype) if chunk else None

    if cfg.target is None:
        tb = batch_at(0, shard=False)
        n_prompt = float(tb.attention_mask[:, : tb.prompt_length].sum(1).float().mean())
        target = toy_target(int(round(n_prompt)), tb.spans[0].n_visual, cfg.K, dims)
    else:
        target = cfg.target
    opt = torch.optim.AdamW(pred.parameters(), lr=cfg.lr, weight_decay=0.0)
    total = cfg.epochs * n_batches
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * s / max(total, 1)))) / cfg.lr)
    # one generator draws the epochs' batch orders and (in one process) the Gumbel noise; under torchrun
    # the noise of each rank and step is seeded on its own, so every rank draws the same orders
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    step, order = 0, []
    saved = load_train_state(state_path) if state_path is not None else None
    if saved is not None:
        if saved["recipe"] != json_ready(cfg.recipe()):
            raise ValueError(f"state_path: {state_path} holds a run of another recipe {saved['recipe']}; "
                             "delete it or train into another folder")
        pred.load_state_dict(saved["predictor"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        g.set_state(saved["generator"])
        step, order, history, target = saved["step"], saved["order"], saved["history"], saved["target"]
        log(f"resumed at step {step} of {total} from {state_path}")

    def save() -> None:
        if state_path is not None and rank == 0:
            Path(state_path).parent.mkdir(parents=True, exist_ok=True)
            save_train_state(state_path, {
                "predictor": pred.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": g.get_state(), "step": step, "order": order, "history": history, "target": target,
                "recipe": json_ready(cfg.recipe())})

    while step < total:
        epoch, pos = divmod(step, n_batches)
        if pos == 0:
            order = torch.randperm(n_batches, generator=g).tolist()
        lam = 0.0 if epoch < cfg.warmup_epochs else cfg.lam
        noise = g if world == 1 else torch.Generator().manual_seed(cfg.seed * 1_000_003 + 10_007 * rank + step)
        tb = batch_at(order[pos])
        opt.zero_grad()
        stats: dict[str, float] = {}
        if tb is not None:
            loss, stats, _ = batch_loss(vlm, tb, pred, cfg, target, lam, dims, noise)
            loss.backward()
        _average_grads(pred.parameters(), world)
        opt.step()
        sched.step()
        step += 1
        history.append({"step": step, "epoch": epoch, **{k: round(v, 6) for k, v in stats.items()}})
        if pos == n_batches - 1:
            last = [h for h in history[-n_batches:] if "loss" in h]
            mean = {k: sum(h[k] for h in last) / max(len(last), 1) for k in ("loss", "task", "flops", "rate")}
            log(f"epoch {epoch}: loss {mean['loss']:.4f} task {mean['task']:.4f} flops {mean['flops']:.4f}"
                f" (target {target:.4f}) rate {mean['rate']:.3f}")
        if step % cfg.save_every == 0 or step == total:
            save()
    card: dict[str, Any] = {"train": asdict(cfg), "target": target, "steps": step, "n_samples": len(samples),
                            "history": history}
    if rank == 0:
        feats, costs = collect_features(vlm, (batch_at(i, shard=False) for i in range(n_batches)), pred, dims)
        pred = pred.cpu()
        card["argmax_flops_before_calibration"] = argmax_flops(pred, feats, costs, dims.n_layers)
        if cfg.calibrate:
            card["calibration_beta"] = calibrate_rate_bias(pred, feats, costs, dims.n_layers, target)
            card["argmax_flops_after_calibration"] = argmax_flops(pred, feats, costs, dims.n_layers)
            log(f"calibration: argmax FLOPs {card['argmax_flops_before_calibration']:.4f} -> "
                f"{card['argmax_flops_after_calibration']:.4f} (beta {card['calibration_beta']:+.3f})")
    pred = pred.cpu()
    state = _from_rank0({"weights": pred.state_dict(), "card": card}, world)
    pred.load_state_dict(state["weights"])
    card = state["card"]
    card["train_time_s"] = round(time.time() - t0, 1)
    return pred.eval(), card


def json_ready(obj: Any) -> Any:
    """Tuples as lists, as a saved state reads them back (so recipes compare equal)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------- argmax calibration
Costs = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per batch: dense [B, T], pruned [B, T, C], valid


@torch.no_grad()
def collect_features(vlm: Any, batches: Iterable[TeacherBatch], pred: RatePredictor, dims: DecoderDims,
                     ) -> tuple[list[torch.Tensor], Costs]:
    """The predictor's inputs a_t on every teacher-forced row (layers before K do not depend on the masks,
    so one pass per batch gives them for any predictor) and the step costs, on the CPU."""
    feats, costs = [], []
    for tb in batches:
        feats.append(policy_pass(vlm.model, tb, pred, hard=True).features.cpu())
        costs.append((*batch_costs(tb, pred.rates, dims), tb.valid.cpu()))
    return feats, costs


def argmax_flops(pred: RatePredictor, feats: Sequence[torch.Tensor], costs: Costs, n_layers: int,
                 beta: float = 0.0) -> float:
    """Relative FLOPs of argmax inference over the teacher-forced rows, with logits + beta * r_c."""
    num = den = 0.0
    shift = beta * pred.rate_tensor()
    for a, (dense, pruned, valid) in zip(feats, costs):
        with torch.no_grad():
            c = (pred(a) + shift).argmax(-1)
        y = F.one_hot(c, pred.n_classes).double()
        late = (y * pruned).sum(-1)
        num += float(((pred.K * dense + (n_layers - pred.K) * late) * valid).sum())
        den += float((n_layers * dense * valid).sum())
    return num / den


def calibrate_rate_bias(pred: RatePredictor, feats: Sequence[torch.Tensor], costs: Costs, n_layers: int,
                        target: float, iters: int = 40) -> float:
    """Changed from the paper (which reports no such step): Gumbel sampling meets the FLOPs target in
    expectation, but inference takes the argmax, which can land elsewhere. Bisect a shift beta of the logits
    along the rate axis (b_c += beta r_c; the argmax FLOPs fall monotonically in beta) so that argmax
    inference on the training rows meets the target, and fold it into the bias. Returns beta."""
    lo, hi = -50.0, 50.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if argmax_flops(pred, feats, costs, n_layers, mid) > target:
            lo = mid
        else:
            hi = mid
    beta = hi  # the smallest shift found whose FLOPs are at or below the target
    with torch.no_grad():
        pred.linear.bias += beta * pred.rate_tensor()
    return beta
