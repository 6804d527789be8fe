"""Shared fixtures: stores, schedulers (real ones), a remote scheduler in subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

# the session fixture `slurm`: a real one-node SLURM (tests/slurm_fixture.py)
pytest_plugins = ["slurm_fixture"]

ROOT = Path(__file__).resolve().parent.parent
# the schedulers that start processes are marked slow (`pytest -m "not slow"` skips them)
SCHEDULERS = [
    "serial",
    "threads",
    pytest.param("processes", marks=pytest.mark.slow),
    pytest.param("local", marks=pytest.mark.slow),
    pytest.param("remote", marks=pytest.mark.slow),
]

# Hypothesis, once for every test: no deadline (the suite runs on small, busy machines,
# where one slow example says nothing of the code); a test's own @settings only sets
# its number of examples. On CI (CI=true) the examples are the same on every run, so
# that a failure there shows again with HYPOTHESIS_PROFILE=ci on any machine.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "out.zarr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [shutil.which("dask") or "dask"]


@contextlib.contextmanager
def dask_processes(n_workers: int, env: dict[str, str], cwd: Path | None = None, worker_args=()):
    """A real `dask scheduler` and `dask worker` (single-threaded processes) on 127.0.0.1,
    started as subprocesses; yields the scheduler's address and kills both after."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # each in a process group of its own, which the end stops whole (nannies, workers)
    common = {
        "env": env,
        "cwd": cwd,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
    }
    host = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    sched = subprocess.Popen([*_dask_cli(), "scheduler", "--port", str(port), *host], **common)
    worker = subprocess.Popen(
        [
            *_dask_cli(),
            "worker",
            address,
            "--nworkers",
            str(n_workers),
            "--nthreads",
            "1",
            *host,
            *worker_args,
        ],
        **common,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout="5s") as c:
                    c.wait_for_workers(n_workers, timeout=60)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield address
    finally:
        # no test reads anything from them afterwards: stopped at once, not in order
        # (an orderly close of both took 6-9 s, the worker waiting on its nannies)
        for p in (worker, sched):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in (worker, sched):
            p.wait(timeout=20)


@pytest.fixture(scope="session")
def remote_scheduler():
    """A real `dask scheduler` and `dask worker` (2 single-threaded processes) on 127.0.0.1."""
    # the workers import kernels by module name, like any dask worker: test modules too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    with dask_processes(2, env, worker_args=("--memory-limit", "2GiB")) as address:
        yield address


@pytest.fixture(params=SCHEDULERS)
def cluster(request) -> str:
    """Every scheduler daskbatch offers, by name; 'remote' is a real scheduler address."""
    if request.param == "remote":
        return request.getfixturevalue("remote_scheduler")
    return request.param


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env=None):
    """Run the real `daskbatch` command in a subprocess (about a second of imports)."""
    exe = Path(sys.executable).with_name("daskbatch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "daskbatch.cli"]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the `daskbatch` command in this process: ``cli(*args, cwd=None)`` returns a
    CompletedProcess with the exit code and what the command printed.

    For cases where the command's text and exit code are the point; each command keeps
    at least one test that starts the real `daskbatch` in a subprocess (`run_cli`).
    With ``cwd``, the test stays in that folder until it ends. An exception that the
    command does not turn into an exit code (a bug: a traceback) fails the test.
    """
    from daskbatch.cli import main

    def call(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # only this command's output
        # the command puts a spec's or store's folders first on the import path (for
        # itself and its workers): in this process, only until it returns
        monkeypatch.setattr(sys, "path", list(sys.path))
        monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors (exit 2) and --help
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["daskbatch", *args], code, out, err)

    return call
