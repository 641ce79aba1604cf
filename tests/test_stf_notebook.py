"""notebooks/stf.ipynb runs top to bottom (nbclient); its training section needs the toy checkpoint."""
from tests._notebooks import execute_notebook, requires_toy_checkpoint


@requires_toy_checkpoint
def test_stf_notebook_executes():
    out, _ = execute_notebook("stf.ipynb", timeout=120)
    assert "576 -> 144" in out and "144 -> 36 tokens" in out
    assert "151.0M" in out and "134.2M" in out
    assert "image placeholders per image: 144 -> 36" in out
    assert "MBTF+STF, 4+4 steps (36)" in out
    assert out.count("ValueError -") == 3
