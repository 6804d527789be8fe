"""Kernels and helpers for testing daskbatch and code built on it.

They live in the package (not in a test folder) so that worker processes of any
scheduler, and remote workers, can import them by name.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from .kernel import Output, kernel

__all__ = [
    "affine",
    "concurrency_probe",
    "curve",
    "fail_on_multiples",
    "slow_square",
    "vector_affine",
    "wrong_shape",
]


@kernel(outputs={"y": Output()}, threadsafe=True)
def affine(a, b=0.0, scale=1.0):
    """``y = scale * a + b`` per sample."""
    return scale * a + b


@kernel(outputs={"y": Output()}, per_sample=False, threadsafe=True)
def vector_affine(a, b=0.0, scale=1.0):
    """``y = scale * a + b`` on a whole block; raises if any ``a`` is negative."""
    a = np.asarray(a)
    if np.any(a < 0):
        raise ValueError("negative a in block")
    return scale * a + b


@kernel(
    outputs={
        "curve": Output(dims=("t",), shape=(5,), coords={"t": np.linspace(0.0, 1.0, 5)}),
        "total": Output(),
        "npos": Output(dtype="int64"),
    }
)
def curve(x, w):
    """Several outputs, one with a core dim; ``w`` is a vector parameter."""
    t = np.linspace(0.0, 1.0, 5)
    c = x * np.exp(-t) + np.sum(w) * t
    return {"curve": c, "total": float(c.sum()), "npos": int(np.sum(np.asarray(w) > 0))}


@kernel(outputs={"y": Output()})
def fail_on_multiples(i, k=7):
    """Raises for every ``i`` that is a non-zero multiple of ``k``; else returns ``i``."""
    if int(i) % k == 0 and int(i) != 0:
        raise RuntimeError(f"boom at i={int(i)}")
    return float(i)


@kernel(outputs={"y": Output(dims=("t",), shape=(3,))})
def wrong_shape(x):
    """Declares 3 values per sample but returns 4 for x >= 0.5."""
    return np.zeros(4 if x >= 0.5 else 3)


_active = 0
_active_lock = threading.Lock()


@kernel(outputs={"overlap": Output(dtype="int64"), "pid": Output(dtype="int64")})
def concurrency_probe(x, sleep=0.002):
    """Reports how many calls ran at once in this process (1 if never overlapped).

    Not declared thread-safe, so daskbatch must never run two calls at once in one
    process: ``overlap`` stays 1 on every scheduler.
    """
    global _active
    with _active_lock:
        _active += 1
        seen = _active
    time.sleep(sleep)
    with _active_lock:
        _active -= 1
    return {"overlap": seen, "pid": os.getpid()}


@kernel(outputs={"y": Output()}, threadsafe=True)
def slow_square(x, delay=0.0):
    """``x**2`` after sleeping ``delay`` seconds: a sweep slow enough to interrupt."""
    time.sleep(delay)
    return x * x
