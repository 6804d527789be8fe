"""A real one-node SLURM for the tests: munge, slurmctld and slurmd, started and stopped here.

Registered by ``tests/conftest.py`` (``pytest_plugins``). A test asks for the session fixture
``slurm`` and carries ``@pytest.mark.slurm``; every test that uses the fixture is also marked
``serial`` here, so ``make test`` runs it in its second, one-process pytest run. The daemons run
as root with a private ``slurm.conf`` in a temporary directory (no systemd, nothing under
``/etc/slurm``); ``SLURM_CONF`` points at it for the whole session, so ``sbatch``, ``squeue``,
``scancel`` and dask-jobqueue in the test process and its children find the cluster.

Without the SLURM or munge daemons (or without root) the tests are skipped, except on CI
(``CI`` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

LOCK = Path(tempfile.gettempdir()) / "daskbatch-test-slurm.lock"
STATE = Path(tempfile.gettempdir()) / "daskbatch-test-slurm.json"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
MUNGE_PID = MUNGE_RUN / "munged.pid"
MUNGE_LOG = Path("/var/log/munge/munged.log")
OVERSUBSCRIBE = 4
DAEMONS = ("munged", "slurmctld", "slurmd")
TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# job states after which a job never runs again (squeue/scontrol long names)
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


@dataclass
class Slurm:
    """The running test cluster, as the ``slurm`` fixture yields it.

    Attributes
    ----------
    conf : Path
        The private ``slurm.conf`` (also in ``os.environ["SLURM_CONF"]``).
    partition : str
        The one partition, default for every job.
    node : str
        The one node's name (the short host name).
    cpus : int
        CPUs of the node.
    memory_mb : int
        Memory of the node in MB, as SLURM schedules it.
    workdir : Path
        The temporary directory with the configuration, state, logs and pid files.
    """

    conf: Path
    partition: str
    node: str
    cpus: int
    memory_mb: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def run(
        self, cmd: list[str] | str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM command (a list, or a string split on spaces) against this cluster.

        Raises
        ------
        AssertionError
            With the command's output and the daemons' logs, when ``check`` and it fails.
        """
        argv = cmd.split() if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}\n{self.logs()}"
            )
        return proc

    def sbatch(self, *args: str, cwd: str | Path | None = None) -> str:
        """Submit with ``sbatch --parsable ARGS`` (from ``cwd``) and return the job id."""
        argv = ["sbatch", "--parsable", *args]
        proc = subprocess.run(
            argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}\n{self.logs()}")
        return proc.stdout.strip().split(";")[0]

    def job(self, jobid: str) -> dict[str, str]:
        """The fields of ``scontrol show job -o JOBID`` (JobState, StdOut, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(jobid)]).stdout
        fields: dict[str, str] = {}
        for word in out.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_job(self, jobid: str, timeout: float = 60) -> str:
        """Wait until the job has ended and return its state (``COMPLETED``, ``CANCELLED``, ...).

        Raises
        ------
        AssertionError
            When the job has not ended after ``timeout`` seconds (with its record and the logs).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(jobid).get("JobState", "")
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {jobid} still {state or 'unknown'} after {timeout} s: "
                    f"{self.job(jobid)}\n{self.logs()}"
                )
            time.sleep(0.25)

    def jobs(self) -> list[str]:
        """Ids of the jobs still pending or running."""
        return self.run(["squeue", "-h", "-o", "%i"]).stdout.split()

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none is left in the queue."""
        deadline = time.monotonic() + timeout
        while ids := self.jobs():
            self.run(["scancel", *ids], check=False)
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs {ids} still queued after scancel\n{self.logs()}")
            time.sleep(0.25)

    def logs(self) -> str:
        """The daemons' log files, for error messages."""
        return _logs(self.workdir)


def _logs(workdir: Path) -> str:
    parts = []
    for path in (workdir / "slurmctld.log", workdir / "slurmd.log", MUNGE_LOG):
        name = path.name
        text = path.read_text(errors="replace")[-4000:] if path.exists() else "(none)"
        parts.append(f"--- {name} ---\n{text}")
    return "\n".join(parts)


