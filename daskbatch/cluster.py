"""Turning ``cluster=`` into something that computes blocks.

``"serial"``, ``"threads"`` and ``"processes"`` are dask's local schedulers (no
server); ``"local"`` starts a :class:`distributed.LocalCluster` with one
single-threaded worker process per core; a scheduler address or a
:class:`distributed.Client` uses a cluster that already runs. Every executor offers
the same :meth:`Executor.compute`, which calls back as each block finishes, in
whatever order, so progress and summaries work the same everywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask

from .errors import ClusterError, KernelCrashError, Stopped, WorkerDiedError, WorkerImportError

__all__ = [
    "ClusterSpec",
    "Executor",
    "KernelCrashError",
    "WorkerDiedError",
    "WorkerImportError",
    "check_can_spawn",
    "kernel_shipped",
    "parse_cluster",
    "prestart",
    "quiet_level",
    "signals_stop",
    "start_executor",
]

LOCAL_SCHEDULERS = {"serial": "sync", "threads": "threads", "processes": "processes"}
NAMES = (*LOCAL_SCHEDULERS, "local")

GUARD_HINT = (
    "Worker processes re-import the script that started them. If your script calls "
    'daskbatch.run at top level, put that code under `if __name__ == "__main__":`; '
    "code fed on standard input cannot start worker processes at all (save it to a "
    'file). Or run without worker processes: cluster="threads" or cluster="serial".'
)


def default_workers() -> int:
    """Cores this process may use (respecting CPU affinity, as in a cluster job)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ClusterSpec:
    """A checked ``cluster=`` argument; nothing has been started yet."""

    kind: str  # serial | threads | processes | local | address | client
    n_workers: int | None
    address: str | None = None
    client: Any = None

    @property
    def description(self) -> str:
        if self.kind == "address":
            return f"scheduler at {self.address}"
        if self.kind == "client":
            return f"existing client ({self.client.scheduler.address})"
        n = self.n_workers or default_workers()
        if self.kind == "serial":
            return "serial (one thread, in this process)"
        unit = {"threads": "threads", "processes": "processes"}.get(self.kind, "worker processes")
        extra = ", LocalCluster, 1 thread each" if self.kind == "local" else ""
        return f"{self.kind} ({n} {unit}{extra})"


def parse_cluster(cluster: Any, n_workers: int | None = None) -> ClusterSpec:
    """Check ``cluster=`` and ``n_workers=`` without starting anything.

    Examples
    --------
    >>> parse_cluster("threads", 2).description
    'threads (2 threads)'
    """
    if n_workers is not None and (
        isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1
    ):
        raise ClusterError(f"n_workers={n_workers!r} must be a positive integer or None")
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - a dependency
        Client = None
    if Client is not None and isinstance(cluster, Client):
        if n_workers is not None:
            raise ClusterError("n_workers cannot be used with an existing Client; scale its cluster instead")
        return ClusterSpec("client", None, client=cluster)
    if not isinstance(cluster, str):
        raise ClusterError(
            f"cluster={cluster!r} is not valid; use one of {list(NAMES)}, a scheduler address "
            "such as 'tcp://127.0.0.1:8786', or a distributed.Client"
        )
    if cluster in NAMES:
        return ClusterSpec(cluster, n_workers)
    if "://" in cluster or (cluster.count(":") == 1 and cluster.rsplit(":", 1)[1].isdigit()):
        if n_workers is not None:
            raise ClusterError(
                f"n_workers cannot be used with cluster={cluster!r}, a running scheduler; "
                "start that many workers on it instead"
            )
        address = cluster if "://" in cluster else f"tcp://{cluster}"
        return ClusterSpec("address", None, address=address)
    raise ClusterError(
        f"cluster={cluster!r} is not valid; use one of {list(NAMES)}, a scheduler address "
        "such as 'tcp://127.0.0.1:8786', or a distributed.Client"
    )


def _dashboard_address() -> str:
    # the usual port when it is free, otherwise any: no "port in use" warning
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8787))
        except OSError:
            return "127.0.0.1:0"
    return "127.0.0.1:8787"


