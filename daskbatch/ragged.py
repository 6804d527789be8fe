"""Values of varying length: ragged outputs and text, as every Zarr v3 reader reads them.

A ragged output (``Output(dims=("peak",), shape=(None,))``: a 1-D array whose length
varies from sample to sample) and a text output (``Output(dtype="str")``), as well as
text parameters and text coordinates, are stored **padded, with their lengths**:

- the array ``name`` has the shape ``(*batch_shape, W)`` (text: ``(*shape, W)`` bytes
  of UTF-8), where ``W`` is the longest value stored so far (0 in a new store). Each
  value fills the start of its row; the rest is the output's fill (text: zero bytes).
  It is chunked like the blocks along the batch dims, and by :func:`chunk_width`
  along the last dim;
- the array ``<name>_length`` (int64, the same dims without the last one, fill 0) holds
  each value's length (text: in bytes);
- the attributes of ``name`` say so: ``{"daskbatch": {"ragged": true, "length":
  "<name>_length"}}``, with ``"encoding": "utf-8"`` for text (:func:`padded_attrs`).

Zarr's own string data types are not used: TensorStore, for one, reads none of them
(neither ``string`` nor fixed-width UTF-32), while every reader reads ``uint8`` and a
padded array. ``W`` grows when a block holds a longer value than any before: the
worker that writes it rewrites the array's ``zarr.json`` (under a lock, aside and
renamed, never smaller; :func:`grow_width`), so blocks never wait for each other.

:class:`RaggedBlock` holds such an output for one block (padded values and lengths,
what the store writes); :func:`sample_value` and :func:`block_values` check and cast
what a kernel returned; :func:`decode_dataset` turns the stored text back into strings
for :func:`daskbatch.open`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputSpecError
from .outputs import TEXT_DTYPE, TEXT_KINDS, Output, OutputValueError, cast_value, show_value, unfit_message

__all__ = [
    "ATTR",
    "LENGTH_SUFFIX",
    "RaggedBlock",
    "blank",
    "block_values",
    "bytes_dim",
    "chunk_width",
    "decode_dataset",
    "decode_text",
    "encode_text",
    "encoded_coords",
    "grow_width",
    "length_name",
    "metadata_lock",
    "padded_attrs",
    "padded_meta",
    "sample_value",
    "uses_zarr_strings",
]

#: the key of daskbatch's attributes on a padded array (and its length array)
ATTR = "daskbatch"
#: ``<name>_length``: the array of the lengths of the values of array ``name``
LENGTH_SUFFIX = "_length"
#: ``<name>_bytes``: the last dim of a text array (its UTF-8 bytes)
BYTES_SUFFIX = "_bytes"

#: a padded array's chunks along its last dim hold about this many bytes per block
CHUNK_BYTES = 2 * 2**20
#: ... and between so many values (a power of two)
MIN_CHUNK_WIDTH, MAX_CHUNK_WIDTH = 8, 65536

#: the store's folder that is not Zarr (``daskbatch.ledger.HIDDEN``; not imported from
#: there: the ledger imports the kernel, which imports this module)
HIDDEN = ".daskbatch"
#: the lock a worker takes to widen an array, and the driver to consolidate the metadata
METADATA_LOCK = "metadata.lock"


def length_name(name: str) -> str:
    """The name of the array of the lengths of padded array ``name``.

    Examples
    --------
    >>> length_name("peaks")
    'peaks_length'
    """
    return f"{name}{LENGTH_SUFFIX}"


def bytes_dim(name: str) -> str:
    """The last dim (its bytes) of text array ``name``.

    Examples
    --------
    >>> bytes_dim("label")
    'label_bytes'
    """
    return f"{name}{BYTES_SUFFIX}"


def chunk_width(block_values: int, itemsize: int) -> int:
    """The chunk size of a padded array along its last dim.

    A block of ``block_values`` values (its samples times its core sizes), each
    ``itemsize`` bytes: the largest power of two such that one chunk holds at most
    :data:`CHUNK_BYTES` (2 MiB), and between :data:`MIN_CHUNK_WIDTH` (8) and
    :data:`MAX_CHUNK_WIDTH` (65,536). A value longer than that spans several chunks;
    a block writes only the chunks its longest value reaches.

    Examples
    --------
    >>> chunk_width(100, 8), chunk_width(10_000, 8), chunk_width(1_000_000, 8), chunk_width(10, 1)
    (2048, 16, 8, 65536)
    """
    fit = CHUNK_BYTES // max(1, int(block_values) * max(1, int(itemsize)))
    width = 1 << max(0, int(fit).bit_length() - 1) if fit >= 1 else 1
    return int(min(MAX_CHUNK_WIDTH, max(MIN_CHUNK_WIDTH, width)))


def padded_attrs(name: str, text: bool) -> dict[str, Any]:
    """The attributes that mark array ``name`` as padded, naming its length array.

    Examples
    --------
    >>> padded_attrs("peaks", False)
    {'daskbatch': {'ragged': True, 'length': 'peaks_length'}}
    >>> padded_attrs("label", True)["daskbatch"]["encoding"]
    'utf-8'
    """
    meta: dict[str, Any] = {"ragged": True, "length": length_name(name)}
    if text:
        meta["encoding"] = "utf-8"
    return {ATTR: meta}


def length_attrs(name: str, text: bool) -> dict[str, Any]:
    """The attributes of the length array of padded array ``name``."""
    what = "bytes (UTF-8)" if text else "values"
    return {"long_name": f"number of {what} of {name}", ATTR: {"length_of": name}}


def padded_meta(attrs: Any) -> dict[str, Any] | None:
    """daskbatch's description of a padded array, from its attributes (a zarr.json's
    ``attributes`` or an xarray variable's ``attrs``); None for any other array."""
    meta = attrs.get(ATTR) if isinstance(attrs, Mapping) else None
    if isinstance(meta, Mapping) and meta.get("ragged") is True and isinstance(meta.get("length"), str):
        return dict(meta)
    return None


