"""Method options: typed, named settings with defaults that a user overrides by name.

A plugin declares its options as an ``OptionSchema``; ``OptionSchema.resolve`` applies user
overrides (strings from ``-o key=value`` or typed values from YAML) on top of the defaults and
refuses unknown names and invalid values with a ``ConfigError`` that lists what is valid.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from kbit.core.errors import ConfigError

Parser = Callable[[Any], Any]
"""Turns a raw value (often a string) into the option's value; raises ValueError with the expectation."""


@attrs.frozen
class Option:
    """One named option: its default, how raw values are parsed, and a one-line help text."""

    name: str
    default: Any
    parse: Parser
    help: str = ""


@attrs.frozen
class OptionSchema:
    """An ordered set of options with unique names."""

    options: tuple[Option, ...] = attrs.field(converter=tuple)

    @options.validator
    def _unique(self, attribute: attrs.Attribute, value: tuple[Option, ...]) -> None:
        names = [o.name for o in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate option names: {', '.join(dupes)}")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.options]

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def resolve(self, overrides: Mapping[str, Any], method: str = "") -> dict[str, Any]:
        """Defaults with ``overrides`` applied; raises ``ConfigError`` naming the bad option."""
        by_name = {o.name: o for o in self.options}
        values = self.defaults()
        where = f" for method {method}" if method else ""
        for key, raw in overrides.items():
            option = by_name.get(key)
            if option is None:
                close = difflib.get_close_matches(key, by_name, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"unknown option '{key}'{where}{hint}; valid options: {', '.join(by_name)}")
            try:
                values[key] = option.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"invalid value {raw!r} for option '{key}'{where}: {exc}") from None
        return values

    def __add__(self, other: OptionSchema) -> OptionSchema:
        return OptionSchema(self.options + other.options)


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``["r=16", "compute_dtype=float32"]`` → ``{"r": "16", ...}``; refuses a pair without '='."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option '{pair}' is not of the form key=value (e.g. -o r=16)")
        result[key.strip()] = value.strip()
    return result


# Parsers. Each accepts the typed value (from YAML) or its string form (from the command line).

def integer(minimum: int | None = None, maximum: int | None = None, auto: bool = False) -> Parser:
    def parse(raw: Any) -> int | str:
        if auto and raw == "auto":
            return "auto"
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(_int_expectation(minimum, maximum, auto))
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(_int_expectation(minimum, maximum, auto)) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(_int_expectation(minimum, maximum, auto))
        return value

    return parse


def _int_expectation(minimum: int | None, maximum: int | None, auto: bool) -> str:
    bounds = ""
    if minimum is not None and maximum is not None:
        bounds = f" between {minimum} and {maximum}"
    elif minimum is not None:
        bounds = f" >= {minimum}"
    return f"expected an integer{bounds}" + (" or 'auto'" if auto else "")


def number(minimum: float | None = None, below: float | None = None, maximum: float | None = None) -> Parser:
    """A finite float (NaN and infinities are refused: they would silently poison a run)."""
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        if (minimum is not None and value < minimum) or (below is not None and value >= below) \
                or (maximum is not None and value > maximum):
            parts = [f">= {minimum}" if minimum is not None else "", f"< {below}" if below is not None else "",
                     f"<= {maximum}" if maximum is not None else ""]
            raise ValueError(f"expected a number {' and '.join(p for p in parts if p)}")
        return value

    return parse


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def choice(*allowed: str) -> Parser:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return parse


DTYPES = ("auto", "float32", "bfloat16", "float16")
dtype = choice(*DTYPES)


def module_names(raw: Any) -> str | list[str]:
    """'all-linear', a comma-separated string or a list of module names."""
    if isinstance(raw, (list, tuple)):
        names = [str(n).strip() for n in raw]
    else:
        text = str(raw).strip()
        if text == "all-linear":
            return text
        names = [n.strip() for n in text.split(",")]
    if not names or not all(names):
        raise ValueError("expected 'all-linear' or a comma-separated list of module names")
    return names
