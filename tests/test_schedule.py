"""The budget value and the paper -> scale normaliser (DESIGN.md §6)."""
from __future__ import annotations

import pytest

from common.schedule import Budget, keep_count, map_layer, pruning_layer


def test_layer_mapping():
    assert map_layer(2, 32) == 2 and map_layer(16, 8) == 4 and map_layer(2, 8) == 0  # round(0.5) = 0
    assert map_layer(6, 8) == 2 and map_layer(15, 8) == 4 and map_layer(32, 8) == 8
    assert [map_layer(l, 4) for l in (2, 6, 15, 19)] == [0, 1, 2, 2]
    assert pruning_layer(32) == 2 and pruning_layer(8) == 1 and pruning_layer(30) == 2  # at least 1


def test_paper_budgets_keep_the_paper_fraction():
    assert [Budget.paper(b).keep(144) for b in (192, 128, 64, 144)] == [48, 32, 16, 36]
    assert [Budget.paper(b).keep(576) for b in (192, 128, 64, 144)] == [192, 128, 64, 144]
    assert round(Budget.paper(192).kept_fraction, 4) == 0.3333 and Budget.paper(64).paper_tokens == 64
    assert Budget.paper(192).keep(16) == 5  # 5.33 -> 5
    assert Budget.paper(135, of=2048).label() == "135/2048" and Budget.paper(135, of=2048).keep(432) == 28


def test_fractions_counts_and_fastv_ratios():
    assert Budget.fraction(0.5).keep(16) == 8 and Budget.keep_all().keep(16) == 16 and Budget.fraction(0).keep(16) == 0
    assert Budget.fraction(0.5).keep(5) == 3  # halves round up
    assert Budget.pruned(0.5).keep(576) == 288 and Budget.pruned(0.5).keep(25) == 12  # FastV's Python round()
    assert Budget.count(4).keep(16) == 4 and Budget.count(4).kept_fraction is None
    assert keep_count(Budget.paper(64), 144) == 16


@pytest.mark.parametrize("text,expected", [("192/576", Budget.paper(192)), ("192", Budget.paper(192)),
                                           ("25%", Budget.fraction(0.25)), ("R=0.5", Budget.pruned(0.5)),
                                           ("keep=16", Budget.count(16)), ("135/2048", Budget.paper(135, of=2048))])
def test_parse_reads_the_cli_forms(text, expected):
    assert Budget.parse(text) == expected
    assert Budget.parse(Budget.parse(text).label().replace("keep ", "keep=")) == expected


def test_labels():
    assert [Budget.paper(192).label(), Budget.fraction(0.25).label(), Budget.pruned(0.5).label(),
            Budget.count(16).label()] == ["192/576", "25.0%", "R=0.5", "keep 16"]


@pytest.mark.parametrize("call,arg", [
    (lambda: Budget.fraction(-0.1), "budget"),
    (lambda: Budget.paper(-1), "budget"),
    (lambda: Budget.paper(600), "budget"),
    (lambda: Budget.fraction(1.5), "budget"),
    (lambda: Budget.fraction(192), "Budget.paper"),
    (lambda: Budget.count(2.5), "count"),
    (lambda: Budget.pruned(2.0), "R"),
    (lambda: Budget.fraction(0.5).keep(-1), "n_visual"),
    (lambda: Budget.count(11).keep(10), "more than the 10"),
    (lambda: Budget.parse("lots"), "cannot read"),
    (lambda: map_layer(33, 8), "layer"),
    (lambda: map_layer(-1, 8), "layer"),
    (lambda: map_layer(2, 0), "n_layers"),
])
def test_errors_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


@pytest.mark.parametrize("bare", [1, 0.5, 192, None, "192"])
def test_coerce_refuses_anything_but_a_budget(bare):
    with pytest.raises(TypeError, match="Budget.paper"):
        Budget.coerce(bare)
