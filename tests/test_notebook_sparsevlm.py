"""notebooks/sparsevlm.ipynb runs top to bottom (nbclient) on the trained toy model. Without
checkpoints/toy-llava (trained by `make toy-model`) the test is skipped: the walkthrough is about the trained
model, a random one would show nothing worth reading."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.experiment import TOY_CHECKPOINT

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sparsevlm.ipynb"


@pytest.mark.skipif(not (TOY_CHECKPOINT / "card.json").exists(),
                    reason="needs the trained toy checkpoint checkpoints/toy-llava (make toy-model)")
def test_sparsevlm_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "lambda = 0, max |logit difference|: 0.0" in outputs  # keep-all is exact
    assert "<- rater" in outputs and "merged" in outputs and "saved)" in outputs
    assert "calibrated scale=" in outputs  # calibration prints the achieved average
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 3  # the image, the per-layer masks, the recycled clusters
