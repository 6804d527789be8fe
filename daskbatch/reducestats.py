"""The statistics of ``reduce=`` and their JSON-safe form.

Besides the statistics named by a string (:data:`STATS`), a run reduces
:class:`Quantiles`, :class:`Histogram`, :class:`Exceedance` and :class:`Aggregation`.
Partial states are JSON, no pickles: :func:`encode_array` and :func:`decode_array` put a
numeric array in a JSON-ready dict and back. Also here: the t-digest helpers of
:class:`Quantiles` and a statistic made again from its ``spec()``.
:mod:`daskbatch.reductions` is the import point for every name.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DaskbatchError

__all__ = [
    "STATS",
    "Aggregation",
    "Exceedance",
    "Histogram",
    "Quantiles",
    "ReductionError",
    "decode_array",
    "encode_array",
]

#: The statistics named by a string, in the order results list them.
STATS = ("count", "sum", "mean", "var", "std", "min", "max")
STATS_TEXT = ", ".join(repr(s) for s in STATS)
#: What ``reduce=`` takes besides those strings.
OBJECTS_TEXT = (
    "Quantiles(q), Histogram(bins), Exceedance(threshold) or Aggregation(name, chunk, combine, finalize)"
)
#: Version of the partial-state documents (:meth:`~daskbatch.reductions.Reductions.partial`).
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
    given to :meth:`~daskbatch.reductions.Reductions.merge` do not belong to these reductions."""


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
    >>> def finalize(s):
    ...     return s[0]
    >>> Aggregation("absmax", chunk, combine, finalize).name
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
            if "<" in getattr(fn, "__qualname__", "<"):  # a lambda, a nested function, an object
                raise ReductionError(
                    f"Aggregation({self.name!r}): {part}={fn!r} cannot be found again by its name "
                    "(a lambda or a function defined inside another); define it at the top level "
                    "of a module, so that the store's readers can import it"
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
# statistics from their spec


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
