"""`RunConfig`: everything that defines one run, from the command line or one config file.

One channel. A run is configured by, in increasing precedence:
1. the defaults below;
2. one config file (`--config run.toml` or `.json`): top-level keys are `RunConfig` fields, and an
   `[options.<paper>]` table holds that paper's own knobs (see each paper's `Options` dataclass);
3. the documented environment variables (`ENVIRONMENT`, the only place the code reads any), so
   `make table1 SCALE=paper MODEL_PATH=... DATA_ROOT=...` works as the README says;
4. command-line flags (`--scale paper --model-path ... --set sparsevlm.calib_iters=5`).
An unknown key anywhere (file, `--set`, a paper's options) is an error that names it and lists the known ones.

    cfg = RunConfig.from_cli(["--scale", "paper", "--model-path", "/models/llava-1.5-7b-hf"])
    cfg = RunConfig(scale="toy", n=20)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

SCALES = ("toy", "mini", "paper")
DTYPES = ("auto", "fp32", "fp16", "bf16")

# Environment variable -> RunConfig field. Nothing else in the project reads run settings from the
# environment ($TOKENPRUNE_CACHE moves the cache folder, see common.paths).
ENVIRONMENT = {
    "SCALE": "scale",
    "MODEL_PATH": "model_path",
    "DATA_ROOT": "data_root",
    "TRAIN_ROOT": "train_root",
    "DEVICE": "device",
    "DTYPE": "dtype",
}

O = TypeVar("O")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


@dataclass(frozen=True)
class RunConfig:
    """What defines a run (artifact targets and training recipes alike).

    scale: "toy" (our small model, ToyWorld), "mini" (DINOv2-S + SmolLM2, easy-vqa) or "paper" (LLaVA-1.5).
    model_path: the model folder; default: the paper's default checkpoint at toy/mini scale, required at
        paper scale (an llava-hf LLaVA folder).
    data_root: LLaVA's `playground/data/eval` folder (paper scale benchmarks).
    train_root: the folder holding LLaVA's training data (LLaVA-Pretrain/, llava_v1_5_mix665k.json, coco/)
        for paper-scale training recipes.
    benchmarks: restrict a run to these benchmarks / families (None: the artifact's own list).
    n: samples per family or benchmark (None: the artifact's toy default; at paper scale every sample).
    n_calib: calibration samples per family (methods whose knob is tuned to a budget).
    seed: data seed (ToyWorld splits, random baselines).
    device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1" ...
    dtype: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16" or "bf16".
    batch_size: samples per generate() call.
    out_dir: where artifacts go (default figures/<paper>/, figures/<paper>/<scale>/ off the toy scale).
    cache_dir: prediction and calibration caches (default .cache).
    options: per-paper knobs, {paper: {name: value}}; read through `Run.options(<paper Options class>)`.
    """

    scale: str = "toy"
    model_path: Path | None = None
    data_root: Path | None = None
    train_root: Path | None = None
    benchmarks: tuple[str, ...] | None = None
    n: int | None = None
    n_calib: int = 16
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    out_dir: Path | None = None
    cache_dir: Path | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"scale: expected one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("n", "n_calib", "batch_size", "seed"):
            v = getattr(self, name)
            if v is None and name == "n":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name in ("batch_size",) else 0):
                raise ConfigError(f"{name}: expected a {'positive' if name == 'batch_size' else 'non-negative'} "
                                  f"integer, got {v!r}")
        for name in ("model_path", "data_root", "train_root", "out_dir", "cache_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, name, Path(v).expanduser())
        if self.benchmarks is not None and not isinstance(self.benchmarks, tuple):
            object.__setattr__(self, "benchmarks", tuple(self.benchmarks))
        if not isinstance(self.options, Mapping) or not all(isinstance(v, Mapping) for v in self.options.values()):
            raise ConfigError("options: expected {paper: {name: value}}")

    # ---- construction
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> "RunConfig":
        """Build from a dict (a parsed config file); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "RunConfig":
        """A `.toml` or `.json` config file."""
        return cls.from_mapping(read_config_file(path), where=str(path))

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_cli(cls, argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None,
                 environ: Mapping[str, str] | None = None) -> "RunConfig":
        """Parse `argv` (flags of `add_arguments`), layered over a `--config` file and the environment."""
        parser = parser or add_arguments(argparse.ArgumentParser())
        args, _ = parser.parse_known_args(argv)
        return cls.from_args(args, environ=environ)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> "RunConfig":
        """The config of parsed `add_arguments` flags (file < environment < flags)."""
        data: dict[str, Any] = dict(read_config_file(args.config)) if getattr(args, "config", None) else {}
        env = os.environ if environ is None else environ
        for var, name in ENVIRONMENT.items():
            if env.get(var):
                data[name] = env[var]
        for f in fields(cls):
            v = getattr(args, f.name, None)
            if v is not None and f.name != "options":
                data[f.name] = v
        options = {k: dict(v) for k, v in dict(data.get("options", {})).items()}
        for item in getattr(args, "set", None) or []:
            paper, key, value = _parse_set(item)
            options.setdefault(paper, {})[key] = value
        data["options"] = options
        if isinstance(data.get("benchmarks"), str):
            data["benchmarks"] = tuple(b for b in data["benchmarks"].split(",") if b)
        return cls.from_mapping(data, where=getattr(args, "config", None) or "command line")

    def options_for(self, paper: str, options_cls: type[O]) -> O:
        """`options_cls` (a dataclass of a paper's knobs) filled from `options[paper]`; unknown keys fail."""
        given = dict(self.options.get(paper, {}))
        known = {f.name: f for f in fields(options_cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"options.{paper}: unknown key(s) {unknown}; known: {sorted(known)}")
        typed = {k: _convert(v, known[k].type, f"options.{paper}.{k}") for k, v in given.items()}
        return options_cls(**typed)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (for sidecars and cache keys)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        out["options"] = {k: dict(v) for k, v in self.options.items()}
        return out


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: {path} does not exist")
    if path.suffix == ".toml":
        try:
            import tomllib  # Python >= 3.11
        except ModuleNotFoundError:
            raise ConfigError(f"config: reading {path} needs Python 3.11 (tomllib); use a .json file") from None
        with path.open("rb") as f:
            return tomllib.load(f)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    raise ConfigError(f"config: {path} must be a .toml or .json file")


def _parse_set(item: str) -> tuple[str, str, Any]:
    """"paper.key=value" -> (paper, key, value); the value is parsed as JSON when it can be."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set: expected paper.key=value, got {item!r}")
    lhs, raw = item.split("=", 1)
    paper, key = lhs.split(".", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return paper, key, value


def _convert(value: Any, annotation: Any, name: str) -> Any:
    """Coerce command-line strings to a field's declared scalar type (int, float, bool, str)."""
    ann = str(annotation)
    try:
        if ann in ("int", "<class 'int'>") and not isinstance(value, bool):
            return int(value)
        if ann in ("float", "<class 'float'>") and not isinstance(value, bool):
            return float(value)
        if ann in ("bool", "<class 'bool'>"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {ann}, got {value!r}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The run flags every entry point shares (default None = "not given", so lower layers show through)."""
    g = parser.add_argument_group("run configuration (also: --config FILE, and the variables SCALE, MODEL_PATH, "
                                  "DATA_ROOT, TRAIN_ROOT, DEVICE, DTYPE)")
    g.add_argument("--config", help="a .toml or .json file of RunConfig fields ([options.<paper>] for paper knobs)")
    g.add_argument("--scale", choices=SCALES)
    g.add_argument("--model-path", dest="model_path", type=Path)
    g.add_argument("--data-root", dest="data_root", type=Path, help="LLaVA's playground/data/eval (paper scale)")
    g.add_argument("--train-root", dest="train_root", type=Path, help="LLaVA's training data (paper-scale training)")
    g.add_argument("--benchmarks", help="comma-separated benchmarks or families to run (default: the artifact's)")
    g.add_argument("--n", type=int, help="samples per family or benchmark")
    g.add_argument("--n-calib", dest="n_calib", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--device")
    g.add_argument("--dtype", choices=DTYPES)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--out-dir", dest="out_dir", type=Path)
    g.add_argument("--cache-dir", dest="cache_dir", type=Path)
    g.add_argument("--set", action="append", metavar="PAPER.KEY=VALUE", help="a paper option, e.g. sparsevlm.calib_iters=5")
    return parser
