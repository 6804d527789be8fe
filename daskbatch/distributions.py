"""Distributions for Monte Carlo parameters.

Each distribution maps uniform numbers in (0, 1) to values by its inverse CDF, so a
sample's value depends only on ``(seed, parameter, sample index)``. Parameters are
checked when the distribution is made: an invalid one raises
:class:`~daskbatch.errors.SpaceError` naming it.

The :class:`Distribution` base class and the parametric families (:class:`Uniform`,
:class:`Normal`, ...) are in :mod:`daskbatch.parametric`; this module adds
:class:`Choice`, :class:`Constant`, :class:`Scipy` and :class:`MultivariateNormal`,
and turns a spec (a TOML table) into a distribution (:func:`from_spec`). Every
distribution is imported from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import SpaceError
from .parametric import (
    Beta,
    Distribution,
    LogNormal,
    LogUniform,
    Normal,
    Triangular,
    TruncatedNormal,
    Uniform,
    _as_param,
    _check_size_dim,
    _positive,
    _special,
)

__all__ = [
    "Beta",
    "Choice",
    "Constant",
    "Distribution",
    "LogNormal",
    "LogUniform",
    "MultivariateNormal",
    "Normal",
    "Scipy",
    "Triangular",
    "TruncatedNormal",
    "Uniform",
    "as_distribution",
    "from_spec",
]


def _values(cls: str, name: str, values: Any) -> np.ndarray:
    """A 1-D array of numbers or strings (not a mix), for Choice and Constant."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b" or isinstance(values, bool):
        raise SpaceError(f"{cls}: {name}={values!r}: use numbers or strings, not booleans")
    if arr.dtype.kind not in "iufU":
        raise SpaceError(f"{cls}: {name}={values!r} must be numbers or strings (not a mix of both)")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise SpaceError(f"{cls}: {name}={values!r} must be finite")
    return arr


class Choice(Distribution):
    """One of ``values`` (numbers or strings), with ``weights`` (default: equal).

    Weights are non-negative numbers, one per value; they are normalised, so
    probabilities (summing to 1) and counts both work.

    Examples
    --------
    >>> d = Choice(["sand", "clay", "till"], weights=[0.5, 0.3, 0.2])
    >>> d.ppf(np.array([[0.1], [0.6], [0.95]])).tolist()
    ['sand', 'clay', 'till']
    """

    kind = "choice"

    def __init__(
        self,
        values: Any,
        weights: Any = None,
        *,
        size: int | None = None,
        dim: str | None = None,
    ) -> None:
        arr = _values("Choice", "values", values)
        if arr.ndim != 1 or arr.size == 0:
            raise SpaceError(f"Choice: values={values!r} must be a non-empty 1-D list")
        if weights is None:
            w = np.ones(arr.size)
        else:
            w = _as_param("Choice", "weights", weights)
            if w.shape != arr.shape:
                raise SpaceError(
                    f"Choice: weights={weights!r} has {w.size} entries for {arr.size} values; "
                    "give one per value"
                )
            if np.any(w < 0) or not w.sum() > 0:
                raise SpaceError(
                    f"Choice: weights={weights!r} must be >= 0 with a positive sum (probabilities or counts)"
                )
        _check_size_dim("Choice", size, dim)
        self.values = arr
        self.weights = None if weights is None else w
        self._cum = np.cumsum(w) / w.sum()
        self._cum[-1] = 1.0
        self.shape = () if size is None else (int(size),)
        self.dim = dim
        self.dtype = arr.dtype

    def ppf(self, u: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.searchsorted(self._cum, u, side="right"), self.values.size - 1)
        return self.values[idx].reshape(u.shape[:-1] + self.shape)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind, "values": self.values.tolist()}
        if self.weights is not None:
            out["weights"] = self.weights.tolist()
        if self.shape:
            out["size"] = self.shape[0]
        if self.dim is not None:
            out["dim"] = self.dim
        return out


class Constant(Distribution):
    """The same value in every sample (a number, a string, or a 1-D list for a vector).

    It takes no design dimension, so adding one leaves the other parameters' values
    unchanged.

    Examples
    --------
    >>> Constant(2.5).ppf(np.empty((3, 0))).tolist()
    [2.5, 2.5, 2.5]
    """

    kind = "constant"

    def __init__(self, value: Any, *, dim: str | None = None) -> None:
        arr = _values("Constant", "value", value)
        if arr.ndim > 1:
            raise SpaceError(f"Constant: value={value!r} must be a value or a 1-D list")
        _check_size_dim("Constant", None, dim)
        self.value = arr
        self.shape = arr.shape
        self.dim = dim
        self.dtype = arr.dtype

    @property
    def n_uniforms(self) -> int:
        return 0

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.value, u.shape[:-1] + self.shape).copy()

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind, "value": self.value.tolist()}
        if self.dim is not None:
            out["dim"] = self.dim
        return out


