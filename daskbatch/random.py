"""Counter-based uniform random numbers.

A value is a pure function of ``(seed, stream, sample index, draw)``: no generator
state is carried from one sample to the next, so a block of samples can be drawn on
any worker, in any order, with any chunking, and the numbers are bit for bit the
same. The mixing function is the SplitMix64 finaliser applied to a keyed counter, the
construction behind ``SplittableRandom`` in Java and the seeding of numpy's PCG64.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["stream_key", "uniforms"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_DRAW = np.uint64(0xD1B54A32D192ED03)
_TWO_POW_MINUS_53 = 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def stream_key(seed: int, stream: str) -> np.uint64:
    """A 64-bit key for one named stream (one parameter) of one seed.

    Streams are keyed by name so that adding or removing a parameter leaves the
    values of the others unchanged.
    """
    digest = hashlib.blake2b(f"{int(seed)}\x00{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def uniforms(seed: int, stream: str, index: np.ndarray, n_draws: int = 1) -> np.ndarray:
    """Uniform numbers in the open interval (0, 1).

    Parameters
    ----------
    seed
        The run's seed.
    stream
        Name of the stream, usually the parameter name.
    index
        Global sample indices (any integer array, shape ``S``).
    n_draws
        Independent draws per sample.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``S + (n_draws,)``; never exactly 0 or 1, so it can
        be fed to any inverse CDF.

    Examples
    --------
    >>> u = uniforms(42, "x", np.arange(4), 2)
    >>> u.shape
    (4, 2)
    >>> bool(np.all(uniforms(42, "x", np.arange(2, 4), 2) == u[2:]))
    True
    """
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    key = stream_key(seed, stream)
    with np.errstate(over="ignore"):
        base = _mix(_mix(idx * _GOLDEN + key) ^ key)
        draws = (np.arange(1, n_draws + 1, dtype=np.uint64) * _DRAW)[None, :]
        bits = _mix(base.reshape(-1, 1) + draws) >> np.uint64(11)
    out = (bits.astype(np.float64) + 0.5) * _TWO_POW_MINUS_53
    return out.reshape((*idx.shape, n_draws))
