"""Method options: typed, named settings with defaults that a user overrides by name.

A plugin declares its options as an ``OptionSchema``; ``OptionSchema.resolve`` applies user
overrides (strings from ``-o key=value`` or typed values from YAML) on top of the defaults and
refuses unknown names and invalid values with a ``ConfigError`` that lists what is valid.
Defaults go through their own parser too, so a default is whatever the same text from a user
would give; a default its parser refuses is the plugin's bug (``PluginError``), and the registry
lists such a method as broken.

The parsers here describe what they accept (``describe_parser``) for ``kbit spec NAME --options``
and ``kbit methods --json``; ``described`` marks a plugin's own parser the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from kbit.core.errors import ConfigError, PluginError

Parser = Callable[[Any], Any]
"""Turns a raw value (often a string) into the option's value; raises ValueError with the expectation.

A parser accepts a value of the type it returns as is (``parse(parse(raw)) == parse(raw)``): a YAML
value and a default are often already parsed."""


@attrs.frozen
class ParserInfo:
    """What a parser accepts, for listings: ``type`` (integer, number, boolean, choice, module names,
    or the default's type for a parser that does not describe itself), ``allowed`` (the rule in words,
    "" when unknown) and ``choices`` (every accepted value, when there are few)."""

    type: str
    allowed: str = ""
    choices: tuple[Any, ...] | None = None


_INFO_ATTRIBUTE = "kbit_parser_info"


def described(parse: Parser, type: str, allowed: str = "", choices: Iterable[Any] | None = None) -> Parser:
    """``parse`` itself, marked with what it accepts (see ``ParserInfo``), for a plugin's own parser."""
    return _described(parse, ParserInfo(type, allowed, None if choices is None else tuple(choices)))


def _described(parse: Parser, info: ParserInfo) -> Parser:
    setattr(parse, _INFO_ATTRIBUTE, info)
    return parse


def describe_parser(parse: Parser, default: Any = None) -> ParserInfo:
    """What ``parse`` accepts: its own description, else the type of ``default``."""
    info = getattr(parse, _INFO_ATTRIBUTE, None)
    if isinstance(info, ParserInfo):
        return info
    fallback = {bool: "boolean", int: "integer", float: "number", str: "text", list: "list", tuple: "list"}
    return ParserInfo(fallback.get(type(default), type(default).__name__))


@attrs.frozen
class Option:
    """One named option: its default, how raw values are parsed, and a one-line help text."""

    name: str
    default: Any
    parse: Parser
    help: str = ""

    def parsed_default(self, method: str = "") -> Any:
        """The default through the parser, as the same value from a user would be.

        Raises ``PluginError`` when the parser refuses the default or does not accept its own result
        unchanged: both are the plugin's bug, found when kbit loads the method.
        """
        where = f" of method {method}" if method else ""
        try:
            value = self.parse(self.default)
        except (ValueError, TypeError) as exc:
            raise PluginError(f"option '{self.name}'{where} has default {self.default!r}, which its own parser "
                              f"refuses ({exc}); give the Option a default its parser accepts") from None
        fix = "a parser must accept a value of the type it returns as is"
        try:
            again = self.parse(value)
        except (ValueError, TypeError) as exc:
            raise PluginError(f"option '{self.name}'{where}: its parser refuses its own result {value!r} ({exc}); "
                              f"{fix}") from None
        if again != value:
            raise PluginError(f"option '{self.name}'{where}: its parser turns its own result {value!r} into "
                              f"{again!r}; {fix}")
        return value

    def describe(self) -> dict[str, Any]:
        """``{name, default, type, allowed, choices, help}``, JSON-ready; the default as parsed where it parses."""
        try:
            default = self.parse(self.default)
        except (ValueError, TypeError):
            default = self.default
        info = describe_parser(self.parse, default)
        choices = None if info.choices is None else list(info.choices)
        return {"name": self.name, "default": list(default) if isinstance(default, tuple) else default,
                "type": info.type, "allowed": info.allowed, "choices": choices, "help": self.help}


