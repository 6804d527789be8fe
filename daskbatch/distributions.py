"""Distributions for Monte Carlo parameters.

Each distribution maps uniform numbers in (0, 1) to values by its inverse CDF, so a
sample's value depends only on ``(seed, parameter, sample index)``. Parameters are
checked when the distribution is made: an invalid one raises
:class:`~daskbatch.errors.SpaceError` naming it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from scipy import special

from .errors import SpaceError

__all__ = ["Distribution", "LogNormal", "LogUniform", "Normal", "Uniform", "from_spec"]


def _as_param(dist: str, name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists
        arr = np.asarray(None, dtype=object)
    if arr.dtype.kind not in "iuf" or isinstance(value, bool):
        raise SpaceError(f"{dist}: {name}={value!r} is not a number or a list of numbers")
    arr = arr.astype(np.float64)
    if arr.ndim > 1:
        raise SpaceError(f"{dist}: {name} must be a number or a 1-D list, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SpaceError(f"{dist}: {name}={value!r} must be finite")
    return arr


class Distribution:
    """Base class: a scalar or vector-valued parameter drawn by inverse CDF.

    Subclasses list their parameter names in ``_params`` and implement ``_ppf``.
    """

    kind: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *values: Any, size: int | None = None, dim: str | None = None) -> None:
        cls = type(self).__name__
        arrays = [_as_param(cls, n, v) for n, v in zip(self._params, values, strict=True)]
        try:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(self._params, arrays, strict=True))
            raise SpaceError(f"{cls}: parameter lengths do not match ({shapes})") from None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise SpaceError(f"{cls}: size={size!r} must be a positive integer or None")
            if shape not in ((), (int(size),)):
                raise SpaceError(f"{cls}: size={size} does not match parameters of length {shape[0]}")
            shape = (int(size),)
        if dim is not None and (not isinstance(dim, str) or not dim):
            raise SpaceError(f"{cls}: dim={dim!r} must be a non-empty string")
        self.shape: tuple[int, ...] = shape
        self.dim = dim
        self._values = {n: np.broadcast_to(a, shape) for n, a in zip(self._params, arrays, strict=True)}
        self._raw = dict(zip(self._params, values, strict=True))
        self._check(**self._values)

    def _check(self, **values: np.ndarray) -> None:  # pragma: no cover - overridden
        pass

    @property
    def size(self) -> int:
        """Number of values per sample (1 for a scalar parameter)."""
        return math.prod(self.shape)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Map uniforms of shape ``(n, size)`` to values of shape ``(n, *shape)``."""
        out = self._ppf(u, **{k: v.reshape(-1) if v.ndim else v for k, v in self._values.items()})
        return out.reshape(u.shape[:-1] + self.shape)

    def _ppf(self, u: np.ndarray, **params: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that :func:`from_spec` turns back into this distribution."""
        out: dict[str, Any] = {"dist": self.kind}
        for name in self._params:
            v = self._raw[name]
            out[name] = np.asarray(v).tolist()
        if self.shape and all(np.ndim(self._raw[n]) == 0 for n in self._params):
            out["size"] = self.shape[0]
        if self.dim is not None:
            out["dim"] = self.dim
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "dist")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distribution) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(repr(self))


def _positive(cls: str, name: str, value: np.ndarray) -> None:
    if np.any(value <= 0):
        raise SpaceError(f"{cls}: {name}={value.tolist()!r} must be > 0")


class Uniform(Distribution):
    """Uniform on ``[low, high)``.

    Examples
    --------
    >>> Uniform(0, [1, 2]).shape
    (2,)
    """

    kind = "uniform"
    _params = ("low", "high")

    def __init__(self, low: Any, high: Any, *, size: int | None = None, dim: str | None = None):
        super().__init__(low, high, size=size, dim=dim)

    def _check(self, low: np.ndarray, high: np.ndarray) -> None:
        if np.any(low >= high):
            raise SpaceError(f"Uniform: low={low.tolist()!r} must be below high={high.tolist()!r}")

    def _ppf(self, u, low, high):
        return low + (high - low) * u


class LogUniform(Distribution):
    """Log-uniform (reciprocal) on ``[low, high)``, both > 0.

    Examples
    --------
    >>> LogUniform(1, 1000, size=3).shape
    (3,)
    """

    kind = "loguniform"
    _params = ("low", "high")

    def __init__(self, low: Any, high: Any, *, size: int | None = None, dim: str | None = None):
        super().__init__(low, high, size=size, dim=dim)

    def _check(self, low: np.ndarray, high: np.ndarray) -> None:
        _positive("LogUniform", "low", low)
        if np.any(low >= high):
            raise SpaceError(f"LogUniform: low={low.tolist()!r} must be below high={high.tolist()!r}")

    def _ppf(self, u, low, high):
        return np.exp(np.log(low) + (np.log(high) - np.log(low)) * u)


class Normal(Distribution):
    """Normal with mean ``mean`` and standard deviation ``sd`` (> 0).

    Examples
    --------
    >>> Normal([30, 70], [5, 10]).shape
    (2,)
    """

    kind = "normal"
    _params = ("mean", "sd")

    def __init__(self, mean: Any, sd: Any, *, size: int | None = None, dim: str | None = None):
        super().__init__(mean, sd, size=size, dim=dim)

    def _check(self, mean: np.ndarray, sd: np.ndarray) -> None:
        _positive("Normal", "sd", sd)

    def _ppf(self, u, mean, sd):
        return mean + sd * special.ndtri(u)


class LogNormal(Distribution):
    """Log-normal: ``log_base(x)`` is normal with mean ``mu`` and sd ``sigma`` (> 0).

    ``base`` defaults to e (numpy's convention); ``base=10`` takes decades, the way
    resistivities are usually described.

    Examples
    --------
    >>> LogNormal(2, 0.5, base=10, size=3).shape
    (3,)
    """

    kind = "lognormal"
    _params = ("mu", "sigma")

    def __init__(
        self,
        mu: Any,
        sigma: Any,
        *,
        base: float = math.e,
        size: int | None = None,
        dim: str | None = None,
    ):
        if isinstance(base, bool) or not isinstance(base, int | float) or not base > 1:
            raise SpaceError(f"LogNormal: base={base!r} must be a number > 1 (e.g. 10 or math.e)")
        self.base = float(base)
        super().__init__(mu, sigma, size=size, dim=dim)

    def _check(self, mu: np.ndarray, sigma: np.ndarray) -> None:
        _positive("LogNormal", "sigma", sigma)

    def _ppf(self, u, mu, sigma):
        return np.exp(np.log(self.base) * (mu + sigma * special.ndtri(u)))

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self.base != math.e:
            out["base"] = self.base
        return out


_KINDS: dict[str, type[Distribution]] = {c.kind: c for c in (Uniform, LogUniform, Normal, LogNormal)}


def from_spec(spec: dict[str, Any], *, where: str = "distribution") -> Distribution:
    """Build a distribution from its :meth:`Distribution.spec` (or a TOML table).

    Examples
    --------
    >>> from_spec({"dist": "normal", "mean": 0, "sd": 1})
    Normal(mean=0, sd=1)
    """
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected a table such as {{dist = 'uniform', ...}}, got {spec!r}")
    kind = spec.get("dist")
    if kind not in _KINDS:
        raise SpaceError(f"{where}: dist={kind!r} is not one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    allowed = {*cls._params, "size", "dim", "dist"} | ({"base"} if cls is LogNormal else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown} for dist={kind!r}; allowed: {sorted(allowed)}")
    missing = [p for p in cls._params if p not in spec]
    if missing:
        raise SpaceError(f"{where}: dist={kind!r} needs {missing}")
    kwargs = {k: v for k, v in spec.items() if k not in ("dist", *cls._params)}
    return cls(*(spec[p] for p in cls._params), **kwargs)
