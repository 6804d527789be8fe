"""The constants of a run as it passed them, recorded in the store with their types.

A store's ``constants`` are JSON (what the fingerprint compares): a numpy array is a
list there, a tuple a list, an ``np.float32`` a float, ``{1: ...}`` ``{"1": ...}``.
``constants_typed`` keeps what ``daskbatch resume`` and ``validate`` give the kernel
again, so that a resumed block computes with the inputs the others had.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["recorded_constants", "typed_constants", "untyped_constants"]


def typed_constants(value: Any) -> Any:
    """``value`` (constants :func:`jsonable` accepts) as JSON that :func:`untyped_constants`
    turns back into the same values and types: numpy arrays (dtype, shape) and
    scalars, tuples, and dict keys that are not strings. What ``daskbatch resume`` and
    ``validate`` pass to the kernel, which :func:`jsonable`'s record (lists, string
    keys) would not give back as they were passed.
    """
    if isinstance(value, np.ndarray):
        return {"ndarray": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.generic):
        return {"scalar": value.dtype.str, "value": value.item()}
    if isinstance(value, tuple):
        return {"tuple": [typed_constants(v) for v in value]}
    if isinstance(value, list):
        return {"list": [typed_constants(v) for v in value]}
    if isinstance(value, Mapping):
        return {"dict": [[typed_constants(k), typed_constants(v)] for k, v in value.items()]}
    return value  # None, bool, int, float, str


def untyped_constants(value: Any) -> Any:
    """The values :func:`typed_constants` recorded."""
    if not isinstance(value, dict):
        return value
    if "ndarray" in value:
        return np.array(value["data"], dtype=np.dtype(value["ndarray"])).reshape(value["shape"])
    if "scalar" in value:
        return np.dtype(value["scalar"]).type(value["value"])
    if "tuple" in value:
        return tuple(untyped_constants(v) for v in value["tuple"])
    if "list" in value:
        return [untyped_constants(v) for v in value["list"]]
    return {untyped_constants(k): untyped_constants(v) for k, v in value["dict"]}


def recorded_constants(info: Mapping[str, Any]) -> dict[str, Any]:
    """The constants a store's run passed to its kernel, as they were passed (a store made
    before they were recorded with their types: as its JSON record has them)."""
    typed = info.get("constants_typed")
    if isinstance(typed, dict) and "dict" in typed:
        return dict(untyped_constants(typed))
    return dict(info.get("constants") or {})
