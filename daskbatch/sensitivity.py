"""Variance-based sensitivity analysis: the :class:`Saltelli` design and :func:`sobol_indices`.

The design is Saltelli's scheme on scrambled Sobol points, in the row order
``SALib.sample.sobol.sample`` gives, so ``SALib.analyze.sobol.analyze`` reads the
outputs as they are stored. For base point ``j`` (a Sobol point in ``2 d``
dimensions, ``d`` the number of uniforms the parameters take; ``A`` its first ``d``
coordinates and ``B`` its last ``d``) the design's rows are

* ``A_j``,
* ``AB_j^(i)`` for each parameter ``i``: ``A_j`` with parameter ``i``'s columns taken from ``B_j``,
* ``BA_j^(i)`` for each parameter ``i`` (second order only): ``B_j`` with parameter
  ``i``'s columns taken from ``A_j``,
* ``B_j``,

so ``n`` base points make ``n (D + 2)`` samples (``n (2 D + 2)`` with second order),
``D`` the number of parameters. A parameter with several values (``size=``, a
multivariate normal) is one group: its values move together. Every sample is a
function of the seed and its index alone, so a block is drawn on its own, and
raising ``n`` (to another power of 2) only adds samples at the end: the store grows.

:func:`sobol_indices` reads such a store back and gives first-order and total
indices with bootstrap confidence intervals, computed by SALib, for a scalar output
or for every element of an output with core dims (per time gate of a curve).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .designs import Design, sobol_points, to_open_unit
from .errors import DaskbatchError, SpaceError

__all__ = ["Saltelli", "sobol_indices"]

#: dimensions of scipy's Sobol direction numbers
_SOBOL_MAX_DIM = 21201
#: base points a scrambled Sobol sequence has (scipy's 30 bits)
_SOBOL_MAX_N = 2**30


def _powers_around(n: int) -> str:
    lower = 1 << max(1, int(n).bit_length() - 1)
    return f"n={lower:,} or n={2 * lower:,}"


class Saltelli(Design):
    """Saltelli's design for Sobol sensitivity indices: ``n`` base points, ``n (D + 2)`` samples.

    The samples are in the row order of ``SALib.sample.sobol.sample`` (base point by
    base point: ``A``, ``AB`` per parameter, [``BA`` per parameter], ``B``), drawn
    from scrambled Sobol points in ``2 d`` dimensions and mapped through each
    parameter's inverse CDF. Read the indices back with :func:`sobol_indices`.

    Parameters
    ----------
    dists
        ``{name: distribution}``: daskbatch distributions or frozen ``scipy.stats``
        ones. A parameter with several values (``size=``) is one group: it gets one
        index.
    n
        Number of base points, a power of 2 (at least 2). The design has
        ``n * (D + 2)`` samples, ``D = len(dists)`` (``n * (2 D + 2)`` with
        ``second_order``). Raising ``n`` later (e.g. doubling it) keeps every
        sample computed: the store grows.
    seed
        Non-negative integer. ``None`` draws one at random; it is recorded in the
        store, so the run can still be reproduced.
    second_order
        Add the ``BA`` rows that second-order indices need.

    Examples
    --------
    >>> from daskbatch import Uniform
    >>> s = Saltelli({"x": Uniform(0, 1), "y": Uniform(0, 1), "z": Uniform(0, 1)}, n=1024, seed=1)
    >>> s.size, s.n
    (5120, 1024)
    >>> x = s.block((slice(0, 5),))["x"]  # A, AB^(x), AB^(y), AB^(z), B of base point 0
    >>> bool(x[0] == x[2] == x[3]) and bool(x[1] == x[4])
    True
    """

    kind = "saltelli"

    def __init__(
        self, dists: Mapping[str, Any], n: int, seed: int | None = None, *, second_order: bool = False
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise SpaceError(
                f"Saltelli: n={n!r} must be a whole number of base points, a power of 2 such as 1024"
            )
        if n < 2:
            raise SpaceError(
                f"Saltelli: n={n!r} base points are too few; use a power of 2 of at least 2, e.g. n=1024"
            )
        if n & (n - 1):
            raise SpaceError(
                f"Saltelli: n={n:,} is not a power of 2; the Sobol points it is drawn from are "
                f"balanced only at powers of 2: use {_powers_around(n)}"
            )
        if n > _SOBOL_MAX_N:
            raise SpaceError(f"Saltelli: n={n:,} is more than the 2**30 base points the Sobol sequence has")
        if not isinstance(second_order, bool):
            raise SpaceError(f"Saltelli: second_order={second_order!r} must be True or False")
        super().__init__(dists, n, seed)
        fixed = [name for name, d in self.dists.items() if d.n_uniforms == 0]
        if fixed:
            raise SpaceError(
                f"Saltelli: parameter {fixed[0]!r} is a constant and has no sensitivity; pass it to "
                f"run(..., constants={{{fixed[0]!r}: ...}}) instead"
            )
        if 2 * self.dimension > _SOBOL_MAX_DIM:
            raise SpaceError(
                f"Saltelli: the parameters take {self.dimension:,} uniforms; the Sobol points "
                f"(2 per uniform) have at most {_SOBOL_MAX_DIM:,} dimensions"
            )
        self.second_order = second_order
        #: rows per base point: A, AB^(1..D), [BA^(1..D)], B
        self.rows = (2 if second_order else 1) * len(self.dists) + 2
        self.batch_shape = (self.n * self.rows,)

    @property
    def parameters(self) -> list[str]:
        """The parameter names, in the order of the ``AB`` rows."""
        return list(self.dists)

    def _options(self) -> dict[str, Any]:
        return {"second_order": True} if self.second_order else {}

    def _points(self, start: int, stop: int) -> np.ndarray:
        """Points of samples ``[start, stop)`` in the unit cube, shape ``(stop - start, d)``."""
        if stop <= start:
            return np.empty((0, self.dimension))
        R, d = self.rows, self.dimension
        j0, j1 = start // R, (stop - 1) // R + 1
        base = sobol_points(self._seed, 2 * d, j0, j1)
        a, b = base[:, :d], base[:, d:]
        out = np.empty((j1 - j0, R, d))
        out[:, 0] = a
        out[:, R - 1] = b
        for i, cols in enumerate(self._columns.values()):
            out[:, 1 + i] = a
            out[:, 1 + i, cols] = b[:, cols]
            if self.second_order:
                k = 1 + len(self.dists) + i
                out[:, k] = b
                out[:, k, cols] = a[:, cols]
        return out.reshape(-1, d)[start - j0 * R : stop - j0 * R]

    def _uniforms(self, name: str, start: int, stop: int) -> np.ndarray:
        return to_open_unit(self._points(start, stop)[:, self._columns[name]])

    def block(self, slices):
        (s,) = slices
        u = to_open_unit(self._points(s.start, s.stop))  # once for every parameter
        return {name: d.ppf(u[:, self._columns[name]]) for name, d in self.dists.items()}

    def head(self, n: int) -> Saltelli:
        """The design's first base points, as many as ``n`` samples hold rounded down to a
        power of 2 (at least 2): a smoke run of the design's own first samples."""
        base = max(2, -(-int(n) // self.rows))
        base = min(self.n, 1 << (base.bit_length() - 1))
        return Saltelli(self.dists, n=base, seed=self._seed, second_order=self.second_order)

    def resized(self, n: int) -> Saltelli:
        """The design with as many base points as ``n`` *samples* hold, rounded down to a
        power of 2 (at least 2): how ``until=`` doubles it, keeping it balanced."""
        base = max(2, int(n) // self.rows)
        other = Saltelli(
            self.dists, n=1 << (base.bit_length() - 1), seed=self._seed, second_order=self.second_order
        )
        other._seed_given = self._seed_given
        return other


# --------------------------------------------------------------------------- indices


def _open_source(source: Any) -> tuple[Any, str | None]:
    """The dataset of ``source`` and the store's path (None for a dataset given)."""
    import xarray as xr

    from .results import RunResult, StoreStatus
    from .store import Store

    if isinstance(source, xr.Dataset):
        return source, None
    if isinstance(source, RunResult | StoreStatus):
        path = source.store
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
    else:
        raise DaskbatchError(
            f"sobol_indices: source={source!r} must be a store path, the RunResult of run() or "
            "the Dataset daskbatch.open() returns"
        )
    return Store(path).open_dataset(), path


def sobol_indices(
    source: Any,
    output: str,
    *,
    conf_level: float = 0.95,
    num_resamples: int = 100,
    seed: int | None = 0,
) -> Any:
    """First-order and total Sobol indices of ``output`` over a :class:`Saltelli` run.

    The estimators are SALib's (``SALib.analyze.sobol.analyze``: Saltelli et al. 2010
    for first-order and total indices, Saltelli 2002 for second order), with bootstrap
    confidence intervals. An output with core dims (a curve) gets indices for each of
    its elements (per time gate).

    Parameters
    ----------
    source
        A store path, the :class:`~daskbatch.RunResult` of :func:`daskbatch.run`, or the
        :class:`xarray.Dataset` :func:`daskbatch.open` returns, of a run over a
        :class:`Saltelli` design.
    output
        The name of a numeric output.
    conf_level
        Level of the confidence intervals, between 0 and 1.
    num_resamples
        Bootstrap resamples for the confidence intervals.
    seed
        Seed of the bootstrap resampling (the indices do not depend on it); None: a
        random one.

    Returns
    -------
    xarray.Dataset
        ``S1``, ``S1_conf``, ``ST``, ``ST_conf`` (and ``S2``, ``S2_conf`` along
        ``parameter`` and ``parameter_2`` for a second-order design) with dims
        ``("parameter", *output core dims)``; a ``*_conf`` value is the half-width
        of the interval at ``conf_level``. ``attrs``: ``n`` (base points of the
        design), ``n_used``, ``n_dropped_failed`` and ``n_dropped_nonfinite`` (base
        points left out because one of their samples failed, or gave NaN or inf),
        ``conf_level``, ``num_resamples``. An element whose value is the same for
        every sample has no variance to share out: its indices are NaN.

    Examples
    --------
    >>> import daskbatch as db
    >>> si = db.sobol_indices("ishigami.zarr", "y")  # doctest: +SKIP
    >>> si.S1.sel(parameter="x1").item(), si.ST_conf.sel(parameter="x1").item()  # doctest: +SKIP
    (0.31..., 0.02...)
    """
    import xarray as xr

    from .records import STATUS

    if isinstance(conf_level, bool) or not isinstance(conf_level, int | float) or not 0 < conf_level < 1:
        raise DaskbatchError(f"sobol_indices: conf_level={conf_level!r} must be between 0 and 1, e.g. 0.95")
    whole = isinstance(num_resamples, int | np.integer) and not isinstance(num_resamples, bool)
    if not whole or num_resamples < 2:
        raise DaskbatchError(
            f"sobol_indices: num_resamples={num_resamples!r} must be a whole number >= 2, e.g. 100"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise DaskbatchError(f"sobol_indices: seed={seed!r} must be a non-negative integer or None")

    ds, path = _open_source(source)
    where = f"store {path!r}" if path is not None else "the dataset"
    info = ds.attrs.get("daskbatch")
    spec = info.get("space_spec") if isinstance(info, Mapping) else None
    if not isinstance(spec, Mapping):
        raise DaskbatchError(
            f"sobol_indices: {where} has no daskbatch provenance (attrs['daskbatch']); pass the "
            "store's path or the Dataset daskbatch.open() returns"
        )
    if spec.get("type") != Saltelli.kind:
        raise DaskbatchError(
            f"sobol_indices: {where} was run over a {spec.get('type')!r} space, not a Saltelli design; "
            "run the kernel over daskbatch.Saltelli(dists, n) to get Sobol indices"
        )
    names = list(spec.get("params") or {})
    n, second_order = int(spec["n"]), bool(spec.get("second_order", False))
    D = len(names)
    R = (2 if second_order else 1) * D + 2

    params = set(names) | {"status"}
    outputs = sorted(k for k, v in ds.data_vars.items() if k not in params and "sample" in v.dims)
    if not isinstance(output, str) or output not in ds.data_vars or output in params:
        raise DaskbatchError(
            f"sobol_indices: output={output!r} is not an output of {where}; its outputs: {outputs}"
        )
    var = ds[output]
    if var.dims[:1] != ("sample",) or "sample" in var.dims[1:]:
        raise DaskbatchError(f"sobol_indices: output {output!r} has dims {var.dims}, not ('sample', ...)")
    if var.dtype.kind not in "biuf":
        raise DaskbatchError(
            f"sobol_indices: output {output!r} holds {var.dtype} values; Sobol indices need numbers"
        )
    if var.sizes["sample"] != n * R:
        raise DaskbatchError(
            f"sobol_indices: {where} has {var.sizes['sample']:,} samples, not the n*{R}={n * R:,} of its "
            f"Saltelli design (n={n:,}); pass the whole dataset, not a selection of it"
        )

    status = np.asarray(ds["status"].values)
    pending = int((status == int(STATUS.pending)).sum())
    if pending:
        how = f"daskbatch resume {path}" if path is not None else "resume the store"
        raise DaskbatchError(
            f"sobol_indices: {pending:,} of {n * R:,} samples of {where} are not computed yet; "
            f"run or resume it first ({how})"
        )
    core_dims = var.dims[1:]
    core_shape = tuple(var.sizes[d] for d in core_dims)
    K = math.prod(core_shape)
    values = np.asarray(var.values, dtype=np.float64).reshape(n, R, K)
    failed = (status != int(STATUS.ok)).reshape(n, R).any(axis=1)
    nonfinite = ~np.isfinite(values).all(axis=(1, 2)) & ~failed
    usable = ~(failed | nonfinite)
    n_used = int(usable.sum())
    if n_used < 2:
        raise DaskbatchError(
            f"sobol_indices: only {n_used} of {n:,} base points of {where} are usable "
            f"({int(failed.sum()):,} have a failed sample, {int(nonfinite.sum()):,} a NaN or inf value); "
            "the indices need at least 2: fix the failures (daskbatch failures) or raise n"
        )
    if n_used < n:
        samples_failed = int((status != int(STATUS.ok)).sum())
        warnings.warn(
            f"sobol_indices: {n - n_used:,} of {n:,} base points left out ({samples_failed:,} samples "
            f"failed, {int(nonfinite.sum()):,} base points with NaN or inf values); the indices use the "
            f"other {n_used:,}",
            UserWarning,
            stacklevel=2,
        )
    values = values[usable]

    estimates = _analyze(values, names, second_order, conf_level, int(num_resamples), seed)
    out_vars: dict[str, Any] = {}
    long = {
        "S1": "first-order Sobol index",
        "ST": "total Sobol index",
        "S2": "second-order Sobol index",
    }
    for key, arr in estimates.items():
        stem = key.removesuffix("_conf")
        dims = ("parameter", "parameter_2") if stem == "S2" else ("parameter",)
        arr = arr.reshape(*arr.shape[:-1], *core_shape)
        attrs = {"long_name": long[stem]}
        if key.endswith("_conf"):
            attrs = {"long_name": f"{long[stem]}: half-width of the {conf_level:g} confidence interval"}
        out_vars[key] = xr.Variable((*dims, *core_dims), arr, attrs=attrs)
    coords: dict[str, Any] = {"parameter": names}
    if second_order:
        coords["parameter_2"] = names
    for name, c in var.coords.items():
        if c.dims and set(c.dims) <= set(core_dims):
            coords[name] = c.variable.load()
    return xr.Dataset(
        out_vars,
        coords=coords,
        attrs={
            "output": output,
            "n": n,
            "n_used": n_used,
            "n_dropped_failed": int(failed.sum()),
            "n_dropped_nonfinite": int(nonfinite.sum()),
            "second_order": int(second_order),
            "conf_level": float(conf_level),
            "num_resamples": int(num_resamples),
            "estimator": "SALib.analyze.sobol (Saltelli 2010; second order: Saltelli 2002)",
        },
    )


def _analyze(
    values: np.ndarray,
    names: list[str],
    second_order: bool,
    conf_level: float,
    num_resamples: int,
    seed: int | None,
) -> dict[str, np.ndarray]:
    """SALib's estimates for each element ``k`` of ``values`` (shape ``(n, R, K)``):
    ``{key: array (D, K)}`` (``(D, D, K)`` for ``S2``)."""
    from SALib.analyze.sobol import analyze

    K = values.shape[2]
    D = len(names)
    keys = ["S1", "S1_conf", "ST", "ST_conf"] + (["S2", "S2_conf"] if second_order else [])
    out = {k: np.full((D, D, K) if k.startswith("S2") else (D, K), np.nan) for k in keys}
    # SALib resamples with np.random when its seed is 0 or None: a non-zero one of ours
    salib_seed = None if seed is None else int(np.random.default_rng(seed).integers(1, 2**62))
    problem = {"num_vars": D, "names": names}
    for k in range(K):
        y = values[:, :, k].reshape(-1)
        if np.ptp(y) == 0:
            continue  # no variance to share out: NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            s = analyze(
                problem,
                y,
                calc_second_order=second_order,
                num_resamples=num_resamples,
                conf_level=conf_level,
                seed=salib_seed,
            )
        for key in keys:
            if key.startswith("S2"):
                m = np.asarray(s[key], dtype=np.float64)
                upper = np.triu(np.ones((D, D), dtype=bool), 1)
                sym = np.where(upper, m, m.T)  # SALib fills j < k; the same for k > j
                np.fill_diagonal(sym, np.nan)
                out[key][:, :, k] = sym
            else:
                out[key][:, k] = s[key]
    return out