class Scipy(Distribution):
    """Any frozen univariate ``scipy.stats`` distribution, e.g. ``Scipy(stats.gamma(2, scale=3))``.

    A frozen distribution can also be given directly in a design's ``dists``. Its
    name, arguments and keywords are recorded, so it round-trips through a spec file
    (``{dist = "scipy", name = "gamma", args = [2], kwds = {scale = 3}}``).

    Examples
    --------
    >>> from scipy import stats
    >>> round(float(Scipy(stats.expon(scale=2)).ppf(np.array([[0.5]]))[0]), 4)
    1.3863
    """

    kind = "scipy"

    def __init__(self, frozen: Any, *, size: int | None = None, dim: str | None = None) -> None:
        from scipy import stats

        dist = getattr(frozen, "dist", None)
        if not isinstance(dist, stats.rv_continuous | stats.rv_discrete) or not hasattr(frozen, "ppf"):
            raise SpaceError(
                f"Scipy: {frozen!r} is not a frozen scipy.stats distribution; "
                "use e.g. stats.gamma(2, scale=3)"
            )
        name = getattr(dist, "name", None)
        if not isinstance(name, str) or getattr(stats, name, None) is None:
            raise SpaceError(f"Scipy: {frozen!r} is not one of scipy.stats' named distributions")
        try:
            median = float(frozen.ppf(0.5))
        except Exception as e:
            raise SpaceError(f"Scipy: {name}{tuple(frozen.args)} {frozen.kwds}: {e}") from None
        if not np.isfinite(median):
            raise SpaceError(
                f"Scipy: {name} with args={list(frozen.args)!r} kwds={dict(frozen.kwds)!r} is not a valid "
                "distribution (its parameters are out of range)"
            )
        _check_size_dim("Scipy", size, dim)
        self.frozen = frozen
        self.name = name
        self.shape = () if size is None else (int(size),)
        self.dim = dim
        self.dtype = np.dtype("float64")

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.frozen.ppf(u), dtype=np.float64).reshape(u.shape[:-1] + self.shape)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dist": self.kind,
            "name": self.name,
            "args": [_plain(a) for a in self.frozen.args],
            "kwds": {k: _plain(v) for k, v in self.frozen.kwds.items()},
        }
        if self.shape:
            out["size"] = self.shape[0]
        if self.dim is not None:
            out["dim"] = self.dim
        return out


def _plain(v: Any) -> Any:
    arr = np.asarray(v)
    if arr.dtype.kind not in "iuf":
        raise SpaceError(f"Scipy: argument {v!r} cannot be recorded; use numbers")
    return arr.tolist()


class MultivariateNormal(Distribution):
    """Correlated normal values: a vector parameter with mean ``mean`` and covariance.

    Give ``cov`` (a covariance matrix), or ``corr`` (a correlation matrix) with ``sd``
    (standard deviations). Values are ``mean + L z`` with ``L`` the Cholesky factor
    of the covariance and ``z`` independent standard normals from the design.

    Examples
    --------
    >>> d = MultivariateNormal([0, 0], corr=[[1, 0.8], [0.8, 1]], sd=[1, 2])
    >>> d.shape, d.cov.tolist()
    ((2,), [[1.0, 1.6], [1.6, 4.0]])
    """

    kind = "mvnormal"

    def __init__(
        self,
        mean: Any,
        cov: Any = None,
        *,
        corr: Any = None,
        sd: Any = None,
        dim: str | None = None,
    ) -> None:
        m = _as_param("MultivariateNormal", "mean", mean)
        if m.ndim != 1 or m.size < 1:
            raise SpaceError(f"MultivariateNormal: mean={mean!r} must be a 1-D list of numbers")
        k = m.size
        if (cov is None) == (corr is None):
            raise SpaceError("MultivariateNormal: give either cov=, or corr= with sd=")

        def matrix(name: str, value: Any) -> np.ndarray:
            try:
                a = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise SpaceError(f"MultivariateNormal: {name}={value!r} is not a matrix of numbers") from None
            if a.shape != (k, k):
                raise SpaceError(
                    f"MultivariateNormal: {name} has shape {a.shape}; expected ({k}, {k}) for {k} means"
                )
            if not np.all(np.isfinite(a)) or not np.allclose(a, a.T):
                raise SpaceError(f"MultivariateNormal: {name}={a.tolist()!r} must be finite and symmetric")
            return a

        if cov is not None:
            if sd is not None:
                raise SpaceError("MultivariateNormal: sd= goes with corr=, not with cov=")
            c = matrix("cov", cov)
        else:
            r = matrix("corr", corr)
            if not np.allclose(np.diag(r), 1) or np.any(np.abs(r) > 1):
                raise SpaceError(
                    f"MultivariateNormal: corr={r.tolist()!r} must have ones on the diagonal and "
                    "entries in [-1, 1]"
                )
            if sd is None:
                raise SpaceError("MultivariateNormal: corr= needs sd= (the standard deviations)")
            s = np.broadcast_to(_as_param("MultivariateNormal", "sd", sd), (k,))
            _positive("MultivariateNormal", "sd", s)
            c = r * np.outer(s, s)
        try:
            self._chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            name, given = ("cov", cov) if cov is not None else ("corr", corr)
            raise SpaceError(
                f"MultivariateNormal: {name}={np.asarray(given).tolist()!r} is not positive definite "
                "(no Cholesky factor)"
            ) from None
        _check_size_dim("MultivariateNormal", None, dim)
        self.mean = m
        self.cov = c
        self._given = {"cov": cov} if cov is not None else {"corr": corr, "sd": sd}
        self.shape = (k,)
        self.dim = dim
        self.dtype = np.dtype("float64")

    def ppf(self, u: np.ndarray) -> np.ndarray:
        z = _special().ndtri(u.reshape(-1, self.shape[0]))
        # mean + z L^T, summed in a fixed order per value: a matrix product (BLAS) sums
        # in an order that depends on the number of rows, so a value's last bits would
        # depend on the block it is drawn in
        out = np.broadcast_to(self.mean, z.shape).copy()
        for j in range(z.shape[1]):
            out += z[:, j : j + 1] * self._chol[:, j]
        return out.reshape(u.shape[:-1] + self.shape)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind, "mean": self.mean.tolist()}
        out.update({k: np.asarray(v, dtype=np.float64).tolist() for k, v in self._given.items()})
        if self.dim is not None:
            out["dim"] = self.dim
        return out


