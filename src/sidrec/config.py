"""Plain dataclass configs, loaded from YAML and overridden with `key=value`.

Each component owns a frozen dataclass (`PrepareConfig`, `RQVAEConfig`, `SASRecConfig`,
...). This module only converts between those dataclasses and plain dicts, checking every
key against the fields: an unknown key or a value of the wrong type is a `SidrecError`
that names the key and lists the valid ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sidrec.errors import SidrecError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a (nested) dataclass config."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from `data`; unknown keys and mistyped values are errors."""
    if not isinstance(data, dict):
        raise SidrecError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SidrecError(
            f"{where}: unknown setting {unknown[0]!r} for {cls.__name__}; "
            f"valid settings: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SidrecError(f"{path}: config file not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SidrecError(f"{path}{loc}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SidrecError(f"{path}: expected a mapping of settings at the top level")
    return data


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["lr=1e-3", "model.n_layers=2"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SidrecError(f"override {pair!r}: expected key=value, e.g. lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise SidrecError(
                f"override {pair!r}: the value is not valid YAML; quote it, e.g. {key}='...'"
            ) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SidrecError(f"override {pair!r}: {part!r} was already set to a value")
        if isinstance(node.get(parts[-1]), dict):
            raise SidrecError(f"override {pair!r}: {key!r} already has nested settings")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def replace(cfg: T, overrides: dict[str, Any], where: str = "override") -> T:
    """A copy of `cfg` with `overrides` (a nested dict) applied and type-checked."""
    return from_dict(type(cfg), merge(to_dict(cfg), overrides), where)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SidrecError as e:
                errors.append(str(e))
        raise SidrecError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise SidrecError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):  # `models=pop,tiger` on the command line
            value = [yaml.safe_load(v) for v in value.split(",")]
        elif isinstance(value, int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise SidrecError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SidrecError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SidrecError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
        raise SidrecError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise SidrecError(f"{where}: expected a string, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise SidrecError(f"{where}: expected a mapping, got {value!r}")
    return value


def check_ranges(cfg: Any, where: str) -> None:
    """Generic range checks for a model's (or inference) config, so that `n_layers=-1` or
    `dropout=2` is an error, not a model with no layers: no number is negative or
    non-finite, a count or size (int) whose default is positive stays positive (a default
    of 0 means "off", so 0 stays allowed there), and dropout rates lie in [0, 1)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value) or value < 0:
            raise SidrecError(f"{where}.{f.name}={value}: must be a finite number >= 0")
        if "dropout" in f.name and value >= 1:
            raise SidrecError(f"{where}.{f.name}={value}: a dropout rate must be in [0, 1)")
        positive_default = isinstance(f.default, int) and f.default > 0
        if isinstance(value, int) and positive_default and value == 0:
            raise SidrecError(f"{where}.{f.name}=0: must be > 0")
