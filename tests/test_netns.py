"""Workers on other hosts: scheduler, workers and driver in network namespaces of their own.

The closest this machine gets to several nodes. The test makes three network namespaces
(a scheduler "node", a worker "node" and a login "node"), joined by veth pairs to a bridge
in the scheduler's namespace on a private 10.x.y.0/24 subnet, with no default route and
nothing attached to the machine's own network: no packet leaves them. Each namespace has
its own address and sees the others only over that link; all of them share the
filesystem, as nodes share a cluster filesystem. The real `dask scheduler`, `dask worker`
and `daskbatch run` commands run inside them (`ip netns exec`). Everything is removed at
the end, also when a test fails.

Needs root and iproute2's `ip`; skipped without them, except on CI (env CI set), where
that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daskbatch.testing import assert_stores_identical

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PREFIX = "dbtest-"

KERNEL = '''\
import os
import time

import numpy as np

import daskbatch as db

SEEN = {seen!r}


@db.kernel(outputs={{"y": db.Output()}})
def probe(a, b):
    """A small sum; on a dask worker, leaves the worker's address in SEEN/<pid>."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = None
    if address is not None:
        with open(os.path.join(SEEN, str(os.getpid())), "w") as f:
            f.write(address)
        time.sleep(0.02)
    return a * b + np.sin(a)
