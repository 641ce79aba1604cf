"""Registry of token reducers by name (llmc's `TOKEN_REDUCTION_REGISTRY`, DomainBed's `get_algorithm_class`).

    @register("fastv")
    class FastV(Reducer): ...

    build_reducer("fastv", K=2, ratio=0.5)

Duplicate names are refused; an unknown name lists the known ones. Importing `common.baselines` registers
the baselines; paper methods register themselves in `papers/<p>/method.py`; `build_reducer` and
`reducer_names` import all of them first.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A dict from name to class that refuses duplicate names."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in self:
                raise KeyError(f"{self.what} {name!r} is already registered (by {self[name].__module__}."
                               f"{self[name].__qualname__})")
            self[name] = cls
            cls.name = name
            return cls

        return deco

    def get_class(self, name: str):
        if name not in self:
            _import_builtin()
        if name not in self:
            known = ", ".join(sorted(self)) or "(none)"
            raise KeyError(f"unknown {self.what} {name!r}; known: {known}")
        return self[name]


REDUCERS = Registry("reducer")
register = REDUCERS.register
# Pre-LLM feature poolers that change the token width and need a trained projector (TokenConcat, AvgPool).
POOLERS = Registry("pooler")


def _import_builtin() -> None:
    """Register every method shipped with the repo: the baselines and each `papers/<p>/method.py`, so the
    set of known names never depends on what happened to be imported before."""
    import importlib
    import importlib.util
    import pkgutil

    import common.baselines  # noqa: F401  (registers the baselines)

    try:
        import papers
    except ImportError:  # an install without the papers package
        return
    for info in pkgutil.iter_modules(papers.__path__):
        if info.ispkg and importlib.util.find_spec(f"papers.{info.name}.method") is not None:
            importlib.import_module(f"papers.{info.name}.method")


def build_reducer(name: str, **kwargs):
    """Instantiate the reducer registered as `name` with its keyword arguments."""
    return REDUCERS.get_class(name)(**kwargs)


def reducer_names() -> list[str]:
    _import_builtin()
    return sorted(REDUCERS)
