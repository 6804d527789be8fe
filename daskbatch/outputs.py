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
    "TEXT_DTYPE",
    "Output",
    "OutputValueError",
    "as_dict",
    "cast_value",
    "check_name",
    "check_value",
    "default_fill",
    "ragged_hint",
    "show_value",
    "stored_specs",
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
    if dtype.kind in TEXT_KINDS:
        return ""
    raise OutputSpecError(
        f"Output: dtype {dtype} is not supported; use a float, int or bool dtype, or dtype='str' for text"
    )


#: numpy dtype kinds of text (``str``, ``'<U8'``, ``StringDType()``)
TEXT_KINDS = "UT"
#: the dtype of a text output: numpy's variable-width strings
TEXT_DTYPE = np.dtypes.StringDType()


def _as_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype; any text dtype (``"str"``, ``str``, ``"<U8"``,
    ``StringDType()``) as :data:`TEXT_DTYPE`."""
    if dtype is str or (isinstance(dtype, str) and dtype in ("str", "string")):
        return TEXT_DTYPE
    try:
        got = np.dtype(dtype)
    except TypeError as e:
        raise OutputSpecError(
            f"Output: dtype={dtype!r} is not a numpy dtype; use e.g. 'float64', 'int32', 'bool' or 'str'"
        ) from e
    return TEXT_DTYPE if got.kind in TEXT_KINDS else got


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
        Sizes of those dims, e.g. ``(71,)``. ``(None,)`` with one dim declares a
        ragged output: a 1-D array whose length varies from sample to sample (0
        included), e.g. ``Output(dims=("peak",), shape=(None,))``.
    dtype
        A numpy float, int or bool dtype, or ``"str"``: one text value per sample
        (``dims=()``; stored as UTF-8 bytes, read back as strings).
    fill
        Value stored where there is no result (pending or failed samples). Defaults
        to NaN for floats, the most negative value for signed ints, the largest for
        unsigned ints, False for bools, ``""`` for text (the only fill text takes).
        A ragged output's padding is its fill too.
    coords
        Optional coordinate values for the core dims, e.g. ``{"time": gate_times}``
        (not for a ragged dim).
    attrs
        Optional attributes stored on the variable (``long_name``...).
    units
        The variable's units, stored as ``attrs["units"]`` (e.g. ``"ohm m"``).
    store
        ``False`` for an output that is only reduced (``run(..., reduce=...)``): the
        kernel returns it and each block's partial reductions are kept, but no value
        per sample is written to the store.

    Examples
    --------
    >>> Output(dims=("time",), shape=(71,)).fill
    nan
    >>> Output(dims=("peak",), shape=(None,), units="s").spec()
    {'dims': ['peak'], 'shape': [None], 'dtype': 'float64', 'fill': None, 'units': 's'}
    >>> Output(dtype="str").spec()
    {'dims': [], 'shape': [], 'dtype': 'str', 'fill': ''}
    """

    dims: tuple[str, ...] = ()
    shape: tuple[int | None, ...] = ()
    dtype: Any = "float64"
    fill: Any = None
    coords: Mapping[str, Any] | None = field(default=None, compare=False)
    attrs: Mapping[str, Any] | None = field(default=None, compare=False)
    units: str | None = None
    store: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.store, bool):
            raise OutputSpecError(
                f"Output: store={self.store!r} must be True (keep every sample's value) or False "
                "(only reduce it: run(..., reduce={...}))"
            )
        dims = (self.dims,) if isinstance(self.dims, str) else tuple(self.dims)
        shape = (self.shape,) if isinstance(self.shape, int) or self.shape is None else tuple(self.shape)
        if len(dims) != len(shape):
            raise OutputSpecError(f"Output: dims={dims!r} and shape={shape!r} must have the same length")
        for d in dims:
            check_name(d, f"Output(dims={dims!r}): dim")
        if None in shape and len(shape) != 1:
            raise OutputSpecError(
                f"Output: shape={shape!r} is not supported: only a 1-D output can be ragged (its "
                "length varying from sample to sample): shape=(None,) with one dim, e.g. "
                "Output(dims=('peak',), shape=(None,))"
            )
        for s in shape:
            if s is None:
                continue
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
                raise OutputSpecError(
                    f"Output: shape={shape!r} must hold positive integers (or be (None,) for a 1-D "
                    "output whose length varies)"
                )
        dtype = _as_dtype(self.dtype)
        text = dtype.kind in TEXT_KINDS
        if text and dims:
            raise OutputSpecError(
                f"Output(dtype='str', dims={dims!r}): a text output is one string per sample; "
                "declare Output(dtype='str') with no dims (a list of strings is not supported)"
            )
        fill = default_fill(dtype) if self.fill is None else self.fill
        if text and fill != "":
            raise OutputSpecError(
                f"Output(dtype='str', fill={fill!r}): text outputs read '' where there is no result; "
                "leave fill unset"
            )
        if dtype.kind in "iub" and isinstance(fill, float) and not float(fill).is_integer():
            raise OutputSpecError(f"Output: fill={fill!r} is not a valid {dtype} value")
        coords = {}
        for d, values in (self.coords or {}).items():
            if d not in dims:
                raise OutputSpecError(f"Output: coords for {d!r}, which is not one of dims={dims!r}")
            size = shape[dims.index(d)]
            if size is None:
                raise OutputSpecError(
                    f"Output: coords for {d!r}, a ragged dim (shape=(None,)): its length varies, so "
                    "it has no coordinate values; leave coords out, or declare a fixed shape"
                )
            arr = np.asarray(values)
            if arr.shape != (size,):
                raise OutputSpecError(f"Output: coords[{d!r}] has shape {arr.shape}, expected ({size},)")
            coords[d] = arr
        attrs = dict(self.attrs or {})
        if self.units is not None:
            if not isinstance(self.units, str):
                raise OutputSpecError(f"Output: units={self.units!r} must be a string, e.g. units='m'")
            if "units" in attrs and attrs["units"] != self.units:
                raise OutputSpecError(
                    f"Output: units={self.units!r} and attrs['units']={attrs['units']!r} differ; give "
                    "the units once (units=)"
                )
            attrs["units"] = self.units
        object.__setattr__(self, "dims", tuple(str(d) for d in dims))
        object.__setattr__(self, "shape", tuple(None if s is None else int(s) for s in shape))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "fill", fill)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "attrs", attrs)

    @property
    def ragged(self) -> bool:
        """Whether the output's length varies from sample to sample (``shape=(None,)``)."""
        return None in self.shape

    @property
    def text(self) -> bool:
        """Whether the output is a string per sample (``dtype="str"``)."""
        return self.dtype.kind in TEXT_KINDS

    @property
    def variable(self) -> bool:
        """Whether the output is stored padded, with the length of each value
        (a ragged or a text output; see :mod:`daskbatch.ragged`)."""
        return self.ragged or self.text

    @property
    def size(self) -> int:
        """Values per sample as declared: the product of the fixed sizes (a ragged dim,
        whose length is known only once computed, counts as 1)."""
        return math.prod(1 if s is None else s for s in self.shape)

    @classmethod
    def from_spec(cls, doc: Mapping[str, Any]) -> Output:
        """The array a store's recorded declaration (:meth:`spec`) describes: dims, shape,
        dtype, fill and ``store`` (no coordinates or attributes)."""
        return cls(
            dims=tuple(doc["dims"]),
            shape=tuple(doc["shape"]),
            dtype=doc["dtype"],
            fill=doc.get("fill"),
            store=doc.get("store", True),
        )

    def spec(self) -> dict[str, Any]:
        """The declaration as JSON-ready values (``fill`` None for NaN; a ragged size
        None; ``units`` only when given)."""
        fill = self.fill
        spec = {
            "dims": list(self.dims),
            "shape": list(self.shape),
            "dtype": "str" if self.text else str(self.dtype),
            "fill": None if isinstance(fill, float) and math.isnan(fill) else np.asarray(fill).item(),
        }
        if self.units is not None:
            spec["units"] = self.units
        if not self.store:
            spec["store"] = False
        return spec


