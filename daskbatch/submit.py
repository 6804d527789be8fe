"""``daskbatch submit``: the driver of a run as a batch job of SLURM or PBS.

The job runs ``daskbatch run SPEC`` (which continues an unfinished store), so the
user can log out. :func:`prepare` checks everything that can be checked on the
login node (the spec, the walltime, where the store lives) and returns a
:class:`Submission`, whose :meth:`~Submission.script` is the job script and
:func:`submit` hands it to ``sbatch``/``qsub``: one job, or a chain of ``N`` jobs,
each starting after the one before ends (``afterany``), each continuing the store.
A job of a chain that finds the store complete ends at once.

The driver is the job's main process (``exec``): SIGTERM, which SLURM sends
before the walltime (``--signal=B:TERM@<seconds>``) and both schedulers send at it,
stops the run in order, leaving a resumable store. Its log file lives beside the
store (``<store>.logs/``), on the filesystem every node sees. The job id is recorded
in the store's history (``SLURM_JOB_ID`` / ``PBS_JOBID``).

``python -m daskbatch.submit --complete STORE SPEC`` (the check a job makes first)
exits 0 with one line when the store holds every result the spec asks for, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClusterError, StoreError

__all__ = ["Submission", "node_local", "parse_walltime", "prepare", "submit"]

#: what ``submit`` submits to, and the command that does it
SUBMITTERS = {"slurm": "sbatch", "pbs": "qsub"}
NAMES = {"slurm": "SLURM", "pbs": "PBS"}
#: where the store of a submitted run must not be: storage only one node sees
LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
LOCAL_FSTYPES = ("tmpfs", "ramfs", "devtmpfs")
DRIVER_MEMORY = 2 * 2**30  # a driver whose workers are jobs of their own
PLACEHOLDER = "<id of job {}>"
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")


def parse_walltime(text: str, where: str = "--walltime") -> int:
    """Seconds of a walltime written ``HH:MM:SS`` or ``D-HH:MM:SS``.

    Examples
    --------
    >>> parse_walltime("12:00:00"), parse_walltime("1-00:30:00")
    (43200, 88200)
    """
    m = _WALLTIME.match(str(text).strip())
    if m is None or int(m[3]) > 59 or int(m[4]) > 59 or (m[1] and int(m[2]) > 23):
        raise ClusterError(
            f"{where} {text!r} is not a walltime; write HH:MM:SS (12:00:00) or D-HH:MM:SS (2-00:00:00)"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ClusterError(f"{where} {text!r} is zero; give the job some time, e.g. 01:00:00")
    if total < 60:
        raise ClusterError(
            f"{where} {text!r} is under a minute; batch systems count walltimes in minutes: give at "
            "least 00:01:00, e.g. 01:00:00"
        )
    return total


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours past 24 as they are), which both SLURM and PBS read.

    >>> format_walltime(93784)
    '26:03:04'
    """
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _mounts() -> list[tuple[str, str]]:
    """``(mount point, fs type)`` of every mount (``/proc/mounts``), longest first."""
    try:
        text = Path("/proc/mounts").read_text()
    except OSError:
        return []
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:  # octal escapes: a space is \040
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            mounts.append((point, fields[2]))
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def node_local(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is on storage only this node sees, or None when nothing says so.

    Node-local: ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``$TMPDIR``, and any tmpfs or
    ramfs (per ``/proc/mounts``). A local disk elsewhere cannot be told apart from a
    shared one, so it passes.

    Examples
    --------
    >>> node_local("/dev/shm/sweep.zarr")
    '/dev/shm/sweep.zarr is under /dev/shm'
    """
    p = Path(os.path.abspath(path)).resolve()
    dirs = [Path(d) for d in LOCAL_DIRS]
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir and Path(tmpdir).resolve() != Path("/"):
        dirs.insert(0, Path(tmpdir))
    for d in dirs:
        for form in {d, d.resolve()}:
            if p.is_relative_to(form):
                return f"{p} is under {form}"
    for point, fstype in _mounts():
        if p.is_relative_to(point):
            return f"{p} is on a {fstype} mounted at {point}" if fstype in LOCAL_FSTYPES else None
    return None


def _memory_bytes(value: Any) -> int:
    from dask.utils import parse_bytes

    return int(value) if isinstance(value, int | float) else int(parse_bytes(str(value)))


#: the most jobs ``--chain`` submits at once (a queue's own limit is often lower)
MAX_CHAIN = 1000


@dataclass(frozen=True)
class Submission:
    """One driver job (or a chain of them), checked and ready to submit."""

    scheduler: str  #: "slurm" or "pbs"
    spec: Path  #: absolute
    store: Path  #: absolute
    walltime: int  #: seconds
    chain: int = 1
    queue: str | None = None
    account: str | None = None
    prologue: tuple[str, ...] = ()
    cores: int = 1
    memory: int = DRIVER_MEMORY  #: bytes
    cwd: Path = Path("/")
    python: str = sys.executable
    #: more arguments of the job's ``daskbatch run`` (``--kernel-changed continue``)
    run_args: tuple[str, ...] = ()
    #: jobs of this store's script already queued or running (SLURM): the first job of
    #: this submission starts after the last of them
    after: tuple[str, ...] = ()
    #: the store holds every result the spec asks for already: nothing to submit
    complete: bool = False

    @property
    def logs(self) -> Path:
        """The folder of the jobs' log files and script, beside the store."""
        return self.store.with_name(self.store.name + ".logs")

    @property
    def name(self) -> str:
        stem = self.store.name.removesuffix(".zarr") or "run"
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"daskbatch-{stem}")
        return name if self.scheduler == "slurm" else name[:15]

    @property
    def signal_lead(self) -> int:
        """Seconds before the walltime that SLURM sends SIGTERM: a tenth, 10 to 120 s."""
        return min(120, max(10, self.walltime // 10))

    def log_file(self, job: str) -> Path:
        """The log file of job ``job`` (standard output and error together)."""
        return self.logs / f"daskbatch-{job}.out"

    def driver(self) -> list[str]:
        """The command the job runs: ``daskbatch run SPEC --no-progress``."""
        exe = Path(self.python).with_name("daskbatch")
        base = [str(exe)] if exe.exists() else [self.python, "-m", "daskbatch.cli"]
        return [*base, "run", str(self.spec), "--no-progress", *self.run_args]

    def _header(self) -> list[str]:
        walltime, mb = format_walltime(self.walltime), math.ceil(self.memory / 2**20)
        if self.scheduler == "slurm":
            # sbatch expands %-patterns in the path: a % of the folder's own is written %%
            log = _sbatch_path(str(self.logs).replace("%", "%%") + "/daskbatch-%j.out")
            lines = [
                f"--job-name={self.name}",
                f"--time={walltime}",
                f"--signal=B:TERM@{self.signal_lead}",
                f"--output={log}",
                f"--error={log}",
                "--ntasks=1",
                f"--cpus-per-task={self.cores}",
                f"--mem={mb}M",
            ]
            lines += [f"--partition={self.queue}"] * bool(self.queue)
            lines += [f"--account={self.account}"] * bool(self.account)
            return [f"#SBATCH {line}" for line in lines]
        lines = [
            f"-N {self.name}",
            f"-l walltime={walltime}",
            f"-l select=1:ncpus={self.cores}:mem={mb}MB",
            "-j oe",
            f"-o {self.logs}/",
        ]
        lines += [f"-q {self.queue}"] * bool(self.queue)
        lines += [f"-A {self.account}"] * bool(self.account)
        return [f"#PBS {line}" for line in lines]

    def script(self) -> str:
        """The job script (the same for every job of a chain)."""
        q = shlex.quote
        job = "SLURM_JOB_ID" if self.scheduler == "slurm" else "PBS_JOBID"
        lines = ["#!/bin/bash", *self._header()]
        lines.append(f"# the driver of daskbatch run {q(str(self.spec))} (written by daskbatch submit)")
        if self.scheduler == "pbs":  # PBS copies its own output file back only at the end
            lines.append(f'exec >{q(str(self.logs))}/daskbatch-"${{{job}}}".out 2>&1')
        if self.prologue:
            lines += ["# prologue lines of the spec's [cluster] table", *self.prologue]
        lines += [
            f"cd {q(str(self.cwd))} || exit 1",
            f'echo "daskbatch: job ${{{job}}} on $(hostname) from $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
            "# a job of a chain that finds the store complete has nothing to do",
            f"if {q(self.python)} -m daskbatch.submit --complete {q(str(self.store))} {q(str(self.spec))}; "
            "then exit 0; fi",
            "# the driver is the job's main process: SIGTERM stops it in order, the store resumable",
            "exec " + " ".join(q(a) for a in self.driver()),
        ]
        return "\n".join(lines) + "\n"

    def command(self, after: str | None = None) -> list[str]:
        """The command that submits one job of the chain (after job ``after``)."""
        if self.scheduler == "slurm":
            return ["sbatch", "--parsable", *([f"--dependency=afterany:{after}"] * bool(after))]
        return ["qsub", *(["-W", f"depend=afterany:{after}"] * bool(after))]

    def dry_run(self) -> str:
        """What ``--dry-run`` prints: the script, then the commands that would submit it."""
        script = self.logs / f"daskbatch.{self.scheduler}"
        out = [f"# the job script ({script})", self.script().rstrip("\n"), ""]
        out.append(
            "# would submit it with:"
            if self.chain == 1
            else f"# would submit {self.chain} jobs, each starting after the one before ends:"
        )
        for i in range(1, self.chain + 1):
            after = PLACEHOLDER.format(i - 1) if i > 1 else self.after[-1] if self.after else None
            out.append(" ".join([*self.command(after), shlex.quote(str(script))]))
        return "\n".join(out)


def _sbatch_path(text: str) -> str:
    return f'"{text}"' if re.search(r"\s", text) else text


def prepare(
    spec: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    walltime: str | None = None,
    chain: int = 1,
    allow_local_store: bool = False,
    kernel_changed: str = "refuse",
) -> Submission:
    """Check a submission as far as the login node can; raise one line when it cannot work.

    ``scheduler`` (``"slurm"``/``"pbs"``) defaults to the kind of the spec's
    ``[cluster]`` table; ``walltime`` to its ``walltime``. An existing store is checked
    as the job's run would check it (another run holding it, a kernel, space or
    constants that differ), so that a refusal comes now, not from the queue; with
    ``kernel_changed="continue"`` the job goes on with an edited kernel.
    """
    from .hpc import KINDS, walltime_seconds
    from .specfile import load_spec

    if chain < 1:
        raise ClusterError(f"--chain {chain} is not a number of jobs; give 1 or more (--chain 4)")
    if chain > MAX_CHAIN:
        raise ClusterError(
            f"--chain {chain:,} jobs are more than {MAX_CHAIN:,}; give at most {MAX_CHAIN:,} (a longer "
            "walltime needs fewer), and submit again once they have run if the store is not complete"
        )
    seconds = parse_walltime(walltime) if walltime is not None else None
    path = Path(os.path.abspath(spec))
    run = load_spec(path)  # checks the spec and imports the kernel, as the job will
    store = Path(os.path.abspath(run["store"]))
    cluster = run["cluster"]
    kind = str(getattr(cluster, "kind", cluster))
    if kind in KINDS and kind not in SUBMITTERS:
        raise ClusterError(
            f"the spec's cluster is {kind!r}; daskbatch submit sends the driver to SLURM or PBS only: "
            f"run the driver on the login node (daskbatch run {shlex.quote(str(path))}, under tmux)"
        )
    if scheduler is None:
        if kind not in SUBMITTERS:
            raise ClusterError(
                f"the spec's cluster is {kind!r}: say where the driver job goes with --slurm or --pbs"
            )
        scheduler = kind
    elif kind in SUBMITTERS and kind != scheduler:
        raise ClusterError(
            f"--{scheduler} with a spec whose cluster is {kind!r}: its workers are {NAMES[kind]} jobs; "
            f"submit with --{kind}, or change the spec's cluster"
        )
    table = cluster if kind in KINDS else None  # a daskbatch.JobQueue: the [cluster] table
    if seconds is None:
        if getattr(table, "walltime", None) is None:
            raise ClusterError(
                f"no walltime for the driver job: give --walltime HH:MM:SS, or walltime = "
                f'"HH:MM:SS" in the [cluster] table of {path}'
            )
        seconds = walltime_seconds(table.walltime, kind)
    reason = None if allow_local_store else node_local(store)
    if reason is not None:
        raise StoreError(
            f"store {str(store)!r} is on node-local storage ({reason}): the store must be on a "
            "filesystem every node sees (a home, project or parallel filesystem); "
            "--allow-local-store skips this check for a one-node test"
        )
    # jobs of this store still queued or running: the new ones follow them (a store one of
    # them holds is no refusal then); the other checks stand
    after = (
        queued_jobs(store.with_name(store.name + ".logs") / "daskbatch.slurm") if scheduler == "slurm" else ()
    )
    complete = _check_store(run, kernel_changed, lock=not after)
    if kind in KINDS:  # the driver job would stop on these, after its wait in the queue
        _check_workers(kind, cluster, run)
    cores, memory = 1, DRIVER_MEMORY
    if table is None and "://" not in kind:  # the work runs inside the driver's job
        cores = int(run.get("n_workers") or 1)
        if run.get("memory_limit") is not None:
            memory = cores * _memory_bytes(run["memory_limit"])
    return Submission(
        scheduler=scheduler,
        spec=path,
        store=store,
        walltime=seconds,
        chain=chain,
        queue=getattr(table, "queue", None),
        account=getattr(table, "account", None),
        prologue=tuple(getattr(table, "prologue", None) or ()),
        cores=cores,
        memory=memory,
        cwd=Path.cwd(),
        python=os.path.abspath(sys.executable),
        run_args=("--kernel-changed", kernel_changed) if kernel_changed != "refuse" else (),
        after=after,
        complete=complete and not after,
    )


def _check_workers(kind: str, cluster: Any, run: dict[str, Any]) -> None:
    """The run's checks of its worker jobs, as ``daskbatch plan`` makes them: resources,
    threads for the kernel, and (on SLURM) ``sbatch --test-only`` of the workers' script.
    Away from the batch system (``--dry-run`` on a laptop) those that need it are left out."""
    from .executors import parse_cluster
    from .hpc import KINDS, JobQueue, for_kernel
    from .jobchecks import check_threads

    jq = cluster if isinstance(cluster, JobQueue) else JobQueue(kind)
    if shutil.which(KINDS[kind][1]) is None:
        check_threads(jq, run["kernel"])
        jq.check_resources()
    else:
        for_kernel(parse_cluster(jq, run.get("n_workers")), run["kernel"])


def queued_jobs(script: Path) -> tuple[str, ...]:
    """The ids of this user's SLURM jobs that run ``script`` and are queued or running, in
    the order they were submitted; none when squeue cannot say."""
    try:
        r = subprocess.run(
            [
                "squeue",
                "-h",
                "-u",
                getpass.getuser(),
                "-t",
                "PENDING,RUNNING,CONFIGURING,SUSPENDED",
                "-o",
                "%i|%o",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired, KeyError):
        return ()
    if r.returncode != 0:
        return ()
    ids = [
        job.strip()
        for job, _, command in (line.partition("|") for line in r.stdout.splitlines())
        if job.strip().isdigit() and os.path.realpath(command.strip()) == os.path.realpath(script)
    ]
    return tuple(sorted(ids, key=int))


def _check_store(run: dict[str, Any], kernel_changed: str, lock: bool = True) -> bool:
    """The run's checks of an existing store, on the login node (see :func:`prepare`);
    whether it holds every result the spec asks for already."""
    from .engine import check_existing_store
    from .errors import DaskbatchError

    try:
        return check_existing_store({**run, "progress": False, "kernel_changed": kernel_changed}, lock=lock)
    except DaskbatchError as e:
        text = _for_submit(str(e))
        try:
            error = type(e)(f"{text}; nothing was submitted")
        except TypeError:  # an error type that takes more than a message
            error = DaskbatchError(f"{text}; nothing was submitted")
        raise error from None


def _for_submit(text: str) -> str:
    """A run's refusal in the words of ``daskbatch submit``, which has no ``--overwrite``
    (every job of a chain would start the store again)."""
    text = text.replace(
        "To discard those results and start again: overwrite=True (--overwrite).",
        "To discard those results and start again: remove or rename the store, then submit.",
    )
    text = text.replace(
        "Pass overwrite=True (--overwrite) to discard it and start again",
        "Remove or rename the store to start again",
    )
    text = text.replace("kernel_changed='continue' (--kernel-changed continue)", "--kernel-changed continue")
    if "overwrite" in text:
        text += (
            "; daskbatch submit has no --overwrite: to start again, remove or rename the store, then submit"
        )
    return text


def _job_id(stdout: str, scheduler: str) -> str:
    """The job id ``sbatch --parsable`` (``123`` or ``123;cluster``) or ``qsub`` printed."""
    text = stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""
    return text.split(";")[0] if scheduler == "slurm" else text


def submit(sub: Submission) -> list[str]:
    """Submit ``sub``'s job(s); return their ids, in order.

    Writes the job script and makes the log folder beside the store first.
    """
    command = SUBMITTERS[sub.scheduler]
    if shutil.which(command) is None:
        raise ClusterError(
            f"daskbatch submit --{sub.scheduler} needs {NAMES[sub.scheduler]}'s {command} on PATH: "
            "run it on the cluster's login node"
        )
    _own_folder(sub.logs)  # its logs show the dashboard's token; the job runs its script
    script = sub.logs / f"daskbatch.{sub.scheduler}"
    _write_aside(script, sub.script())
    ids: list[str] = []
    for i in range(sub.chain):
        after = ids[-1] if ids else sub.after[-1] if sub.after else None
        args = [*sub.command(after), str(script)]
        done = subprocess.run(args, capture_output=True, text=True, cwd=sub.cwd)
        job = _job_id(done.stdout, sub.scheduler) if done.returncode == 0 else ""
        if not job:
            why = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()
            so_far = f"; submitted before it: {', '.join(ids)}" if ids else ""
            raise ClusterError(f"{command} refused job {i + 1} of {sub.chain}: {why[-1]}{so_far}")
        ids.append(job)
    return ids


def _own_folder(path: Path) -> None:
    """Make the jobs' log folder (mode 0700), or check the one there: it must be a folder
    of this user's, not a link; one that others may write or read is made 0700. A folder
    another user made there (a shared project or scratch folder) is refused: they could
    change the job script between its writing and sbatch reading it, or read the logs."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        what = "a link" if stat.S_ISLNK(st.st_mode) else f"owned by uid {st.st_uid}"
        raise ClusterError(
            f"the jobs' log folder {str(path)!r} exists and is not a folder of yours ({what}): another "
            "user could change the job script in it. Remove it (or move the store), then submit again"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_aside(path: Path, text: str) -> None:
    """Write ``path`` as a new file beside it, then rename it into place: whatever was at
    ``path`` (a link, a FIFO) is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def report(sub: Submission, ids: Sequence[str]) -> str:
    """What ``daskbatch submit`` prints once the jobs are in the queue."""
    q = shlex.quote
    lines = [
        f"daskbatch: submitted job {ids[0]} ({NAMES[sub.scheduler]}) running "
        f"daskbatch run {q(str(sub.spec))}, walltime {format_walltime(sub.walltime)}"
    ]
    if sub.after:
        lines.append(
            f"  after job {sub.after[-1]}: this store's jobs {', '.join(sub.after)} are queued or running"
        )
    if len(ids) > 1:
        lines.append(f"  then {', '.join(ids[1:])}, each after the one before ends")
    lines.append(f"log:     {sub.log_file(ids[0])}")
    lines.append(f"follow:  daskbatch status {q(str(sub.store))}")
    if sub.scheduler == "slurm":
        lines.append(f"queue:   squeue -j {','.join(ids)}   cancel: scancel {' '.join(ids)}")
    else:
        lines.append(f"queue:   qstat {' '.join(ids)}   cancel: qdel {' '.join(ids)}")
    return "\n".join(lines)


def _complete(store: str, spec: str | None = None) -> int:
    """Exit code of ``--complete STORE SPEC``: 0 (and one line) when the store holds every
    result the spec asks for (a grown design, added files or rows, another ``until``
    round are not), 1 otherwise, and whenever it cannot tell: the driver then decides.
    Without ``SPEC`` (a job script written by an older daskbatch) always 1."""
    if spec is None:
        return 1
    try:
        from .engine import _run_request
        from .specfile import load_spec

        done = _run_request({**load_spec(Path(spec)), "progress": False}).finished()
    except Exception:  # no store yet, a refusal, a kernel that does not import: the run says
        return 1
    if done is None:
        return 1
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
    who = f"job {job}" if job else "this job"
    print(f"daskbatch: store {store!r} is complete ({done.blocks_total:,} blocks); {who} has nothing to do")
    return 0


if __name__ == "__main__":  # pragma: no cover (run by the job script)
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "--complete":
        sys.exit("usage: python -m daskbatch.submit --complete STORE SPEC")
    sys.exit(_complete(*sys.argv[2:]))