_KINDS: dict[str, type[Distribution]] = {
    c.kind: c
    for c in (
        Uniform,
        LogUniform,
        Normal,
        LogNormal,
        TruncatedNormal,
        Triangular,
        Beta,
        Choice,
        Constant,
        Scipy,
        MultivariateNormal,
    )
}
#: keys each kind takes in a spec besides ``dist``
_SPEC_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required, optional)
    "lognormal": (("mu", "sigma"), ("base", "size", "dim")),
    "choice": (("values",), ("weights", "size", "dim")),
    "constant": (("value",), ("dim",)),
    "scipy": (("name",), ("args", "kwds", "size", "dim")),
    "mvnormal": (("mean",), ("cov", "corr", "sd", "dim")),
    "beta": (("a", "b"), ("low", "high", "size", "dim")),
}


def as_distribution(value: Any, *, where: str = "distribution") -> Distribution:
    """A :class:`Distribution` as is; a frozen ``scipy.stats`` distribution wrapped in :class:`Scipy`."""
    if isinstance(value, Distribution):
        return value
    if hasattr(value, "dist") and hasattr(value, "ppf"):
        return Scipy(value)
    raise SpaceError(f"{where}={value!r} is not a distribution; use e.g. Uniform(0, 1) or stats.gamma(2)")


def from_spec(spec: dict[str, Any], *, where: str = "distribution") -> Distribution:
    """Build a distribution from its :meth:`Distribution.spec` (or a TOML table).

    Examples
    --------
    >>> from_spec({"dist": "normal", "mean": 0, "sd": 1})
    Normal(mean=0, sd=1)
    >>> from_spec({"dist": "choice", "values": ["a", "b"], "weights": [3, 1]})
    Choice(values=['a', 'b'], weights=[3.0, 1.0])
    """
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected a table such as {{dist = 'uniform', ...}}, got {spec!r}")
    kind = spec.get("dist")
    if kind not in _KINDS:
        raise SpaceError(f"{where}: dist={kind!r} is not one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    required, optional = _SPEC_KEYS.get(kind, (cls._params, ("size", "dim")))
    allowed = {*required, *optional, "dist"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown} for dist={kind!r}; allowed: {sorted(allowed)}")
    missing = [p for p in required if p not in spec]
    if missing:
        raise SpaceError(f"{where}: dist={kind!r} needs {missing}")
    try:
        if cls is Scipy:
            from scipy import stats

            name = spec["name"]
            dist = getattr(stats, name, None) if isinstance(name, str) else None
            if not isinstance(dist, stats.rv_continuous | stats.rv_discrete):
                raise SpaceError(f"{where}: name={name!r} is not a scipy.stats distribution")
            args, kwds = spec.get("args", []), spec.get("kwds", {})
            if not isinstance(args, list) or not isinstance(kwds, dict):
                raise SpaceError(f"{where}: args must be a list and kwds a table")
            extra = {k: spec[k] for k in ("size", "dim") if k in spec}
            return Scipy(dist(*args, **kwds), **extra)
        if cls in (Choice, Constant, MultivariateNormal):
            first = required[0]
            return cls(spec[first], **{k: v for k, v in spec.items() if k not in ("dist", first)})
        kwargs = {k: v for k, v in spec.items() if k not in ("dist", *cls._params)}
        return cls(*(spec[p] for p in cls._params if p in spec), **kwargs)
    except TypeError as e:
        raise SpaceError(f"{where}: {e}") from None
