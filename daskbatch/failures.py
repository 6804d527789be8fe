"""Every sample that did not end ok, with its inputs: :func:`failures`.

A store keeps, per committed block, every sample that failed, timed out or crashed
with its error type and message (and the traceback of the first distinct ones), in
the block's record (:class:`~daskbatch.records.FailureLog`). :func:`failures` joins
them with the samples' batch coordinates and parameters, reading the status of the
blocks that had failures only, then only their failed rows: a store of a million
samples with a few failures is listed in a fraction of a second.

The ``daskbatch failures STORE`` command prints the same table (:func:`format_table`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DaskbatchError, StoreError
from .outputs import stored_specs
from .records import STATUS, failure_log_of

if TYPE_CHECKING:
    import pandas as pd

    from .store import Store

__all__ = [
    "FAILURE_COLUMNS",
    "NOT_OK",
    "StoreReader",
    "failures",
    "format_table",
    "identity_columns",
]

#: The statuses of a sample that is not ok.
NOT_OK = ("failed", "timeout", "crashed")
#: The columns every failure has, after its coordinates, parameters and labels.
FAILURE_COLUMNS = ("status", "error", "message", "traceback")


def _as_store(store: Any) -> Store:
    from .store import Store

    if isinstance(store, Store):
        return store
    if not isinstance(store, str | os.PathLike):
        raise StoreError(f"store={store!r} must be a store path or a daskbatch Store")
    return Store(store)


def _codes(status: str | Iterable[str] | None) -> tuple[int, ...]:
    """The status codes asked for: every one that is not ok (None), a name, or names."""
    if status is None:
        return tuple(int(STATUS[s]) for s in NOT_OK)
    names = [status] if isinstance(status, str | int) else list(status)
    codes = []
    for s in names:
        name = getattr(s, "name", s)
        if isinstance(name, int) and not isinstance(name, bool) and 2 <= name <= 4:
            name = STATUS(name).name
        if name not in NOT_OK:
            raise DaskbatchError(
                f"status={status!r}: give one of {', '.join(repr(n) for n in NOT_OK)} "
                "(or a list of them), or None for all three"
            )
        codes.append(int(STATUS[name]))
    if not codes:
        raise DaskbatchError(f"status={status!r}: give at least one of {', '.join(map(repr, NOT_OK))}")
    return tuple(sorted(set(codes)))


def _spec_params(spec: Any) -> set[str] | None:
    """The parameter names a space spec names, or None when its type is not known here."""
    if not isinstance(spec, Mapping):
        return None
    kind = spec.get("type")
    if kind == "grid":
        return set()  # axes: the batch coordinates
    if kind in ("montecarlo", "latinhypercube", "sobol", "halton"):
        return set(spec.get("params") or {})
    if kind == "table":
        return set(spec.get("columns") or {})
    if kind == "product":
        outer, inner = _spec_params(spec.get("outer")), _spec_params(spec.get("inner"))
        return None if outer is None or inner is None else outer | inner
    return None


def _rebuilt_space(info: Mapping[str, Any], stored: set[str]) -> tuple[Any, str | None]:
    """The space rebuilt from the store's info when some parameter is not stored in the
    store (a file-backed table references its inputs); ``(None, why)`` when it cannot
    be, ``(None, None)`` when nothing is missing."""
    spec = info.get("space_spec")
    named = _spec_params(spec)
    if named is not None and named <= stored:
        return None, None
    if isinstance(spec, Mapping) and spec.get("type") == "table" and "path" not in spec:
        return None, None  # an in-memory table: its columns are in the store
    try:
        from .space import space_from_spec

        space = space_from_spec(spec)  # type: ignore[arg-type]
    except Exception as e:
        grown = _grown_input(spec, info)
        if grown is None:
            return None, f"{type(e).__name__}: {e}"
        space = grown
    missing = [k for k, p in space.params.items() if not p.is_axis and k not in stored]
    return (space, None) if missing else (None, None)


def _grown_input(spec: Any, info: Mapping[str, Any]) -> Any:
    """A table whose input has had rows added since the store was made, every stored
    row unchanged (the rerun that would grow the store has not come yet): its stored
    rows read as they were. None when the input is not that."""
    if not isinstance(spec, Mapping) or spec.get("type") not in ("table", "files") or "sha256" not in spec:
        return None
    try:
        from .extension import extension_reason
        from .space import space_from_spec

        space = space_from_spec({k: v for k, v in spec.items() if k != "sha256"})
        stored = int(info["layout"]["batch_shape"][0])
        if (
            int(space.size) <= stored
            or extension_reason(space, spec, store_id=info.get("store_id")) is not None
        ):
            return None
        return space
    except Exception:
        return None


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Sorted positions as ``(start, stop)`` runs of consecutive ones."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [positions.size]])
    return [(int(positions[a]), int(positions[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def _plain(values: np.ndarray) -> np.ndarray:
    """Zarr's strings (numpy's StringDType) as an object array of ``str``."""
    values = np.asarray(values)
    if values.dtype.kind in "TU":
        return values.astype(object)
    return values


class _Columns:
    """Columns gathered block by block: scalars, or ``name_0``... for values with core dims."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, values: np.ndarray, n: int) -> None:
        values = _plain(values).reshape(n, -1) if n else _plain(values).reshape(0, -1)
        if values.shape[1] == 1:
            self.parts.setdefault(name, []).append(values[:, 0])
        else:
            for j in range(values.shape[1]):
                self.parts.setdefault(f"{name}_{j}", []).append(values[:, j])

    def frame(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.empty(0) for k, v in self.parts.items()}


