"""Reading results: summary statistics and ensemble bands, and a streamed export.

Everything here works block by block or through dask reductions over the Zarr
arrays, so a store of any size is summarised or exported with bounded memory. The
export (:func:`export`) is in :mod:`daskbatch.exports`, and importable from here.

Only committed blocks count: everything reads the store through
:func:`daskbatch.open`, whose ``status`` shows the samples of a block without its
commit marker as pending (0), so the counts here are those of
:func:`daskbatch.status` and the outputs of uncommitted blocks never enter a
statistic. A Dataset from ``xarray.open_zarr`` shows ``status`` as it is on disk;
pass the store path or the Dataset ``daskbatch.open`` returned.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DaskbatchError
from .exports import export
from .kernel import STATUS

__all__ = [
    "EXACT_QUANTILE_VALUES",
    "compare",
    "convergence",
    "export",
    "outliers",
    "scalar_summary",
    "summarize",
]

#: Quantiles are exact when the output holds at most this many values (the reduced
#: dims are then gathered into one chunk per group of kept values: 128 MiB in all at
#: most); beyond it, reductions over every batch dim merge per-block quantile
#: sketches (approximate, see summarize), with the memory of a block.
EXACT_QUANTILE_VALUES = 2**24
#: Quantiles computed per block for the approximate merge: 0, 0.5, 1, ... 100 %.
SKETCH_PERCENTILES = np.linspace(0.0, 100.0, 201)
#: about the most memory the blocks' percentiles of an output take at once in a summary
SKETCH_BYTES = 64 * 2**20


def _open(data: Any):
    import xarray as xr

    from .store import Store

    if isinstance(data, xr.Dataset):
        info = data.attrs.get("daskbatch")
        if not isinstance(info, dict) or "kernel" not in info:
            raise DaskbatchError(
                "summarize: the Dataset has no daskbatch provenance; open it with daskbatch.open"
            )
        return _per_sample(data, info)
    if not isinstance(data, str | os.PathLike):
        raise DaskbatchError(f"store={data!r} must be a store path or a Dataset from daskbatch.open")
    st = Store(data)
    info = st.require_info()
    return _per_sample(st.open_dataset(blocks_per_chunk=_blocks_per_chunk(st, info)), info)


#: about the most bytes of one variable a chunk of a store opened to summarise it holds:
#: a store of many small blocks is read several blocks per chunk (fewer tasks)
SUMMARY_CHUNK_BYTES = 32 * 2**20


def _blocks_per_chunk(st: Any, info: dict) -> int:
    """Blocks per dask chunk along the first batch dim for reading a store whole: as many as
    keep every array's chunk within :data:`SUMMARY_CHUNK_BYTES` (from the arrays' metadata)."""
    import zarr

    from .storeview import row_bytes

    layout = info["layout"]
    root = zarr.open_group(str(st.path), mode="r", use_consolidated=False)
    names = [m.parent.name for m in st.path.glob("*/zarr.json")]  # not .daskbatch/, not Zarr
    widest = row_bytes(root, names, layout["batch_dims"][0])
    block = int(layout["block_shape"][0])
    blocks = -(-int(layout["batch_shape"][0]) // block)
    return int(max(1, min(blocks, SUMMARY_CHUNK_BYTES // (widest * block))))


def _per_sample(ds: Any, info: dict) -> tuple[Any, dict]:
    """The Dataset without the store's reductions (values over samples, not per sample),
    and ``info`` whose kernel outputs are those stored per sample (an output declared
    ``Output(store=False)`` is only in the reductions)."""
    reduced = [k for k, v in ds.data_vars.items() if "reduced_dims" in v.attrs]
    if reduced:
        ds = ds.drop_vars(reduced)
    from .outputs import stored_specs

    stored = stored_specs(info["kernel"]["outputs"])
    if len(stored) == len(info["kernel"]["outputs"]):
        return ds, info
    return ds, {**info, "kernel": {**info["kernel"], "outputs": stored}}


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
        ``std`` (the sample standard deviation, ``ddof=1``), ``min``, ``max``, then
        the quantiles), followed by the batch dims
        that are kept and the output's core dims: for a response curve over
        ``time``, ``summary.response.sel(stat="p50")`` is the median curve and
        ``p10``/``p90`` the band. Only ok samples of committed blocks enter the
        statistics. The counts of samples per status are the variables ``n_ok``,
        ``n_failed``, ``n_timeout``, ``n_crashed`` and ``n_pending`` (the samples of
        blocks without a commit marker are pending), as :func:`daskbatch.status`
        counts them.
    """
    import dask
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
    units: dict[str, str] = {}
    for name in info["kernel"]["outputs"]:
        x = _valid(ds, name, ok)
        if x is None:  # text: no statistics
            continue
        if "units" in ds[name].attrs:
            units[name] = str(ds[name].attrs["units"])
        if 0 in x.shape:  # a ragged output empty in every sample: no values, no statistics
            empty = x.isel(dict.fromkeys(over, 0), drop=True) if n_over else x.sum(over)
            out[name] = xr.concat([empty] * len(names), dim="stat", coords="minimal", compat="override")
            continue
        stats = [x.count(over), x.mean(over), x.std(over, ddof=1), x.min(over), x.max(over)]
        if qs:
            kept = [d for d in x.dims if d not in over]
            n_kept = int(np.prod([x.sizes[d] for d in kept]))
            if n_over * n_kept <= EXACT_QUANTILE_VALUES:
                # the reduced dims in one chunk, the kept ones cut into a few tasks
                per = max(1, EXACT_QUANTILE_VALUES // (8 * n_over))
                chunks = {d: -1 for d in over}
                chunks.update({d: max(1, min(x.sizes[d], per)) for d in kept})
                q = x.chunk(chunks).quantile(qs, dim=over, skipna=True)
                stats += [q.sel(quantile=v, drop=True) for v in qs]
            elif set(over) == set(batch_dims):
                stats += _sketch_quantiles(x, over, qs)
            else:
                raise DaskbatchError(
                    f"summarize: exact quantiles of {name!r} would gather {n_over * n_kept:,} values, more "
                    f"than {EXACT_QUANTILE_VALUES:,}; reduce over every batch dim (approximate "
                    "quantiles), or pass quantiles=()"
                )
        out[name] = xr.concat(stats, dim="stat", coords="minimal", compat="override")
    result = xr.Dataset(out).assign_coords(stat=names)
    with warnings.catch_warnings():  # statistics of no value (every sample failed) are NaN, as said
        warnings.filterwarnings(
            "ignore", "All-NaN slice|Mean of empty slice|invalid value|Degrees of freedom"
        )
        (result,) = dask.compute(result)
    for name, u in units.items():
        result[name].attrs["units"] = u
    result.attrs["store"] = str(getattr(data, "path", data)) if not isinstance(data, xr.Dataset) else ""
    result.attrs["over"] = list(over)
    return result


def _content(space: Any) -> Any:
    """A space's fingerprint without what names a table's file format (``source``)."""
    if isinstance(space, dict) and space.get("type") == "table" and space.get("sha256"):
        return {k: v for k, v in space.items() if k != "source"}
    return space


def _is_number(spec: dict) -> bool:
    """Whether an output (its spec in the store's info) holds one number per sample:
    no core dims, not text."""
    if spec.get("shape"):
        return False
    try:
        return np.dtype(spec.get("dtype", "float64")).kind in "biuf"
    except TypeError:  # "str", numpy's StringDType: text
        return False


def _valid(ds, name: str, ok):
    """An output as float64 where it has a value: ok samples, and for a ragged output
    the values within each sample's length; None for a text output."""
    var = ds[name]
    if var.dtype.kind in "TUSO":
        return None
    x = var.astype("float64").where(ok)
    meta = var.attrs.get("daskbatch")
    if isinstance(meta, dict) and meta.get("ragged") and var.ndim > ok.ndim:
        length = ds.get(str(meta.get("length") or f"{name}_length"))
        if length is not None:
            core = var.dims[-1]
            x = x.where(_index_along(core, var.sizes[core]) < length)
    return x


def _index_along(dim: str, n: int):
    """0, 1, ... n - 1 along ``dim``, as an xarray DataArray."""
    import xarray as xr

    return xr.DataArray(np.arange(n), dims=dim)


def scalar_summary(data: Any, *, threshold: float = 1.5):
    """One row per scalar output: what ``daskbatch summary`` prints.

    Parameters
    ----------
    data
        A store path, or the Dataset :func:`daskbatch.open` returned.
    threshold
        The outliers' fences, in IQRs below p25 and above p75 (as :func:`outliers`
        with ``method="iqr"``).

    Returns
    -------
    pandas.DataFrame
        Indexed by output: ``units`` (the output's ``units`` attribute, or ""),
        ``count`` (ok samples), ``mean``, ``sd`` (``ddof=1``), ``min``, ``p10``,
        ``p25``, ``p50``, ``p75``, ``p90``, ``max``, ``outliers`` (how many ok samples
        lie outside the fences: :func:`outliers` lists them) and ``outliers %`` (of
        the ok samples). ``df.attrs["samples"]`` holds the samples per status.
    """
    ds, info = _open(data)
    return _scalar_rows(ds, info, summarize(ds, quantiles=SUMMARY_QUANTILES), threshold)


#: The quantiles ``daskbatch summary`` computes (p25 and p75 for the outliers' fences).
SUMMARY_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _scalar_rows(ds, info: dict, summary, threshold: float = 1.5):
    """:func:`scalar_summary` from a :func:`summarize` with :data:`SUMMARY_QUANTILES`."""
    import dask
    import pandas as pd

    outputs = info["kernel"]["outputs"]
    names = [k for k, o in outputs.items() if _is_number(o) and k in summary.data_vars]
    rows, lazy = [], {}
    for k in names:
        v = summary[k]
        row = {"output": k, "units": str(v.attrs.get("units", ""))}
        for stat, col in (("count", "count"), ("mean", "mean"), ("std", "sd"), ("min", "min")):
            row[col] = float(v.sel(stat=stat))
        for q in ("p10", "p25", "p50", "p75", "p90"):
            row[q] = float(v.sel(stat=q))
        row["max"] = float(v.sel(stat="max"))
        row["count"] = int(row["count"])
        iqr = row["p75"] - row["p25"]
        lo, hi = row["p25"] - threshold * iqr, row["p75"] + threshold * iqr
        x = _scalar(ds, info, k)
        lazy[k] = ((x < lo) | (x > hi)).sum()
        rows.append(row)
    counts = dict(zip(lazy, dask.compute(*lazy.values()), strict=True)) if lazy else {}
    for row in rows:
        n_out = int(counts.get(row["output"], 0)) if row["count"] else 0
        row["outliers"] = n_out
        row["outliers %"] = 100.0 * n_out / row["count"] if row["count"] else 0.0
    columns = ["units", "count", "mean", "sd", "min", "p10", "p25", "p50", "p75", "p90", "max"]
    df = pd.DataFrame(rows, columns=["output", *columns, "outliers", "outliers %"]).set_index("output")
    df.attrs["samples"] = status_counts(summary)
    df.attrs["threshold"] = threshold
    return df


def status_counts(summary: Any) -> dict[str, int]:
    """Samples per status name in a :func:`summarize` result (its ``n_<status>``
    variables; an output may be named ``n_points`` too)."""
    return {code: int(summary[f"n_{code}"]) for code, _ in STATUS.items() if f"n_{code}" in summary}


def _pct_change(a: float, b: float) -> float:
    """``100 (b - a) / |a|``; NaN when ``a`` is 0 or either is not a number."""
    if not (np.isfinite(a) and np.isfinite(b)) or a == 0:
        return float("nan")
    return 100.0 * (b - a) / abs(a)


def _sketch_quantiles(x, over: Sequence[str], qs: list[float]) -> list:
    """Approximate quantiles over every batch dim, with the memory of one block.

    Each block of samples gives its 0, 0.5, ... 100 % percentiles per value of the
    core dims and its count of ok samples; the blocks' percentiles are merged, weighted
    by their counts, as dask's ``percentile`` does (``merge_percentiles``). The result
    lies within the spread of the blocks' own quantiles; on 200,000 uniform values in
    blocks of 20,000 it is within 0.01 of the exact quantiles. The core values are
    taken a few of their chunks at a time (a ragged output's are ``C`` wide), so that
    the blocks' percentiles held at once stay near :data:`SKETCH_BYTES`, however long
    the longest value.
    """
    import xarray as xr

    core = [d for d in x.dims if d not in over]
    x = x.transpose(*over, *core)
    grid = np.union1d(SKETCH_PERCENTILES, np.asarray(qs) * 100)  # the asked ones exactly too
    n_core = int(np.prod([x.sizes[d] for d in core])) if core else 1
    data = x.data.reshape((-1, n_core))  # samples x values, chunked like the blocks
    per_value = data.numblocks[0] * (grid.size + 1) * 8  # bytes of the sketches of one value
    groups: list[list[int]] = []  # [start, stop) of the values: whole chunks, a few at a time
    start = 0
    for width in data.chunks[1]:
        if groups and (start + width - groups[-1][0]) * per_value <= SKETCH_BYTES:
            groups[-1][1] = start + width
        else:
            groups.append([start, start + width])
        start += width
    out = np.full((len(qs), n_core), np.nan)
    for a, b in groups:
        out[:, a:b] = _merged_sketches(data[:, a:b], grid, qs)
    shape = [x.sizes[d] for d in core]
    coords = {d: x[d] for d in core if d in x.coords}
    return [xr.DataArray(out[i].reshape(shape), dims=core, coords=coords) for i in range(len(qs))]


def _merged_sketches(data: Any, grid: np.ndarray, qs: list[float]) -> np.ndarray:
    """The quantiles ``qs`` of each column of ``data`` (samples x values, a dask array),
    from the percentiles ``grid`` of each block of rows."""
    import dask.array as da
    from dask.array.percentile import merge_percentiles

    data = data.rechunk({1: -1})

    def sketch(block):
        counts = np.sum(~np.isnan(block), axis=0).astype(np.float64)
        pct = np.full((grid.size, block.shape[1]), np.nan)
        has = counts > 0  # values with no ok sample have none (and no warning, which
        if has.any():  # a filter could not silence in threads: it is process-wide)
            pct[:, has] = np.nanpercentile(block[:, has], grid, axis=0)
        return np.concatenate([counts[None, :], pct], axis=0)[None, :, :]

    n = data.shape[1]
    sketches = da.map_blocks(
        sketch, data, new_axis=1, chunks=((1,) * data.numblocks[0], (grid.size + 1,), (n,)), dtype=np.float64
    ).compute()  # (blocks, 1 + percentiles, values)
    out = np.full((len(qs), n), np.nan)
    counts, at = sketches[:, 0, :], np.searchsorted(grid, np.asarray(qs) * 100)
    blocks = (counts > 0).sum(axis=0)
    one = np.flatnonzero(blocks == 1)  # values of one block only (the tail of a long one): its own
    out[:, one] = sketches[np.argmax(counts[:, one] > 0, axis=0)[None, :], 1 + at[:, None], one[None, :]]
    for k in np.flatnonzero(blocks > 1).tolist():
        use = counts[:, k] > 0
        out[:, k] = merge_percentiles(
            np.asarray(qs) * 100,
            [grid] * int(use.sum()),
            list(sketches[use, 1:, k]),
            method="linear",
            Ns=[int(c) for c in counts[use, k]],
        )
    return out


def _scalar(ds, info: dict, output: str):
    """An output as a flat dask array over the samples (ok samples, NaN elsewhere)."""
    outputs = info["kernel"]["outputs"]
    if output not in outputs:
        raise DaskbatchError(f"output={output!r} is not an output of this store; outputs: {sorted(outputs)}")
    if outputs[output]["shape"] and set(ds[output].dims) - set(info["layout"]["batch_dims"]):
        raise DaskbatchError(
            f"output={output!r} has core dims {outputs[output]['dims']}; choose a scalar output, "
            f"or select one value first (ds[{output!r}].isel(...))"
        )
    x = ds[output].astype("float64").where(ds.status == STATUS["ok"])
    return x.data.reshape(-1)


def outliers(data: Any, output: str, method: str = "iqr", threshold: float | None = None, limit: int = 1000):
    """Samples whose value of a scalar output lies far from the others.

    ``method="iqr"``: below ``p25 - threshold * IQR`` or above ``p75 + threshold *
    IQR`` (``threshold`` 1.5 by default); ``method="zscore"``: ``|x - mean| / sd``
    above ``threshold`` (3 by default). Returns a :class:`pandas.DataFrame` with the
    samples' batch coordinates, parameters, the value and its score (z-score, or the
    distance outside the fences in IQRs), the most extreme first, at most ``limit``
    rows; ``df.attrs`` holds the fences and the total count.
    """
    import dask.array as da
    import pandas as pd

    ds, info = _open(data)
    if method not in ("iqr", "zscore"):
        raise DaskbatchError(f"method={method!r}: use 'iqr' or 'zscore'")
    if threshold is None:
        threshold = 1.5 if method == "iqr" else 3.0
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
        raise DaskbatchError(f"threshold={threshold!r} must be a number > 0")
    x = _scalar(ds, info, output)
    summary = summarize(ds, quantiles=(0.25, 0.75))[output]
    mean, sd = float(summary.sel(stat="mean")), float(summary.sel(stat="std"))
    if method == "iqr":
        q1, q3 = float(summary.sel(stat="p25")), float(summary.sel(stat="p75"))
        iqr = q3 - q1
        lo, hi = q1 - threshold * iqr, q3 + threshold * iqr
        score = da.maximum(lo - x, x - hi) / (iqr if iqr > 0 else 1.0)
    else:
        lo, hi = mean - threshold * sd, mean + threshold * sd
        score = abs(x - mean) / (sd if sd > 0 else 1.0)
    flagged = (x < lo) | (x > hi)
    (idx,) = da.nonzero(flagged)
    idx = idx.compute()
    total = int(idx.size)
    if total > limit:  # the most extreme
        scores = score.vindex[idx].compute() if idx.size else np.empty(0)
        idx = np.sort(idx[np.argsort(-scores, kind="stable")[:limit]])
    batch_dims = list(info["layout"]["batch_dims"])
    pos = np.unravel_index(idx, tuple(info["layout"]["batch_shape"]))
    rows: dict[str, Any] = {}
    sel = {d: ("_o", p) for d, p in zip(batch_dims, pos, strict=True)}
    import xarray as xr

    picked = ds.isel({d: xr.DataArray(p, dims="_o") for d, (_, p) in sel.items()})
    for d in batch_dims:
        rows[d] = picked[d].values
    skip = {*batch_dims, "status", *info["kernel"]["outputs"]}
    for name in ds.data_vars:
        if name in skip:
            continue
        v = picked[name].values
        if v.ndim == 1:
            rows[name] = v
    rows[output] = picked[output].values.astype("float64")
    rows["score"] = score.vindex[idx].compute() if idx.size else np.empty(0)
    df = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    df.attrs.update({"output": output, "method": method, "threshold": threshold, "low": lo, "high": hi})
    df.attrs["total"] = total
    return df


def convergence(data: Any, output: str, points: int = 200):
    """The running mean of a scalar output and its standard error against the number
    of (ok) samples, in sample order: a Monte Carlo run's convergence.

    Returns a :class:`xarray.Dataset` over ``n`` (about ``points`` log-spaced sample
    counts, the last one all ok samples) with ``mean`` and ``sem``. Computed with
    dask's cumulative sums, one block at a time.
    """
    import dask.array as da
    import xarray as xr

    ds, info = _open(data)
    x = _scalar(ds, info, output)
    ok = ~da.isnan(x)
    count = da.cumsum(ok.astype("int64"))
    s1 = da.cumsum(da.where(ok, x, 0.0))
    s2 = da.cumsum(da.where(ok, x * x, 0.0))
    n_total = int(count[-1].compute())
    if n_total < 2:
        raise DaskbatchError(f"convergence: {output!r} has {n_total} ok sample(s); need at least 2")
    targets = np.unique(np.geomspace(2, n_total, num=max(2, int(points))).astype(np.int64))
    # the position of the n-th ok sample, for each target n
    where = da.searchsorted(count, da.from_array(targets), side="left").compute()
    c, a, b = (np.asarray(v) for v in da.compute(count.vindex[where], s1.vindex[where], s2.vindex[where]))
    mean = a / c
    var = np.maximum(b / c - mean * mean, 0.0) * c / np.maximum(c - 1, 1)
    out = xr.Dataset(
        {"mean": ("n", mean), "sem": ("n", np.sqrt(var / c))},
        coords={"n": c.astype(np.int64)},
    )
    out.attrs["output"] = output
    return out


def compare(a: Any, b: Any, *, rtol: float = 1e-10, atol: float = 0.0, max_ks_samples: int = 1_000_000):
    """Compare two runs with the same outputs.

    Returns a :class:`pandas.DataFrame`, one row per scalar output: the mean and the
    quantiles of each run and their differences, the percent change of the mean and
    of the median from ``a`` to ``b`` (``mean change %``, ``p50 change %``: ``100 (b -
    a) / |a|``, NaN when ``a``'s is 0), the two-sample Kolmogorov-Smirnov
    statistic and p-value (on at most ``max_ks_samples`` random ok samples of each),
    and, when the runs share their parameters (same design, same values), how many
    samples differ beyond ``atol + rtol * |b|`` and the first of them
    (``df.attrs["differing"]``).
    """
    import dask.array as da
    import pandas as pd
    from scipy import stats

    ds_a, info_a = _open(a)
    ds_b, info_b = _open(b)
    out_a, out_b = info_a["kernel"]["outputs"], info_b["kernel"]["outputs"]
    common = [k for k in out_a if k in out_b and _is_number(out_a[k]) and _is_number(out_b[k])]
    if not common:
        hint = (
            "; a store that keeps no output (each declared Output(store=False): only reduced) has its "
            "reductions in `daskbatch status STORE` (--json) and daskbatch.status(STORE).reductions"
            if not out_a or not out_b
            else "; compare reads one number per sample: outputs with core dims (curves) or text are "
            "left out; summarize them (daskbatch summary STORE) or select one value of a curve "
            "into an output of its own"
            if set(out_a) & set(out_b)
            else ""
        )
        raise DaskbatchError(
            f"compare: the runs share no scalar output that their stores keep ({sorted(out_a)} vs "
            f"{sorted(out_b)}){hint}"
        )
    sa, sb = summarize(ds_a), summarize(ds_b)
    # the same parameters: the same space (its fingerprint: a design's spec and seed, a
    # table's contents, the files' paths, sizes and times), so the same samples in order;
    # parameters a store only references (a file table, Files) are not in its Dataset. A
    # table's contents are digested whatever its file's format: CSV and Parquet compare
    same_params = ds_a.sizes == ds_b.sizes and _content(info_a.get("space")) == _content(info_b.get("space"))
    rng = np.random.default_rng(0)
    rows, differing = [], {}
    for k in common:
        row: dict[str, Any] = {"output": k}
        for stat in ("count", "mean", "p10", "p50", "p90"):
            va, vb = float(sa[k].sel(stat=stat)), float(sb[k].sel(stat=stat))
            row[f"{stat} a"], row[f"{stat} b"], row[f"{stat} diff"] = va, vb, vb - va
        row["mean change %"] = _pct_change(row["mean a"], row["mean b"])
        row["p50 change %"] = _pct_change(row["p50 a"], row["p50 b"])
        samples = []
        for ds, info in ((ds_a, info_a), (ds_b, info_b)):
            x = _scalar(ds, info, k)
            n = x.shape[0]
            take = np.sort(rng.choice(n, size=min(n, max_ks_samples), replace=False))
            v = x.vindex[take].compute() if take.size < n else x.compute()
            samples.append(v[~np.isnan(v)])
        if min(len(samples[0]), len(samples[1])) > 0:
            ks = stats.ks_2samp(samples[0], samples[1])
            row["ks statistic"], row["ks p-value"] = float(ks.statistic), float(ks.pvalue)
        else:  # no value on one side (every sample failed): nothing to test
            row["ks statistic"], row["ks p-value"] = float("nan"), float("nan")
        if same_params:
            xa, xb = _scalar(ds_a, info_a, k), _scalar(ds_b, info_b, k)
            bad = ~((abs(xa - xb) <= atol + rtol * abs(xb)) | (da.isnan(xa) & da.isnan(xb)))
            (idx,) = da.nonzero(bad)
            idx = idx.compute()
            row["samples differing"] = int(idx.size)
            differing[k] = idx[:100].tolist()
        else:
            row["samples differing"] = None
        rows.append(row)
    df = pd.DataFrame(rows).set_index("output")
    df.attrs.update(
        {"same_parameters": bool(same_params), "differing": differing, "rtol": rtol, "atol": atol}
    )
    return df
