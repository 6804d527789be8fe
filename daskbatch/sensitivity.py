"""Variance-based sensitivity analysis: :func:`sobol_indices` of a :class:`Saltelli` run.

The design, Saltelli's scheme on scrambled Sobol points in the row order
``SALib.sample.sobol.sample`` gives, is :class:`~daskbatch.saltelli.Saltelli`
(importable from here too). :func:`sobol_indices` reads the store of a run over it
back and gives first-order and total indices with bootstrap confidence intervals,
computed by SALib, for a scalar output or for every element of an output with core
dims (per time gate of a curve).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import DaskbatchError
from .saltelli import Saltelli
from .sobolindices import indices_of

__all__ = ["Saltelli", "sobol_indices"]


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
    _check_options(conf_level, num_resamples, seed)
    ds, path = _open_source(source)
    return indices_of(ds, path, output, conf_level, num_resamples, seed)


def _check_options(conf_level: Any, num_resamples: Any, seed: Any) -> None:
    """Refuse a bad ``conf_level``, ``num_resamples`` or ``seed`` of :func:`sobol_indices`."""
    if isinstance(conf_level, bool) or not isinstance(conf_level, int | float) or not 0 < conf_level < 1:
        raise DaskbatchError(f"sobol_indices: conf_level={conf_level!r} must be between 0 and 1, e.g. 0.95")
    whole = isinstance(num_resamples, int | np.integer) and not isinstance(num_resamples, bool)
    if not whole or num_resamples < 2:
        raise DaskbatchError(
            f"sobol_indices: num_resamples={num_resamples!r} must be a whole number >= 2, e.g. 100"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise DaskbatchError(f"sobol_indices: seed={seed!r} must be a non-negative integer or None")
