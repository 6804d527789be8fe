"""Reading results: summary statistics and ensemble bands, and a streamed export.

Everything here works block by block or through dask reductions over the Zarr
arrays, so a store of any size is summarised or exported with bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DaskbatchError
from .kernel import STATUS

__all__ = ["EXACT_QUANTILE_SAMPLES", "export", "summarize"]

#: Quantiles are exact when each value's reduction covers at most this many samples
#: (they are then held in one task: 8 bytes each); beyond it, scalar outputs reduced
#: over every batch dim use dask's approximate merged percentiles.
EXACT_QUANTILE_SAMPLES = 2**25


def _open(data: Any):
    import xarray as xr

    from .store import Store

    if isinstance(data, xr.Dataset):
        info = data.attrs.get("daskbatch")
        if not isinstance(info, dict) or "kernel" not in info:
            raise DaskbatchError(
                "summarize: the Dataset has no daskbatch provenance; open it with daskbatch.open"
            )
        return data, info
    if not isinstance(data, str | os.PathLike):
        raise DaskbatchError(f"store={data!r} must be a store path or a Dataset from daskbatch.open")
    st = Store(data)
    info = st.require_info()
    return st.open_dataset(), info


def summarize(
    data: Any,
    over: Sequence[str] | None = None,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
):
    """Statistics of every output over the batch dims (or some of them).

    Parameters
    ----------
    data
        A store path, or the Dataset :func:`daskbatch.open` returned.
    over
        Batch dims to reduce (default: all). For a grid, ``over=["h1"]`` gives the
        statistics over ``h1`` for every ``(rho1, rho2)``.
    quantiles
        Probabilities in [0, 1], reported as ``p10``, ``p50``...

    Returns
    -------
    xarray.Dataset
        One variable per output with a leading dim ``stat`` (``count``, ``mean``,
        ``std``, ``min``, ``max``, then the quantiles), followed by the batch dims
        that are kept and the output's core dims: for a response curve over
        ``time``, ``summary.response.sel(stat="p50")`` is the median curve and
        ``p10``/``p90`` the band. Only ok samples enter the statistics. The counts of
        samples per status are the variables ``n_ok``, ``n_failed``, ``n_timeout``,
        ``n_crashed`` and ``n_pending``.
    """
    import dask
    import dask.array as da
    import xarray as xr

    ds, info = _open(data)
    batch_dims = list(info["layout"]["batch_dims"])
    if over is None:
        over = batch_dims
    if isinstance(over, str):
        over = [over]
    unknown = [d for d in over if d not in batch_dims]
    if unknown or not over:
        raise DaskbatchError(f"over={list(over)!r}: give some of the batch dims {batch_dims}")
    qs = [float(q) for q in quantiles]
    if any(not 0 <= q <= 1 for q in qs):
        raise DaskbatchError(
            f"quantiles={list(quantiles)!r} must be probabilities in [0, 1], e.g. (0.1, 0.5, 0.9)"
        )
    names = ["count", "mean", "std", "min", "max", *(f"p{round(q * 100, 4):g}" for q in qs)]
    ok = ds.status == STATUS["ok"]
    out: dict[str, Any] = {}
    for code, value in STATUS.items():
        out[f"n_{code}"] = (ds.status == value).sum(over)
    n_over = int(np.prod([ds.sizes[d] for d in over]))
    for name in info["kernel"]["outputs"]:
        x = ds[name].astype("float64").where(ok)
        stats = [x.count(over), x.mean(over), x.std(over), x.min(over), x.max(over)]
        if qs:
            kept = [d for d in x.dims if d not in over]
            if n_over <= EXACT_QUANTILE_SAMPLES:
                # the reduced dims in one chunk, the kept ones cut so a task holds about
                # EXACT_QUANTILE_SAMPLES values
                per = max(1, EXACT_QUANTILE_SAMPLES // n_over)
                chunks = {d: -1 for d in over}
                chunks.update({d: max(1, min(x.sizes[d], per)) for d in kept})
                q = x.chunk(chunks).quantile(qs, dim=over, skipna=True)
                stats += [q.sel(quantile=v, drop=True) for v in qs]
            elif not kept:
                flat = x.data.reshape(-1)
                flat = flat[~da.isnan(flat)]
                pct = da.percentile(flat, [v * 100 for v in qs], internal_method="dask")
                stats += [xr.DataArray(pct[i]) for i in range(len(qs))]
            else:
                raise DaskbatchError(
                    f"summarize: exact quantiles of {name!r} over {n_over:,} samples per value are more "
                    f"than {EXACT_QUANTILE_SAMPLES:,}; reduce over fewer dims, or pass quantiles=()"
                )
        out[name] = xr.concat(stats, dim="stat", coords="minimal", compat="override")
    result = xr.Dataset(out).assign_coords(stat=names)
    (result,) = dask.compute(result)
    result.attrs["store"] = str(getattr(data, "path", data)) if not isinstance(data, xr.Dataset) else ""
    result.attrs["over"] = list(over)
    return result


def _frame(root, info: dict, params: list[str], region: tuple[slice, ...], curves: str):
    """One block of the store as a DataFrame: one row per sample (or per sample and
    core index, for long curves)."""
    import pandas as pd

    layout = info["layout"]
    dims = layout["batch_dims"]
    # the batch coordinates of the block's samples (the grid axes' values, or indices)
    labels = [
        np.asarray(root[d][s]) if d in root else np.arange(s.start, s.stop)
        for d, s in zip(dims, region, strict=True)
    ]
    grids = np.meshgrid(*labels, indexing="ij")
    cols: dict[str, np.ndarray] = {d: g.ravel() for d, g in zip(dims, grids, strict=True)}
    n = cols[dims[0]].size
    outputs = info["kernel"]["outputs"]
    curve_cols: dict[str, np.ndarray] = {}
    for name in params:
        vals = np.asarray(root[name][region]).reshape(n, -1)
        if vals.shape[1] == 1:
            cols[name] = vals[:, 0]
        else:
            for j in range(vals.shape[1]):
                cols[f"{name}_{j}"] = vals[:, j]
    cols["status"] = np.asarray(root["status"][region]).reshape(n)
    for name, spec in outputs.items():
        vals = np.asarray(root[name][region]).reshape(n, -1)
        if not spec["shape"]:
            cols[name] = vals[:, 0]
        elif curves == "wide":
            for j in range(vals.shape[1]):
                cols[f"{name}_{j}"] = vals[:, j]
        elif curves == "long":
            curve_cols[name] = vals
    frame = pd.DataFrame(cols)
    if curves != "long" or not curve_cols:
        return frame
    (k,) = {v.shape[1] for v in curve_cols.values()}
    core = next(spec for name, spec in outputs.items() if name in curve_cols)
    core_dim = "_".join(core["dims"]) or "index"
    long = frame.loc[frame.index.repeat(k)].reset_index(drop=True)
    long.insert(len(dims), core_dim, np.tile(np.arange(k), n))
    for name, vals in curve_cols.items():
        long[name] = vals.reshape(-1)
    return long


def export(
    store: str | os.PathLike[str],
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    curves: str = "none",
) -> int:
    """Write parameters, status and outputs, one row per sample, to CSV or Parquet.

    The store is read one block at a time and each block appended to the file, so a
    store of any size is exported with the memory of one block.

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
        core index, ``response_0``...) or ``"long"`` (a row per sample and core
        index, all curve outputs sharing the same core size).

    Returns the number of rows written.
    """
    import zarr

    from .store import Store

    path = Path(path)
    fmt = format or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "parquet"):
        raise DaskbatchError(f"format={fmt!r}: use 'csv' or 'parquet' (or a path ending in .csv or .parquet)")
    if curves not in ("none", "wide", "long"):
        raise DaskbatchError(f"curves={curves!r}: use 'none', 'wide' or 'long'")
    if not path.parent.is_dir():
        raise DaskbatchError(f"export: the folder of {str(path)!r} does not exist")
    st = Store(store)
    info = st.require_info()
    if curves == "long":
        sizes = {int(np.prod(s["shape"])) for s in info["kernel"]["outputs"].values() if s["shape"]}
        if len(sizes) > 1:
            raise DaskbatchError(
                f"curves='long' needs curve outputs of one size; they have sizes {sorted(sizes)}"
            )
    writer = None
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DaskbatchError(
                "export to Parquet needs pyarrow: pip install 'daskbatch[parquet]'"
            ) from None
    root = zarr.open_group(str(st.path), mode="r", use_consolidated=False)
    layout = info["layout"]
    # the parameters that vary per sample (grid axes are the batch coordinates)
    ds = st.open_dataset()
    skip = {*layout["batch_dims"], "status", *info["kernel"]["outputs"]}
    params = [k for k in ds.data_vars if k not in skip and set(layout["batch_dims"]) <= set(ds[k].dims)]
    tmp = path.with_name(path.name + ".partial")
    rows = 0
    try:
        for block in np.ndindex(*layout["numblocks"]):
            region = tuple(
                slice(i * b, min((i + 1) * b, n))
                for i, b, n in zip(block, layout["block_shape"], layout["batch_shape"], strict=True)
            )
            frame = _frame(root, info, params, region, curves)
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
        if tmp.exists():
            tmp.unlink()
    return rows
