"""notebooks/atp.ipynb runs top to bottom (nbclient) on the trained toy model."""
from tests._notebooks import execute_notebook, requires_toy_checkpoint


@requires_toy_checkpoint
def test_atp_notebook_executes():
    outputs, _ = execute_notebook("atp.ipynb")
    assert "same tokens: True" in outputs and "143.875" in outputs
