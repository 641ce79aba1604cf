"""Parameter counts, layer structure and compute of the STF-paper projectors, at LLaVA-1.5 and toy sizes.

    python -m papers.stf.param_counts            # LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B) and the toy preset
    python -m papers.stf.param_counts --grid 16 --vision-hidden 32 --llm-hidden 128 --vision-layers 4 --num-blocks 4

Everything is measured on the real modules of `papers.stf.modules`, built on PyTorch's meta device (shapes only,
no memory), so the 4.3 B-parameter k=8 STF of Table 4 is counted as cheaply as the default. The reference numbers
are stf.md §3.6, derived there [D] from the paper's Table 1 (the paper prints no parameter counts): STF 151.0 M
(paper, Table 1b) vs 134.2 M (released code), MBTF 37.8 M. Projector FLOPs are 2 x MACs of its Linear layers
(stf.md §3.6: MBTF ~ 43.5 G, paper STF ~ 43.5 G per image); the LLM column is `common.flops.stf_flops`, the
paper's calflops convention (stf.md §7).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from common.flops import stf_flops
from papers.stf.modules import KINDS, TABLE4_KE, STFConfig, STFProjector, VARIANTS

# LLaVA-1.5-7B: CLIP ViT-L/14-336 (24 blocks, width 1024, 24x24 patches) + Vicuna-7B (width 4096).
LLAVA15 = STFConfig()
# Provisional toy geometry (stf.md §12: C3 = 4 C1, M evenly spaced blocks of L; a 12x12 grid) until the
# toy model's own config exists; override with the command-line flags.
TOY = STFConfig(vision_hidden=64, llm_hidden=256, grid=(12, 12), num_vision_layers=8, num_blocks=4)

# stf.md §3.6 [D]: exact counts derived from Table 1 at LLaVA-1.5-7B size.
MBTF_PARAMS = 37_753_856  # 8192 -> 4096 -> 1024
REFERENCE_PARAMS: dict[tuple[str, str], int] = {
    ("mlp", "paper"): 20_979_712,  # LLaVA-1.5 mlp2x_gelu 1024 -> 4096 -> 4096
    ("mbtf", "paper"): MBTF_PARAMS + 20_979_712,  # MBTF + the LLaVA MLP (stf.md §10.1 item 5)
    ("stf", "paper"): 151_019_520,
    ("stf", "code"): 134_238_208,
    ("mbtf_stf", "paper"): 188_773_376,
    ("mbtf_stf", "code"): 171_992_064,
}


def meta_projector(config: STFConfig) -> STFProjector:
    """The projector on the meta device: real module structure, no storage."""
    with torch.device("meta"):
        return STFProjector(config)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class LayerRow:
    """One learnable layer as Table 1 lists it: output H x W x C (x E sub-tokens per location), kernel, act."""

    module: str
    layer: str
    output: str
    kernel: str
    stride: int
    act: str
    params: int


@dataclass(frozen=True)
class Traced:
    name: str  # module path inside the projector, e.g. "stf.align.0"
    layer: nn.Linear
    out_shape: tuple[int, ...]  # [1, tokens, channels]
    gelu_after: bool


def trace_linears(config: STFConfig) -> list[Traced]:
    """Every Linear of the projector in execution order, from one meta-device forward of batch 1."""
    projector = meta_projector(config)
    modules = dict(projector.named_modules())
    names = {m: n for n, m in modules.items()}
    seen: list[Traced] = []

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        parent, idx = names[m].rsplit(".", 1)
        seq = modules[parent]  # every Linear sits in a `modules.mlp` Sequential
        gelu = int(idx) + 1 < len(seq) and isinstance(seq[int(idx) + 1], nn.GELU)
        seen.append(Traced(names[m], m, tuple(out.shape), gelu))

    for m in projector.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(hook)
    projector(torch.empty(1, config.grid[0] * config.grid[1], len(config.blocks) * config.vision_hidden,
                          device="meta"))
    return seen


def projector_flops(config: STFConfig) -> int:
    """Real FLOPs (2 per multiply-accumulate) of the projector's Linear layers for one image."""
    return sum(2 * t.out_shape[1] * t.layer.in_features * t.layer.out_features for t in trace_linears(config))


def structure(config: STFConfig) -> list[LayerRow]:
    """Table 1-style rows of every learnable layer (a 1x1 conv is a per-token Linear; the first Linear fed by a
    k x k window concatenation is the k x k / stride-k conv)."""
    c = config
    H, W = c.grid
    H2, W2 = H // c.k, W // c.k
    rows, counters = [], {}
    for t in trace_linears(config):
        part = t.name.split(".")[0].upper()
        counters[part] = counters.get(part, 0) + 1
        n, width = t.out_shape[1], t.out_shape[2]
        if n == H * W:
            size = f"{H}x{W}x{width}"
        elif n == H2 * W2:
            size = f"{H2}x{W2}x{width}"
        else:  # E sub-tokens per location
            size = f"{H2}x{W2}x{n // (H2 * W2)}x{width}"
        window = (c.reducer in ("stf", "tokenconcat") and counters[part] == 1 and n == H2 * W2
                  and t.layer.in_features == c.k * c.k * c.vision_hidden)
        kernel, stride = (f"{c.k}x{c.k}", c.k) if window else ("1x1", 1)
        rows.append(LayerRow(part, f"conv{counters[part]}", size, kernel, stride, "GeLU" if t.gelu_after else "-",
                             count_params(t.layer)))
    return rows


