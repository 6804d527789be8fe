"""Design points in the unit cube, computed for any range of sample indices on its own.

A design maps a sample index to a point in (0, 1)^d. Every function here computes
the points of indices ``[start, stop)`` without generating the points before
``start`` and without holding the whole design, so a block of a 10^9-sample design
costs what the block costs, and the values are bit for bit the same whichever block
(chunk size, worker, resume point) computes them.

- Latin hypercube: stratum ``perm_j(i)`` of ``n`` per dimension ``j`` and a uniform
  position inside it. ``perm_j`` is a keyed pseudo-random permutation of ``[0, n)``
  (a Feistel network with cycle walking), so sample ``i``'s stratum is computed
  from ``i`` alone; ``scipy.stats.qmc.LatinHypercube`` draws the whole design at
  once, which a 10^9-sample design cannot afford.
- Sobol and Halton: ``scipy.stats.qmc``'s direction numbers, permutations and
  scrambling, with point ``i`` computed directly from ``i`` (Gray code for Sobol, the
  radical inverse for Halton) instead of stepping through the sequence. The tests
  check the points against ``scipy.stats.qmc``'s own ``fast_forward`` and
  ``random``.

The designs a run is made of are here too: :class:`Design` and its kinds
(:class:`MonteCarlo`, :class:`LatinHypercube`, :class:`Sobol`, :class:`Halton`),
which draw each parameter by its distribution's inverse CDF from these points.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from .distributions import Distribution, as_distribution
from .errors import SpaceError
from .random import _mix, stream_key, uniforms
from .spacebase import Param, Space, _check_name

__all__ = [
    "Design",
    "Halton",
    "LatinHypercube",
    "MonteCarlo",
    "Sobol",
    "halton_points",
    "lhs_points",
    "permute",
    "sobol_points",
    "to_open_unit",
]

_ROUNDS = 4
_TINY = 2.0**-54


def to_open_unit(u: np.ndarray) -> np.ndarray:
    """Points of [0, 1] moved into the open interval (0, 1), for inverse CDFs."""
    return np.clip(u, _TINY, 1.0 - 2.0**-53)


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """A keyed pseudo-random permutation of ``[0, n)``, evaluated at ``index``.

    A balanced Feistel network on the smallest even number of bits covering ``n``,
    with cycle walking: an output ``>= n`` is permuted again until it falls inside.
    Every value of ``[0, n)`` is hit exactly once.

    Examples
    --------
    >>> sorted(permute(np.arange(10), 10, key=7).tolist()) == list(range(10))
    True
    """
    half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
    mask = np.uint64((1 << half) - 1)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is intended
        keys = [
            _mix(np.uint64(key) + np.uint64(r + 1) * np.uint64(0x9E3779B97F4A7C15)) for r in range(_ROUNDS)
        ]

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        with np.errstate(over="ignore"):
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    x = once(np.asarray(index, dtype=np.uint64))
    outside = x >= np.uint64(n)
    while outside.any():
        x[outside] = once(x[outside])
        outside = x >= np.uint64(n)
    return x.astype(np.int64)


def lhs_points(seed: int, stream: str, index: np.ndarray, n: int, d: int) -> np.ndarray:
    """Latin hypercube points of a design of ``n`` samples, shape ``(len(index), d)``.

    Dimension ``j`` of sample ``i`` lies in stratum ``permute(i)`` of ``n`` equal
    strata, at a uniform position inside it.

    Examples
    --------
    >>> x = lhs_points(1, "x", np.arange(8), 8, 2)
    >>> sorted(np.floor(x[:, 0] * 8).astype(int).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    index = np.asarray(index, dtype=np.int64)
    jitter = uniforms(seed, f"{stream}#lhs", index, d)
    out = np.empty((index.size, d))
    for j in range(d):
        key = int(stream_key(seed, f"{stream}#lhs{j}"))
        out[:, j] = (permute(index, n, key) + jitter[:, j]) / n
    return out


@functools.lru_cache(maxsize=16)
def _sobol_engine(seed: int, d: int, scramble: bool) -> Any:
    from scipy.stats import qmc

    return qmc.Sobol(d, scramble=scramble, rng=np.random.default_rng(seed))


def sobol_points(seed: int, d: int, start: int, stop: int, scramble: bool = True) -> np.ndarray:
    """Points ``start`` to ``stop`` of scipy's (scrambled) Sobol sequence in ``d`` dims.

    Point ``i`` is the XOR of the direction numbers picked by the bits of the Gray
    code of ``i`` (and the digital shift), which is what the sequence's recurrence
    computes step by step.
    """
    eng = _sobol_engine(int(seed), int(d), bool(scramble))
    if stop > eng.maxn:
        raise ValueError(f"a Sobol design has at most 2**{eng.bits} points; asked for point {stop - 1}")
    i = np.arange(start, stop, dtype=np.uint64)
    gray = i ^ (i >> np.uint64(1))
    sv = np.asarray(eng._sv, dtype=np.uint64)  # (d, bits)
    quasi = np.broadcast_to(np.asarray(eng._shift, dtype=np.uint64), (i.size, d)).copy()
    for b in range(eng.bits):
        on = ((gray >> np.uint64(b)) & np.uint64(1)).astype(bool)
        if on.any():
            quasi[on] ^= sv[:, b]
    return quasi.astype(np.float64) * eng._scale


@functools.lru_cache(maxsize=16)
def _halton_engine(seed: int, d: int, scramble: bool) -> Any:
    from scipy.stats import qmc

    return qmc.Halton(d, scramble=scramble, rng=np.random.default_rng(seed))


def halton_points(seed: int, d: int, start: int, stop: int, scramble: bool = True) -> np.ndarray:
    """Points ``start`` to ``stop`` of scipy's (scrambled) Halton sequence in ``d`` dims."""
    from scipy.stats._qmc import van_der_corput

    eng = _halton_engine(int(seed), int(d), bool(scramble))
    cols = [
        van_der_corput(
            stop - start, base, start_index=start, scramble=scramble, permutations=eng._permutations[j]
        )
        for j, base in enumerate(eng.base)
    ]
    return np.stack(cols, axis=1) if cols else np.empty((stop - start, 0))


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
        for name, p in self.params.items():
            for dim in p.core_dims:
                if dim in self.params:
                    raise SpaceError(
                        f"{cls}: parameter {name!r} has core dim {dim!r}, the name of parameter {dim!r} "
                        f"(which would hide it in the store); give the dim another name with dim=, "
                        f"e.g. '{name}_dim'"
                    )
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
        from dask.base import tokenize

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
                name=f"daskbatch-{self.kind}-{name}-{tokenize(self.spec(), c)}",
            )
        return out

    def block(self, slices):
        (s,) = slices
        return {name: self._draw(name, s.start, s.stop) for name in self.dists}

    def _options(self) -> dict[str, Any]:
        return {}

    def head(self, n: int) -> Design:
        return type(self)(self.dists, n=max(1, min(n, self.n)), seed=self._seed, **self._options())

    def resized(self, n: int) -> Design:
        """The same design with ``n`` samples (its first ones unchanged where
        :meth:`extension_of` allows raising ``n``)."""
        other = type(self)(self.dists, n=n, seed=self._seed, **self._options())
        other._seed_given = self._seed_given  # a seed the store chose is still the store's
        return other

    def extension_of(self, old_spec: Mapping[str, Any]) -> str | None:
        """None when this design is the design ``old_spec`` describes with ``n`` raised
        (its first samples are that design's, bit for bit); else why it is not.

        Monte Carlo, Sobol and Halton points depend only on (seed, sample index), so
        raising ``n`` only adds samples. A Latin hypercube's points depend on its
        ``strata`` (``n`` unless given): it extends only while ``strata`` stays the same.
        """
        now = dict(self.spec())
        old = dict(old_spec)
        n_old, n_now = old.pop("n", None), now.pop("n")
        if old.get("type") != now["type"]:
            return f"the design changed ({old.get('type')} -> {now['type']})"
        if not isinstance(n_old, int) or n_now <= n_old:
            return (
                f"n={n_now:,} does not add samples to the stored n={n_old:,}"
                if isinstance(n_old, int)
                else f"n={n_now:,} does not add samples to the stored n={n_old!r}"
            )
        if now["type"] == LatinHypercube.kind and old.get("strata") is None:
            return (
                f"a Latin hypercube's points depend on its size (n={n_old:,}): raising n changes "
                f"every sample. Start with strata= (e.g. strata={max(2 * n_now, 1_000_000):,}) "
                "to be able to raise n later, or use MonteCarlo or Sobol, whose points do not"
            )
        if now.get("strata") is None and old.get("strata") is not None:
            now["strata"] = self.n  # strata defaulted to n: a different design
        for key in sorted(set(old) | set(now)):
            if old.get(key) != now.get(key):
                return f"{key} changed ({old.get(key)!r} -> {now.get(key)!r})"
        return None

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
