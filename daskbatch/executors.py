"""Executor types: what each way of computing can do, and how ``cluster=`` picks one.

Every way of computing is an *executor type*, registered by name with
:func:`register_executor` together with what it can do (its capability flags, see
:class:`ExecutorType`) and how it starts. The rest of daskbatch asks a
:class:`ClusterSpec` (a checked ``cluster=``, from :func:`parse_cluster`) for its
flags (``spec.in_driver``, ``spec.can_end_worker``, ...), never for its name. What
an executor type starts is an :class:`Executor`, whose :meth:`Executor.compute`
calls back as each block finishes, in whatever order, so progress and summaries
work the same everywhere.

Adding an executor type is one registration::

    @contextmanager
    def start_slurm(spec, memory_limit):
        ...  # start the cluster, yield Executor(spec, client=..., cluster=...)

    register_executor("slurm", start_slurm, starts_cluster=True, ...)

after which ``cluster="slurm"`` works everywhere, and ``resolve=`` makes a name
(``"auto"``) stand for another, chosen when the argument is checked.

The built-in executor types (``"serial"``, ``"threads"``, ``"processes"``,
``"local"``, ``"address"``, ``"client"``) and how each starts are in
:mod:`daskbatch.cluster`, which registers them when imported (``import daskbatch``
does); this module imports nothing of daskbatch's but its errors and
:mod:`daskbatch.hygiene`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from . import hygiene
from .clusterbase import quiet_abandoned_fetches
from .errors import ClusterError, WorkerDiedError

__all__ = [
    "GUARD_HINT",
    "ClusterSpec",
    "Executor",
    "ExecutorType",
    "StartFunction",
    "check_can_spawn",
    "default_workers",
    "executor_names",
    "get_executor",
    "main_is_guarded",
    "parse_cluster",
    "register_executor",
]

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


# --------------------------------------------------------------------------- executor types

#: ``start(spec, memory_limit)``: a context manager that starts (or connects to) what
#: ``spec`` describes, yields its :class:`Executor` and stops what it started on exit
StartFunction = Callable[["ClusterSpec", "int | None"], AbstractContextManager["Executor"]]


@dataclass(frozen=True)
class ExecutorType:
    """One way of computing blocks, as registered with :func:`register_executor`.

    Capability flags (what the rest of daskbatch asks instead of the name):

    ``in_driver``
        Blocks run in the driver process itself (its threads).
    ``separate_processes``
        Blocks run in processes other than the driver.
    ``workers_known_before_start``
        How many blocks run at once is known before anything starts
        (:attr:`ClusterSpec.workers_before_start`).
    ``probe_on_worker``
        The probe of the first samples runs as a task on one of the cluster's
        workers (the cluster already runs), not in a process of the driver's.
    ``can_end_worker``
        A sample past its timeout may end the process that runs it (to stop native
        code); never true with ``in_driver``.
    ``needs_main_guard``
        It spawns processes that re-import the driver's ``__main__`` (the script
        must guard its top-level code, and must be a file).
    ``starts_cluster``
        daskbatch starts the cluster, owns it and closes it at the end; its
        scheduler runs in the driver process.
    ``imports_like_driver``
        Its processes import modules from where the driver does (they run in it or
        fork from daskbatch's forkserver), so a kernel needs no check that a
        cluster's processes can load it and is never sent by value.
    ``forks_driver``
        Its processes are forks of the driver (nothing to import, no forkserver);
        the probe runs in a fork of the driver too.

    How it works: ``start`` (see :data:`StartFunction`); ``dask_scheduler``, for a
    dask local scheduler, the name ``dask.compute`` takes (``"sync"``, ``"threads"``,
    ``"processes"``), None for a distributed cluster; ``describe`` and
    ``count_workers`` for the description and the number of workers of a spec;
    ``match`` (with ``hint`` for the error message) picks it by the value of
    ``cluster=`` rather than by its name; ``resolve`` makes its name stand for
    another executor type's.
    """

    name: str
    start: StartFunction | None = None
    in_driver: bool = False
    separate_processes: bool = True
    workers_known_before_start: bool = False
    probe_on_worker: bool = False
    can_end_worker: bool = True
    needs_main_guard: bool = False
    starts_cluster: bool = False
    imports_like_driver: bool = False
    forks_driver: bool = False
    dask_scheduler: str | None = None
    describe: Callable[[ClusterSpec], str] | None = None
    count_workers: Callable[[ClusterSpec], int] | None = None
    match: Callable[[Any, int | None], ClusterSpec | None] | None = None
    hint: str | None = None
    resolve: Callable[[int | None], str] | None = None

    @property
    def by_name(self) -> bool:
        """Chosen by writing its name as ``cluster=`` (not by :attr:`match`)."""
        return self.match is None


_EXECUTORS: dict[str, ExecutorType] = {}


def register_executor(
    name: str,
    start: StartFunction | None = None,
    *,
    in_driver: bool = False,
    separate_processes: bool = True,
    workers_known_before_start: bool = False,
    probe_on_worker: bool = False,
    can_end_worker: bool | None = None,
    needs_main_guard: bool = False,
    starts_cluster: bool = False,
    imports_like_driver: bool = False,
    forks_driver: bool = False,
    dask_scheduler: str | None = None,
    describe: Callable[[ClusterSpec], str] | None = None,
    count_workers: Callable[[ClusterSpec], int] | None = None,
    match: Callable[[Any, int | None], ClusterSpec | None] | None = None,
    hint: str | None = None,
    resolve: Callable[[int | None], str] | None = None,
    replace: bool = False,
) -> ExecutorType:
    """Register a way of computing under ``name``; returns its :class:`ExecutorType`.

    ``start`` starts it (see :data:`StartFunction`); the flags say what it can do
    (see :class:`ExecutorType`; ``can_end_worker`` defaults to
    ``separate_processes``). With ``match``, it is chosen when
    ``match(cluster, n_workers)`` returns a :class:`ClusterSpec` for the argument
    (a scheduler address, a Client), and ``hint`` names such values in the error
    for an invalid ``cluster=``; without, by ``cluster=name``. With ``resolve``,
    ``cluster=name`` stands for the executor type named by ``resolve(n_workers)``
    (as ``"auto"`` would), and no ``start`` is needed. A name already registered is
    refused unless ``replace``.

    Examples
    --------
    >>> t = get_executor("threads")
    >>> t.in_driver, t.can_end_worker, t.dask_scheduler
    (True, False, 'threads')
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an executor type needs a name, not {name!r}")
    if name in _EXECUTORS and not replace:
        raise ValueError(f"an executor type {name!r} is already registered (pass replace=True)")
    if can_end_worker is None:
        can_end_worker = separate_processes
    if start is None and resolve is None:
        raise ValueError(f"executor type {name!r} needs start= (or resolve=, to stand for another)")
    if in_driver and (separate_processes or can_end_worker):
        raise ValueError(
            f"executor type {name!r}: blocks that run in the driver (in_driver) neither run in "
            "separate processes nor may end the process that runs them"
        )
    entry = ExecutorType(
        name=name,
        start=start,
        in_driver=in_driver,
        separate_processes=separate_processes,
        workers_known_before_start=workers_known_before_start,
        probe_on_worker=probe_on_worker,
        can_end_worker=can_end_worker,
        needs_main_guard=needs_main_guard,
        starts_cluster=starts_cluster,
        imports_like_driver=imports_like_driver,
        forks_driver=forks_driver,
        dask_scheduler=dask_scheduler,
        describe=describe,
        count_workers=count_workers,
        match=match,
        hint=hint,
        resolve=resolve,
    )
    _EXECUTORS[name] = entry
    return entry


def executor_names(*, by_name_only: bool = False) -> tuple[str, ...]:
    """The registered executor types, in the order registered; with ``by_name_only``
    only those chosen by writing their name as ``cluster=``."""
    return tuple(n for n, e in _EXECUTORS.items() if e.by_name or not by_name_only)


def get_executor(name: str) -> ExecutorType:
    """The executor type registered as ``name``; :class:`ClusterError` names the
    registered ones when there is none."""
    try:
        return _EXECUTORS[name]
    except (KeyError, TypeError):
        raise ClusterError(
            f"no executor type {name!r}; the registered ones are {list(executor_names())}"
        ) from None


@dataclass(frozen=True)
class ClusterSpec:
    """A checked ``cluster=`` argument; nothing has been started yet.

    ``name`` is a registered executor type (:func:`get_executor`); its capability
    flags are properties of the spec too (``spec.in_driver``, ...).
    """

    name: str
    n_workers: int | None
    address: str | None = None
    client: Any = None
    #: what else the executor type needs to start (a :class:`daskbatch.JobQueue`, a
    #: cluster object); None for the others
    options: Any = None

    def __post_init__(self) -> None:
        get_executor(self.name)  # an unknown name is refused here, naming the known ones

    @property
    def executor(self) -> ExecutorType:
        """The registered executor type this spec starts."""
        return get_executor(self.name)

    @property
    def kind(self) -> str:
        """The executor type's name (the older spelling of :attr:`name`)."""
        return self.name

    @property
    def label(self) -> str:
        """What a store records as the run's cluster (and ``resume`` parses again):
        the scheduler's address for a running scheduler, else the name."""
        return self.address or self.name

    @property
    def in_driver(self) -> bool:
        return self.executor.in_driver

    @property
    def separate_processes(self) -> bool:
        return self.executor.separate_processes

    @property
    def workers_known_before_start(self) -> bool:
        return self.executor.workers_known_before_start

    @property
    def probe_on_worker(self) -> bool:
        return self.executor.probe_on_worker

    @property
    def can_end_worker(self) -> bool:
        return self.executor.can_end_worker

    @property
    def needs_main_guard(self) -> bool:
        return self.executor.needs_main_guard

    @property
    def starts_cluster(self) -> bool:
        return self.executor.starts_cluster

    @property
    def imports_like_driver(self) -> bool:
        return self.executor.imports_like_driver

    @property
    def forks_driver(self) -> bool:
        return self.executor.forks_driver

    @property
    def workers_before_start(self) -> int | None:
        """Blocks that will run at once, when that is known before anything starts."""
        ex = self.executor
        if not ex.workers_known_before_start:
            return None
        if ex.count_workers is not None:
            return ex.count_workers(self)
        return self.n_workers or default_workers()

    @property
    def description(self) -> str:
        ex = self.executor
        if ex.describe is not None:
            return ex.describe(self)
        n = self.workers_before_start
        return self.name if n is None else f"{self.name} ({n} workers)"


def _invalid(cluster: Any) -> ClusterError:
    names = [*executor_names(by_name_only=True), "auto"]  # auto: run() picks one of them
    choices = [f"one of {names}", *(e.hint for e in _EXECUTORS.values() if not e.by_name and e.hint)]
    text = choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + ", or " + choices[-1]
    return ClusterError(f"cluster={cluster!r} is not valid; use {text}")


def parse_cluster(cluster: Any, n_workers: int | None = None) -> ClusterSpec:
    """Check ``cluster=`` and ``n_workers=`` without starting anything.

    A registered name chosen by name (following ``resolve``), else the first
    executor type whose ``match`` takes the value.

    Examples
    --------
    >>> parse_cluster("threads", 2).description
    'threads (2 threads)'
    >>> parse_cluster("127.0.0.1:8786").label
    'tcp://127.0.0.1:8786'
    """
    if n_workers is not None and (
        isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1
    ):
        raise ClusterError(f"n_workers={n_workers!r} must be a positive integer or None")
    if cluster == "serial" and n_workers not in (None, 1):
        # not refused: a script that loops over schedulers keeps its n_workers, and a
        # resume replays the options its store recorded
        from .log import logger

        logger.warning(
            f"n_workers={n_workers!r} is ignored with cluster='serial', which computes every block "
            f"in one thread of this process; use cluster='threads' or cluster='local' for {n_workers} workers"
        )
    seen: list[str] = []
    while isinstance(cluster, str) and cluster in _EXECUTORS and _EXECUTORS[cluster].by_name:
        entry = _EXECUTORS[cluster]
        if entry.resolve is None:
            return ClusterSpec(cluster, n_workers)
        seen.append(cluster)
        cluster = entry.resolve(n_workers)
        if cluster in seen:
            raise ClusterError(f"cluster={seen[0]!r} stands for itself ({' -> '.join([*seen, cluster])})")
    for entry in list(_EXECUTORS.values()):
        if entry.match is not None:
            spec = entry.match(cluster, n_workers)
            if spec is not None:
                return spec
    raise _invalid(cluster)


def check_can_spawn(spec: ClusterSpec) -> None:
    """Refuse, before anything starts, a driver whose worker processes could not start.

    Spawned processes re-run the driver's ``__main__`` from its file; code fed on
    standard input (``python - < script.py``) has no file to re-run.
    """
    if not spec.needs_main_guard:
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is not None and not os.path.exists(path):
        raise ClusterError(
            f"cluster={spec.name!r} starts worker processes, which re-run the main script, but "
            f"this program's main script {path!r} is not a file (code fed on standard input?). "
            "Save the code to a file and run that, or use cluster='threads' or cluster='serial'"
        )


def main_is_guarded() -> bool:
    """Whether worker processes that re-run the driver's main script would run none of
    its work: its calls into daskbatch come from under ``if __name__ == "__main__":``
    (or there is no script: a notebook, an interactive session, a command whose main
    module calls daskbatch from a function under such a test). False for code fed on
    standard input and for a script that calls daskbatch from its top level."""
    import ast

    from .parsing import parse

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    if not os.path.isfile(path):
        return False
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__"
    ):
        frame = frame.f_back
    if frame is None:  # not called from the main script's top level
        return True
    if not _same_file(frame.f_code.co_filename, path):  # a notebook cell, IPython's %run
        return True
    try:
        with open(path, encoding="utf-8") as f:
            tree = parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno
    return any(
        isinstance(node, ast.If)
        and "__name__" in ast.unparse(node.test)
        and "__main__" in ast.unparse(node.test)
        and node.lineno <= line <= (node.end_lineno or node.lineno)
        for node in ast.walk(tree)
    )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------- what a start yields


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
        """The dashboard's address. A cluster daskbatch starts serves its dashboard on
        127.0.0.1 only (a job-queue scheduler listens for its workers on the node's
        address, but its dashboard does not): the link says 127.0.0.1, to be opened on
        that machine or through an SSH tunnel, under the path made for the run that
        opens it (:mod:`daskbatch.dashguard`)."""
        if self.client is None:
            return None
        try:
            if self._cluster is not None:
                from .dashguard import link

                port = self.client.scheduler_info()["services"]["dashboard"]
                return link(getattr(self._cluster, "scheduler", None), port)
            return self.client.dashboard_link
        except Exception:  # pragma: no cover - no bokeh, or no dashboard
            return None

    @property
    def n_workers(self) -> int:
        """Workers the run has; for a cluster daskbatch starts, the workers it will have
        (its workers join while the first computes)."""
        if self._cluster is not None and self.spec.workers_before_start:
            return self.spec.workers_before_start
        if self.client is not None:
            n = sum(self.client.nthreads().values())
            return max(1, n)
        n = self.spec.workers_before_start
        return n if n is not None else self.spec.n_workers or default_workers()

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

    def fall_back(self) -> bool:
        """After a worker died (:class:`WorkerDiedError`): go on computing somewhere that
        isolates a sample that kills its worker. False: this executor cannot (the run
        stops with the error)."""
        return False

    def _compute_distributed(self, tasks, on_done) -> list[int]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        futures = self.client.compute(list(tasks))
        index = {f.key: i for i, f in enumerate(futures)}
        lost = []
        quiet_abandoned_fetches()
        try:
            for fut in as_completed(futures, loop=self.client.loop):  # this client's, not the default
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
        scheduler = self.spec.executor.dask_scheduler
        if scheduler is None:
            raise ClusterError(f"executor type {self.spec.name!r} gave neither a client nor a dask scheduler")
        # the scheduler function itself: given its name, dask imports distributed to look
        # for a client (0.15 s of a small run in this process)
        kwargs: dict[str, Any] = {"scheduler": _local_scheduler(scheduler)}
        if scheduler != "sync":
            kwargs["num_workers"] = self.n_workers
        who, hint = "a worker process of the processes scheduler", _unguarded_main()
        if scheduler == "processes":  # a pool of its own: ended at once on a stop
            from dask.multiprocessing import get_context

            del kwargs["num_workers"]
            initializer = functools.partial(hygiene.pool_worker, reseed=True)
            compute_on_pool(tasks, on_done, who, hint, self.n_workers, get_context(), initializer, **kwargs)
            return
        compute_local(tasks, on_done, who, hint, **kwargs)

    def close(self) -> None:
        if self._cluster is not None:
            self.client.close()
            self._cluster.close()


