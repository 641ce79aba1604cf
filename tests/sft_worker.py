"""SFT of a tiny llava-hf model, shared by `tests/test_train_paper.py` and its `torchrun` worker.

    torchrun --nproc_per_node 2 tests/sft_worker.py MODEL_DIR DATA_ROOT OUT

Each rank trains the same run as `run_sft` (interrupted once, then resumed from the state rank 0 wrote),
counts the states it wrote itself and leaves `OUT/rank<r>.json` (history, saves); rank 0 also writes its
final weights to `OUT/weights.pt`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from common.data.llava_instruct import Conversation, load_instruct
from common.models import train as train_module
from common.models.llava_hf import LlavaHF, load_paper_vlm
from common.models.llava_sft import sft_batch_fn
from common.models.train import TrainConfig, train

GLOBAL_BATCH = 4
CFG = TrainConfig(steps=3, lr=3e-3, warmup_frac=0.0, save_every=1, log_every=1)
STOP_AT = 2  # the first run dies fetching the batch of step 2 (0-based), after the state of 2 steps was saved


class Stop(Exception):
    pass


def conversations(data_root: Path) -> list[Conversation]:
    """The fixture's stage-2 data with its text-only entry first twice more, so that with seed 0 some rank's
    half of a global batch is text-only (that rank's projector then gets no gradient)."""
    convs = load_instruct(data_root)
    text = [c for c in convs if c.image is None]
    return text + convs


def load(model_dir: Path) -> LlavaHF:
    """The tiny model with its vision tower frozen (a frozen part, as in LLaVA's recipes)."""
    vlm = load_paper_vlm(model_dir, device="cpu")
    vlm.model.model.vision_tower.requires_grad_(False)
    return vlm


def run_sft(vlm: LlavaHF, batch_fn: Callable[[int], dict], state: Path, cfg: TrainConfig = CFG) -> list[dict]:
    """Train with an interruption at STOP_AT (every rank stops at the same micro-batch) and a resume."""
    def dying(micro: int) -> dict:
        if micro == STOP_AT * cfg.grad_accum:
            raise Stop
        return batch_fn(micro)

    try:
        train(vlm.model, dying, cfg, state_path=state, progress=False)
    except Stop:
        pass
    with torch.no_grad():  # the resumed process starts from other weights: the state must overwrite them
        for p in vlm.model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    return train(vlm.model, batch_fn, cfg, state_path=state, progress=False)


def main(model_dir: Path, data_root: Path, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    saves = []
    real_save = train_module.save_train_state

    def counting_save(path, state):
        saves.append(state["step"])
        real_save(path, state)

    train_module.save_train_state = counting_save
    vlm = load(model_dir)
    history = run_sft(vlm, sft_batch_fn(vlm, conversations(data_root), GLOBAL_BATCH), out / "state.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"history": history, "saves": saves}))
    if rank == 0:
        torch.save(vlm.model.state_dict(), out / "weights.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
