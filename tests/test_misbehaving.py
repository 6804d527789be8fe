"""Kernels that misbehave, and kernels that travel to workers that do not have them.

Kernels calling sys.exit, raising KeyboardInterrupt, ending their process, leaving a
thread behind, exceeding a worker's memory limit, aborting; kernels in a user's own
module run on a scheduler and workers (real processes) that cannot import it.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import dask_processes, run_cli

import daskbatch as db
from daskbatch.cluster import KernelCrashError, WorkerImportError
from daskbatch.testing import blocks_done, daskbatch_command, misbehave, run_killed

IDS = db.Table({"i": np.arange(24)})
FAILED, CRASHED = db.STATUS["failed"], db.STATUS["crashed"]


def _spec(tmp_path: Path, cluster: str, how: str, bad=(3, 21), n: int = 24, kernel: str = "") -> Path:
    spec = tmp_path / f"{how}.toml"
    spec.write_text(
        f'kernel = "{kernel or "daskbatch.testing:misbehave"}"\nstore = "{how}.zarr"\n'
        f'cluster = "{cluster}"\nworkers = 2\nchunk_size = 8\n'
        f'[constants]\nbad = {list(bad)}\nhow = "{how}"\n'
        f'[space]\ntype = "grid"\naxes = {{i = {{linspace = [0, {n - 1}, {n}]}}}}\n'
    )
    return spec


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("daskbatch: error")]


# --------------------------------------------------------------------------- sys.exit, KeyboardInterrupt


@pytest.mark.parametrize("cluster", ["serial", "processes", "local"])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("exit", "SystemExit: the kernel called sys.exit(3)"),
        ("interrupt", "KeyboardInterrupt raised by the kernel"),
    ],
)
def test_sys_exit_and_keyboard_interrupt_in_a_kernel_are_that_samples_failure(
    tmp_path, cluster, how, message
):
    """Sample 3 is among the probe's first 16, sample 21 is not."""
    store = tmp_path / "m.zarr"
    workers = None if cluster == "serial" else 2
    res = db.run(
        misbehave,
        IDS,
        store,
        cluster=cluster,
        n_workers=workers,
        chunk_size=8,
        progress=False,
        constants={"bad": [3, 21], "how": how},
    )
    assert res.complete and res.samples["ok"] == 22 and res.samples["failed"] == 2
    status = db.open(store).status.values
    assert status[3] == status[21] == FAILED
    assert sorted(e["sample"] for e in res.errors) == ["sample 21", "sample 3"]
    assert all(e["error"] == message for e in res.errors)
    assert all("testing.py" in e["where"] for e in res.errors)


def test_sys_exit_in_a_kernel_on_the_cli_is_recorded_and_the_command_succeeds(tmp_path):
    r = run_cli("run", str(_spec(tmp_path, "serial", "exit")), "--no-progress", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "SystemExit: the kernel called sys.exit(3)" in r.stdout
    assert "22 ok, 2 failed" in r.stdout


def test_a_real_ctrl_c_still_stops_a_serial_run(tmp_path):
    """A SIGINT delivered to the driver while the kernel runs in it is not the kernel's
    KeyboardInterrupt: the run stops, resumable."""
    spec = tmp_path / "slow.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "slow.zarr"\ncluster = "serial"\n'
        "chunk_size = 4\n[constants]\ndelay = 0.05\n"
        '[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 400]}}\n'
    )
    k = run_killed(
        daskbatch_command("run", str(spec), "--no-progress"),
        until=lambda: blocks_done(tmp_path / "slow.zarr") > 0,  # a block committed: the kernel runs
        signum=signal.SIGINT,
        group=False,  # the driver only, where the kernel runs on "serial"
        cwd=tmp_path,
        poll=0.05,
        timeout=60,
    )
    assert k.caught and k.signalled, k.stderr
    assert k.returncode != 0, k.stdout
    assert "interrupted" in k.stderr
    assert not db.status(tmp_path / "slow.zarr").complete


