"""Baseline reducers, one file each; importing this package registers them (see `common.registry`)."""
from common.baselines import avgpool, fastv, random_drop, tokenconcat, tome, vtw  # noqa: F401
