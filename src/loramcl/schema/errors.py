"""One line from a pydantic ValidationError: the first problem, with the dotted key the user typed.

- a broken leaf rule (`loramcl.schema.fields`): `<key> must be <allowed>, got <value>`;
- an unknown key: `<group> has no key <name> (known: ...)`, with the closest known name when one is near;
- a relation between values (a model validator): its own message, whose `@name` marks are replaced by
  the full key of `name` in the model that raised it.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ValidationError

from loramcl.errors import ConfigError
from loramcl.schema.fields import RULE


def show(value: Any) -> str:
    """How a value given by the user is shown: texts quoted, numbers as Python prints them."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dotted(prefix: str, loc: Iterable[Any]) -> str:
    parts = [prefix] if prefix else []
    for part in loc:
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[")


def known_keys(model: Optional[type], loc: tuple) -> list[str]:
    """The field names of the model found at `loc` (a nested model), for an unknown-key message."""
    def as_model(annotation: Any) -> Optional[type]:  # Optional[Model] / Model | None -> Model
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)

    model = as_model(model)
    for part in loc:
        if model is None:
            return []
        info = model.model_fields.get(str(part))
        model = as_model(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def one_line(err: ValidationError, prefix: str = "", model: Optional[type] = None) -> str:
    """The first problem of `err` as one line (plus how many more there are)."""
    problems = err.errors(include_url=False)
    first = problems[0]
    loc = tuple(first["loc"])
    key = dotted(prefix, loc)
    kind = first["type"]
    if kind == RULE:
        line = f"{key} must be {first['msg']}, got {show(first['input'])}"
    elif kind == "extra_forbidden":
        parent, name = dotted(prefix, loc[:-1]), str(loc[-1])
        known = known_keys(model, loc[:-1])
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else (f" (known: {', '.join(known)})" if known else "")
        line = f"{parent or 'the config'} has no key {name!r}{hint}: remove it" + (
            " or fix its name" if known else "")
    elif kind == "missing":
        line = f"{key} is missing"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        line = f"{key or 'the config'} must be a group of keys, got {show(first['input'])}"
    else:
        message = re.sub(r"^(Value|Assertion) error, ", "", first["msg"])
        base = dotted(prefix, loc)
        message = re.sub(r"@([A-Za-z_][\w.]*)", lambda m: f"{base}.{m.group(1)}" if base else m.group(1), message)
        line = message if kind in ("value_error", "assertion_error") else f"{key}: {message}"
    if len(problems) > 1:
        line += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return line


def validate(model: type, values: Any, prefix: str = "") -> Any:
    """`model.model_validate(values)`, or ConfigError with one line."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(one_line(err, prefix, model)) from None
