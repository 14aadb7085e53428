"""Configuration: frozen dataclasses, the one ``key=value`` parser, dotted overrides (STYLE 6).

A run's configuration is a tree of frozen dataclasses, e.g. an experiment's
``{model: <formulation Config>, train: TrainConfig, eval: EvalConfig, ...}``. ``--set`` names a
leaf by its dotted path (``train.lr=1e-3``, ``model.channels=16,32``, ``eval.n_samples=100``);
a bare key (``lr=1e-3``) is accepted where exactly one leaf of the tree has that name. Values are
parsed by the field's type. ``config_from_dict`` rebuilds a tree from its JSON (config.json).

``check(cond, msg)`` is the one-line validation used in ``__post_init__`` of the configs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable

from zoo import ZooError


class UsageError(ZooError):
    """Bad command-line input: unknown name, bad option or value (exit code 2)."""


class ConfigError(UsageError, ValueError):
    """A configuration value out of its valid range (a usage error, and a ValueError for callers)."""


def check(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless `cond`: one line that states the valid range or choices."""
    if not cond:
        raise ConfigError(msg)


def finite_positive(value: float, name: str) -> None:
    """check that `value` is a finite number > 0."""
    check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
          f"{name} must be a finite number > 0, got {value}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def in_range(value: Any, name: str, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False, hi_open: bool = False) -> None:
    """check that `value` is a finite number in the interval (lo, hi), each end open or closed, None: unbounded."""
    ok = _number(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    left = "(-inf" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    check(ok, f"{name} must be a finite number in {left}, {right}, got {value}")


def at_least(value: Any, name: str, lo: int = 1, optional: bool = False) -> None:
    """check that `value` is an integer >= lo (or None when `optional`)."""
    if optional and value is None:
        return
    check(isinstance(value, int) and not isinstance(value, bool) and value >= lo,
          f"{name} must be an integer >= {lo}{' or None' if optional else ''}, got {value}")


def one_of(value: Any, name: str, choices: Iterable[Any]) -> None:
    """check that `value` is one of `choices`."""
    choices = tuple(choices)
    check(value in choices, f"unknown {name} {value!r}; choose from {', '.join(map(str, choices))}")


def widths(value: Any, name: str = "channels") -> None:
    """check a non-empty tuple of integer widths >= 1."""
    check(isinstance(value, (tuple, list)) and len(value) >= 1
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value),
          f"{name} must be one or more integers >= 1 (e.g. {name}=32,64), got {value!r}")


# --------------------------------------------------------------------------- untyped key=value


def parse_scalar(text: str) -> Any:
    """A value without a declared type: bool, None, int, float, else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def split_pair(pair: str, option: str = "--set") -> tuple[str, str]:
    """'key=value' -> (key, value); a missing '=' is a UsageError."""
    if "=" not in pair:
        raise UsageError(f"{option} {pair!r}: expected key=value")
    key, value = pair.split("=", 1)
    return key.strip().replace("-", "_"), value.strip()


def parse_kwargs(pairs: Iterable[str], option: str = "--kw") -> dict[str, Any]:
    """``key=value`` pairs -> kwargs, values read by `parse_scalar` (sampler keywords and the like)."""
    return {k: parse_scalar(v) for k, v in (split_pair(p, option) for p in pairs)}


# --------------------------------------------------------------------------- typed values


def parse_value(text: str, tp: Any, key: str) -> Any:
    """`text` parsed as type `tp` (int, float, str, bool, X | None, tuple[X, ...])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0], key)
    if origin is tuple:
        items = [v for v in text.strip("()[] ").split(",") if v.strip()]
        elem = args[0] if args else str
        return tuple(parse_value(v.strip(), elem, key) for v in items)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--set {key}={text}: expected true or false")
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected {tp.__name__}") from None
    if tp is Any:
        return parse_scalar(text)
    raise UsageError(f"--set {key}: cannot parse fields of type {tp}")


# --------------------------------------------------------------------------- trees of dataclasses


def _hints(cfg: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(cfg))


def leaves(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every non-dataclass field of a config tree."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += leaves(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _resolve(cfg: Any, key: str) -> list[str]:
    """The path of `key` in the tree: itself if dotted, else every leaf whose last name is `key`."""
    paths = leaves(cfg)
    if key in paths:
        return key.split(".")
    if "." not in key:
        found = [p for p in paths if p.rsplit(".", 1)[-1] == key]
        if len(found) == 1:
            return found[0].split(".")
        if len(found) > 1:
            raise UsageError(f"--set {key}: ambiguous; name one of {', '.join(found)}")
    raise UsageError(f"--set {key}: no such option; valid: {', '.join(sorted(paths))}")


def _rebuild(cfg: Any, changes: dict[str, Any]) -> Any:
    """`cfg` with the nested `changes` applied, each dataclass built (and validated) once."""
    fields = {k: _rebuild(getattr(cfg, k), v) if isinstance(v, dict) else v for k, v in changes.items()}
    return dataclasses.replace(cfg, **fields)


def apply_overrides(cfg: Any, pairs: Iterable[str]) -> Any:
    """Return `cfg` with each ``key=value`` (dotted or unambiguous bare key) applied, typed by its field.

    Every value is parsed first, then each config is rebuilt once, so its ``__post_init__`` checks
    the combination (``zero_terminal_snr=true`` with ``param=v`` and ``loss=v``), not each intermediate state.
    """
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, value = split_pair(pair)
        path = _resolve(cfg, key)
        node, owner = changes, cfg
        for name in path[:-1]:
            node, owner = node.setdefault(name, {}), getattr(owner, name)
        node[path[-1]] = parse_value(value, _hints(owner)[path[-1]], key)
    return _rebuild(cfg, changes) if changes else cfg


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def config_from_dict(cfg: Any, values: dict[str, Any]) -> Any:
    """Rebuild a config tree from config.json's dict (lists back to tuples), starting from `cfg`."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(values) - names
    if unknown:
        raise UsageError(f"config has unknown keys {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    changes = {}
    for k, v in values.items():
        current = getattr(cfg, k)
        if dataclasses.is_dataclass(current) and isinstance(v, dict):
            changes[k] = config_from_dict(current, v)
        else:
            changes[k] = _from_json(v)
    return dataclasses.replace(cfg, **changes)
