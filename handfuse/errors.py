"""One exception type for bad data and one for bad parameters, each naming where the problem is."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing or malformed.  The message starts with ``path[:line]:``."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # so that it crosses process-pool boundaries intact
        return (type(self), (self.path, self.problem, self.line))


class ConfigError(ValueError):
    """A parameter has an impossible value.  The message names the parameter and what is allowed."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name = name
        super().__init__(f"parameter {name!r} = {value!r} is not allowed: {allowed}")


def check(cond: bool, name: str, value: object, allowed: str) -> None:
    """Raise a ConfigError for parameter ``name`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(name, value, allowed)


def is_int(value: object) -> bool:
    """An integer that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
