"""The run layer: one configuration, one `Run` per scale, one registry of artifact targets.

- `RunConfig` (config.py): every setting of a run, from the CLI, one config file or the documented
  environment variables; unknown keys are errors.
- `Run` (run.py): the model, the samples, evaluation, reducers built from the registry, the artifact writer
  with provenance, and a device-aware timer.
- `target` / `run_target` (targets.py): Make targets as functions of a `Run`.
- `MissingInputs` (data.py): absent inputs, named all at once with the layout expected.
"""
from common.run.config import ConfigError, RunConfig, add_arguments
from common.run.data import MissingInputs
from common.run.run import Run, Timer, nanmean, stable_hash
from common.run.targets import TARGETS, Target, UnsupportedScale, run_target, target

__all__ = ["ConfigError", "RunConfig", "add_arguments", "MissingInputs", "Run", "Timer", "nanmean", "stable_hash",
           "TARGETS", "Target", "UnsupportedScale", "run_target", "target"]