class Executor:
    """Runs a list of block computations and reports each as it finishes."""

    def __init__(self, spec: ClusterSpec, client: Any = None, cluster: Any = None) -> None:
        self.spec = spec
        self.client = client
        self._cluster = cluster

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def dashboard_link(self) -> str | None:
        if self.client is None:
            return None
        try:
            return self.client.dashboard_link
        except Exception:  # pragma: no cover - no bokeh, or no dashboard
            return None

    @property
    def n_workers(self) -> int:
        if self.client is not None:
            n = sum(self.client.nthreads().values())
            return max(1, n)
        if self.spec.kind == "serial":
            return 1
        return self.spec.n_workers or default_workers()

    def compute(
        self,
        tasks: Sequence[Any],
        on_done: Callable[[Any], None],
    ) -> list[int]:
        """Compute ``tasks`` (dask Delayed objects); call ``on_done(result)`` for each.

        Results are handed over as they arrive. The first task that raises stops the
        computation and its error propagates; finished blocks stay finished. Returns
        the indices of the tasks that a distributed scheduler gave up on because they
        killed their worker every time they ran (``KilledWorker``).
        """
        if not tasks:
            return []
        if self.client is not None:
            return self._compute_distributed(tasks, on_done)
        self._compute_local(tasks, on_done)
        return []

    def _compute_distributed(self, tasks, on_done) -> list[int]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        futures = self.client.compute(list(tasks))
        index = {f.key: i for i, f in enumerate(futures)}
        lost = []
        try:
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except KilledWorker:
                    lost.append(index[fut.key])
                    continue
                finally:
                    fut.release()
                on_done(result)
        except BaseException:
            self.client.cancel(futures)
            raise
        return sorted(lost)

    def _compute_local(self, tasks, on_done):
        from concurrent.futures.process import BrokenProcessPool

        from dask.callbacks import Callback

        keys = {t.key for t in tasks}

        def posttask(key, result, dsk, state, worker_id):
            if key in keys:
                on_done(result)

        scheduler = LOCAL_SCHEDULERS[self.spec.kind]
        kwargs: dict[str, Any] = {"scheduler": scheduler}
        if scheduler != "sync":
            kwargs["num_workers"] = self.n_workers
        if scheduler == "processes":
            kwargs["initializer"] = _die_with_parent
        try:
            with Callback(posttask=posttask):
                dask.compute(*tasks, optimize_graph=False, **kwargs)
        except BrokenProcessPool as e:
            raise WorkerDiedError(
                f"a worker process of the processes scheduler died ({e}): a sample may have "
                "crashed it (a segfault or abort in the core), or it was killed. Finished blocks "
                "are kept: run the same command again to continue; cluster='local' isolates "
                "samples that crash their worker and marks them crashed. "
                f"{GUARD_HINT if _unguarded_main() else ''}".strip()
            ) from e

    def close(self) -> None:
        if self._cluster is not None:
            self.client.close()
            self._cluster.close()


#: malloc arenas a worker process may have (glibc's default is 8 per core)
MALLOC_ARENAS = 1
_arenas_limited = False


