"""The leaf rules of the config schema: what one value may be, and the one line that says so.

Every rule is a pydantic type (`Annotated[Any, PlainValidator(...)]`) that carries the text of what
it allows ("a finite number > 0", "an integer >= 1 or null", "one of warn, stop"). A value that
breaks it raises pydantic's `PydanticCustomError` of type `loramcl`, whose message is that text, so
`loramcl.schema.errors.one_line` can write `<key> must be <allowed>, got <value>` for any key
without a per-key if-chain. Floats are finite everywhere: `inf` and `nan` pass every `> 0` test.
Booleans are never numbers (YAML's `true` is not 1) and numbers are never parsed from text.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable, Iterable, Optional

from pydantic import PlainValidator
from pydantic_core import PydanticCustomError

RULE = "loramcl"  # the pydantic error type of a broken rule; its message is what the rule allows


def rule(allowed: str, check: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v) -> Any:
    """A pydantic type whose values pass `check`; the error message is `allowed`."""

    def validate(value: Any) -> Any:
        try:
            ok = bool(check(value))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise PydanticCustomError(RULE, allowed)
        return convert(value)

    return Annotated[Any, PlainValidator(validate)]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def _within(value: float, low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    if high is not None and (value >= high if high_open else value > high):
        return False
    return True


def _or(text: str, nullable: bool, also: Iterable[Any] = (), note: str = "") -> str:
    extra = [repr(a) if isinstance(a, str) else str(a) for a in also] + (["null"] if nullable else [])
    return text + "".join(f" or {e}" for e in extra) + (f" ({note})" if note else "")


def Int(low: Optional[int] = None, high: Optional[int] = None, nullable: bool = False, also: tuple = (),
        note: str = "") -> Any:
    """An integer in [low, high]; `also`: other accepted values (e.g. -1 for "no limit")."""
    bounds = _bounds(low, high, False, False)
    allowed = _or(f"an integer{' ' + bounds if bounds else ''}", nullable, also, note)
    return rule(allowed, lambda v: (nullable and v is None) or any(type(v) is type(a) and v == a for a in also)
                or (is_int(v) and _within(v, low, high, False, False)))


def Float(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
          high_open: bool = False, nullable: bool = False, note: str = "") -> Any:
    """A finite number (int or float) in the given interval, returned as a float."""
    bounds = _bounds(low, high, low_open, high_open)
    allowed = _or(f"a finite number{' ' + bounds if bounds else ''}", nullable, (), note)
    return rule(allowed, lambda v: (nullable and v is None) or (is_number(v) and _within(v, low, high, low_open, high_open)),
                lambda v: None if v is None else float(v))


def Choice(*options: Any, nullable: bool = False, note: str = "") -> Any:
    """One of `options` (compared exactly: True is not 1, "1" is not 1)."""
    allowed = _or("one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options),
                  nullable, (), note)
    return rule(allowed, lambda v: (nullable and v is None)
                or any(type(v) is type(o) and v == o for o in options))


def Bool(nullable: bool = False, also: tuple = ()) -> Any:
    allowed = _or("true or false", nullable, also)
    return rule(allowed, lambda v: isinstance(v, bool) or (nullable and v is None) or (isinstance(v, str) and v in also))


def Text(nullable: bool = False, pattern: Optional[str] = None, what: str = "a non-empty text", note: str = "") -> Any:
    """A non-empty string (optionally matching `pattern` in full)."""
    allowed = _or(what, nullable, (), note)
    return rule(allowed, lambda v: (nullable and v is None) or (
        isinstance(v, str) and v.strip() != "" and (pattern is None or re.fullmatch(pattern, v) is not None)))


def Regex(nullable: bool = False) -> Any:
    """A string that compiles as a Python regular expression."""
    return rule(_or("a valid regular expression", nullable),
                lambda v: (nullable and v is None) or (isinstance(v, str) and _compiles(v)))


def _compiles(text: str) -> bool:
    try:
        re.compile(text)
        return bool(text)
    except re.error:
        return False


def TextList(nullable: bool = False, empty: bool = False, what: str = "a list of non-empty texts") -> Any:
    allowed = _or(what + ("" if empty else " (at least one)"), nullable)
    return rule(allowed, lambda v: (nullable and v is None) or (
        isinstance(v, (list, tuple)) and (empty or len(v) > 0) and all(isinstance(t, str) and t.strip() for t in v)),
        lambda v: None if v is None else list(v))


def Mapping(nullable: bool = True, what: str = "a mapping {name: value}") -> Any:
    return rule(_or(what, nullable), lambda v: (nullable and v is None) or isinstance(v, dict))


Anything = Annotated[Any, PlainValidator(lambda v: v)]
