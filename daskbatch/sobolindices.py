"""Sobol indices of the dataset of a :class:`~daskbatch.saltelli.Saltelli` run.

:func:`indices_of` checks that a dataset is a whole, computed Saltelli run, leaves
out the base points with a failed sample or a NaN or inf value, and gives SALib's
first-order, total (and second-order) indices with bootstrap confidence intervals,
for a scalar output or for every element of an output with core dims. It reads a
dataset already open: :func:`daskbatch.sensitivity.sobol_indices` opens a store,
a run's result or takes a dataset, and the ``"sobol"`` rule of ``until=``
(:mod:`daskbatch.reduced`) opens the run's store.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DaskbatchError
from .saltelli import Saltelli

__all__ = ["indices_of"]


def indices_of(
    ds: Any,
    path: str | None,
    output: str,
    conf_level: float,
    num_resamples: int,
    seed: int | None,
) -> Any:
    """The indices :func:`~daskbatch.sensitivity.sobol_indices` gives, of ``output`` in the
    dataset ``ds`` of a Saltelli run (``path``: its store's, None for a dataset given; the
    messages name it). The arguments are checked already."""
    import xarray as xr

    where = f"store {path!r}" if path is not None else "the dataset"
    names, n, second_order = _design(ds, where)
    D = len(names)
    R = (2 if second_order else 1) * D + 2
    var = _output_variable(ds, output, names, n, R, where)
    core_dims = var.dims[1:]
    core_shape = tuple(var.sizes[d] for d in core_dims)
    values, failed, nonfinite = _usable_values(ds, var, n, R, path, where)

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
            "n_used": len(values),
            "n_dropped_failed": int(failed.sum()),
            "n_dropped_nonfinite": int(nonfinite.sum()),
            "second_order": int(second_order),
            "conf_level": float(conf_level),
            "num_resamples": int(num_resamples),
            "estimator": "SALib.analyze.sobol (Saltelli 2010; second order: Saltelli 2002)",
        },
    )


def _design(ds: Any, where: str) -> tuple[list[str], int, bool]:
    """The parameter names, base points and second order of the Saltelli design that
    ``ds`` records in its provenance."""
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
    return list(spec.get("params") or {}), int(spec["n"]), bool(spec.get("second_order", False))


def _output_variable(ds: Any, output: Any, names: list[str], n: int, R: int, where: str) -> Any:
    """The variable of ``output``: a numeric output of every one of the design's ``n * R``
    samples."""
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
    return var


def _usable_values(
    ds: Any, var: Any, n: int, R: int, path: str | None, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values of the base points that every sample of is ok and finite, shape
    ``(n_used, R, K)``; which base points have a failed sample, and which a NaN or inf
    value. Refuses a run not computed yet, and one with fewer than 2 usable base
    points; warns when some are left out."""
    from .records import STATUS

    status = np.asarray(ds["status"].values)
    pending = int((status == int(STATUS.pending)).sum())
    if pending:
        how = f"daskbatch resume {path}" if path is not None else "resume the store"
        raise DaskbatchError(
            f"sobol_indices: {pending:,} of {n * R:,} samples of {where} are not computed yet; "
            f"run or resume it first ({how})"
        )
    K = math.prod(var.sizes[d] for d in var.dims[1:])
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
            stacklevel=4,  # the caller of sobol_indices
        )
    return values[usable], failed, nonfinite


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
