"""Parameter spaces: what to run the kernel over.

A space knows its *batch dims* (``sample`` for a Monte Carlo design or a table, one
dim per axis for a grid), the parameters and their core dims, and how to produce the
parameter values of any block of samples on its own. :meth:`Space.to_dask` turns it
into lazy dask arrays chunked along the batch dims; nothing is materialised until a
block is computed, so a space of 10^9 samples costs no memory up front.

This module holds :class:`Grid`, :class:`Product` and :func:`space_from_spec`, and
is where every space is imported from: the :class:`Space` base and :class:`Param`
live in :mod:`daskbatch.spacebase`, :class:`Table` in :mod:`daskbatch.tables`, and
the designs (:class:`MonteCarlo`, :class:`LatinHypercube`, :class:`Sobol`,
:class:`Halton`) in :mod:`daskbatch.designs`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .designs import _QMC as _QMC
from .designs import Design, Halton, LatinHypercube, MonteCarlo, Sobol
from .designs import halton_points as halton_points
from .designs import lhs_points as lhs_points
from .designs import sobol_points as sobol_points
from .designs import to_open_unit as to_open_unit
from .distributions import Distribution as Distribution
from .distributions import as_distribution as as_distribution
from .distributions import from_spec as dist_from_spec
from .errors import SpaceError
from .files import Files
from .random import stream_key
from .random import uniforms as uniforms
from .saltelli import Saltelli
from .spacebase import Param, Space, _check_name
from .tables import Table
from .tables import _load_table as _load_table

__all__ = [
    "Design",
    "Files",
    "Grid",
    "Halton",
    "LatinHypercube",
    "MonteCarlo",
    "Param",
    "Product",
    "Sobol",
    "Space",
    "Table",
    "space_from_spec",
]


# --------------------------------------------------------------------------- Grid


class Grid(Space):
    """Full-factorial grid: one batch dim per axis, the axis values as its coordinate.

    Parameters
    ----------
    **axes
        ``name=values`` for each axis, in the order of the batch dims. Values are a
        1-D list or array of numbers or strings.

    Examples
    --------
    >>> g = Grid(rho1=np.logspace(1, 3, 50), rho2=np.logspace(0, 2, 40), h1=np.linspace(10, 100, 30))
    >>> g.batch_shape, g.size
    ((50, 40, 30), 60000)
    """

    def __init__(self, **axes: Any) -> None:
        if not axes:
            raise SpaceError("Grid: give at least one axis, e.g. Grid(x=[1, 2, 3])")
        self.axes: dict[str, np.ndarray] = {}
        for name, values in axes.items():
            _check_name("Grid", name)
            _check_one_kind(f"Grid: axis {name}", values)
            try:
                arr, ragged = np.asarray(values), False
            except ValueError:  # lists of different lengths
                arr, ragged = np.empty((0, 0)), True
            if arr.ndim != 1:
                what = "a single value" if arr.ndim == 0 else f"nested values of shape {arr.shape}"
                if ragged:
                    what = "nested lists of different lengths"
                raise SpaceError(
                    f"Grid: axis {name!r} must be 1-D, a flat list of values, got {what}; "
                    f"e.g. {name} = [1, 2, 3] (use one axis per dimension)"
                )
            if arr.size == 0:
                raise SpaceError(f"Grid: axis {name!r} is empty; give at least one value")
            if arr.dtype.kind not in "biufU":
                raise SpaceError(
                    f"Grid: axis {name!r} has values of type {arr.dtype}; use numbers or strings"
                )
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise SpaceError(f"Grid: axis {name!r} contains NaN or inf: {arr.tolist()!r}")
            unique, counts = np.unique(arr, return_counts=True)
            if unique.size < arr.size:
                first = next(v for v in arr.tolist() if counts[np.searchsorted(unique, v)] > 1)
                raise SpaceError(
                    f"Grid: axis {name!r} has the value {first!r} more than once, so it cannot be "
                    "selected by value; give each value once"
                )
            self.axes[name] = arr
        self.batch_dims = tuple(self.axes)
        self.batch_shape = tuple(a.size for a in self.axes.values())
        self.params = {n: Param(n, (n,), (), a.dtype, is_axis=True) for n, a in self.axes.items()}

    def batch_coords(self) -> dict[str, np.ndarray]:
        return dict(self.axes)

    def to_dask(self, chunks):
        import dask.array as da

        return {
            n: da.from_array(a, chunks=(c,))  # named by its values
            for (n, a), c in zip(self.axes.items(), chunks, strict=True)
        }

    def block(self, slices):
        return {n: a[s] for (n, a), s in zip(self.axes.items(), slices, strict=True)}

    def head(self, n: int) -> Grid:
        # keep trailing axes whole where possible, cut the leading ones
        out: dict[str, np.ndarray] = {}
        budget = max(1, n)
        for name in reversed(self.batch_dims):
            a = self.axes[name]
            k = max(1, min(a.size, budget))
            out[name] = a[:k]
            budget = max(1, budget // k)
        return Grid(**{k: out[k] for k in self.batch_dims})

    def spec(self):
        return {"type": "grid", "axes": {n: a.tolist() for n, a in self.axes.items()}}


def _check_one_kind(where: str, values: Any) -> None:
    """Refuse a list that mixes strings, booleans and numbers: numpy would silently turn
    them all into strings (or booleans into numbers). ``where`` names the axis."""
    if isinstance(values, np.ndarray) or not isinstance(values, list | tuple):
        return

    def kind(v: Any) -> str:
        if isinstance(v, bool | np.bool_):
            return "booleans"
        if isinstance(v, str | np.str_):
            return "strings"
        return "numbers" if isinstance(v, int | float | np.number) else type(v).__name__

    kinds = [kind(v) for v in values]
    if len(set(kinds)) > 1:
        i = next(i for i, k in enumerate(kinds) if k != kinds[0])
        raise SpaceError(
            f"{where}={list(values)!r} mixes {kinds[0]} and {kinds[i]} (value {i}: "
            f"{values[i]!r}); an axis must be all numbers or all strings"
        )


# --------------------------------------------------------------------------- products


class Product(Space):
    """Every configuration of ``outer`` times ``inner``'s ``n`` realisations.

    Parameters
    ----------
    outer
        The configurations: a :class:`Grid` (its axes stay batch dims) or a
        :class:`Table` (its rows become the batch dim ``config``).
    inner
        A design (:class:`MonteCarlo`, :class:`LatinHypercube`, :class:`Sobol`,
        :class:`Halton`) drawn for every configuration.
    dim
        Name of the realisation dim (default ``"realisation"``).
    flat
        One flat ``sample`` dim (configuration-major) instead of the outer dims
        plus ``dim``.
    common
        Every configuration gets the same realisations (common random numbers,
        for comparing configurations); by default each configuration gets its own,
        from a seed derived from the inner seed and the configuration's index.

    Examples
    --------
    >>> from daskbatch import Normal
    >>> p = Product(Grid(config=np.arange(10)), MonteCarlo({"k": Normal(0, 1)}, n=1000, seed=1))
    >>> p.batch_dims, p.batch_shape
    (('config', 'realisation'), (10, 1000))
    >>> Product(p.outer, p.inner, flat=True).batch_shape
    (10000,)
    """

    def __init__(
        self,
        outer: Grid | Table,
        inner: Design,
        *,
        dim: str = "realisation",
        flat: bool = False,
        common: bool = False,
    ) -> None:
        if not isinstance(outer, Grid | Table):
            raise SpaceError(f"Product: outer={outer!r} must be a Grid or a Table of configurations")
        if isinstance(inner, Saltelli):
            raise SpaceError("Product: inner=Saltelli(...) is not supported; run the Saltelli design alone")
        if not isinstance(inner, Design):
            raise SpaceError(
                f"Product: inner={inner!r} must be a design (MonteCarlo, LatinHypercube, Sobol, Halton)"
            )
        if not isinstance(dim, str) or not dim.isidentifier():
            raise SpaceError(f"Product: dim={dim!r} must be a name such as 'realisation'")
        if dim in ("status", "_daskbatch"):
            raise SpaceError(f"Product: dim={dim!r} is reserved by daskbatch; use e.g. 'realisation'")
        for name, value in (("flat", flat), ("common", common)):
            if not isinstance(value, bool):
                raise SpaceError(f"Product: {name}={value!r} must be True or False")
        clash = sorted(set(outer.params) & set(inner.params))
        if clash:
            raise SpaceError(f"Product: parameter(s) {clash} are in both outer and inner; rename one")
        if isinstance(outer, Table):
            outer = outer.read_whole()  # read whole anyway: identified by its contents
        self.outer, self.inner, self.dim, self.flat, self.common = outer, inner, dim, flat, common
        self._outer_dims = outer.batch_dims if isinstance(outer, Grid) else ("config",)
        if not flat and dim in self._outer_dims:
            raise SpaceError(f"Product: dim={dim!r} is already a dim of outer; choose another name")
        if flat:
            self.batch_dims = ("sample",)
            self.batch_shape = (outer.size * inner.n,)
        else:
            self.batch_dims = (*self._outer_dims, dim)
            self.batch_shape = (*outer.batch_shape, inner.n)
        self.params = {}
        for name, p in outer.params.items():
            if p.is_axis and not flat:
                self.params[name] = p
            else:
                self.params[name] = Param(name, (*self.batch_dims, *p.core_dims), p.core_shape, p.dtype)
        for name, p in inner.params.items():
            self.params[name] = Param(name, (*self.batch_dims, *p.core_dims), p.core_shape, p.dtype)

    @property
    def seed(self) -> int:
        return self.inner.seed

    @property
    def seed_given(self) -> bool:
        return self.inner.seed_given

    def with_seed(self, seed: int) -> Product:
        import copy

        other = copy.copy(self)
        other.inner = self.inner.reseeded(seed)
        return other

    def batch_coords(self) -> dict[str, np.ndarray]:
        return {} if self.flat else self.outer.batch_coords()

    def _inner_for(self, config: int) -> Design:
        if self.common:
            return self.inner
        derived = int(stream_key(self.inner.seed, f"config{int(config)}")) & (2**63 - 1)
        return self.inner.reseeded(derived)

    def _outer_value(self, name: str, configs: np.ndarray) -> np.ndarray:
        if isinstance(self.outer, Grid):
            pos = np.unravel_index(configs, self.outer.batch_shape)
            return self.outer.axes[name][pos[self.outer.batch_dims.index(name)]]
        return self.outer.data[name][configs]

    def _values(self, name: str, slices: tuple[slice, ...]) -> np.ndarray:
        """One parameter's values over a block (a slice per batch dim)."""
        p = self.params[name]
        if self.flat:
            (s,) = slices
            k = np.arange(s.start, s.stop, dtype=np.int64)
            configs, reals = np.divmod(k, self.inner.n)
        else:
            outer_idx = np.meshgrid(*(np.arange(sl.start, sl.stop) for sl in slices[:-1]), indexing="ij")
            cfg = np.ravel_multi_index([i.ravel() for i in outer_idx], self.outer.batch_shape)
            r = slices[-1]
            configs = np.repeat(cfg, r.stop - r.start)
            reals = np.tile(np.arange(r.start, r.stop), cfg.size)
        shape = tuple(sl.stop - sl.start for sl in slices)
        if name in self.outer.params:
            return self._outer_value(name, configs).reshape(shape + p.core_shape)
        out = np.empty((configs.size, *p.core_shape), dtype=p.dtype)
        # runs of one configuration: contiguous realisations
        edges = np.flatnonzero(np.diff(configs)) + 1
        for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), configs.size], strict=True):
            if hi > lo:
                inner = self._inner_for(int(configs[lo]))
                out[lo:hi] = inner._draw(name, int(reals[lo]), int(reals[hi - 1]) + 1)
        return out.reshape(shape + p.core_shape)

    def to_dask(self, chunks):
        import dask.array as da
        from dask.base import tokenize

        out = {}
        axis_arrays = self.outer.to_dask(chunks[: len(self._outer_dims)]) if not self.flat else {}
        for name, p in self.params.items():
            if p.is_axis:
                out[name] = axis_arrays[name]
                continue

            def gen(block_info=None, _name=name):
                loc = block_info[None]["array-location"][: len(self.batch_dims)]
                return self._values(_name, tuple(slice(a, b) for a, b in loc))

            out[name] = da.map_blocks(
                gen,
                chunks=(*chunks, *((s,) for s in p.core_shape)),
                dtype=p.dtype,
                meta=np.empty((0,) * (len(chunks) + len(p.core_shape)), dtype=p.dtype),
                name=f"daskbatch-product-{name}-{tokenize(self.spec(), chunks)}",
            )
        return out

    def block(self, slices):
        out = {}
        for name, p in self.params.items():
            if p.is_axis:
                out[name] = self.outer.axes[name][slices[self.batch_dims.index(name)]]
            else:
                out[name] = self._values(name, tuple(slices))
        return out

    def head(self, n: int) -> Product:
        inner = self.inner.head(min(n, self.inner.n))
        outer = self.outer.head(max(1, n // inner.n))
        return Product(outer, inner, dim=self.dim, flat=self.flat, common=self.common)

    def spec(self):
        out: dict[str, Any] = {"type": "product", "outer": self.outer.spec(), "inner": self.inner.spec()}
        if self.dim != "realisation":
            out["dim"] = self.dim
        if self.flat:
            out["flat"] = True
        if self.common:
            out["common"] = True
        return out


# --------------------------------------------------------------------------- specs


_AXIS_ARGS = {
    "linspace": ("start", "stop", "num"),
    "logspace": ("start", "stop", "num"),
    "arange": ("start", "stop", "step"),
}


def _axis_from_spec(name: str, value: Any) -> np.ndarray | list[Any]:
    where = f"space.axes.{name}"
    if isinstance(value, list):
        _check_one_kind(where, value)
        return value  # Grid checks it (a nested list too)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, args),) = value.items()
        if kind in _AXIS_ARGS and isinstance(args, list):
            return _axis_range(where, kind, args)
    raise SpaceError(
        f"{where}: {value!r} is not a list of values or a table such as "
        "{linspace = [10, 100, 30]}, {logspace = [1, 3, 50]} or {arange = [0, 10, 1]}"
    )


def _axis_range(where: str, kind: str, args: list[Any]) -> np.ndarray:
    """``{linspace|logspace = [start, stop, num]}`` or ``{arange = [start, stop, step]}``,
    checked before numpy sees it: a bad count or step, or an axis too big to hold."""
    from .plan import DRIVER_SHARE, _bytes, driver_budget, machine_memory

    keys, head = _AXIS_ARGS[kind], f"{where}: {kind} = {args!r}"
    example = {"linspace": "[10, 100, 30]", "logspace": "[1, 3, 50]", "arange": "[0, 10, 1]"}[kind]
    if len(args) not in (2, 3) or not all(
        isinstance(a, int | float) and not isinstance(a, bool) for a in args
    ):
        raise SpaceError(f"{head}: give [{', '.join(keys)}] as numbers, e.g. {example}")
    if len(args) == 2:  # numpy's default: 50 values, or a step of 1
        args = [*args, 1 if kind == "arange" else 50]
    for key, a in zip(keys, args, strict=True):
        if not math.isfinite(a):
            raise SpaceError(f"{head}: {key}={a!r} must be a finite number")
    start, stop, third = args
    if kind == "arange":
        if third == 0:
            raise SpaceError(f"{head}: step=0 never reaches stop; give a step other than 0")
        if all(isinstance(a, int) for a in args):
            num = len(range(start, stop, third))
        else:
            num = max(0, math.ceil((stop - start) / third))
        if num < 1:
            raise SpaceError(
                f"{head}: no values from start={start!r} to stop={stop!r} with step={third!r}; "
                f"a {'positive' if stop > start else 'negative'} step goes from start to stop"
            )
    else:
        if isinstance(third, float) and not third.is_integer():
            raise SpaceError(f"{head}: num={third!r} must be a whole number of values, e.g. 30")
        num = int(third)
        if num < 1:
            raise SpaceError(f"{head}: num={third!r} must be at least 1 (the number of values)")
    need, budget = num * np.dtype(np.float64).itemsize, driver_budget()
    if need > budget:
        raise SpaceError(
            f"{head}: {num:,} values need {_bytes(need)}, more than the {_bytes(budget)} "
            f"a run may hold of a grid's axes ({DRIVER_SHARE:.0%} of this machine's "
            f"{_bytes(machine_memory())}); use fewer values (a Monte Carlo or quasi-random design "
            "computes its samples in the workers instead)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "arange":
            values = np.arange(start, stop, third)
        else:
            values = np.linspace(start, stop, num) if kind == "linspace" else np.logspace(start, stop, num)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = float(values[~np.isfinite(values)][0])
        raise SpaceError(
            f"{head}: gives {bad!r}, past the largest float64 (about 1.8e308); "
            + ("keep start and stop below 308" if kind == "logspace" else "use smaller numbers")
        )
    return values


def space_from_spec(spec: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> Space:
    """Build a space from its :meth:`Space.spec` or from a TOML ``[space]`` table.

    Examples
    --------
    >>> space_from_spec({"type": "grid", "axes": {"x": [1, 2], "y": {"linspace": [0, 1, 3]}}}).batch_shape
    (2, 3)
    """
    from .fromstore import SPEC_KEYS, FromStore  # above this module: it opens stores

    if not isinstance(spec, Mapping):
        raise SpaceError(f"space: expected a table, got {spec!r}")
    kind = spec.get("type")
    allowed = {
        "grid": {"type", "axes"},
        "montecarlo": {"type", "n", "seed", "params"},
        "latinhypercube": {"type", "n", "seed", "params", "strata"},
        "sobol": {"type", "n", "seed", "params", "scramble"},
        "halton": {"type", "n", "seed", "params", "scramble"},
        "saltelli": {"type", "n", "seed", "params", "second_order"},
        "product": {"type", "outer", "inner", "dim", "flat", "common"},
        "table": {"type", "path", "rows", "columns", "sha256", "copy", *_TABLE_SPEC},
        "files": {"type", "path", "recursive", "rows", "columns", "dtypes", "sha256", "prefix"},
        "fromstore": SPEC_KEYS,
    }
    if kind not in allowed:
        raise SpaceError(f"space.type={kind!r} is not one of {sorted(allowed)}")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise SpaceError(
            f"space: unknown key(s) {unknown} for type={kind!r}; allowed: {sorted(allowed[kind])}"
        )
    if kind == "grid":
        axes = spec.get("axes")
        if not isinstance(axes, Mapping) or not axes:
            raise SpaceError("space.axes: give a table of axes, e.g. axes = {x = [1, 2, 3]}")
        return Grid(**{k: _axis_from_spec(k, v) for k, v in axes.items()})
    if kind in _DESIGNS:
        params = spec.get("params")
        if not isinstance(params, Mapping) or not params:
            raise SpaceError(
                "space.params: give a table per parameter, e.g. [space.params.x] dist = 'uniform' ..."
            )
        dists = {k: dist_from_spec(v, where=f"space.params.{k}") for k, v in params.items()}
        if "n" not in spec:
            raise SpaceError(f"space.n: the number of samples is required for type={kind!r}")
        options = {k: spec[k] for k in ("strata", "scramble", "second_order") if k in spec}
        return _DESIGNS[kind](dists, n=spec["n"], seed=spec.get("seed"), **options)
    if kind == "product":
        for part in ("outer", "inner"):
            if not isinstance(spec.get(part), Mapping):
                raise SpaceError(f"space.{part}: a product needs an {part} table, e.g. [space.{part}]")
        outer = space_from_spec(spec["outer"], base_dir=base_dir)
        inner = space_from_spec(spec["inner"], base_dir=base_dir)
        options = {k: spec[k] for k in ("dim", "flat", "common") if k in spec}
        return Product(outer, inner, **options)  # type: ignore[arg-type]
    if kind == "files":
        return Files.from_spec(spec, base_dir=base_dir)
    if kind == "fromstore":  # another store's outputs (daskbatch.fromstore)
        return FromStore.from_spec(spec, base_dir=base_dir)
    return Table.from_spec(spec, base_dir=base_dir)


#: what a table's spec records about its input besides path, rows, columns and digest
_TABLE_SPEC = ("source", "size", "mtime_ns", "files", "dtypes", "column_sha256", "prefix", "digest")


_DESIGNS: dict[str, type[Design]] = {c.kind: c for c in (MonteCarlo, LatinHypercube, Sobol, Halton, Saltelli)}


#: the spaces whose values depend on the order of their parameters, and the key naming them
#: in their spec: a grid's dims follow its axes; a quasi-random design gives each parameter
#: the point set's columns in order (Monte Carlo and Latin hypercube values depend on names)
_ORDERED = {"grid": "axes", "sobol": "params", "halton": "params", "saltelli": "params"}


def order_difference(stored: Any, now: Any) -> str | None:
    """How the order of the parameters of spec ``now`` differs from spec ``stored``'s where
    that order decides the values (a store's info keeps the order it was given in); None
    when it does not or cannot (specs of other types, other names).

    Examples
    --------
    >>> a, b = {"type": "grid", "axes": {"x": [1], "y": [2]}}, {"type": "grid", "axes": {"y": [2], "x": [1]}}
    >>> order_difference(a, b)
    "the order of the axes of a grid (['x', 'y'] -> ['y', 'x']), which decides their values"
    """
    if (
        not isinstance(stored, Mapping)
        or not isinstance(now, Mapping)
        or stored.get("type") != now.get("type")
    ):
        return None
    if now.get("type") == "product":
        return next(
            filter(None, (order_difference(stored.get(p), now.get(p)) for p in ("outer", "inner"))), None
        )
    key = _ORDERED.get(str(now.get("type")))
    old, new = (stored.get(key), now.get(key)) if key else (None, None)
    if not isinstance(old, Mapping) or not isinstance(new, Mapping) or set(old) != set(new):
        return None
    if list(old) == list(new):
        return None
    what = "the axes of a grid" if key == "axes" else f"the parameters of a {now['type']} design"
    return f"the order of {what} ({list(old)} -> {list(new)}), which decides their values"
