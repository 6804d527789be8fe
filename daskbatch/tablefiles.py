"""The reader of each table file kind: Parquet, CSV and Zarr.

Each block reads its own rows, in the worker (:meth:`Source.read`): Parquet only
the row groups the block overlaps, CSV from the recorded offset before its first
row, Zarr through a lazy :func:`xarray.open_zarr` and ``isel``. A source object is
small (paths, types, row-group starts, the CSV offsets) and picklable: it travels
with the space to every block task.

:mod:`daskbatch.sources` opens a path with these (a folder or a glob of files as one
:class:`~daskbatch.sources.MultiSource`); what every source shares is in
:mod:`daskbatch.tableread`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SpaceError
from .tableread import (
    _NUMBER,
    BATCH_BYTES,
    STRING,
    Column,
    Digest,
    Source,
    _arrow_values,
    _column_from_arrow,
    _kernel_values,
    _numpy_values,
    _one_line,
    _Retry,
    _stat,
)

__all__ = ["CSV_STEP", "CsvSource", "ParquetSource", "ZarrSource"]

#: a block reads its Parquet rows in Arrow batches of about this many bytes
READ_BYTES = 4 << 20
#: a CSV source records the byte offset of every CSV_STEP-th row (at least)
CSV_STEP = 1024
#: at most this many offsets are kept (the step doubles past it): the source stays small
MAX_OFFSETS = 65_536


# --------------------------------------------------------------------------- Parquet


class ParquetSource(Source):
    """A Parquet file: blocks read only the row groups they overlap."""

    kind = "parquet"

    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.size, self.mtime_ns = _stat(path)
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise SpaceError(
                f"Table: {path!r} is not a Parquet file ({_one_line(e)}); give a Parquet file, or "
                "a path ending in .csv if it is CSV text"
            ) from None
        meta = pf.metadata
        self.rows = int(meta.num_rows)
        sizes = [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        byte_size = sum(int(meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups))
        self.bytes_per_row = byte_size / max(1, self.rows)
        schema = pf.schema_arrow
        names = list(schema.names)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(
                f"Table: duplicated column(s) {dup} in {path!r}; each parameter needs one column"
            )
        # the index pandas wrote beside the columns is not a column (pandas reads it back as
        # the index), unless it is named in columns=
        index = (schema.pandas_metadata or {}).get("index_columns", [])
        self._index = {c for c in index if isinstance(c, str)}
        self._all: dict[str, Column] = {}
        self._unsupported: dict[str, str] = {}
        for f in schema:
            try:
                self._all[f.name] = _column_from_arrow(f.name, f.type, repr(path))
            except SpaceError as e:
                if f.name not in self._index:
                    self._unsupported[f.name] = str(e)
        self.columns = {n: c for n, c in self._all.items() if n not in self._index}

    def select(self, names: Sequence[str]) -> None:
        for n in names:
            if n in self._unsupported:
                raise SpaceError(self._unsupported[n])
        self.columns = {**self.columns, **{n: self._all[n] for n in names if n in self._index}}
        super().select(names)
        self._unsupported = {}  # the columns left out may have any type

    def check_types(self) -> None:
        """Every column kept is one a parameter can be (called once the columns are chosen)."""
        if self._unsupported:
            raise SpaceError(next(iter(self._unsupported.values())))

    def batch_rows(self) -> int:
        return int(max(256, min(1 << 20, BATCH_BYTES // max(1.0, self.bytes_per_row))))

    def _iter(self, groups: list[int], batch_rows: int | None = None) -> Iterator[Any]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        yield from pf.iter_batches(
            batch_size=batch_rows or self.batch_rows(),
            row_groups=groups,
            columns=list(self.columns),
            use_threads=False,
        )

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        groups = [g for g in range(len(self.group_starts) - 1) if self.group_starts[g] < stop]
        yield from _rows_of(self._iter(groups) if groups else (), stop, self.columns)

    def _chunks(self) -> Iterator[tuple[str, Any]]:
        """``(column, column chunk metadata)`` of every row group, for the columns kept."""
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for j in range(group.num_columns):
                chunk = group.column(j)
                name = chunk.path_in_schema.split(".")[0]
                if name in self.columns:
                    yield name, chunk

    def column_stats(self) -> tuple[int, dict[str, int | None]]:
        """From the file's metadata, in one read: the uncompressed bytes of the columns
        kept, and each one's missing values as the row groups' statistics count them
        (None for a column whose statistics do not all say)."""
        size = 0
        nulls: dict[str, int | None] = dict.fromkeys(self.columns, 0)
        for name, chunk in self._chunks():
            size += int(chunk.total_uncompressed_size)
            stats = chunk.statistics
            if nulls[name] is None or stats is None or not stats.has_null_count:
                nulls[name] = None
            else:
                nulls[name] = int(nulls[name] or 0) + int(stats.null_count)
        return size, nulls

    def read_rows(self) -> int:
        """Rows per Arrow batch when a block reads its rows: about :data:`READ_BYTES`."""
        return int(max(16, min(1 << 20, READ_BYTES // max(1.0, self.bytes_per_row))))

    def read(self, start: int, stop: int, digest: bool = False, objects: Sequence[str] = ()) -> Any:
        """Rows ``start:stop`` as the kernel gets them; with ``digest``, also the
        digest of each column's values in them (:meth:`rows_digest`).

        The text columns named in ``objects`` come as an object array of Python strings
        (what a per-sample kernel gets of each sample either way), not a ``StringDType``
        array: the text is not copied once more.
        """
        n = stop - start
        hashes = Digest(self.columns) if digest else None
        pieces: dict[str, list[Any]] = {c: [] for c in self.columns}
        for rows, part in self.arrow_parts(start, stop):
            if hashes is not None:
                hashes.update(rows, part)
            for c, col in self.columns.items():
                values = part[c][0]
                pieces[c].append(values.to_pylist() if col.is_str else values)
        out = {c: _joined(pieces[c], col, n, c in objects) for c, col in self.columns.items()}
        return out if hashes is None else (out, _record_sums(hashes))

    def rows_digest(self, start: int, stop: int) -> dict[str, str]:
        """Each column's digest over rows ``start:stop``, as a block's record keeps it
        (the rows are digested, not made into the kernel's values)."""
        hashes = Digest(self.columns)
        for rows, part in self.arrow_parts(start, stop):
            hashes.update(rows, part)
        return _record_sums(hashes)

    def arrow_parts(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Rows ``start:stop`` in Arrow batches of about :data:`READ_BYTES`, as the scan
        handles them: ``(rows, {column: (values, nulls)})``.

        Batches this size decode faster than one batch of a whole block (a third less
        time for a block of 77 MB of text: no buffer grows to the block's size), and a
        block's text is never combined into one array (a copy).
        """
        self.check_unchanged()
        g0 = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        g1 = int(np.searchsorted(self.group_starts, stop, side="left"))
        row = int(self.group_starts[g0])
        if stop <= start:
            return
        # a short read (the probe's first rows) decodes no more than it needs; the rows
        # before ``start`` in its first row group are decoded anyway (in batches that size)
        for batch in self._iter(list(range(g0, g1)), min(self.read_rows(), stop - row)):
            lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
            if hi > lo:
                part = batch.slice(lo, hi - lo)
                yield hi - lo, {c: _arrow_values(part.column(c), col) for c, col in self.columns.items()}
            row += batch.num_rows
            if row >= stop:
                break


def _record_sums(hashes: Digest) -> dict[str, str]:
    """Each column's digest as a block's record keeps it (32 hex digits)."""
    return {c: h[:32] for c, h in hashes.final().columns.items()}


def _joined(pieces: list[Any], col: Column, n: int, objects: bool) -> np.ndarray:
    """A column's values in a block from its batches' (Python lists for text, NumPy
    arrays for numbers): text as a ``StringDType`` array, or with ``objects`` an object
    array of the strings themselves."""
    if col.is_str:
        text = pieces[0] if len(pieces) == 1 else [s for p in pieces for s in p]
        if objects:
            out = np.empty(len(text), dtype=object)
            out[:] = text
        else:
            out = np.array(text, dtype=STRING) if text else np.empty(0, dtype=STRING)
        return out.reshape((n, *col.core_shape))
    if not pieces:
        return np.empty((0, *col.core_shape), col.dtype)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


# --------------------------------------------------------------------------- CSV


def _rows_of(
    batches: Any, stop: int | None, columns: Mapping[str, Column]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(rows, {column: values})`` of each Arrow record batch, up to row ``stop``."""
    row = 0
    for batch in batches:
        n = batch.num_rows if stop is None else min(batch.num_rows, stop - row)
        if n <= 0:
            break
        if n < batch.num_rows:
            batch = batch.slice(0, n)
        yield n, {c: _arrow_values(batch.column(c), col) for c, col in columns.items()}
        row += n


def _csv_type(typ: Any) -> Any:
    """The type a CSV column is read as, from what the first rows suggest."""
    import pyarrow as pa

    if pa.types.is_integer(typ):
        return pa.int64()
    if pa.types.is_null(typ) or pa.types.is_floating(typ):
        return pa.float64()
    if pa.types.is_boolean(typ):
        return pa.bool_()
    return pa.large_string()


def _csv_options(names: Sequence[str] | None, types: Mapping[str, Any], include: Sequence[str], block: int):
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(
        block_size=block, use_threads=True, column_names=list(names) if names is not None else None
    )
    parse = pcsv.ParseOptions(newlines_in_values=True)
    convert = pcsv.ConvertOptions(
        column_types=dict(types), include_columns=list(include), strings_can_be_null=False
    )
    return read, parse, convert


class CsvSource(Source):
    """A CSV file: one scan records the byte offset of every ``step``-th row; a block
    parses only the bytes from the offset before its first row to the one after its last."""

    kind = "csv"

    def __init__(self, path: str) -> None:
        import pyarrow.csv as pcsv

        self.path = path
        self.size, self.mtime_ns = _stat(path)
        self._scan_offsets()
        try:
            reader = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=self.block_size),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(strings_can_be_null=False),
            )
            schema = reader.schema
            reader.close()
        except Exception as e:
            raise SpaceError(f"Table: cannot parse {path!r} as CSV: {_one_line(e)}") from None
        names = list(schema.names)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(
                f"Table: duplicated column(s) {dup} in {path!r}; each parameter needs one column"
            )
        self.names = names
        self.types = {f.name: _csv_type(f.type) for f in schema}
        self.columns = {n: _column_from_arrow(n, t, repr(path)) for n, t in self.types.items()}

    def _scan_offsets(self) -> None:
        """Rows (non-empty lines after the header, quotes honoured), the byte offset of
        every step-th, and the longest line: one streaming pass over the bytes."""
        chunk_size = 8 << 20
        offsets: list[np.ndarray] = []
        count, quotes, pos, prev, longest = 0, 0, 0, 0, 0
        carry = False  # a line starts right after the previous chunk's last byte
        with open(self.path, "rb") as f:
            while buf := f.read(chunk_size):
                data = np.frombuffer(buf, dtype=np.uint8)
                nl = np.flatnonzero(data == 10)
                q = np.flatnonzero(data == 34)
                if q.size:  # a newline inside quotes is part of a value
                    nl = nl[((np.searchsorted(q, nl) + quotes) & 1) == 0]
                quotes = (quotes + q.size) & 1
                starts = nl + 1
                if carry:
                    starts = np.concatenate([[0], starts])
                carry = bool(starts.size) and int(starts[-1]) == data.size
                if carry:
                    starts = starts[:-1]
                if starts.size:
                    glob_starts = starts.astype(np.int64) + pos
                    longest = max(
                        longest, int(glob_starts[0]) - prev, int(np.diff(glob_starts).max(initial=0))
                    )
                    prev = int(glob_starts[-1])
                    real = glob_starts[~np.isin(data[starts], (10, 13))]  # empty lines do not count
                    if real.size:
                        idx = count + np.arange(real.size)
                        offsets.append(real[idx % CSV_STEP == 0])
                        count += int(real.size)
                pos += data.size
        longest = max(longest, self.size - prev)
        offs = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        step = CSV_STEP
        while offs.size > MAX_OFFSETS:
            offs, step = offs[::2], step * 2
        self.offsets, self.step, self.rows = offs, step, count
        # a parse block must hold whole rows: more than twice the longest line
        self.block_size = int(max(1 << 20, min(1 << 30, 2 * longest + (1 << 16))))

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        read, parse, convert = _csv_options(None, self.types, list(self.columns), self.block_size)
        try:
            reader = pcsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)
            yield from _rows_of(reader, stop, self.columns)
        except pa.ArrowInvalid as e:
            self._revise(e)
            raise _Retry() from None

    def _revise(self, error: Exception) -> None:
        """A value that does not fit its column's type: widen it (int → float → text)."""
        import pyarrow as pa

        text = str(error)
        m = re.search(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+)", text)
        if m is None:
            raise SpaceError(f"Table: cannot parse {self.path!r} as CSV: {_one_line(text)}") from None
        name = self.names[int(m.group(1))]
        bad = re.search(r"invalid value '(.*)'", text)
        value = bad.group(1) if bad else ""
        old = self.types[name]
        new = pa.large_string()
        if pa.types.is_integer(old) and re.match(_NUMBER, value, re.IGNORECASE):
            new = pa.float64()
        if old == new:  # pragma: no cover - a string column does not fail to convert
            raise SpaceError(f"Table: cannot parse {self.path!r} as CSV: {_one_line(text)}")
        self.widen(name, new)

    def widen(self, name: str, typ: Any) -> None:
        self.types[name] = typ
        if name in self.columns:
            self.columns[name] = _column_from_arrow(name, typ, repr(self.path))

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        self.check_unchanged()
        i0 = start // self.step
        i1 = -(-stop // self.step)
        lo = int(self.offsets[i0])
        hi = int(self.offsets[i1]) if i1 < self.offsets.size else self.size
        with open(self.path, "rb") as f:
            f.seek(lo)
            data = f.read(hi - lo)
        read, parse, convert = _csv_options(self.names, self.types, list(self.columns), self.block_size)
        read.use_threads = False
        table = pcsv.read_csv(
            pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert
        )
        skip = start - i0 * self.step
        table = table.slice(skip, stop - start)
        n = stop - start
        if table.num_rows != n:
            raise SpaceError(
                f"Table: rows {start}-{stop - 1} of {self.path!r} are not where its scan found them; "
                "it changed since the table was read: make the Table again"
            )
        return {
            c: _kernel_values(_arrow_values(table.column(c), col)[0], col, n)
            for c, col in self.columns.items()
        }


# --------------------------------------------------------------------------- Zarr


def _zarr_dataset(path: str) -> Any:
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        # a store without consolidated metadata is fine for a table
        warnings.simplefilter("ignore", RuntimeWarning)
        return xr.open_zarr(path)


def _tree_stat(path: str) -> tuple[int, int]:
    size, mtime = 0, 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            size += int(st.st_size)
            mtime = max(mtime, int(st.st_mtime_ns))
    return size, mtime


class ZarrSource(Source):
    """A Zarr store opened lazily with xarray: a block reads its rows with ``isel``.

    The columns are its data variables and its coordinates along the sample dim
    (``sample`` if it has one, else the first dim of the first variable that has
    dims); the sample dim's own coordinate (its index) only when named in ``columns=``.
    """

    kind = "zarr"

    def __init__(self, path: str) -> None:
        self.path = path
        self.size, self.mtime_ns = _tree_stat(path)
        try:
            ds = _zarr_dataset(path)
        except Exception as e:
            raise SpaceError(f"Table: cannot open {path!r} as a Zarr store ({_one_line(e)})") from None
        if not ds.data_vars:
            raise SpaceError(f"Table: the Zarr store {path!r} has no data variables")
        first = next((v for v in ds.data_vars.values() if v.dims), None)
        if first is None:
            raise SpaceError(f"Table: the variables of {path!r} need a sample dim (name it 'sample')")
        self.sdim = str("sample" if "sample" in ds.dims else first.dims[0])
        # 'sample' need not be the first variable's dim
        first = next((v for v in ds.data_vars.values() if self.sdim in v.dims), first)
        self.rows = int(ds.sizes[self.sdim])
        # the sample dim's own coordinate (xarray's index, a station's name say) is a column
        # only when named in columns=, as the index pandas writes into a Parquet file
        self._index = {self.sdim} if self.sdim != "sample" and self.sdim in ds.coords else set()
        names = [
            *ds.data_vars,
            *(c for c in ds.coords if c not in ds.dims and self.sdim in ds[c].dims),
            *self._index,
        ]
        self._all: dict[str, Column] = {}
        self._unsupported: dict[str, str] = {}
        for name in names:
            var = ds[name]
            if self.sdim not in var.dims:
                self._unsupported[str(name)] = (
                    f"Table: variable {name!r} of {path!r} has dims {var.dims}, without the sample dim "
                    f"{self.sdim!r} (its dim 'sample', else the first dim of its first variable); name "
                    "the sample dim 'sample' in the store, or leave the variable out with columns=[...]"
                )
                continue
            var = var.transpose(self.sdim, ...)
            kind = var.dtype.kind
            if kind in "UTO":
                dtype: np.dtype = STRING
            elif kind in "biuf":
                dtype = var.dtype
            else:
                why = (
                    f"Table: column {str(name)!r} of {path!r} has type {var.dtype}; a parameter column "
                    "holds numbers, booleans or text (cast it, or leave it out with columns=[...])"
                )
                if name not in self._index:
                    self._unsupported[str(name)] = why
                else:
                    self._index_unsupported = why
                continue
            dims = tuple(str(d) for d in var.dims[1:])
            self._all[str(name)] = Column(str(name), dtype, tuple(int(s) for s in var.shape[1:]), dims)
        self.columns = {n: c for n, c in self._all.items() if n not in self._index}
        chunks = first.chunks[first.dims.index(self.sdim)] if first.chunks else None
        self.chunk = int(chunks[0]) if chunks else 0

    _index_unsupported = ""

    def select(self, names: Sequence[str]) -> None:
        for n in names:
            if n in self._unsupported:
                raise SpaceError(self._unsupported[n])
            if n in self._index and n not in self._all and self._index_unsupported:
                raise SpaceError(self._index_unsupported)
        self.columns = {
            **self.columns,
            **{n: self._all[n] for n in names if n in self._index and n in self._all},
        }
        super().select(names)
        self._unsupported = {}  # the columns left out may have any type

    def check_types(self) -> None:
        """Every column kept is one a parameter can be (called once the columns are chosen)."""
        if self._unsupported:
            raise SpaceError(next(iter(self._unsupported.values())))

    def files(self) -> list[tuple[str, int, int]]:
        return [(self.path, self.size, self.mtime_ns)]

    def check_unchanged(self) -> None:  # a walk of every chunk file is too dear per block
        pass

    def _rows(self, ds: Any, start: int, stop: int) -> dict[str, np.ndarray]:
        part = ds[list(self.columns)].isel({self.sdim: slice(start, stop)})
        return {n: np.asarray(part[n].transpose(self.sdim, ...).values) for n in self.columns}

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        step = self.batch_rows()
        if self.chunk:
            step = max(self.chunk, step // self.chunk * self.chunk)
        ds = _zarr_dataset(self.path)
        for lo in range(0, stop, step):
            hi = min(stop, lo + step)
            values = self._rows(ds, lo, hi)
            yield hi - lo, {n: _numpy_values(values[n], col) for n, col in self.columns.items()}

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        ds = _zarr_dataset(self.path)
        if int(ds.sizes[self.sdim]) != self.rows:
            raise SpaceError(
                f"Table: the Zarr store {self.path!r} changed since the table was read ({self.rows} "
                f"rows then, {int(ds.sizes[self.sdim])} now); make the Table again"
            )
        out = {}
        for n, v in self._rows(ds, start, stop).items():
            out[n] = (
                np.asarray(v, dtype=STRING) if self.columns[n].is_str else v.astype(self.columns[n].dtype)
            )
        return out
