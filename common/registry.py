"""Registries by name: reducers (`REDUCERS`, filled by `@register`) and pre-LLM poolers (`POOLERS`).

    @register("fastv")
    class FastV(Reducer): ...

Duplicate names are refused; an unknown name lists the known ones. This module only holds the tables; the
factory that builds reducers from them is `common.factory` (it imports the baselines, which import this).
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

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register a throwaway method clean up with this)."""
        self.pop(name, None)

    def get_class(self, name: str):
        if name not in self:
            known = ", ".join(sorted(self)) or "(none)"
            raise KeyError(f"unknown {self.what} {name!r}; known: {known} (a paper's method registers when "
                           f"`papers.<paper>.method` is imported)")
        return self[name]


REDUCERS = Registry("reducer")
register = REDUCERS.register
# Pre-LLM feature poolers that change the token width and need a trained projector (TokenConcat, AvgPool).
POOLERS = Registry("pooler")
