"""Training ATP modules (spec §3.10 and §4): task loss + budget penalties, at toy scale and at paper scale.

    python -m papers.atp.train --budget 144 --decoder finetune          # -> checkpoints/atp-toy-144-finetune/
    python -m papers.atp.train --all                                    # every run the atp-* targets need
    torchrun --nproc_per_node 8 -m papers.atp.train --scale paper --model-path /models/llava-1.5-7b-hf \
        --train-root /data/playground/data --budget 144 --decoder frozen --set atp.grad_accum=1
        # -> figures/atp/paper/runs/atp-paper-144-frozen/

Objective (Eq. 14): L = L_ntp + lambda_ATP * L_ATP (Eq. 12) + lambda_target * |N_bar - N_target| (Eq. 13), with
soft masks inside the decoder's attention (`papers.atp.module.SoftATP`). N_target keeps the paper's fraction
of visual tokens: 144/576 = 25 % ("144") and 88/576 = 15.3 % ("88"). Two regimes (Table 3): `frozen` trains
only the ATP modules; `finetune` also trains the language decoder. `fixed_keep` trains the Table 2 fixed-ratio
baselines: the same module ranks tokens by S_red and discards all but the top c_k (hard masks), and the decoder
is fine-tuned.

Toy scale (`train_toy`): ToyWorld teacher-forced batches, its own loop with two learning rates (ATP 1e-3,
decoder 1e-4) and a few hundred steps; a run is deterministic given its config. Paper scale (`train_paper`):
LLaVA-1.5's 665k instruction mixture (`common.data.llava_instruct`, text-only entries skipped) as labelled
batches (`common.models.llava_sft`), the common training loop (`common.models.train`: bf16 autocast, gradient
checkpointing, gradient accumulation, `torchrun` data parallelism, resumable from `<run>/state/`), the
paper's optimisation numbers from `papers.atp.runs.Options`.

A run folder holds `atp.safetensors` (the modules), `card.json` (config, steps, loss summary, achieved
average tokens measured with `common.flops`) and, when the decoder trained, `decoder.safetensors`.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from common import flops as F
from common import spans as S
from common.artifacts import atomic_write_text, portable
from common.attention import decoder_of
from common.data.llava_instruct import Conversation, instruct_path, load_conversations
from common.data.sample import Sample
from common.data.toyworld import toyworld_split, toyworld_stream
from common.models import train as T
from common.models.batching import IGNORE, left_pad
from common.models.checkpoint import CARD, data_version, save_tensors
from common.models.load import checkpoint_sha256, load_vlm
from common.models.llava_sft import sft_batch_fn
from common.reduction import reduce_tokens
from common.run import MissingInputs, Run, RunConfig, add_arguments
from papers.atp.method import ATPReducer
from papers.atp.module import (ATPConfig, ATPModules, SoftATP, atp_loss, average_tokens_soft, load_atp, save_atp,
                               soft_atp, soft_training, target_loss)
from papers.atp.runs import (BASE_CHECKPOINT, Options, TrainConfig, all_runs, build_atp_config, n_target_of,
                             runs_dir)

LAMBDA_MAX = 50.0  # bound of the grown budget weight
STATE = Path("state") / "train_state.pt"  # resumable state of a paper-scale run, inside its folder
TRAINING_HINT = "ATP's paper-scale runs train on LLaVA-1.5's stage-2 data (papers/atp/README.md, 'Paper scale')."


# ------------------------------------------------------------------------------------------ toy batches
@dataclass
class TrainBatch:
    """A teacher-forced batch: left-padded [pad][prompt][answer]; labels on answer tokens only."""

    inputs: dict  # input_ids, attention_mask, pixel_values
    labels: torch.Tensor  # [B, L], IGNORE except answer tokens
    kinds: torch.Tensor  # [B, L] int8 (answers RESPONSE)


def teacher_forced(vlm, samples) -> TrainBatch:
    """Prompt (from `vlm.build_inputs`) + answer tokens (`vlm.answer_ids(sample)`, else the tokenizer) + EOS."""
    prompt = dict(vlm.build_inputs(samples))
    ids, am = prompt["input_ids"], prompt["attention_mask"]
    rows, lab = [], []
    for b, s in enumerate(samples):
        p = ids[b, am[b].bool()].tolist()
        a = list(_answer_ids(vlm, s))
        rows.append(p + a)
        lab.append([IGNORE] * len(p) + a)
    padded = left_pad(rows, _pad_id(vlm), labels=lab)
    labels = padded.pop("labels")
    kinds = S.kinds_of(S.compute_spans(padded["input_ids"], padded["attention_mask"], vlm.image_token_id))
    kinds[labels != IGNORE] = S.RESPONSE
    prompt.update(padded)
    return TrainBatch(prompt, labels, kinds)


def _answer_ids(vlm, sample) -> list[int]:
    if hasattr(vlm, "answer_ids"):
        return list(vlm.answer_ids(sample))
    tok = vlm.tokenizer
    ids = tok(" " + sample.answer, add_special_tokens=False)["input_ids"]
    return list(ids) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


def _pad_id(vlm) -> int:
    if getattr(vlm, "pad_id", None) is not None:
        return int(vlm.pad_id)
    tok = getattr(vlm, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    return int(pid if pid is not None else vlm.model.generation_config.pad_token_id or 0)


def toy_batches(vlm, cfg: TrainConfig, version: int) -> Iterator[TrainBatch]:
    """Teacher-forced batches of ToyWorld data `version` (the base checkpoint's, `data_version`)."""
    stream = toyworld_stream(seed=cfg.data_seed, families=cfg.families, grid=_grid_of(vlm), version=version)
    while True:
        yield teacher_forced(vlm, [next(stream) for _ in range(cfg.batch_size)])


def _grid_of(vlm) -> int:
    return math.isqrt(int(vlm.num_visual_tokens))


# ---------------------------------------------------------------------------------------- the objective
def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens (L_ntp)."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                       ignore_index=IGNORE)


def budget_terms(masks: list[torch.Tensor], atp_cfg: ATPConfig, cfg: TrainConfig, n_target: float,
                 lam: float) -> torch.Tensor:
    """lambda_ATP * Eq. 12 + lam * Eq. 13 (in tokens, or in fractions with `target_scale="fraction"`)."""
    scale = 1.0 if cfg.target_scale == "tokens" else 1.0 / atp_cfg.n_visual
    return cfg.lambda_atp * atp_loss(masks, atp_cfg) + lam * (target_loss(masks, atp_cfg, n_target) * scale)


def grown_lambda(lam: float, avg: float, cfg: TrainConfig, n_target: float) -> float:
    """The budget weight of the next step (`TrainConfig.lambda_growth`): rises while over budget."""
    return min(max(lam * math.exp(cfg.lambda_growth * (avg - n_target) / n_target), cfg.lambda_target), LAMBDA_MAX)


# ---------------------------------------------------------------------------------------- toy training
def train_atp(model: nn.Module, batches: Iterator[TrainBatch], cfg: TrainConfig, atp_cfg: ATPConfig,
              log: Callable[[str], None] = print) -> tuple[ATPModules, list[dict]]:
    """Train ATP modules (and the decoder for `finetune` / fixed-ratio runs) in place; returns (modules, log rows)."""
    torch.manual_seed(cfg.seed)
    atp = ATPModules(atp_cfg).to(next(model.parameters()).device)
    dec = decoder_of(model)
    tune_llm = cfg.tunes_llm
    for p in model.parameters():
        p.requires_grad_(False)
    groups = []
    if atp_cfg.fixed_keep is None:
        groups.append({"params": list(atp.parameters()), "lr": cfg.lr_atp})
    if tune_llm:
        for p in dec.parameters():
            p.requires_grad_(True)
        groups.append({"params": [p for p in dec.parameters()], "lr": cfg.lr_llm})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.steps // 20)) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))  # LLaVA-1.5: warmup 3-5 %, cosine
    n_target = n_target_of(cfg, atp_cfg.n_visual)
    model.train(tune_llm)
    atp.train()
    rows = []
    t0 = time.time()
    lam = cfg.lambda_target  # the budget weight of this step (grows while over budget, cfg.lambda_growth)
    for step in range(cfg.steps):
        tb = next(batches)
        with soft_atp(model, atp, tb.kinds) as ss:
            logits = model(**tb.inputs).logits
        l_ntp = task_loss(logits, tb.labels)
        loss = l_ntp
        if atp_cfg.fixed_keep is None:
            loss = loss + budget_terms(ss.masks, atp_cfg, cfg, n_target, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            avg = float(average_tokens_soft(ss.masks, atp_cfg).mean())
            hard = [float((g > 0.5).float().sum(-1).mean()) for g in ss.masks]
            th = [(float(d.theta_r.mean()), float(d.theta_s.mean())) for d in ss.decisions]
        row = {"step": step, "loss": float(loss.detach()), "ntp": float(l_ntp.detach()), "avg_tokens_soft": avg,
               "kept_hard": hard, "theta": th, "lambda_target": lam}
        if atp_cfg.fixed_keep is None and cfg.lambda_growth:
            lam = grown_lambda(lam, avg, cfg, n_target)
        rows.append(row)
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d} loss {row['loss']:.3f} ntp {row['ntp']:.3f} avg {avg:.1f}/{n_target:.1f} "
                f"kept {[round(h, 1) for h in hard]} lambda {row['lambda_target']:.2f} theta "
                f"{[(round(a, 3), round(b, 3)) for a, b in th]} ({time.time() - t0:.0f}s)")
    model.eval()
    atp.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return atp, rows