# PEFT's, axolotl's and LLaMA-Factory's names for adapter options, suggested for an unknown option by what it means
FOREIGN_OPTIONS = {"lora_r": "r", "lora_rank": "r", "rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                   "lora_target": "target_modules", "lora_target_modules": "target_modules", "use_dora": "peft_type"}


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
        """The defaults as declared (not parsed; see ``parsed_defaults``)."""
        return {o.name: o.default for o in self.options}

    def parsed_defaults(self, method: str = "") -> dict[str, Any]:
        """Every default through its parser; ``PluginError`` naming the first bad one (``Option.parsed_default``)."""
        return {o.name: o.parsed_default(method) for o in self.options}

    def describe(self) -> list[dict[str, Any]]:
        """Each option's ``Option.describe()``, in order."""
        return [o.describe() for o in self.options]

    def resolve(self, overrides: Mapping[str, Any], method: str = "") -> dict[str, Any]:
        """Parsed defaults with ``overrides`` applied; raises ``ConfigError`` naming the bad option."""
        by_name = {o.name: o for o in self.options}
        values = self.parsed_defaults(method)
        where = f" for method {method}" if method else ""
        for key, raw in overrides.items():
            option = by_name.get(key)
            if option is None:
                close = [FOREIGN_OPTIONS[key]] if FOREIGN_OPTIONS.get(key) in by_name else \
                    difflib.get_close_matches(key, by_name, n=1)
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
        key = key.strip()
        if key in result and result[key] != value.strip():
            raise ConfigError(f"-o {key} is given twice ({result[key]} and {value.strip()}); pass it once")
        result[key] = value.strip()
    return result


# Parsers. Each accepts the typed value (from YAML) or its string form (from the command line).

def integer(
    minimum: int | None = None, maximum: int | None = None, auto: bool = False, allowed: Iterable[int] | None = None
) -> Parser:
    """An integer within the bounds and, when ``allowed`` is given, one of those; ``auto`` also accepts 'auto'."""
    values = None if allowed is None else tuple(allowed)
    expectation = _int_expectation(minimum, maximum, auto, values)

    def parse(raw: Any) -> int | str:
        if auto and raw == "auto":
            return "auto"
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(expectation)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(expectation) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) \
                or (values is not None and value not in values):
            raise ValueError(expectation)
        return value

    choices = None if values is None else values + (("auto",) if auto else ())
    return _described(parse, ParserInfo("integer", expectation.removeprefix("expected "), choices))


def _int_expectation(minimum: int | None, maximum: int | None, auto: bool, allowed: tuple[int, ...] | None = None) -> str:
    if allowed is not None:
        listed = ", ".join(str(v) for v in allowed) + (", auto" if auto else "")
        return f"expected one of {listed}"
    bounds = ""
    if minimum is not None and maximum is not None:
        bounds = f" between {minimum} and {maximum}"
    elif minimum is not None:
        bounds = f" >= {minimum}"
    elif maximum is not None:
        bounds = f" <= {maximum}"
    return f"expected an integer{bounds}" + (" or 'auto'" if auto else "")


def number(minimum: float | None = None, below: float | None = None, maximum: float | None = None) -> Parser:
    """A finite float (NaN and infinities are refused: they would silently poison a run)."""
    parts = [f">= {minimum}" if minimum is not None else "", f"< {below}" if below is not None else "",
             f"<= {maximum}" if maximum is not None else ""]
    bounds = " and ".join(p for p in parts if p)

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
            raise ValueError(f"expected a number {bounds}")
        return value

    return _described(parse, ParserInfo("number", f"a finite number {bounds}".rstrip()))


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


_described(boolean, ParserInfo("boolean", "true or false", (True, False)))


def choice(*allowed: str) -> Parser:
    """One of ``allowed`` (lowercase names), case-insensitively."""
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return _described(parse, ParserInfo("choice", f"one of {', '.join(allowed)}", allowed))


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


_described(module_names, ParserInfo("module names", "'all-linear' or comma-separated module names"))
