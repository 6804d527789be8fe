"""Kernels and helpers for testing daskbatch and code built on it.

They live in the package (not in a test folder) so that worker processes of any
scheduler, and remote workers, can import them by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .kernel import Output, kernel

__all__ = [
    "affine",
    "concurrency_probe",
    "crash_on",
    "curve",
    "fail_on_multiples",
    "flaky",
    "hang_on",
    "kill_worker_once",
    "misbehave",
    "noise",
    "slow_square",
    "tagged",
    "vector_affine",
    "vector_hang",
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


# --------------------------------------------------------------------------- faults
# Kernels that do real damage to the process that runs them, for reliability tests.


@kernel(outputs={"y": Output()})
def kill_worker_once(i, flag="", at=0):
    """``y = 2 i``; at sample ``i == at``, if there is no file at ``flag``, creates it
    and SIGKILLs its own process: one worker death in the middle of a run."""
    if flag and int(i) == at and not os.path.exists(flag):
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def crash_on(i, bad=(), how="segfault"):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` crash the process every
    time: a segmentation fault (reading address 0), ``os.abort()`` (``how="abort"``,
    SIGABRT, as a failed assertion in C) or ``os._exit(3)``."""
    if int(i) in set(bad):
        if how == "segfault":
            ctypes.string_at(0)
        if how == "abort":
            os.abort()
        os._exit(3)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def hang_on(i, bad=(), how="sleep", delay=0.0):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` never return: ``sleep``
    blocks in C like native code does (an exception cannot stop it), ``spin`` loops in
    Python. The others sleep ``delay`` seconds."""
    if int(i) in set(bad):
        if how == "sleep":
            time.sleep(10**6)
        while True:
            pass
    time.sleep(delay)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def flaky(i, folder="", times=1):
    """``y = 2 i`` after failing ``times`` times per sample (attempts counted in files
    under ``folder``): a transient error, like a licence server that is busy."""
    marker = Path(folder) / f"{int(i)}.attempts"
    seen = int(marker.read_text()) if marker.exists() else 0
    if seen < times:
        marker.write_text(str(seen + 1))
        raise ConnectionError(f"transient failure {seen + 1} of sample {int(i)}")
    return 2.0 * float(i)


@kernel(outputs={"v": Output(dims=("k",), shape=(2048,))}, threadsafe=True)
def noise(x, delay=0.0):
    """2,048 pseudo-random floats per sample, seeded by ``x``: incompressible output,
    so that writing a block takes a while; ``delay`` seconds of sleep per sample."""
    time.sleep(delay)
    return np.random.default_rng(int(abs(x) * 1e6)).random(2048)


@kernel(outputs={"y": Output()}, per_sample=False)
def vector_hang(i, bad=()):
    """``y = 2 i`` on a whole block, but a block that holds any ``i`` in ``bad`` blocks
    in C forever: a vectorised core that hangs."""
    i = np.asarray(i)
    if np.isin(i, list(bad)).any():
        time.sleep(10**6)
    return 2.0 * i


@kernel(outputs={"y": Output()}, threadsafe=True)
def tagged(kind, x):
    """``y = len(kind) + x``: a string parameter (a Choice of labels) and a number."""
    return float(len(str(kind))) + float(x)


def _forever() -> None:
    while True:
        time.sleep(0.05)


@kernel(outputs={"y": Output()})
def misbehave(i, bad=(), how="exit", code=3, mib=0):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` misbehave every time:
    ``exit`` calls ``sys.exit(code)``, ``interrupt`` raises ``KeyboardInterrupt``,
    ``os_exit`` calls ``os._exit(code)``, ``abort`` calls ``os.abort()``, ``thread``
    starts a non-daemon thread that never ends (and returns normally), ``memory``
    touches ``mib`` MiB and holds them for two seconds."""
    if int(i) in set(bad):
        if how == "exit":
            sys.exit(code)
        if how == "interrupt":
            raise KeyboardInterrupt
        if how == "os_exit":
            os._exit(code)
        if how == "abort":
            os.abort()
        if how == "thread":
            threading.Thread(target=_forever, name=f"left-behind-{int(i)}").start()
        if how == "memory":
            block = np.ones(int(mib) * 2**20 // 8)
            time.sleep(2.0)
            return float(block[0])
    return 2.0 * float(i)


@kernel(outputs={"y": Output()}, per_sample=False, threadsafe=True)
def logged_sizes(a, log=""):
    """``y = a`` on a whole block; appends the number of samples of each call to ``log``."""
    a = np.asarray(a)
    if log:
        with open(log, "a") as f:
            f.write(f"{a.size}\n")
    return a * 1.0