# ------------------------------------------------------------------------------------------ measurement
@torch.no_grad()
def measure_tokens(model: nn.Module, atp: ATPModules, batches: Sequence[dict], image_token_id: int) -> dict:
    """Hard-pruned prefill over `batches` of prompt inputs: per-instance kept counts and all-layer averages
    (computed with `common.flops`, the function behind the Table 2 golden numbers) plus thresholds."""
    cfg = atp.config
    red = ATPReducer(modules=atp)
    kept, avgs, decisions = [], [], []
    for inputs in batches:
        with reduce_tokens(model, red, image_token_id=image_token_id) as st:
            model(**inputs)
        decisions += [st.info[l] for l in cfg.layers]
        for b in range(inputs["input_ids"].shape[0]):
            c = [st.kept_counts[l][b] for l in cfg.layers]
            kept.append(c)
            avgs.append(F.average_visual_tokens(F.visual_tokens_per_layer(cfg.n_visual, cfg.layers, c,
                                                                          cfg.n_layers), cfg.n_layers))
    theta = {l: {"theta_r": torch.cat([d.theta_r for d in decisions if d.layer == l]).tolist(),
                 "theta_s": torch.cat([d.theta_s for d in decisions if d.layer == l]).tolist()} for l in cfg.layers}
    return {"kept": kept, "avg_tokens": avgs, "mean_avg_tokens": sum(avgs) / len(avgs), "theta": theta}


