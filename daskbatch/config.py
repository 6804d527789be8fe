"""daskbatch's settings, read from dask's configuration under the ``daskbatch`` key.

The defaults ship in ``daskbatch.yaml`` beside this module and are added to dask's
defaults when this module is imported, the way distributed adds its own: a dask
config file, a ``DASK_DASKBATCH__...`` environment variable or
:func:`dask.config.set` changes them. :func:`get` reads a value when it is called,
so a ``with dask.config.set(...)`` block acts on what runs inside it.

Examples
--------
>>> import dask
>>> get("probe.samples")
16
>>> with dask.config.set({"daskbatch.probe.samples": 32}):
...     get("probe.samples")
32
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, overload

import dask.config
import yaml

from .errors import ConfigError

__all__ = ["DEFAULTS", "ConfigError", "get"]

with open(Path(__file__).with_name("daskbatch.yaml"), encoding="utf-8") as _f:
    #: the shipped defaults, as read from ``daskbatch.yaml``
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


IntKey = Literal["malloc-arenas", "probe.samples", "probe.vector-samples", "shown-errors", "table.scan-up-to"]
FloatKey = Literal[
    "progress.interval",
    "probe.quick-seconds",
    "probe.seconds",
    "publish-interval",
    "auto.start-seconds",
    "auto.fork-start-seconds",
    "auto.fork-up-to-seconds",
    "auto.driver-seconds-per-block",
    "connect-timeout",
    "lease.seconds",
]
BoolKey = Literal["verbose", "cli"]

#: every key :func:`get` reads (below ``daskbatch.``) and the type of its value
TYPES: dict[str, type] = {
    "progress.interval": float,
    "malloc-arenas": int,
    "probe.samples": int,
    "probe.vector-samples": int,
    "probe.quick-seconds": float,
    "probe.seconds": float,
    "publish-interval": float,
    "auto.start-seconds": float,
    "auto.fork-start-seconds": float,
    "auto.fork-up-to-seconds": float,
    "auto.driver-seconds-per-block": float,
    "connect-timeout": float,
    "lease.seconds": float,
    "shown-errors": int,
    "table.scan-up-to": int,
    "verbose": bool,
    "cli": bool,
}

#: the least value of each numeric setting, and whether that value itself is allowed
MINIMUM: dict[str, tuple[float, bool]] = {
    "progress.interval": (0, True),  # 0: a line at every update
    "malloc-arenas": (0, True),
    "probe.samples": (1, True),
    "probe.vector-samples": (1, True),
    "probe.quick-seconds": (0, True),
    "probe.seconds": (0, True),
    "publish-interval": (0, False),
    "auto.start-seconds": (0, True),
    "auto.fork-start-seconds": (0, True),
    "auto.fork-up-to-seconds": (0, True),
    "auto.driver-seconds-per-block": (0, True),
    "connect-timeout": (0, False),
    "shown-errors": (0, True),
    "table.scan-up-to": (0, True),
}

#: environment variables kept from before these settings, read when :func:`get` is
#: called; one counts only while dask's configuration holds the shipped default
LEGACY_ENV = {"progress.interval": "DASKBATCH_PROGRESS_INTERVAL"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


@overload
def get(key: IntKey) -> int: ...
@overload
def get(key: FloatKey) -> float: ...
@overload
def get(key: BoolKey) -> bool: ...
def get(key: str) -> int | float | bool:
    """The current value of the setting ``daskbatch.<key>``, as its type.

    ``key`` may be written with or without the ``daskbatch.`` prefix. An unknown key
    raises :class:`KeyError` naming the known ones; a value that is not of the
    key's type (an integer, a number, or true/false) raises :class:`ConfigError`
    naming the key and the value.
    """
    short = key.removeprefix("daskbatch.").replace("_", "-")
    kind = TYPES.get(short)
    if kind is None:
        raise KeyError(f"no daskbatch setting {key!r}; the settings are {sorted(TYPES)}")
    default = _default(short)
    value = dask.config.get(f"daskbatch.{short}", default=default)
    legacy = LEGACY_ENV.get(short)
    if legacy and os.environ.get(legacy) and value == default:
        value = os.environ[legacy]
        where = f"{legacy}={value!r}"
    else:
        where = f"daskbatch.{short}={value!r}"
    source = (
        "it is read from dask's configuration (dask.config.set, a dask config file, or "
        f"DASK_DASKBATCH__{short.replace('.', '__').replace('-', '_').upper()})"
    )
    try:
        got = _convert(value, kind)
    except (TypeError, ValueError):
        raise ConfigError(f"the setting {where} is not {_TYPE_NAMES[kind]}; {source}") from None
    if short in MINIMUM and kind is not bool:
        least, allowed = MINIMUM[short]
        if not math.isfinite(got) or got < least or (got == least and not allowed):
            bound = f">= {least:g}" if allowed else f"> {least:g}"
            default_text = f"{default:g}" if isinstance(default, int | float) else repr(default)
            raise ConfigError(
                f"the setting {where} must be a finite number {bound} (the default is "
                f"{default_text}); {source}"
            )
    return got


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


def _default(short: str) -> Any:
    node: Any = DEFAULTS["daskbatch"]
    for part in short.split("."):
        node = node[part]
    return node


def _convert(value: Any, kind: type) -> int | float | bool:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(value)
    if isinstance(value, bool):
        raise TypeError(value)
    if kind is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    return float(value)
