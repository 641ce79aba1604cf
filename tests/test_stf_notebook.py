"""notebooks/stf.ipynb runs top to bottom (nbclient). Its training section needs the toy checkpoint; without
checkpoints/toy-llava the whole test is skipped."""
from pathlib import Path

import pytest

from common.experiment import TOY_CHECKPOINT

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "stf.ipynb"


def run_notebook() -> str:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.skipif(not (TOY_CHECKPOINT / "model.safetensors").exists(),
                    reason="needs the trained checkpoints/toy-llava (make toy-model)")
def test_stf_notebook_executes():
    out = run_notebook()
    assert "576 -> 144" in out and "144 -> 36 tokens" in out
    assert "151.0M" in out and "134.2M" in out
    assert "image placeholders per image: 144 -> 36" in out
    assert "MBTF+STF, 4+4 steps (36)" in out
    assert out.count("ValueError -") == 3
