"""One output's reductions: its partial states, made per block and merged.

A :class:`_Plan` holds what is reduced of one output (made by
:func:`~daskbatch.reductions.parse_reduce`): :meth:`_Plan.partial` makes one block's
partial state (counts, sums, moments, t-digest centroids, histogram counts, exceedance
counts, an :class:`~daskbatch.reductions.Aggregation`'s states) as JSON-ready values,
:meth:`_Plan.combine` merges one into the accumulators :meth:`_Plan.empty` made, and
:meth:`_Plan.results` turns the accumulators into the result variables. :class:`Merged`
holds every output's merged accumulators (what :meth:`~daskbatch.reductions.Reductions.merge`
gives and :meth:`~daskbatch.converged.Converged.check` reads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .outputs import Output
from .reducestats import (
    Aggregation,
    Exceedance,
    Histogram,
    Quantiles,
    ReductionError,
    Stat,
    _digest,
    _set_extremes,
    _short,
    decode_array,
    encode_array,
)

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
                with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as numpy's sum
                    s = np.where(valid, x, 0).sum(-1, dtype=np.float64)
            else:
                s = np.where(valid, x, 0).astype(self.sum_dtype).sum(-1, dtype=self.sum_dtype)
                # beside the exact sum, which wraps when it leaves the integers' range: its
                # float64 twin tells when it did
                state["sum_f"] = encode_array(np.where(valid, x, 0).astype(np.float64).sum(-1))
            state["sum"] = encode_array(s)
        if is_float and (self.moments or self.quantiles is not None):
            # +-inf (a solver that diverged) count as values: their numbers, kept apart from
            # the moments and the digest of the finite ones, place them as numpy would
            inf = np.stack([(valid & (x == -np.inf)).sum(-1), (valid & (x == np.inf)).sum(-1)], -1)
            if inf.any():
                state["inf"] = encode_array(inf.astype(np.int64), compact=True)
        if self.moments:
            fin = valid & np.isfinite(x) if is_float else valid
            n_fin = fin.sum(-1, dtype=np.int64)
            xf = np.where(fin, x.astype(np.float64), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(n_fin > 0, xf.sum(-1) / np.maximum(n_fin, 1), 0.0)
                d = np.where(fin, xf - mean[..., None], 0.0)
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
            if self.output.dtype.kind != "f":
                acc["sum_f"] = np.zeros(shape)
        if self.moments:
            acc["mean"] = np.zeros(shape)
            acc["m2"] = np.zeros(shape)
        if self.output.dtype.kind == "f" and (self.moments or self.quantiles is not None):
            acc["inf"] = np.zeros((*shape, 2), np.int64)  # -inf and +inf seen
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
            part = decode_array(state["sum"]).astype(self.sum_dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                acc["sum"][region] += part
            if "sum_f" in acc:  # a state written before the twin: its exact sum, as a float
                acc["sum_f"][region] += (
                    decode_array(state["sum_f"]) if "sum_f" in state else part.astype(float)
                )
        na_f, nb_f = na, nb  # the finite values of each (the moments' counts)
        if "inf" in acc:
            infa = acc["inf"][region]
            infb = decode_array(state["inf"]) if "inf" in state else np.zeros_like(infa)
            na_f, nb_f = na - infa.sum(-1), nb - infb.sum(-1)
            acc["inf"][region] = infa + infb
        if self.moments:
            mean_a = acc["mean"][region]
            mean_b = decode_array(state["mean"])
            m2b = decode_array(state["m2"])
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                f = nb_f / np.maximum(na_f + nb_f, 1)
                delta = mean_b - mean_a
                mean = np.where(nb_f > 0, mean_a + delta * f, mean_a)
                m2 = np.where(nb_f > 0, acc["m2"][region] + m2b + delta * delta * na_f * f, acc["m2"][region])
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
        if "inf" in acc and acc["inf"].any():
            _place_infinities(out, q, acc["n"], acc["inf"], digests)
        return out

    def results(self, acc: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
        """``{variable name: (values, kind)}``; kind tells which extra dim a variable has
        (``""`` none, ``"quantile"`` leading, ``"bin"``/``"threshold"`` trailing)."""
        n = acc["n"]
        out: dict[str, tuple[np.ndarray, str]] = {f"{self.name}_count": (n, "")}
        empty = n == 0
        ninf, pinf = (acc["inf"][..., 0], acc["inf"][..., 1]) if "inf" in acc else (0, 0)
        n_f = n - ninf - pinf  # the finite values, which the moments are of
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(n_f == 0, np.nan, acc["m2"] / np.maximum(n_f, 1)) if self.moments else None
            if self.moments and "inf" in acc:  # as numpy: the mean is the infinity, the var NaN
                var = np.where(ninf + pinf > 0, np.nan, var)
            for s in self.simple:
                if s == "sum":
                    out[f"{self.name}_sum"] = (self._sum(acc), "")
                elif s == "mean":
                    mean = np.where(n_f == 0, np.nan, acc["mean"])
                    if "inf" in acc:
                        signs = np.where(pinf > 0, np.inf, 0.0) + np.where(ninf > 0, -np.inf, 0.0)
                        mean = np.where(ninf + pinf > 0, signs, mean)  # inf - inf: NaN
                    out[f"{self.name}_mean"] = (mean, "")
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

    def _sum(self, acc: Mapping[str, Any]) -> np.ndarray:
        """The exact integer sum; float64 (rounded, with a warning) where it left the
        integers' range, which wraps it."""
        total = acc["sum"]
        if "sum_f" not in acc:
            return total
        # a wrap moves the sum by 2**64: far more than the float twin's rounding (which grows
        # with the sum of |x|, so a sum that cancels to a small one is no wrap)
        wrapped = np.abs(total.astype(np.float64) - acc["sum_f"]) >= 2.0**63
        if not wrapped.any():
            return total
        from .log import logger

        logger.warning(
            f"the sum of output {self.name!r} leaves the range of {total.dtype} (it is "
            f"{float(np.max(np.abs(acc['sum_f'][wrapped]))):.6g}): {self.name}_sum is given as float64, "
            "rounded to about 16 digits"
        )
        return np.asarray(acc["sum_f"], dtype=np.float64)

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
    """Merged partial states of the committed blocks (:meth:`~daskbatch.reductions.Reductions.merge`).

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


def _place_infinities(
    out: np.ndarray, q: np.ndarray, n: np.ndarray, inf: np.ndarray, digests: np.ndarray
) -> None:
    """Quantiles ``q`` (``out``: ``(len(q), *cells)``, of the finite values' digests) of
    cells that also saw -inf and +inf values (``inf[..., 0]``, ``inf[..., 1]``): ranked
    among all ``n`` values as numpy's linear quantile ranks them, a rank among the
    -infs is -inf, among the +infs +inf, and one between finite values the digest's
    quantile at that rank among the finite ones."""
    for idx in np.ndindex(digests.shape):
        a, b = int(inf[(*idx, 0)]), int(inf[(*idx, 1)])
        total = int(n[idx])
        if not a + b:
            continue
        finite = total - a - b
        for k, p in enumerate(q.tolist()):
            r = p * (total - 1)
            lo, hi = math.floor(r), math.ceil(r)
            low, high = lo < a, hi >= a + finite
            if low and high:
                out[(k, *idx)] = np.nan
            elif low:
                out[(k, *idx)] = -np.inf
            elif high:
                out[(k, *idx)] = np.inf
            elif digests[idx] is not None:
                out[(k, *idx)] = digests[idx].quantile((r - a) / max(1, finite - 1))
