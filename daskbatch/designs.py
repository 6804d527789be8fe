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
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .random import _mix, stream_key, uniforms

__all__ = ["halton_points", "lhs_points", "permute", "sobol_points", "to_open_unit"]

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
