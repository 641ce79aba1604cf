"""Make targets: each table or figure is a function of a `Run`, registered under its target name.

    @target("sparsevlm-table1", paper="sparsevlm", scales=("toy", "mini", "paper"))
    def table1(run: Run) -> dict[str, Path]: ...

`run_target(name, cfg)` builds the paper's `Run` for the configuration and calls the function. Modules that
define targets register them when imported; `common` imports none of them (the entry point
`reports.experiment` imports every paper's `experiments` module).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.registry import Registry
from common.run.config import RunConfig
from common.run.run import Run

KINDS = ("table", "figure")


@dataclass(frozen=True)
class Target:
    """A registered artifact: `fn(run)` writes its files under `run.out_dir`."""

    name: str
    fn: Callable[[Run], Any]
    paper: str
    scales: tuple[str, ...] = ("toy",)
    kind: str = "table"
    checkpoint: Path | None = None  # the model a toy/mini run uses by default
    why_not: str = ""  # why the scales missing from `scales` cannot run it (printed instead of running)


TARGETS: Registry = Registry("artifact")


def target(name: str, *, paper: str, scales: tuple[str, ...] = ("toy",), kind: str = "table",
           checkpoint: Path | None = None, why_not: str = "") -> Callable[[Callable[[Run], Any]], Callable[[Run], Any]]:
    """Register `fn(run)` as the generator of Make target `name`."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")

    def deco(fn: Callable[[Run], Any]) -> Callable[[Run], Any]:
        if name in TARGETS:
            raise KeyError(f"artifact {name!r} is already registered (by {TARGETS[name].fn.__module__})")
        TARGETS[name] = Target(name, fn, paper, tuple(scales), kind, checkpoint, why_not)
        return fn

    return deco


class UnsupportedScale(ValueError):
    """A target cannot run at the requested scale; the message says why."""


def run_target(name: str, cfg: RunConfig) -> Any:
    """Build the target's `Run` for `cfg` and generate the artifact."""
    t = TARGETS.get(name)
    if t is None:
        raise KeyError(f"unknown target {name!r}; known: {', '.join(sorted(TARGETS))}")
    if cfg.scale not in t.scales:
        why = f": {t.why_not}" if t.why_not else ""
        raise UnsupportedScale(f"{name}: scale {cfg.scale!r} not supported (supported: {', '.join(t.scales)}){why}")
    run = Run.for_scale(cfg, paper=t.paper, checkpoint=t.checkpoint)
    run.start(name)
    return t.fn(run)
