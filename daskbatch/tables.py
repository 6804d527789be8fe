"""Tables of parameter sets: :class:`Table`, one sample per row.

A table comes from an :class:`xarray.Dataset`, a :class:`pandas.DataFrame` or a dict
of arrays (held in memory: a block task carries its rows), or from a path: a CSV,
Parquet or Zarr file, or a folder or glob of them, read where it is
(:mod:`daskbatch.sources`: the driver reads metadata and streams the table once to
check it and compute its digest; each block reads its own rows in the worker). A
Parquet file over ``daskbatch.table.scan-up-to`` bytes of column data is checked from
its metadata and its float columns instead, and digested block by block: each block
records the digest of the rows it read, which a rerun on a changed file compares.

Every column is checked when the table is made: numbers, booleans or strings, no
NaN or inf, one value per row. Text is never padded: it reaches the kernel as a
NumPy :class:`~numpy.dtypes.StringDType` array (a Python ``str`` per sample).

A column the kernel does not take is a *label*: it is not passed to the kernel,
and the store keeps it as a coordinate along ``sample``. The columns of a table read
from files are referenced, not copied (``copy=True`` stores them too): the store's
space spec names the input (path, size, modification time, rows, columns and their
types, content digest).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError
from .sources import MultiSource, opened
from .spacebase import Param, Space
from .tableread import STRING, Source, checkpoint_rows, prefix_digests

__all__ = ["READS", "Table"]

#: the rows (start, stop) this process read from tables read where they are, the last
#: 1,000 (a driver reads only the probe's first rows; workers read their blocks)
READS: list[tuple[int, int]] = []


def _as_strings(values: np.ndarray, name: str) -> np.ndarray | None:
    """``values`` as a StringDType array if they are all text; None if they are not text."""
    if values.dtype.kind in "UT":
        return values.astype(STRING)
    if values.dtype.kind != "O":
        return None
    kinds = {type(v).__name__ for v in values.ravel()}
    if kinds <= {"str"}:
        return values.astype(STRING)
    raise SpaceError(
        f"Table: column {name!r} holds values of types {sorted(kinds)}; "
        "a parameter must be all numbers or all strings"
    )


def _load_table(data: Any) -> dict[str, Any]:
    """Read a table into ``{name: array}`` (or ``(array, core dims)``) with the sample dim first.

    A path is read whole, into memory (only to rebuild a store's table recorded before
    tables were read where they are; :class:`Table` reads paths lazily).
    """
    import pandas as pd
    import xarray as xr

    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise SpaceError(f"Table: file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            data = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            data = pd.read_parquet(path)
        elif suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                data = xr.open_zarr(path).load()
        else:
            raise SpaceError(f"Table: cannot read {str(path)!r}; give a .csv, .parquet or .zarr path")
    if isinstance(data, pd.DataFrame):
        dup = data.columns[data.columns.duplicated()].tolist()
        if dup:
            raise SpaceError(f"Table: duplicated column(s) {dup}; each parameter needs one column")
        if len(data) == 0:
            raise SpaceError("Table: the table has no rows")
        out: dict[str, Any] = {}
        for c in data.columns:
            col = data[c]
            if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
                values = col.to_numpy(dtype=object)
                kinds = {type(v).__name__ for v in values}
                if kinds <= {"str"}:
                    out[c] = values.astype(STRING)
                    continue
                missing = next(
                    (
                        i
                        for i, v in enumerate(values)
                        if v is None or v is pd.NA or (isinstance(v, float) and v != v)
                    ),
                    None,
                )
                if missing is not None:
                    raise SpaceError(
                        f"Table: column {c!r} has a missing value (first: row {missing}: "
                        f"{values[missing]!r}); a parameter needs a value in every row: fill it "
                        "(DataFrame.fillna) or drop the row"
                    )
                # the first value of another kind than the first row's (text, or numbers)
                first_is_text = isinstance(values[0], str)
                bad = next(
                    i
                    for i, v in enumerate(values)
                    if isinstance(v, str) != first_is_text or not isinstance(v, str | int | float)
                )
                raise SpaceError(
                    f"Table: column {c!r} mixes numbers and text (row {bad}: {values[bad]!r}); "
                    "a parameter column must be all numbers or all strings"
                )
            out[c] = col.to_numpy()
        return out
    if isinstance(data, xr.Dataset):
        if not data.data_vars:
            raise SpaceError("Table: the Dataset has no data variables")
        first = next(iter(data.data_vars.values()))
        if not first.dims:
            raise SpaceError("Table: Dataset variables need a sample dim")
        sdim = "sample" if "sample" in data.dims else first.dims[0]
        out = {}
        # its variables, and its coordinates along the sample dim that are not a dim's own
        names = [*data.data_vars, *(c for c in data.coords if c not in data.dims and sdim in data[c].dims)]
        for name in names:
            var = data[name]
            if sdim not in var.dims:
                raise SpaceError(
                    f"Table: variable {name!r} has dims {var.dims}, without the sample dim {sdim!r}"
                )
            v = var.transpose(sdim, ...)
            out[str(name)] = (np.asarray(v.values), tuple(str(d) for d in v.dims[1:]))
        return out
    if isinstance(data, Mapping):
        return {k: np.asarray(v) for k, v in data.items()}
    raise SpaceError(
        f"Table: data of type {type(data).__name__} is not supported; give an xarray.Dataset, "
        "a pandas.DataFrame, a dict of arrays, or a path to a .csv, .parquet or .zarr file "
        "(or a folder or glob of them)"
    )


def _legacy_digest(data: Mapping[str, np.ndarray], rows: int | None = None) -> str:
    """The digest of a table held in memory (over its first ``rows`` rows), as it has
    always been computed: text as if padded to its longest string, so that stores
    made before text stopped being padded keep their fingerprint."""
    h = hashlib.sha256()
    for n in sorted(data):
        a = np.ascontiguousarray(data[n] if rows is None else data[n][:rows])
        if a.dtype.kind == "T":
            width = int(np.strings.str_len(a).max(initial=0)) if a.size else 0
            h.update(n.encode() + str(np.dtype(f"<U{max(1, width)}")).encode() + str(a.shape).encode())
            h.update("\x00".join(a.ravel().tolist()).encode())
        else:
            h.update(n.encode() + str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _check_column_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        sep = next((c for c in (";", "\t", "|") if isinstance(name, str) and c in name), None)
        hint = (
            f" (is the file {sep!r}-separated? A CSV file is read comma-separated: write it with commas)"
            if sep
            else ""
        )
        raise SpaceError(
            f"Table: column name {name!r} must be a valid Python identifier (a parameter is passed "
            f"to the kernel as a keyword argument); rename it, or leave it out with columns=[...]{hint}"
        )


def _check_columns(columns: Any) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
        raise SpaceError(
            f"Table: columns={columns!r} must be a list of column names, e.g. columns=['x', 'label']"
        )
    bad = [c for c in columns if not isinstance(c, str)]
    if bad:
        raise SpaceError(f"Table: columns: {bad[0]!r} is not a column name (a string)")
    dup = sorted({c for c in columns if list(columns).count(c) > 1})
    if dup:
        raise SpaceError(f"Table: columns names {dup} more than once; name each column once")
    return list(columns)


def _first_change(
    checkpoints: list[tuple[int, str]], now: Mapping[int, str], old_rows: int
) -> tuple[int, int]:
    """The first range of rows (first, last; 0-based) whose prefix digest differs."""
    prev = 0
    for r, old in sorted(checkpoints):
        if r > old_rows:
            break
        if now.get(r, "")[: len(old)] != old:
            return prev, r - 1
        prev = r
    return prev, old_rows - 1


def _rows_text(lo: int, hi: int) -> str:
    return f"row {lo} changed" if lo == hi else f"a row among rows {lo}-{hi} changed"


class Table(Space):
    """One sample per row of a table.

    Parameters
    ----------
    data
        An :class:`xarray.Dataset` (a variable may carry core dims, e.g.
        ``resistivity`` with dims ``(sample, layer)``; coordinates along the sample
        dim are columns too), a :class:`pandas.DataFrame`, a dict of arrays (2-D
        arrays get a core dim ``<name>_dim``), or a path: a CSV, Parquet or Zarr file,
        a folder of such files, or a glob such as ``"runs/*.parquet"`` (its files in
        path order make one table). A path is read where it is: the driver streams it
        once (to check it and compute its digest), each block reads its own rows in
        the worker. A Parquet file over ``daskbatch.table.scan-up-to`` bytes (64 MiB)
        of column data is not streamed: its metadata and float columns are checked,
        and each block digests the rows it reads.
    columns
        The columns to use (default: all). A column that is missing is an error.
    copy
        For a table read from files: also store its columns in the store (by default
        they are referenced: the store records the input's path, size, modification
        time, columns and content digest). A table held in memory is always stored.

    Notes
    -----
    A column the kernel does not take (and the kernel has no ``**kwargs``) is a
    *label*: it is not passed to the kernel, and the store keeps it as a coordinate
    along ``sample`` (``daskbatch.open`` shows it as one), for tables read from files
    too. Text columns reach the kernel as NumPy ``StringDType`` arrays: never padded,
    a ``str`` per sample.

    Examples
    --------
    >>> t = Table({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "c"]})
    >>> t.batch_shape
    (3,)
    >>> t.block((slice(0, 2),))["label"].tolist()
    ['a', 'b']
    """

    batch_dims = ("sample",)

    def __init__(self, data: Any, *, columns: Sequence[str] | None = None, copy: bool = False) -> None:
        if not isinstance(copy, bool):
            raise SpaceError(f"Table: copy={copy!r} must be True (store the columns too) or False")
        names = _check_columns(columns)
        self.copy = copy
        self._reader: Source | None = None
        self._whole: dict[str, np.ndarray] | None = None
        self._spec: dict[str, Any] | None = None
        if isinstance(data, str | os.PathLike):
            self._open(data, names)
        else:
            self._source: str | None = None
            self._load(_load_table(data), names)

    # ------------------------------------------------------------------ making it

    def _open(self, path: str | os.PathLike[str], names: list[str] | None) -> None:
        found = opened(path, names)
        reader = found.source
        self._reader, self._scan, self._source = reader, found.result, reader.path
        self.carries_rows = False
        if not reader.columns:
            raise SpaceError(f"Table: {reader.where} has no columns; give at least one parameter")
        if reader.rows == 0:
            raise SpaceError(f"Table: {reader.where} has no rows")
        self.params = {}
        for name, col in reader.columns.items():
            _check_column_name(name)
            self.params[name] = Param(
                name,
                ("sample", *col.core_dims),
                col.core_shape,
                col.dtype,
                stored=self.copy,
                optional=True,
            )
        self.batch_shape = (int(reader.rows),)

    def _load(self, loaded: dict[str, Any], names: list[str] | None) -> None:
        self.carries_rows = True
        if not loaded:
            raise SpaceError("Table: no columns; give at least one parameter")
        if names is not None:
            missing = [n for n in names if n not in loaded]
            if missing:
                raise SpaceError(
                    f"Table: column {missing[0]!r} is not in the table; its columns are {list(loaded)}"
                )
            loaded = {n: loaded[n] for n in names}
        self._data: dict[str, np.ndarray] = {}
        self.params = {}
        n_rows = None
        for name, item in loaded.items():
            _check_column_name(name)
            arr, core_dims = item if isinstance(item, tuple) else (item, None)
            arr = np.asarray(arr)
            if arr.ndim == 0:
                raise SpaceError(f"Table: column {name!r} is a scalar; give one value per row")
            if arr.shape[0] == 0:
                raise SpaceError("Table: the table has no rows")
            if core_dims is None:
                core_dims = tuple(
                    f"{name}_dim{i}" if arr.ndim > 2 else f"{name}_dim" for i in range(arr.ndim - 1)
                )
            text = _as_strings(arr, name)
            if text is not None:
                arr = text
            if arr.dtype.kind not in "biufT":
                raise SpaceError(f"Table: column {name!r} has unsupported type {arr.dtype}")
            if n_rows is None:
                n_rows = arr.shape[0]
            elif arr.shape[0] != n_rows:
                raise SpaceError(f"Table: column {name!r} has {arr.shape[0]} rows, others have {n_rows}")
            if arr.dtype.kind in "fc":
                bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise SpaceError(
                        f"Table: column {name!r} has {int(bad.sum())} row(s) with NaN or inf "
                        f"(first: row {row}, value {arr[row].tolist()!r}); "
                        "drop or fill them before running"
                    )
            self._data[name] = arr
            self.params[name] = Param(name, ("sample", *core_dims), arr.shape[1:], arr.dtype, optional=True)
        if not n_rows:
            raise SpaceError("Table: the table has no rows")
        self.batch_shape = (int(n_rows),)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> Table:
        """The table a :meth:`spec` (or a spec file's ``[space]`` table) describes.

        ``path`` (relative to ``base_dir``), and optionally ``columns`` (a list of
        names, or the spec's ``{name: dims}``) and ``copy``. With a ``sha256``, the
        input must still have that content.
        """
        path = spec.get("path")
        if not isinstance(path, str):
            raise SpaceError("space.path: a table space needs path = 'inputs.csv' (or .parquet, .zarr)")
        p = Path(path).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir) / p
        columns = spec.get("columns")
        names = list(columns) if isinstance(columns, Mapping | list | tuple) else None
        if columns is not None and names is None:
            raise SpaceError(f"space.columns: {columns!r} must be a list of column names")
        expected = spec.get("sha256")
        if expected is not None and "source" not in spec:
            # a store's table recorded when tables were read whole: read it so again
            table = cls(_load_table(p), columns=names)
            table._source = str(p.resolve())
        elif expected is not None and spec.get("digest") != "blocks":
            # a digest of the contents to match: the table is read whole, however large
            import dask

            with dask.config.set({"daskbatch.table.scan-up-to": 1 << 62}):
                table = cls(p, columns=names, copy=spec.get("copy", False))
        else:
            table = cls(p, columns=names, copy=spec.get("copy", False))
        if spec.get("digest") == "blocks":
            expected = None  # the file's state; a run compares the blocks' digests
        if expected is not None and table.spec()["sha256"] != expected:
            raise SpaceError(
                f"space.path: the file {str(p)!r} changed since the run started (its contents hash "
                "differs); restore it, or start a new store"
            )
        return table

    # ------------------------------------------------------------------ reading it

    @property
    def source(self) -> str | None:
        """The path (or pattern) the table is read from; None for a table held in memory."""
        return self._source

    @property
    def data(self) -> dict[str, np.ndarray]:
        """Every column, whole (read from the files for a table read where it is)."""
        if self._reader is None:
            return self._data
        if self._whole is None:
            READS.append((0, self._reader.rows))
            self._whole = self._reader.read(0, self._reader.rows)
        return self._whole

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_whole"] = None  # a worker reads its own rows
        state.pop("_daskbatch_extension", None)
        return state

    @property
    def block_multiple(self) -> int | None:
        """The rows the table's file is read in, when every piece but the last has as many
        (a Parquet file's row groups): ``chunk_size="auto"`` cuts blocks that share none."""
        starts = getattr(self._reader, "group_starts", None)
        if starts is None or len(starts) < 3:
            return None
        sizes = np.diff(starts)
        return int(sizes[0]) if (sizes[:-1] == sizes[0]).all() and sizes[-1] <= sizes[0] else None

    def to_dask(self, chunks):
        import dask
        import dask.array as da

        (c,) = chunks
        if self._reader is None:
            return {n: da.from_array(a, chunks=(c, *a.shape[1:])) for n, a in self._data.items()}
        out = {}
        starts = np.concatenate([[0], np.cumsum(c)]).tolist()
        read = dask.delayed(lambda s, e, n: self._reader.read(s, e)[n], pure=True)  # type: ignore[union-attr]
        for n, p in self.params.items():
            parts = [
                da.from_delayed(read(s, e, n), shape=(e - s, *p.core_shape), dtype=p.dtype)
                for s, e in itertools.pairwise(starts)
            ]
            out[n] = da.concatenate(parts)
        return out

    def block(self, slices):
        (s,) = slices
        if self._reader is None:
            return {n: a[s] for n, a in self._data.items()}
        return self._reader.read(*self._rows(s))

    def _rows(self, s: slice) -> tuple[int, int]:
        """The rows ``s`` selects, recorded in :data:`READS` (read by this process)."""
        start, stop, _ = s.indices(self.batch_shape[0])
        READS.append((start, stop))
        del READS[:-1000]
        return start, stop

    def read_whole(self) -> Table:
        """This table as one not digested block by block: streamed whole by the driver when
        made (checked, and identified by its contents). Itself when it is so already.

        A store made from such a table compares the table so on every rerun (its blocks
        keep no digests), and the configurations of a ``Product`` are read whole anyway.
        """
        if self._reader is None or not self._scan.by_blocks:
            return self
        import dask

        with dask.config.set({"daskbatch.table.scan-up-to": 1 << 62}):
            return Table(self._source, columns=list(self._reader.columns), copy=self.copy)  # type: ignore[arg-type]

    @property
    def digests_rows(self) -> bool:
        """Whether each block records the digest of the rows it reads (a Parquet file)."""
        return callable(getattr(self._reader, "rows_digest", None))

    def block_with_digest(
        self, slices, objects: Sequence[str] = ()
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:meth:`block`, and the digest of its rows that its record keeps:
        ``{"rows": [first, stop], "sha256": {column: digest}}``. The text columns named
        in ``objects`` come as object arrays of Python strings (for a per-sample kernel)."""
        (s,) = slices
        start, stop = self._rows(s)
        values, sums = self._reader.read(start, stop, digest=True, objects=objects)  # type: ignore[union-attr, call-arg]
        return values, {"rows": [start, stop], "sha256": sums}

    def head(self, n: int) -> Table:
        import xarray as xr

        rows = self.block((slice(0, max(1, min(n, self.batch_shape[0]))),))
        return Table(xr.Dataset({k: (self.params[k].dims, a) for k, a in rows.items()}))

    # ------------------------------------------------------------------ describing it

    def spec(self):
        if self._spec is not None:
            return dict(self._spec)
        if self._reader is None:
            rows = self.batch_shape[0]
            out: dict[str, Any] = {
                "type": "table",
                "rows": rows,
                "columns": {n: list(p.dims) for n, p in self.params.items()},
                "sha256": _legacy_digest(self._data),
                "prefix": [[r, _legacy_digest(self._data, r)[:16]] for r in checkpoint_rows(rows)[:-1]],
            }
            if self._source is not None:
                out["path"] = self._source
        else:
            reader, scan = self._reader, self._scan
            files = reader.files()
            out = {
                "type": "table",
                "source": reader.kind,
                "path": self._source,
                "size": sum(f[1] for f in files),
                "mtime_ns": max(f[2] for f in files),
                "rows": int(reader.rows),
                "columns": {n: list(p.dims) for n, p in self.params.items()},
                "dtypes": {n: c.type_name for n, c in reader.columns.items()},
                "copy": self.copy,
                "sha256": scan.sha256,
            }
            if scan.by_blocks:  # the contents are digested block by block, by the workers
                out["digest"] = "blocks"
            else:
                out["column_sha256"] = dict(scan.columns)
                out["prefix"] = [list(p) for p in scan.prefix]
            if isinstance(reader, MultiSource):
                out["files"] = [list(f) for f in files]
        self._spec = out
        return dict(out)

    def extension_of(
        self, old_spec: Mapping[str, Any], blocks: Sequence[tuple[int, int, Any]] | None = None
    ) -> str | None:
        """None when this table is the table ``old_spec`` describes with rows added at
        the end (every old row unchanged); else a one-line reason naming the difference.

        The old rows are compared through digests: this table's first rows are
        hashed as the old table was (for a table read from files, one pass over
        them), and the prefix digests the spec keeps locate a changed row.

        A table whose contents were left to the blocks (``"digest": "blocks"``, a large
        Parquet file) is compared through ``blocks``, the store's committed blocks as
        :meth:`~daskbatch.ledger.BlockLedger.input_digests` gives them: only the rows
        the store holds results of must be unchanged, and they are found by block.
        There, None also answers a table with as many rows, all unchanged (its file
        was touched, copied or rewritten).
        """
        old = dict(old_spec)
        if old.get("type") != "table":
            return f"the store's space is a {old.get('type')}, not a table"
        now = self.spec()
        if ("source" in old) != ("source" in now):
            was = f"read from {old.get('path')!r}" if "source" in old else "held in memory"
            is_now = f"read from {self._source!r}" if "source" in now else "held in memory"
            if "source" not in old and "path" in old:
                was = f"read whole from {old['path']!r} by an earlier version"
            return f"the stored table was {was}, this one is {is_now}"
        old_cols, new_cols = dict(old.get("columns") or {}), now["columns"]
        for name in old_cols:
            if name not in new_cols:
                return f"column {name!r} removed"
        for name in new_cols:
            if name not in old_cols:
                return f"column {name!r} added"
        for name, dims in new_cols.items():
            if list(old_cols[name]) != list(dims):
                return f"column {name!r} changed dims {old_cols[name]} -> {dims}"
        for name, typ in (now.get("dtypes") or {}).items():
            was = (old.get("dtypes") or {}).get(name)
            if was is not None and was != typ:
                return f"column {name!r} changed type {was} -> {typ}"
        if "copy" in old and bool(old["copy"]) != self.copy:
            return f"copy={self.copy} now, copy={bool(old['copy'])} when the store was made"
        old_rows, rows = int(old.get("rows") or 0), self.batch_shape[0]
        same = f"it has {rows:,} rows, not more than the stored {old_rows:,}"
        if rows < old_rows:
            return same
        if old.get("digest") == "blocks":
            return self._blocks_unchanged(old, blocks, old_rows)
        # as many rows: still compared, to name the row that changed
        checkpoints = [(int(r), str(h)) for r, h, *_ in old.get("prefix") or [] if int(r) < old_rows]
        checkpoints.append((old_rows, str(old.get("sha256"))))
        if self._reader is None:
            digests = {r: _legacy_digest(self._data, r) for r, _ in checkpoints}
            if digests[old_rows] == old.get("sha256"):
                return None if rows > old_rows else same
            lo, hi = _first_change(checkpoints, digests, old_rows)
            return _rows_text(lo, hi) + " (the stored table's first rows are not this table's)"
        snaps = prefix_digests(self._reader, [r for r, _ in checkpoints])
        if snaps[old_rows].sha256 == old.get("sha256"):
            return None if rows > old_rows else same
        lo, hi = _first_change(checkpoints, {r: s.sha256 for r, s in snaps.items()}, old_rows)
        old_columns = old.get("column_sha256") or {}
        changed = [n for n, h in snaps[old_rows].columns.items() if old_columns.get(n) not in (None, h)]
        text = _rows_text(lo, hi)
        if len(changed) == 1:
            text += f" in column {changed[0]!r}"
            if lo == hi:
                value = self._reader.read(lo, lo + 1)[changed[0]][0]
                text += f" (now {_short_value(value)})"
        elif changed:
            text += f" in columns {changed}"
        return text

    def _blocks_unchanged(
        self, old: Mapping[str, Any], blocks: Sequence[tuple[int, int, Any]] | None, old_rows: int
    ) -> str | None:
        """Whether the rows of the committed ``blocks`` still have the digests they
        recorded (this table's file read again, block by block)."""
        if self._reader is None or not self.digests_rows:
            return "the stored table was digested block by block; this one cannot be"
        if blocks is None:
            return "the stored table's rows are known by its blocks' digests, which were not read"
        for start, stop, sums in blocks:
            stop = min(stop, old_rows)
            if stop <= start:
                continue
            if not sums:
                return (
                    f"rows {start}-{stop - 1} were stored without a digest of their values (by an "
                    "earlier version), so they cannot be compared"
                )
            now = self._reader.rows_digest(start, stop)  # type: ignore[attr-defined]
            changed = [c for c in now if sums.get(c) != now[c]]
            if changed:
                where = f"column {changed[0]!r}" if len(changed) == 1 else f"columns {changed}"
                return f"{_rows_text(start, stop - 1)} in {where}"
        return None


def _short_value(value: Any, limit: int = 60) -> str:
    value = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[-1]