# ------------------------------------------------------------------------------------------ run folders
def save_run(folder: Path, atp: ATPModules, model: nn.Module, cfg: TrainConfig, rows: list[dict], measured: dict,
             extra: dict) -> None:
    """Checkpoint folder: ATP weights + card; the decoder too when it was trained."""
    n_target = n_target_of(cfg, atp.config.n_visual)
    card = {
        "train": asdict(cfg), "n_target": n_target, "steps": cfg.steps,
        "final": rows[-1] if rows else None,
        "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]] if rows else None,
        "achieved_avg_tokens": measured["mean_avg_tokens"],
        "achieved_rel_error": measured["mean_avg_tokens"] / n_target - 1 if n_target else None,
        "mean_kept": [sum(c[k] for c in measured["kept"]) / len(measured["kept"]) for k in range(len(atp.config.layers))],
        **extra,
    }
    if cfg.tunes_llm:  # before the card: a folder with a card is a finished run
        save_tensors(decoder_of(model).state_dict(), folder / "decoder.safetensors")
    atomic_write_text(folder / "train_log.json", json.dumps(rows) + "\n")
    save_atp(atp, folder, card)


def load_run(folder: Path | str, vlm) -> tuple[ATPModules, dict]:
    """ATP modules of a run, and the run's decoder weights loaded into `vlm` (if the run trained them)."""
    folder = Path(folder)
    atp, card = load_atp(folder)
    if (folder / "decoder.safetensors").exists():
        decoder_of(vlm.model).load_state_dict(load_file(str(folder / "decoder.safetensors")))
    return atp, card