def summary_rows(base: STFConfig) -> list[dict]:
    """Every projector kind x variant at `base`'s dimensions (k, E from `base`)."""
    rows = []
    for variant in VARIANTS:
        for kind in KINDS:
            e = base.E if KINDS[kind][1] == "stf" else 1
            cfg = replace(base, kind=kind, variant=variant, E=e, blocks=None)
            proj = meta_projector(cfg)
            rows.append({"kind": kind, "variant": variant, "tokens": cfg.num_tokens, "params": count_params(proj),
                         "mbtf_params": count_params(proj.mbtf) if proj.mbtf is not None else 0,
                         "flops": projector_flops(cfg), "blocks": cfg.blocks})
    return rows


def table4_rows(base: STFConfig) -> list[dict]:
    """MBTF + STF for every (k, E) of Table 4 (paper variant); None where k does not tile the grid."""
    rows = []
    for k, E in TABLE4_KE:
        try:
            cfg = replace(base, kind="mbtf_stf", variant="paper", k=k, E=E, blocks=None)
        except ValueError as err:
            rows.append({"k": k, "E": E, "skipped": str(err)})
            continue
        proj = meta_projector(cfg)
        rows.append({"k": k, "E": E, "tokens": cfg.num_tokens, "stf_params": count_params(proj.stf),
                     "params": count_params(proj)})
    return rows


def _m(n: float) -> str:
    """151019520 -> '151.0M' (the paper-scale rounding the tests check); small toy numbers in K."""
    if n == 0:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _flops(n: float) -> str:
    return f"{n / 1e9:.1f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def render(title: str, base: STFConfig, with_reference: bool) -> str:
    H, W = base.grid
    lines = [f"## {title}: C1={base.vision_hidden}, C3={base.llm_hidden}, grid {H}x{W}, "
             f"L={base.num_vision_layers}, M={base.num_blocks}, k={base.k}, E={base.E}", ""]
    for variant in VARIANTS:
        lines += [f"Table 1 structure, MBTF + STF ({variant}):",
                  "| module | layer | output size | kernel | stride | act | params |", "|---|---|---|---|---|---|---|"]
        for r in structure(replace(base, variant=variant, blocks=None)):
            lines.append(f"| {r.module} | {r.layer} | {r.output} | {r.kernel} | {r.stride} | {r.act} | {r.params:,} |")
        lines.append("")
    ref_head = " reference (stf.md §3.6) |" if with_reference else ""
    llm_head = " LLM TFLOPs (Vicuna-7B) |" if with_reference else ""
    lines += ["Projectors:",
              f"| kind | variant | tokens | params | params (rounded) | of which MBTF | projector FLOPs |"
              f"{llm_head}{ref_head} blocks |", "|---" * (8 + with_reference * 2) + "|"]
    for r in summary_rows(base):
        extra = ""
        if with_reference:
            ref = REFERENCE_PARAMS.get((r["kind"], r["variant"]))
            extra = f" {stf_flops(r['tokens'], 'llava-1.5-7b') / 1e12:.2f} | {_m(ref) if ref else ''} |"
        lines.append(f"| {r['kind']} | {r['variant']} | {r['tokens']} | {r['params']:,} | {_m(r['params'])} | "
                     f"{_m(r['mbtf_params'])} | {_flops(r['flops'])} |{extra} {list(r['blocks'])} |")
    lines += ["", "Table 4 settings (MBTF + STF, paper variant):", "| k | E | tokens | STF params | total params |",
              "|---|---|---|---|---|"]
    for r in table4_rows(base):
        if "skipped" in r:
            lines.append(f"| {r['k']} | {r['E']} | n/a: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['k']} | {r['E']} | {r['tokens']} | {r['stf_params']:,} ({_m(r['stf_params'])}) | "
                         f"{r['params']:,} ({_m(r['params'])}) |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m papers.stf.param_counts", description=__doc__.split("\n")[0])
    p.add_argument("--vision-hidden", type=int, default=TOY.vision_hidden, help="toy C1")
    p.add_argument("--llm-hidden", type=int, default=TOY.llm_hidden, help="toy C3")
    p.add_argument("--grid", type=int, default=TOY.grid[0], help="toy patch grid side")
    p.add_argument("--vision-layers", type=int, default=TOY.num_vision_layers, help="toy encoder blocks L")
    p.add_argument("--num-blocks", type=int, default=TOY.num_blocks, help="toy MBTF blocks M")
    a = p.parse_args(argv)
    toy = STFConfig(vision_hidden=a.vision_hidden, llm_hidden=a.llm_hidden, grid=(a.grid, a.grid),
                    num_vision_layers=a.vision_layers, num_blocks=a.num_blocks)
    text = render("LLaVA-1.5-7B", LLAVA15, with_reference=True) + "\n" + render("toy", toy, with_reference=False)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