'''

SPEC = """\
kernel = "nsmodel:probe"
store = "{store}"
chunk_size = 6
progress = false

[space]
type = "grid"
[space.axes]
a = {{linspace = [0, 9, 10]}}
b = [1.0, 2.0, 3.0]
"""


def _skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it on CI, where every test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (on CI this test must run: run it as root with iproute2 installed)")
    pytest.skip(reason)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=True)


def _user_env(**extra: str) -> dict[str, str]:
    """A user's shell: nothing on PYTHONPATH, no CI-only dask settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DASK_")}
    return {**env, **extra}


@dataclass
class Nodes:
    """Three network namespaces on one private link, and the processes started in them."""

    scheduler: str
    workers: str
    login: str
    subnet: str  # "10.x.y"
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def scheduler_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def workers_ip(self) -> str:
        return f"{self.subnet}.2"

    @property
    def login_ip(self) -> str:
        return f"{self.subnet}.3"

    def start(
        self, ns: str, args: Sequence[str], log: Path, cwd: Path, env: dict[str, str]
    ) -> subprocess.Popen:
        """Start ``args`` in namespace ``ns`` (its own process group), output to ``log``."""
        with open(log, "wb") as out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    def run(self, ns: str, args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 240):
        """Run ``args`` in namespace ``ns`` to the end; a CompletedProcess with its output."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _remove(names: Sequence[str], procs: Sequence[subprocess.Popen]) -> None:
    """Kill every process started in the namespaces, then delete the namespaces."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=20)
    for ns in names:
        # anything left inside (a worker process that left its group): only ours live there
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _make_nodes(names: Sequence[str], subnet: str) -> None:
    """Namespaces, `lo` up in each, a bridge in the first, a veth pair to each other one."""
    first = names[0]
    for ns in names:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", first, "link", "add", "br0", "type", "bridge")
    _ip("-n", first, "addr", "add", f"{subnet}.1/24", "dev", "br0")
    _ip("-n", first, "link", "set", "br0", "up")
    for i, ns in enumerate(names[1:], start=2):
        # both ends made inside the namespaces: nothing is added to the machine's own network
        _ip("-n", first, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", first, "link", "set", f"v{i}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    """A scheduler node, a worker node and a login node: three network namespaces."""
    if os.geteuid() != 0:
        _skip_or_fail("network namespaces need root")
    if shutil.which("ip") is None:
        _skip_or_fail("network namespaces need iproute2's `ip` (apt-get install iproute2)")
    tag = secrets.token_hex(3)
    names = [f"{PREFIX}{tag}-{role}" for role in ("sched", "work", "login")]
    subnet = f"10.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
    made = Nodes(*names, subnet=subnet)
    try:
        try:
            _make_nodes(names, subnet)
        except subprocess.CalledProcessError as e:
            _skip_or_fail(f"cannot make network namespaces: {' '.join(e.cmd)}: {e.stderr.strip()}")
        for ns in names:
            routes = _ip("-n", ns, "route", "show").stdout
            assert "default" not in routes, routes
        yield made
    finally:
        _remove(names, made.procs)
        left = _ip("netns", "list").stdout
        assert not any(ns in left for ns in names), f"network namespaces left behind: {left}"


def _wait_for_workers(log: Path, n: int, procs: Sequence[subprocess.Popen], timeout: float = 90) -> list[str]:
    """The addresses of the first ``n`` workers the scheduler's log says registered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = [
            line.split("Register worker addr: ")[1].split()[0]
            for line in text.splitlines()
            if "Register worker addr: " in line
        ]
        if len(found) >= n:
            return found
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"exited early: {dead}\n{_logs(log.parent)}"
        time.sleep(0.3)
    raise AssertionError(f"{n} workers did not register within {timeout} s\n{_logs(log.parent)}")


def _logs(folder: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("*.log"))
    )


def _scheduler_address(file: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return json.loads(file.read_text())["address"]
        assert proc.poll() is None, f"the scheduler exited\n{_logs(file.parent)}"
        time.sleep(0.2)
    raise AssertionError(f"no scheduler file after {timeout} s\n{_logs(file.parent)}")


@dataclass
class Project:
    """A user's sweep on the shared filesystem: kernel module, spec, store, logs."""

    home: Path  # the kernel module and the spec
    store: Path
    logs: Path
    seen: Path  # one file per worker process that ran the kernel: its address


def _project(tmp_path: Path) -> Project:
    home, shared, logs, seen = (tmp_path / d for d in ("home", "shared", "logs", "seen"))
    for d in (home, shared, logs, seen):
        d.mkdir()
    store = shared / "out.zarr"
    (home / "nsmodel.py").write_text(KERNEL.format(seen=str(seen)))
    (home / "spec.toml").write_text(SPEC.format(store=store))
    return Project(home, store, logs, seen)


def _serial_reference(project: Project, tmp_path: Path) -> Path:
    """The same sweep run in one process, outside the namespaces."""
    ref = tmp_path / "ref.zarr"
    r = subprocess.run(
        [str(BIN / "daskbatch"), "run", "spec.toml", "--cluster", "serial", "--store", str(ref)],
        cwd=project.home,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return ref


def _start_cluster(
    nodes: Nodes,
    project: Project,
    extra: Sequence[str] = (),
    hide: Path | None = None,
) -> tuple[str, list[str]]:
    """A `dask scheduler` on the scheduler node and two `dask worker` processes on the
    worker node, found through a scheduler file on the shared filesystem; ``hide`` is a
    folder the workers cannot see (a tmpfs over it in their own mount namespace).
    Returns the scheduler's address and the addresses its workers registered with."""
    # scratch space of scheduler and workers in the test's folder, not /tmp/dask-scratch-space
    env = _user_env(DASK_TEMPORARY_DIRECTORY=str(project.logs))
    file = project.logs / "scheduler.json"
    sched = nodes.start(
        nodes.scheduler,
        [str(BIN / "dask"), "scheduler", "--host", nodes.scheduler_ip, "--port", "0", "--no-dashboard",
         "--scheduler-file", str(file), *extra],
        project.logs / "scheduler.log", project.logs, env,
    )  # fmt: skip
    address = _scheduler_address(file, sched)
    for i in range(2):
        worker = [str(BIN / "dask"), "worker", "--scheduler-file", str(file), "--nthreads", "1", "--nworkers", "1",
                  "--no-dashboard", "--local-directory", str(project.logs / f"w{i}"), *extra]  # fmt: skip
        if hide is not None:
            # a node that does not mount the user's home: the kernel's module is not there
            script = f'mount -t tmpfs none "{hide}" && exec "$@"'
            worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *worker]
        nodes.start(nodes.workers, worker, project.logs / f"worker{i}.log", project.logs, env)
    return address, _wait_for_workers(project.logs / "scheduler.log", 2, nodes.procs)


def _check_run(nodes: Nodes, project: Project, ref: Path, registered: list[str], protocol: str) -> None:
    """The store equals the serial run, and only the worker node's processes computed it."""
    assert_stores_identical(project.store, ref)
    assert all(a.startswith(f"{protocol}://{nodes.workers_ip}:") for a in registered), registered
    seen = {p.read_text() for p in project.seen.iterdir()}
    assert seen, "no worker ran the kernel"
    assert seen <= set(registered), (seen, registered)
    # the driver's client connected from the login node
    log = (project.logs / "scheduler.log").read_text()
    assert f"established connection to {protocol}://{nodes.login_ip}:" in log, log


def test_workers_on_another_node_write_one_store_that_equals_a_serial_run(nodes, tmp_path):
    """Scheduler, workers and driver on three "nodes" with their own addresses; the
    kernel's module is a file of the user's folder on the shared filesystem."""
    project = _project(tmp_path)
    ref = _serial_reference(project, tmp_path)
    address, registered = _start_cluster(nodes, project)
    assert address == f"tcp://{nodes.scheduler_ip}:{address.rsplit(':', 1)[1]}"

    r = nodes.run(
        nodes.login,
        [str(BIN / "daskbatch"), "run", "spec.toml", "--cluster", address],
        project.home,
        _user_env(),
    )
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{_logs(project.logs)}"
    _check_run(nodes, project, ref, registered, "tcp")
    # the login node reaches the scheduler, not the machine's own network
    routes = _ip("-n", nodes.login, "route", "show").stdout
    assert routes.split() and "default" not in routes


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and one certificate signed by it, made with openssl as docs/user-guide.md says."""
    folder.mkdir(mode=0o700)
    steps = [
        "req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=dask-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=dask -keyout dask.key -out dask.csr",
        "x509 -req -in dask.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out dask.pem",
    ]
    for step in steps:
        subprocess.run(["openssl", *step.split()], cwd=folder, capture_output=True, check=True, timeout=60)
    return {"ca": folder / "ca.pem", "cert": folder / "dask.pem", "key": folder / "dask.key"}


def test_a_tls_scheduler_you_start_yourself_serves_workers_and_a_driver_on_other_nodes(nodes, tmp_path):
    """The recipe of docs/user-guide.md ("A scheduler you start yourself: make it private
    too") across nodes; the workers cannot see the user's folder, so the kernel reaches
    them by value."""
    if shutil.which("openssl") is None:
        _skip_or_fail("the TLS recipe needs the openssl command")
    project = _project(tmp_path)
    ref = _serial_reference(project, tmp_path)
    tls = _make_certificates(tmp_path / "dask-tls")
    flags = ["--protocol", "tls", "--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
             "--tls-key", str(tls["key"])]  # fmt: skip
    address, registered = _start_cluster(nodes, project, extra=flags, hide=project.home)
    assert address.startswith(f"tls://{nodes.scheduler_ip}:")
    # the workers cannot import the kernel's module from the user's folder
    check = "import importlib.util, sys; sys.path.insert(0, sys.argv[1]); print(importlib.util.find_spec('nsmodel'))"
    hidden = nodes.run(
        nodes.workers,
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs none "{project.home}" && exec "$@"', "sh", sys.executable, "-c", check, str(project.home)],
        project.logs, _user_env(),
    )  # fmt: skip
    assert hidden.stdout.strip() == "None", hidden.stdout + hidden.stderr
    cmd = [str(BIN / "daskbatch"), "run", "spec.toml", "--cluster", address]

    # without the client's credentials: one line naming the keys, nothing computed
    r = nodes.run(nodes.login, cmd, project.home, _user_env())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "distributed.comm.tls" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not project.store.exists()

    client = _user_env(
        DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
        DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(tls["ca"]),
        DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(tls["cert"]),
        DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(tls["key"]),
    )
    r = nodes.run(nodes.login, cmd, project.home, client)
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{_logs(project.logs)}"
    _check_run(nodes, project, ref, registered, "tls")
