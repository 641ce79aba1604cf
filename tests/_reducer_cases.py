"""Per-reducer test settings shared by the reduction/baseline tests (DomainBed's `test_models` style).

Every registered reducer needs an entry: `prune` kwargs that drop tokens on the 4-layer tiny model, and
`keep_all` kwargs that keep everything (None if the method cannot keep everything).
"""
from __future__ import annotations

import torch

import papers.atp.method  # noqa: F401  (registers every paper's method: the registry is complete)
import papers.dyrate.method  # noqa: F401
import papers.sparsevlm.method  # noqa: F401
from common.schedule import Budget
from papers.atp.module import ATPConfig, ATPModules


def _atp_modules(fixed_keep: tuple[int, int]) -> ATPModules:
    """ATP modules for the tiny model (16 visual tokens, 4 layers) with fixed top-c keeps: deterministic
    pruning without training (Table 2's fixed-ratio form); thresholds are covered by tests/test_atp_module.py."""
    torch.manual_seed(0)
    return ATPModules(ATPConfig(n_visual=16, layers=(1, 3), n_layers=4, hidden=16, fixed_keep=fixed_keep))


CASES = {
    "fastv": {"prune": dict(K=2, budget=Budget.pruned(0.5)), "keep_all": dict(K=2, budget=Budget.pruned(0.0))},
    "random": {"prune": dict(layer=1, budget=Budget.fraction(0.25)), "keep_all": dict(layer=1, budget=Budget.keep_all())},
    "vtw": {"prune": dict(K=2), "keep_all": None},
    "tome": {"prune": dict(layer=1, budget=Budget.pruned(0.5)), "keep_all": dict(layer=1, budget=Budget.pruned(0.0))},
    # window=1 "pools" every token into itself through the merged-token path: a keep-all that exercises it
    "avgpool": {"prune": dict(layer=0), "keep_all": dict(layer=0, window=1)},
    "dyrate": {"prune": dict(K=2, rate=0.5), "keep_all": dict(K=2, rate=0.0)},  # fixed-rate FP mode
    "dyrate-dp": {"prune": dict(start=1, n_layers=4, R0=0.25), "keep_all": dict(start=1, n_layers=4, R0=0.0)},
    # recycling off: the shared cache-free replay (FixedKeep) cannot rebuild merged tokens; tests/test_sparsevlm_method.py covers it
    "sparsevlm": {"prune": dict(scale=1.0, recycle=False), "keep_all": dict(mode="paper", lam=0.0)},
    "atp": {"prune": dict(modules=_atp_modules((8, 4))), "keep_all": dict(modules=_atp_modules((16, 16)))},
}
