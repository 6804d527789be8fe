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

from .errors import DaskbatchError, OutputSpecError

__all__ = [
    "RESERVED_NAMES",
    "RESERVED_TEXT",
    "Output",
    "OutputValueError",
    "as_dict",
    "cast_value",
    "check_name",
    "check_value",
    "default_fill",
    "unfit_message",
]


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


#: Names a store uses itself: no output, output dim or output coordinate may take them
#: (``sample`` is the batch dim of a Monte Carlo design or a table).
RESERVED_NAMES = ("status", "sample", "_daskbatch")
RESERVED_TEXT = ", ".join(RESERVED_NAMES)


def check_name(name: Any, what: str) -> str:
    """``name`` if it can name an output, or an output's dim or coordinate, in a store.

    Names are Python identifiers (letters, digits and ``_``, not starting with a
    digit: no ``/``, ``.`` or space, which Zarr reads as paths) and none of
    :data:`RESERVED_NAMES`. Raises :class:`~daskbatch.errors.OutputSpecError`, one line
    starting with ``what``, otherwise.

    Examples
    --------
    >>> check_name("time", "dim")
    'time'
    """
    rule = "names must be identifiers (letters, digits and _, not starting with a digit)"
    problem = name_problem(name)
    if problem == "invalid":
        raise OutputSpecError(f"{what} {name!r} is not a valid name: {rule}, e.g. 'time'")
    if problem == "reserved":
        raise OutputSpecError(
            f"{what} {name!r} is reserved by daskbatch ({RESERVED_TEXT}): {rule} "
            f"and not reserved, e.g. '{name}_'"
        )
    return name


def name_problem(name: Any) -> str | None:
    """What keeps ``name`` from naming an output, a core dim or a coordinate:
    ``"invalid"`` (not an identifier), ``"reserved"`` (one of :data:`RESERVED_NAMES`),
    or None. Each caller words its own error.

    Examples
    --------
    >>> name_problem("time"), name_problem("a/b"), name_problem("status")
    (None, 'invalid', 'reserved')
    """
    if not isinstance(name, str) or not name.isidentifier():
        return "invalid"
    return "reserved" if name in RESERVED_NAMES else None


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
        for d in dims:
            check_name(d, f"Output(dims={dims!r}): dim")
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


