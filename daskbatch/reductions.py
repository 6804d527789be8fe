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

This module is the import point for every name of reductions: the statistics and their
JSON form are in :mod:`daskbatch.reducestats`, one output's partial states in
:mod:`daskbatch.reducestates` (with :class:`Merged`, every output's merged states), the
stopping rule in :mod:`daskbatch.converged`.

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

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .converged import Converged, Estimate
from .outputs import Output
from .records import STATUS
from .reducestates import Merged, _Plan
from .reducestats import (
    DOC_VERSION,
    OBJECTS_TEXT,
    STATS,
    STATS_TEXT,
    Aggregation,
    Exceedance,
    Histogram,
    Quantiles,
    ReductionError,
    Stat,
    _short,
    _stat_from_spec,
    _stat_text,
    decode_array,
    encode_array,
)
from .reducestats import ZLIB_ABOVE as ZLIB_ABOVE

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
                data_vars[var] = _variable(xr, vdims, values, attrs)
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
        all_coords = {
            d: _variable(xr, *(v if isinstance(v, tuple) else ((d,), v))) for d, v in all_coords.items()
        }
        attrs = {
            "reduced_dims": " ".join(self.reduced_dims),
            "n": merged.n,
            "samples": merged.samples,
            "blocks": merged.blocks,
            "counted": counted,
        }
        return xr.Dataset(data_vars, coords=all_coords, attrs=attrs)


def _variable(xr: Any, dims: Any, values: Any, attrs: dict[str, Any] | None = None) -> Any:
    """An :class:`xarray.Variable` of NumPy values, made on xarray's fast path.

    The ordinary path asks, for every array, whether it is a dask array, and that first
    question imports ``dask.array`` (0.26 s, half the cost of a short run's
    ``result.reductions``). Values here are always NumPy (merged statistics, labels):
    numbers and text take the fast path; object, date and time values the ordinary one,
    which converts them.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "OMm":
        return xr.Variable(dims, arr, attrs)
    return xr.Variable(dims, arr, attrs, fastpath=True)


def _block_key(key: Any) -> tuple[int, ...]:
    """A block index as a tuple of ints (a list read back from JSON, or an int in 1-D)."""
    if isinstance(key, int | np.integer):
        return (int(key),)
    return tuple(int(i) for i in key)


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
    dims_name: str = "dims",
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
    dims_name
        What the caller calls ``dims`` (``run``'s ``reduce_dims``), for the messages.

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
                f"{dims_name}={dims!r} is given without reduce=; give the statistics too, e.g. "
                f"reduce='mean', or leave {dims_name} out"
            )
        return None
    reduced = _reduced_dims(dims, batch_dims, dims_name)
    if not outputs:
        raise ReductionError("reduce: the kernel declares no outputs, so there is nothing to reduce")
    asked = {} if nothing else _asked(reduce, outputs)
    if until is not None:
        _add_until(asked, until, outputs)
    plans = {name: _plan(name, outputs[name], stats) for name, stats in asked.items()}
    _name_extra_dims(plans, batch_dims)
    _check_names(plans, batch_dims)
    return Reductions(plans, batch_dims, reduced, until)


def _reduced_dims(
    dims: str | Sequence[str] | None, batch_dims: tuple[str, ...], dims_name: str = "dims"
) -> tuple[str, ...]:
    """The batch dims ``dims`` names (all of them for None), in the batch dims' order."""
    if dims is None:
        return batch_dims
    wanted = [dims] if isinstance(dims, str) else dims
    if not isinstance(wanted, Sequence) or not wanted:
        raise ReductionError(
            f"{dims_name}={dims!r} must name one or more batch dims, e.g. {dims_name}={batch_dims[0]!r}; "
            f"the batch dims are {list(batch_dims)}"
        )
    for d in wanted:
        if d not in batch_dims:
            raise ReductionError(
                f"{dims_name}: {d!r} is not a batch dim; use one or more of {list(batch_dims)}"
            )
    if len(set(wanted)) != len(wanted):
        raise ReductionError(f"{dims_name}={list(wanted)!r} names a dim twice; name each once")
    return tuple(d for d in batch_dims if d in wanted)


def _asked(reduce: Any, outputs: Mapping[str, Output]) -> dict[str, list[Any]]:
    """The checked statistics ``reduce`` asks for, per output."""
    asked: dict[str, list[Any]] = {}
    if isinstance(reduce, Mapping):
        for key, value in reduce.items():
            if key not in outputs:
                raise ReductionError(f"reduce: {key!r} is not an output; the outputs are {sorted(outputs)}")
            asked[key] = [_check_stat(s, key, outputs[key], "reduce") for s in _as_list(value)]
        return asked
    for key, out in outputs.items():
        stats = _as_list(reduce)
        for s in stats:
            count = isinstance(s, str) and s == "count"
            if (
                not count
                and out.variable
                and isinstance(s, str | Quantiles | Histogram | Exceedance | Aggregation)
            ):
                numeric = [k for k, o in outputs.items() if not o.variable]
                fix = (
                    f"give a mapping of the outputs to reduce, e.g. reduce={{{_first_numeric(outputs)!r}: "
                    f"{_short(reduce)}}}"
                    if numeric
                    else "no output of this kernel holds numbers of a fixed shape: reduce='count', or keep "
                    "the outputs (no reduce=)"
                )
                raise ReductionError(
                    f"reduce={_short(reduce)} applies to every output, but output {key!r} is "
                    f"{'text' if out.text else 'ragged'} (only 'count' applies to it); {fix}"
                )
        asked[key] = [_check_stat(s, key, out, "reduce") for s in stats]
    return asked


def _add_until(asked: dict[str, list[Any]], until: Converged, outputs: Mapping[str, Output]) -> None:
    """Add the statistic ``until`` needs to ``asked``, unless it is asked already."""
    if until.output not in outputs:
        raise ReductionError(
            f"until: Converged output {until.output!r} is not an output; the outputs are {sorted(outputs)}"
        )
    need = until.needed()
    _check_stat(need, until.output, outputs[until.output], "until")
    have = asked.setdefault(until.output, [])
    if isinstance(need, Quantiles):
        if not any(isinstance(s, Quantiles) for s in have):
            have.append(need)
    elif need not in have:
        have.append(need)


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
