"""LLaVA-STF's recipe at paper scale: a projector variant trained into an llava-hf LLaVA-1.5 on LLaVA's own data.

    python -m papers.stf.train mbtf-stf --scale paper --model-path /models/llava-1.5-7b-hf \
        --train-root /data/LLaVA/playground/data --dtype bf16
    torchrun --nproc_per_node 8 -m papers.stf.train mbtf-stf --scale paper ...      # data-parallel

The paper's two stages (LLaVA-1.5's recipe, `Options` holds every number):
  1. alignment on LLaVA-Pretrain (`<train_root>/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json`, images under
     `LLaVA-Pretrain/images/`): only the new projector trains; lr 1e-3, global batch 256, one epoch.
  2. instruction tuning on `<train_root>/llava_v1_5_mix665k.json` (images under coco/, gqa/, ocr_vqa/,
     textvqa/, vg/ of train_root; text-only ShareGPT entries included): projector + LLM (`stf.stage2_llm`);
     lr 2e-5, global batch 128, one epoch.
AdamW without weight decay, 3 % warmup + cosine, answer-only loss (`common.models.train`); the vision tower never
trains. Batches are LLaVA conversations with the answers labelled (`common.models.llava_sft.sft_batch_fn`: the
"plain" caption template in stage 1, USER/ASSISTANT turns in stage 2, rows cut at `max_length` tokens, sharded by
rank under torchrun); the global batch is `micro_batch` per GPU x GPUs x gradient accumulation.

Starting point: the LLM and tower of `--model-path`. With llava-hf/llava-1.5-7b-hf that LLM has already been
instruction-tuned with LLaVA's 576-token MLP projector (as the toy recipe's); the paper's exact start is an
llava-hf folder holding CLIP ViT-L/14-336 and Vicuna-7B-v1.5 (any projector: every variant gets a fresh one).

Precision and memory: weights load in fp32 unless `--dtype bf16` (pure bf16 weights and optimiser state); `stf.bf16`
autocasts the forward pass to bf16. A 7B stage 2 that trains the LLM needs about 16 bytes per parameter in fp32
(112 GB: more than one 80 GB GPU) or 8 in pure bf16 (56 GB plus activations; gradient checkpointing is on by
default); `--set stf.stage2_llm=false` trains the projector only. The resumable state per stage (`<out>/_train/`)
holds the trained parameters only; a rerun resumes from it, and a finished folder (card.json) is not retrained.

Output `<variants_root>/stf-<variant>/`: the llava-hf files of the trained model (`save_pretrained`: weights with
the STF projector under `multi_modal_projector.*`, config.json with `stf_projector`), the base's processor files,
and card.json (variant, projector config, tokens per image, options, base and data hashes, losses, times).
`load_paper_variant` rebuilds it through the run's model loader.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers.utils import logging as hf_logging

from common.artifacts import atomic_write_text
from common.data.llava_instruct import (INSTRUCT_IMAGE_DIRS, PRETRAIN_IMAGES, instruct_path, load_conversations,
                                        pretrain_path)
from common.models.llava_sft import sft_batch_fn
from common.models.load import checkpoint_sha256, load_vlm
from common.models.train import TrainConfig, rank_world, train
from common.run import MissingInputs, Run
from papers.stf.modules import STFConfig, STFProjector, install_projector
from papers.stf.variants import CARD, Options, attach_projector, is_trained, set_image_tokens, set_trainable, variant_spec

PROJECTOR_PREFIX = "multi_modal_projector."
STAGES = (1, 2)
TEMPLATES = {1: "plain", 2: "chat"}  # LLaVA-1.5: `--version plain` captions in stage 1, conversations in stage 2
LAYOUT_HINT = ("Expected LLaVA-1.5's training layout under train_root (LLaVA's playground/data): "
               "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json + LLaVA-Pretrain/images/ (stage 1), "
               "llava_v1_5_mix665k.json + " + ", ".join(f"{d}/" for d in INSTRUCT_IMAGE_DIRS) + " (stage 2).")


def missing_training_inputs(train_root: Path | None) -> list[str]:
    """One line per absent training file (both stages' JSON files) under `train_root`."""
    if train_root is None:
        return ["train_root: not set (--train-root or TRAIN_ROOT=<LLaVA's playground/data>)"]
    missing = []
    for locate in (pretrain_path, instruct_path):
        try:
            locate(train_root)
        except FileNotFoundError as err:
            missing.append(str(err))
    return missing


def missing_model(model_path: Path | None) -> list[str]:
    """A line naming the base model folder if it is absent (an llava-hf LLaVA-1.5 folder)."""
    if model_path is not None and (Path(model_path) / "config.json").is_file():
        return []
    return [f"model_path: {model_path or 'not set'} (an llava-hf LLaVA-1.5 folder with config.json; --model-path "
            "or MODEL_PATH)"]


def require_training_inputs(run: Run) -> None:
    """Fail before any work, naming the absent base model and training files and the layout expected."""
    missing = missing_model(run.cfg.model_path) + missing_training_inputs(run.cfg.train_root)
    if missing:
        raise MissingInputs(missing, LAYOUT_HINT)


def stage_data(train_root: Path, stage: int, limit: int | None) -> tuple[Path, list]:
    """(JSON path, conversations) of a stage: LLaVA-Pretrain captions (1) or the 665K instruction mix (2)."""
    root = Path(train_root)
    if stage == 1:
        path = pretrain_path(root)
        return path, load_conversations(path, root / PRETRAIN_IMAGES, limit=limit)
    path = instruct_path(root)
    return path, load_conversations(path, root, limit=limit)


def schedule(opts: Options, stage: int, n_conversations: int, world: int) -> tuple[int, int]:
    """(optimiser steps, gradient accumulation) of a stage: the global batch is `micro_batch * world * accum`;
    steps default to one epoch (the paper)."""
    global_batch = opts.stage1_batch if stage == 1 else opts.stage2_batch
    per_step = opts.micro_batch * world
    if opts.micro_batch < 1 or global_batch % per_step:
        raise ValueError(f"options.stf: stage{stage}_batch={global_batch} is not a multiple of micro_batch "
                         f"({opts.micro_batch}) x GPUs ({world})")
    steps = opts.stage1_steps if stage == 1 else opts.stage2_steps
    if steps <= 0:
        steps = max(1, math.ceil(n_conversations / global_batch))
    return steps, global_batch // per_step


def train_dtype(run: Run) -> torch.dtype:
    """fp32 weights (AdamW master copy) unless the run asks for bf16; fp16 weights cannot be trained by AdamW
    without loss scaling, so `--dtype fp16` is refused."""
    if run.cfg.dtype == "bf16":
        return torch.bfloat16
    if run.cfg.dtype == "fp16":
        raise ValueError("dtype: fp16 weights are not trained here (no loss scaling); use --dtype bf16 or fp32")
    return torch.float32


def train_paper_variant(run: Run, name: str, out: Path, opts: Options, progress: bool = True) -> dict:
    """Train variant `name` from `run.cfg.model_path` on `run.cfg.train_root` into `out`; return its card.

    A finished folder is returned as is. Every rank trains (the batches are sharded), rank 0 writes.
    """
    spec = variant_spec(name)
    out = Path(out)
    if is_trained(out):
        return json.loads((out / CARD).read_text())
    require_training_inputs(run)
    base = Path(run.cfg.model_path)
    rank, world = rank_world()
    vlm = load_vlm("paper", base, device=run.device, dtype=train_dtype(run))
    proj = attach_projector(vlm, name, opts.num_blocks, run.cfg.seed, variant=opts.projector)
    limit = opts.train_limit or None
    work = out / "_train"
    t0 = time.time()
    hist: dict[int, list[dict]] = {}
    data: dict[str, Any] = {}
    for stage in STAGES:
        path, convs = stage_data(run.cfg.train_root, stage, limit)
        steps, accum = schedule(opts, stage, len(convs), world)
        data[f"stage{stage}"] = {"file": path, "conversations": len(convs), "steps": steps, "grad_accum": accum,
                                 "world_size": world}
        params = set_trainable(vlm, stage, llm=opts.stage2_llm)
        cfg = TrainConfig(steps=steps, lr=opts.lr1 if stage == 1 else opts.lr2, seed=run.cfg.seed + stage,
                          save_every=opts.save_every, grad_accum=accum, bf16=opts.bf16,
                          grad_checkpointing=opts.grad_checkpointing, state_params_only=True)
        batch_fn = sft_batch_fn(vlm, convs, opts.micro_batch * world, seed=run.cfg.seed + stage,
                                max_length=opts.max_length or None, template=TEMPLATES[stage])
        hist[stage] = train(vlm.model, batch_fn, cfg, state_path=work / f"stage{stage}.pt", params=params,
                            progress=progress, desc=f"stf-{name} stage {stage}")
    for p in vlm.model.parameters():
        p.requires_grad_(False)
    if rank == 0:  # hashing a 13 GB model and a 1 GB JSON file once is enough
        for d in data.values():
            d["sha256"] = checkpoint_sha256(d["file"])
        card = {
            "name": f"stf-{name}", "variant": name, "variant_spec": asdict(spec),
            "stf_config": vlm.model.config.stf_projector, "visual_tokens": proj.num_tokens,
            "options": asdict(opts), "dtype": str(train_dtype(run)), "seed": run.cfg.seed,
            "base_checkpoint": {"path": str(base), "sha256": checkpoint_sha256(base)}, "data": data,
            "params": {"projector": sum(p.numel() for p in proj.parameters()),
                       "model": sum(p.numel() for p in vlm.model.parameters())},
            "wall_time_s_last_session": round(time.time() - t0, 1),
            "final_loss": {str(s): (h[-1]["loss"] if h else None) for s, h in hist.items()},
            "torch": torch.__version__, "platform": platform.platform(),
            "deviation": "LLM and tower from --model-path (paper: CLIP + Vicuna-7B-v1.5); fresh projector",
        }
        save_variant(vlm, base, out, card)
    if world > 1:
        torch.distributed.barrier()
    return json.loads((out / CARD).read_text())


def save_variant(vlm: Any, base: Path, out: Path, card: dict) -> None:
    """The trained model as an llava-hf folder plus the base's processor files; the card last (it marks the
    folder finished)."""
    out.mkdir(parents=True, exist_ok=True)
    vlm.model.save_pretrained(out)
    model_files = {"config.json", "generation_config.json", CARD}
    for f in sorted(Path(base).iterdir()):
        if f.is_file() and f.name not in model_files and not f.name.startswith("model") and \
                not f.name.startswith("pytorch_model") and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    atomic_write_text(out / CARD, json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")


def projector_state(folder: Path) -> dict[str, torch.Tensor]:
    """The `multi_modal_projector.*` tensors of a saved model (one file or shards), keys relative to the projector."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if PROJECTOR_PREFIX in key:
                    out[key.split(PROJECTOR_PREFIX, 1)[1]] = st.get_tensor(key)
    return out


@contextlib.contextmanager
def quiet_transformers():
    """Transformers' warnings off for the duration (restored afterwards)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_paper_variant(run: Run, folder: Path) -> Any:
    """A trained paper-scale variant: the run's loader reads the folder (its LLM and tower), then the STF projector
    recorded in config.json is rebuilt and its weights loaded, and prompts get its tokens per image."""
    folder = Path(folder)
    with quiet_transformers():  # its report would call the projector "newly initialized": it is restored below
        vlm = run.load_vlm(folder)
    raw = getattr(vlm.model.config, "stf_projector", None)
    if not raw:
        raise ValueError(f"{folder}: config.json has no `stf_projector` (not an STF variant folder)")
    param = next(vlm.model.parameters())
    cfg = STFConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()})
    proj = STFProjector(cfg)
    proj.load_state_dict(projector_state(folder), strict=True)
    install_projector(vlm.model, proj.to(device=param.device, dtype=param.dtype).eval())
    set_image_tokens(vlm, proj.num_tokens)
    vlm.name = folder.name
    return vlm