def _padded(attrs: Any) -> dict[str, Any] | None:
    """daskbatch's description of a padded array (a ragged or text one), or None."""
    meta = attrs.get("daskbatch") if isinstance(attrs, Mapping) else None
    if isinstance(meta, Mapping) and meta.get("ragged") is True and isinstance(meta.get("length"), str):
        return dict(meta)
    return None


def _decode_text(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    from .ragged import decode_text

    return decode_text(data, lengths)


class StoreReader:
    """What readers of a store's samples share: which variables are parameters, labels
    and outputs, and their values over a region of samples, read from the Zarr arrays
    (text decoded, a ragged output with its lengths).

    ``params`` are the variables of the parameters the store keeps, ``labels`` its
    coordinates along the batch dims that are not a dim's own (a file name per
    sample), ``ragged`` maps each ragged numeric output to its length variable and
    ``text`` holds the outputs that are text.
    """

    def __init__(self, st: Store, info: Mapping[str, Any]) -> None:
        import xarray as xr
        import zarr

        self.path = str(st.path)
        self.info = info
        self.dims = [str(d) for d in info["layout"]["batch_dims"]]
        #: the outputs stored per sample (one declared Output(store=False) is only reduced)
        self.outputs: dict[str, Any] = stored_specs(info["kernel"]["outputs"])
        self.root = zarr.open_group(self.path, mode="r", use_consolidated=False)
        with warnings.catch_warnings():
            # the listing meets .daskbatch/ (plain files), which is not Zarr, as intended
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            self.arrays = set(self.root.array_keys())
        self.meta = {name: _padded(self.root[name].attrs) for name in self.arrays}
        lengths = {m["length"] for m in self.meta.values() if m}
        self.ragged = {
            k: m["length"] for k, m in self.meta.items() if m and k in self.outputs and not m.get("encoding")
        }
        #: the width of each ragged output now (an export's columns p_0 ... p_{W-1})
        self.widths = {k: int(zarr.open_array(self.path, path=k, mode="r").shape[-1]) for k in self.ragged}
        self.text = {k for k, m in self.meta.items() if m and k in self.outputs and m.get("encoding")}
        self.text |= {k for k in self.outputs if k in self.arrays and self.root[k].dtype.kind in "TUSO"}
        try:
            self.ds = st.open_dataset()
        except StoreError:
            raise
        except Exception:  # classify from the arrays alone
            self.ds = xr.Dataset()
        skip = {*self.outputs, *lengths, "status", *self.dims}
        self.labels = [
            str(k)
            for k in self.ds.coords
            if k not in self.ds.dims and k not in skip and any(d in self.dims for d in self.ds[k].dims)
        ]
        names = [str(k) for k in self.ds.data_vars] if self.ds.data_vars else sorted(self.arrays)
        self.params = []
        for name in names:
            if name in skip or name in self.labels:
                continue
            dims = self._dims(name)
            if dims and dims[0] in self.dims:
                self.params.append(name)
        # parameters the store does not keep (a table read from files references its
        # columns): read from the space rebuilt from the store's info
        stored = self.arrays | set(self.params) | set(self.labels) | {str(k) for k in self.ds.variables}
        self.space, why = _rebuilt_space(info, stored)
        #: why parameters the store does not keep are left out, or None
        self.note = (
            None
            if why is None
            else "parameters that are not stored in the store are left out: the space could not be "
            f"rebuilt from the store's info ({why})"
        )
        self.rebuilt: list[str] = []
        self.rebuilt_labels: list[str] = []
        self._ahead = 0  # rows read at once along the first batch dim (read_ahead); 0: none
        self._windows: dict[str, tuple[int, int, np.ndarray]] = {}
        self._is_index: dict[str, bool] = {}
        for k, prm in self.space.params.items() if self.space is not None else ():
            if not prm.is_axis and k not in stored:
                (self.rebuilt_labels if getattr(prm, "label", False) else self.rebuilt).append(k)
        self._block: tuple[tuple[slice, ...], dict[str, Any]] | None = None

    def read_ahead(self, block_rows: int, most_bytes: int = 4 * 2**20) -> None:
        """Read several blocks at a time along the (one) batch dim (a Zarr read costs a round
        trip): as many rows as keep the widest array's read within ``most_bytes``. The
        blocks read must be final (committed when the reading started)."""
        self._windows = {}
        if len(self.dims) == 1:
            from .storeview import row_bytes

            widest = row_bytes(self.root, self.arrays, self.dims[0])
            self._ahead = max(int(block_rows), most_bytes // widest // block_rows * block_rows)

    def array(self, name: str, region: tuple[slice, ...], opened: Any = None) -> np.ndarray:
        """The values of Zarr array ``name`` (``opened``: it, opened anew) over ``region``,
        through the window :meth:`read_ahead` keeps."""
        if not self._ahead or len(region) != 1 or region[0].step not in (None, 1):
            return np.asarray((opened if opened is not None else self.root[name])[region])
        a, b = int(region[0].start or 0), int(region[0].stop)
        got = self._windows.get(name)
        if got is None or not (got[0] <= a and b <= got[1]):  # opening an array is a round trip too
            arr = opened if opened is not None else self.root[name]
            hi = min(int(arr.shape[0]), max(b, a + self._ahead))
            got = self._windows[name] = (a, hi, np.asarray(arr[a:hi]))
        return got[2][a - got[0] : b - got[0]]

    def _dims(self, name: str) -> tuple[str, ...]:
        if name in self.ds.variables:
            return tuple(str(d) for d in self.ds[name].dims)
        if name in self.arrays:
            return tuple(self.root[name].metadata.dimension_names or ())
        return ()

    def is_index(self, dim: str) -> bool:
        """Whether batch dim ``dim`` has sample indices (not values, such as a grid axis)."""
        if dim not in self._is_index:  # once per reader: opening an array is a round trip
            if dim not in self.arrays:
                self._is_index[dim] = dim not in self.ds.coords
            else:
                arr = self.root[dim]
                self._is_index[dim] = bool(arr.dtype == np.int64 and arr.fill_value == -1)
        return self._is_index[dim]

    def coords(self, region: tuple[slice, ...]) -> list[np.ndarray]:
        """The values along each batch dim of ``region``: a grid axis's, else indices."""
        out = []
        for d, s in zip(self.dims, region, strict=True):
            if self.is_index(d):
                out.append(np.arange(s.start, s.stop))
            elif d in self.ds.coords:
                out.append(_plain(self.ds[d].values[s]))
            else:
                out.append(_plain(self.array(d, (s,))))
        return out

    def read(self, name: str, region: tuple[slice, ...]) -> np.ndarray:
        """The values of ``name`` over ``region`` (batch dims first, then core dims); text
        as strings, a ragged output padded (see :meth:`lengths`)."""
        import zarr

        if name in self.rebuilt or name in self.rebuilt_labels:  # from the input, per block
            if self._block is None or self._block[0] != region:
                self._block = (region, dict(self.space.block(region)))
            return np.asarray(self._block[1][name])
        nb = len([d for d in self._dims(name) if d in self.dims])
        sel = region[:nb]
        if name not in self.arrays:  # a computed variable: through xarray
            return np.asarray(self.ds[name][sel].values)
        meta = self.meta.get(name)
        if meta is None:
            return self.array(name, sel)
        # as the array is now: a writer may have widened it since it was opened
        window = self._windows.get(name) if self._ahead else None
        hit = (
            window is not None
            and len(sel) == 1
            and window[0] <= (sel[0].start or 0)
            and sel[0].stop <= window[1]
        )
        data = self.array(name, sel, None if hit else zarr.open_array(self.path, path=name, mode="r"))
        if meta.get("encoding"):
            return _decode_text(data, self.array(meta["length"], sel))
        return data

    def per_sample(self, name: str, region: tuple[slice, ...]) -> np.ndarray:
        """:meth:`read` with one row per sample of ``region`` (row-major), its values
        (core dims) flattened along the second axis; a variable along some of the
        batch dims only is broadcast to all of them."""
        vals = self.read(name, region)
        shape = tuple(s.stop - s.start for s in region)
        n = int(np.prod(shape))
        dims = self._dims(name) if name not in self.rebuilt + self.rebuilt_labels else self.dims
        along = [d for d in dims if d in self.dims]
        if len(along) < len(self.dims) and along == [d for d in self.dims if d in along]:
            core = vals.shape[len(along) :]
            expand = tuple(shape[k] if d in along else 1 for k, d in enumerate(self.dims))
            vals = np.broadcast_to(vals.reshape(expand + core), shape + core)
        return vals.reshape(n, -1)

    def lengths(self, name: str, region: tuple[slice, ...]) -> np.ndarray:
        """The length of each sample's value of ragged output ``name`` over ``region``."""
        return self.array(self.ragged[name], region).astype(np.int64)


class _FailedRows:
    """The failed rows of a store's blocks, gathered block by block for :func:`failures`:
    their positions, coordinates, parameters, labels, statuses and errors."""

    def __init__(self, reader: StoreReader, codes: tuple[int, ...], shape: tuple[int, ...]) -> None:
        self.reader = reader
        self.codes = codes
        self.shape = shape
        self.coords, self.values, self.tail = _Columns(), _Columns(), _Columns()
        self.index: list[np.ndarray] = []
        self.status: list[np.ndarray] = []
        self.errors: list[list[Any]] = []
        self.messages: list[list[Any]] = []
        self.tracebacks: list[list[Any]] = []
        #: how many failures have no message (a store written before every one was kept)
        self.without_message = 0

    def add(self, region: tuple[slice, ...], rec: Any) -> None:
        """The samples of the block at ``region`` (its record ``rec``) with a status asked for."""
        reader = self.reader
        block_shape = tuple(s.stop - s.start for s in region)
        flat_status = self.reader.array("status", region).reshape(-1)
        pos = np.flatnonzero(np.isin(flat_status, self.codes))
        if pos.size == 0:
            return
        n = int(pos.size)
        local = np.unravel_index(pos, block_shape)
        glob = tuple(p + s.start for p, s in zip(local, region, strict=True))
        self.index.append(np.ravel_multi_index(glob, self.shape))
        self.status.append(flat_status[pos])
        for d, values_along, p in zip(reader.dims, reader.coords(region), local, strict=True):
            self.coords.add(d, values_along[p], n)
        for name in reader.params:
            self.values.add(name, reader.per_sample(name, region)[pos], n)
        rebuilt, rebuilt_labels = reader.rebuilt, reader.rebuilt_labels
        if rebuilt or rebuilt_labels:
            got = _rebuilt_rows(reader.space, region, block_shape, pos, rebuilt + rebuilt_labels)
            for name in rebuilt:
                self.values.add(name, got[name], n)
            for name in rebuilt_labels:
                self.tail.add(name, got[name], n)
        for name in reader.labels:
            self.tail.add(name, reader.per_sample(name, region)[pos], n)
        errs, msgs, tbs = _block_messages(rec, block_shape, pos)
        self.without_message += sum(m is None for m in msgs)
        self.errors.append(errs)
        self.messages.append(msgs)
        self.tracebacks.append(tbs)

    def columns(self) -> dict[str, Any]:
        """The columns of the rows gathered, in sample order (without rows when none was)."""
        reader = self.reader
        order = np.argsort(np.concatenate(self.index), kind="stable") if self.index else np.empty(0, int)
        cols: dict[str, Any] = {}
        for part in (self.coords.frame(), self.values.frame(), self.tail.frame()):
            for k, v in part.items():
                name = k if k not in FAILURE_COLUMNS or k in cols else f"param_{k}"
                cols[name] = v[order] if v.size else v
        if not self.index:  # the columns, without rows
            for d in reader.dims:
                cols.setdefault(d, np.empty(0, dtype=np.int64 if reader.is_index(d) else object))
            for name in reader.params + reader.rebuilt + reader.labels + reader.rebuilt_labels:
                if not any(c == name or c.startswith(f"{name}_") for c in cols):
                    cols[name] = np.empty(0, dtype=object)
        codes_col = np.concatenate(self.status)[order] if self.status else np.empty(0, np.int8)
        names = {int(s): s.name for s in STATUS}
        cols["status"] = np.array([names.get(int(c), str(c)) for c in codes_col], dtype=object)
        messages = {"error": self.errors, "message": self.messages, "traceback": self.tracebacks}
        for key, parts in messages.items():
            flat = [x for p in parts for x in p]
            cols[key] = np.array(flat, dtype=object)[order] if flat else np.empty(0, dtype=object)
        return cols


def _block_messages(rec: Any, block_shape: tuple[int, ...], pos: np.ndarray) -> tuple[list, list, list]:
    """The error type, message and traceback of the samples at block positions ``pos``:
    every failure's from the block's failure log, and the first ones' whole records."""
    log = failure_log_of(rec.failures, rec.errors, block_shape)
    by_pos = {p: (t, m, tb) for p, _, t, m, tb in log.entries()}
    for e in rec.errors:
        try:
            p = int(np.ravel_multi_index(tuple(int(x) for x in e.get("position") or ()), block_shape))
        except (ValueError, TypeError):
            continue
        t, m, tb = by_pos.get(p, (None, None, None))
        kept_tb = str(e.get("traceback") or "") or tb
        if t is None:
            t, m = str(e.get("type") or "") or None, e.get("message")
            if m is None and e.get("error"):
                from .errors import ErrorRecord

                r = ErrorRecord.from_dict(e)
                t, m = r.error_type or None, r.message
        by_pos[p] = (t, m, kept_tb or None)
    errs, msgs, tbs = [], [], []
    for p in pos.tolist():
        t, m, tb = by_pos.get(p, (None, None, None))
        errs.append(t)
        msgs.append(m)
        tbs.append(tb)
    return errs, msgs, tbs


def failures(
    store: str | os.PathLike[str] | Store, *, status: str | Sequence[str] | None = None
) -> pd.DataFrame:
    """Every sample that failed, timed out or crashed, with its inputs and its error.

    Parameters
    ----------
    store
        A store path (or a :class:`~daskbatch.store.Store`).
    status
        ``None`` (default): every sample that is not ok; or ``"failed"``,
        ``"timeout"``, ``"crashed"``, or a list of them.

    Returns
    -------
    pandas.DataFrame
        One row per sample, in sample order (committed blocks only). The columns:
        the batch coordinates (``sample``, or a grid's axis values), the parameters
        (a parameter with core dims as ``name_0``, ``name_1``...), label coordinates
        if the store has any (a file per sample), then ``status`` (``"failed"``,
        ``"timeout"`` or ``"crashed"``), ``error`` (the exception's type, or
        ``"SampleTimeout"``, ``"WorkerCrash"``, ``"MemoryLimit"``), ``message``
        (at most 500 characters) and ``traceback`` (from the kernel's frames on; None
        where none was kept: daskbatch keeps the first 20 distinct tracebacks of a
        block, and every failure raised at the same place shares one). ``df.attrs``
        holds ``n_samples``, ``n_failures``, ``store`` and, when something could not
        be given, a ``note`` saying what (stores written before daskbatch kept every
        failure keep the messages of the first 20 per block only; a parameter not
        stored in the store is read from its file, and left out if that fails).

    Examples
    --------
    >>> df = daskbatch.failures("results.zarr")  # doctest: +SKIP
    >>> df[["sample", "x", "error", "message"]].head()  # doctest: +SKIP
       sample      x       error          message
    0     222  -0.31  ValueError  x must be >= 0
    """
    import pandas as pd

    st = _as_store(store)
    info = st.require_info()
    codes = _codes(status)
    layout = info["layout"]
    shape = tuple(int(n) for n in layout["batch_shape"])
    bshape = tuple(int(b) for b in layout["block_shape"])
    records = st.ledger.records()
    failing = sorted(b for b, rec in records.items() if sum(int(rec.counts[c]) for c in codes))
    reader = StoreReader(st, info)
    notes: list[str] = [reader.note] if reader.note else []
    rows = _FailedRows(reader, codes, shape)
    if len(failing) > 1:  # committed (their records are read): read several at a time
        reader.read_ahead(bshape[0])
    for block in failing:
        region = tuple(
            slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(block, bshape, shape, strict=True)
        )
        rows.add(region, records[block])
    if rows.without_message:
        notes.append(
            f"{rows.without_message:,} failure(s) have no message: the store was written before daskbatch "
            "kept every failure's message (it kept the first 20 per block)"
        )
    cols = rows.columns()
    # text as pandas' strings; the traceback as objects, so that one not kept is None
    cols["traceback"] = pd.Series(cols["traceback"], dtype=object)
    df = pd.DataFrame(cols)
    df.attrs.update(
        {
            "store": str(st.path),
            "n_samples": int(np.prod(shape)),
            "n_failures": len(df),
            "status": [STATUS(c).name for c in codes],
            "batch_dims": list(reader.dims),
            "parameters": reader.params + reader.rebuilt,
            "labels": reader.labels + reader.rebuilt_labels,
        }
    )
    if notes:
        df.attrs["note"] = "; ".join(notes)
    return df


#: Runs of failed rows read one by one from a rebuilt space; more: the block at once.
_MAX_RUNS = 16


def _rebuilt_rows(
    space: Any, region: tuple[slice, ...], block_shape: tuple[int, ...], pos: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    """Parameters of a rebuilt space at the block positions ``pos``: read for runs of
    failed rows only along a single batch dim (at most :data:`_MAX_RUNS` reads), else
    for the block."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    if len(region) == 1 and len(_runs(pos)) <= _MAX_RUNS:
        (s,) = region
        for a, b in _runs(pos):
            got = space.block((slice(s.start + a, s.start + b),))
            for k in names:
                out[k].append(np.asarray(got[k]))
        return {k: np.concatenate(v) for k, v in out.items()}
    got = space.block(region)
    n = int(np.prod(block_shape))
    return {k: np.asarray(got[k]).reshape((n, *np.shape(got[k])[len(region) :]))[pos] for k in names}


# --------------------------------------------------------------------------- printing


def _text(value: Any) -> str | None:
    """A cell's text, or None for a missing value (None, NaN, pandas' NA)."""
    if value is None or value is _pd_na() or (isinstance(value, float) and value != value):
        return None
    return str(value)


def _pd_na() -> Any:
    import pandas as pd

    return pd.NA


def _common_folder(values: list[Any]) -> str | None:
    """The folder every value is a path under, when they are all absolute paths."""
    if not values or not all(isinstance(v, str) and os.path.isabs(v) for v in values):
        return None
    folder = os.path.dirname(values[0]) if len(values) == 1 else os.path.commonpath(values)
    return folder if folder not in ("", os.sep) and folder not in values else None


def _cell(value: Any, width: int, keep_end: bool = False) -> str:
    if _text(value) is None:
        text = ""
    elif isinstance(value, float | np.floating):
        text = f"{float(value):.6g}"
    else:
        text = str(value)
    text = " ".join(text.split())  # one line
    if len(text) <= width:
        return text
    return "..." + text[-max(0, width - 3) :] if keep_end else text[: max(0, width - 3)] + "..."


def identity_columns(df: pd.DataFrame) -> list[str]:
    """The columns that say which sample a row is: a file (a label coordinate, or a
    string parameter named like a path) when there is one, else the batch coordinates."""
    labels = [c for c in df.attrs.get("labels") or [] if c in df.columns]
    params = [c for c in df.attrs.get("parameters") or [] if c in df.columns]
    text = [c for c in labels + params if df[c].dtype.kind in "OUT" or str(df[c].dtype) in ("string", "str")]
    named = [c for c in text if any(w in c.lower() for w in ("file", "path", "name"))]
    # a file path first (Files: `path`), then any text label (an id), then any label
    files = named or [c for c in text if c in labels] or labels
    dims = [d for d in (df.attrs.get("batch_dims") or []) if d in df.columns]
    return [*dims[:1], *files[:1]] if files else dims


def format_table(df: pd.DataFrame, *, width: int = 120, limit: int | None = None) -> str:
    """The failures of :func:`failures` as an aligned table for a terminal: which
    sample (its file, when the run had one), its status and its message, then
    ``N failures of M samples``."""
    ident = identity_columns(df)
    n, total = len(df), int(df.attrs.get("n_samples", len(df)))
    shown = df if limit is None else df.head(limit)
    body, folders = [], []
    for c in ident:
        values = shown[c].tolist()
        folder = _common_folder(values)
        if folder is not None:  # files: their names, under the folder they share
            values = [os.path.relpath(v, folder) for v in values]
            folders.append(f"{c}: relative to {folder}")
        # a path keeps its end (the file's name) when it is cut; a name's line breaks and
        # tabs are shown escaped (as spaces, it would read as another file's name)
        body.append(
            [_cell(escaped(v) if isinstance(v, str) else v, 60, keep_end=folder is not None) for v in values]
        )
    heads = list(ident)
    dims = [d for d in (df.attrs.get("batch_dims") or []) if d in df]
    inputs = _inputs_cells(shown, dims) if ident == dims else None
    if inputs is not None:  # no file names a sample: its parameters do, in a column of their own
        heads.append("inputs")
        body.append(inputs)
    status = [str(v) for v in shown["status"].tolist()]
    messages = []
    for e, m in zip(shown["error"].tolist(), shown["message"].tolist(), strict=True):
        e, m = _text(e), _text(m)
        messages.append(f"{e}: {m}" if e and m else (e or m or "(no message kept)"))
    rows = [[*heads, "status", "message"]]
    for i in range(len(shown)):
        rows.append([*(col[i] for col in body), status[i], messages[i]])
    fixed = [max(len(r[j]) for r in rows) for j in range(len(heads) + 1)]
    room = max(20, width - sum(fixed) - 2 * len(fixed))
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], fixed, strict=True)]
        lines.append("  ".join([*cells, _cell(r[-1], room)]).rstrip())
    if n == 0:
        lines = []
    lines[:0] = [f"({f})" for f in folders] if n else []
    if limit is not None and n > limit:
        lines.append(f"... {n - limit:,} more (--csv writes them all)")
    lines.append(f"{n:,} failure{'s' if n != 1 else ''} of {total:,} samples")
    if df.attrs.get("note"):
        lines.append(f"note: {df.attrs['note']}")
    return "\n".join(lines)


def _inputs_cells(df: pd.DataFrame, dims: list[str], most: int = 4) -> list[str] | None:
    """Each row's scalar parameters as ``x=0.4213, k=3`` (the first ``most``; ``...``
    after them), for a table whose samples no file names; None without any (a grid's
    are its coordinates, shown already)."""
    names = [c for c in df.attrs.get("parameters") or [] if c in df.columns and c not in dims]
    if not names:
        return None

    def show(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return f"{float(v):.4g}"
        return _cell(v, 20)

    more = ", ..." if len(names) > most else ""
    return [", ".join(f"{c}={show(row[c])}" for c in names[:most]) + more for _, row in df.iterrows()]


def escaped(name: str) -> str:
    """A file name or id on one line: its line breaks and tabs as ``\\n``, ``\\r``, ``\\t``.

    Examples
    --------
    >>> print(escaped("new\\nline.bin"))
    new\\nline.bin
    """
    return name.translate({10: "\\n", 13: "\\r", 9: "\\t"})
