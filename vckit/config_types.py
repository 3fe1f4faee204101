"""How a config dataclass is read: the types and ranges of its settings, and one strict ``from_dict``.

Every ``int`` and ``float`` field of a config dataclass is annotated with a
:class:`Range` through an alias (``batch_size: Size``); text settings with a
fixed set of values carry a :class:`OneOf`. :func:`from_dict` checks types and
ranges, so a bad value from a YAML file, a ``--set`` override or a checkpoint's
``config.json`` is one :class:`~vckit.errors.ConfigError` naming the key and
what it may be. :func:`check_ranges` checks a dataclass built in Python.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from vckit.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The numbers a setting may take, checked by :func:`from_dict` (``None``: no bound).

    Every ``int`` and ``float`` field of a config dataclass carries one, through
    the aliases below (``batch_size: Size``), so a bad value from a YAML file,
    a ``--set`` override or a checkpoint's config is one :class:`ConfigError`
    that names the key and the allowed range.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False
    odd: bool = False

    def admits(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return not self.odd or v % 2 == 1

    def describe(self) -> str:
        """The allowed range in words: ``>= 1``, ``in [0, 1)``, ``an odd number >= 1``, ``any finite number``."""
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            text = f"in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        elif lo is not None:
            text = f"{'>' if self.lo_open else '>='} {lo:g}"
        elif hi is not None:
            text = f"{'<' if self.hi_open else '<='} {hi:g}"
        else:
            text = "any finite number"
        return f"an odd number {text}" if self.odd else text


@dataclass(frozen=True)
class OneOf:
    """The values a text setting may take."""

    values: tuple[Any, ...]

    def describe(self) -> str:
        return ", ".join("null" if v is None else str(v) for v in self.values)


Size = Annotated[int, Range(1)]  # a count or width: at least 1
Count = Annotated[int, Range(0)]  # steps, seeds, optional counts: 0 or more
Kernel = Annotated[int, Range(1, odd=True)]  # a convolution kernel that keeps the length: odd
Amount = Annotated[float, Range(0)]  # a loss weight, a budget, a level: 0 (off) or more
Positive = Annotated[float, Range(0, lo_open=True)]  # a rate or scale: more than 0
Probability = Annotated[float, Range(0, 1)]
Fraction = Annotated[float, Range(0, 1, hi_open=True)]  # a decay or momentum: below 1
Decibels = Annotated[float, Range(hi=0)]  # a level below full scale
Real = Annotated[float, Range()]  # any finite number (a mean, a log-domain offset)
Precision = Annotated[str, OneOf(("auto", "bf16", "fp16", "none"))]  # auto: bf16 on CUDA, full precision elsewhere


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        value = _coerce(args[0], value, where)
        for rule in tp.__metadata__:
            if isinstance(rule, Range) and not rule.admits(value):
                raise ConfigError(f"{where} must be {rule.describe()}, got {value!r}")
            if isinstance(rule, OneOf) and value not in rule.values:
                raise ConfigError(f"{where} must be one of {rule.describe()}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: Any, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``; unknown keys, wrong types and values out of range are errors."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in d if k not in names), key=str)  # YAML keys may be numbers or null too
    if unknown:
        path = f"{where}." if where else ""
        key = unknown[0] if isinstance(unknown[0], str) and unknown[0].isidentifier() else repr(unknown[0])
        raise ConfigError(f"unknown config key {path}{key} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def check_ranges(obj: Any, where: str = "") -> None:
    """Check the fields of config dataclass ``obj`` (built directly, not by :func:`from_dict`) against their ranges."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key)
        else:
            _coerce(hints[f.name], list(value) if isinstance(value, tuple) else value, key)
