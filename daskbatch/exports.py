"""The streamed export of a store to CSV or Parquet: :func:`export`.

The store is read one block at a time (through the
:class:`~daskbatch.failures.StoreReader` that :func:`daskbatch.failures` uses too)
and each block appended to the file, so a store of any size is exported with the
memory of one block. :func:`export` is importable from :mod:`daskbatch.analysis` and
:mod:`daskbatch` too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DaskbatchError
from .fstools import clear_partial
from .kernel import STATUS

if TYPE_CHECKING:
    from .failures import StoreReader
    from .store import Store

__all__ = ["export"]


def export(
    store: str | os.PathLike[str],
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    curves: str = "none",
) -> int:
    """Write parameters, status, errors and outputs, one row per sample, to CSV or Parquet.

    The columns: the batch coordinates, the parameters (and a table's label columns),
    ``status`` (the code, see :data:`~daskbatch.STATUS`), ``error`` and ``message``
    (the error type and message of a sample that failed, timed out or crashed; empty
    for the others), then the outputs. A parameter or label named like one of the
    export's own columns (``error``, an output's ``peaks_0``) is ``param_<name>``.
    A value that does not exist is an empty cell in CSV and a null
    in Parquet, never a fill value: the outputs of a sample that is not ok, the
    values of a ragged output past the sample's length. A ragged output ``p`` has a
    column ``p_length``. Parameters the store does not keep (a table read from files
    references its columns) are read from their input, block by block; when it cannot
    be read (moved, changed) they are left out, with a warning saying why.

    The store is read block by block (several small blocks at a time, about 4 MiB of
    the widest array) and each block appended to the file, so a store of any size is
    exported with the memory of a few blocks. Only committed blocks count as done: the
    samples of a block without its commit record (being written, or left by a run that
    stopped) are exported as pending (status 0, their parameters and outputs empty), as
    :func:`daskbatch.status` counts them. Which blocks are committed is read before
    their data, when the export starts, so a store being written exports consistently
    (a block committed meanwhile reads as pending).

    Parameters
    ----------
    store
        A store path.
    path
        The file to write (``.csv`` or ``.parquet``); it is replaced.
    format
        ``"csv"`` or ``"parquet"``; default from the suffix of ``path``.
    curves
        Outputs with core dims: ``"none"`` (left out), ``"wide"`` (a column per
        core index, ``response_0``...; for a ragged output as many as its longest
        sample can have, empty past each sample's length) or ``"long"`` (a row per
        sample and core index, all curve outputs sharing the same core size; a row
        per value of a ragged output; a sample without values keeps one row, its
        values empty).

    Returns the number of rows written.
    """
    from .failures import StoreReader
    from .store import Store

    path = Path(path)
    fmt = _export_format(path, format, curves)
    st = Store(store)
    info = st.require_info()
    reader = StoreReader(st, info)
    if reader.note:
        from .log import logger

        logger.warning(f"export of {str(st.path)!r}: {reader.note}")
    if curves == "long":
        _check_long_curves(info["kernel"]["outputs"], reader)
    return _write_blocks(st, info["layout"], reader, path, fmt, curves)


def _export_format(path: Path, format: str | None, curves: str) -> str:
    """The format of an export to ``path`` (``"csv"`` or ``"parquet"``), its arguments checked."""
    fmt = format or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "parquet"):
        raise DaskbatchError(f"format={fmt!r}: use 'csv' or 'parquet' (or a path ending in .csv or .parquet)")
    if curves not in ("none", "wide", "long"):
        raise DaskbatchError(f"curves={curves!r}: use 'none', 'wide' or 'long'")
    if not path.parent.is_dir():
        raise DaskbatchError(f"export: the folder of {str(path)!r} does not exist")
    return fmt


def _check_long_curves(outputs: dict[str, Any], reader: StoreReader) -> None:
    """Refuse ``curves="long"`` for curve outputs along different dims, or of different
    sizes (ragged ones aside)."""
    along = {k: tuple(s.get("dims") or ()) for k, s in outputs.items() if s["shape"] and k in reader.arrays}
    if len(set(along.values())) > 1:
        named = ", ".join(f"{k!r} along {', '.join(d) or '?'}" for k, d in along.items())
        raise DaskbatchError(
            f"curves='long' writes a row per sample and position along one dim, but the curve outputs "
            f"are along different dims ({named}); use curves='wide' (a column per position)"
        )
    curve_outputs = [k for k, s in outputs.items() if s["shape"] and k not in reader.ragged]
    sizes = {int(np.prod(outputs[k]["shape"])) for k in curve_outputs}
    if len(sizes) > 1:
        raise DaskbatchError(
            f"curves='long' needs curve outputs of one size; they have sizes {sorted(sizes)}"
        )


def _write_blocks(
    st: Store, layout: dict[str, Any], reader: StoreReader, path: Path, fmt: str, curves: str
) -> int:
    """Write the store's blocks, one after the other, to ``path`` (through a
    ``.partial`` file renamed at the end); the number of rows written."""
    writer = None
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DaskbatchError(
                "export to Parquet needs pyarrow: pip install 'daskbatch[parquet]'"
            ) from None
    ledger = st.ledger
    tmp = path.with_name(path.name + ".partial")
    clear_partial(tmp)  # one a stopped export left: never written through
    rows = 0
    # the blocks committed now, then their data: a store of many small blocks is read
    # several blocks at a time, and a block committed meanwhile reads as pending
    committed = np.asarray(ledger.committed())
    reader.read_ahead(int(layout["block_shape"][0]))
    try:
        for block in np.ndindex(*layout["numblocks"]):
            region = tuple(
                slice(i * b, min((i + 1) * b, n))
                for i, b, n in zip(block, layout["block_shape"], layout["batch_shape"], strict=True)
            )
            # the ledger first, then the data; an unreadable record (or marker) is none
            frame = _frame(reader, region, curves, ledger.record(block) if committed[block] else None)
            rows += len(frame)
            if fmt == "csv":
                frame.to_csv(tmp, mode="w" if writer is None else "a", header=writer is None, index=False)
                writer = True
            else:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        if fmt == "parquet" and writer is not None:
            writer.close()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return rows


def _missing(values: np.ndarray, keep: np.ndarray):
    """``values`` with the cells where ``keep`` is False missing: NaN for floats, a
    nullable integer or boolean array (``pd.NA``) for integers and booleans, None in
    strings, so that a CSV shows an empty cell and Parquet a null, never a fill value."""
    import pandas as pd

    values = np.asarray(values)
    keep = np.asarray(keep, dtype=bool)
    kind = values.dtype.kind
    if kind == "f":
        return np.where(keep, values, np.nan)
    if kind == "c":
        return np.where(keep, values, np.nan + 0j)
    if kind in "iu":
        return pd.arrays.IntegerArray(values.astype(values.dtype.newbyteorder("=")), ~keep)
    if kind == "b":
        return pd.arrays.BooleanArray(values, ~keep)
    if kind in "TUSO":
        out = values.astype(object)
        out[~keep] = None
        return pd.array(out, dtype="string")
    if kind in "mM":
        out = values.copy()
        out[~keep] = np.array("NaT", dtype=values.dtype)
        return out
    return values


def _block_messages(record, block_shape: tuple[int, ...], n: int) -> tuple[list, list]:
    """The error type and message of every sample of a block (None where it is ok)."""
    from .records import failure_log_of

    errors: list[str | None] = [None] * n
    messages: list[str | None] = [None] * n
    if record is None or not record.n_errors:
        return errors, messages
    for p, _, error_type, message, _ in failure_log_of(record.failures, record.errors, block_shape).entries():
        if 0 <= p < n:
            errors[p], messages[p] = error_type or None, message
    return errors, messages


def _frame(reader, region: tuple[slice, ...], curves: str, record):
    """One block of the store as a DataFrame: one row per sample (or per sample and
    core index, for long curves; per value, for a ragged output). A block without
    its commit record reads as pending: status 0 and empty parameters and outputs,
    whatever of it is on disk. Outputs of samples that are not ok are empty, and
    ``error`` and ``message`` say why (empty for ok samples)."""
    import pandas as pd

    dims = reader.dims
    committed = record is not None
    block_shape = tuple(s.stop - s.start for s in region)
    # the batch coordinates of the block's samples (the grid axes' values, or indices)
    grids = np.meshgrid(*reader.coords(region), indexing="ij")
    cols: dict[str, Any] = {d: g.ravel() for d, g in zip(dims, grids, strict=True)}
    n = cols[dims[0]].size
    outputs = reader.outputs
    everything = np.full(n, committed)
    inputs: dict[str, Any] = {}  # the parameters and labels, placed before the rest below
    for name in [*reader.params, *reader.rebuilt, *reader.labels, *reader.rebuilt_labels]:
        vals = reader.per_sample(name, region)
        if vals.shape[1] == 1:
            inputs[name] = _missing(vals[:, 0], everything)
        else:
            for j in range(vals.shape[1]):
                inputs[f"{name}_{j}"] = _missing(vals[:, j], everything)
    status = reader.array("status", region).reshape(n) if committed else np.zeros(n, np.int8)
    cols["status"] = status
    errors, messages = _block_messages(record, block_shape, n)
    cols["error"] = pd.array(errors, dtype="string")
    cols["message"] = pd.array(messages, dtype="string")
    ok = status == STATUS["ok"]
    long_cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # values (n, W), lengths (n,)
    for name, spec in outputs.items():
        if name in reader.ragged:  # as wide as when the export started, in every block
            width = reader.widths[name]
        else:
            width = int(np.prod(spec["shape"])) if spec["shape"] else 1
        if committed:
            vals = reader.read(name, region).reshape(n, -1)
            if vals.shape[1] != width:
                vals = np.pad(vals[:, :width], ((0, 0), (0, max(0, width - vals.shape[1]))))
        else:
            vals = np.zeros((n, width), dtype=object if name in reader.text else np.float64)
        if name in reader.ragged:
            length_name = reader.ragged[name]
            lengths = reader.lengths(name, region).reshape(n) if committed else np.zeros(n, np.int64)
            lengths = np.where(ok, np.clip(lengths, 0, vals.shape[1]), 0)
            if length_name not in outputs:
                cols[length_name] = _missing(lengths, ok)
        elif not spec["shape"]:
            cols[name] = _missing(vals[:, 0], ok)
            continue
        else:
            lengths = np.where(ok, vals.shape[1], 0)
        if curves == "wide":
            for j in range(vals.shape[1]):
                cols[f"{name}_{j}"] = _missing(vals[:, j], j < lengths)
        elif curves == "long":
            long_cols[name] = (vals, lengths)
    core_dim = "_".join(outputs[next(iter(long_cols))]["dims"]) or "index" if long_cols else None
    frame = pd.DataFrame(_inputs_first(cols, inputs, dims, {core_dim, *long_cols}))
    if curves != "long" or not long_cols:
        return frame
    longest = np.max(np.stack([lengths for _, lengths in long_cols.values()]), axis=0)
    rows = np.maximum(longest, 1)  # a sample without values keeps one row, its values empty
    rep = np.repeat(np.arange(n), rows)
    j = np.arange(int(rows.sum())) - np.repeat(np.cumsum(rows) - rows, rows)
    long = frame.iloc[rep].reset_index(drop=True)
    long.insert(len(dims), core_dim, _missing(j, j < longest[rep]))
    for name, (vals, lengths) in long_cols.items():
        picked = vals[rep, np.minimum(j, max(0, vals.shape[1] - 1))] if vals.shape[1] else np.zeros(rep.size)
        long[name] = _missing(picked, j < lengths[rep])
    return long


def _inputs_first(cols: dict[str, Any], inputs: dict[str, Any], dims: Any, more: set[Any]) -> dict[str, Any]:
    """The batch coordinates (``dims`` of ``cols``), the input columns ``inputs``, then
    what the export adds (``cols``' others: status, error, message, outputs). An input
    column named like one of those, or like one of ``more`` (a long export's own), is
    ``param_<name>``, as in :func:`daskbatch.failures`, rather than overwritten by it."""
    own = (set(cols) - set(dims)) | {m for m in more if m is not None}
    out = {d: cols[d] for d in dims}
    for k, v in inputs.items():
        name = k
        while name in own or name in out:
            name = f"param_{name}"
        out[name] = v
    out.update({k: v for k, v in cols.items() if k not in dims})
    return out
