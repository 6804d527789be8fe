"""Reductions of a run's outputs over its batch dims, merged block by block.

A run that asks for statistics (``reduce="mean"``, ``reduce={"response": ["mean", "std",
Quantiles([0.05, 0.5, 0.95])]}``) keeps, for every block it commits, a small partial state
of each statistic (:meth:`Reductions.partial`: counts, sums, moments, t-digests, histogram
counts...), written as JSON in the block's commit record. At the end, or between rounds,
the committed blocks' partial states are merged (:meth:`Reductions.merge`) and turned into
an :class:`xarray.Dataset` (:meth:`Reductions.to_dataset`).

Only samples whose status is ``ok`` count; NaN values of a float output are skipped
element by element (as xarray's ``skipna``), and ``<output>_count`` says how many values
each statistic saw. Moments are merged exactly (Chan's pairwise update, ddof=0), integer
sums exactly in int64; quantiles are estimated with a t-digest (:mod:`crick`). Partial
states are merged in the order of their block index, whatever order they arrive in, so the
same committed blocks always give bitwise identical results.

:class:`Converged` tells when a statistic is known well enough: its :meth:`Converged.check`
gives an :class:`Estimate` (value, error at a confidence level, count, whether it is met).

Examples
--------
>>> import numpy as np
>>> from daskbatch.outputs import Output
>>> red = parse_reduce(["mean", "max"], {"y": Output()}, ("sample",))
>>> doc = red.partial({"y": np.array([1.0, 2.0, 6.0])}, np.array([1, 1, 1]), (slice(0, 3),))
>>> ds = red.to_dataset(red.merge([((0,), doc)], (3,)))
>>> float(ds["y_mean"]), float(ds["y_max"]), int(ds["y_count"])
(3.0, 6.0, 3)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DaskbatchError
from .outputs import Output
from .records import STATUS

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = [
    "STATS",
    "Aggregation",
    "Converged",
    "Estimate",
    "Exceedance",
    "Histogram",
    "Merged",
    "Quantiles",
    "ReductionError",
    "Reductions",
    "decode_array",
    "encode_array",
    "parse_reduce",
]

#: The statistics named by a string, in the order results list them.
STATS = ("count", "sum", "mean", "var", "std", "min", "max")
STATS_TEXT = ", ".join(repr(s) for s in STATS)
#: What ``reduce=`` takes besides those strings.
OBJECTS_TEXT = (
    "Quantiles(q), Histogram(bins), Exceedance(threshold) or Aggregation(name, chunk, combine, finalize)"
)
#: Version of the partial-state documents (:meth:`Reductions.partial`).
DOC_VERSION = 1
#: Raw array bytes above which an encoded array is zlib-compressed (when that helps).
ZLIB_ABOVE = 256
#: Suffixes of result variables that builtin statistics use (an Aggregation may not).
_TAKEN_SUFFIXES = (
    *STATS,
    "quantile",
    "histogram",
    "histogram_underflow",
    "histogram_overflow",
    "exceedance",
    "exceedance_stderr",
)


class ReductionError(DaskbatchError):
    """A ``reduce=``, ``dims=`` or ``until=`` argument is invalid, or partial states
    given to :meth:`Reductions.merge` do not belong to these reductions."""


# --------------------------------------------------------------------------------------
# statistics


def _finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Quantiles:
    """Quantiles of an output, estimated with a t-digest (:class:`crick.TDigest`).

    Parameters
    ----------
    q
        Probabilities strictly between 0 and 1, e.g. ``[0.05, 0.5, 0.95]`` (kept sorted,
        duplicates dropped). For 0 and 1 ask ``"min"`` and ``"max"``.
    compression
        The digest's compression, 20 to 1000: more is more accurate and makes bigger
        partial states (about ``1.3 * compression`` centroids of 12 bytes per element).

    Notes
    -----
    The result variable is ``<output>_quantile``, with a leading ``quantile`` dim holding
    the ``q`` values. With the default compression, the rank error of a quantile (how far
    its true rank is from ``q``) stays below about 0.1% for 10^5 to 10^6 samples, and far
    below that in the tails. Infinite values are not in the digest.

    Examples
    --------
    >>> Quantiles([0.95, 0.5, 0.05]).q
    (0.05, 0.5, 0.95)
    """

    q: Sequence[float]
    compression: float = 200

    def __post_init__(self) -> None:
        q = self.q
        values = [q] if isinstance(q, int | float | np.integer | np.floating) else q
        if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
            raise ReductionError(
                f"Quantiles: q={q!r} is not a list of probabilities; give e.g. Quantiles([0.05, 0.5, 0.95])"
            )
        floats = [_finite_float(v) for v in np.asarray(values, dtype=object).ravel().tolist()]
        if not floats:
            raise ReductionError(f"Quantiles: q={q!r} is empty; give at least one, e.g. Quantiles([0.5])")
        for v, f in zip(np.asarray(values, dtype=object).ravel().tolist(), floats, strict=True):
            if f is None or not 0 < f < 1:
                raise ReductionError(
                    f"Quantiles: q={v!r} is not a probability strictly between 0 and 1; give e.g. "
                    "Quantiles([0.05, 0.5, 0.95]) (for 0 and 1 ask 'min' and 'max')"
                )
        c = _finite_float(self.compression)
        if c is None or not 20 <= c <= 1000:
            raise ReductionError(
                f"Quantiles: compression={self.compression!r} must be a number from 20 to 1000; "
                "the default 200 suits most uses"
            )
        object.__setattr__(self, "q", tuple(sorted(set(floats))))
        object.__setattr__(self, "compression", c)

    def spec(self) -> dict[str, Any]:
        """The statistic as JSON-ready values."""
        return {"stat": "quantile", "q": list(self.q), "compression": self.compression}


@dataclass(frozen=True)
class Histogram:
    """Counts of an output's values in fixed bins, plus the counts below and above them.

    Parameters
    ----------
    bins
        Bin edges, strictly increasing and finite (at least two). As in
        :func:`numpy.histogram`, each bin holds ``edges[i] <= x < edges[i + 1]``, the last
        one its right edge too.

    Notes
    -----
    Result variables: ``<output>_histogram`` (a trailing ``bin`` dim, whose coordinate is
    the bin centres, with ``bin_lower`` and ``bin_upper`` coordinates), and
    ``<output>_histogram_underflow`` / ``_overflow`` (values below the first edge, above
    the last; infinities count there).

    Examples
    --------
    >>> Histogram([0, 1, 2.5]).bins
    (0.0, 1.0, 2.5)
    """

    bins: Sequence[float] | np.ndarray

    def __post_init__(self) -> None:
        bins = self.bins
        try:
            edges = np.asarray(bins, dtype=float)
        except (TypeError, ValueError):
            edges = None
        if edges is None or edges.ndim != 1 or edges.size < 2:
            raise ReductionError(
                f"Histogram: bins={_short(bins)} must be a list of at least two bin edges, e.g. "
                "Histogram(np.linspace(0, 1, 11))"
            )
        if not np.isfinite(edges).all():
            raise ReductionError(
                f"Histogram: bins={_short(bins)} must be finite; values beyond the edges are counted "
                "in <output>_histogram_underflow and _overflow"
            )
        if not (np.diff(edges) > 0).all():
            raise ReductionError(
                f"Histogram: bins={_short(bins)} must be strictly increasing, e.g. Histogram([0, 1, 2, 5])"
            )
        object.__setattr__(self, "bins", tuple(float(e) for e in edges))

    def spec(self) -> dict[str, Any]:
        """The statistic as JSON-ready values."""
        return {"stat": "histogram", "bins": list(self.bins)}


@dataclass(frozen=True)
class Exceedance:
    """The probability that an output exceeds a threshold, with its standard error.

    Parameters
    ----------
    threshold
        A finite number.
    above
        True: the fraction of values ``> threshold``; False: of values ``< threshold``.

    Notes
    -----
    Result variables: ``<output>_exceedance`` (p) and ``<output>_exceedance_stderr``
    (``sqrt(p (1 - p) / n)``), with ``threshold`` and ``above`` in their attrs. Several
    Exceedance of one output stack along a trailing ``threshold`` dim.

    Examples
    --------
    >>> Exceedance(2.5).spec()
    {'stat': 'exceedance', 'threshold': 2.5, 'above': True}
    """

    threshold: float
    above: bool = True

    def __post_init__(self) -> None:
        t = _finite_float(self.threshold)
        if t is None:
            raise ReductionError(
                f"Exceedance: threshold={self.threshold!r} must be a finite number, e.g. Exceedance(1e-3)"
            )
        if not isinstance(self.above, bool | np.bool_):
            raise ReductionError(
                f"Exceedance: above={self.above!r} must be True (values > threshold) or False "
                "(values < threshold)"
            )
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "above", bool(self.above))

    def spec(self) -> dict[str, Any]:
        """The statistic as JSON-ready values."""
        return {"stat": "exceedance", "threshold": self.threshold, "above": self.above}


def _qualname(fn: Callable) -> str:
    """``module.qualname`` of a function (stable from run to run, unlike its repr)."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"


