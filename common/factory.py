"""The one factory that turns (method name, budget, options) into a reducer, driven by the registry.

    make_reducer("fastv", Budget.paper(192), BuildTarget(n_layers=8, n_visual=144))   # K = 2 of 32 -> 1
    budget_methods()   # ["fastv", "random", "tome", ...]: the rows of every budget-sweep table

Importing this module registers the baselines (`common.baselines`). Methods outside `common` (each paper's
`method.py`) register when their module is imported; `common` never imports them, so the entry points in
`reports/` import every paper's methods first. A new baseline registered with `takes_budget = True` appears
in every budget-sweep table with no other edit.
"""
from __future__ import annotations

from typing import Any

import common.baselines  # noqa: F401  (registers the baselines)
from common.reduction import BuildTarget, Reducer
from common.registry import REDUCERS
from common.schedule import Budget


def build_reducer(name: str, **kwargs: Any) -> Reducer:
    """Instantiate the reducer registered as `name` with its constructor's keyword arguments."""
    return REDUCERS.get_class(name)(**kwargs)


def make_reducer(name: str, budget: Budget | None, target: BuildTarget, **options: Any) -> Reducer:
    """The reducer `name` at `budget` for the model `target` describes (`Reducer.for_model`): paper settings
    mapped to that model, `options` overriding the method's defaults."""
    return REDUCERS.get_class(name).for_model(budget, target, **options)


def reducer_names() -> list[str]:
    """Every registered reducer (the baselines; papers' methods once their modules are imported)."""
    return sorted(REDUCERS)


def budget_methods() -> list[str]:
    """Registered reducers that keep a `Budget` of visual tokens (`Reducer.takes_budget`), in registration
    order."""
    return [n for n, cls in REDUCERS.items() if getattr(cls, "takes_budget", False)]