def limit_malloc_arenas() -> None:
    """Let glibc's malloc use at most :data:`MALLOC_ARENAS` arenas in this process.

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
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX


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


def _die_with_parent() -> None:
    """In a pool worker: end when the driver ends, even by SIGKILL (Linux only).

    Without it, the idle workers of dask's processes scheduler outlive a killed driver.
    Also limits the worker's malloc arenas (:func:`limit_malloc_arenas`).
    """
    import ctypes
    import signal

    limit_malloc_arenas()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the driver died before this line: go at once
            os._exit(1)


def check_can_spawn(spec: ClusterSpec) -> None:
    """Refuse, before anything starts, a driver whose worker processes could not start.

    Spawned processes re-run the driver's ``__main__`` from its file; code fed on
    standard input (``python - < script.py``) has no file to re-run.
    """
    if spec.kind not in ("local", "processes"):
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is not None and not os.path.exists(path):
        raise ClusterError(
            f"cluster={spec.kind!r} starts worker processes, which re-run the main script, but "
            f"this program's main script {path!r} is not a file (code fed on standard input?). "
            "Save the code to a file and run that, or use cluster='threads' or cluster='serial'"
        )


def prestart(spec: ClusterSpec, modules: Sequence[str] = ()) -> None:
    """Start the multiprocessing *forkserver* that worker and probe processes fork from.

    The server imports distributed, numpy, what of daskbatch a block task needs (not
    xarray, pandas or dask.array) and the kernel's module once. daskbatch's
    LocalCluster forks its workers from it: started here, before the scheduler and
    its dashboard start in this process, the two overlap on separate cores, and each
    worker then starts (and stops) in milliseconds instead of importing everything
    itself. The probe of the first samples also runs in a process forked from it, for
    the processes scheduler, ``"local"`` and a scheduler address. Nothing for
    ``"serial"``, ``"threads"`` and a running ``Client`` (whose workers run the
    probe). The server lives as long as this process, like the one distributed itself
    starts for its test suite.
    """
    if spec.kind in ("serial", "threads", "client") or sys.platform == "win32":
        return
    from multiprocessing import forkserver, resource_tracker

    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        ctx = get_mp_context()  # distributed sets its own preload list once
    wanted = [
        "daskbatch._forkserver",  # first: SIGINT and SIGTERM ignored in the server and its children
        "distributed",
        "numpy",
        "daskbatch.kernel",
        "daskbatch.store",
        "daskbatch.engine",
    ]
    wanted += [m for m in modules if m and m not in ("__main__", "__mp_main__")]
    ctx.set_forkserver_preload(list(dict.fromkeys(wanted)))
    # the server's processes start with one malloc arena (see limit_malloc_arenas);
    # a value the user set is kept
    added = "MALLOC_ARENA_MAX" not in os.environ
    if added:
        os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    os.environ[_FORKSERVER_FLAG] = "1"
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
        os.environ.pop(_FORKSERVER_FLAG, None)
        if added:
            os.environ.pop("MALLOC_ARENA_MAX", None)
    if spec.kind == "local" and "distributed.dashboard.scheduler" not in sys.modules:
        # the scheduler's dashboard (bokeh: half a second of imports) loads in this
        # process while the forkserver loads the workers' modules on the other core
        threading.Thread(target=_import_dashboard, name="daskbatch-dashboard-import", daemon=True).start()


#: set while daskbatch starts its forkserver: daskbatch._forkserver acts only then
_FORKSERVER_FLAG = "DASKBATCH_FORKSERVER"


def _import_dashboard() -> None:
    with contextlib.suppress(Exception):  # without bokeh the cluster starts without a dashboard
        importlib.import_module("distributed.dashboard.scheduler")


def _unguarded_main() -> bool:
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is None


def quiet_level() -> int | None:
    """The level below which distributed's log records are kept out of the terminal.

    While daskbatch's LocalCluster runs, distributed logs every worker death,
    restart, ``KilledWorker`` and closed connection; daskbatch handles each of them
    (a crashed sample is listed in the run's summary), so by default only critical
    records pass (:data:`QUIET_LEVEL`). ``None`` (distributed's own default: warnings
    and errors) when asked for: the dask config key ``daskbatch.verbose`` is true
    (the command line's ``--verbose`` sets it), or the user configured distributed's
    logging (the dask config keys ``logging`` or ``distributed.logging``, or a level
    other than INFO, which distributed sets on import, on the ``distributed`` logger).
    """
    if dask.config.get("daskbatch.verbose", default=False):
        return None
    for key in ("logging", "logging-file-config", "distributed.logging", "distributed.logging-file-config"):
        if dask.config.get(key, default=None):
            return None
    if logging.getLogger("distributed").level not in (logging.NOTSET, logging.INFO):
        return None
    return QUIET_LEVEL


#: what passes :func:`quiet_level`'s filter by default
QUIET_LEVEL = logging.CRITICAL


@contextmanager
def _quiet_logs(level: int | None) -> Iterator[None]:
    """Raise the level of the ``distributed`` logger's stream handlers while inside."""
    if level is None:
        yield
        return
    changed = []
    for handler in logging.getLogger("distributed").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.level < level:
            changed.append((handler, handler.level))
            handler.setLevel(level)
    try:
        yield
    finally:
        for handler, old in changed:
            handler.setLevel(old)


@contextmanager
def signals_stop(*signums: int, only_default: bool = False, keep: bool = False) -> Iterator[list[int]]:
    """While inside, the first of ``signums`` raises :class:`Stopped` in the main thread.

    Later ones are ignored: the orderly stop (the store's history, the cluster's
    shutdown) goes on undisturbed. On exit the previous handlers come back, unless a
    signal came and ``keep`` is true (a command that is ending: a second Ctrl-C must
    not raise in its last lines). With ``only_default``, only signals that nothing
    handles yet (``SIG_DFL``) are taken: a handler of the caller's stays. Nothing
    outside the main thread, where Python cannot set handlers. Yields the list of
    signals received.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raise Stopped(signum)

    previous = {}
    for signum in signums:
        old = signal.getsignal(signum)
        if only_default and old is not signal.SIG_DFL:
            continue
        previous[signum] = old
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_IGN if received and keep else old)

    try:
        yield received
    finally:
        try:
            restore()
        finally:  # again, if the first signal came just as the block ended
            restore()


@contextmanager
def start_executor(spec: ClusterSpec, memory_limit: int | None = None) -> Iterator[Executor]:
    """Start (or connect to) what ``spec`` describes; stop what was started on exit.

    ``memory_limit`` (bytes per worker) is given to the workers of a LocalCluster
    that this starts; other clusters keep their own. While inside, SIGTERM (what a
    batch system sends at the end of a job's time) stops the run in order, raising
    :class:`~daskbatch.errors.Stopped`, if nothing else handles SIGTERM (see
    :func:`signals_stop`).
    """
    with signals_stop(signal.SIGTERM, only_default=True), _start_executor(spec, memory_limit) as executor:
        yield executor


@contextmanager
def _start_executor(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    if spec.kind in LOCAL_SCHEDULERS:
        yield Executor(spec)
        return
    from distributed import Client

    if spec.kind == "client":
        yield Executor(spec, client=spec.client)
        return
    if spec.kind == "address":
        try:
            client = Client(spec.address, timeout="10s")
        except OSError as e:
            raise ClusterError(
                f"cannot connect to the scheduler at {spec.address!r} ({e}); is it running? "
                "Start one with `dask scheduler`, or use cluster='local' (--cluster local)"
            ) from e
        try:
            yield Executor(spec, client=client)
        finally:
            client.close()
        return
    import multiprocessing

    if (
        multiprocessing.parent_process() is not None
        and multiprocessing.current_process().name != "MainProcess"
    ):
        raise ClusterError("daskbatch.run was called while a worker process was starting. " + GUARD_HINT)
    prestart(spec)  # the workers fork from daskbatch's forkserver (a no-op when it runs)
    quiet = quiet_level()
    with _quiet_logs(quiet):  # in this process: the scheduler, the nannies, the client
        yield from _start_local_cluster(spec, memory_limit, quiet)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while inside; act on the first one on the way out.

    A LocalCluster interrupted while it starts is never returned, and its scheduler
    and workers go on starting in the event loop's thread; one interrupted while it
    closes is left half closed. Either is shut down later by distributed's own
    clean-up at exit: seconds of waiting and a screenful of log. So the start and
    the close (each a second or two) finish first, then the signal does what it
    would have done (its handler is called, or, with none, its default action).
    Only in the main thread; a signal that is ignored stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        old = signal.getsignal(signum)
        if old is not signal.SIG_IGN and old is not None:
            previous[signum] = old
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if held:
            old = previous[held[0]]
            if callable(old):
                old(held[0], sys._getframe())
            else:  # SIG_DFL
                signal.raise_signal(held[0])


def _start_local_cluster(
    spec: ClusterSpec, memory_limit: int | None, quiet: int | None
) -> Iterator[Executor]:
    from distributed import Client

    cluster = client = None
    # for as long as the cluster runs: a nanny reads it again whenever it restarts a
    # worker that died, which would otherwise be spawned (slowly, and without what
    # daskbatch's forkserver sets up: SIGINT and SIGTERM ignored, the log kept quiet)
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        try:
            with _signals_deferred():  # a Ctrl-C acts once the cluster has started
                cluster = _new_local_cluster(spec, memory_limit, quiet)
                client = Client(cluster)
            yield Executor(spec, client=client, cluster=cluster)
        finally:
            with _signals_deferred():  # and the cluster closes in full
                if client is not None:
                    client.close()
                if cluster is not None:
                    cluster.close()


def _new_local_cluster(spec: ClusterSpec, memory_limit: int | None, quiet: int | None) -> Any:
    from distributed import LocalCluster

    try:
        # distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers to fight
        # fragmentation in dataframe workloads; it makes glibc return and re-fault memory
        # on every large free, which slows compiled cores that allocate per call (TEM1D:
        # +55% per model). Block tasks keep little memory, so glibc's default is better.
        # The workers' statistical profiler samples every 10 ms by default; one sample
        # per 100 ms still fills the dashboard's profile and halves the CPU its thread
        # takes from the kernel (measured: 0.42 s -> 0.24 s per 7 s of TEM1D work).
        # Every server (the scheduler, each nanny and worker) checks its event loop's
        # health every 20 ms, samples its process every 500 ms for the dashboard and
        # polls memory every 100 ms: on two cores with two single-threaded workers that
        # is ~5% of the machine taken from the kernel (the driver's event loop 0.8 s
        # and each worker's 0.34 s per 14 s of TEM1D). Checks every 500 ms, a system
        # sample per second and a memory poll every 500 ms halve it; the warning on a
        # blocked event loop (after 3 s) and the memory limits work as before.
        settings = {
            "distributed.worker.multiprocessing-method": "forkserver",
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            "distributed.worker.profile.interval": "100ms",
            "distributed.worker.profile.cycle": "10s",
            "distributed.admin.tick.interval": "500ms",
            "distributed.admin.system-monitor.interval": "1s",
            "distributed.worker.memory.monitor-interval": "500ms",
        }
        with dask.config.set(settings), warnings.catch_warnings():
            if quiet is not None:  # the dashboard's address is printed by the run
                warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            return LocalCluster(
                n_workers=spec.n_workers or default_workers(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=_dashboard_address(),
                memory_limit=memory_limit if memory_limit is not None else "auto",
                # the workers' handlers too (distributed's default: warnings)
                silence_logs=quiet if quiet is not None else logging.WARNING,
            )
    except Exception as e:
        raise ClusterError(f"the local cluster did not start ({type(e).__name__}: {e}). {GUARD_HINT}") from e


# --------------------------------------------------------------------------- kernels on remote workers


def _is_user_module(name: str) -> bool:
    """A module of the user's own (a file beside their script, a folder on sys.path), as
    opposed to the standard library, an installed package, or daskbatch."""
    from .provenance import installed_file

    if name in ("__main__", "__mp_main__") or name == "daskbatch" or name.startswith("daskbatch."):
        return False
    path = getattr(sys.modules.get(name), "__file__", None)
    return bool(path) and not installed_file(path)


def module_origins(names: Sequence[str]) -> dict[str, str | None]:
    """Where this process would import each module from (None: nowhere). Runs on the
    workers and the scheduler too, so it lives in a module they all import."""
    import importlib.util

    out: dict[str, str | None] = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except Exception:  # a parent package that cannot be imported
            spec = None
        origin = getattr(spec, "origin", None)
        out[name] = os.path.realpath(origin) if origin and os.path.exists(origin) else None
    return out


def try_loads(payload: bytes) -> tuple[str, str, str | None] | None:
    """Unpickle ``payload`` here; None if it loads, else (error type, message, missing
    module). Run on workers and the scheduler to check that they can load a kernel."""
    import pickle

    try:
        pickle.loads(payload)
    except Exception as e:
        return type(e).__name__, str(e), getattr(e, "name", None)
    return None


@contextmanager
def kernel_shipped(client: Any, kernel: Any, where: str) -> Iterator[list[str]]:
    """Make ``kernel`` loadable on the scheduler and workers of a running cluster.

    A kernel is pickled by reference (its module and name), which keeps its module's
    state. A kernel whose module is the user's own and which the cluster's processes
    import from another file, or not at all (a file beside the script, not installed
    there), is pickled by value instead while this context lasts
    (``cloudpickle.register_pickle_by_value``). Then the kernel is loaded once on the
    scheduler and on every worker: when a module it needs is missing there,
    :class:`WorkerImportError` says what to install where, before anything is
    computed. Yields the names of the modules sent by value.
    """
    import cloudpickle

    names = [kernel.module, getattr(kernel.setup, "__module__", None)]
    names = [n for n in dict.fromkeys(names) if n and _is_user_module(n)]
    shipped: list[str] = []
    try:
        if names:
            here = module_origins(names)
            there = [client.run_on_scheduler(module_origins, names)]
            there += list(client.run(module_origins, names).values())
            registered = cloudpickle.list_registry_pickle_by_value()
            for n in names:
                if n not in registered and any(o.get(n) != here[n] for o in there):
                    cloudpickle.register_pickle_by_value(sys.modules[n])
                    shipped.append(n)
        payload = cloudpickle.dumps(kernel)
        failures = [("the scheduler", client.run_on_scheduler(try_loads, payload))]
        failures += [(f"worker {w}", r) for w, r in sorted(client.run(try_loads, payload).items())]
        for who, failure in failures:
            if failure is not None:
                raise WorkerImportError(import_failure_message(kernel, where, who, *failure))
        yield shipped
    finally:
        for n in shipped:
            with contextlib.suppress(Exception):
                cloudpickle.unregister_pickle_by_value(sys.modules[n])


def import_failure_message(
    kernel: Any, where: str, who: str, kind: str, message: str, missing: str | None
) -> str:
    """One line: what a cluster's process could not load, and what to install where."""
    text = f"kernel {kernel.identity!r} cannot be loaded by {who} of the {where} ({kind}: {message})"
    if missing:
        origin = module_origins([missing]).get(missing)
        here = f" (here: {origin})" if origin else ""
        return (
            f"{text}: install {missing!r}{here} in the Python environment of the scheduler and of "
            "every worker, the same version as here, then run the same command again"
        )
    return f"{text}: the scheduler and the workers need the packages this process has"
