"""Parameter spaces: what to run the kernel over.

A space knows its *batch dims* (``sample`` for a Monte Carlo design or a table, one
dim per axis for a grid), the parameters and their core dims, and how to produce the
parameter values of any block of samples on its own. :meth:`Space.to_dask` turns it
into lazy dask arrays chunked along the batch dims; nothing is materialised until a
block is computed, so a space of 10^9 samples costs no memory up front.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .designs import halton_points, lhs_points, sobol_points, to_open_unit
from .distributions import Distribution, as_distribution
from .distributions import from_spec as dist_from_spec
from .errors import SpaceError
from .random import stream_key, uniforms

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "Design",
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


@dataclass(frozen=True)
class Param:
    """One parameter: its dims (batch dims it varies along, then core dims) and dtype."""

    name: str
    dims: tuple[str, ...]
    core_shape: tuple[int, ...]
    dtype: np.dtype
    is_axis: bool = False  # a grid axis: stored as the coordinate of its own dim

    @property
    def core_dims(self) -> tuple[str, ...]:
        return self.dims[len(self.dims) - len(self.core_shape) :]


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise SpaceError(
            f"{kind}: parameter name {name!r} must be a valid Python identifier "
            "(it is passed to the kernel as a keyword argument)"
        )
    return name


class Space:
    """Base class of parameter spaces. Use :class:`Grid`, :class:`Table` or :class:`MonteCarlo`."""

    batch_dims: tuple[str, ...]
    batch_shape: tuple[int, ...]
    params: dict[str, Param]

    @property
    def size(self) -> int:
        """Total number of samples."""
        return math.prod(self.batch_shape)

    @property
    def seed(self) -> int | None:
        return None

    @property
    def seed_given(self) -> bool:
        """False for a design whose seed was picked at random (``seed=None``)."""
        return True

    def with_seed(self, seed: int) -> Space:
        """The same space drawn with another seed (a space without randomness: itself)."""
        return self

    def batch_coords(self) -> dict[str, np.ndarray]:
        """Coordinate values of batch dims that have labels (grid axes)."""
        return {}

    def to_dask(self, chunks: tuple[tuple[int, ...], ...]) -> dict[str, da.Array]:
        """Lazy parameter arrays, chunked along the batch dims as ``chunks`` says."""
        raise NotImplementedError

    def block(self, slices: tuple[slice, ...]) -> dict[str, np.ndarray]:
        """The parameter values of one block (a slice per batch dim), computed eagerly."""
        raise NotImplementedError

    def head(self, n: int) -> Space:
        """A small space made of this space's first samples, for a smoke run."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """A JSON-able description, stored in the store and used for fingerprints."""
        raise NotImplementedError

    def to_toml(self) -> str:
        """The ``[space]`` table of a spec file for ``daskbatch run`` that makes this space.

        Examples
        --------
        >>> print(Grid(x=[1, 2]).to_toml())
        [space]
        type = "grid"
        <BLANKLINE>
        [space.axes]
        x = [
            1,
            2,
        ]
        <BLANKLINE>
        """
        import tomli_w

        def check(spec: Mapping[str, Any], where: str) -> None:
            if spec.get("type") == "table" and "path" not in spec:
                raise SpaceError(
                    f"{where}: a Table made in memory has no file to name in a spec file; "
                    "save it (CSV, Parquet or Zarr) and make the Table from that path"
                )
            for part in ("outer", "inner"):
                if isinstance(spec.get(part), Mapping):
                    check(spec[part], f"{where}.{part}")

        spec = self.spec()
        check(spec, "space")
        return tomli_w.dumps({"space": spec})

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}: {n}" for d, n in zip(self.batch_dims, self.batch_shape, strict=True))
        params = ", ".join(self.params)
        return f"<{type(self).__name__} ({dims}) {self.size:,} samples; params: {params}>"


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
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise SpaceError(f"Grid: axis {name}={values!r} must be 1-D, got shape {arr.shape}")
            if arr.size == 0:
                raise SpaceError(f"Grid: axis {name!r} is empty; give at least one value")
            if arr.dtype.kind not in "biufU":
                raise SpaceError(
                    f"Grid: axis {name!r} has values of type {arr.dtype}; use numbers or strings"
                )
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise SpaceError(f"Grid: axis {name!r} contains NaN or inf: {arr.tolist()!r}")
            self.axes[name] = arr
        self.batch_dims = tuple(self.axes)
        self.batch_shape = tuple(a.size for a in self.axes.values())
        self.params = {n: Param(n, (n,), (), a.dtype, is_axis=True) for n, a in self.axes.items()}

    def batch_coords(self) -> dict[str, np.ndarray]:
        return dict(self.axes)

    def to_dask(self, chunks):
        import dask.array as da

        return {
            n: da.from_array(a, chunks=(c,), name=f"daskbatch-axis-{n}")
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


# --------------------------------------------------------------------------- Table


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


# --------------------------------------------------------------------------- designs


class Design(Space):
    """Base class of the random and quasi-random designs: ``n`` samples of ``dists``.

    Each parameter is drawn by its distribution's inverse CDF from design points in
    the unit cube; a point depends only on ``(seed, sample index)`` (and the
    design's size for a Latin hypercube), never on the chunking, the number of
    workers, the scheduler or where a run was resumed.
    """

    batch_dims = ("sample",)
    kind = ""

    def __init__(self, dists: Mapping[str, Any], n: int, seed: int | None = None) -> None:
        cls = type(self).__name__
        if not isinstance(dists, Mapping) or not dists:
            raise SpaceError(
                f"{cls}: dists={dists!r} must be a non-empty dict of "
                "{name: distribution}, e.g. {'x': Uniform(0, 1)}"
            )
        checked: dict[str, Distribution] = {}
        for name, d in dists.items():
            _check_name(cls, name)
            checked[name] = as_distribution(d, where=f"{cls}: {name}")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise SpaceError(f"{cls}: n={n!r} must be a positive integer")
        self._seed_given = seed is not None
        if seed is None:
            seed = secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise SpaceError(f"{cls}: seed={seed!r} must be a non-negative integer or None")
        self.dists = checked
        self.n = int(n)
        self._seed = int(seed)
        self.batch_shape = (self.n,)
        self.params = {
            name: Param(name, ("sample", *((d.dim or f"{name}_dim",) if d.shape else ())), d.shape, d.dtype)
            for name, d in self.dists.items()
        }
        # the design's columns of each parameter (quasi-random designs share one point set)
        self._columns: dict[str, slice] = {}
        start = 0
        for name, d in self.dists.items():
            self._columns[name] = slice(start, start + d.n_uniforms)
            start += d.n_uniforms
        self.dimension = start

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def seed_given(self) -> bool:
        return self._seed_given

    def reseeded(self, seed: int) -> Design:
        """The same design with another seed."""
        import copy

        other = copy.copy(self)
        other._seed = int(seed)
        other._seed_given = True
        return other

    def with_seed(self, seed: int) -> Design:
        return self.reseeded(seed)

    def _uniforms(self, name: str, start: int, stop: int) -> np.ndarray:
        """Design points of samples ``[start, stop)`` for one parameter, in (0, 1)."""
        raise NotImplementedError

    def _draw(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.dists[name].ppf(self._uniforms(name, start, stop))

    def to_dask(self, chunks):
        import dask.array as da

        (c,) = chunks
        out = {}
        for name, d in self.dists.items():

            def gen(block_info=None, _name=name):
                start, stop = block_info[None]["array-location"][0]
                return self._draw(_name, start, stop)

            out[name] = da.map_blocks(
                gen,
                chunks=(c, *((s,) for s in d.shape)),
                dtype=d.dtype,
                meta=np.empty((0,) * (1 + len(d.shape)), dtype=d.dtype),
                name=f"daskbatch-{self.kind}-{name}-{self._seed}-{self.n}",
            )
        return out

    def block(self, slices):
        (s,) = slices
        return {name: self._draw(name, s.start, s.stop) for name in self.dists}

    def _options(self) -> dict[str, Any]:
        return {}

    def head(self, n: int) -> Design:
        return type(self)(self.dists, n=max(1, min(n, self.n)), seed=self._seed, **self._options())

    def spec(self):
        return {
            "type": self.kind,
            "n": self.n,
            "seed": self._seed,
            **self._options(),
            "params": {n: d.spec() for n, d in self.dists.items()},
        }


class MonteCarlo(Design):
    """Independent random samples; ``seed`` fixes every value bit for bit.

    A value depends only on ``(seed, parameter name, sample index)``, so adding a
    parameter leaves the others' values unchanged.

    Parameters
    ----------
    dists
        ``{name: distribution}``: daskbatch distributions or frozen ``scipy.stats`` ones.
    n
        Number of samples.
    seed
        Non-negative integer. ``None`` draws one at random; it is recorded in the
        store, so the run can still be reproduced.

    Examples
    --------
    >>> from daskbatch import LogUniform, Normal
    >>> mc = MonteCarlo({"rho": LogUniform(1, 1000, size=3), "h": Normal([30, 70], [5, 10])},
    ...                 n=1000, seed=42)
    >>> mc.block((slice(0, 2),))["rho"].shape
    (2, 3)
    """

    kind = "montecarlo"

    def _uniforms(self, name, start, stop):
        return uniforms(self._seed, name, np.arange(start, stop, dtype=np.int64), self.dists[name].n_uniforms)


class LatinHypercube(Design):
    """Latin hypercube: each parameter's range is cut into ``n`` strata of equal
    probability, and every stratum holds exactly one sample.

    Computed block by block (a keyed permutation of the strata per dimension, see
    :mod:`daskbatch.designs`), so the design never exists whole in memory. A value
    depends on the seed, the parameter, the sample index and ``n``.

    ``strata`` is the design's size; it defaults to ``n`` and is kept by the
    first-samples view of a smoke run (``head``), so those samples are the full
    design's.

    Examples
    --------
    >>> from daskbatch import Uniform
    >>> lhs = LatinHypercube({"x": Uniform(0, 1)}, n=10, seed=1)
    >>> sorted((lhs.block((slice(0, 10),))["x"] * 10).astype(int).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    kind = "latinhypercube"

    def __init__(
        self, dists: Mapping[str, Any], n: int, seed: int | None = None, *, strata: int | None = None
    ) -> None:
        super().__init__(dists, n, seed)
        if strata is None:
            strata = self.n
        if isinstance(strata, bool) or not isinstance(strata, int | np.integer) or strata < self.n:
            raise SpaceError(f"LatinHypercube: strata={strata!r} must be an integer >= n={self.n}")
        self.strata = int(strata)

    def _uniforms(self, name, start, stop):
        d = self.dists[name].n_uniforms
        pts = lhs_points(self._seed, name, np.arange(start, stop, dtype=np.int64), self.strata, d)
        return to_open_unit(pts)

    def _options(self):
        return {"strata": self.strata} if self.strata != self.n else {}

    def head(self, n: int) -> LatinHypercube:
        return LatinHypercube(self.dists, n=max(1, min(n, self.n)), seed=self._seed, strata=self.strata)


class _QMC(Design):
    """Quasi-random designs: one point set of ``dimension`` columns shared by the parameters."""

    def __init__(
        self, dists: Mapping[str, Any], n: int, seed: int | None = None, *, scramble: bool = True
    ) -> None:
        super().__init__(dists, n, seed)
        if not isinstance(scramble, bool):
            raise SpaceError(f"{type(self).__name__}: scramble={scramble!r} must be True or False")
        self.scramble = scramble

    def _points(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _uniforms(self, name, start, stop):
        if self.dists[name].n_uniforms == 0:
            return np.empty((stop - start, 0))
        return to_open_unit(self._points(start, stop)[:, self._columns[name]])

    def _options(self):
        return {} if self.scramble else {"scramble": False}


class Sobol(_QMC):
    """Scrambled Sobol points (``scipy.stats.qmc.Sobol``): low-discrepancy, best with
    ``n`` a power of two (a warning says so otherwise); at most 2**30 samples.

    Examples
    --------
    >>> from daskbatch import Uniform
    >>> Sobol({"x": Uniform(0, 1), "y": Uniform(0, 1)}, n=256, seed=3).dimension
    2
    """

    kind = "sobol"

    def __init__(
        self, dists: Mapping[str, Any], n: int, seed: int | None = None, *, scramble: bool = True
    ) -> None:
        super().__init__(dists, n, seed, scramble=scramble)
        if self.n > 2**30:
            raise SpaceError(f"Sobol: n={self.n:,} is more than the 2**30 points the sequence has")
        if self.n & (self.n - 1):
            import warnings

            lower = 1 << (self.n.bit_length() - 1)
            warnings.warn(
                f"Sobol: n={self.n:,} is not a power of 2; Sobol points keep their balance "
                f"properties only at powers of 2 (e.g. n={lower:,} or n={2 * lower:,})",
                UserWarning,
                stacklevel=2,
            )

    def _points(self, start, stop):
        return sobol_points(self._seed, max(1, self.dimension), start, stop, self.scramble)


class Halton(_QMC):
    """Scrambled Halton points (``scipy.stats.qmc.Halton``): low-discrepancy for any ``n``.

    Examples
    --------
    >>> from daskbatch import Uniform
    >>> h = Halton({"x": Uniform(0, 1)}, n=4, seed=3, scramble=False)
    >>> h.block((slice(1, 4),))["x"].tolist()
    [0.5, 0.25, 0.75]
    """

    kind = "halton"

    def _points(self, start, stop):
        return halton_points(self._seed, max(1, self.dimension), start, stop, self.scramble)


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
        if not isinstance(inner, Design):
            raise SpaceError(
                f"Product: inner={inner!r} must be a design (MonteCarlo, LatinHypercube, Sobol, Halton)"
            )
        if not isinstance(dim, str) or not dim.isidentifier():
            raise SpaceError(f"Product: dim={dim!r} must be a name such as 'realisation'")
        for name, value in (("flat", flat), ("common", common)):
            if not isinstance(value, bool):
                raise SpaceError(f"Product: {name}={value!r} must be True or False")
        clash = sorted(set(outer.params) & set(inner.params))
        if clash:
            raise SpaceError(f"Product: parameter(s) {clash} are in both outer and inner; rename one")
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
                name=f"daskbatch-product-{name}-{self.inner.seed}-{self.batch_shape}",
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


def _axis_from_spec(name: str, value: Any) -> np.ndarray:
    if isinstance(value, list):
        return np.asarray(value)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, args),) = value.items()
        fns = {"linspace": np.linspace, "logspace": np.logspace, "arange": np.arange}
        if kind in fns and isinstance(args, list) and all(isinstance(a, int | float) for a in args):
            if kind != "arange" and len(args) == 3:
                args = [args[0], args[1], int(args[2])]
            return fns[kind](*args)
    raise SpaceError(
        f"space.axes.{name}: {value!r} is not a list of values or a table such as "
        "{linspace = [10, 100, 30]}, {logspace = [1, 3, 50]} or {arange = [0, 10, 1]}"
    )


def space_from_spec(spec: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> Space:
    """Build a space from its :meth:`Space.spec` or from a TOML ``[space]`` table.

    Examples
    --------
    >>> space_from_spec({"type": "grid", "axes": {"x": [1, 2], "y": {"linspace": [0, 1, 3]}}}).batch_shape
    (2, 3)
    """
    if not isinstance(spec, Mapping):
        raise SpaceError(f"space: expected a table, got {spec!r}")
    kind = spec.get("type")
    allowed = {
        "grid": {"type", "axes"},
        "montecarlo": {"type", "n", "seed", "params"},
        "latinhypercube": {"type", "n", "seed", "params", "strata"},
        "sobol": {"type", "n", "seed", "params", "scramble"},
        "halton": {"type", "n", "seed", "params", "scramble"},
        "product": {"type", "outer", "inner", "dim", "flat", "common"},
        "table": {"type", "path", "rows", "columns", "sha256"},
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
        options = {k: spec[k] for k in ("strata", "scramble") if k in spec}
        return _DESIGNS[kind](dists, n=spec["n"], seed=spec.get("seed"), **options)
    if kind == "product":
        for part in ("outer", "inner"):
            if not isinstance(spec.get(part), Mapping):
                raise SpaceError(f"space.{part}: a product needs an {part} table, e.g. [space.{part}]")
        outer = space_from_spec(spec["outer"], base_dir=base_dir)
        inner = space_from_spec(spec["inner"], base_dir=base_dir)
        options = {k: spec[k] for k in ("dim", "flat", "common") if k in spec}
        return Product(outer, inner, **options)  # type: ignore[arg-type]
    path = spec.get("path")
    if not isinstance(path, str):
        raise SpaceError("space.path: a table space needs path = 'inputs.csv' (or .parquet, .zarr)")
    p = Path(path)
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    table = Table(p)
    expected = spec.get("sha256")
    if expected is not None and table.spec()["sha256"] != expected:
        raise SpaceError(
            f"space.path: the file {str(p)!r} changed since the run started (its contents hash "
            "differs); restore it, or start a new store"
        )
    return table


_DESIGNS: dict[str, type[Design]] = {c.kind: c for c in (MonteCarlo, LatinHypercube, Sobol, Halton)}
