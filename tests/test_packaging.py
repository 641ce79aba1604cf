"""Packaging consistency: pyproject.toml and environment.yml list the same dependencies; CI runs `make test`."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> tuple[str, str]:
    """("package-name", "specifier") with the name normalised as in PEP 503 and spaces removed."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", requirement)
    assert match, f"unparseable requirement {requirement!r}"
    name, spec = match.groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec.replace(" ", "")


def _pyproject_deps() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(_normalise(d) for d in deps)


def _environment_pip_deps() -> dict[str, str]:
    yaml = pytest.importorskip("yaml")  # PyYAML comes with transformers
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml should have exactly one pip: list"
    # "-e ." installs the project itself; it is not a dependency.
    return dict(_normalise(d) for d in pip_lists[0] if not d.strip().startswith("-"))


def test_pyproject_and_environment_agree():
    pyproject, conda = _pyproject_deps(), _environment_pip_deps()
    assert sorted(set(pyproject) - set(conda)) == [], "in pyproject.toml only"
    assert sorted(set(conda) - set(pyproject)) == [], "in environment.yml only"
    assert {n: (pyproject[n], conda[n]) for n in pyproject if pyproject[n] != conda[n]} == {}


def test_environment_installs_the_project_and_matches_python_floor():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = tuple(int(x) for x in python.split("=")[-1].split(".")[:2])
    assert floor.startswith(">=") and version >= tuple(int(x) for x in floor[2:].split(".")[:2])


def test_ci_runs_make_test():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert "make test" in commands
    readme = ROOT / "README.md"
    if readme.exists():  # the README's test command is the one CI runs
        assert "make test" in readme.read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t.*pytest", makefile, re.M), "`make test` should run pytest"
