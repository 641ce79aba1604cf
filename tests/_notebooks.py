"""Run a walkthrough notebook top to bottom with nbclient, for the per-paper notebook tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.paths import CHECKPOINTS

TOY_CHECKPOINT = CHECKPOINTS / "toy-llava"

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# The walkthroughs are about the trained toy model; a random one would show nothing worth reading.
requires_toy_checkpoint = pytest.mark.skipif(
    not (TOY_CHECKPOINT / "model.safetensors").exists(),
    reason="needs the trained toy checkpoint checkpoints/toy-llava (make toy-model)",
)


def execute_notebook(name: str, timeout: int = 300) -> tuple[str, int]:
    """Execute notebooks/<name> in its own folder; return (all text outputs joined, number of PNG outputs)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    images = sum(1 for o in outputs if "image/png" in o.get("data", {}))
    return text, images