def stored_specs(outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The recorded declarations (:meth:`Output.spec`) of the outputs a store holds per
    sample: all but those declared ``Output(store=False)``, which are only reduced."""
    return {k: o for k, o in outputs.items() if o.get("store", True)}


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
    expected = batch_shape + out.shape
    declared = f"declared Output(dims={out.dims}, shape={out.shape})"
    try:
        arr = np.asarray(value)
    except ValueError:  # a sequence of values of different lengths
        raise OutputSpecError(
            f"{where}: output {name!r} is {show_value(value)}, values of different lengths, expected "
            f"shape {expected} ({declared}){ragged_hint(out)}"
        ) from None
    if arr.dtype.kind in "UST" or (arr.dtype == object and _holds_text(arr)):
        raise OutputSpecError(
            f"{where}: output {name!r} is text ({show_value(value)}), expected {out.dtype} values "
            f"({declared}); return {'booleans' if out.dtype.kind == 'b' else 'numbers'}, or declare "
            "Output(dtype='str') for one string per sample"
        )
    if arr.shape != expected:
        hint = ragged_hint(out) if arr.ndim == len(expected) + (not out.shape) else ""
        raise OutputSpecError(
            f"{where}: output {name!r} has shape {arr.shape}, expected {expected} ({declared}){hint}"
        )
    if arr.dtype == out.dtype:
        return arr, None
    bad = None
    if arr.dtype == object and out.dtype.kind in "iu":  # Python ints too large for int64
        arr, bad = _python_ints(arr, out.dtype)
    integers = arr.dtype.kind in "iu" and out.dtype.kind in "iu"  # signed <-> unsigned: by value
    if not integers and not np.can_cast(arr.dtype, out.dtype, casting="same_kind"):
        if arr.dtype.kind not in "biuf":  # None, or objects: no dtype would store them
            raise OutputSpecError(
                f"{where}: output {name!r} is {show_value(value)}, not "
                f"{out.dtype} values ({declared}); "
                "return numbers (float('nan') for a missing value), or raise to fail the sample"
            )
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


def show_value(value: Any, limit: int = 40) -> str:
    """A short text of a value in an error message: its type and (cut) repr.

    Examples
    --------
    >>> show_value("abc"), show_value([1, 2])
    ("the str 'abc'", 'the list [1, 2]')
    """
    if value is None:
        return "None"
    text = " ".join(repr(value).split())  # one line
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"the {type(value).__name__} {text}"


def ragged_hint(out: Output) -> str:
    """The end of a shape error: how to declare an output whose length varies."""
    if len(out.dims) > 1:
        return ""
    dim = out.dims[0] if out.dims else "item"
    return f"; if its length varies from sample to sample, declare Output(dims=({dim!r},), shape=(None,))"


def _holds_text(arr: np.ndarray) -> bool:
    """Whether an object array holds a string (checked on its first element only)."""
    return arr.size > 0 and isinstance(arr.flat[0], str | bytes)


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