# --------------------------------------------------------------------------- a process exit in the probe


@pytest.mark.parametrize(("cluster", "busy"), [("serial", False), ("threads", False), ("serial", True)])
def test_a_kernel_ending_the_process_in_the_probe_on_serial_is_a_clear_error(tmp_path, cluster, busy):
    """``busy``: the driver runs another thread and has a forkserver (as after a run on
    worker processes), so the probe forks from the forkserver."""
    import threading

    from daskbatch.cluster import ClusterSpec, prestart

    if busy:
        prestart(ClusterSpec("processes", None))
    store = tmp_path / "x.zarr"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    if busy:
        other.start()
    try:
        with pytest.raises(KernelCrashError, match=r"sample 3 ended the process that ran it \(exit code 0"):
            db.run(
                misbehave,
                IDS,
                store,
                cluster=cluster,
                chunk_size=8,
                progress=False,
                constants={"bad": [3], "how": "os_exit", "code": 0},
            )
    finally:
        stop.set()
    assert not store.exists()


def test_a_kernel_ending_the_process_in_the_probe_on_the_cli_exits_2_with_one_line(tmp_path):
    spec = _spec(tmp_path, "serial", "os_exit", bad=[5])
    text = spec.read_text().replace('how = "os_exit"', 'how = "os_exit"\ncode = 0')
    spec.write_text(text)
    r = run_cli("run", str(spec), "--no-progress", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "cluster='local'" in lines[0], lines
    assert re.search(r"\bsample 5\)? ended the process", lines[0]), lines  # "i=5 (sample 5)" on a grid
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- a thread left running


@pytest.mark.parametrize("cluster", ["serial", "threads", "processes", "local"])
def test_a_kernel_that_leaves_a_thread_running_does_not_keep_the_command_alive(tmp_path, cluster):
    spec = _spec(tmp_path, cluster, "thread", bad=[3, 21])
    r = run_cli("run", str(spec), "--no-progress", cwd=tmp_path, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "24 ok" in r.stdout
    if cluster in ("serial", "threads"):  # the driver says it; workers say it in their logs
        assert "left a thread running ('left-behind-" in r.stderr


def test_run_on_serial_returns_and_the_left_thread_does_not_block_exit(tmp_path):
    script = tmp_path / "drv.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np, daskbatch as db
            from daskbatch.testing import blocks_done, daskbatch_command, misbehave, run_killed
            res = db.run(misbehave, db.Table({{"i": np.arange(8)}}), {str(tmp_path / "t.zarr")!r},
                         cluster="serial", progress=False, constants={{"bad": [2], "how": "thread"}})
            print("ok", res.samples["ok"])
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok 8" in r.stdout, r.stderr


# --------------------------------------------------------------------------- worker deaths


@pytest.mark.slow
def test_three_aborting_samples_on_the_local_cluster(tmp_path):
    store = tmp_path / "a.zarr"
    res = db.run(
        misbehave,
        db.Table({"i": np.arange(40)}),
        store,
        cluster="local",
        n_workers=2,
        chunk_size=8,
        progress=False,
        constants={"bad": [13, 26, 37], "how": "abort"},
    )
    assert res.complete and res.samples["crashed"] == 3 and res.samples["ok"] == 37
    status = db.open(store).status.values
    assert [int(i) for i in np.flatnonzero(status == CRASHED)] == [13, 26, 37]
    for e in res.errors:
        assert "died every time" in e["error"] and "or its memory limit" in e["error"]
        assert "segfault" in e["error"]  # named as one possibility among others, not as the cause


@pytest.mark.slow
def test_a_sample_over_the_memory_limit_is_named_as_such(tmp_path):
    import dask

    store = tmp_path / "mem.zarr"
    with dask.config.set({"distributed.worker.memory.terminate": 0.95}):
        res = db.run(
            misbehave,
            db.Table({"i": np.arange(8)}),
            store,
            cluster="local",
            n_workers=1,
            chunk_size=8,
            progress=False,
            memory_limit="400MiB",
            constants={"bad": [5], "how": "memory", "mib": 600},
        )
    assert res.complete and res.samples["crashed"] == 1 and res.samples["ok"] == 7
    (err,) = res.errors
    assert err["sample"] == "sample 5"
    assert "exceeding its memory limit" in err["error"] and "of 400 MiB" in err["error"], err
    assert "segfault" not in err["error"]


# --------------------------------------------------------------------------- kernels on remote workers


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """A `dask scheduler` and a `dask worker` that import daskbatch but nothing of the
    tests: no PYTHONPATH, started in an empty folder, listening on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with dask_processes(1, env, cwd=tmp_path_factory.mktemp("bare")) as address:
        yield address


def _user_module(folder: Path, body: str) -> str:
    name = f"userkernel_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


KERNEL_BODY = """
    import numpy as np
    import daskbatch as db

    OFFSET = 0.5

    def helper(x):
        return np.sqrt(x) + OFFSET

    @db.kernel(outputs={"y": db.Output(), "z": db.Output(dims=("k",), shape=(3,))})
    def user_kernel(a, b=1.0):
        return {"y": helper(a) * b, "z": np.arange(3) * a}
"""


def test_a_kernel_in_the_users_own_module_runs_on_workers_that_cannot_import_it(
    tmp_path, monkeypatch, bare_cluster
):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _user_module(tmp_path, KERNEL_BODY)
    kernel = importlib.import_module(name).user_kernel
    space = db.Grid(a=np.linspace(0, 4, 9), b=[1.0, 2.0])
    ref = db.run(kernel, space, tmp_path / "ref.zarr", cluster="serial", chunk_size=4, progress=False)
    res = db.run(kernel, space, tmp_path / "far.zarr", cluster=bare_cluster, chunk_size=4, progress=False)
    assert res.complete and res.samples["ok"] == ref.samples["ok"] == 18
    far, near = db.open(tmp_path / "far.zarr"), db.open(tmp_path / "ref.zarr")
    np.testing.assert_array_equal(far.y.values, near.y.values)
    np.testing.assert_array_equal(far.z.values, near.z.values)
    # the registration is undone: the module pickles by reference again afterwards
    import cloudpickle

    assert name not in cloudpickle.list_registry_pickle_by_value()


def test_a_kernel_needing_a_package_the_workers_lack_is_one_clear_error(tmp_path, monkeypatch, bare_cluster):
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = f"missingpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("FACTOR = 3.0\n")
    name = _user_module(
        tmp_path,
        f"""
        import daskbatch as db
        import {pkg}

        @db.kernel(outputs={{"y": db.Output()}})
        def needs_pkg(i):
            return {pkg}.FACTOR * i
        """,
    )
    kernel = importlib.import_module(name).needs_pkg
    with pytest.raises(WorkerImportError) as info:
        db.run(kernel, IDS, tmp_path / "x.zarr", cluster=bare_cluster, chunk_size=8, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"No module named '{pkg}'" in message and f"install '{pkg}'" in message
    assert "scheduler" in message and "every worker" in message
    assert not (tmp_path / "x.zarr").exists()  # nothing is left on disk

    # the same from the command line: exit 2 and one line
    spec = tmp_path / "far.toml"
    spec.write_text(
        f'kernel = "{name}.py:needs_pkg"\nstore = "far.zarr"\ncluster = "{bare_cluster}"\n'
        'chunk_size = 8\n[space]\ntype = "grid"\naxes = {i = {linspace = [0, 7, 8]}}\n'
    )
    r = run_cli("run", str(spec), "--no-progress", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and f"install '{pkg}'" in lines[0]
    assert "Traceback" not in r.stderr
