"""``cluster="fork"``: worker processes forked from the driver, chosen by ``"auto"`` for
short runs; a worker that dies moves the rest of the run to a local cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import psutil
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import ClusterError
from daskbatch.testing import assert_stores_identical, blocks_done, crash_on, fail_on_multiples, hang_on

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux only")


def _script(tmp_path, body: str) -> subprocess.CompletedProcess:
    """``body`` as a user's script (a file, under a main guard), run in a fresh Python."""
    path = tmp_path / "sweep.py"
    code = "import json, sys, dask, numpy as np, daskbatch as db\nfrom daskbatch.testing import *\n"
    code += 'if __name__ == "__main__":\n' + textwrap.indent(textwrap.dedent(body), "    ")
    path.write_text(code)
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=180, cwd=tmp_path
    )


def test_fork_gives_the_bits_of_a_serial_run(tmp_path):
    space = db.Grid(i=np.arange(300), k=[3, 7])
    a = db.run(fail_on_multiples, space, tmp_path / "a.zarr", cluster="serial", chunk_size=40, progress=False)
    b = db.run(fail_on_multiples, space, tmp_path / "b.zarr", cluster="fork", chunk_size=40, progress=False)
    assert b.cluster.startswith("fork (") and b.cluster.endswith(" processes forked from this one)")
    assert a.samples == b.samples and b.samples["failed"] > 0
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_auto_forks_for_a_short_run_and_says_so(tmp_path):
    r = _script(
        tmp_path,
        """
        res = db.run(slow_square, db.Grid(x=np.arange(400.0)), "a.zarr", constants={"delay": 0.004},
                     n_workers=2, progress=False)
        print(json.dumps({"cluster": res.cluster, "ok": res.samples["ok"]}))
        """,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"cluster": "fork (2 processes forked from this one)", "ok": 400}
    assert "cluster='auto': about" in r.stderr and "running on fork (2 processes" in r.stderr
    ds = db.open(tmp_path / "a.zarr")
    assert np.array_equal(ds.y.values, ds.x.values**2)
    assert ds.attrs["daskbatch"]["options"]["cluster"] == "auto"  # a resume decides again


def test_auto_keeps_the_local_cluster_for_a_long_run(tmp_path):
    """Over ``daskbatch.auto.fork-up-to-seconds`` of work per process: the local cluster
    (its dashboard, its memory limits)."""
    r = _script(
        tmp_path,
        """
        with dask.config.set({"daskbatch.auto.fork-up-to-seconds": 0.1}):
            res = db.run(slow_square, db.Grid(x=np.arange(1500.0)), "a.zarr", constants={"delay": 0.004},
                         n_workers=2, progress=False)
        print(res.cluster)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("local (2 worker processes")


def test_auto_never_forks_with_a_memory_limit(tmp_path):
    r = _script(
        tmp_path,
        """
        res = db.run(slow_square, db.Grid(x=np.arange(1500.0)), "a.zarr", constants={"delay": 0.004},
                     n_workers=2, progress=False, memory_limit="2GiB")
        print(res.cluster)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("local (")


def test_a_sample_that_crashes_its_worker_moves_the_rest_to_a_local_cluster(tmp_path, capfd):
    space = db.Grid(i=np.arange(120))
    res = db.run(
        crash_on,
        space,
        tmp_path / "c.zarr",
        cluster="fork",
        chunk_size=10,
        constants={"bad": [55]},
        progress=False,
    )
    assert res.cluster.startswith("fork (2 processes forked from this one), then local (")
    assert res.samples["crashed"] == 1 and res.samples["ok"] == 119 and res.complete
    ds = db.open(tmp_path / "c.zarr")
    crashed = ds.i.values[ds.status.values == db.STATUS.crashed]
    assert crashed.tolist() == [55]
    assert "a forked worker process died" in capfd.readouterr().err


def test_a_timeout_in_a_forked_worker_is_recorded_and_the_run_goes_on(tmp_path):
    res = db.run(
        hang_on,
        db.Grid(i=np.arange(40)),
        tmp_path / "t.zarr",
        cluster="fork",
        chunk_size=5,
        timeout=1.0,
        constants={"bad": [12]},
        progress=False,
    )
    assert res.samples["timeout"] == 1 and res.samples["ok"] == 39
    assert res.cluster.startswith("fork (")  # a fresh fork, not the local cluster


def test_killed_driver_takes_its_forked_workers_with_it(tmp_path):
    path = tmp_path / "sweep.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import numpy as np, daskbatch as db
            from daskbatch.testing import slow_square
            if __name__ == "__main__":
                db.run(slow_square, db.Grid(x=np.arange(4000.0)), {str(tmp_path / "k.zarr")!r},
                       cluster="fork", n_workers=2, chunk_size=20, constants={{"delay": 0.01}}, progress=False)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and blocks_done(tmp_path / "k.zarr") < 2:
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)  # the forked workers
        assert len(children) >= 2, children
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    st = db.status(tmp_path / "k.zarr")
    assert 0 < st.samples["ok"] < 4000  # what was committed is kept; a rerun goes on


