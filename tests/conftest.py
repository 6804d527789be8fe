"""Shared fixtures: stores, schedulers (real ones), a remote scheduler in subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEDULERS = ["serial", "threads", "processes", "local", "remote"]


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
    started as subprocesses; yields the scheduler's address and stops both after."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = {"env": env, "cwd": cwd, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
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
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


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
    """Run the real `daskbatch` command in a subprocess."""
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
