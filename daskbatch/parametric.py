"""The :class:`Distribution` base class and the parametric families built on it.

A parametric family (:class:`Uniform`, :class:`LogUniform`, :class:`Normal`,
:class:`LogNormal`, :class:`TruncatedNormal`, :class:`Triangular`, :class:`Beta`)
takes numbers or 1-D lists of numbers as parameters, broadcast to the shape of a
sample's value, and maps uniforms in (0, 1) to values by its inverse CDF. The
other distributions, and building any of them from a spec, are in
:mod:`daskbatch.distributions`, which is where they are all imported from.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .errors import SpaceError
from .outputs import RESERVED_TEXT, name_problem


def _special() -> Any:
    """:mod:`scipy.special`, imported when a distribution first transforms values: a run
    over a table or files (and the command line) never pays for importing it."""
    from scipy import special

    return special


__all__ = [
    "Beta",
    "Distribution",
    "LogNormal",
    "LogUniform",
    "Normal",
    "Triangular",
    "TruncatedNormal",
    "Uniform",
]


def _as_param(dist: str, name: str, value: Any, allow_inf: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists
        arr = np.asarray(None, dtype=object)
    if arr.dtype.kind not in "iuf" or isinstance(value, bool):
        raise SpaceError(f"{dist}: {name}={value!r} is not a number or a list of numbers")
    arr = arr.astype(np.float64)
    if arr.ndim > 1:
        raise SpaceError(f"{dist}: {name} must be a number or a 1-D list, got shape {arr.shape}")
    if not np.all(np.isfinite(arr) | (allow_inf & np.isinf(arr))):
        raise SpaceError(f"{dist}: {name}={value!r} must be finite")
    return arr


def _check_size_dim(cls: str, size: Any, dim: Any) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1):
        raise SpaceError(f"{cls}: size={size!r} must be a positive integer or None")
    if dim is None:
        return
    rule = "a core dim's name must be an identifier (letters, digits and _, not starting with a digit)"
    problem = name_problem(dim)
    if problem == "invalid":
        raise SpaceError(f"{cls}: dim={dim!r} is not a valid name: {rule}, e.g. 'layer'")
    if problem == "reserved":
        raise SpaceError(
            f"{cls}: dim={dim!r} is reserved by daskbatch ({RESERVED_TEXT}); "
            f"name the core dim something else, e.g. '{dim}_'"
        )


class Distribution:
    """Base class: a scalar or vector-valued parameter drawn by inverse CDF.

    Subclasses list their parameter names in ``_params`` and implement ``_ppf``.
    """

    kind: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()
    #: parameters that may be -inf or inf
    _may_be_infinite: ClassVar[tuple[str, ...]] = ()
    #: dtype of the values (numbers are float64; :class:`Choice` and :class:`Constant` may differ)
    dtype: np.dtype = np.dtype("float64")

    def __init__(self, *values: Any, size: int | None = None, dim: str | None = None) -> None:
        cls = type(self).__name__
        arrays = [
            _as_param(cls, n, v, n in self._may_be_infinite)
            for n, v in zip(self._params, values, strict=True)
        ]
        try:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(self._params, arrays, strict=True))
            raise SpaceError(f"{cls}: parameter lengths do not match ({shapes})") from None
        _check_size_dim(cls, size, dim)
        if size is not None:
            if shape not in ((), (int(size),)):
                raise SpaceError(f"{cls}: size={size} does not match parameters of length {shape[0]}")
            shape = (int(size),)
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

    @property
    def n_uniforms(self) -> int:
        """Uniform numbers (design dimensions) one sample takes."""
        return self.size

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
        return mean + sd * _special().ndtri(u)


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
        return np.exp(np.log(self.base) * (mu + sigma * _special().ndtri(u)))

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self.base != math.e:
            out["base"] = self.base
        return out


class TruncatedNormal(Distribution):
    """Normal with mean ``mean`` and sd ``sd``, cut to ``[low, high]`` (``low < high``).

    ``low``/``high`` may be ``-inf``/``inf`` for a one-sided cut.

    Examples
    --------
    >>> d = TruncatedNormal(30, 5, 0, 40)
    >>> bool(0 <= d.ppf(np.array([[1e-12]]))[0] <= 40)
    True
    """

    kind = "truncnormal"
    _params = ("mean", "sd", "low", "high")
    _may_be_infinite = ("low", "high")

    def __init__(
        self, mean: Any, sd: Any, low: Any, high: Any, *, size: int | None = None, dim: str | None = None
    ):
        super().__init__(mean, sd, low, high, size=size, dim=dim)

    def _check(self, mean, sd, low, high) -> None:
        _positive("TruncatedNormal", "sd", sd)
        if np.any(low >= high):
            raise SpaceError(f"TruncatedNormal: low={low.tolist()!r} must be below high={high.tolist()!r}")

    def _ppf(self, u, mean, sd, low, high):
        from scipy import stats

        return stats.truncnorm.ppf(u, (low - mean) / sd, (high - mean) / sd, loc=mean, scale=sd)


class Triangular(Distribution):
    """Triangular on ``[low, high]`` with its peak at ``mode``.

    Examples
    --------
    >>> float(Triangular(0, 0.5, 1).ppf(np.array([[0.5]]))[0])
    0.5
    """

    kind = "triangular"
    _params = ("low", "mode", "high")

    def __init__(self, low: Any, mode: Any, high: Any, *, size: int | None = None, dim: str | None = None):
        super().__init__(low, mode, high, size=size, dim=dim)

    def _check(self, low, mode, high) -> None:
        if np.any(low >= high):
            raise SpaceError(f"Triangular: low={low.tolist()!r} must be below high={high.tolist()!r}")
        if np.any((mode < low) | (mode > high)):
            raise SpaceError(
                f"Triangular: mode={mode.tolist()!r} must lie between low={low.tolist()!r} "
                f"and high={high.tolist()!r}"
            )

    def _ppf(self, u, low, mode, high):
        width = high - low
        c = (mode - low) / width
        left = low + np.sqrt(u * width * (mode - low))
        right = high - np.sqrt((1 - u) * width * (high - mode))
        return np.where(u < c, left, right)


class Beta(Distribution):
    """Beta with shapes ``a``, ``b`` (> 0), scaled to ``[low, high]`` (default [0, 1]).

    Examples
    --------
    >>> float(Beta(2, 2).ppf(np.array([[0.5]]))[0])
    0.5
    """

    kind = "beta"
    _params = ("a", "b", "low", "high")

    def __init__(
        self,
        a: Any,
        b: Any,
        low: Any = 0.0,
        high: Any = 1.0,
        *,
        size: int | None = None,
        dim: str | None = None,
    ):
        super().__init__(a, b, low, high, size=size, dim=dim)

    def _check(self, a, b, low, high) -> None:
        _positive("Beta", "a", a)
        _positive("Beta", "b", b)
        if np.any(low >= high):
            raise SpaceError(f"Beta: low={low.tolist()!r} must be below high={high.tolist()!r}")

    def _ppf(self, u, a, b, low, high):
        return low + (high - low) * _special().betaincinv(a, b, u)
