"""Kernel outputs: their declarations, and the checks a kernel's results pass.

:class:`Output` declares one output per sample (its core dims, shape, dtype and
fill value); :func:`check_value` and :func:`as_dict` check what a kernel returned
against those declarations, casting a value to its declared dtype when that is safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import OutputSpecError

__all__ = ["Output", "as_dict", "check_value", "default_fill"]


def default_fill(dtype: np.dtype) -> Any:
    """The fill value an output gets where no result exists (pending or failed).

    NaN for floats and complex, the most negative value for signed integers, the
    largest value for unsigned integers, False for booleans.
    """
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind == "i":
        return int(np.iinfo(dtype).min)
    if dtype.kind == "u":
        return int(np.iinfo(dtype).max)
    if dtype.kind == "b":
        return False
    raise OutputSpecError(f"Output: dtype {dtype} is not supported; use a float, int or bool dtype")


@dataclass(frozen=True)
class Output:
    """Declaration of one kernel output, per sample.

    Parameters
    ----------
    dims
        Names of the output's own (core) dims, e.g. ``("time",)``; ``()`` for a scalar.
    shape
        Sizes of those dims, e.g. ``(71,)``.
    dtype
        A numpy float, int or bool dtype.
    fill
        Value stored where there is no result (pending or failed samples). Defaults
        to NaN for floats, the most negative value for signed ints, the largest for
        unsigned ints, False for bools.
    coords
        Optional coordinate values for the core dims, e.g. ``{"time": gate_times}``.
    attrs
        Optional attributes stored on the variable (``units``, ``long_name``...).

    Examples
    --------
    >>> Output(dims=("time",), shape=(71,)).fill
    nan
    """

    dims: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: Any = "float64"
    fill: Any = None
    coords: Mapping[str, Any] | None = field(default=None, compare=False)
    attrs: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        dims = (self.dims,) if isinstance(self.dims, str) else tuple(self.dims)
        shape = (self.shape,) if isinstance(self.shape, int) else tuple(self.shape)
        if len(dims) != len(shape):
            raise OutputSpecError(f"Output: dims={dims!r} and shape={shape!r} must have the same length")
        for s in shape:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
                raise OutputSpecError(f"Output: shape={shape!r} must hold positive integers")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as e:
            raise OutputSpecError(f"Output: dtype={self.dtype!r} is not a numpy dtype") from e
        fill = default_fill(dtype) if self.fill is None else self.fill
        if dtype.kind in "iub" and isinstance(fill, float) and not float(fill).is_integer():
            raise OutputSpecError(f"Output: fill={fill!r} is not a valid {dtype} value")
        coords = {}
        for d, values in (self.coords or {}).items():
            if d not in dims:
                raise OutputSpecError(f"Output: coords for {d!r}, which is not one of dims={dims!r}")
            arr = np.asarray(values)
            if arr.shape != (shape[dims.index(d)],):
                raise OutputSpecError(
                    f"Output: coords[{d!r}] has shape {arr.shape}, expected ({shape[dims.index(d)]},)"
                )
            coords[d] = arr
        object.__setattr__(self, "dims", tuple(str(d) for d in dims))
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "fill", fill)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "attrs", dict(self.attrs or {}))

    def spec(self) -> dict[str, Any]:
        """The declaration as JSON-ready values (``fill`` None for NaN)."""
        fill = self.fill
        return {
            "dims": list(self.dims),
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "fill": None if isinstance(fill, float) and math.isnan(fill) else np.asarray(fill).item(),
        }


def check_value(
    outputs: Mapping[str, Output],
    name: str,
    value: Any,
    where: str,
    batch_shape: tuple[int, ...] = (),
) -> np.ndarray:
    """``value`` as an array of output ``name``'s declared shape and dtype.

    Raises :class:`~daskbatch.errors.OutputSpecError` (its text starting with
    ``where``) when the shape is not ``batch_shape`` + the declared shape, or when the
    dtype differs and cannot be cast to the declared one (``same_kind`` casting).
    """
    out = outputs[name]
    arr = np.asarray(value)
    expected = batch_shape + out.shape
    if arr.shape != expected:
        raise OutputSpecError(
            f"{where}: output {name!r} has shape {arr.shape}, expected {expected} "
            f"(declared Output(dims={out.dims}, shape={out.shape}))"
        )
    if arr.dtype != out.dtype:
        if not np.can_cast(arr.dtype, out.dtype, casting="same_kind"):
            raise OutputSpecError(
                f"{where}: output {name!r} has dtype {arr.dtype}, expected {out.dtype}; "
                f"declare Output(dtype={str(arr.dtype)!r}) or convert the value in the kernel"
            )
        arr = arr.astype(out.dtype)
    return arr


def as_dict(outputs: Mapping[str, Output], result: Any, where: str) -> Mapping[str, Any]:
    """A kernel's result as ``{output name: value}``.

    A mapping must have exactly the declared output names; any other value is the
    value of the only output. Raises :class:`~daskbatch.errors.OutputSpecError`
    otherwise.
    """
    if isinstance(result, Mapping):
        keys = set(result)
        expected = set(outputs)
        if keys != expected:
            raise OutputSpecError(
                f"{where}: kernel returned outputs {sorted(keys)}, expected {sorted(expected)}"
            )
        return result
    if len(outputs) == 1:
        return {next(iter(outputs)): result}
    raise OutputSpecError(
        f"{where}: kernel returned a {type(result).__name__}; with several outputs it must "
        f"return a dict with keys {sorted(outputs)}"
    )