def _missing() -> str | None:
    """Why this machine cannot run the test SLURM, or None when it can."""
    absent = [name for name in (*DAEMONS, *TOOLS) if not _which(name)]
    if absent:
        return (
            f"the test SLURM needs {', '.join(absent)}: "
            "run 'apt-get install slurm-wlm munge' (or 'make test-deps' as root)"
        )
    if os.geteuid() != 0:
        return "the test SLURM starts slurmd and munged, which needs root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the test SLURM needs the 'munge' user (the munge package creates it)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mb() -> int:
    """The machine's memory in MB less 1 GB (at least 512 MB) for everything but the jobs."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(512, int(line.split()[1]) // 1024 - 1024)
    return 1024


def write_conf(workdir: Path, node: str, cpus: int, memory_mb: int) -> Path:
    """Write a one-node ``slurm.conf`` whose state, spool, logs and pid files are in ``workdir``."""
    (workdir / "state").mkdir(exist_ok=True)
    (workdir / "spool").mkdir(exist_ok=True)
    lines = [
        "ClusterName=daskbatch-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CryptoType=crypto/munge",
        f"StateSaveLocation={workdir / 'state'}",
        f"SlurmdSpoolDir={workdir / 'spool'}",
        f"SlurmctldPidFile={workdir / 'slurmctld.pid'}",
        f"SlurmdPidFile={workdir / 'slurmd.pid'}",
        f"SlurmctldLogFile={workdir / 'slurmctld.log'}",
        f"SlurmdLogFile={workdir / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # a job without --mem gets 1 GB per CPU, not the whole node
        "DefMemPerCPU=1024",
        "ReturnToService=2",
        "KillWait=5",
        "InactiveLimit=0",
        "Waittime=0",
        "MinJobAge=3600",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=2,defer_batch=0",
        (
            f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} "
            f"RealMemory={memory_mb} State=UNKNOWN"
        ),
        # a driver job and its worker jobs all fit on a small node: each core takes up to
        # OVERSUBSCRIBE jobs at once (memory is still counted per job)
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP "
        f"OverSubscribe=FORCE:{OVERSUBSCRIBE}",
    ]
    conf = workdir / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _munge_works() -> bool:
    proc = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=20, check=False)
    return proc.returncode == 0


def start_munge(workdir: Path) -> int | None:
    """Start munged as the munge user, unless one already answers; return its pid if started."""
    if _munge_works():
        return None
    user = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        os.chown(MUNGE_KEY.parent, user.pw_uid, user.pw_gid)
        subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True)
        os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
        MUNGE_KEY.chmod(0o400)
    for path in (MUNGE_RUN, Path("/var/log/munge"), Path("/var/lib/munge")):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)
    MUNGE_RUN.chmod(0o755)
    munged = _which("munged") or "munged"
    proc = subprocess.run(
        ["runuser", "-u", "munge", "--", munged],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"munged exited {proc.returncode}: {proc.stderr}\n{_logs(workdir)}")
    deadline = time.monotonic() + 20
    while not _munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError(f"munged did not answer within 20 s\n{_logs(workdir)}")
        time.sleep(0.1)
    return int(MUNGE_PID.read_text().split()[0])


def _stat(pid: int) -> tuple[str, str, int] | None:
    """Command name, state letter and parent pid of ``pid``, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def _alive(pid: int, names: tuple[str, ...]) -> bool:
    """Whether ``pid`` is a running (not zombie) process whose command name is one of ``names``."""
    stat = _stat(pid)
    return stat is not None and stat[0] in names and stat[1] != "Z"


def stop_pids(pids: dict[str, int], timeout: float = 15) -> None:
    """Stop processes by pid: SIGTERM, then SIGKILL after ``timeout`` seconds.

    A key is the process's command name, optionally followed by ``:`` and anything; a pid
    whose process has another name (ended, and the pid reused) is left alone.
    """
    names = {key: (key.rsplit(":", 1)[0] if ":" in key else key,) for key in pids}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = {k: p for k, p in pids.items() if _alive(p, names[k])}
        for pid in live.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(_alive(p, names[k]) for k, p in live.items()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)


def _job_processes(workdir: Path) -> dict[str, int]:
    """The job steps (slurmstepd, which log into ``workdir``) of this cluster and all their
    descendants (the jobs' own processes), keyed ``comm:pid``."""
    parents: dict[int, int] = {}
    comms: dict[int, str] = {}
    roots = []
    for proc in Path("/proc").iterdir():
        stat = _stat(int(proc.name)) if proc.name.isdigit() else None
        if stat is None or stat[1] == "Z":
            continue
        pid = int(proc.name)
        comms[pid], parents[pid] = stat[0], stat[2]
        if stat[0] == "slurmstepd":
            with contextlib.suppress(OSError):
                if any(os.readlink(fd).startswith(str(workdir)) for fd in (proc / "fd").iterdir()):
                    roots.append(pid)
    found = set(roots)
    while grown := {pid for pid, ppid in parents.items() if ppid in found} - found:
        found |= grown
    return {f"{comms[pid]}:{pid}": pid for pid in found}


