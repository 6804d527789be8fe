"""Batch-system clusters: workers as SLURM, PBS, SGE or LSF jobs, through dask-jobqueue.

``cluster="slurm"`` (``"pbs"``, ``"sge"``, ``"lsf"``), a :class:`JobQueue`, or a spec's
``[cluster]`` table start a dask-jobqueue cluster: scheduler in the driver, workers in
batch jobs. What is not given comes from dask's ``jobqueue.<kind>.*`` configuration
(``~/.config/dask/jobqueue.yaml``); daskbatch adds its own defaults on top:

- one single-threaded worker process per core (``processes = cores``), unless the
  kernel is declared thread-safe;
- workers retire a little before the job's walltime (``--lifetime`` with a
  ``--lifetime-stagger``, see :func:`lifetime`) and ended jobs are replaced
  (``cluster.adapt``), so a walltime ends workers in order, not in the middle of
  their blocks;
- TLS with temporary credentials, as on the local cluster (the workers' copy of the
  key is written, readable by this user only, into ``jobqueue.<kind>.shared-temp-directory``
  or else ``~/.cache/daskbatch/tls``, which the compute nodes must see).

Also registered here: ``cluster=`` a running :class:`distributed.deploy.Cluster` (a
user's ``dask_jobqueue.SLURMCluster``...), used but neither scaled nor closed. Importing
this module does not import dask-jobqueue; starting such a cluster does.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import dask

from .clusterbase import (
    _finalize_clients,
    _quiet_logs,
    _signals_deferred,
    local_security,
    quiet_level,
    scheduler_options,
)
from .errors import ClusterError
from .executors import ClusterSpec, Executor, register_executor
from .scratch import job_scratch_lines, job_script_lines, users_temporary_directory

__all__ = ["KINDS", "JobQueue", "for_kernel", "job_script", "lifetime", "walltime_seconds"]

logger = logging.getLogger("daskbatch")

#: kind -> (dask_jobqueue class, submit command, batch system's name)
KINDS: dict[str, tuple[str, str, str]] = {
    "slurm": ("SLURMCluster", "sbatch", "SLURM"),
    "pbs": ("PBSCluster", "qsub", "PBS"),
    "sge": ("SGECluster", "qsub", "SGE"),
    "lsf": ("LSFCluster", "bsub", "LSF"),
}

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*[A-Za-z]+\s*$")
#: keywords of JobQueue's own fields: refused in ``extra`` (name -> the field to use)
_OWN = {
    "queue": "queue",
    "account": "account",
    "project": "account",
    "cores": "cores",
    "memory": "memory",
    "processes": "processes",
    "walltime": "walltime",
    "job_script_prologue": "prologue",
    "env_extra": "prologue",
    "interface": "interface",
    "local_directory": "local_directory",
    "n_workers": "jobs",
}
#: keywords daskbatch sets itself
_NOT_EXTRA = {
    "self",
    "scheduler",
    "name",
    "job_cls",
    "loop",
    "asynchronous",
    "base_class_kwargs",
    "job_kwargs",
    "dashboard_address",  # dask-jobqueue takes them in scheduler_options
    "host",
}


def walltime_seconds(walltime: str, kind: str = "slurm") -> int:
    """Seconds of a walltime: ``HH:MM:SS``, ``D-HH:MM:SS`` or ``MM:SS`` (``HH:MM`` for LSF).

    Examples
    --------
    >>> walltime_seconds("01:00:00"), walltime_seconds("1-00:00:00"), walltime_seconds("10:00")
    (3600, 86400, 600)
    >>> walltime_seconds("00:30", "lsf")
    1800
    """
    m = _WALLTIME.match(walltime.strip()) if isinstance(walltime, str) else None
    if m is None or (m.group(1) and m.group(4) is None):
        raise ClusterError(
            f"walltime={walltime!r} is not a walltime; use 'HH:MM:SS' (such as '01:30:00'), "
            "'D-HH:MM:SS' (such as '2-00:00:00') or 'MM:SS'"
        )
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if b >= 60 or c >= 60 or (m.group(4) is not None and m.group(1) and a >= 24):
        raise ClusterError(
            f"walltime={walltime!r} has minutes or seconds past 59 (or hours past 23 after a day); "
            "use 'HH:MM:SS' such as '01:30:00' or 'D-HH:MM:SS' such as '1-12:00:00'"
        )
    if m.group(4) is None:  # two parts: MM:SS, or LSF's own HH:MM
        total = a * 3600 + b * 60 if kind == "lsf" else a * 60 + b
    else:
        total = days * 86400 + a * 3600 + b * 60 + c
    if total < 60:  # SLURM reads 0 as no limit: workers that retire at once, replaced forever
        raise ClusterError(
            f"walltime={walltime!r} is {'zero' if total == 0 else 'under a minute'}; batch systems count "
            "walltimes in minutes: give the jobs at least '00:01:00' (such as '01:00:00')"
        )
    return total


def _walltime_for(kind: str, seconds: int) -> str:
    """A walltime as the batch system writes it (LSF: ``HH:MM``, rounded up)."""
    if kind == "lsf":
        minutes = math.ceil(seconds / 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d}"
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def lifetime(walltime: int) -> tuple[int, int]:
    """``(lifetime, stagger)`` in seconds for a job of ``walltime`` seconds.

    Workers retire at ``lifetime ± stagger``: a margin of 10% of the walltime (at
    least a minute, at most 15 minutes, at most half) is kept before the batch
    system would kill the job, and the workers of a cluster do not all leave at once.

    Examples
    --------
    >>> lifetime(600), lifetime(3600)
    ((540, 15), (3240, 90))
    """
    margin = min(max(0.1 * walltime, 60.0), 900.0, walltime / 2)
    return int(walltime - margin), int(margin / 4)


def _positive(name: str, value: Any, zero: bool = False) -> None:
    if value is None:
        return
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ClusterError(
            f"JobQueue {name}={value!r} must be a whole number >= {low}, such as {name}={max(low, 2)}"
        )


@dataclass(frozen=True)
class JobQueue:
    """Workers as batch jobs (SLURM, PBS, SGE, LSF), for ``cluster=``.

    Every option left None comes from dask's ``jobqueue.<kind>.*`` configuration
    (``~/.config/dask/jobqueue.yaml``), as dask-jobqueue reads it.

    Parameters
    ----------
    kind
        ``"slurm"``, ``"pbs"``, ``"sge"`` or ``"lsf"``.
    queue
        The partition (SLURM) or queue.
    account
        The account (SLURM, PBS) or project (SGE, LSF) the jobs are charged to.
    cores
        Cores per job.
    memory
        Memory per job, with a unit: ``"16GB"``.
    processes
        Worker processes per job. Default: one single-threaded worker per core,
        unless the kernel is declared thread-safe (then dask-jobqueue's choice).
    walltime
        Each job's walltime: ``"HH:MM:SS"``, ``"D-HH:MM:SS"`` or ``"MM:SS"``
        (``"HH:MM"`` for LSF). Workers retire shortly before it (:func:`lifetime`).
    jobs
        Keep this many jobs running (an ended one is replaced). Default 1.
    adapt
        ``{"min": m, "max": n}``: between m and n jobs, as the work needs them.
    prologue
        Lines run in the job script before the worker starts (``module load ...``).
    interface
        Network interface of the workers and the scheduler (``"ib0"``).
    local_directory
        The workers' scratch folder (``"$TMPDIR"``).
    extra
        Any other keyword of the dask_jobqueue cluster class (``job_extra_directives``,
        ``log_directory``, ``worker_extra_args``, ``security``, ...).

    Examples
    --------
    >>> jq = JobQueue("slurm", queue="normal", cores=4, memory="16GB", walltime="01:00:00", jobs=2)
    >>> jq.planned_workers()
    8
    """

    kind: str = "slurm"
    queue: str | None = None
    account: str | None = None
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    walltime: str | None = None
    jobs: int | None = None
    adapt: Mapping[str, int] | None = None
    prologue: Sequence[str] = ()
    interface: str | None = None
    local_directory: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClusterError(f"JobQueue kind={self.kind!r} is not known; use one of {list(KINDS)}")
        for name in ("queue", "account", "interface", "local_directory"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ClusterError(f"JobQueue {name}={value!r} must be text, such as {name}='normal'")
        for name in ("cores", "processes", "jobs"):
            _positive(name, getattr(self, name))
        if self.walltime is not None:
            walltime_seconds(self.walltime, self.kind)
        if self.memory is not None and (
            not isinstance(self.memory, str) or not _MEMORY.match(self.memory) or not _bytes(self.memory)
        ):
            raise ClusterError(
                f"JobQueue memory={self.memory!r} needs a unit; use text such as memory='16GB'"
            )
        if self.jobs is not None and self.adapt is not None:
            raise ClusterError(
                f"JobQueue jobs={self.jobs!r} and adapt={dict(self.adapt)!r} were both given; "
                "use one: jobs=N (a fixed number) or adapt={'min': m, 'max': n}"
            )
        if self.adapt is not None:
            object.__setattr__(self, "adapt", _check_adapt(self.adapt))
        if self.processes and self.cores and self.processes > self.cores:
            raise ClusterError(
                f"JobQueue processes={self.processes} is more than cores={self.cores}; "
                f"use processes={self.cores} or fewer"
            )
        prologue = [self.prologue] if isinstance(self.prologue, str) else list(self.prologue or ())
        if not all(isinstance(line, str) for line in prologue):
            raise ClusterError(
                f"JobQueue prologue={self.prologue!r} must be lines of text, such as ['module load python']"
            )
        object.__setattr__(self, "prologue", tuple(prologue))
        if not isinstance(self.extra, Mapping):
            raise ClusterError(f"JobQueue extra={self.extra!r} must be a dict of dask_jobqueue keywords")
        object.__setattr__(self, "extra", dict(self.extra))
        if self.extra:
            _check_extra(self.kind, self.extra)

    __hash__ = None  # type: ignore[assignment]  # a dict inside

    # ------------------------------------------------------------- resolved values

    def _config(self, key: str) -> Any:
        return dask.config.get(f"jobqueue.{self.kind}.{key}", default=None)

    @property
    def cores_per_job(self) -> int | None:
        """Cores per job: given, else from dask's config."""
        return self.cores if self.cores is not None else self._config("cores")

    @property
    def processes_per_job(self) -> int:
        """Worker processes per job (daskbatch's default: one per core)."""
        if self.processes is not None:
            return self.processes
        cores = self.cores_per_job or 1
        configured = self._config("processes")
        if configured:
            return int(configured)
        _jobqueue()
        from dask_jobqueue.core import nprocesses_nthreads

        return nprocesses_nthreads(cores)[0]

    @property
    def worker_memory(self) -> int | None:
        """Bytes per worker process: a job's memory (given, else from dask's config)
        shared by its worker processes; None when unknown."""
        memory = self.memory if self.memory is not None else self._config("memory")
        total = _bytes(str(memory)) if memory is not None else 0
        return total // max(1, self.processes_per_job) if total else None

    @property
    def walltime_seconds(self) -> int:
        """The jobs' walltime in seconds (given, else from dask's config)."""
        value = self.walltime if self.walltime is not None else self._config("walltime")
        return walltime_seconds(str(value or "00:30:00"), self.kind)

    def planned_workers(self, n_workers: int | None = None) -> int:
        """Blocks that run at once on the cluster that will exist: jobs (or the most
        jobs ``adapt`` allows) × worker processes × threads per process."""
        processes = self.processes_per_job
        threads = max(1, (self.cores_per_job or processes) // processes)
        return self.n_jobs(n_workers) * processes * threads

    def n_jobs(self, n_workers: int | None = None) -> int:
        """Jobs at most: ``jobs``, ``adapt['max']``, else enough for ``n_workers``
        worker processes, else 1."""
        if self.adapt is not None:
            return max(1, self.adapt["max"])
        if self.jobs is not None:
            return self.jobs
        if n_workers is not None:
            return math.ceil(n_workers / self.processes_per_job)
        return 1

    def check_ready(self) -> None:
        """Refuse, before anything starts, what dask-jobqueue would fail on later:
        the batch system's submit command missing, no cores or memory per job."""
        _, command, system = KINDS[self.kind]
        if shutil.which(command) is None:
            raise ClusterError(
                f"cluster={self.kind!r} needs {system}'s {command} on PATH, and it is not found; "
                f"run on a login node of the {system} cluster (or load its module), or use cluster='local'"
            )
        self.check_resources()

    def check_resources(self) -> None:
        """Refuse jobs that could not be asked for: no cores or memory per job, or a bad walltime."""
        for name in ("cores", "memory"):
            if getattr(self, name) is None and self._config(name) is None:
                raise ClusterError(
                    f"cluster={self.kind!r} needs {name} per job: JobQueue({self.kind!r}, cores=4, "
                    f"memory='16GB'), or jobqueue.{self.kind}.{name} in ~/.config/dask/jobqueue.yaml"
                )
        if self.memory is None and (configured := self._config("memory")) and not _bytes(str(configured)):
            raise ClusterError(
                f"jobqueue.{self.kind}.memory={configured!r} in dask's config needs a unit, such as '16GB'"
            )
        self.walltime_seconds  # noqa: B018  (a walltime from the config is checked too)

    def describe(self, n_workers: int | None = None) -> str:
        """One line: what will run where."""
        jobs = self.n_jobs(n_workers)
        how = (
            f"{self.adapt['min']}-{self.adapt['max']} jobs (adaptive)"
            if self.adapt is not None
            else f"{jobs} job{'s' * (jobs != 1)}"
        )
        per = self.processes_per_job
        return (
            f"{self.kind} ({how} × {per} worker process{'es' * (per != 1)}, "
            f"{KINDS[self.kind][0]}, walltime {_walltime_for(self.kind, self.walltime_seconds)})"
        )


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        return 0


def _check_adapt(adapt: Any) -> dict[str, int]:
    if not isinstance(adapt, Mapping) or set(adapt) - {"min", "max"} or "max" not in adapt:
        raise ClusterError(
            f"JobQueue adapt={adapt!r} is not valid; use a dict such as adapt={{'min': 0, 'max': 10}}"
        )
    out = {"min": adapt.get("min", 0), "max": adapt["max"]}
    for key, value in out.items():
        _positive(f"adapt['{key}']", value, zero=key == "min")
    if out["min"] > out["max"]:
        raise ClusterError(f"JobQueue adapt={dict(adapt)!r}: min is more than max; use min <= max")
    return out


def _jobqueue() -> Any:
    """``dask_jobqueue``, imported with this process's SIGINT handler kept.

    Its ``runner`` module, imported with the package, sets a SIGINT handler that calls
    ``sys.exit()``: a Ctrl-C in the driver then ended the run with exit code 0 and
    without daskbatch's orderly stop (or, in a notebook, ended the kernel's cell
    handling). The handler that was there before is put back (in the main thread).
    """
    before = signal.getsignal(signal.SIGINT)
    import dask_jobqueue

    if before is not None and signal.getsignal(signal.SIGINT) is not before:
        with contextlib.suppress(ValueError):  # not the main thread: it cannot be changed here
            signal.signal(signal.SIGINT, before)
    return dask_jobqueue


def _cluster_class(kind: str) -> Any:
    try:
        dask_jobqueue = _jobqueue()
    except ImportError as e:
        raise ClusterError(
            f"cluster={kind!r} needs the package dask-jobqueue ({e}); `pip install dask-jobqueue`"
        ) from e
    return getattr(dask_jobqueue, KINDS[kind][0])


def _known_keywords(kind: str) -> list[str]:
    _jobqueue()
    from dask_jobqueue.core import Job, JobQueueCluster

    cls = _cluster_class(kind)
    names: set[str] = set()
    for f in (JobQueueCluster.__init__, Job.__init__, cls.job_cls.__init__):
        names |= {p for p, v in inspect.signature(f).parameters.items() if v.kind is v.POSITIONAL_OR_KEYWORD}
    return sorted(names - _NOT_EXTRA - set(_OWN))


def _check_extra(kind: str, extra: Mapping[str, Any]) -> None:
    for key in extra:
        if key in _OWN:
            raise ClusterError(f"JobQueue extra={{{key!r}: ...}}: use JobQueue({_OWN[key]}=...) instead")
    known = _known_keywords(kind)
    for key in extra:
        if key not in known:
            raise ClusterError(
                f"JobQueue extra={{{key!r}: ...}} is not an option of dask_jobqueue.{KINDS[kind][0]}; "
                f"the options are {known}"
            )


# --------------------------------------------------------------------------- arguments and scripts


def _resolved(jq: JobQueue, threadsafe: bool) -> JobQueue:
    """``jq`` with daskbatch's default processes: one single-threaded worker per core
    unless the kernel is thread-safe (then dask's config or dask-jobqueue decides)."""
    if jq.processes is not None or threadsafe:
        return jq
    cores = jq.cores_per_job
    return replace(jq, processes=int(cores)) if cores else jq


def cluster_arguments(jq: JobQueue) -> dict[str, Any]:
    """The keywords for the dask_jobqueue cluster class: only what was given (the
    rest comes from dask's config there), plus the workers' lifetime flags."""
    kw: dict[str, Any] = {}
    for name in ("queue", "cores", "memory", "processes", "interface", "local_directory"):
        value = getattr(jq, name)
        if value is not None:
            kw[name] = value
    if jq.account is not None:
        kw["account" if jq.kind in ("slurm", "pbs") else "project"] = jq.account
    if jq.walltime is not None:
        kw["walltime"] = jq.walltime if jq.kind == "slurm" else _walltime_for(jq.kind, jq.walltime_seconds)
    own = jq.prologue or jq._config("job-script-prologue") or []
    scratch = job_scratch_lines(users_temporary_directory())  # after the user's: it may set TMPDIR
    kw["job_script_prologue"] = [*job_script_lines(jq.kind, jq.walltime_seconds), *own, *scratch]
    extra = dict(jq.extra)
    args = list(extra.pop("worker_extra_args", None) or jq._config("worker-extra-args") or [])
    if not any(str(a).startswith("--lifetime") for a in args):
        life, stagger = lifetime(jq.walltime_seconds)
        args += ["--lifetime", f"{life}s", "--lifetime-stagger", f"{stagger}s"]
    kw["worker_extra_args"] = args
    kw.update(extra)
    return kw


def job_script(jq: JobQueue, threadsafe: bool = False) -> str:
    """The job script one worker job of ``jq`` would submit (the scheduler's address
    a placeholder, no TLS files); nothing is started or submitted."""
    jq = _resolved(jq, threadsafe)
    cls = _cluster_class(jq.kind)
    kw = cluster_arguments(jq)
    for key in ("security", "shared_temp_directory", "scheduler_options", "silence_logs"):
        kw.pop(key, None)
    kw.pop("n_workers", None)
    from .jobchecks import no_folder_left

    try:
        with no_folder_left(kw.get("log_directory")):
            job = cls.job_cls("tcp://<scheduler-address>:8786", name="dummy-name", **kw)
    except (TypeError, ValueError) as e:
        raise ClusterError(f"cluster={jq.kind!r}: dask-jobqueue refused the options ({e})") from e
    return str(job.job_script())


def for_kernel(spec: ClusterSpec, kernel: Any) -> ClusterSpec:
    """A jobqueue ``spec`` made ready for ``kernel`` and checked (the submit command
    on PATH, cores and memory known); any other spec as it is."""
    jq = spec.options
    if not isinstance(jq, JobQueue):
        return spec
    from .jobchecks import check_threads, slurm_accepts

    check_threads(jq, kernel)
    jq.check_ready()
    jq = _resolved(jq, kernel.threadsafe)
    if jq.jobs is None and jq.adapt is None:
        jq = replace(jq, jobs=jq.n_jobs(spec.n_workers))
    if jq.kind == "slurm":
        slurm_accepts(job_script(jq, kernel.threadsafe))
    return replace(spec, options=jq)


# --------------------------------------------------------------------------- starting one


def _sys_path_plugin(paths: Sequence[str]) -> Any:
    """A worker plugin that puts the driver's own module folders on every worker's
    ``sys.path``, workers that join later included (a kernel beside the script, on a
    shared filesystem, imports there as it does here). Made here, so that importing
    daskbatch does not import distributed; sent to the workers by value."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class SysPath(WorkerPlugin):
        name = "daskbatch-sys-path"

        def __init__(self, paths: Sequence[str]) -> None:
            self.paths = list(paths)

        def setup(self, worker: Any) -> None:
            import os
            import sys

            for p in self.paths:
                if p not in sys.path and os.path.isdir(p):
                    sys.path.append(p)

    return SysPath(paths)


def _user_paths() -> list[str]:
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for p in sys.path:
        real = os.path.realpath(p or os.getcwd())
        if not os.path.isdir(real) or "-packages" in real:
            continue
        if any(real == pre or real.startswith(pre + os.sep) for pre in prefixes):
            continue
        out.append(real)
    return list(dict.fromkeys(out))


def _security_arguments(jq: JobQueue) -> dict[str, Any]:
    """TLS with the run's temporary credentials, unless ``extra`` says otherwise."""
    if "security" in jq.extra or "protocol" in jq.extra:
        return {}
    shared = jq.extra.get("shared_temp_directory") or jq._config("shared-temp-directory")
    if not shared:
        shared = os.path.join(os.path.expanduser("~"), ".cache", "daskbatch", "tls")
        os.makedirs(shared, mode=0o700, exist_ok=True)
    return {"security": local_security(), "shared_temp_directory": shared}


@contextmanager
def _start_jobqueue(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    from distributed import Client

    jq = spec.options if isinstance(spec.options, JobQueue) else JobQueue(spec.name)
    cls = _cluster_class(jq.kind)
    kw = {**cluster_arguments(jq), **_security_arguments(jq)}
    kw["scheduler_options"] = scheduler_options(
        {**(jq._config("scheduler-options") or {}), **kw.get("scheduler_options", {})}
    )
    quiet = quiet_level()
    cluster = client = None
    with _quiet_logs(quiet):
        try:
            with _signals_deferred():
                try:
                    cluster = cls(**kw)
                except (TypeError, ValueError, OSError) as e:
                    raise ClusterError(f"cluster={jq.kind!r} did not start ({type(e).__name__}: {e})") from e
                client = Client(cluster, security=kw.get("security"))
                client.register_plugin(_sys_path_plugin(_user_paths()))
                if jq.adapt is not None:
                    cluster.adapt(minimum_jobs=jq.adapt["min"], maximum_jobs=jq.adapt["max"])
                else:
                    n = jq.n_jobs(spec.n_workers)
                    cluster.scale(jobs=n)
                    # adaptive between n and n: a job that ends (its walltime, scancel) is replaced
                    cluster.adapt(minimum_jobs=n, maximum_jobs=n)
            first = jq.adapt["min"] if jq.adapt is not None else 1
            if first:
                logger.info(f"cluster={jq.kind!r}: waiting for the first worker job to start")
                from .jobchecks import wait_for_a_worker

                wait_for_a_worker(client, cluster, jq.kind, KINDS[jq.kind][1])
            yield Executor(spec, client=client, cluster=cluster)
        finally:
            with _signals_deferred():
                if client is not None:
                    client.close()
                if cluster is not None:
                    with contextlib.suppress(Exception):
                        cluster.close()
                _finalize_clients()


@contextmanager
def _start_with_cluster(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    from distributed import Client

    client = Client(spec.options)
    try:
        client.register_plugin(_sys_path_plugin(_user_paths()))
        yield Executor(spec, client=client)
    finally:
        client.close()


def _match_kind(kind: str) -> Any:
    def match(cluster: Any, n_workers: int | None) -> ClusterSpec | None:
        if isinstance(cluster, str) and cluster == kind:
            return ClusterSpec(kind, n_workers, options=JobQueue(kind))
        if not isinstance(cluster, JobQueue) or cluster.kind != kind:
            return None
        if n_workers is not None and (cluster.jobs is not None or cluster.adapt is not None):
            raise ClusterError(
                f"n_workers={n_workers} cannot be used with JobQueue(jobs=...) or JobQueue(adapt=...); "
                "give one of them"
            )
        return ClusterSpec(kind, n_workers, options=cluster)

    return match


def _match_cluster(cluster: Any, n_workers: int | None) -> ClusterSpec | None:
    if "distributed" not in sys.modules:
        return None
    from distributed.deploy import Cluster

    if not isinstance(cluster, Cluster):
        return None
    if n_workers is not None:
        raise ClusterError(
            f"n_workers cannot be used with a running {type(cluster).__name__}; scale that cluster instead"
        )
    # the store records the scheduler's address: `daskbatch resume` connects to it again
    return ClusterSpec("deploy", None, address=cluster.scheduler_address, options=cluster)


def _count_planned(spec: ClusterSpec) -> int:
    cluster = spec.options
    threads = getattr(getattr(cluster, "_dummy_job", None), "worker_process_threads", 1) or 1
    planned = len(getattr(cluster, "plan", ()) or ()) * threads
    try:
        running = sum(w.get("nthreads", 1) for w in cluster.scheduler_info["workers"].values())
    except Exception:
        running = 0
    return max(1, planned, running)


def _register() -> None:
    for kind in KINDS:
        register_executor(
            kind,
            _start_jobqueue,
            workers_known_before_start=True,  # planned: jobs × processes, not the first one up
            starts_cluster=True,
            match=_match_kind(kind),
            hint="'slurm', 'pbs', 'sge' or 'lsf' (or a daskbatch.JobQueue)" if kind == "slurm" else None,
            describe=lambda spec: spec.options.describe(spec.n_workers),
            count_workers=lambda spec: spec.options.planned_workers(spec.n_workers),
        )
    register_executor(
        "deploy",
        _start_with_cluster,
        workers_known_before_start=True,
        probe_on_worker=True,
        match=_match_cluster,
        hint="a running distributed Cluster (dask_jobqueue.SLURMCluster, ...)",
        describe=lambda spec: f"{type(spec.options).__name__} at {spec.options.scheduler_address}",
        count_workers=_count_planned,
    )


_register()
