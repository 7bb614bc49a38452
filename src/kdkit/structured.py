"""Typed dataclasses from plain dicts: unknown keys, wrong types and bad choices fail with a clear line.

``from_dict(cls, data, where)`` walks a dataclass's fields (nested dataclasses, ``X | None``, ``list[X]``,
``dict[str, X]``, ``Literal[...]``, ``int``/``float``/``str``/``bool``) and raises ``KdkitError`` naming the
dotted key path, e.g. ``config key 'train.lrr' is unknown (did you mean 'lr'?)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from kdkit.errors import KdkitError, did_you_mean

T = TypeVar("T")


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _type_name(tp: Any) -> str:
    """How an error names a type: 'a list', 'an integer', 'one of a, b'."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if origin is dict or tp is dict:
        return "a mapping"
    if origin in _NAMES or tp in _NAMES:
        return _NAMES[origin or tp]
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (converting int -> float where harmless); raise on mismatch."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise KdkitError(f"config key '{where}' must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except KdkitError as err:
                errors.append(str(err))
        if len(errors) == 1:  # `X | None`: X's own, precise error (e.g. the nested key that is wrong)
            raise KdkitError(errors[0])
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise KdkitError(f"config key '{where}' must be {names}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        if value not in choices:
            raise KdkitError(
                f"config key '{where}' must be one of {', '.join(map(str, choices))}, got {value!r}"
                f"{did_you_mean(str(value), map(str, choices))}"
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise KdkitError(f"config key '{where}' must be a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KdkitError(f"config key '{where}' must be a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if value is None:
        raise KdkitError(f"config key '{where}' must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise KdkitError(f"config key '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise KdkitError(f"config key '{where}' must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise KdkitError(f"config key '{where}' must be a number, got {value!r}")
        if not math.isfinite(number):  # nan slips through every range check (nan <= 0 is False)
            raise KdkitError(f"config key '{where}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise KdkitError(f"config key '{where}' must be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), rejecting unknown keys with a hint."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KdkitError(f"config key '{where or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise KdkitError(
                f"config key '{path}' is unknown{did_you_mean(str(key), fields)}; "
                f"known keys here: {', '.join(fields)}"
            )
        kwargs[key] = coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except KdkitError:
        raise
    except (TypeError, ValueError) as err:
        raise KdkitError(f"config section '{where or '<root>'}': {err}") from None


def to_dict(obj: Any) -> Any:
    """Plain-data copy of a (nested) dataclass, for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