def _start_slurm(workdir: Path, env: dict[str, str], pids: dict[str, int]) -> None:
    """Start slurmctld and slurmd (they fork into the background) and record their pids."""
    for daemon in ("slurmctld", "slurmd"):
        path = _which(daemon) or daemon
        proc = subprocess.run(
            [path, "-f", env["SLURM_CONF"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        pidfile = workdir / f"{daemon}.pid"
        deadline = time.monotonic() + 15
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.returncode != 0 or not pidfile.exists():
            raise RuntimeError(
                f"{daemon} did not start (exit {proc.returncode}): {proc.stderr}\n{_logs(workdir)}"
            )
        pids[daemon] = int(pidfile.read_text().split()[0])
        STATE.write_text(json.dumps(pids))


def _wait_idle(cluster: Slurm, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = cluster.run(["sinfo", "-h", "-o", "%T"], check=False, timeout=20)
        state = proc.stdout.strip() or proc.stderr.strip()
        if state == "idle":
            return
        time.sleep(0.25)
    raise RuntimeError(f"the test SLURM node is not idle after {timeout} s: {state!r}\n{cluster.logs()}")


def _stop_stale() -> None:
    """Stop daemons a killed earlier session left behind (their pids are in STATE)."""
    if STATE.exists():
        with contextlib.suppress(ValueError, OSError):
            stop_pids({str(n): int(p) for n, p in json.loads(STATE.read_text()).items()})
        STATE.unlink(missing_ok=True)


@contextlib.contextmanager
def _session_lock(timeout: float = 600) -> Iterator[IO[str]]:
    """Hold the machine-wide lock of the test SLURM (one cluster at a time per machine)."""
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = LOCK.read_text().strip() or "?"
                    print(f"waiting for the test SLURM of process {holder} to end", file=sys.__stderr__)
                    waited = True
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"another test process holds {LOCK} (its own test SLURM) after {timeout} s;"
                        " SLURM tests must run in one process: mark them 'serial'"
                    ) from None
                time.sleep(0.5)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def running_slurm() -> Iterator[Slurm]:
    """Start munge (if none answers), slurmctld and slurmd; stop what was started on exit."""
    with _session_lock(), tempfile.TemporaryDirectory(prefix="daskbatch-slurm-") as tmp:
        _stop_stale()
        workdir = Path(tmp)
        workdir.chmod(0o755)  # not 0700: jobs of any user can read the configuration
        node = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        memory_mb = _memory_mb()
        conf = write_conf(workdir, node, cpus, memory_mb)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = Slurm(conf, "debug", node, cpus, memory_mb, workdir, env)
        pids: dict[str, int] = {}
        old_conf = os.environ.get("SLURM_CONF")
        try:
            munged = start_munge(workdir)
            if munged is not None:
                pids["munged"] = munged
                STATE.write_text(json.dumps(pids))
            _start_slurm(workdir, env, pids)
            _wait_idle(cluster)
            os.environ["SLURM_CONF"] = str(conf)
            yield cluster
        finally:
            if old_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old_conf
            with contextlib.suppress(Exception):
                if "slurmctld" in pids:
                    cluster.cancel_all(timeout=20)
            slurm = {n: p for n, p in pids.items() if n != "munged"}
            stop_pids(slurm)
            stop_pids(_job_processes(workdir), timeout=5)
            stop_pids({n: p for n, p in pids.items() if n == "munged"})
            STATE.unlink(missing_ok=True)


@pytest.hookimpl(tryfirst=True)  # before the `-m` selection, so that `-m slurm` finds them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``slurm`` fixture ``slurm``: ``make test`` runs them
    one after another in a pytest process of their own, on one SLURM, beside the other
    tests (they mostly wait for jobs)."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    """A running one-node SLURM; ``SLURM_CONF`` is set for the session. Skipped without it
    (failed on CI)."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so SLURM tests never skip)")
        pytest.skip(reason)
    with running_slurm() as cluster:
        yield cluster
