"""notebooks/dyrate.ipynb runs top to bottom (nbclient) on the trained toy model and the committed predictor:
the walkthrough follows the trained model's rate over a caption, which a random model cannot show."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests._notebooks import execute_notebook, requires_toy_checkpoint

PREDICTOR = Path(__file__).resolve().parents[1] / "checkpoints" / "dyrate-predictor" / "card.json"


@requires_toy_checkpoint
@pytest.mark.skipif(not PREDICTOR.exists(), reason="needs checkpoints/dyrate-predictor (make dyrate-predictor)")
def test_dyrate_notebook_executes():
    outputs, images = execute_notebook("dyrate.ipynb")
    for mode in ("recompute", "mask", "drop"):
        assert f"rate 0, {mode:9s} == vanilla: True" in outputs  # the acceptance check
    assert "caption:" in outputs and "rate trend over this caption" in outputs and "% of the dense FLOPs" in outputs
    assert images >= 3  # the image, the rate curves, the masks
