"""One entry point for every table and figure: `python -m reports.experiment <target> [run flags]`.

Each paper's `experiments.py` registers its artifact functions under their Make target names with
`@target("sparsevlm-table1", paper="sparsevlm", ...)`; the Makefile calls this module. Run flags
(`--scale`, `--model-path`, `--data-root`, `--n`, `--device`, `--dtype`, `--set paper.key=value`, `--config`)
are `common.run.RunConfig`'s.

Exit codes: 0 done; 2 missing inputs (every missing file named with the layout expected; nothing written);
3 a target that cannot run at the requested scale (the reason printed). A method's exception propagates.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from common.run import TARGETS, MissingInputs, RunConfig, UnsupportedScale, add_arguments, run_target

PAPERS = ("sparsevlm", "stf", "atp", "dyrate")


def import_papers() -> None:
    """Register every paper's methods and artifact targets (explicitly: `common` never imports papers)."""
    for p in PAPERS:
        for part in ("method", "experiments"):  # STF's method lives in its projector (papers/stf/modules.py)
            if importlib.util.find_spec(f"papers.{p}.{part}") is not None:
                importlib.import_module(f"papers.{p}.{part}")


def select(args: argparse.Namespace) -> list[str]:
    names = list(args.targets)
    if args.kind:
        names += [t for t, a in sorted(TARGETS.items()) if a.kind == args.kind]
    if args.table_number is not None:
        names += [t for t in sorted(TARGETS) if t.endswith(f"-table{args.table_number}")]
    return list(dict.fromkeys(names))


def entry_point(name: str, make: Callable[[], Mapping[str, Path]], *, quiet: bool = False) -> int:
    """The exit code of a standalone entry point (`reports.toy_report`, `reports.methods`) under this module's
    conventions: 2 when inputs are missing (each named; nothing written), else 0 (the table printed)."""
    try:
        paths = make()
    except MissingInputs as err:
        print(f"{name}: {err}", file=sys.stderr, flush=True)
        return 2
    if "md" in paths and not quiet:
        print(Path(paths["md"]).read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="Make target names, e.g. sparsevlm-table1; none = list them")
    parser.add_argument("--kind", choices=("table", "figure"), help="every registered artifact of this kind")
    parser.add_argument("--table-number", type=int, help="every paper's table N (e.g. `make table1`)")
    parser.add_argument("--skip-unsupported", action="store_true",
                        help="with --kind/--table-number: skip targets that cannot run at this scale (say why)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    import_papers()
    cfg = RunConfig.from_args(args)
    names = select(args)
    if not names:
        for name, t in sorted(TARGETS.items()):
            print(f"{name:32s} {t.kind:7s} scales: {', '.join(t.scales)}")
        return 0
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s) {unknown}; known: {', '.join(sorted(TARGETS))}", file=sys.stderr)
        return 3
    for name in names:
        t0 = time.time()
        print(f"== {name} (scale={cfg.scale})", flush=True)
        try:
            out = run_target(name, cfg)
        except UnsupportedScale as err:
            print(f"{err}", file=sys.stderr, flush=True)
            if args.skip_unsupported:
                continue
            return 3
        except MissingInputs as err:
            print(f"{name}: {err}", file=sys.stderr, flush=True)
            return 2
        written = sorted(str(p) for p in (out or {}).values()) if isinstance(out, dict) else []
        for p in written:
            print(f"   wrote {p}")
        print(f"   {name} done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