def is_trained(folder: Path) -> bool:
    return (folder / CARD).exists()


def train_toy(cfg: TrainConfig, folder: Path, base: Path = BASE_CHECKPOINT) -> Path:
    """Train one configuration on the toy model and write its folder; returns the folder."""
    t0 = time.time()
    vlm = load_vlm("toy", base, device="cpu", dtype=torch.float32)  # the committed runs: CPU, float32
    model = vlm.model
    n_layers = len(decoder_of(model).layers)
    atp_cfg = build_atp_config(cfg, int(vlm.num_visual_tokens), n_layers)
    version = data_version(base)
    atp, rows = train_atp(model, toy_batches(vlm, cfg, version), cfg, atp_cfg)
    val = toyworld_split("val", cfg.n_val, seed=cfg.data_seed, families=cfg.families, grid=_grid_of(vlm),
                         version=version)
    batches = [dict(vlm.build_inputs(val[i:i + 16])) for i in range(0, len(val), 16)]
    measured = measure_tokens(model, atp, batches, vlm.image_token_id)
    base_hash = checkpoint_sha256(base) if Path(base).is_dir() else None  # the one folder hasher, as at paper scale
    save_run(folder, atp, model, cfg, rows, measured, {"base_checkpoint": portable(str(base)), "base_sha256": base_hash,
                                                       "wall_time_s": round(time.time() - t0, 1)})
    print(f"{folder.name}: achieved {measured['mean_avg_tokens']:.2f} tokens vs target "
          f"{n_target_of(cfg, atp_cfg.n_visual):.2f} in {time.time() - t0:.0f}s")
    return folder


# ---------------------------------------------------------------------------------------- paper scale
def training_kinds(batch: dict, image_token_id: int) -> torch.Tensor:
    """[B, L] int8 token kinds of a labelled batch, any padding side: text before the image SYSTEM, the image
    VISUAL, labelled (answer) tokens RESPONSE, every other text token INSTRUCTION (the human turns: the queries
    S_cross averages over, as at inference), padding PAD."""
    ids, valid, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
    kinds = torch.full(ids.shape, S.INSTRUCTION, dtype=torch.int8, device=ids.device)
    vis = (ids == image_token_id) & valid
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(vis, pos, ids.shape[1]).amin(1, keepdim=True)
    kinds[pos < first] = S.SYSTEM
    kinds[vis] = S.VISUAL
    kinds[labels != IGNORE] = S.RESPONSE
    return kinds.masked_fill(~valid, S.PAD)


class ATPObjective(nn.Module):
    """A paper-scale run's trained model: the LLaVA and its ATP modules; `forward(batch)` is Eq. 14's loss."""

    def __init__(self, model: nn.Module, atp: ATPModules, soft: SoftATP, cfg: TrainConfig, image_token_id: int):
        super().__init__()
        self.model, self.atp = model, atp
        self.soft, self.cfg, self.image_token_id = soft, cfg, image_token_id
        self.n_target = n_target_of(cfg, atp.config.n_visual)

    def forward(self, batch: dict) -> torch.Tensor:
        ss = self.soft.begin(training_kinds(batch, self.image_token_id))
        logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = task_loss(logits, batch["labels"])
        if self.atp.config.fixed_keep is None:
            loss = loss + budget_terms(ss.masks, self.atp.config, self.cfg, self.n_target, self.cfg.lambda_target)
        return loss