def compute_local(
    tasks: Sequence[Any], on_done: Callable[[Any], None], who: str, hint: bool, **kwargs: Any
) -> None:
    """Compute ``tasks`` on a dask local scheduler (``kwargs["scheduler"]``), calling ``on_done``
    with each task's result as it finishes; a broken process pool (``who`` died) is a
    :class:`WorkerDiedError` saying how to go on (with :data:`GUARD_HINT` if ``hint``)."""
    from concurrent.futures.process import BrokenProcessPool

    from dask.callbacks import Callback

    keys = {t.key for t in tasks}

    def posttask(key, result, dsk, state, worker_id):
        if key in keys:
            on_done(result)

    # the scheduler's get on the merged graph, not dask.compute: its packing of the
    # results into the collections' structure took time that grew with the square of
    # the tasks, all after the last block (38 s at 60,000 blocks)
    graph: dict[Any, Any] = {}
    for t in tasks:
        graph.update(t.__dask_graph__())
    get = kwargs.pop("scheduler")
    if isinstance(get, str):
        from dask.base import get_scheduler

        get = get_scheduler(scheduler=get)
    try:
        with Callback(posttask=posttask):
            get(graph, [t.key for t in tasks], **kwargs)
    except BrokenProcessPool as e:
        raise WorkerDiedError(
            f"{who} died ({e}): a sample may have crashed it (a segfault or abort in the core), "
            "or it was killed. Finished blocks are kept: run the same command again to continue; "
            "cluster='local' isolates samples that crash their worker and marks them crashed. "
            f"{GUARD_HINT if hint else ''}".strip()
        ) from e