class OutputValueError(DaskbatchError):
    """A value a kernel returned for one sample does not fit its output's dtype.

    That sample's failure (status ``failed``), never the run's: the other samples of
    the block keep their values.
    """


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
    dtype differs and cannot be cast to the declared one (``same_kind`` casting), and
    :class:`OutputValueError` when a value does not survive the cast (see
    :func:`cast_value`).
    """
    arr, bad = cast_value(outputs, name, value, where, batch_shape)
    if bad is not None:  # the first sample's value, without its batch dims
        out = outputs[name]
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise OutputValueError(
            unfit_message(name, np.asarray(value).reshape((-1, *out.shape))[first], out.dtype)
        )
    return arr


def cast_value(
    outputs: Mapping[str, Output],
    name: str,
    value: Any,
    where: str,
    batch_shape: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """``value`` cast to output ``name``'s declared dtype, and where it did not fit.

    Returns the cast array and ``None``, or, when some values do not survive the cast,
    the array (wrong where they did not) and a boolean array over ``batch_shape``: the
    samples with such a value. A value does not survive when it is an integer out of
    the declared integer dtype's range, or a finite number that becomes infinite in a
    smaller float dtype; inf and NaN stay as they are. A float value for an integer
    output (and any cast that is not ``same_kind``) raises
    :class:`~daskbatch.errors.OutputSpecError`: that is the kernel's type, the same for
    every sample. Only a cast that is not ``safe`` costs a check (a min/max compare,
    or an ``isfinite`` of the cast values).

    Examples
    --------
    >>> arr, bad = cast_value({"y": Output(dtype="int8")}, "y", [1, 300, -3], "block", (3,))
    >>> arr[[0, 2]].tolist(), bad.tolist()
    ([1, -3], [False, True, False])
    """
    out = outputs[name]
    arr = np.asarray(value)
    expected = batch_shape + out.shape
    if arr.shape != expected:
        raise OutputSpecError(
            f"{where}: output {name!r} has shape {arr.shape}, expected {expected} "
            f"(declared Output(dims={out.dims}, shape={out.shape}))"
        )
    if arr.dtype == out.dtype:
        return arr, None
    bad = None
    if arr.dtype == object and out.dtype.kind in "iu":  # Python ints too large for int64
        arr, bad = _python_ints(arr, out.dtype)
    integers = arr.dtype.kind in "iu" and out.dtype.kind in "iu"  # signed <-> unsigned: by value
    if not integers and not np.can_cast(arr.dtype, out.dtype, casting="same_kind"):
        raise OutputSpecError(
            f"{where}: output {name!r} has dtype {arr.dtype}, expected {out.dtype}; "
            f"declare Output(dtype={str(arr.dtype)!r}) or convert the value in the kernel"
        )
    if bad is None:
        bad = _out_of_range(arr, out.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(out.dtype)
    if out.dtype.kind in "fc" and not np.can_cast(arr.dtype, out.dtype, casting="safe"):
        finite = np.isfinite(cast)
        if not finite.all():
            overflow = ~finite & np.isfinite(arr)
            bad = overflow if overflow.any() else None
    if bad is None:
        return cast, None
    core = tuple(range(len(batch_shape), bad.ndim))
    return cast, bad.any(axis=core) if core else bad


def _out_of_range(arr: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """Where integers in ``arr`` fall outside integer ``dtype`` (None: nowhere, or not
    an integer cast)."""
    if arr.dtype.kind not in "iu" or dtype.kind not in "iu" or np.can_cast(arr.dtype, dtype, "safe"):
        return None
    if arr.size == 0:
        return None
    info = np.iinfo(dtype)
    lo, hi = arr.min(), arr.max()
    if lo >= info.min and hi <= info.max:
        return None
    return (arr < info.min) | (arr > info.max)


def _python_ints(arr: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """An object array of Python ints (too large for int64) as an integer array, with
    0 where a value is outside ``dtype`` and a mask of those; any other object array
    is left as it is (and refused as a dtype)."""
    items = arr.ravel().tolist()
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return arr, None
    info = np.iinfo(dtype)
    bad = np.array([not info.min <= x <= info.max for x in items], dtype=bool).reshape(arr.shape)
    ints = np.array([0 if b else x for x, b in zip(items, bad.ravel().tolist(), strict=True)], dtype=dtype)
    return ints.reshape(arr.shape), (bad if bad.any() else None)


def unfit_message(name: str, value: Any, dtype: np.dtype) -> str:
    """The one line of a sample whose output ``name`` has a value (in ``value``, that
    sample's value of the output) that does not fit ``dtype``: the first such value,
    its index when the output has core dims, and the dtype's range.

    Examples
    --------
    >>> unfit_message("y", 300, np.dtype("int8"))
    "output 'y': value 300 does not fit in int8 (range -128..127)"
    """
    value = np.asarray(value)
    where = ""
    if value.ndim:
        positions = np.argwhere(_unfit_elements(value, dtype))
        first = tuple(int(p) for p in positions[0]) if len(positions) else (0,) * value.ndim
        where = f" at index {first}"
        value = value[first]
    shown = value.item()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        limits = f"range {info.min}..{info.max}"
    else:
        limits = f"largest finite magnitude {float(np.finfo(dtype).max):.8g}"
    return f"output {name!r}: value {shown!r}{where} does not fit in {dtype} ({limits})"


def _unfit_elements(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The elements of one sample's ``value`` that do not fit ``dtype``."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if value.dtype == object:
            return np.vectorize(lambda x: not info.min <= x <= info.max, otypes=[bool])(value)
        return (value < info.min) | (value > info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        return ~np.isfinite(value.astype(dtype)) & np.isfinite(value)


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
