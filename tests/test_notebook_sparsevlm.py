"""notebooks/sparsevlm.ipynb runs top to bottom (nbclient) on the trained toy model."""
from tests._notebooks import execute_notebook, requires_toy_checkpoint


@requires_toy_checkpoint
def test_sparsevlm_notebook_executes():
    outputs, images = execute_notebook("sparsevlm.ipynb", timeout=120)
    assert "lambda = 0, max |logit difference|: 0.0" in outputs  # keep-all is exact
    assert "<- rater" in outputs and "merged" in outputs and "saved)" in outputs
    assert "calibrated scale=" in outputs  # calibration prints the achieved average
    assert images >= 3  # the image, the per-layer masks, the recycled clusters