def compute_on_pool(
    tasks: Sequence[Any],
    on_done: Callable[[Any], None],
    who: str,
    hint: bool,
    n_workers: int,
    context: Any,
    initializer: Callable[[], None],
    **kwargs: Any,
) -> None:
    """:func:`compute_local` (``who``, ``hint`` as there) on a process pool of
    ``n_workers`` made here (with the multiprocessing ``context``; ``initializer`` runs
    in each worker), whose workers are killed when the computation stops before its
    end: a stop (Ctrl-C, SIGTERM) or an error ends the blocks in flight at once (none is
    half committed), where the pool's own shutdown would wait for them (and for a
    worker that a signal left holding the pool's queue, for ever)."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=initializer)
    finished = False
    try:
        compute_local(tasks, on_done, who, hint, pool=pool, **kwargs)
        finished = True
    finally:
        if not finished:
            kill_pool_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)  # its workers are gone when not finished


def kill_pool_workers(pool: Any) -> None:
    """SIGKILL a process pool's workers: they ignore SIGINT and SIGTERM, and a sample
    running native code would keep its worker (and the driver waiting on it) going."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)


def _unguarded_main() -> bool:
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is None


def _local_scheduler(name: str) -> Any:
    """dask's local scheduler function for ``name`` ("sync", "threads", "processes")."""
    if name == "sync":
        from dask.local import get_sync

        return get_sync
    if name == "threads":
        from dask.threaded import get

        return get
    if name == "processes":
        from dask.multiprocessing import get

        return get
    return name
