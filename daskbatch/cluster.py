"""Starting what ``cluster=`` names, and sending it the kernel.

The executor types themselves (the registry, :class:`ClusterSpec`,
:func:`parse_cluster`, :class:`Executor`) are in :mod:`daskbatch.executors`; their
names are importable from here too. This module registers the built-in ones, in
this order: ``"serial"``, ``"threads"`` and ``"processes"`` are dask's local
schedulers (no server); ``"local"`` starts a :class:`distributed.LocalCluster` with
one single-threaded worker process per core; ``"address"`` (a scheduler address)
and ``"client"`` (a :class:`distributed.Client`) use a cluster that already runs.

Here too: :func:`start_executor` (starts what a spec describes, with SIGTERM
stopping the run in order), :func:`prestart` (the forkserver that worker and probe
processes fork from), :func:`signals_stop`, :func:`quiet_level` (distributed's log
kept quiet) and :func:`kernel_shipped` (a kernel made loadable on a running
cluster's scheduler and workers). What the job-queue clusters of :mod:`daskbatch.hpc`
share with the local cluster (its TLS credentials, the quiet log, the signals held
back while it starts) is in :mod:`daskbatch.clusterbase`.

The local cluster is private to its user: its scheduler, nannies and workers listen
on ``tls://127.0.0.1`` and accept only connections that present the run's temporary
certificate (:func:`local_security`), so another user of the machine (a login node's)
cannot run code in its workers. Its dashboard is plain HTTP on 127.0.0.1, under a path
made for the run, which the link the run prints has (:mod:`daskbatch.dashguard`).

What keeps worker processes lean (malloc arenas, ``malloc_trim``, the parent-death
signal, the forkserver) lives in :mod:`daskbatch.hygiene`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask

from . import config, hygiene
from . import log as _log  # noqa: F401  (sets up the daskbatch logger wherever daskbatch runs)
from .clusterbase import QUIET_LEVEL as QUIET_LEVEL
from .clusterbase import (
    _dashboard_address,
    _finalize_clients,
    _prepare_security,
    _quiet_logs,
    _signals_deferred,
)
from .clusterbase import local_security as local_security
from .clusterbase import quiet_level as quiet_level
from .errors import ClusterError, KernelCrashError, Stopped, WorkerDiedError, WorkerImportError
from .executors import (
    GUARD_HINT,
    ClusterSpec,
    Executor,
    ExecutorType,
    StartFunction,
    check_can_spawn,
    default_workers,
    executor_names,
    get_executor,
    main_is_guarded,
    parse_cluster,
    register_executor,
)
from .forkpool import start_fork
from .hygiene import limit_malloc_arenas, release_freed_memory

__all__ = [
    "GUARD_HINT",
    "QUIET_LEVEL",
    "ClusterSpec",
    "Executor",
    "ExecutorType",
    "KernelCrashError",
    "StartFunction",
    "WorkerDiedError",
    "WorkerImportError",
    "check_can_spawn",
    "default_workers",
    "executor_names",
    "get_executor",
    "import_failure_message",
    "kernel_shipped",
    "limit_malloc_arenas",
    "local_security",
    "main_is_guarded",
    "module_origins",
    "parse_cluster",
    "prestart",
    "quiet_level",
    "register_executor",
    "release_freed_memory",
    "signals_stop",
    "start_executor",
    "try_loads",
]

# --------------------------------------------------------------------------- the built-in ones


@contextmanager
def _start_dask_scheduler(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    yield Executor(spec)


@contextmanager
def _start_with_client(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    yield Executor(spec, client=spec.client)


def _forget_failed_client(exc: BaseException) -> None:
    """Undo what a ``distributed.Client`` whose connection failed (``exc``) left behind:
    it makes itself dask's default before it connects, and stays the default until it
    is garbage-collected, so every dask compute in this process would go to it (and
    wait). Done as its ``close`` does, then it is closed, while its event loop runs
    (closed later by the garbage collector, at exit, it waits 20 s for a loop gone)."""
    try:
        from distributed.client import Client, _del_global_client, _get_global_client
    except ImportError:  # pragma: no cover - another distributed
        return
    tb = exc.__traceback__
    while tb is not None:
        client = tb.tb_frame.f_locals.get("self")
        if isinstance(client, Client):
            _del_global_client(client)
            if getattr(client, "_set_as_default", False) and _get_global_client() is None:
                with contextlib.suppress(AttributeError), client._set_config:
                    pass
            client._set_as_default = False
            with contextlib.suppress(Exception):  # now, while its event loop runs
                client.close(timeout=5)
            return
        tb = tb.tb_next


@contextmanager
def _start_with_address(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    from distributed import Client

    address = spec.address or ""
    # a tls:// scheduler takes the credentials of dask's config (distributed.comm.tls.*)
    tls = (
        " A tls:// scheduler needs this user's certificate in dask's config: "
        "distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
        "distributed.comm.tls.client.key (or the DASK_DISTRIBUTED__COMM__TLS__... variables)"
        if address.startswith("tls://")
        else ""
    )
    try:
        client = Client(address, timeout=f"{config.get('connect-timeout')}s")
    except (OSError, TypeError, ValueError) as e:
        _forget_failed_client(e)
        if not isinstance(e, OSError):
            if not tls:
                raise
            raise ClusterError(f"cannot connect to the scheduler at {address!r} ({e}).{tls}") from e
        raise ClusterError(
            f"cannot connect to the scheduler at {address!r} ({e}); is it running? "
            f"Start one with `dask scheduler`, or use cluster='local' (--cluster local).{tls}"
        ) from e
    try:
        yield Executor(spec, client=client)
    finally:
        client.close()


@contextmanager
def _start_local(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
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


def _match_client(cluster: Any, n_workers: int | None) -> ClusterSpec | None:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - a dependency
        return None
    if not isinstance(cluster, Client):
        return None
    if n_workers is not None:
        raise ClusterError("n_workers cannot be used with an existing Client; scale its cluster instead")
    return ClusterSpec("client", None, client=cluster)


def _match_address(cluster: Any, n_workers: int | None) -> ClusterSpec | None:
    if not isinstance(cluster, str):
        return None
    if not ("://" in cluster or (cluster.count(":") == 1 and cluster.rsplit(":", 1)[1].isdigit())):
        return None
    if n_workers is not None:
        raise ClusterError(
            f"n_workers cannot be used with cluster={cluster!r}, a running scheduler; "
            "start that many workers on it instead"
        )
    return ClusterSpec("address", None, address=cluster if "://" in cluster else f"tcp://{cluster}")


def _count_threads(spec: ClusterSpec) -> int:
    return max(1, sum(spec.client.nthreads().values()))


register_executor(
    "serial",
    _start_dask_scheduler,
    in_driver=True,
    separate_processes=False,
    workers_known_before_start=True,
    imports_like_driver=True,
    dask_scheduler="sync",
    describe=lambda spec: "serial (one thread, in this process)",
    count_workers=lambda spec: 1,
)
register_executor(
    "threads",
    _start_dask_scheduler,
    in_driver=True,
    separate_processes=False,
    workers_known_before_start=True,
    imports_like_driver=True,
    dask_scheduler="threads",
    describe=lambda spec: f"threads ({spec.workers_before_start} threads)",
)
register_executor(
    "processes",
    _start_dask_scheduler,
    workers_known_before_start=True,
    needs_main_guard=True,
    imports_like_driver=True,
    dask_scheduler="processes",
    describe=lambda spec: f"processes ({spec.workers_before_start} processes)",
)
register_executor(
    "local",
    _start_local,
    workers_known_before_start=True,
    needs_main_guard=True,
    starts_cluster=True,
    imports_like_driver=True,
    describe=lambda spec: (
        f"local ({spec.workers_before_start} worker process{'es' * (spec.workers_before_start != 1)}, "
        "LocalCluster, 1 thread each)"
    ),
)
register_executor(
    "fork",
    start_fork,
    workers_known_before_start=True,
    imports_like_driver=True,
    forks_driver=True,
    dask_scheduler="processes",
    describe=lambda spec: f"fork ({spec.workers_before_start} processes forked from this one)",
)
register_executor(
    "address",
    _start_with_address,
    match=_match_address,
    hint="a scheduler address such as 'tcp://127.0.0.1:8786'",
    describe=lambda spec: f"scheduler at {spec.address}",
)
register_executor(
    "client",
    _start_with_client,
    workers_known_before_start=True,
    probe_on_worker=True,
    match=_match_client,
    hint="a distributed.Client",
    describe=lambda spec: f"existing client ({spec.client.scheduler.address})",
    count_workers=_count_threads,
)


# --------------------------------------------------------------------------- a LocalCluster


def prestart(spec: ClusterSpec, modules: Sequence[str] = ()) -> None:
    """Start the multiprocessing *forkserver* that worker and probe processes fork from
    (:func:`daskbatch.hygiene.start_forkserver`), when ``spec`` needs it.

    daskbatch's LocalCluster forks its workers from it: started here, before the
    scheduler and its dashboard start in this process, the two overlap on separate
    cores, and each worker then starts (and stops) in milliseconds instead of
    importing everything itself. The probe of the first samples also runs in a
    process forked from it, for every executor type whose blocks run neither in the
    driver (``"serial"``, ``"threads"``) nor on a running cluster's worker (a
    ``Client``): there this does nothing. When daskbatch starts the cluster, the
    scheduler's dashboard is imported meanwhile in a thread. The server lives as long
    as this process, like the one distributed itself starts for its test suite.
    """
    if spec.in_driver or spec.probe_on_worker or spec.forks_driver or sys.platform == "win32":
        return
    hygiene.start_forkserver(modules)
    if spec.starts_cluster:
        _prepare_security()  # the cluster's credentials, made while this process probes
    if spec.starts_cluster and "distributed.dashboard.scheduler" not in sys.modules:
        # the scheduler's dashboard (bokeh: half a second of imports) loads in this
        # process while the forkserver loads the workers' modules on the other core
        threading.Thread(target=_import_dashboard, name="daskbatch-dashboard-import", daemon=True).start()


def _import_dashboard() -> None:
    with contextlib.suppress(Exception):  # without bokeh the cluster starts without a dashboard
        importlib.import_module("distributed.dashboard.scheduler")


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

    raised: list[Stopped] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raised.append(Stopped(signum))
        raise raised[-1]

    def unraisable(event: Any) -> None:
        # Python drops an exception raised in code the garbage collector runs (a gc
        # callback, a weakref callback, a __del__): the signal did not stop anything,
        # so it comes again
        if raised and event.exc_value is raised[-1]:
            received.clear()
            threading.Timer(0.02, os.kill, (os.getpid(), raised[-1].signum)).start()
            return
        chained(event)

    chained = sys.unraisablehook
    sys.unraisablehook = unraisable

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
            if sys.unraisablehook is unraisable:
                sys.unraisablehook = chained


# --------------------------------------------------------------------------- starting any executor type


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
    from .scratch import private_scratch

    start = spec.executor.start
    if start is None:  # pragma: no cover - parse_cluster resolves such names
        raise ClusterError(f"cluster={spec.name!r} stands for another executor type; use parse_cluster")
    # the servers it starts never use a scratch folder another user could have made
    scratch = private_scratch() if spec.starts_cluster else contextlib.nullcontext()
    with scratch, start(spec, memory_limit) as executor:
        yield executor


#: dask settings of daskbatch's own LocalCluster, in effect while it runs (see
#: :func:`_new_local_cluster` for why each)
CLUSTER_SETTINGS = {
    "distributed.worker.multiprocessing-method": "forkserver",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.profile.cycle": "10s",
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "1s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _start_local_cluster(
    spec: ClusterSpec, memory_limit: int | None, quiet: int | None
) -> Iterator[Executor]:
    from distributed import Client

    cluster = client = None
    # for as long as the cluster runs: a nanny reads them again whenever it starts a
    # worker (the ones that join after the first, one that restarts after dying),
    # which would otherwise be spawned (slowly, and without what daskbatch's
    # forkserver sets up: SIGINT and SIGTERM ignored, the log kept quiet) and get
    # distributed's defaults instead of the settings below
    # the dashboard (plain HTTP on 127.0.0.1, which every user of a login node reaches)
    # serves no proxy: with jupyter-server-proxy installed, distributed's /proxy/ route
    # opens websockets to any host and port, as this user
    routes = [
        r for r in dask.config.get("distributed.scheduler.http.routes") if r != "distributed.http.proxy"
    ]
    with dask.config.set({**CLUSTER_SETTINGS, "distributed.scheduler.http.routes": routes}):
        try:
            with _signals_deferred():  # a Ctrl-C acts once the cluster has started
                security = local_security()
                cluster = _new_local_cluster(spec, memory_limit, quiet, security)
                client = Client(cluster, security=security)
            yield Executor(spec, client=client, cluster=cluster)
        finally:
            with _signals_deferred():  # and the cluster closes in full
                if client is not None and cluster is not None:
                    _let_restarts_finish(client, cluster)
                if client is not None:
                    client.close()
                if cluster is not None:
                    cluster.close()
                _finalize_clients()


#: How long closing a local cluster waits for the workers its nannies are restarting.
RESTART_WAIT_SECONDS = 10.0


def _let_restarts_finish(client: Any, cluster: Any) -> None:
    """Wait (at most :data:`RESTART_WAIT_SECONDS`) until every worker of ``cluster`` is
    up: one that a sample crashed is being restarted by its nanny, and closing the
    cluster while it starts made it print a traceback (``RuntimeError: ConnectionPool
    is closed``) after a run that had gone well. Nothing to wait for otherwise."""
    with contextlib.suppress(Exception):  # a cluster that cannot say: close it anyway
        client.wait_for_workers(len(cluster.worker_spec), timeout=RESTART_WAIT_SECONDS)


def _new_local_cluster(spec: ClusterSpec, memory_limit: int | None, quiet: int | None, security: Any) -> Any:
    from distributed import LocalCluster

    from .dashguard import scheduler_options

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
        with warnings.catch_warnings():
            if quiet is not None:  # the dashboard's address is printed by the run
                warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            # one worker first, the others while it computes: the run's first blocks
            # start as soon as one worker is up instead of when all are
            n = spec.n_workers or default_workers()
            cluster = LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                # only this user's processes may connect: TLS with the run's temporary
                # credentials (another user of the machine could otherwise connect to
                # 127.0.0.1 and run code in the workers); the dashboard stays plain HTTP
                protocol="tls://",
                host="127.0.0.1",
                security=security,
                dashboard_address=_dashboard_address(),
                # the dashboard under the run's token from the first request on
                scheduler_kwargs=scheduler_options(),
                memory_limit=memory_limit if memory_limit is not None else "auto",
                # the workers' handlers too (distributed's default: warnings)
                silence_logs=quiet if quiet is not None else logging.WARNING,
            )
            if n > 1:
                cluster.scale(n)  # returns at once; the workers join as they start
            return cluster
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


from . import hpc as _hpc  # noqa: E402, F401  (registers "slurm", "pbs", "sge", "lsf" and "deploy")