def paper_recipe(cfg: TrainConfig, opts: Options, n_conversations: int, world: int = 1) -> T.TrainConfig:
    """The common loop's config for a paper-scale run (one epoch unless `train_steps` says otherwise)."""
    per_step = opts.train_batch * world * opts.grad_accum
    steps = opts.train_steps or max(1, n_conversations // per_step)
    return T.TrainConfig(steps=steps, lr=opts.lr if cfg.tunes_llm else opts.lr_frozen, seed=cfg.seed,
                         save_every=opts.save_every, grad_accum=opts.grad_accum, bf16=opts.bf16,
                         grad_checkpointing=opts.grad_checkpointing, state_params_only=True, betas=(0.9, 0.999),
                         min_lr_frac=0.0)  # LLaVA-1.5: AdamW's default betas, cosine to 0


def missing_training_data(train_root: Path | None) -> list[str]:
    """What a paper-scale ATP run lacks to train (one line per missing input, naming the layout expected)."""
    if train_root is None:
        return ["train_root: not set (--train-root or TRAIN_ROOT=<LLaVA's playground/data>, holding "
                "llava_v1_5_mix665k.json and its images)"]
    try:
        instruct_path(train_root)
    except FileNotFoundError as err:
        return [str(err)]
    return []


def training_conversations(train_root: Path | None, opts: Options) -> list[Conversation]:
    """LLaVA-665k's conversations with an image (ATP prunes an image's tokens; text-only entries train nothing)."""
    missing = missing_training_data(train_root)
    if missing:
        raise MissingInputs(missing, TRAINING_HINT)
    return load_conversations(instruct_path(train_root), train_root, limit=opts.train_limit or None,
                              require_image=True)


def train_paper(run: Run, cfg: TrainConfig, folder: Path, opts: Options) -> Path:
    """Train one configuration on the run's LLaVA with LLaVA-665k (resumable); returns the folder."""
    t0 = time.time()
    model_missing = [] if run.checkpoint is not None and (Path(run.checkpoint) / "config.json").is_file() else [
        f"model_path: {run.checkpoint} is not an llava-hf LLaVA folder (config.json, *.safetensors, processor files)"]
    if model_missing or missing_training_data(run.cfg.train_root):
        raise MissingInputs(model_missing + missing_training_data(run.cfg.train_root), TRAINING_HINT)
    convs = training_conversations(run.cfg.train_root, opts)
    dtype = torch.float32 if cfg.tunes_llm or not opts.bf16 else torch.bfloat16  # trained weights stay fp32
    vlm = load_vlm("paper", run.checkpoint, device=run.device, dtype=dtype)
    model = vlm.model
    atp_cfg = build_atp_config(cfg, int(vlm.num_visual_tokens), len(decoder_of(model).layers), hidden=opts.hidden)
    torch.manual_seed(cfg.seed)
    atp = ATPModules(atp_cfg).to(run.device)
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.tunes_llm:
        for p in decoder_of(model).parameters():
            p.requires_grad_(True)
    for p in atp.parameters():
        p.requires_grad_(atp_cfg.fixed_keep is None)
    recipe = paper_recipe(cfg, opts, len(convs), run.world)
    # the paper's loss: a fixed budget weight (the growing one is a toy-scale addition, `TrainConfig.lambda_growth`)
    paper_cfg = replace(cfg, lambda_atp=opts.lambda_atp, lambda_target=opts.lambda_target, lambda_growth=0.0,
                        steps=recipe.steps)
    batch_fn = sft_batch_fn(vlm, convs, opts.train_batch * run.world, seed=cfg.data_seed,
                            max_length=opts.max_length)
    with soft_training(model, atp) as soft:
        objective = ATPObjective(model, atp, soft, paper_cfg, vlm.image_token_id)
        history = T.train(objective, batch_fn, recipe, state_path=folder / STATE, loss_fn=lambda m, b: m(b),
                          progress=run.is_main, desc=cfg.name(run.scale))
    if run.is_main:
        prompts = [_prompt_sample(c) for c in convs[:opts.n_val]]
        batches = [_on(model, vlm.build_inputs(prompts[i:i + run.cfg.batch_size]))
                   for i in range(0, len(prompts), run.cfg.batch_size)]
        measured = measure_tokens(model, atp.eval(), batches, vlm.image_token_id)
        save_run(folder, atp, model, paper_cfg, history, measured,
                 {"base_checkpoint": str(run.checkpoint), "base_sha256": run.checkpoint_hash, "recipe": asdict(recipe),
                  "conversations": len(convs), "wall_time_s": round(time.time() - t0, 1), "world_size": run.world})
        print(f"{folder.name}: achieved {measured['mean_avg_tokens']:.2f} tokens vs target "
              f"{n_target_of(cfg, atp_cfg.n_visual):.2f} in {time.time() - t0:.0f}s", flush=True)
    if run.world > 1:
        dist.barrier()  # every rank returns once the run is on disk
    return folder


def _on(model: nn.Module, inputs) -> dict:
    """Model inputs on the model's device, images in its dtype."""
    p = next(model.parameters())
    return {k: v.to(p.device, dtype=p.dtype) if v.is_floating_point() else v.to(p.device) for k, v in inputs.items()}


def _prompt_sample(conv: Conversation) -> Sample:
    """The first image turn of a conversation as an evaluation-style prompt (for the achieved-token measurement)."""
    human, answer = conv.turns[conv.image_turn or 0]
    return Sample(id=conv.id, family="llava665k", images=[conv.load_image()], question=human, answer=answer)


# ------------------------------------------------------------------------------------------ entry points
def ensure_run(run: Run, cfg: TrainConfig, opts: Options | None = None) -> Path:
    """The folder of a trained run of `cfg` at the run's scale, trained now if missing."""
    opts = opts or run.options(Options)
    folder = runs_dir(run.scale, run.out_dir, opts) / cfg.name(run.scale)
    if is_trained(folder):
        return folder
    if run.scale == "toy":
        print(f"training missing checkpoint {folder.name} ...", flush=True)
        return train_toy(cfg, folder, run.checkpoint)
    if run.scale == "paper":
        print(f"training missing run {folder} ...", flush=True)
        return train_paper(run, cfg, folder, opts)
    raise ValueError(f"scale: ATP runs train at toy or paper scale, not {run.scale!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train ATP modules (toy: ToyWorld; paper: LLaVA-665k)")
    p.add_argument("--budget", type=int, default=144)
    p.add_argument("--decoder", choices=("frozen", "finetune"), default="frozen")
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="toy scale (paper: --set atp.train_steps)")
    p.add_argument("--fixed-keep", type=int, nargs="+", help="fixed-ratio baseline: paper counts of 576")
    p.add_argument("--paper-layers", type=int, nargs="+", help="module positions of 32 (default: by budget)")
    p.add_argument("--atp", default="{}", help="JSON overrides of ATPConfig, e.g. '{\"use_sp\": false}'")
    p.add_argument("--soft", action="store_true", help="plain soft masks (Eq. 9-11) instead of straight-through")
    p.add_argument("--force", action="store_true", help="retrain even if the run exists")
    p.add_argument("--all", action="store_true", help="every run the atp-* targets need (missing ones only)")
    add_arguments(p)
    a = p.parse_args(argv)
    rc = RunConfig.from_args(a)
    run = Run.for_scale(rc, paper="atp", checkpoint=BASE_CHECKPOINT)
    opts = run.options(Options)
    if a.all:
        cfgs = all_runs()
    else:
        cfgs = [TrainConfig(budget=a.budget, decoder=a.decoder, steps=a.steps,
                            fixed_keep=tuple(a.fixed_keep) if a.fixed_keep else None,
                            paper_layers=tuple(a.paper_layers) if a.paper_layers else None, ste=not a.soft,
                            atp=json.loads(a.atp))]
    for cfg in cfgs:
        folder = runs_dir(run.scale, run.out_dir, opts) / cfg.name(run.scale)
        if is_trained(folder) and not a.force:
            print(f"{folder} exists; --force retrains")
            continue
        if a.force:  # a finished run is one with a card; a paper run's state would resume it
            (folder / CARD).unlink(missing_ok=True)
            shutil.rmtree(folder / STATE.parent, ignore_errors=True)
        try:
            ensure_run(run, cfg, opts)
        except MissingInputs as err:
            print(err, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
