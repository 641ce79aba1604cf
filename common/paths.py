"""Where the repository keeps things; the one definition of the repository root.

Folders are relative to the checkout (figures and checkpoints are committed next to the code). `CACHE`
can be moved with $TOKENPRUNE_CACHE (documented in `common.run.config`), e.g. to a scratch disk for the
paper scale's prediction caches.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = REPO_ROOT / "figures"
CHECKPOINTS = REPO_ROOT / "checkpoints"
CACHE = Path(os.environ.get("TOKENPRUNE_CACHE") or REPO_ROOT / ".cache")
