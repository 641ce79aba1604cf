"""The paper -> scale normaliser (DESIGN.md §6)."""
from __future__ import annotations

import pytest

from common.schedule import budget_fraction, keep_count, map_layer, resolve_keep


def test_layer_mapping():
    assert map_layer(2, 32) == 2 and map_layer(16, 8) == 4 and map_layer(2, 8) == 0  # round(0.5) = 0
    assert map_layer(6, 8) == 2 and map_layer(15, 8) == 4 and map_layer(32, 8) == 8
    assert [map_layer(l, 4) for l in (2, 6, 15, 19)] == [0, 1, 2, 2]


def test_budgets_keep_the_paper_fraction():
    assert [keep_count(b, 144) for b in (192, 128, 64, 144)] == [48, 32, 16, 36]
    assert [keep_count(b, 576) for b in (192, 128, 64, 144)] == [192, 128, 64, 144]
    assert round(budget_fraction(192), 4) == 0.3333 and round(budget_fraction(64), 4) == 0.1111
    assert keep_count(0.5, 16) == 8 and keep_count(1.0, 16) == 16 and keep_count(0.0, 16) == 0
    assert keep_count(192, 16) == 5  # 5.33 -> 5
    assert keep_count(0.5, 5) == 3  # halves round up


def test_resolve_keep_variants():
    assert resolve_keep(576, ratio=0.5) == 288 and resolve_keep(25, ratio=0.5) == 12  # FastV's round()
    assert resolve_keep(16, keep=4) == 4 and resolve_keep(144, budget=64) == 16


@pytest.mark.parametrize("call,arg", [
    (lambda: keep_count(-0.1, 10), "budget"),
    (lambda: keep_count(-1, 10), "budget"),
    (lambda: keep_count(600, 10), "budget"),
    (lambda: keep_count(1.5, 10), "budget"),
    (lambda: keep_count(0.5, -1), "n_visual"),
    (lambda: resolve_keep(10, keep=11), "keep"),
    (lambda: resolve_keep(10, keep=2, ratio=0.5), "exactly one"),
    (lambda: resolve_keep(10, ratio=-0.5), "ratio"),
    (lambda: map_layer(33, 8), "layer"),
    (lambda: map_layer(-1, 8), "layer"),
    (lambda: map_layer(2, 0), "n_layers"),
])
def test_errors_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()