def test_ctrl_c_stops_a_forked_run_in_order_and_resume_completes(tmp_path):
    (tmp_path / "sweep.toml").write_text(
        textwrap.dedent(
            """
            kernel = "daskbatch.testing:slow_square"
            store = "f.zarr"
            cluster = "fork"
            workers = 2
            chunk_size = 20

            [constants]
            delay = 0.01

            [space]
            type = "grid"
            axes = {x = {linspace = [0, 1, 2000]}}
            """
        )
    )
    exe = [sys.executable, "-m", "daskbatch.cli", "run", "sweep.toml", "--no-progress"]
    proc = subprocess.Popen(
        exe, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    store = tmp_path / "f.zarr"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and blocks_done(store) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("daskbatch: interrupted"), err
    assert "Traceback" not in err
    r = run_cli("resume", str(store), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    st = db.status(store)
    assert st.complete and st.samples["ok"] == 2000


def test_fork_on_another_platform_is_refused_before_anything_starts(tmp_path, monkeypatch):
    from daskbatch import forkpool

    monkeypatch.setattr(forkpool, "can_fork", lambda: False)
    with pytest.raises(ClusterError, match="cluster='fork' forks this process, which is safe on Linux"):
        db.run(crash_on, db.Grid(i=np.arange(10)), tmp_path / "x.zarr", cluster="fork", progress=False)


def test_auto_does_not_fork_in_a_process_with_threads_of_its_own(tmp_path):
    """A notebook's kernel runs threads of its own, which a fork could catch holding a
    lock: auto leaves such a process alone (the local cluster's workers come from a
    forkserver)."""
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        with dask.config.set({"daskbatch.auto.start-seconds": 0.0}):
            res = db.run(
                crash_on, db.Grid(i=np.arange(200)), tmp_path / "a.zarr", n_workers=2, progress=False
            )
    finally:
        stop.set()
    assert not res.cluster.startswith("fork")


def test_two_runs_in_one_script_both_fork(tmp_path):
    """Zarr's threads, left by the first run, hold nothing a fork could catch."""
    r = _script(
        tmp_path,
        """
        for name in ("a.zarr", "b.zarr"):
            res = db.run(slow_square, db.Grid(x=np.arange(400.0)), name, constants={"delay": 0.004},
                         n_workers=2, progress=False)
            print(res.cluster)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == ["fork (2 processes forked from this one)"] * 2


def test_a_crash_in_a_script_without_a_main_guard_stops_the_run_without_running_it_again(tmp_path):
    """A local cluster's workers would re-run the script's top level (here: deleting the
    store): the run stops instead, keeps its blocks, and says how to go on."""
    path = tmp_path / "noguard.py"
    path.write_text(
        textwrap.dedent(
            """
            import ctypes, shutil, time, numpy as np, daskbatch as db
            print("TOP LEVEL", flush=True)

            @db.kernel(outputs={"y": db.Output()})
            def k(i):
                time.sleep(0.003)  # 1.2 s of work: worth forking
                if int(i) == 333:
                    ctypes.string_at(0)  # a segfault
                return 2.0 * i

            shutil.rmtree("c.zarr", ignore_errors=True)
            try:
                db.run(k, db.Grid(i=np.arange(400)), "c.zarr", n_workers=2, chunk_size=20, progress=False)
            except db.errors.WorkerDiedError as e:
                print("STOPPED", e)
            """
        )
    )
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("TOP LEVEL") == 1, r.stdout
    assert "STOPPED a forked worker process died" in r.stdout and '__name__ == "__main__"' in r.stdout
    assert "no main guard" in r.stderr and "the run stops here" in r.stderr
    st = db.status(tmp_path / "c.zarr")
    assert st.samples["ok"] > 0 and st.samples["pending"] > 0 and st.samples["crashed"] == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_ends_forked_workers_stuck_in_native_code(tmp_path, signum):
    """The workers ignore SIGINT and SIGTERM; the driver's orderly stop kills them, so a
    sample stuck in native code does not keep the run (or the driver) alive."""
    (tmp_path / "hang.toml").write_text(
        textwrap.dedent(
            """
            kernel = "daskbatch.testing:hang_on"
            store = "h.zarr"
            cluster = "fork"
            workers = 2
            chunk_size = 4

            [constants]
            bad = [30, 34]
            delay = 0.01

            [space]
            type = "grid"
            axes = {i = {arange = [0, 60]}}
            """
        )
    )
    exe = [sys.executable, "-m", "daskbatch.cli", "run", "hang.toml", "--no-progress"]
    proc = subprocess.Popen(exe, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and blocks_done(tmp_path / "h.zarr") < 1:
        time.sleep(0.1)
    time.sleep(1.0)  # the hanging samples have started
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signum)  # to the driver only, as a batch system's first warning
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