@dataclass(frozen=True)
class Aggregation:
    """A statistic of your own, reduced block by block (as flox's ``Aggregation``).

    Parameters
    ----------
    name
        Names the result variable ``<output>_<name>``: an identifier, not one of the builtin
        names (``mean``, ``quantile``...).
    chunk
        ``chunk(values) -> tuple of arrays``: the partial state of one block's values,
        ``values`` of shape ``(n_ok, *core shape)`` (the block's ok samples, NaN included,
        in the output's dtype; never called with ``n_ok == 0``).
    combine
        ``combine(state_a, state_b) -> state``: two states in one (a after b's blocks or
        before: combine need not commute, states are combined in block order).
    finalize
        ``finalize(state) -> array`` of the output's core shape.

    Notes
    -----
    States are numeric arrays (no objects): they go into the block's commit record as JSON.

    Examples
    --------
    >>> def chunk(v):
    ...     return (np.abs(v).max(axis=0),)
    >>> def combine(a, b):
    ...     return (np.maximum(a[0], b[0]),)
    >>> Aggregation("absmax", chunk, combine, lambda s: s[0]).name
    'absmax'
    """

    name: str
    chunk: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    combine: Callable[[Any, Any], Any]
    finalize: Callable[[Any], np.ndarray]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ReductionError(
                f"Aggregation: name={self.name!r} must be an identifier (letters, digits and _), "
                "e.g. 'absmax'"
            )
        if self.name in _TAKEN_SUFFIXES:
            raise ReductionError(
                f"Aggregation: name={self.name!r} is the name of a builtin statistic; pick another, "
                f"e.g. '{self.name}_'"
            )
        for part in ("chunk", "combine", "finalize"):
            fn = getattr(self, part)
            if not callable(fn):
                raise ReductionError(
                    f"Aggregation({self.name!r}): {part}={fn!r} is not callable; give a function"
                )

    def spec(self) -> dict[str, Any]:
        """The statistic as JSON-ready values (its functions by qualified name)."""
        return {
            "stat": "aggregation",
            "name": self.name,
            "chunk": _qualname(self.chunk),
            "combine": _qualname(self.combine),
            "finalize": _qualname(self.finalize),
        }


Stat = str | Quantiles | Histogram | Exceedance | Aggregation


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------
# arrays in JSON


def encode_array(arr: Any, compact: bool = False) -> dict[str, Any]:
    """A numeric array as a JSON-ready dict: dtype, shape and the base64 of its raw
    (little-endian) bytes, zlib-compressed when that makes them smaller.

    ``compact`` stores non-negative integers in the smallest unsigned dtype that holds
    them (:func:`decode_array` gives int64 back).

    Examples
    --------
    >>> doc = encode_array(np.arange(3.0))
    >>> doc["dtype"], doc["shape"], decode_array(doc).tolist()
    ('<f8', [3], [0.0, 1.0, 2.0])
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "biufc":
        raise ReductionError(f"encode_array: dtype {a.dtype} is not numeric; states are numeric arrays")
    doc: dict[str, Any] = {}
    if compact and a.dtype.kind in "iu" and a.size:
        top = int(a.max())
        if int(a.min()) >= 0 and top <= np.iinfo(np.uint32).max:
            small = np.min_scalar_type(top)
            if small.itemsize < a.dtype.itemsize:
                doc["int64"] = True
                a = a.astype(small)
    a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)  # 0-d stays 0-d
    raw = a.tobytes()
    if len(raw) > ZLIB_ABOVE:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            raw = packed
            doc["zlib"] = True
    doc.update(dtype=a.dtype.str, shape=list(a.shape), data=base64.b64encode(raw).decode("ascii"))
    return doc


def decode_array(doc: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`encode_array` encoded (a writable copy, native byte order)."""
    raw = base64.b64decode(doc["data"])
    if doc.get("zlib"):
        raw = zlib.decompress(raw)
    dtype = np.dtype(doc["dtype"])
    arr = np.frombuffer(raw, dtype=dtype).reshape(doc["shape"])
    arr = arr.astype(np.int64 if doc.get("int64") else dtype.newbyteorder("="))
    return arr


# --------------------------------------------------------------------------------------
# t-digests


def _digest(compression: float) -> Any:
    from crick import TDigest

    return TDigest(compression)


def _set_extremes(d: Any, lo: float, hi: float) -> None:
    """Give a digest rebuilt from centroids its true min and max (a rebuilt digest knows
    only its centroids' means, and the tails interpolate towards min and max)."""
    setstate = getattr(d, "__setstate__", None)
    if setstate is None or not (np.isfinite(lo) and np.isfinite(hi)) or d.size() == 0:
        return
    centroids = d.centroids()  # flushes the buffer: state is only the centroids
    setstate((centroids, float(centroids["weight"].sum()), float(lo), float(hi)))


# --------------------------------------------------------------------------------------
# one output's plan


def _sentinels(dtype: np.dtype) -> tuple[Any, Any]:
    """The values ``min`` and ``max`` start from (an empty min, an empty max)."""
    if dtype.kind == "f":
        return np.inf, -np.inf
    if dtype.kind == "b":
        return True, False
    info = np.iinfo(dtype)
    return info.max, info.min


