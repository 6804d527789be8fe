"""What keeps daskbatch's worker processes lean and tied to the driver.

- :func:`limit_malloc_arenas`: glibc's malloc arenas of a worker process, from the
  ``daskbatch.malloc-arenas`` setting;
- :func:`release_freed_memory`: ``malloc_trim`` once freed blocks pile up;
- :func:`die_with_parent`: a pool worker ends when the driver ends (parent-death
  signal);
- :func:`start_forkserver`: the multiprocessing forkserver that worker and probe
  processes fork from, with the modules a block task needs already imported.

All of it acts on Linux with glibc only and does nothing elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from . import config

__all__ = [
    "FORKSERVER_FLAG",
    "MIN_TRIM_GROWTH",
    "die_with_parent",
    "limit_malloc_arenas",
    "own_blosc_lock",
    "pool_worker",
    "release_freed_memory",
    "start_forkserver",
]

_arenas_limited = False


def limit_malloc_arenas() -> None:
    """Let glibc's malloc use at most ``daskbatch.malloc-arenas`` arenas (default 1)
    in this process; 0 leaves glibc's default.

    A block task allocates its block (megabytes) in its own thread, and Zarr encodes
    it in a pool of threads; glibc gives each thread its own arena and keeps freed
    memory in each, so a worker's resident memory climbed with the number of blocks
    it had run while the blocks themselves never grew (8 MB blocks of 71 outputs per
    sample: 137-141 MB after 4 blocks, 176-180 MB after 175). With one arena: 90-95
    MB and 103-108 MB, at the same speed (one task thread per worker, and Zarr's
    threads mostly wait on I/O). Once per process; nothing off glibc.
    """
    global _arenas_limited
    if _arenas_limited or not sys.platform.startswith("linux"):
        return
    _arenas_limited = True
    arenas = config.get("malloc-arenas")
    if arenas <= 0:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX


#: resident memory after a block, below which freed memory is left to malloc
_rss_floor: int | None = None
#: the least growth (bytes) that makes a worker give freed memory back
MIN_TRIM_GROWTH = 4 * 2**20


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_freed_memory(block_bytes: int) -> bool:
    """After a block in a worker process: hand freed memory back once it has piled up.

    glibc serves a worker's first blocks from fresh mappings, which go back to the
    system when freed, then raises its mapping threshold to their size, so later
    blocks are carved from the heap, whose freed pieces it keeps. The worker's
    resident memory then settled about three blocks above where it was after its
    first block (8 MB blocks: 96 -> 125 MB over a 10^7-sample run). When it has grown
    more than two blocks (``block_bytes`` each) past the lowest it has been after a
    block, ``malloc_trim(0)`` returns the freed pages; what it cannot return becomes
    the new floor, so a kernel that keeps memory on purpose does not trim after every
    block. Linux with glibc only; returns whether it trimmed.
    """
    global _rss_floor
    if not sys.platform.startswith("linux"):
        return False
    rss = _resident_bytes()
    if rss is None:
        return False
    if _rss_floor is None or rss < _rss_floor:
        _rss_floor = rss
        return False
    if rss - _rss_floor <= max(2 * block_bytes, MIN_TRIM_GROWTH):
        return False
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return False
    _rss_floor = max(_rss_floor, _resident_bytes() or rss)
    return True


def die_with_parent() -> None:
    """In a pool worker: end when the driver ends, even by SIGKILL (Linux only).

    Without it, the idle workers of dask's processes scheduler outlive a killed driver.
    Also limits the worker's malloc arenas (:func:`limit_malloc_arenas`).
    """
    import ctypes

    limit_malloc_arenas()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the driver died before this line: go at once
            os._exit(1)


def pool_worker(reseed: bool = False) -> None:
    """In a worker of a process pool daskbatch made (``cluster="fork"``,
    ``"processes"``): leave SIGINT and SIGTERM to the driver, and end with it.

    A Ctrl-C in a terminal reaches every process of its group. A pool worker that took
    it while waiting on the pool's queue died holding the queue's lock, and the others,
    then the driver's exit, waited for it for ever; the driver stops the run in order
    and ends its workers itself. With ``reseed``, numpy's global random state is seeded
    afresh, as dask's own pools do (a spawned worker would otherwise share it with
    every other: ``np.random.seed()`` in a kernel is the user's to call, though).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent()
    if sys.platform.startswith("linux"):
        # a spawned worker: Blosc's lock of its own now (a killed worker's named one
        # would be reported leaked at the driver's exit; see own_blosc_lock)
        with contextlib.suppress(ImportError):
            import numcodecs.blosc  # noqa: F401
        own_blosc_lock()
    if reseed:
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed()


