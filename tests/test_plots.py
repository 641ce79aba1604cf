"""common.plots: the shared style and the two reusable plots render (smoke tests via save_figure)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.artifacts import save_figure
from common.plots import apply_style, new_figure, plot_share_curves, plot_token_mask


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_token_mask_panels(tmp_path):
    apply_style()
    image = Image.fromarray((np.arange(48 * 48 * 3) % 255).reshape(48, 48, 3).astype(np.uint8))
    rng = np.random.default_rng(0)
    masks = [np.ones((12, 12), bool), rng.random((12, 12)) < 0.33, rng.random((12, 12)) < 0.11]
    axes = plot_token_mask(image, masks, title=["layer 0", "layer 2", "layer 6"])
    assert len(axes) == 3 and axes[1].get_title() == "layer 2"
    paths = save_figure(axes[0].figure, tmp_path / "mask", provenance={})
    assert paths["png"].stat().st_size > 0 and paths["pdf"].stat().st_size > 0
    # One mask on a given axis; default title counts the kept tokens.
    fig, ax = new_figure()
    (only,) = plot_token_mask(np.zeros((24, 24)), np.eye(12, dtype=bool), ax=ax)
    assert only.get_title() == "kept 12/144"


def test_token_mask_bad_inputs():
    with pytest.raises(ValueError, match="keep_mask"):
        plot_token_mask(np.zeros((8, 8)), [np.ones(4, bool)])
    fig, ax = new_figure()
    with pytest.raises(ValueError, match="ax"):
        plot_token_mask(np.zeros((8, 8)), [np.ones((2, 2), bool)] * 2, ax=ax)


def test_share_curves(tmp_path):
    steps = np.arange(1, 21)
    rng = np.random.default_rng(0)
    image = np.clip(0.6 - 0.02 * steps + 0.05 * rng.standard_normal((8, 20)), 0, 1)
    response = 1 - image
    response[0, 10:] = np.nan  # a shorter answer
    fig, ax = new_figure()
    out = plot_share_curves(steps, {"image": image, "response": response}, ax=ax)
    assert out is ax and [t.get_text() for t in ax.get_legend().get_texts()] == ["image", "response"]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # mean lines and bands
    paths = save_figure(fig, tmp_path / "shares", provenance={})
    assert paths["png"].exists()
    with pytest.raises(ValueError, match="shares"):
        plot_share_curves(steps, {"image": image[:, :5]})
    with pytest.raises(ValueError, match="band"):
        plot_share_curves(steps, {"image": image}, band="ci")
