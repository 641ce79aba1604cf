"""The projector variants LLaVA-STF's tables compare, the paper's knobs (`Options`), and how a variant is put into a
model and where its trained folder lives. Shared by the toy recipe (`papers.stf.train`), the paper-scale recipe
(`papers.stf.paper_train`) and the tables (`papers.stf.experiments`).

A variant is a projector kind of `papers.stf.modules.KINDS` with its window k and fused tokens E. It is trained
into `<variants_root>/stf-<variant>/`: `checkpoints/` at toy scale, `<out_dir>/variants/` at paper scale
(`--set stf.variants_root=<folder>` moves it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.paths import CHECKPOINTS
from papers.stf.modules import STFProjector, image_token_count, install_projector, projector_for_model

CARD = "card.json"


@dataclass(frozen=True)
class Variant:
    """One trained model of the tables: a projector kind of `papers.stf.modules.KINDS` with its (k, E)."""

    kind: str
    k: int = 2
    E: int = 1
    note: str = ""


# Every variant Tables 2-5 (and the controlled Table 5) need. k=1, E=1 of Table 4 is the baseline (the paper's own
# reading of its table); k=8 tiles LLaVA's 24 x 24 grid but not the toy's 12 x 12, k=3 (not in the paper) tiles both.
VARIANTS: dict[str, Variant] = {
    "baseline": Variant("mlp", note="LLaVA-1.5 MLP projector, all tokens"),
    "mbtf": Variant("mbtf", note="MBTF + LLaVA MLP, all tokens"),
    "stf": Variant("stf", note="STF only (k=2, E=1), one block"),
    "mbtf-stf": Variant("mbtf_stf", note="LLaVA-STF: MBTF + STF (k=2, E=1)"),
    "avgpool": Variant("avgpool", note="2x2 AvgPool + LLaVA MLP"),
    "tokenconcat": Variant("tokenconcat", note="2x2 TokenConcat + LLaVA MLP"),
    "mbtf-avgpool": Variant("mbtf_avgpool", note="MBTF + 2x2 AvgPool + LLaVA MLP"),
    "mbtf-tokenconcat": Variant("mbtf_tokenconcat", note="MBTF + 2x2 TokenConcat + LLaVA MLP"),
    "mbtf-stf-k2-e2": Variant("mbtf_stf", 2, 2),
    "mbtf-stf-k3-e1": Variant("mbtf_stf", 3, 1, note="k=3 is not in the paper"),
    "mbtf-stf-k3-e3": Variant("mbtf_stf", 3, 3, note="k=3 is not in the paper"),
    "mbtf-stf-k4-e4": Variant("mbtf_stf", 4, 4),
    "mbtf-stf-k4-e8": Variant("mbtf_stf", 4, 8),
    "mbtf-stf-k8-e16": Variant("mbtf_stf", 8, 16, note="paper scale only: 8 does not tile the toy's 12 x 12 grid"),
    "mbtf-stf-k8-e32": Variant("mbtf_stf", 8, 32, note="paper scale only: 8 does not tile the toy's 12 x 12 grid"),
}


@dataclass(frozen=True)
class Options:
    """LLaVA-STF's knobs (`--set stf.<name>=value`, or `[options.stf]` in a config file). The toy recipe is fixed
    (`papers.stf.train.STFTrainConfig`); the paper-scale recipe (`papers.stf.paper_train`) reads the rest."""

    train_missing: bool = False  # a table trains its absent variants first (else it stops, naming the commands)
    variants_root: str = ""  # folder of stf-<variant>/ ("": checkpoints/ at toy scale, <out_dir>/variants at paper)
    stage1_steps: int = 0  # optimiser steps; 0 = one epoch of the stage's data (the paper)
    stage2_steps: int = 0
    train_limit: int = 0  # > 0: read only this many conversations per stage (smoke runs)
    stage1_batch: int = 256  # the paper's global batches ...
    stage2_batch: int = 128
    micro_batch: int = 16  # ... as micro-batches per GPU x GPUs x gradient accumulation
    max_length: int = 2048  # rows are cut at this many tokens (LLaVA-1.5's model_max_length; 0 = never)
    lr1: float = 1e-3  # the paper's learning rates
    lr2: float = 2e-5
    stage2_llm: bool = True  # stage 2 trains the LLM too (the paper); False: the projector only
    bf16: bool = True  # autocast the forward pass to bf16
    grad_checkpointing: bool = True
    num_blocks: int = 8  # MBTF's M (capped at the tower's depth)
    projector: str = "paper"  # "paper" (Table 1) or "code" (the released code's modules)
    save_every: int = 200  # steps between resumable states


def variant_spec(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"name: unknown STF variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variants_root(scale: str, out_dir: Path, opts: Options) -> Path:
    """Where trained variants live: `opts.variants_root`, else checkpoints/ (toy) or <out_dir>/variants."""
    if opts.variants_root:
        return Path(opts.variants_root).expanduser()
    return CHECKPOINTS if scale == "toy" else Path(out_dir) / "variants"


def variant_dir(root: Path, name: str) -> Path:
    """<root>/stf-<variant>/."""
    variant_spec(name)
    return Path(root) / f"stf-{name}"


def is_trained(folder: Path) -> bool:
    """A finished run: its card is written last, after the weights."""
    return (Path(folder) / CARD).is_file()


def attach_projector(vlm: Any, name: str, num_blocks: int | None = None, seed: int = 0,
                     variant: str = "paper") -> STFProjector:
    """Replace the model's projector by variant `name`'s, freshly initialised from `seed`, and make the prompts
    carry as many image placeholders as the projector emits.

    Single-block kinds read the block the model's own projector read (`vision_feature_layer`: the penultimate for
    LLaVA-1.5, the last for the toy model); MBTF fuses `num_blocks` evenly spaced blocks (None or more than the
    tower has: every block). Works for the toy model and an llava-hf LLaVA (`common.models.llava_hf.LlavaHF`).
    """
    spec = variant_spec(name)
    model = vlm.model
    depth = model.config.vision_config.num_hidden_layers
    knobs: dict = {"k": spec.k, "E": spec.E}
    if variant != "paper":
        knobs["variant"] = variant
    single = model.config.vision_feature_layer
    if spec.kind.startswith("mbtf"):
        knobs["num_blocks"] = min(num_blocks or depth, depth)
    else:
        knobs["blocks"] = (single if isinstance(single, int) else single[-1],)
    torch.manual_seed(seed)
    proj = install_projector(model, projector_for_model(model, spec.kind, **knobs))
    set_image_tokens(vlm, image_token_count(model))
    vlm.name = f"stf-{name}"
    return proj


def set_image_tokens(vlm: Any, n: int) -> None:
    """Make `vlm.build_inputs` expand each image into `n` placeholders (a reduced projector's output length).

    The toy model reads `num_visual_tokens`; an llava-hf processor computes the count from the patch grid, so
    its per-image expansion is replaced on this processor instance.
    """
    vlm.num_visual_tokens = int(n)
    processor = getattr(vlm, "processor", None)
    if processor is not None:
        token = processor.image_token
        processor.replace_image_token = lambda image_inputs, image_idx, **kw: token * int(n)


def set_trainable(vlm: Any, stage: int, llm: bool = True) -> list[torch.nn.Parameter]:
    """Stage 1: projector only; stage 2: projector + LLM (`llm=False`: projector only). The tower never trains."""
    inner = vlm.model.model
    for p in vlm.model.parameters():
        p.requires_grad_(False)
    parts = [inner.multi_modal_projector]
    if stage == 2 and llm:
        parts += [inner.language_model, vlm.model.lm_head]
    for m in parts:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for m in parts for p in m.parameters()]