def own_blosc_lock() -> None:
    """In a process just forked: give numcodecs' Blosc codec a lock of this process's own.

    numcodecs makes its Blosc lock on first use with the default start method's
    context. In a worker forked from daskbatch's forkserver that is a named semaphore
    that the shared resource tracker follows; a worker that a sample crashes (or that
    is killed) never hands it back, and the tracker then printed "There appear to be N
    leaked semaphore objects to clean up at shutdown" at the end of the run. In a
    process forked from the driver the driver's lock, if it had made one, was shared
    with every other fork. A fork-context lock is anonymous (unlinked at once, never
    tracked) and belongs to this process only. Nothing is done when numcodecs' Blosc
    is not loaded (it then makes its lock when first used) or has no such lock.
    """
    blosc = sys.modules.get("numcodecs.blosc")
    if blosc is None or not hasattr(blosc, "_MUTEX_IS_INIT"):
        return
    with contextlib.suppress(Exception):  # never let this stop a fork
        import multiprocessing

        blosc._MUTEX = multiprocessing.get_context("fork").Lock()
        blosc._MUTEX_IS_INIT = True


if sys.platform.startswith("linux"):
    os.register_at_fork(after_in_child=own_blosc_lock)


#: set while daskbatch starts its forkserver: :mod:`daskbatch._forkserver` acts only then
FORKSERVER_FLAG = "DASKBATCH_FORKSERVER"

#: what the forkserver imports before the caller's modules; daskbatch._forkserver
#: first, so that SIGINT and SIGTERM are ignored in the server and its children
FORKSERVER_PRELOAD = (
    "daskbatch._forkserver",
    "distributed",
    "numpy",
    "daskbatch.kernel",
    "daskbatch.store",
    "daskbatch.engine",
)


def start_forkserver(modules: Sequence[str] = ()) -> None:
    """Start multiprocessing's forkserver (once per process) with daskbatch's preload.

    The server imports distributed, numpy, what of daskbatch a block task needs (not
    xarray, pandas or dask.array) and ``modules`` (a kernel's module; ``__main__`` is
    skipped), so that a process forked from it starts in milliseconds. The user's own
    Python modules among what it holds then (:func:`users_modules`: a ``kernel.py``
    beside a notebook and the helpers it imports) are forgotten in each process forked
    from it, which imports them again, as they are now, from the driver's import path
    (the installed packages they import stay loaded): the server lives as long as the
    driver, and a kernel edited and reloaded since, or another project's module of the
    same name, would otherwise run in the workers as it was when the server started,
    while the driver and the store have the new one. It starts
    with ``MALLOC_ARENA_MAX`` set to ``daskbatch.malloc-arenas`` (a value already in
    the environment is kept; the driver's own environment is left as it was), and
    with SIGINT and SIGTERM blocked until :mod:`daskbatch._forkserver` has made
    them ignored in it. Nothing on Windows. The server lives as long as this process.
    """
    if sys.platform == "win32":
        return
    from multiprocessing import forkserver, resource_tracker

    import dask
    import distributed.utils
    from distributed.utils import get_mp_context

    # distributed's first get_mp_context() imports every package it knows of (pandas,
    # lz4, ...), a quarter of a second here, to build a preload list; this one is set below
    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        ctx = get_mp_context()
    wanted = [*FORKSERVER_PRELOAD, *(m for m in modules if m and m not in ("__main__", "__mp_main__"))]
    ctx.set_forkserver_preload(list(dict.fromkeys(wanted)))
    arenas = config.get("malloc-arenas")
    added = "MALLOC_ARENA_MAX" not in os.environ and arenas > 0
    if added:
        os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    os.environ[FORKSERVER_FLAG] = "1"
    # the server is started with SIGINT and SIGTERM blocked (one that comes during its
    # start waits, in it, until daskbatch._forkserver has made them ignored; here it is
    # delivered as usual); multiprocessing's resource tracker first: starting it
    # unblocks both
    with contextlib.suppress(Exception):
        resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        with contextlib.suppress(Exception):  # if it cannot start, the cluster will say why
            forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.environ.pop(FORKSERVER_FLAG, None)
        if added:
            os.environ.pop("MALLOC_ARENA_MAX", None)


def users_modules() -> list[str]:
    """The user's own Python modules this process holds: source files (``.py``) that
    belong to no installed package, nor to daskbatch (its cores included), nor are the
    main script. Compiled extension modules are left out: Python cannot load some of
    them twice, and a reload does not change them anyway."""
    from .codeid import users_source

    return [name for name, m in list(sys.modules.items()) if users_source(name, getattr(m, "__file__", None))]


def forget_modules(names: Sequence[str]) -> None:
    """Drop ``names`` from ``sys.modules`` (in a process forked from the forkserver:
    they are imported again when used)."""
    for name in names:
        sys.modules.pop(name, None)
