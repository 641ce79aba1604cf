"""notebooks/atp.ipynb runs top to bottom (nbclient). Its last section needs the toy checkpoint; without
checkpoints/toy-llava the whole test is skipped, as the brief for the notebooks asks."""
from pathlib import Path

import pytest

from common.experiment import TOY_CHECKPOINT

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "atp.ipynb"


@pytest.mark.skipif(not (TOY_CHECKPOINT / "model.safetensors").exists(),
                    reason="needs the trained checkpoints/toy-llava (make toy-model)")
def test_atp_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "same tokens: True" in outputs and "143.875" in outputs
