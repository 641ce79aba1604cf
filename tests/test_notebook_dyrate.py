"""notebooks/dyrate.ipynb runs top to bottom (nbclient) on the trained toy model and the committed predictor.
Without checkpoints/toy-llava (trained by `make toy-model`) the test is skipped: the walkthrough follows the
trained model's rate over a caption, which a random model cannot show."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.experiment import TOY_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "dyrate.ipynb"


@pytest.mark.skipif(not (TOY_CHECKPOINT / "card.json").exists(),
                    reason="needs the trained toy checkpoint checkpoints/toy-llava (make toy-model)")
@pytest.mark.skipif(not (ROOT / "checkpoints" / "dyrate-predictor" / "card.json").exists(),
                    reason="needs checkpoints/dyrate-predictor (make dyrate-predictor)")
def test_dyrate_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for mode in ("recompute", "mask", "drop"):
        assert f"rate 0, {mode:9s} == vanilla: True" in outputs  # the acceptance check
    assert "caption:" in outputs and "rate trend over this caption" in outputs and "% of the dense FLOPs" in outputs
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 3  # the image, the rate curves, the masks
