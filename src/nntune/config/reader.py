"""Reading one section of ``params.yaml`` key by key, with every problem collected and
named by its dotted key, the bad value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

_T = TypeVar("_T")


class SectionReader:
    """One mapping in the params file: typed getters that record problems under a dotted
    key instead of raising, so the user sees every mistake in one go."""

    def __init__(self, raw: Any, prefix: str, problems: list[str], quiet: bool = False) -> None:
        self.prefix = prefix
        self.problems = problems
        self.quiet = quiet  # the section itself is missing or malformed: reported once above
        self.seen: set[str] = set()
        self.bad: set[str] = set()
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        self.valid_mapping = isinstance(raw, Mapping)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def problem(self, name: str, value: Any, message: str) -> None:
        self.bad.add(name)
        if not self.quiet:
            self.problems.append(f"{self.key(name)} {message}, got {value!r}")

    def failed(self, names: set[str] | None = None) -> bool:
        return bool(self.bad if names is None else self.bad & names)

    def take(self, name: str) -> Any:
        self.seen.add(name)
        if name not in self.raw:
            self.bad.add(name)
            if not self.quiet:
                self.problems.append(f"{self.key(name)} is missing")
            return None
        return self.raw[name]

    def has(self, name: str) -> bool:
        """Whether the key is there: for the keys that may be left out (added after
        projects were scaffolded without them), which then take their default."""
        return name in self.raw

    def optional(self, name: str, default: _T, read: Callable[[str], _T]) -> _T:
        """``read(name)`` when the key is there, else ``default`` (a key added after
        projects were scaffolded without it)."""
        return read(name) if self.has(name) else default

    @contextmanager
    def section(self, name: str) -> Iterator[SectionReader]:
        value = self.take(name)
        broken = not isinstance(value, Mapping)
        child = SectionReader(
            value, f"{self.key(name)}.", self.problems, quiet=self.quiet or broken
        )
        if value is not None and broken:
            self.problem(name, value, "must be a mapping of keys to values")
        yield child
        if child.valid_mapping:
            child.reject_unknown()
        if child.bad or not child.valid_mapping:
            self.bad.add(name)

    def reject_unknown(self, allowed_extra: frozenset[str] = frozenset()) -> None:
        for name in sorted(set(self.raw) - self.seen - allowed_extra, key=str):
            known = ", ".join(sorted(self.seen))
            self.bad.add(str(name))
            self.problems.append(f"{self.key(str(name))} is not a known key (known here: {known})")

    def string(self, name: str) -> str:
        value = self.take(name)
        if value is None and name in self.bad:
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problem(name, value, "must be a non-empty string")
            return ""
        return value

    def choice(self, name: str, allowed: tuple[_T, ...]) -> _T:
        value = self.take(name)
        if value is None and name in self.bad:
            return allowed[0] if allowed else cast(_T, "")
        if value not in allowed:
            self.problem(name, value, f"must be one of {', '.join(map(str, allowed))}")
            return allowed[0] if allowed else cast(_T, "")
        return cast(_T, value)

    def boolean(self, name: str) -> bool:
        value = self.take(name)
        if value is None and name in self.bad:
            return False
        if not isinstance(value, bool):
            self.problem(name, value, "must be true or false")
            return False
        return value

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.take(name)
        if value is None and name in self.bad:
            return minimum or 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, value, "must be an integer")
            return minimum or 0
        if minimum is not None and value < minimum:
            self.problem(name, value, f"must be >= {minimum}")
        return value

    def number(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        open_interval: bool = False,
        open_high: bool = False,
    ) -> float:
        """A float. ``open_interval`` excludes both bounds, ``open_high`` only the upper."""
        value = self.take(name)
        if value is None and name in self.bad:
            return low or 0.0
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            self.problem(name, value, "must be a finite number")
            return low or 0.0
        if low is not None and (number <= low if open_interval else number < low):
            self.problem(name, value, f"must be {'>' if open_interval else '>='} {low:g}")
        open_top = open_interval or open_high
        if high is not None and (number >= high if open_top else number > high):
            self.problem(name, value, f"must be {'<' if open_top else '<='} {high:g}")
        return number


def _as_float(value: Any) -> float | None:
    # PyYAML reads "1e-3" (no dot) as a string, while `dvc exp run -S` writes it that way;
    # accept numeric strings so the two agree.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