@dataclass
class _Plan:
    """What is reduced of one output, and how its partial states are made and merged."""

    name: str
    output: Output
    simple: tuple[str, ...] = ()
    quantiles: Quantiles | None = None
    histogram: Histogram | None = None
    exceedances: tuple[Exceedance, ...] = ()
    aggregations: tuple[Aggregation, ...] = ()
    # names of extra dims, set once every plan is known
    quantile_dim: str = "quantile"
    bin_dim: str = "bin"
    threshold_dim: str = "threshold"

    @property
    def variable(self) -> bool:
        return self.output.variable

    @property
    def core(self) -> tuple[int, ...]:
        return () if self.variable else tuple(int(s) for s in self.output.shape)

    @property
    def core_dims(self) -> tuple[str, ...]:
        return () if self.variable else self.output.dims

    @property
    def moments(self) -> bool:
        return any(s in self.simple for s in ("mean", "var", "std"))

    @property
    def sum_dtype(self) -> np.dtype:
        kind = self.output.dtype.kind
        if kind == "f":
            return np.dtype(np.float64)
        return np.dtype(np.uint64 if self.output.dtype == np.uint64 else np.int64)

    def stats(self) -> list[Stat]:
        """The statistics asked, in canonical order."""
        out: list[Stat] = list(self.simple)
        if self.quantiles is not None:
            out.append(self.quantiles)
        if self.histogram is not None:
            out.append(self.histogram)
        out.extend(self.exceedances)
        out.extend(self.aggregations)
        return out

    def spec(self) -> list[Any]:
        return [s if isinstance(s, str) else s.spec() for s in self.stats()]

    def variables(self) -> list[str]:
        """Names of the result variables."""
        names = [f"{self.name}_count"]
        names += [f"{self.name}_{s}" for s in self.simple if s != "count"]
        if self.quantiles is not None:
            names.append(f"{self.name}_quantile")
        if self.histogram is not None:
            names += [f"{self.name}_histogram{s}" for s in ("", "_underflow", "_overflow")]
        if self.exceedances:
            names += [f"{self.name}_exceedance", f"{self.name}_exceedance_stderr"]
        names += [f"{self.name}_{a.name}" for a in self.aggregations]
        return names

    # -- one block ---------------------------------------------------------------------

    def partial(
        self, values: Any, ok: np.ndarray, kept_axes: tuple[int, ...], red_axes: tuple[int, ...]
    ) -> dict:
        """The partial state of one block (JSON-ready)."""
        block_shape = ok.shape
        kept_b = tuple(block_shape[a] for a in kept_axes)
        r = math.prod(block_shape[a] for a in red_axes)
        okk = np.transpose(ok, kept_axes + red_axes).reshape((*kept_b, r))
        if self.variable:
            return {"n": encode_array(okk.sum(-1, dtype=np.int64), compact=True)}
        arr = np.asarray(values)
        expected = block_shape + self.core
        if arr.shape != expected:
            raise ReductionError(
                f"partial: outputs[{self.name!r}] has shape {arr.shape}, expected {expected} "
                "(the block's shape, then the output's core shape)"
            )
        ncore = len(self.core)
        core_axes = tuple(range(len(block_shape), arr.ndim))
        x_rc = np.transpose(arr, kept_axes + red_axes + core_axes).reshape((*kept_b, r, *self.core))
        x = np.moveaxis(x_rc, len(kept_b), -1)  # kept_b + core + (r,)
        okx = okk.reshape((*kept_b, *(1,) * ncore, r))
        is_float = arr.dtype.kind == "f"
        valid = okx & ~np.isnan(x) if is_float else np.broadcast_to(okx, x.shape)
        n = valid.sum(-1, dtype=np.int64)
        state: dict[str, Any] = {"n": encode_array(n, compact=True)}
        if "sum" in self.simple:
            if is_float:
                s = np.where(valid, x, 0).sum(-1, dtype=np.float64)
            else:
                s = np.where(valid, x, 0).astype(self.sum_dtype).sum(-1, dtype=self.sum_dtype)
            state["sum"] = encode_array(s)
        if self.moments:
            xf = np.where(valid, x.astype(np.float64), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(n > 0, xf.sum(-1) / np.maximum(n, 1), 0.0)
                d = np.where(valid, xf - mean[..., None], 0.0)
            state["mean"] = encode_array(mean)
            state["m2"] = encode_array((d * d).sum(-1))
        lo_empty, hi_empty = _sentinels(arr.dtype)
        if "min" in self.simple:
            state["min"] = encode_array(np.where(valid, x, lo_empty).min(-1, initial=lo_empty))
        if "max" in self.simple:
            state["max"] = encode_array(np.where(valid, x, hi_empty).max(-1, initial=hi_empty))
        if self.quantiles is not None:
            state["digest"] = self._digest_partial(x, valid)
        if self.histogram is not None:
            state["hist"] = encode_array(self._histogram(x, valid), compact=True)
        if self.exceedances:
            k = np.stack(
                [
                    (valid & ((x > e.threshold) if e.above else (x < e.threshold))).sum(-1)
                    for e in self.exceedances
                ],
                axis=-1,
            ).astype(np.int64)
            state["exceed"] = encode_array(k, compact=True)
        if self.aggregations:
            state["agg"] = {a.name: self._agg_partial(a, x_rc, okk) for a in self.aggregations}
        return state

    def _digest_partial(self, x: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
        assert self.quantiles is not None
        cols = x.reshape(-1, x.shape[-1])
        oks = valid.reshape(-1, x.shape[-1])
        means, weights, sizes = [], [], np.zeros(len(cols), np.int64)
        lo = np.full(len(cols), np.nan)
        hi = np.full(len(cols), np.nan)
        for e in range(len(cols)):
            col = cols[e][oks[e]].astype(np.float64, copy=False)
            col = col[np.isfinite(col)]
            if not col.size:
                continue
            d = _digest(self.quantiles.compression)
            d.update(col)
            c = d.centroids()
            means.append(c["mean"])
            weights.append(c["weight"])
            sizes[e] = len(c)
            lo[e], hi[e] = col.min(), col.max()
        m = np.concatenate(means) if means else np.zeros(0)
        w = np.concatenate(weights) if weights else np.zeros(0)
        integral = w.size == 0 or (np.all(w == np.round(w)) and w.max() <= np.iinfo(np.uint32).max)
        return {
            "shape": list(x.shape[:-1]),
            "sizes": encode_array(sizes, compact=True),
            "means": encode_array(m),
            "weights": encode_array(w.astype(np.uint32) if integral else w),
            "lo": encode_array(lo),
            "hi": encode_array(hi),
        }

    def _histogram(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        assert self.histogram is not None
        edges = np.asarray(self.histogram.bins)
        nb = len(edges) - 1
        xf = x.astype(np.float64, copy=False)
        slot = np.searchsorted(edges, xf, side="right")  # 0 under, 1..nb bins, nb + 1 over
        slot[xf == edges[-1]] = nb
        elements = np.arange(math.prod(x.shape[:-1]), dtype=np.int64).reshape((*x.shape[:-1], 1))
        flat = (elements * (nb + 2) + slot)[valid]
        counts = np.bincount(flat, minlength=elements.size * (nb + 2))
        return counts.reshape((*x.shape[:-1], nb + 2)).astype(np.int64)

    def _agg_partial(self, agg: Aggregation, x_rc: np.ndarray, okk: np.ndarray) -> list[Any]:
        kept_b = okk.shape[:-1]
        cells: list[Any] = []
        for idx in np.ndindex(kept_b):
            vals = x_rc[idx][okk[idx]]
            if not vals.shape[0]:
                cells.append(None)
                continue
            state = agg.chunk(vals)
            cells.append(_encode_state(agg, state))
        return cells

    # -- merging -----------------------------------------------------------------------

    def empty(self, kept_shape: tuple[int, ...]) -> dict[str, Any]:
        """Accumulators of nothing merged yet."""
        shape = kept_shape + self.core
        acc: dict[str, Any] = {"n": np.zeros(shape, np.int64)}
        if self.variable:
            return acc
        if "sum" in self.simple:
            acc["sum"] = np.zeros(shape, self.sum_dtype)
        if self.moments:
            acc["mean"] = np.zeros(shape)
            acc["m2"] = np.zeros(shape)
        lo_empty, hi_empty = _sentinels(self.output.dtype)
        if "min" in self.simple:
            acc["min"] = np.full(shape, lo_empty, self.output.dtype)
        if "max" in self.simple:
            acc["max"] = np.full(shape, hi_empty, self.output.dtype)
        if self.quantiles is not None:
            acc["digest"] = np.full(shape, None, dtype=object)
            acc["lo"] = np.full(shape, np.nan)
            acc["hi"] = np.full(shape, np.nan)
        if self.histogram is not None:
            acc["hist"] = np.zeros((*shape, len(self.histogram.bins) + 1), np.int64)
        if self.exceedances:
            acc["exceed"] = np.zeros((*shape, len(self.exceedances)), np.int64)
        for a in self.aggregations:
            acc[f"agg:{a.name}"] = np.full(kept_shape, None, dtype=object)
        return acc

    def combine(self, acc: dict[str, Any], state: Mapping[str, Any], region: tuple[slice, ...]) -> None:
        """Merge one block's partial ``state`` into ``acc`` at ``region`` (its kept cells)."""
        nb = decode_array(state["n"])
        na = acc["n"][region]
        shape = na.shape
        if nb.shape != shape:
            raise ReductionError(
                f"merge: output {self.name!r}: a partial state of shape {nb.shape} for kept cells of shape "
                f"{shape}; the state was made by other reductions"
            )
        if self.variable:
            acc["n"][region] = na + nb
            return
        n = na + nb
        if "sum" in self.simple:
            acc["sum"][region] += decode_array(state["sum"]).astype(self.sum_dtype)
        if self.moments:
            mean_a = acc["mean"][region]
            mean_b = decode_array(state["mean"])
            m2b = decode_array(state["m2"])
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                f = nb / np.maximum(n, 1)
                delta = mean_b - mean_a
                mean = np.where(nb > 0, mean_a + delta * f, mean_a)
                m2 = np.where(nb > 0, acc["m2"][region] + m2b + delta * delta * na * f, acc["m2"][region])
            acc["mean"][region] = mean
            acc["m2"][region] = m2
        if "min" in self.simple:
            acc["min"][region] = np.minimum(acc["min"][region], decode_array(state["min"]))
        if "max" in self.simple:
            acc["max"][region] = np.maximum(acc["max"][region], decode_array(state["max"]))
        if self.quantiles is not None:
            self._digest_combine(acc, state["digest"], region)
        if self.histogram is not None:
            acc["hist"][region] += decode_array(state["hist"])
        if self.exceedances:
            acc["exceed"][region] += decode_array(state["exceed"])
        for a in self.aggregations:
            cells = acc[f"agg:{a.name}"][(*region, ...)]  # a view, also of a 0-d array
            for idx, cell in zip(np.ndindex(cells.shape), state["agg"][a.name], strict=True):
                if cell is None:
                    continue
                b = _decode_state(cell)
                cells[idx] = b if cells[idx] is None else a.combine(cells[idx], b)
        acc["n"][region] = n

    def _digest_combine(self, acc: dict[str, Any], doc: Mapping[str, Any], region: tuple[slice, ...]) -> None:
        assert self.quantiles is not None
        sizes = decode_array(doc["sizes"])
        means = decode_array(doc["means"]).astype(np.float64)
        weights = decode_array(doc["weights"]).astype(np.float64)
        lo = decode_array(doc["lo"])
        hi = decode_array(doc["hi"])
        digests = acc["digest"][(*region, ...)]  # a view, also of a 0-d array
        acc["lo"][region] = np.fmin(acc["lo"][region], lo.reshape(digests.shape))
        acc["hi"][region] = np.fmax(acc["hi"][region], hi.reshape(digests.shape))
        ends = np.cumsum(sizes)
        for e, idx in enumerate(np.ndindex(digests.shape)):
            if not sizes[e]:
                continue
            start = ends[e] - sizes[e]
            d = digests[idx]
            if d is None:
                d = digests[idx] = _digest(self.quantiles.compression)
            d.update(means[start : ends[e]], weights[start : ends[e]])

    # -- results -----------------------------------------------------------------------

    def quantile(self, acc: Mapping[str, Any], q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Quantiles ``q`` of every element: shape ``(len(q), *kept, *core)``."""
        q = np.asarray(q, dtype=np.float64)
        digests = acc["digest"]
        out = np.full((q.size, *digests.shape), np.nan)
        for idx in np.ndindex(digests.shape):
            d = digests[idx]
            if d is None or d.size() == 0:
                continue
            _set_extremes(d, acc["lo"][idx], acc["hi"][idx])
            out[(slice(None), *idx)] = d.quantile(q)
        return out

    def results(self, acc: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
        """``{variable name: (values, kind)}``; kind tells which extra dim a variable has
        (``""`` none, ``"quantile"`` leading, ``"bin"``/``"threshold"`` trailing)."""
        n = acc["n"]
        out: dict[str, tuple[np.ndarray, str]] = {f"{self.name}_count": (n, "")}
        empty = n == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(empty, np.nan, acc["m2"] / np.maximum(n, 1)) if self.moments else None
            for s in self.simple:
                if s == "sum":
                    out[f"{self.name}_sum"] = (acc["sum"], "")
                elif s == "mean":
                    out[f"{self.name}_mean"] = (np.where(empty, np.nan, acc["mean"]), "")
                elif s == "var":
                    out[f"{self.name}_var"] = (var, "")
                elif s == "std":
                    out[f"{self.name}_std"] = (np.sqrt(var), "")
                elif s in ("min", "max"):
                    value = acc[s].copy()
                    value[empty] = self.output.fill
                    out[f"{self.name}_{s}"] = (value, "")
            if self.quantiles is not None:
                out[f"{self.name}_quantile"] = (self.quantile(acc, self.quantiles.q), "quantile")
            if self.histogram is not None:
                h = acc["hist"]
                out[f"{self.name}_histogram"] = (h[..., 1:-1], "bin")
                out[f"{self.name}_histogram_underflow"] = (h[..., 0], "")
                out[f"{self.name}_histogram_overflow"] = (h[..., -1], "")
            if self.exceedances:
                p = acc["exceed"] / np.maximum(n, 1)[..., None]
                p = np.where(empty[..., None], np.nan, p)
                se = np.sqrt(p * (1 - p) / np.maximum(n, 1)[..., None])
                if len(self.exceedances) == 1:
                    p, se = p[..., 0], se[..., 0]
                kind = "threshold" if len(self.exceedances) > 1 else ""
                out[f"{self.name}_exceedance"] = (p, kind)
                out[f"{self.name}_exceedance_stderr"] = (se, kind)
        for a in self.aggregations:
            out[f"{self.name}_{a.name}"] = (self._agg_finalize(a, acc[f"agg:{a.name}"]), "")
        return out

    def _agg_finalize(self, agg: Aggregation, cells: np.ndarray) -> np.ndarray:
        values = []
        dtype = None
        for idx in np.ndindex(cells.shape):
            if cells[idx] is None:
                values.append(None)
                continue
            v = np.asarray(agg.finalize(cells[idx]))
            if v.shape != self.core:
                raise ReductionError(
                    f"Aggregation({agg.name!r}): finalize returned shape {v.shape} for output "
                    f"{self.name!r}, expected its core shape {self.core}"
                )
            dtype = v.dtype if dtype is None else np.result_type(dtype, v.dtype)
            values.append(v)
        if dtype is None or (dtype.kind != "f" and any(v is None for v in values)):
            dtype = np.result_type(dtype or np.float64, np.float64)
        out = np.full((*cells.shape, *self.core), np.nan if dtype.kind in "fc" else 0, dtype=dtype)
        for idx, v in zip(np.ndindex(cells.shape), values, strict=True):
            if v is not None:
                out[idx] = v
        return out


def _encode_state(agg: Aggregation, state: Any) -> dict[str, Any]:
    single = not isinstance(state, tuple | list)
    parts = [state] if single else list(state)
    arrays = []
    for p in parts:
        a = np.asarray(p)
        if a.dtype.kind not in "biufc":
            raise ReductionError(
                f"Aggregation({agg.name!r}): chunk returned {_short(p)} (dtype {a.dtype}); its state "
                "must be a tuple of numeric arrays"
            )
        arrays.append(encode_array(a))
    return {"single": single, "arrays": arrays}


def _decode_state(doc: Mapping[str, Any]) -> Any:
    arrays = [decode_array(a) for a in doc["arrays"]]
    return arrays[0] if doc["single"] else tuple(arrays)


# --------------------------------------------------------------------------------------
# merged states


@dataclass
class Merged:
    """Merged partial states of the committed blocks (:meth:`Reductions.merge`).

    Attributes
    ----------
    n
        Samples that counted (status ok) in the merged blocks.
    samples
        Samples in the merged blocks, whatever their status.
    blocks
        How many blocks were merged.
    batch_shape
        The full batch shape.
    kept_shape
        The shape of the kept batch dims.
    states
        ``{output name: {accumulator: array}}``: counts, sums, moments, digests...
    """

    n: int
    samples: int
    blocks: int
    batch_shape: tuple[int, ...]
    kept_shape: tuple[int, ...]
    states: dict[str, dict[str, Any]] = field(repr=False)

    @property
    def not_ok(self) -> int:
        """Samples of the merged blocks left out (failed, timed out, crashed or pending)."""
        return self.samples - self.n


# --------------------------------------------------------------------------------------
# all reductions of a run


class Reductions:
    """The statistics a run reduces, per output, over some of its batch dims.

    Made by :func:`parse_reduce`. A block's partial states come from :meth:`partial`, are
    merged by :meth:`merge` and become a dataset with :meth:`to_dataset`.
    """

    def __init__(
        self,
        plans: Mapping[str, _Plan],
        batch_dims: Sequence[str],
        reduced_dims: Sequence[str],
        until: Converged | None = None,
    ) -> None:
        self._plans = dict(plans)
        self.batch_dims = tuple(batch_dims)
        self.reduced_dims = tuple(reduced_dims)
        self.kept_dims: tuple[str, ...] = tuple(d for d in self.batch_dims if d not in self.reduced_dims)
        self.until = until
        self._kept_axes = tuple(self.batch_dims.index(d) for d in self.kept_dims)
        self._red_axes = tuple(self.batch_dims.index(d) for d in self.reduced_dims)
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        self._hash = hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        stats = "; ".join(
            f"{name}: {', '.join(_stat_text(s) for s in p.stats()) or 'count'}"
            for name, p in self._plans.items()
        )
        return f"Reductions(over {self.reduced_dims}, keeping {self.kept_dims}; {stats})"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the outputs reduced."""
        return tuple(self._plans)

    def stats(self, output: str) -> tuple[Stat, ...]:
        """The statistics of ``output``, in canonical order (``count`` is always given too)."""
        return tuple(self._plans[output].stats())

    def variables(self) -> list[str]:
        """Names of the variables :meth:`to_dataset` makes."""
        return [v for p in self._plans.values() for v in p.variables()]

    def spec(self) -> dict[str, Any]:
        """The reductions as JSON-ready values, the same for the same statistics whatever
        order they were asked in (for a store's fingerprint).

        Examples
        --------
        >>> parse_reduce(["std", "mean"], {"y": Output()}, ("sample",)).spec()
        {'version': 1, 'dims': ['sample'], 'kept_dims': [], 'outputs': {'y': ['mean', 'std']}}
        """
        return {
            "version": DOC_VERSION,
            "dims": list(self.reduced_dims),
            "kept_dims": list(self.kept_dims),
            "outputs": {name: self._plans[name].spec() for name in sorted(self._plans)},
        }

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], outputs: Mapping[str, Output], batch_dims: Sequence[str]
    ) -> Reductions:
        """The reductions :meth:`spec` describes (as a store records them). An
        :class:`Aggregation`'s functions are imported again by their qualified names."""
        if not isinstance(spec, Mapping) or spec.get("version") != DOC_VERSION:
            raise ReductionError(f"reductions of an unknown form: {_short(spec)}")
        asked = {name: [_stat_from_spec(s) for s in stats] for name, stats in spec["outputs"].items()}
        made = parse_reduce(asked, outputs, batch_dims, dims=list(spec["dims"]))
        if made is None or made.spec() != dict(spec):
            raise ReductionError(f"the reductions {_short(spec)} do not read back the same")
        return made

    # -- one block ---------------------------------------------------------------------

    def partial(
        self, outputs: Mapping[str, np.ndarray], status: np.ndarray, slices: tuple[slice, ...]
    ) -> dict[str, Any]:
        """The partial state of one block, as a JSON-ready dict.

        Parameters
        ----------
        outputs
            ``{output name: array of shape block shape + core shape}``; outputs that are not
            reduced are ignored (a text or ragged output, only counted, may be left out).
        status
            The block's status codes (its shape is the block's shape); only ``ok`` samples
            count.
        slices
            The block's place in the full batch shape, one slice per batch dim.
        """
        status = np.asarray(status)
        slices = tuple(slices)
        if len(slices) != len(self.batch_dims) or status.ndim != len(self.batch_dims):
            raise ReductionError(
                f"partial: slices={_short(slices)} and status of shape {status.shape} must both have "
                f"one entry per batch dim {self.batch_dims}"
            )
        starts = []
        for s, size in zip(slices, status.shape, strict=True):
            start = 0 if s.start is None else int(s.start)
            stop = start + size if s.stop is None else int(s.stop)
            if stop - start != size or start < 0 or s.step not in (None, 1):
                raise ReductionError(
                    f"partial: slices={_short(slices)} do not match the block's shape {status.shape}"
                )
            starts.append((start, stop))
        ok = status == STATUS.ok
        doc: dict[str, Any] = {
            "version": DOC_VERSION,
            "spec": self._hash,
            "n": int(ok.sum()),
            "samples": int(status.size),
            "kept": [list(starts[a]) for a in self._kept_axes],
            "outputs": {},
        }
        for name, plan in self._plans.items():
            if not plan.variable and name not in outputs:
                raise ReductionError(
                    f"partial: outputs has no {name!r}, which is reduced; give its block values too "
                    f"(outputs given: {sorted(outputs)})"
                )
            doc["outputs"][name] = plan.partial(outputs.get(name), ok, self._kept_axes, self._red_axes)
        return doc

    # -- merging -----------------------------------------------------------------------

    def merge(
        self, docs: Iterable[tuple[tuple[int, ...], Mapping[str, Any]]], batch_shape: tuple[int, ...]
    ) -> Merged:
        """Merge blocks' partial states, in the order of their block index (so any order
        they are given in gives bitwise identical results).

        Parameters
        ----------
        docs
            ``(block index, partial state)`` pairs (states as :meth:`partial` made them, or
            read back from JSON).
        batch_shape
            The full batch shape.
        """
        batch_shape = tuple(int(s) for s in batch_shape)
        if len(batch_shape) != len(self.batch_dims):
            raise ReductionError(
                f"merge: batch_shape={batch_shape} must have one size per batch dim {self.batch_dims}"
            )
        items = sorted(((_block_key(key), doc) for key, doc in docs), key=lambda kv: kv[0])
        for (a, _), (b, _) in itertools.pairwise(items):
            if a == b:
                raise ReductionError(f"merge: block {a} is given twice; give each block's partial state once")
        kept_shape = tuple(batch_shape[a] for a in self._kept_axes)
        accs = {name: plan.empty(kept_shape) for name, plan in self._plans.items()}
        n = samples = 0
        for key, doc in items:
            if doc.get("version") != DOC_VERSION or doc.get("spec") != self._hash:
                raise ReductionError(
                    f"merge: the partial state of block {key} was made by other reductions "
                    f"(spec {doc.get('spec')!r}, these are {self._hash!r}); recompute that block"
                )
            region = []
            for (start, stop), size, dim in zip(doc["kept"], kept_shape, self.kept_dims, strict=True):
                if not 0 <= start <= stop <= size:
                    raise ReductionError(
                        f"merge: block {key} covers {dim}[{start}:{stop}], outside batch_shape {batch_shape}"
                    )
                region.append(slice(start, stop))
            for name, plan in self._plans.items():
                plan.combine(accs[name], doc["outputs"][name], tuple(region))
            n += int(doc["n"])
            samples += int(doc["samples"])
        return Merged(
            n=n,
            samples=samples,
            blocks=len(items),
            batch_shape=batch_shape,
            kept_shape=kept_shape,
            states=accs,
        )

    # -- results -----------------------------------------------------------------------

    def to_dataset(self, merged: Merged, coords: Mapping[str, Any] | None = None) -> xr.Dataset:
        """The merged statistics as a dataset: variables ``<output>_<stat>``.

        Each variable has the kept batch dims, then the output's core dims (a quantile
        dim first, a bin or threshold dim last). ``coords`` may give coordinates of kept
        and core dims (others are ignored); an output's own coords are used for its core
        dims.
        """
        import xarray as xr

        coords = dict(coords or {})
        sizes = dict(zip(self.kept_dims, merged.kept_shape, strict=True))
        data_vars: dict[str, Any] = {}
        all_coords: dict[str, Any] = {}
        counted = (
            "samples whose status is ok only (failed, timed out, crashed and pending samples are "
            "left out); NaN values skipped element by element"
        )
        for name, plan in self._plans.items():
            core_dims = plan.core_dims
            for d, size in zip(core_dims, plan.core, strict=True):
                sizes[d] = size
            dims = self.kept_dims + core_dims
            for d in core_dims:
                if d in (plan.output.coords or {}):
                    all_coords.setdefault(d, np.asarray(plan.output.coords[d]))
            units = plan.output.attrs.get("units") if plan.output.attrs else None
            for var, (values, kind) in plan.results(merged.states[name]).items():
                stat = var[len(name) + 1 :]
                attrs: dict[str, Any] = {
                    "output": name,
                    "stat": stat,
                    "reduced_dims": " ".join(self.reduced_dims),
                }
                attrs["counted"] = counted
                attrs["n"] = merged.n
                vdims: tuple[str, ...] = dims
                if kind == "quantile":
                    assert plan.quantiles is not None
                    vdims = (plan.quantile_dim, *dims)
                    all_coords[plan.quantile_dim] = np.asarray(plan.quantiles.q)
                    attrs.update(method="t-digest", compression=plan.quantiles.compression)
                elif kind == "bin":
                    assert plan.histogram is not None
                    edges = np.asarray(plan.histogram.bins)
                    vdims = (*dims, plan.bin_dim)
                    all_coords[plan.bin_dim] = (plan.bin_dim, (edges[:-1] + edges[1:]) / 2)
                    all_coords[f"{plan.bin_dim}_lower"] = (plan.bin_dim, edges[:-1])
                    all_coords[f"{plan.bin_dim}_upper"] = (plan.bin_dim, edges[1:])
                elif kind == "threshold":
                    vdims = (*dims, plan.threshold_dim)
                    all_coords[plan.threshold_dim] = np.asarray([e.threshold for e in plan.exceedances])
                    all_coords[f"{plan.threshold_dim}_above"] = (
                        plan.threshold_dim,
                        np.asarray([e.above for e in plan.exceedances]),
                    )
                if stat.startswith("exceedance") and len(plan.exceedances) == 1:
                    attrs.update(
                        threshold=plan.exceedances[0].threshold, above=int(plan.exceedances[0].above)
                    )
                if stat in ("var", "std"):
                    attrs["ddof"] = 0
                if units is not None and stat in ("sum", "mean", "std", "min", "max", "quantile"):
                    attrs["units"] = units
                elif units is not None and stat == "var":
                    attrs["units"] = f"({units})^2"
                data_vars[var] = xr.Variable(vdims, values, attrs)
        for d, values in coords.items():
            if d not in sizes:
                continue
            arr = np.asarray(values)
            if arr.shape != (sizes[d],):
                raise ReductionError(
                    f"to_dataset: coords[{d!r}] has shape {arr.shape}, expected ({sizes[d]},) "
                    f"(the size of dim {d!r})"
                )
            all_coords[d] = arr
        attrs = {
            "reduced_dims": " ".join(self.reduced_dims),
            "n": merged.n,
            "samples": merged.samples,
            "blocks": merged.blocks,
            "counted": counted,
        }
        return xr.Dataset(data_vars, coords=all_coords, attrs=attrs)


def _import_qualname(path: str) -> Callable:
    """The function ``module.qualname`` names (as :func:`_qualname` wrote it)."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ReductionError(
        f"the aggregation function {path!r} cannot be imported again; define it at the top level "
        "of a module on the path and pass reduce= again"
    )


def _stat_from_spec(doc: Any) -> Stat:
    """A statistic from its ``spec()``."""
    if isinstance(doc, str):
        return doc
    kind = doc.get("stat") if isinstance(doc, Mapping) else None
    if kind == "quantile":
        return Quantiles(doc["q"], compression=doc["compression"])
    if kind == "histogram":
        return Histogram(doc["bins"])
    if kind == "exceedance":
        return Exceedance(doc["threshold"], above=doc["above"])
    if kind == "aggregation":
        fns = [_import_qualname(doc[k]) for k in ("chunk", "combine", "finalize")]
        return Aggregation(doc["name"], *fns)
    raise ReductionError(f"a statistic of an unknown form: {_short(doc)}")


def _block_key(key: Any) -> tuple[int, ...]:
    """A block index as a tuple of ints (a list read back from JSON, or an int in 1-D)."""
    if isinstance(key, int | np.integer):
        return (int(key),)
    return tuple(int(i) for i in key)


def _stat_text(s: Stat) -> str:
    if isinstance(s, str):
        return s
    if isinstance(s, Quantiles):
        return f"quantile{list(s.q)}"
    if isinstance(s, Histogram):
        return f"histogram({len(s.bins) - 1} bins)"
    if isinstance(s, Exceedance):
        return f"exceedance({'>' if s.above else '<'}{s.threshold:g})"
    return s.name


# --------------------------------------------------------------------------------------
# parsing reduce=


def _hint(stat: str) -> str:
    low = stat.lower()
    if low in ("median", "quantile", "quantiles", "percentile", "percentiles"):
        return "; for quantiles give Quantiles([...]), e.g. Quantiles([0.5]) for the median"
    if low in ("hist", "histogram"):
        return "; for a histogram give Histogram(bins)"
    if low in ("exceedance", "probability"):
        return "; for a probability of exceedance give Exceedance(threshold)"
    if low in ("nanmean", "average"):
        return "; 'mean' already skips NaN values"
    if low in ("variance", "stddev", "stdev"):
        return f"; did you mean {'var' if low == 'variance' else 'std'!r}?"
    return ""


def _check_stat(stat: Any, name: str, output: Output, where: str) -> Stat:
    if isinstance(stat, str):
        if stat not in STATS:
            raise ReductionError(
                f"{where}: unknown statistic {stat!r} for output {name!r}; use one of {STATS_TEXT}, "
                f"or {OBJECTS_TEXT}{_hint(stat)}"
            )
    elif not isinstance(stat, Quantiles | Histogram | Exceedance | Aggregation):
        extra = "; for a function of your own, wrap it in Aggregation(name, chunk, combine, finalize)"
        raise ReductionError(
            f"{where}: {_short(stat)} is not a statistic (output {name!r}); use one of {STATS_TEXT}, "
            f"or {OBJECTS_TEXT}{extra if callable(stat) else ''}"
        )
    if stat == "count":
        return stat
    label = _stat_text(stat)
    if output.text:
        raise ReductionError(
            f"{where}: {label} of output {name!r} is not supported: it is a text output (one string "
            "per sample); only 'count' applies to it"
        )
    if output.ragged:
        raise ReductionError(
            f"{where}: {label} of output {name!r} is not supported: it is ragged (its length varies "
            "from sample to sample); only 'count' applies to it"
        )
    if output.dtype.kind == "c":
        raise ReductionError(
            f"{where}: {label} of output {name!r} is not supported: it is complex ({output.dtype}); "
            "return its real part or magnitude as an output of its own"
        )
    if output.dtype.kind == "b" and isinstance(stat, Histogram):
        raise ReductionError(
            f"{where}: Histogram of output {name!r} is not supported: it is boolean; ask 'mean' "
            "(the fraction of True) or 'sum'"
        )
    return stat


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def parse_reduce(
    reduce: Any,
    outputs: Mapping[str, Output],
    batch_dims: Sequence[str],
    dims: str | Sequence[str] | None = None,
    until: Converged | None = None,
) -> Reductions | None:
    """The reductions a run is asked for, checked before anything runs.

    Parameters
    ----------
    reduce
        None; one statistic (``"mean"``, ``Quantiles([0.5])``...) or a list of them, for
        every output; or ``{output name: statistic or list of statistics}``. Statistics:
        ``"count"``, ``"sum"``, ``"mean"``, ``"var"``, ``"std"``, ``"min"``, ``"max"``,
        :class:`Quantiles`, :class:`Histogram`, :class:`Exceedance`, :class:`Aggregation`.
    outputs
        The kernel's outputs.
    batch_dims
        The run's batch dims.
    dims
        The batch dims reduced over (a name or a list); None: all of them. The others are
        kept in the results.
    until
        A :class:`Converged`: its statistic is added if not asked.

    Returns
    -------
    Reductions or None
        None when nothing is reduced.

    Raises
    ------
    ReductionError
        One line naming the argument, the bad value and what would work.
    """
    batch_dims = tuple(batch_dims)
    if until is not None and not isinstance(until, Converged):
        raise ReductionError(
            f"until={_short(until)} is not a Converged; give e.g. until=Converged('response', rtol=0.01)"
        )
    nothing = reduce is None or (isinstance(reduce, Mapping | list | tuple) and not reduce)
    if nothing and until is None:
        if dims is not None:
            raise ReductionError(
                f"dims={dims!r} is given without reduce=; give the statistics too, e.g. reduce='mean', "
                "or leave dims out"
            )
        return None
    # dims
    if dims is None:
        reduced = batch_dims
    else:
        wanted = [dims] if isinstance(dims, str) else dims
        if not isinstance(wanted, Sequence) or not wanted:
            raise ReductionError(
                f"dims={dims!r} must name one or more batch dims, e.g. dims={batch_dims[0]!r}; "
                f"the batch dims are {list(batch_dims)}"
            )
        for d in wanted:
            if d not in batch_dims:
                raise ReductionError(f"dims: {d!r} is not a batch dim; use one or more of {list(batch_dims)}")
        if len(set(wanted)) != len(wanted):
            raise ReductionError(f"dims={list(wanted)!r} names a dim twice; name each once")
        reduced = tuple(d for d in batch_dims if d in wanted)
    if not outputs:
        raise ReductionError("reduce: the kernel declares no outputs, so there is nothing to reduce")
    # statistics per output
    asked: dict[str, list[Any]] = {}
    if nothing:
        pass
    elif isinstance(reduce, Mapping):
        for key, value in reduce.items():
            if key not in outputs:
                raise ReductionError(f"reduce: {key!r} is not an output; the outputs are {sorted(outputs)}")
            asked[key] = [_check_stat(s, key, outputs[key], "reduce") for s in _as_list(value)]
    else:
        for key, out in outputs.items():
            stats = _as_list(reduce)
            for s in stats:
                count = isinstance(s, str) and s == "count"
                if (
                    not count
                    and out.variable
                    and isinstance(s, str | Quantiles | Histogram | Exceedance | Aggregation)
                ):
                    raise ReductionError(
                        f"reduce={_short(reduce)} applies to every output, but output {key!r} is "
                        f"{'text' if out.text else 'ragged'} (only 'count' applies to it); give a "
                        "mapping of the outputs to reduce, e.g. "
                        f"reduce={{{_first_numeric(outputs)!r}: {_short(reduce)}}}"
                    )
            asked[key] = [_check_stat(s, key, out, "reduce") for s in stats]
    if until is not None:
        if until.output not in outputs:
            raise ReductionError(
                f"until: Converged output {until.output!r} is not an output; the outputs are "
                f"{sorted(outputs)}"
            )
        need = until.needed()
        _check_stat(need, until.output, outputs[until.output], "until")
        have = asked.setdefault(until.output, [])
        if isinstance(need, Quantiles):
            if not any(isinstance(s, Quantiles) for s in have):
                have.append(need)
        elif need not in have:
            have.append(need)
    plans = {name: _plan(name, outputs[name], stats) for name, stats in asked.items()}
    _name_extra_dims(plans, batch_dims)
    _check_names(plans, batch_dims)
    return Reductions(plans, batch_dims, reduced, until)


def _first_numeric(outputs: Mapping[str, Output]) -> str:
    return next((k for k, o in outputs.items() if not o.variable), next(iter(outputs)))


def _plan(name: str, output: Output, stats: list[Stat]) -> _Plan:
    simple = tuple(s for s in STATS if s in stats)
    quantiles = [s for s in stats if isinstance(s, Quantiles)]
    q = None
    if quantiles:
        compressions = {s.compression for s in quantiles}
        if len(compressions) > 1:
            raise ReductionError(
                f"reduce: output {name!r} has Quantiles of compressions {sorted(compressions)}; give them "
                "one compression (one digest per output)"
            )
        q = Quantiles(sorted({v for s in quantiles for v in s.q}), quantiles[0].compression)
    histograms = list(dict.fromkeys(s for s in stats if isinstance(s, Histogram)))
    if len(histograms) > 1:
        raise ReductionError(
            f"reduce: output {name!r} has {len(histograms)} Histograms; give it one Histogram(bins)"
        )
    exceedances = tuple(
        sorted(
            dict.fromkeys(s for s in stats if isinstance(s, Exceedance)),
            key=lambda e: (e.threshold, not e.above),
        )
    )
    aggregations: list[Aggregation] = []
    for a in (s for s in stats if isinstance(s, Aggregation)):
        same = [b for b in aggregations if b.name == a.name]
        if same and same[0] != a:
            raise ReductionError(
                f"reduce: output {name!r} has two Aggregations named {a.name!r}; give them different names"
            )
        if not same:
            aggregations.append(a)
    return _Plan(
        name=name,
        output=output,
        simple=simple,
        quantiles=q,
        histogram=histograms[0] if histograms else None,
        exceedances=exceedances,
        aggregations=tuple(sorted(aggregations, key=lambda a: a.name)),
    )


def _name_extra_dims(plans: Mapping[str, _Plan], batch_dims: tuple[str, ...]) -> None:
    """Name each plan's quantile, bin and threshold dims: ``quantile``, ``bin`` and
    ``threshold`` when every output that has one shares its coordinate values (and the
    name is no batch or core dim), else ``quantile_<output>``..."""
    taken = set(batch_dims) | {d for p in plans.values() for d in p.output.dims}
    for attr, key in (
        ("quantile_dim", lambda p: p.quantiles.q if p.quantiles else None),
        ("bin_dim", lambda p: p.histogram.bins if p.histogram else None),
        ("threshold_dim", lambda p: p.exceedances if len(p.exceedances) > 1 else None),
    ):
        base = attr[: -len("_dim")]
        values = {key(p) for p in plans.values()} - {None}
        shared = (
            len(values) <= 1
            and base not in taken
            and not ({f"{base}_lower", f"{base}_upper", f"{base}_above"} & taken)
        )
        for p in plans.values():
            setattr(p, attr, base if shared else f"{base}_{p.name}")


def _check_names(plans: Mapping[str, _Plan], batch_dims: tuple[str, ...]) -> None:
    seen: dict[str, str] = {}
    dims = set(batch_dims) | {d for p in plans.values() for d in p.output.dims}
    dims |= {getattr(p, a) for p in plans.values() for a in ("quantile_dim", "bin_dim", "threshold_dim")}
    for name, plan in plans.items():
        for var in plan.variables():
            if var in seen:
                raise ReductionError(
                    f"reduce: the results of outputs {seen[var]!r} and {name!r} would both be named "
                    f"{var!r}; rename an Aggregation (or an output)"
                )
            if var in dims:
                raise ReductionError(
                    f"reduce: result variable {var!r} of output {name!r} has the name of a dim; rename "
                    "the Aggregation or the dim"
                )
            seen[var] = name


# --------------------------------------------------------------------------------------
# convergence


@dataclass(frozen=True)
class Estimate:
    """A statistic and its error, as :meth:`Converged.check` finds them.

    Attributes
    ----------
    value
        The statistic (a float, or an array of the kept dims + the output's core shape).
    error
        Half-width of its confidence interval, in the value's units (same shape).
    n
        The fewest values any element has seen (ok samples, NaN skipped).
    met
        Whether every element's error is within tolerance and ``n >= min_n``.
    ratio
        The largest ``error / tolerance`` over the elements (met needs ``ratio <= 1``;
        inf while an element has no estimate).
    exhausted
        Whether ``n`` reached ``max_n`` (the run should stop, met or not).
    """

    value: Any
    error: Any
    n: int
    met: bool
    ratio: float = math.inf
    exhausted: bool = False

    @property
    def done(self) -> bool:
        """Whether to stop: met, or ``max_n`` reached."""
        return self.met or self.exhausted


@dataclass(frozen=True)
class Converged:
    """Run until a statistic of an output is known to a tolerance.

    Parameters
    ----------
    output
        The output whose statistic is watched.
    stat
        ``"mean"`` (error ``z * s / sqrt(n)``, s the standard deviation with ddof=1),
        ``"quantile"`` (needs ``q``; error: half the distance between the digest's
        quantiles at ``q ± z * sqrt(q (1 - q) / n)``) or ``"exceedance"`` (needs
        ``threshold``; error ``z * sqrt(p (1 - p) / n)``, i.e. relative error
        ``z * sqrt((1 - p) / (n p))``; with p 0 or 1 the Wilson interval's half-width),
        or ``"sobol"`` (a :class:`~daskbatch.Saltelli` design's first-order and total
        indices of the stored output, :func:`~daskbatch.sobol_indices`: error = the
        half-width of their bootstrap intervals at ``confidence``; give ``atol``).
    rtol, atol
        Met when ``error <= atol + rtol * |value|`` for every element (at least one given).
    q
        The quantile, for ``stat="quantile"``.
    threshold
        The threshold, for ``stat="exceedance"``.
    max_n
        Stop at this many values (counted: ok samples) even if not met.
    min_n
        Never met before this many values.
    confidence
        Confidence level of the interval, e.g. 0.95 (z = 1.96).
    above
        For ``stat="exceedance"``: the probability of values above (True) or below.

    Examples
    --------
    >>> Converged("response", rtol=0.01).spec()["stat"]
    'mean'
    """

    output: str
    stat: str = "mean"
    rtol: float | None = None
    atol: float | None = None
    q: float | None = None
    threshold: float | None = None
    max_n: int | None = None
    min_n: int = 1000
    confidence: float = 0.95
    above: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.output, str) or not self.output:
            raise ReductionError(
                f"Converged: output={self.output!r} must be the name of an output, e.g. 'response'"
            )
        if self.stat not in ("mean", "quantile", "exceedance", "sobol"):
            raise ReductionError(
                f"Converged: stat={self.stat!r} is not supported; use 'mean', 'quantile' (with q=), "
                "'exceedance' (with threshold=) or 'sobol' (a Saltelli design's indices)"
            )
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if v is not None and (_finite_float(v) is None or v < 0):
                raise ReductionError(
                    f"Converged: {name}={v!r} must be a finite number >= 0, e.g. {name}=0.01"
                )
        if self.rtol is None and self.atol is None:
            raise ReductionError(
                "Converged: rtol=None and atol=None; give a tolerance, e.g. rtol=0.01 (1% of the value)"
            )
        if self.stat == "quantile":
            if self.q is None or _finite_float(self.q) is None or not 0 < self.q < 1:
                raise ReductionError(
                    f"Converged: q={self.q!r} must be a probability strictly between 0 and 1 with "
                    "stat='quantile', e.g. q=0.95"
                )
        elif self.q is not None:
            raise ReductionError(f"Converged: q={self.q!r} is only for stat='quantile' (stat={self.stat!r})")
        if self.stat == "exceedance":
            if self.threshold is None or _finite_float(self.threshold) is None:
                raise ReductionError(
                    f"Converged: threshold={self.threshold!r} must be a finite number with "
                    "stat='exceedance', e.g. threshold=1e-3"
                )
        elif self.threshold is not None:
            raise ReductionError(
                f"Converged: threshold={self.threshold!r} is only for stat='exceedance' (stat={self.stat!r})"
            )
        if isinstance(self.min_n, bool) or not isinstance(self.min_n, int | np.integer) or self.min_n < 1:
            raise ReductionError(f"Converged: min_n={self.min_n!r} must be an integer >= 1, e.g. min_n=1000")
        if self.max_n is not None and (
            isinstance(self.max_n, bool)
            or not isinstance(self.max_n, int | np.integer)
            or self.max_n < self.min_n
        ):
            raise ReductionError(
                f"Converged: max_n={self.max_n!r} must be an integer >= min_n={self.min_n}, "
                "or None (no limit)"
            )
        c = _finite_float(self.confidence)
        if c is None or not 0 < c < 1:
            raise ReductionError(
                f"Converged: confidence={self.confidence!r} must be strictly between 0 and 1, e.g. 0.95"
            )
        if not isinstance(self.above, bool | np.bool_):
            raise ReductionError(f"Converged: above={self.above!r} must be True or False")

    @property
    def z(self) -> float:
        """The normal quantile of the two-sided confidence level (1.96 for 0.95)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)

    def needed(self) -> Stat:
        """The statistic this criterion needs reduced."""
        if self.stat == "quantile":
            return Quantiles([float(self.q)])  # type: ignore[arg-type]
        if self.stat == "exceedance":
            return Exceedance(float(self.threshold), self.above)  # type: ignore[arg-type]
        if self.stat == "sobol":  # the indices are computed from the stored output
            return "count"
        return "mean"

    def spec(self) -> dict[str, Any]:
        """The criterion as JSON-ready values."""
        return {
            "output": self.output,
            "stat": self.stat,
            "rtol": self.rtol,
            "atol": self.atol,
            "q": self.q,
            "threshold": self.threshold,
            "above": self.above,
            "max_n": None if self.max_n is None else int(self.max_n),
            "min_n": int(self.min_n),
            "confidence": self.confidence,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Converged:
        """The criterion :meth:`spec` describes (as a store records it)."""
        return cls(**dict(spec))

    def describe(self, estimate: Estimate) -> str:
        """One line: the statistic, its estimate and error, the tolerance, n."""
        parts = (f"atol {self.atol:g}" if self.atol else "", f"rtol {self.rtol:g}" if self.rtol else "")
        tol = " + ".join(t for t in parts if t)
        if self.stat == "sobol":
            return (
                f"Sobol indices of {self.output!r}: widest {100 * self.confidence:g}% interval "
                f"± {float(np.max(estimate.error)):.3g}, asked {tol or 'tolerance 0'}: "
                f"{'met' if estimate.met else 'not met'} at {estimate.n:,} samples"
            )
        if self.stat == "quantile":
            what = f"q{self.q:g}"
        elif self.stat == "exceedance":
            what = f"P({'>' if self.above else '<'}{self.threshold:g})"
        else:
            what = "mean"
        value, error = np.asarray(estimate.value, dtype=float), np.asarray(estimate.error, dtype=float)
        if value.size == 1:
            shown = f"{float(value.ravel()[0]):.6g} ± {float(error.ravel()[0]):.3g}"
        else:
            shown = f"{value.size} values, worst error/tolerance {estimate.ratio:.3g}"
        state = "met" if estimate.met else "not met"
        return (
            f"{what} of {self.output!r} = {shown} ({100 * self.confidence:g}% interval), "
            f"asked {tol or 'tolerance 0'}: {state} at {estimate.n:,} values"
        )

    def check(self, reductions: Reductions, merged: Merged) -> Estimate:
        """The statistic's estimate and error from merged states, and whether it is met."""
        plan = reductions._plans.get(self.output)
        if plan is None:
            raise ReductionError(
                f"Converged.check: output {self.output!r} is not reduced; make the reductions with "
                f"parse_reduce(..., until=this criterion) (reduced: {sorted(reductions._plans)})"
            )
        acc = merged.states[self.output]
        n = acc["n"]
        z = self.z
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.stat == "mean":
                if not plan.moments:
                    raise ReductionError(f"Converged.check: output {self.output!r} has no 'mean' reduced")
                value = np.where(n > 0, acc["mean"], np.nan)
                s2 = np.where(n > 1, acc["m2"] / np.maximum(n - 1, 1), np.inf)
                error = z * np.sqrt(s2 / np.maximum(n, 1))
            elif self.stat == "quantile":
                if plan.quantiles is None:
                    raise ReductionError(f"Converged.check: output {self.output!r} has no Quantiles reduced")
                q = float(self.q)  # type: ignore[arg-type]
                nn = np.maximum(n, 1)
                d = z * np.sqrt(q * (1 - q) / nn)
                value = plan.quantile(acc, [q])[0]
                error = np.full(n.shape, np.inf)
                for idx in np.ndindex(n.shape):
                    digest = acc["digest"][idx]
                    if digest is None or n[idx] == 0:
                        continue
                    lo_hi = digest.quantile([max(q - d[idx], 0.0), min(q + d[idx], 1.0)])
                    error[idx] = (lo_hi[1] - lo_hi[0]) / 2
            else:
                which = [
                    i
                    for i, e in enumerate(plan.exceedances)
                    if e.threshold == float(self.threshold) and e.above == self.above  # type: ignore[arg-type]
                ]
                if not which:
                    raise ReductionError(
                        f"Converged.check: output {self.output!r} has no Exceedance({self.threshold}) reduced"
                    )
                k = acc["exceed"][..., which[0]]
                nn = np.maximum(n, 1)
                value = np.where(n > 0, k / nn, np.nan)
                wald = z * np.sqrt(value * (1 - value) / nn)
                wilson = z / (1 + z * z / nn) * np.sqrt(value * (1 - value) / nn + z * z / (4 * nn * nn))
                error = np.where((k == 0) | (k == n), wilson, wald)
                error = np.where(n > 0, error, np.inf)
            tol = (self.atol or 0.0) + (self.rtol or 0.0) * np.abs(value)
            ratio = np.where(error == 0, 0.0, error / tol)
            ratio = np.where(np.isnan(ratio), np.inf, ratio)
        worst = float(ratio.max()) if ratio.size else math.inf
        fewest = int(n.min()) if n.size else 0
        met = bool(worst <= 1 and fewest >= self.min_n)
        exhausted = self.max_n is not None and fewest >= self.max_n
        if value.ndim == 0:
            value, error = float(value), float(error)
        return Estimate(value=value, error=error, n=fewest, met=met, ratio=worst, exhausted=bool(exhausted))