def is_text(dtype: Any) -> bool:
    """Whether ``dtype`` is numpy text (``<U``, ``StringDType``)."""
    return np.dtype(dtype).kind in TEXT_KINDS


# --------------------------------------------------------------------------- text


def encode_text(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Strings as UTF-8 bytes: a uint8 array ``(*shape, W)`` padded with zeros, ``W``
    the longest encoding, and the int64 byte length of each string ``(*shape)``.

    Examples
    --------
    >>> data, n = encode_text(["a", "ñu", ""])
    >>> data.shape, n.tolist(), bytes(data[1, : n[1]]).decode()
    ((3, 3), [1, 3, 0], 'ñu')
    """
    if not (isinstance(values, np.ndarray) and values.dtype.kind == "U"):  # numpy's <U has no trailing NUL
        items = np.asarray(values, dtype=object)
        if any(isinstance(s, str) and s.endswith("\0") for s in items.reshape(-1).tolist()):
            return _encode_each(items)
        values = np.array(items.reshape(-1).tolist(), dtype=str).reshape(items.shape)
    arr = values
    if arr.size == 0:
        return np.zeros((*arr.shape, 0), np.uint8), np.zeros(arr.shape, np.int64)
    encoded = np.ascontiguousarray(np.char.encode(arr, "utf-8"))
    lengths = np.char.str_len(encoded).astype(np.int64)
    if bool(np.char.endswith(arr, "\0").any()):  # numpy drops the trailing NULs: count exactly
        lengths = np.array([len(s.encode()) for s in arr.ravel().tolist()], np.int64).reshape(arr.shape)
    width = encoded.dtype.itemsize
    data = encoded.view(np.uint8).reshape((*arr.shape, width))
    longest = int(lengths.max())
    return (data[..., :longest] if longest < width else data), lengths


def _encode_each(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_text` one string at a time (strings that end with NUL characters)."""
    encoded = [str(s).encode("utf-8") for s in items.reshape(-1).tolist()]
    lengths = np.array([len(b) for b in encoded], dtype=np.int64)
    data = np.zeros((len(encoded), int(lengths.max(initial=0))), dtype=np.uint8)
    for i, b in enumerate(encoded):
        data[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return data.reshape((*items.shape, data.shape[1])), lengths.reshape(items.shape)


def decode_text(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The strings that :func:`encode_text` encoded (an array of numpy's
    ``StringDType``): row ``i`` of ``data`` up to ``lengths[i]`` bytes, as UTF-8.

    Examples
    --------
    >>> decode_text(*encode_text(["a", "ñu", ""])).tolist()
    ['a', 'ñu', '']
    """
    data = np.asarray(data, dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    width = data.shape[-1] if data.ndim else 0
    if width == 0 or lengths.size == 0:
        return np.full(lengths.shape, "", dtype=TEXT_DTYPE)
    lengths = np.clip(lengths, 0, width)
    inside = np.arange(width) < lengths[..., None]
    clean = np.ascontiguousarray(np.where(inside, data, 0), dtype=np.uint8)
    raw = clean.view(f"S{width}")[..., 0]
    out = np.char.decode(raw, "utf-8", errors="replace")
    exact = np.char.str_len(raw) == lengths
    if not exact.all():  # strings with NUL bytes at their end: cut by their length
        flat, rows = out.reshape(-1).astype(object), clean.reshape(-1, width)
        for i in np.flatnonzero(~exact.reshape(-1)).tolist():
            flat[i] = bytes(rows[i, : lengths.reshape(-1)[i]]).decode("utf-8", errors="replace")
        out = flat.reshape(lengths.shape)
    return out.astype(TEXT_DTYPE)


# --------------------------------------------------------------------------- a block's values


class _Rows:
    """The storage several views of one :class:`RaggedBlock` share."""

    __slots__ = ("lengths", "values")

    def __init__(self, values: np.ndarray, lengths: np.ndarray) -> None:
        self.values = values
        self.lengths = lengths


class RaggedBlock:
    """One block of a ragged or text output: its values padded, and their lengths.

    ``values`` is ``(n, capacity)`` (``n`` samples, flat), each row a value followed by
    ``fill``; ``lengths`` is ``(n,)``; ``shape`` is the block's batch shape. Text is
    held as UTF-8 bytes (``uint8``, fill 0). Indexing goes by flat sample position: ``b[i]``
    is sample ``i``'s value (a 1-D array, bytes for text), ``b[i] = value`` sets it,
    ``b[positions]`` (ints or a boolean mask) is a block of those samples and
    ``b[positions] = other`` copies them in, ``b[positions] = fill`` empties them.
    :meth:`reshape` gives a view of another batch shape (trailing ``None`` or ``-1``,
    the ragged dim, are ignored), so that code written for fixed-shape output arrays
    (``v.reshape((n, -1))[mask] = ...``) works on it unchanged.
    """

    __slots__ = ("_rows", "fill", "shape", "text")

    def __init__(self, rows: _Rows, shape: tuple[int, ...], fill: Any, text: bool) -> None:
        self._rows = rows
        self.shape = tuple(int(s) for s in shape)
        self.fill = fill
        self.text = bool(text)

    # ------------------------------------------------------------------ making one

    @classmethod
    def empty(cls, out: Output, shape: tuple[int, ...]) -> RaggedBlock:
        """A block of ``shape`` samples, every value empty (length 0)."""
        dtype, fill = (np.dtype(np.uint8), 0) if out.text else (out.dtype, out.fill)
        n = math.prod(shape)
        return cls(_Rows(np.full((n, 0), fill, dtype=dtype), np.zeros(n, np.int64)), shape, fill, out.text)

    @classmethod
    def from_padded(cls, out: Output, padded: np.ndarray, lengths: np.ndarray) -> RaggedBlock:
        """A block from stored rows (``(*shape, W)``) and lengths (``(*shape)``); what
        lies past each length is set to the fill."""
        lengths = np.asarray(lengths, dtype=np.int64)
        shape = lengths.shape
        width = padded.shape[-1]
        values = np.array(padded, dtype=np.uint8 if out.text else out.dtype).reshape((-1, width))
        fill = 0 if out.text else out.fill
        flat = np.clip(lengths.reshape(-1), 0, width)
        values[np.arange(width) >= flat[:, None]] = fill
        return cls(_Rows(values, flat.copy()), shape, fill, out.text)

    # ------------------------------------------------------------------ what it holds

    @property
    def n(self) -> int:
        return int(self._rows.lengths.size)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._rows.values.dtype

    @property
    def nbytes(self) -> int:
        return int(self._rows.values.nbytes + self._rows.lengths.nbytes)

    @property
    def width(self) -> int:
        """The longest value's length (0 for a block of empty values)."""
        lengths = self._rows.lengths
        return int(lengths.max()) if lengths.size else 0

    @property
    def lengths(self) -> np.ndarray:
        """Each value's length, shaped like the block."""
        return self._rows.lengths.reshape(self.shape)

    def padded(self, width: int | None = None) -> np.ndarray:
        """The values as ``(*shape, width)`` (default :attr:`width`), padded with the fill."""
        width = self.width if width is None else int(width)
        values = self._rows.values
        if values.shape[1] >= width:
            out = values[:, :width]
        else:
            out = np.full((self.n, width), self.fill, dtype=values.dtype)
            out[:, : values.shape[1]] = values
        return out.reshape((*self.shape, width))

    def entries(self) -> list[np.ndarray]:
        """Every value, in order (bytes for text)."""
        return [self[i] for i in range(self.n)]

    def texts(self) -> list[str]:
        """Every value of a text block, decoded."""
        return [bytes(v).decode("utf-8", errors="replace") for v in self.entries()]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The padded values, ``(*shape, width)`` (what ``np.asarray`` of a block gives)."""
        out = self.padded()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        kind = "text" if self.text else str(self.dtype)
        return f"<RaggedBlock {kind} shape={self.shape} width={self.width}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RaggedBlock):
            return NotImplemented
        w = max(self.width, other.width)
        return (
            self.shape == other.shape
            and np.array_equal(self.lengths, other.lengths)
            and np.array_equal(self.padded(w), other.padded(w), equal_nan=self.dtype.kind in "fc")
        )

    __hash__ = None  # type: ignore[assignment]

    def reshape(self, *shape: Any) -> RaggedBlock:
        """A view with another batch shape of the same samples (trailing ``None`` or
        ``-1``, the ragged dim, ignored; a leading ``-1`` takes every sample)."""
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        dims = list(shape)
        while len(dims) > 1 and (dims[-1] is None or dims[-1] == -1):
            dims.pop()
        if dims == [-1] or dims == [None]:
            dims = [self.n]
        if math.prod(int(d) for d in dims) != self.n:
            raise ValueError(f"cannot reshape a ragged block of {self.n} samples into {tuple(shape)}")
        return RaggedBlock(self._rows, tuple(int(d) for d in dims), self.fill, self.text)

    # ------------------------------------------------------------------ reading and writing samples

    def _positions(self, key: Any) -> int | np.ndarray:
        if isinstance(key, int | np.integer):
            i = int(key)
            return i + self.n if i < 0 else i
        if isinstance(key, tuple) and all(isinstance(k, int | np.integer) for k in key):
            return int(np.ravel_multi_index(tuple(int(k) for k in key), self.shape))
        if isinstance(key, slice):
            return np.arange(self.n)[key]
        arr = np.asarray(key)
        if arr.dtype == bool:
            return np.flatnonzero(arr.reshape(-1))
        return arr.astype(np.int64).reshape(-1)

    def __getitem__(self, key: Any) -> np.ndarray | RaggedBlock:
        at = self._positions(key)
        rows = self._rows
        if isinstance(at, int):
            return rows.values[at, : rows.lengths[at]].copy()
        lengths = rows.lengths[at]
        width = int(lengths.max()) if lengths.size else 0
        picked = _Rows(rows.values[at, :width].copy(), lengths.copy())
        return RaggedBlock(picked, (len(at),), self.fill, self.text)

    def __setitem__(self, key: Any, value: Any) -> None:
        at = self._positions(key)
        if isinstance(value, RaggedBlock):
            self._copy_in(np.atleast_1d(at), value)
        elif isinstance(at, int) and np.ndim(value) == 1:
            self._set_one(at, np.asarray(value))
        elif np.ndim(value) == 0:  # the fill: no value
            self._clear(np.atleast_1d(at))
        else:
            raise ValueError(f"cannot set samples {key!r} of a ragged block to {show_value(value)}")

    def _reserve(self, width: int) -> None:
        rows = self._rows
        have = rows.values.shape[1]
        if width <= have:
            return
        wider = np.full((rows.values.shape[0], max(width, 2 * have, 8)), self.fill, dtype=rows.values.dtype)
        wider[:, :have] = rows.values
        rows.values = wider

    def _set_one(self, i: int, value: np.ndarray) -> None:
        rows = self._rows
        n = int(value.shape[0])
        self._reserve(n)
        old = int(rows.lengths[i])
        rows.values[i, :n] = value
        if old > n:
            rows.values[i, n:old] = self.fill
        rows.lengths[i] = n

    def _clear(self, at: np.ndarray) -> None:
        rows = self._rows
        rows.values[at, :] = self.fill
        rows.lengths[at] = 0

    def _copy_in(self, at: np.ndarray, other: RaggedBlock) -> None:
        if other.n != len(at):
            raise ValueError(f"cannot copy {other.n} values into {len(at)} samples of a ragged block")
        width = other.width
        self._reserve(width)
        rows = self._rows
        rows.values[at, :] = self.fill
        rows.values[at, :width] = other.padded(width).reshape((other.n, width))
        rows.lengths[at] = other._rows.lengths


def blank(out: Output, shape: tuple[int, ...]) -> np.ndarray | RaggedBlock:
    """Output ``out``'s values for a block of ``shape`` samples, all the fill: an array
    of the declared shape, or an empty :class:`RaggedBlock` for a ragged or text output."""
    if out.variable:
        return RaggedBlock.empty(out, shape)
    return np.full(shape + out.shape, out.fill, dtype=out.dtype)


# --------------------------------------------------------------------------- a kernel's values


def _declared(out: Output) -> str:
    if out.text:
        return "declared Output(dtype='str')"
    return f"declared Output(dims={out.dims}, shape={out.shape})"


def _element(out: Output, name: str) -> dict[str, Output]:
    """A scalar output ``name`` of ``out``'s dtype: the cast of each element of a ragged value."""
    return {name: Output(dtype=out.dtype, fill=out.fill)}


def sample_value(out: Output, name: str, value: Any, where: str) -> np.ndarray:
    """One sample's value of ragged or text output ``name``, checked: a 1-D array cast
    to the output's dtype (any length, 0 included), or a str's UTF-8 bytes.

    Raises :class:`~daskbatch.errors.OutputSpecError` (text starting with ``where``)
    for a value of the wrong kind or shape, and
    :class:`~daskbatch.outputs.OutputValueError` for a number that does not fit the
    dtype (see :func:`~daskbatch.outputs.cast_value`).
    """
    if out.text:
        if isinstance(value, str):
            return np.frombuffer(str(value).encode("utf-8"), dtype=np.uint8)
        raise OutputSpecError(
            f"{where}: output {name!r} is {show_value(value)}, expected a str ({_declared(out)}); "
            "return a str (e.g. str(value)), or declare a numeric Output for numbers"
        )
    if isinstance(value, str | bytes):
        raise OutputSpecError(
            f"{where}: output {name!r} is text ({show_value(value)}), expected a 1-D array of "
            f"{out.dtype} values ({_declared(out)}); return numbers, or declare Output(dtype='str')"
        )
    try:
        arr = np.asarray(value)
    except ValueError:
        arr = None
    if arr is None or arr.ndim != 1:
        got = "values of different lengths" if arr is None else f"shape {arr.shape}"
        raise OutputSpecError(
            f"{where}: output {name!r} is {show_value(value)} ({got}), expected a 1-D array of any "
            f"length ({_declared(out)}); return a list or 1-D array (e.g. [value] for one value)"
        )
    if arr.size == 0:  # [] is float64 to numpy, whatever the output's dtype
        return np.zeros(0, dtype=out.dtype)
    cast, bad = cast_value(_element(out, name), name, arr, where, arr.shape)
    if bad is not None:
        raise OutputValueError(unfit_message(name, arr, out.dtype))
    return cast


def _entries(out: Output, name: str, value: Any, where: str, shape: tuple[int, ...]) -> list[Any]:
    """A vectorised kernel's value for a block of ``shape`` samples of a ragged or
    text output, as one entry per sample (flat, in C order)."""
    n = math.prod(shape)
    if isinstance(value, np.ndarray):
        if value.dtype == object or (out.text and value.dtype.kind in TEXT_KINDS):
            if value.shape == shape or (value.ndim == 1 and value.size == n):
                flat = value.reshape(-1)
                return flat.tolist() if value.dtype.kind in TEXT_KINDS else list(flat)
        elif not out.text and value.ndim == len(shape) + 1 and value.shape[:-1] == shape:
            return list(value.reshape((n, value.shape[-1])))  # the same length for every sample
    elif isinstance(value, list | tuple):
        entries = list(value)
        for size in shape[:-1] if len(entries) != n else ():  # nested lists, one level per batch dim
            if len(entries) != size or not all(isinstance(e, list | tuple) for e in entries):
                break
            entries = [x for e in entries for x in e]
        if len(entries) == n:
            return entries
    if isinstance(value, np.ndarray):
        what = f"an array of shape {value.shape}"
    elif isinstance(value, list | tuple):
        what = f"a {type(value).__name__} of {len(value)}"
    else:
        what = show_value(value)
    per = "a str" if out.text else "a 1-D array"
    raise OutputSpecError(
        f"{where}: output {name!r} is {what}, expected one value per sample of the block ({n}, "
        f"shape {shape}), each {per} ({_declared(out)}); return a list of {n} values"
    )


def block_values(
    out: Output, name: str, value: Any, where: str, shape: tuple[int, ...]
) -> tuple[RaggedBlock, np.ndarray | None]:
    """A vectorised kernel's value of ragged or text output ``name`` for a block of
    ``shape`` samples: a list, tuple or object array with one value per sample (text:
    also a numpy array of strings; ragged: also an array ``(*shape, L)``, all of
    length L), checked and cast as :func:`sample_value` does for one.

    Returns the block and None, or, when some numbers do not fit the dtype, the block
    (those samples empty) and a flat boolean array of those samples.
    """
    entries = _entries(out, name, value, where, shape)
    n = len(entries)
    if out.text:
        for e in entries:
            if not isinstance(e, str):
                sample_value(out, name, e, where)  # raises, naming the value
        items = np.empty(n, dtype=object)
        items[:] = entries
        data, lengths = encode_text(items)
        block = RaggedBlock(_Rows(np.array(data), lengths), shape, 0, True)
        return block, None
    arrays = []
    for e in entries:
        try:
            arr = np.asarray(e)
        except ValueError:
            arr = None
        if arr is None or arr.ndim != 1 or _has_text(arr):
            sample_value(out, name, e, where)  # raises, naming the value
        arrays.append(arr)
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    total = int(lengths.sum())
    # empty values are left out: [] is float64 to numpy, whatever the output's dtype
    flat = np.concatenate([a for a in arrays if a.size]) if total else np.zeros(0, dtype=out.dtype)
    cast, bad_elements = cast_value(_element(out, name), name, flat, where, (total,))
    width = int(lengths.max()) if n else 0
    values = np.full((n, width), out.fill, dtype=out.dtype)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    values[rows, cols] = cast
    block = RaggedBlock(_Rows(values, lengths), shape, out.fill, False)
    if bad_elements is None:
        return block, None
    bad = np.bincount(rows[bad_elements], minlength=n) > 0
    block[bad] = out.fill
    return block, bad


def _has_text(arr: np.ndarray) -> bool:
    if arr.dtype.kind in "US":
        return True
    return arr.dtype == object and any(isinstance(x, str | bytes) for x in arr.flat)


def entry(value: Any, j: int, out: Output, shape: tuple[int, ...]) -> Any:
    """Sample ``j``'s entry of a vectorised kernel's value (for an error message)."""
    try:
        return _entries(out, "", value, "", shape)[j]
    except OutputSpecError:
        return value


# --------------------------------------------------------------------------- the store: widening arrays


@contextlib.contextmanager
def metadata_lock(store: Path) -> Iterator[None]:
    """Hold the store's metadata lock (``.daskbatch/metadata.lock``, an exclusive
    ``flock``): taken by a block writer to widen a padded array and by the driver to
    rewrite and consolidate the root metadata, so that neither undoes the other.

    Opened without following a link (a link there is refused). On a filesystem
    without ``flock``, POSIX record locks (``lockf``) are used; without those too,
    no lock is taken.
    """
    import fcntl

    from .errors import StoreError
    from .fstools import link_message

    hidden = Path(store) / HIDDEN
    try:
        dfd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        hidden.mkdir(exist_ok=True)
        dfd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(link_message(Path(store), hidden)) from None
        raise
    try:
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(METADATA_LOCK, flags, 0o644, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(link_message(Path(store), hidden / METADATA_LOCK)) from None
            raise
    finally:
        os.close(dfd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            with contextlib.suppress(OSError):
                fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_doc(path: Path) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def _replace_doc(store: Path, target: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to a temporary file in ``.daskbatch/`` and rename it onto ``target``."""
    tmp = Path(store) / HIDDEN / f"meta-{os.getpid()}-{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def grow_width(store: Path, name: str, need: int) -> int:
    """Make padded array ``name`` at least ``need`` wide; return its width.

    Under :func:`metadata_lock`: reads ``<name>/zarr.json`` again and, if its last
    size is still smaller, writes it with ``need`` (aside, then renamed); never
    narrower. The root's consolidated copy of the array (what ``xarray.open_zarr``
    and :func:`daskbatch.open` read) is brought to at least that width too, also when
    another writer widened the array itself, so that a block committed after this
    call is wholly visible to every reader.
    """
    store = Path(store)
    with metadata_lock(store):
        file = store / name / "zarr.json"
        doc = _read_doc(file)
        shape = list(doc["shape"])
        if int(shape[-1]) < need:
            shape[-1] = int(need)
            _replace_doc(store, file, {**doc, "shape": shape})
        width = int(shape[-1])
        root_file = store / "zarr.json"
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            root = _read_doc(root_file)
            entries = root["consolidated_metadata"]["metadata"]
            entry = entries.get(name)
            if isinstance(entry, dict) and int(entry["shape"][-1]) < width:
                entries[name] = {**entry, "shape": [*entry["shape"][:-1], width]}
                _replace_doc(store, root_file, root)
        return width


def stale_chunks(store: Path, name: str, chunk_key: str, keep: int) -> list[Path]:
    """The chunk files of one block's row of padded array ``name`` past its first
    ``keep`` columns of chunks (``chunk_key``: the key of the row's first chunk, e.g.
    ``c/3/0``); written by an earlier attempt at the block with longer values."""
    folder = store / name / Path(chunk_key).parent
    found = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.isdigit() and int(e.name) >= keep and e.is_file(follow_symlinks=False):
                    found.append(Path(e.path))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


# --------------------------------------------------------------------------- repairs


def uses_zarr_strings(store: Path) -> bool:
    """Whether a store keeps text in Zarr's own string data types (``string``,
    fixed-width UTF-32): a store made before text was stored as UTF-8 bytes. Its
    text parameters and coordinates keep that form when it is resumed or repaired.

    Looks at the top-level arrays' metadata, in their files and in the root's
    consolidated copy (either may be damaged)."""
    docs: list[Any] = []
    with contextlib.suppress(Exception):
        meta = _read_doc(Path(store) / "zarr.json")["consolidated_metadata"]["metadata"]
        docs += [d for k, d in meta.items() if "/" not in k]
    with contextlib.suppress(OSError):
        for entry in os.scandir(store):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                with contextlib.suppress(Exception):
                    docs.append(_read_doc(Path(entry.path) / "zarr.json"))
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("node_type") == "array":
            dtype = doc.get("data_type")
            if dtype == "string" or isinstance(dtype, Mapping):  # vlen-utf8, fixed_length_utf32
                return True
    return False


def encoded_coords(name: str, values: Any) -> dict[str, np.ndarray]:
    """The arrays a coordinate ``name`` of ``values`` is stored as: itself, or, for
    text, its UTF-8 bytes and ``<name>_length``.

    Examples
    --------
    >>> sorted(encoded_coords("rock", ["granite", "shale"])), list(encoded_coords("t", [1.0]))
    (['rock', 'rock_length'], ['t'])
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in TEXT_KINDS:
        return {name: arr}
    data, lengths = encode_text(arr)
    return {name: data, length_name(name): lengths}


def wider_shape(doc: Any, ref: Any) -> bool:
    """Whether array metadata ``doc`` has the shape of ``ref`` (the template's, or the
    consolidated copy), but wider along the last dim, of a padded array: what block
    writers do to it, no damage."""
    if not isinstance(doc, Mapping) or not isinstance(ref, Mapping):
        return False
    if padded_meta(ref.get("attributes")) is None and padded_meta(doc.get("attributes")) is None:
        return False
    a, b = doc.get("shape"), ref.get("shape")
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a):
        return False
    last = isinstance(a[-1], int) and isinstance(b[-1], int) and a[-1] >= b[-1]
    return a[:-1] == b[:-1] and last


def widened(store: Path, name: str, doc: Mapping[str, Any], others: Sequence[Any] = ()) -> dict[str, Any]:
    """Metadata ``doc`` of padded array ``name``, rebuilt by a repair, made as wide as
    what is stored needs: the widest of ``doc``, ``others`` (e.g. the consolidated
    copy) and the longest length in its length array (or, when that cannot be read,
    the columns of chunks on disk). Any other array's ``doc`` is returned as it is."""
    meta = padded_meta(doc.get("attributes"))
    shape = doc.get("shape")
    if meta is None or not isinstance(shape, list) or not shape:
        return dict(doc)
    width = int(shape[-1])
    for other in others:
        with contextlib.suppress(Exception):
            if len(other["shape"]) == len(shape):
                width = max(width, int(other["shape"][-1]))
    try:
        import zarr

        lengths = zarr.open_array(str(Path(store) / meta["length"]), mode="r")[...]
        width = max(width, int(np.max(lengths, initial=0)))
    except Exception:
        chunk = doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [1])[-1]
        cols = [
            int(p.name) for p in (Path(store) / name / "c").rglob("*") if p.is_file() and p.name.isdigit()
        ]
        if cols and len(shape) > 1:
            width = max(width, (max(cols) + 1) * int(chunk))
    return {**doc, "shape": [*shape[:-1], width]}


# --------------------------------------------------------------------------- reading


def read_decoded(root: Any, name: str, selection: Any) -> np.ndarray:
    """Array ``name`` of a store's Zarr group ``root`` at ``selection`` (along its
    first dims): text decoded to strings; any other array as stored."""
    arr = root[name]
    meta = padded_meta(dict(arr.attrs))
    if meta is None or meta.get("encoding") != "utf-8":
        return np.asarray(arr[selection])
    return decode_text(arr[selection], root[meta["length"]][selection])


def compare_sample(
    out: Output, new: RaggedBlock, root: Any, name: str, selection: Any
) -> tuple[tuple[str, str] | None, np.ndarray, np.ndarray]:
    """One recomputed sample of ragged or text output ``name`` against the store.

    Returns ``(None, recomputed, stored)`` as float arrays to compare within a
    tolerance (numbers of the same length; text that is equal gives empty arrays), or
    ``((stored, recomputed), ...)``, a short text of each, when they differ in a way
    no tolerance covers (another length, other text).
    """
    stored = RaggedBlock.from_padded(out, root[name][selection], root[length_name(name)][selection])
    a, b = stored[0], new[0]
    if out.text:
        old_text, new_text = bytes(a).decode(errors="replace"), bytes(b).decode(errors="replace")
        if old_text == new_text:
            return None, np.zeros(0), np.zeros(0)
        return (repr(old_text), repr(new_text)), np.zeros(0), np.zeros(0)
    if a.shape != b.shape:
        return (f"{a.shape[0]} values", f"{b.shape[0]} values"), np.zeros(0), np.zeros(0)
    return None, np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)


def _decode_blocks(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return decode_text(data, lengths[..., 0])


def decode_dataset(ds: Any) -> Any:
    """A store's Dataset (as ``xarray.open_zarr`` reads it) with its text decoded.

    Every text array (padded UTF-8 bytes, :func:`padded_attrs` with ``encoding``)
    becomes a variable of strings (numpy ``StringDType``) without its bytes dim, and
    its length variable is dropped: text parameters and outputs lazily, block by
    block; text coordinates (grid axes, output coordinates) at once, as the index of
    their dim. Ragged numeric outputs are left as they are (padded with their fill,
    beside their ``<name>_length`` variable). Stores without such arrays (those made
    before, whose text is Zarr's own string type) are returned unchanged.
    """
    import dask.array as da
    import xarray as xr

    order = list(ds.data_vars)
    for name in list(ds.variables):
        if name not in ds.variables:
            continue
        var = ds[name].variable
        meta = padded_meta(var.attrs)
        if meta is None or meta.get("encoding") != "utf-8" or meta["length"] not in ds.variables:
            continue
        lengths = ds[meta["length"]].variable
        dims = var.dims[:-1]
        attrs = {k: v for k, v in var.attrs.items() if k != ATTR}
        coord = name in ds.coords or name in ds.dims
        if name in ds.dims or not isinstance(var.data, da.Array):  # an index: its values now
            values = decode_text(np.asarray(var.values), np.asarray(lengths.values))
        else:
            data = var.data.rechunk({var.ndim - 1: -1})
            count = lengths.data if isinstance(lengths.data, da.Array) else da.from_array(lengths.values)
            count = count.rechunk(data.chunks[:-1])[..., None]
            values = da.map_blocks(
                _decode_blocks,
                data,
                count,
                drop_axis=var.ndim - 1,
                dtype=TEXT_DTYPE,
                meta=np.empty((0,) * len(dims), dtype=TEXT_DTYPE),
            )
        ds = ds.drop_vars([name, meta["length"]])
        decoded = xr.Variable(dims, values, attrs)
        if coord:
            ds = ds.assign_coords({name: decoded})
        else:
            ds[name] = decoded
    return ds[[k for k in order if k in ds.data_vars]]  # in the store's order
