"""Training recipe of the toy LLaVA on ToyWorld (`make toy-model`).

LLaVA-1.5's two stages, preceded by a stage 0 that stands in for CLIP's pretraining:
  0. *added*: the CLIP tower is pretrained alone with dense per-patch labels (colour, shape, digit and
     size of the object under each patch, and its row and column (`--position-heads`, default); linear heads
     discarded afterwards). `--rescale-tower` then rescales it to O(1) features (`rescale_tower_features`).
     LLaVA starts from a pretrained CLIP; ours starts from random weights, and without this stage the
     whole model sat at chance after 600 end-to-end steps (measured: val accuracy at chance on every
     family but "scene").
     The tower is then frozen, as in LLaVA (and as stf.md §12 advises for the toy scale).
  1. alignment on captions: projector trained on image-caption pairs. *Changed from LLaVA*: the LM is
     trained too (LLaVA freezes Vicuna here, but ours is random and must learn language).
  2. instruction tuning on every ToyWorld family: projector + LM trained, tower frozen (as LLaVA).
     Default (`--turns 6 --packed`): half of each batch's rows hold six questions about one scene (any
     family, or a training-only lookup list, `MIX`) as parallel branches (`ToyVLM.build_packed_batch`:
     a 4D mask lets each branch see the image and itself only, so no answer leaks into another
     question), the other half single benchmark-style samples; captions and clips get their own batches.
     `--no-packed` lays the turns out as a sequential dialogue instead; `--turns 1` is the original
     single-question recipe.
  3. *added*: stage 2 continued for `--stage3-steps` (400) more steps: the same run extended (optimiser,
     batch stream, auxiliary loss), its cosine schedule stretched to 5400 steps (lr ~1.1e-4 -> 1e-4). The
     model was still learning at step 5000 (+2.9 points on val from these 400 steps, below).
The loss is on answer tokens only. Each stage is resumable (common.models.train); a stage that finished
is skipped on rerun. Batches are pure functions of (seed, stage, step), so a resumed run is identical.
Video clips (3 frames = 3x the visual tokens) go in their own smaller batches every `video_every` steps,
so a clip never pads a whole batch of single images to its length.

Measured (2 idle cores; val first-token accuracy, 48 per family, the card's `val_metrics`):
  - single-question rows (`--turns 1`, checkpoints/toy-llava-v1: 3000 stage-2 steps, an 800-step run
    extended): 53.6% avg; gqa "what color is the <shape>" 20% (the prior), i.e. no object lookup.
  - why: lookup is learned from the *number* of supervised questions. A fresh LM on v1's tower trained on
    color_of questions alone reached 35% after ~19k questions in single rows, 70% after ~44k in packed rows.
  - packed rows (5000 stage-2 steps, 73 min; checkpoint v2): 66.4% avg (gqa 72.9, textvqa 79.2, count
    72.9, pope 66.7, video 52.1, scene 100, mc 20.8); color_of 100%, but relations ("left of", "above"),
    multiple choice and video stay at chance. Packing gives 2.8x the supervised answer tokens per second
    (0.84 vs 0.63 s per step for 6x the questions).
  - why video failed: on v2's tower a linear probe reads an object patch's row / column at chance (13% / 9%
    of 12; background patches 78%): the stage-0 content heads wash position out of object features, and
    RoPE puts position into attention scores, never into the values an answer can read.
  - + `--position-heads` (the default since; checkpoint v3, 70 min): row / column read at 100% from object
    patches, content heads unchanged (100%). Val 71.1% avg (48 per family); on 150 per family 68.9% vs
    v2's 63.8%: video 45 -> 100% (every event kind), but textvqa 71 -> 55 and count 65 -> 60, and
    relations still at chance (rel_ab 48, rel_lr 44, as v2: the model answers one side).
  - training-only text turns "options : A red , B cyan ... which letter is cyan ?" (weight 2, with position
    heads) to teach mc's letter-matching hop: 12% on those turns and mc 28% after 3250 steps, and object
    lookup lagged (color_of 33-44% on 9 val questions at steps 2850-3250; 56% at step 1875 without
    them); stopped there and dropped.
  - ToyWorld data version 2 (`--data-version 2`, toyworld module docstring: "which half of the image"
    instead of two-object relations, mc answered with the option's text), same recipe and seed, 67 min: on
    150 val questions per family 67.1% vs v3's 68.9% (on its own design). mc 27 -> 55% (color_of options
    100%, shape 44%, read 20%: as accurate as the lookup each needs); half-image questions 50% (left/right)
    and 65% (top/bottom), not learned; and reading collapsed (textvqa 55 -> 14%, pope 67 -> 55%), a family
    whose questions did not change. Its larger vocabulary shifts every random draw of the initialisation,
    so the tower differs too: which skills emerge in 5000 steps depends on the draw. Not adopted.
  - why spatial questions fail: the tower keeps position, the projector loses it in stage 2. Linear probes
    (logistic regression, 3685 object patches of 400 scenes, 30% held out) read an object patch's column /
    row at 100% / 100% from v3's tower output, but at 77% / 75% from its projector output (what the LM
    sees; "left half" 82%). In the version-2 run the projector output still had them at 95% / 96% after
    stage 1 and 69% / 73% after stage 2: position erodes while the LM learns lookups that need none.
    Fine-tuning that model on half-image questions alone (300 steps of 32, lr 5e-4) left them at 55-64%.
    Freezing the projector in stage 2 slowed lookup (color_of 19% at step 2050; stopped there).
  - + `--position-aux 0.25` (the default since, with `--data-version 2`; checkpoint v5, 74 min): stage 2 of the
    version-2 run redone from its own stage-1 state with the same batches, plus `PositionKeeper`'s row / column
    loss on the projector output. Projector output keeps position (col / row / left half 99.9 / 99.5 / 97.8%,
    same probe). On 150 val questions per family 81.9% vs 67.1% for the same run without it: mc 55 -> 93,
    textvqa 14 -> 86, gqa 78 -> 81, pope 55 -> 60, video 97 -> 98, but count 71 -> 55. Half-image questions are
    still not learned (55% left/right, 65% top/bottom) although position is now readable where the LM looks:
    the projector was not the only obstacle. Test split (toy report, 40 per family): 84.8%, blind 17.6%.
    The stage-2 loss fell faster from step ~2750 (0.43 vs 0.52 at step 3000, aux included), so the auxiliary
    loss helped the lookups too, not only position; one controlled pair of runs, not a variance estimate.
  - what v5 still cannot do (val): filter-then-aggregate. POPE: it answers "yes" to 85% of random and
    adversarial negatives (56 of 66) as to 89% of positives (rejecting only popular negatives, 20 of 33), so it
    does not check the colour-shape pair. Counting a subset ("how many red objects"): 13-42% when the answer is >= 2
    (all small objects 13%, so not a 2x2-patch double count), against 85-90% for "how many objects".
  - targeted dialogues (`repeat_scenes` 0.5: scenes where 2-4 objects share a colour or a shape, and counting
    turns that favour the repeated value, twice the subset counts >= 2 per dialogue; `pope_adversarial` 0.67)
    for all of stage 2, from v5's stage-1 state, 80 min: 75.9% on 150 val per family vs v5's 81.9%. pope
    60 -> 65, count 55 -> 54, and reading collapsed (textvqa 86 -> 59, mc's reading options 57%), as it did in
    the version-2 run: which skills emerge within 5000 steps depends on the data stream. Not adopted.
  - 400 more stage-2 steps on v5 (its run extended, as stage 3 now does), 6.5 min each, 150 val per family:
    plain batches 84.8% (count 55 -> 62, textvqa 86 -> 90, mc 93 -> 97, pope 60 -> 63, gqa 81 -> 81); the
    targeted dialogues above 84.5% (count 65, pope 61, gqa 78). The gain is the extra training, not the
    targeted data: the plain one is stage 3 (`--stage3-steps 400`, the default since; checkpoint v6, ~81 min
    from scratch). Filter-then-aggregate stays weak on v6: pope's random / adversarial splits 52 / 52% (it says
    "yes" to 61 of their 67 negatives, and to 22 of 33 popular ones), "how many <color> objects" 51%,
    half-image questions 40 / 65%.
  - sequential dialogues with lookup lists (`--turns 6 --no-packed --position-heads --rescale-tower`):
    42.1% at 2275 steps, flat since step 500: later turns can copy answers from earlier ones.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from common.data.sample import Sample
from common.data.toyworld import (
    FAMILIES, make_dialogue, make_sample, random_scene, scene_split, toyworld_split,
)
from common.data.toyworld_render import COLORS, DIGITS, SHAPES, render
from common.models.toy import ToyConfig, ToyVLM, image_to_tensor
from common.models.train import TrainConfig, answer_loss, train

# Family weights of the instruction-tuning mix (video comes in its own batches). Fine-grained families
# (relations, counting, reading) get more weight: they are the slowest to learn.
MIX: dict[str, float] = {"gqa": 3.0, "pope": 1.5, "textvqa": 1.5, "count": 2.5, "scene": 0.5, "mc": 1.5,
                         "caption": 1.0, "lookup": 3.0}
# "lookup": training-only dialogue turns (toyworld.TRAIN_ONLY_FAMILIES)
# Dialogue turns draw from MIX without captions: a caption would spell out the answers of the other turns.
DIALOGUE_MIX: dict[str, float] = {f: w for f, w in MIX.items() if f != "caption"}


@dataclass
class ToyTrainConfig:
    stage0_steps: int = 600  # 0.23 s per step: ~2.5 min; digits are the slowest head
    stage0_lr: float = 2e-3
    stage1_steps: int = 200
    stage2_steps: int = 5000  # ~0.8 s each (packed rows) with 2 threads: 70 min in all (measured, v3)
    batch: int = 32
    video_every: int = 6  # every 6th stage-2 step is a batch of batch // 3 clips (~same tokens as 32 images)
    turns: int = 6  # questions per image in a stage-2 dialogue (> 1: a dialogue batch holds batch // 2 images)
    packed: bool = True  # with turns > 1: the turns as parallel branches of one row (no leakage between them)
    position_heads: bool = True  # stage 0 also predicts each patch's row and column (video 45 -> 100%)
    rescale_tower: bool = False  # rescale the frozen tower to RMS-1 features before stage 1
    # Weight of a stage-2 auxiliary loss: linear heads read each patch's row and column from the projector
    # output (`PositionKeeper`), so position is not eroded while the LM learns position-free lookups.
    position_aux: float = 0.25  # 0 = off (v3 and earlier); v5 and v6 (the committed toy-llava) use 0.25
    # Stage 3: stage 2 continued for `stage3_steps` more steps (same optimiser, batch stream and auxiliary
    # loss; the cosine schedule stretched over both stages' steps). Optionally with dialogues aimed at the
    # filter-then-aggregate questions (toyworld.make_dialogue): `repeat_scenes` is the share of scenes where
    # 2-4 objects share a colour or a shape, `pope_adversarial` the share of POPE negatives that are adversarial.
    # Both 0 = plain stage-2 batches, as v6: the targeted ones scored no better (module docstring).
    stage3_steps: int = 400  # 0 = none (v5); the committed toy-llava (v6) was trained with 400
    repeat_scenes: float = 0.0
    pope_adversarial: float = 0.0
    lr1: float = 1e-3
    lr2: float = 1e-3
    seed: int = 0  # data seed and init seed
    save_every: int = 25
    val_per_family: int = 48
    curve_every: int = 250  # stage-2 steps between learning-curve points (0 = none)
    curve_per_family: int = 8  # val samples per family at each learning-curve point
    # Two threads on an idle 2-core machine (0.45 s vs 1.0 s per step); pass --threads 1 when sharing the
    # cores with other jobs (2 threads then thrash: measured 15 s vs 1.1 s per step).
    threads: int = 2
    extend: bool = False  # allow rerunning with more steps than a saved run (continues it; new schedule)
    # ToyWorld's question design (toyworld module docstring), recorded in the card: the committed toy-llava
    # (v6, as v5) uses version 2; toy-llava-v1 (ATP, STF) and v3 used version 1, toyworld's default.
    data_version: int = 2


# Per-patch label spaces of stage 0 (index 0 = background).
_PATCH_HEADS = {"color": ["-", *COLORS], "shape": ["-", *SHAPES], "digit": ["-", *DIGITS], "size": ["-", "small", "large"]}


class TowerPretrainer(torch.nn.Module):
    """The CLIP tower + one linear head per patch attribute (stage 0). Heads are dropped afterwards.

    Row and column heads make every patch feature carry its grid position explicitly, so that "which
    object moved" and relation questions ("left of", "above") can compare features instead of decoding a
    flattened sequence index from RoPE (video: 45 -> 100% val; relations still at chance)."""

    def __init__(self, tower: torch.nn.Module, width: int, grid: int, position_heads: bool = True):
        super().__init__()
        self.tower = tower
        sizes = {k: len(v) for k, v in _PATCH_HEADS.items()}
        if position_heads:
            sizes.update(row=grid, col=grid)
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, n) for k, n in sizes.items()})


def stage0_batch(grid: int, step: int, tc: ToyTrainConfig, cell: int = 8) -> dict[str, torch.Tensor]:
    """Training-split scenes with per-patch labels [B, grid*grid] for every head."""
    rng = random.Random(f"toy-stage0:{tc.seed}:{step}")
    pix, labels = [], {k: [] for k in _PATCH_HEADS}
    while len(pix) < tc.batch:
        scene = random_scene(rng, grid, 2, 8, tile_p=0.3)
        if scene_split(scene.key()) != "train":
            continue
        pix.append(image_to_tensor(render(scene, cell)))
        lab = {k: torch.zeros(grid * grid, dtype=torch.long) for k in _PATCH_HEADS}
        for o in scene.objects:
            for r, c in o.cells():
                for k, v in (("color", o.color), ("shape", o.shape), ("digit", o.digit or "-"), ("size", o.size)):
                    lab[k][r * grid + c] = _PATCH_HEADS[k].index(v)
        for k in _PATCH_HEADS:
            labels[k].append(lab[k])
    cells = torch.arange(grid * grid)
    n = len(pix)
    return {"pixel_values": torch.stack(pix), **{k: torch.stack(v) for k, v in labels.items()},
            "row": (cells // grid).expand(n, -1), "col": (cells % grid).expand(n, -1)}


def tower_loss(m: TowerPretrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the per-patch cross-entropy, on the layer LLaVA reads (last hidden state, CLS dropped)."""
    feats = m.tower(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
    return sum(F.cross_entropy(h(feats).flatten(0, 1), batch[k].flatten()) for k, h in m.heads.items())


@torch.no_grad()
def rescale_tower_features(tower: torch.nn.Module, pixel_values: torch.Tensor, target_rms: float = 1.0) -> float:
    """Rescale a CLIP tower so that its last hidden state has RMS `target_rms` per dimension; returns the factor.

    Why: stage 0's cross-entropy heads drive the residual stream to ~8 per dimension (feature norm ~93),
    against O(1) for LLaVA-1.5's CLIP; a projector fed such inputs takes updates ~100x larger than the
    LM's at the same learning rate. The rescaling is an exact reparametrisation: the stream starts at
    `pre_layrnorm` and grows only by the attention `out_proj` and MLP `fc2` outputs, and every LayerNorm
    reading it is scale-invariant, so scaling those three by c scales every hidden state by c.
    """
    feats = tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
    c = target_rms / float(feats.pow(2).mean().sqrt())
    scaled = [tower.vision_model.pre_layrnorm] if hasattr(tower, "vision_model") else [tower.pre_layrnorm]
    layers = (tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder).layers
    for layer in layers:
        scaled += [layer.self_attn.out_proj, layer.mlp.fc2]
    for mod in scaled:
        mod.weight.mul_(c)
        mod.bias.mul_(c)
    return c


class PositionKeeper(torch.nn.Module):
    """The VLM + linear row / column heads on its projector output, for stage 2's auxiliary position loss.

    Why: the frozen tower reads an object patch's row / column at 100%, but after stage 2 the projector
    output (all the LM ever sees) keeps them at only ~75% (module docstring), because every answer that
    drives the projector is a lookup that needs no position. The heads ask the projector to keep position
    linearly readable while it adapts to those lookups; they are dropped after training."""

    def __init__(self, model: torch.nn.Module, width: int, grid: int):
        super().__init__()
        self.model = model
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, grid) for k in ("row", "col")})
        self.grid = grid
        self._projected: list[torch.Tensor] = []
        self._hook = model.model.multi_modal_projector.register_forward_hook(self._keep)

    def remove(self) -> None:
        """Take the hook off the projector, so the trained model goes on without the keeper."""
        self._hook.remove()
        self._projected.clear()

    def _keep(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        if module.training:  # not during the learning curve's evaluation
            self._projected.append(out)

    def position_loss(self) -> torch.Tensor:
        """Mean row / column cross-entropy over every patch the projector produced since the last call."""
        feats = torch.cat([f.reshape(-1, self.grid * self.grid, f.shape[-1]) for f in self._projected])
        self._projected.clear()
        cells = torch.arange(self.grid * self.grid).repeat(feats.shape[0])
        flat = feats.flatten(0, 1)
        return 0.5 * (F.cross_entropy(self.heads["row"](flat), cells // self.grid)
                      + F.cross_entropy(self.heads["col"](flat), cells % self.grid))


def with_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Position ids that skip left padding, as `generate()` computes them, so training sees the same RoPE
    positions as inference."""
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def stage_batch(vlm: ToyVLM, stage: int, step: int, tc: ToyTrainConfig) -> dict[str, torch.Tensor]:
    """The batch of `step` in `stage`: a pure function of (seed, stage, step). Stage 3 continues stage 2's
    stream (its steps are numbered on from `stage2_steps`, so no batch repeats one of stage 2), with the
    targeted dialogues when `repeat_scenes` / `pope_adversarial` are set (0 for v6: stage 2's batches)."""
    repeat_p, pope_adversarial = (tc.repeat_scenes, tc.pope_adversarial) if stage == 3 else (0.0, 0.0)
    stage = 2 if stage == 3 else stage
    rng = random.Random(f"toy-batch:{tc.seed}:{stage}:{step}")
    if stage == 1:
        fams = ["caption"] * tc.batch
    elif tc.video_every and step % tc.video_every == tc.video_every - 1:
        fams = ["video"] * max(1, tc.batch // 3)
    elif tc.turns > 1 and tc.video_every and step % tc.video_every == 2:
        fams = ["caption"] * max(1, tc.batch // 2)  # captions get their own batches: in a dialogue they
        # would spell out the answers of the other turns
    elif tc.turns > 1:
        n = max(1, tc.batch // 2)
        dialogues = [make_dialogue("train", tc.seed, step * n + j, DIALOGUE_MIX, tc.turns, vlm.cfg.grid,
                                   version=tc.data_version, repeat_p=repeat_p,
                                   pope_adversarial=pope_adversarial) for j in range(n)]
        if not tc.packed:
            return with_positions(vlm.build_dialogue_batch(dialogues))
        # Packed: half the rows are the `turns` questions about one dialogue scene as parallel branches; the
        # other half single benchmark-style samples, whose generators control what dialogue scenes don't
        # (flat count priors, tile scenes, POPE's negative sampling). Captions get their own batches (above).
        single = {f: w for f, w in MIX.items() if f in FAMILIES and f != "caption"}
        fams = rng.choices(list(single), weights=list(single.values()), k=tc.batch - n)
        base = (stage * 10_000_000) + step * tc.batch
        singles = [[make_sample("train", tc.seed, base + j, f, vlm.cfg.grid, version=tc.data_version)]
                   for j, f in enumerate(fams)]
        return vlm.build_packed_batch(dialogues + singles)
    else:
        single = {f: w for f, w in MIX.items() if f in FAMILIES}
        fams = rng.choices(list(single), weights=list(single.values()), k=tc.batch)
    base = (stage * 10_000_000) + step * tc.batch
    samples = [make_sample("train", tc.seed, base + j, f, vlm.cfg.grid, version=tc.data_version)
               for j, f in enumerate(fams)]
    return with_positions(vlm.build_training_batch(samples))


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
        inp = with_positions(dict(vlm.build_inputs(chunk)))
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
    vlm = ToyVLM.fresh(mc, seed=tc.seed, data_version=tc.data_version)
    t0 = time.time()
    curve_val = toyworld_split("val", tc.curve_per_family * len(FAMILIES), seed=tc.seed, grid=mc.grid,
                               version=tc.data_version)

    def log(stage: int):
        def on_log(step: int, rec: dict) -> None:
            if stage >= 2 and tc.curve_every and step % tc.curve_every == 0:  # the learning curve (in the card)
                rec["val_avg"] = round(first_token_accuracy(vlm, curve_val)["avg"], 2)
                vlm.model.train()
            print(json.dumps({"stage": stage, **rec}), flush=True)
        return on_log

    hist = {}
    tower = vlm.model.model.vision_tower
    pre = TowerPretrainer(tower, mc.vision_hidden, mc.grid, tc.position_heads)
    hist[0] = train(pre, lambda step: stage0_batch(mc.grid, step, tc), TrainConfig(
        steps=tc.stage0_steps, lr=tc.stage0_lr, seed=tc.seed, save_every=tc.save_every),
        state_path=work / "stage0.pt", loss_fn=tower_loss, progress=progress, desc="stage 0", on_log=log(0))
    tower.requires_grad_(False)  # frozen from here on, as LLaVA's CLIP
    if tc.rescale_tower and not (work / "stage1.pt").exists():  # once, before the projector sees them
        rescale_tower_features(tower, stage0_batch(mc.grid, -1, tc)["pixel_values"])
    stages = [(1, tc.stage1_steps, tc.lr1), (2, tc.stage2_steps, tc.lr2)]
    if tc.stage3_steps:
        stages.append((3, tc.stage2_steps + tc.stage3_steps, tc.lr2))  # stage 2's run, extended
    for stage, steps, lr in stages:
        # Stage 3 trains on a copy of stage 2's final state (optimiser, RNG and history included), so a stage
        # interrupted or rerun resumes from its own file and stage2.pt stays what stage 2 produced.
        if stage == 3 and not (work / "stage3.pt").exists():
            shutil.copyfile(work / "stage2.pt", work / "stage3.pt")
        cfg = TrainConfig(steps=steps, lr=lr, seed=tc.seed + min(stage, 2), save_every=tc.save_every)
        trained, loss_fn = vlm.model, answer_loss
        if stage >= 2 and tc.position_aux > 0:
            trained = PositionKeeper(vlm.model, mc.text_hidden, mc.grid)
            loss_fn = lambda m, b: answer_loss(m.model, b) + tc.position_aux * m.position_loss()  # noqa: E731
        hist[stage] = train(trained, lambda step, s=stage: stage_batch(vlm, s, step, tc), cfg,
                            state_path=work / f"stage{stage}.pt", loss_fn=loss_fn, progress=progress,
                            desc=f"stage {stage}", on_log=log(stage), extend=tc.extend or stage == 3)
        if isinstance(trained, PositionKeeper):
            trained.remove()
    wall = time.time() - t0
    val = toyworld_split("val", tc.val_per_family * len(FAMILIES), seed=tc.seed, grid=mc.grid,
                         version=tc.data_version)
    acc = first_token_accuracy(vlm, val)
    blind = first_token_accuracy(vlm, val, blind=True)
    card = {
        "name": "toy-llava", "model_config": asdict(mc), "train_config": asdict(tc), "mix": MIX,
        "data": {"generator": "common.data.toyworld", "seed": tc.seed, "split": "train",
                 "version": tc.data_version},
        "steps": {"stage0": tc.stage0_steps, "stage1": tc.stage1_steps, "stage2": tc.stage2_steps,
                  **({"stage3": tc.stage3_steps} if tc.stage3_steps else {})},
        "params": sum(p.numel() for p in vlm.model.parameters()),
        "wall_time_s_last_session": round(wall, 1),
        "val_metrics": {"metric": "first-token accuracy (%), greedy", "n_per_family": tc.val_per_family,
                        "full": acc, "blind": blind},
        "final_loss": {str(k): (h[-1]["loss"] if h else None) for k, h in hist.items()},
        "learning_curve": {"metric": f"stage-2 val first-token accuracy, avg over families "
                                     f"({tc.curve_per_family} per family)",
                           "points": [[h["step"], h["val_avg"]] for h in hist[max(hist)] if "val_avg" in h]},
        "torch": torch.__version__, "platform": platform.platform(),
        "deviation": ("stage 0 (added) pretrains the from-scratch CLIP tower on dense per-patch labels, then "
                      "freezes it; stage 1 trains projector + LM on captions (LLaVA: projector only)"),
    }
    vlm.save(out, card=card)
    print(json.dumps({"val": acc, "blind": blind}), flush=True)
    return card


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m common.models.toy_train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="checkpoints/toy-llava")
    for f, v in asdict(ToyTrainConfig()).items():
        if isinstance(v, bool):
            p.add_argument(f"--{f.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=v)
        else:
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
