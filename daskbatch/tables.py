"""Tables of parameter sets: :class:`Table`, one sample per row, and the readers behind it.

A table comes from an :class:`xarray.Dataset`, a :class:`pandas.DataFrame`, a dict
of arrays, or a CSV, Parquet or Zarr file; every column is checked (numbers or
strings, finite, one value per row) when the table is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError
from .spacebase import Param, Space, _check_name

__all__ = ["Table"]


def _load_table(data: Any) -> dict[str, np.ndarray]:
    """Read any supported table into ``{name: array}`` with the sample dim first."""
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
            try:
                data = pd.read_parquet(path)
            except ImportError as e:
                raise SpaceError(
                    "Table: reading Parquet needs pyarrow: pip install 'daskbatch[parquet]'"
                ) from e
        elif suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            import warnings

            with warnings.catch_warnings():
                # a store without consolidated metadata is fine for a table read once
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
        out = {}
        for c in data.columns:
            col = data[c]
            if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
                values = col.to_numpy(dtype=object)
                kinds = {type(v).__name__ for v in values}
                if kinds <= {"str"}:
                    out[c] = values.astype(str)
                    continue
                bad = next(i for i, v in enumerate(values) if not isinstance(v, int | float))
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
        for name, var in data.data_vars.items():
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
        "a pandas.DataFrame, a dict of arrays, or a path to a .csv, .parquet or .zarr file"
    )


class Table(Space):
    """One sample per row of a table.

    Parameters
    ----------
    data
        An :class:`xarray.Dataset` (a variable may carry core dims, e.g.
        ``resistivity`` with dims ``(sample, layer)``), a :class:`pandas.DataFrame`,
        a dict of arrays (2-D arrays get a core dim ``<name>_dim``), or a path to a
        CSV, Parquet or Zarr file.

    Examples
    --------
    >>> t = Table({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "c"]})
    >>> t.batch_shape
    (3,)
    """

    batch_dims = ("sample",)

    def __init__(self, data: Any) -> None:
        self._source = str(Path(data).resolve()) if isinstance(data, str | os.PathLike) else None
        loaded = _load_table(data)
        if not loaded:
            raise SpaceError("Table: no columns; give at least one parameter")
        self.data: dict[str, np.ndarray] = {}
        self.params = {}
        n_rows = None
        for name, item in loaded.items():
            _check_name("Table", name)
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
            if arr.dtype.kind == "T":  # numpy's variable-width strings, as zarr returns them
                arr = np.array(arr.tolist(), dtype=str)
            if arr.dtype.kind == "O":
                kinds = {type(v).__name__ for v in arr.ravel()}
                if kinds <= {"str"}:
                    arr = arr.astype(str)
                else:
                    raise SpaceError(
                        f"Table: column {name!r} holds values of types {sorted(kinds)}; "
                        "a parameter must be all numbers or all strings"
                    )
            if arr.dtype.kind not in "biufU":
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
            self.data[name] = arr
            self.params[name] = Param(name, ("sample", *core_dims), arr.shape[1:], arr.dtype)
        if not n_rows:
            raise SpaceError("Table: the table has no rows")
        self.batch_shape = (int(n_rows),)

    def to_dask(self, chunks):
        import dask.array as da

        (c,) = chunks
        return {
            n: da.from_array(a, chunks=(c, *a.shape[1:]), name=f"daskbatch-table-{n}")
            for n, a in self.data.items()
        }

    def block(self, slices):
        (s,) = slices
        return {n: a[s] for n, a in self.data.items()}

    def head(self, n: int) -> Table:
        import xarray as xr

        return Table(xr.Dataset({k: (self.params[k].dims, a[: max(1, n)]) for k, a in self.data.items()}))

    def spec(self):
        import hashlib

        h = hashlib.sha256()
        for n in sorted(self.data):
            a = np.ascontiguousarray(self.data[n])
            h.update(n.encode() + str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes() if a.dtype.kind != "U" else "\x00".join(a.ravel()).encode())
        out: dict[str, Any] = {
            "type": "table",
            "rows": self.batch_shape[0],
            "columns": {n: list(p.dims) for n, p in self.params.items()},
            "sha256": h.hexdigest(),
        }
        if self._source is not None:
            out["path"] = self._source
        return out
