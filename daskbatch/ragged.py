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
renamed, never smaller; :func:`daskbatch.raggedstore.grow_width`), so blocks never
wait for each other.

:class:`RaggedBlock` holds such an output for one block (padded values and lengths,
what the store writes); :func:`sample_value` and :func:`block_values` check and cast
what a kernel returned. What the store does with these arrays (widening them under
its metadata lock, repairing them, reading them; :func:`~daskbatch.raggedstore.decode_dataset`
turns the stored text back into strings for :func:`daskbatch.open`) is in
:mod:`daskbatch.raggedstore`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    "decode_text",
    "encode_text",
    "encoded_coords",
    "length_name",
    "padded_attrs",
    "padded_meta",
    "sample_value",
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
#: (:func:`daskbatch.raggedstore.metadata_lock`)
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
        # (-1, 0) cannot be reshaped to: a block whose values are all empty has no width
        values = np.array(padded, dtype=np.uint8 if out.text else out.dtype).reshape((lengths.size, width))
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
            try:
                return np.frombuffer(str(value).encode("utf-8"), dtype=np.uint8)
            except UnicodeEncodeError as e:  # a lone surrogate: this sample's value, not the spec
                char = value[e.start]
                raise OutputValueError(
                    f"output {name!r} has a character UTF-8 cannot encode: U+{ord(char):04X} (a lone "
                    f"surrogate) at position {e.start}; return valid text, e.g. "
                    "text.encode('utf-8', 'replace').decode()"
                ) from None
        raise OutputSpecError(
            f"{where}: output {name!r} is {show_value(value)}, expected a str ({_declared(out)}); "
            "return a str (e.g. str(value)), or declare a numeric Output for numbers"
        )
    try:
        arr = None if isinstance(value, str | bytes) else np.asarray(value)
    except ValueError:
        arr = None
    if isinstance(value, str | bytes) or (arr is not None and arr.dtype.kind in TEXT_KINDS):
        raise OutputSpecError(
            f"{where}: output {name!r} is text ({show_value(value)}), expected a 1-D array of "
            f"{out.dtype} values ({_declared(out)}); return numbers, or declare Output(dtype='str')"
        )
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
