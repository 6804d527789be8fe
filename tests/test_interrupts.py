"""Ctrl-C, SIGTERM, crashing workers and closed pipes, on the real command.

Each test runs the `daskbatch` command in a subprocess of its own session (process
group) and signals the whole group, as a terminal's Ctrl-C or a batch system does.
"""

from __future__ import annotations

import random
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import run_cli

import daskbatch as db
from daskbatch.testing import blocks_done, daskbatch_command, run_killed, slow_square

N = 2000

SPEC = f"""\
kernel = "daskbatch.testing:slow_square"
store = "my store.zarr"
cluster = "local"
workers = 2
chunk_size = 40

[constants]
delay = 0.005

[space]
type = "montecarlo"
n = {N}
seed = 3

[space.params.x]
dist = "uniform"
low = 0
high = 1
"""

CRASH_SPEC = """\
kernel = "daskbatch.testing:crash_on"
store = "crash.zarr"
cluster = "local"
workers = 2
chunk_size = 8

[constants]
bad = {bad}
how = "abort"

[space]
type = "grid"
axes = {{ i = {{ arange = [0, 40, 1] }} }}
"""


def _signalled(args: list[str], signum: int, delay: float, cwd: Path, until=None):
    """Start the command, wait ``delay`` s once it has started (it catches SIGTERM: its
    imports are done), or once ``until()``, then send ``signum`` to its process group;
    returns (exit code, stderr lines)."""
    k = run_killed(
        daskbatch_command(*args),
        until=until,
        delay=delay,
        signum=signum,
        ready_signal=signal.SIGTERM,
        cwd=cwd,
        poll=0.05,
    )
    return k.returncode, _messages(k.lines)


IMPORTING = "daskbatch: importing the kernel from "


def _messages(lines: list[str]) -> list[str]:
    """stderr lines but the one that says which kernel file a resume imports."""
    return [line for line in lines if line.strip() and not line.startswith(IMPORTING)]


def _check_complete(store: Path) -> None:
    ds = xr.open_zarr(store)
    space = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=N, seed=3)
    assert np.array_equal(ds.x.values, space.block((slice(0, N),))["x"])
    assert np.array_equal(ds.y.values, ds.x.values**2)
    assert (ds.status.values == 1).all()


@pytest.mark.slow
def test_ctrl_c_at_random_moments_is_one_line_exit_130_and_resumes(tmp_path):
    (tmp_path / "sweep.toml").write_text(SPEC)
    store = tmp_path / "my store.zarr"
    rng = random.Random(20)
    for attempt in range(6):
        delay = rng.uniform(0.0, 2.0)
        code, lines = _signalled(["run", "sweep.toml", "--no-progress"], signal.SIGINT, delay, tmp_path)
        assert code == 130, (attempt, delay, lines)
        assert len(lines) == 1 and lines[0].startswith("daskbatch: interrupted"), (attempt, delay, lines)
        assert "STORE" not in lines[0]
        if store.exists() and not lines[0].endswith("(the store is complete)"):
            assert "blocks done. Continue with: daskbatch resume " + shlex.quote(str(store)) in lines[0]
        elif not store.exists():
            assert lines[0] == "daskbatch: interrupted; nothing was written"
    if not store.exists():  # a slow minute: no attempt got as far as creating the store
        code, lines = _signalled(
            ["run", "sweep.toml", "--no-progress"],
            signal.SIGINT,
            0.0,
            tmp_path,
            until=lambda: blocks_done(store) > 0,
        )
        assert code == 130 and len(lines) == 1, lines
    r = run_cli("resume", str(store), "--no-progress", timeout=120)
    assert r.returncode == 0, r.stderr
    assert _messages(r.stderr.splitlines()) == []
    _check_complete(store)


@pytest.mark.serial
@pytest.mark.slow
def test_sigterm_is_an_orderly_stop_exit_143_status_says_so_and_resume_completes(tmp_path):
    (tmp_path / "sweep.toml").write_text(SPEC)
    store = tmp_path / "my store.zarr"
    rng = random.Random(7)
    for attempt in range(3):
        delay = rng.uniform(0.0, 2.5)
        code, lines = _signalled(["run", "sweep.toml", "--no-progress"], signal.SIGTERM, delay, tmp_path)
        assert code == 143, (attempt, delay, lines)
        assert len(lines) == 1 and lines[0].startswith("daskbatch: interrupted by SIGTERM"), lines
    if not store.exists():  # a slow minute: no attempt got as far as creating the store
        code, lines = _signalled(
            ["run", "sweep.toml", "--no-progress"],
            signal.SIGTERM,
            0.0,
            tmp_path,
            until=lambda: blocks_done(store) > 0,
        )
        assert code == 143 and len(lines) == 1, lines
    # once more, surely while blocks are being computed
    before = blocks_done(store)
    code, lines = _signalled(
        ["resume", str(store), "--no-progress"],
        signal.SIGTERM,
        0.0,
        tmp_path,
        until=lambda: blocks_done(store) > before,
    )
    assert code == 143 and len(lines) == 1, lines
    assert lines[0].endswith("Continue with: daskbatch resume " + shlex.quote(str(store)))
    last = db.status(store).last_run
    assert last["state"] == "stopped" and last["reason"] == "stopped by SIGTERM"
    st = run_cli("status", str(store))
    assert st.returncode == 0
    assert "stopped by SIGTERM; resume with: daskbatch resume " + shlex.quote(str(store)) in st.stdout
    assert "killed?" not in st.stdout
    r = run_cli("resume", str(store), "--no-progress", timeout=120)
    assert r.returncode == 0 and _messages(r.stderr.splitlines()) == [], r.stderr
    _check_complete(store)


SCRIPT = """\
import sys
import daskbatch as db
from daskbatch.errors import Stopped
from daskbatch.testing import slow_square

if __name__ == "__main__":
    space = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=400, seed=1)
    try:
        db.run(slow_square, space, sys.argv[1], cluster="threads", n_workers=2,
               chunk_size=10, constants={"delay": 0.02}, progress=False)
    except Stopped as e:
        print(f"stopped: {e}")
        sys.exit(e.exit_code)
"""


@pytest.mark.slow
def test_sigterm_stops_daskbatch_run_in_a_script_in_order(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    store = tmp_path / "s.zarr"
    k = run_killed(
        [sys.executable, str(script), str(store)],
        until=lambda: blocks_done(store) >= 2,
        signum=signal.SIGTERM,
        group=False,
        poll=0.05,
        timeout=60,
    )
    assert k.returncode == 143, k.stderr
    assert k.stdout.strip() == "stopped: stopped by SIGTERM"
    assert "Traceback" not in k.stderr
    st = db.status(store)
    assert st.last_run["reason"] == "stopped by SIGTERM" and not st.complete
    assert "stopped by SIGTERM; resume with" in str(st)


def _crash_named(stdout: str, i: int) -> bool:
    """Whether a line of the errors list names sample ``i`` as crashed."""
    return any(re.search(rf"\bsample {i}\)?: WorkerCrash: ", line) for line in stdout.splitlines())


@pytest.mark.slow
def test_aborting_samples_keep_the_terminal_quiet_unless_verbose(tmp_path):
    (tmp_path / "crash.toml").write_text(CRASH_SPEC.format(bad="[21, 30]"))
    r = run_cli("run", str(tmp_path / "crash.toml"), "--no-progress", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if " - distributed." in line], lines  # no log record
    # nothing: not the resource tracker's "leaked semaphore objects" (the Blosc lock of
    # each worker a sample crashed, before daskbatch.hygiene.own_blosc_lock), nor the
    # traceback of a worker that its nanny was restarting as the cluster closed (after
    # half of such runs, before the cluster waited for restarts to finish)
    assert lines == [], lines
    assert "2 crashed" in r.stdout
    for i in (21, 30):  # named by index (on this grid, "i=21 (sample 21)") with the reason
        assert _crash_named(r.stdout, i), r.stdout

    r = run_cli(
        "run",
        str(tmp_path / "crash.toml"),
        "--no-progress",
        "--verbose",
        "--store",
        str(tmp_path / "v.zarr"),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert " - distributed." in r.stderr  # the nannies' and scheduler's warnings
    assert _crash_named(r.stdout, 21), r.stdout


def test_a_closed_stdout_ends_quietly(tmp_path):
    store = tmp_path / "s.zarr"
    space = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=40, seed=1)
    db.run(slow_square, space, store, cluster="serial", chunk_size=10, progress=False)
    for args in (["status", str(store)], ["status", str(store), "--json"]):
        p = subprocess.Popen(daskbatch_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()  # the reader is gone before anything is written, as with `| head -0`
        err = p.stderr.read().decode()
        p.wait(timeout=60)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        assert err.strip() == ""
        assert p.returncode == 141


def test_a_fetch_abandoned_by_ctrl_c_is_not_reported_at_exit_other_task_errors_are():
    """An interrupted ``Future.result()`` leaves a task of distributed's behind that ends
    with its internal ``AllExit``: asyncio's "Task exception was never retrieved" for it
    (a dozen lines after the one-line Ctrl-C message, seen in the random-moment test
    above) is dropped once daskbatch has computed on a cluster; any other is kept."""
    script = """
import asyncio, gc
from distributed.client import AllExit
from daskbatch.clusterbase import quiet_abandoned_fetches

async def fails(exc):
    raise exc

def orphan(exc):
    loop = asyncio.new_event_loop()
    task = loop.create_task(fails(exc))
    loop.run_until_complete(asyncio.sleep(0.01))
    del task
    gc.collect()
    loop.close()

orphan(AllExit())  # before: reported
quiet_abandoned_fetches()
quiet_abandoned_fetches()  # once is enough
orphan(AllExit())  # after: quiet
orphan(ValueError("a real error"))  # after: still reported
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Task exception was never retrieved") == 2, r.stderr
    assert r.stderr.count("exception=AllExit()") == 1 and "ValueError: a real error" in r.stderr, r.stderr


def test_a_ctrl_c_during_a_provenance_update_waits_for_its_end(tmp_path, monkeypatch):
    """The driver rewrites the store's provenance (and Zarr consolidates the metadata in
    its own thread) at the start and end of a run: a Ctrl-C then acts once both the root
    and the repair copy are written, never between them (and never leaves Zarr's thread
    writing outside daskbatch's warning filter)."""
    import json

    import daskbatch.store as store_module

    store = tmp_path / "s.zarr"
    db.run(
        slow_square,
        db.MonteCarlo({"x": db.Uniform(0, 1)}, n=4, seed=1),
        store,
        cluster="serial",
        progress=False,
    )
    st = store_module.Store(store)
    info = {**st.info(), "note": "updated"}
    consolidate = store_module._quiet_consolidate

    def interrupted(path):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the update
        consolidate(path)

    monkeypatch.setattr(store_module, "_quiet_consolidate", interrupted)
    # Python's own SIGINT handler, whatever an earlier test in this process installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            st.update_info(info)
    finally:
        signal.signal(signal.SIGINT, previous)
    root = json.loads((store / "zarr.json").read_text())["attributes"]["daskbatch"]
    copy = json.loads((store / ".daskbatch" / "provenance.json").read_text())["daskbatch"]
    assert root["note"] == "updated" and copy == root


def test_importing_dask_jobqueue_keeps_the_drivers_ctrl_c():
    """dask_jobqueue's runner module sets a SIGINT handler that calls ``sys.exit()`` when
    it is imported: a Ctrl-C would end a SLURM or PBS run's driver with exit code 0 and
    no orderly stop. daskbatch imports it keeping the handler there was."""
    script = """
import signal, sys
import daskbatch.hpc as hpc
hpc._cluster_class("slurm")
hpc._known_keywords("pbs")
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "KeyboardInterrupt", (r.returncode, r.stdout, r.stderr)


PROCESSES_SPEC = """\
kernel = "daskbatch.testing:slow_square"
store = "p.zarr"
cluster = "processes"
workers = 2
chunk_size = 40

[constants]
delay = 0.05

[space]
type = "grid"
axes = { x = { arange = [0, 160, 1] } }
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_processes_run_at_once_and_quietly_and_resume_completes(tmp_path):
    """Its pool's workers (which a terminal's Ctrl-C reaches too) leave the signal to the
    driver, which ends them: it waited for the blocks in flight (2 s each here), and a
    worker that took the signal on the pool's queue could hold the driver's exit for ever."""
    import os
    import time

    (tmp_path / "p.toml").write_text(PROCESSES_SPEC)
    store = tmp_path / "p.zarr"
    command = daskbatch_command("run", "p.toml", "--no-progress")
    p = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while blocks_done(store) < 1 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert blocks_done(store) >= 1 and p.poll() is None
        os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        after = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    lines = _messages(err.splitlines())
    assert p.returncode == 130, (p.returncode, lines)
    assert len(lines) == 1 and lines[0].startswith("daskbatch: interrupted"), lines  # nothing leaked
    assert after < 1.5, after  # not a block's 2 s
    r = run_cli("resume", str(store), "--no-progress", timeout=120)
    assert r.returncode == 0, r.stderr
    ds = xr.open_zarr(store)
    assert (ds.status.values == 1).all() and np.array_equal(ds.y.values, np.arange(160.0) ** 2)


THREADS_SPEC = (
    'kernel = "daskbatch.testing:slow_square"\nstore = "t.zarr"\ncluster = "threads"\nworkers = 2\n'
    'chunk_size = 10\n[constants]\ndelay = 0.15\n[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 80]}}\n'
)


def _threads_run(folder: Path, spec: str) -> subprocess.Popen:
    """`daskbatch run` of ``spec`` (written to ``t.toml`` in ``folder``), its stderr piped."""
    (folder / "t.toml").write_text(spec)
    return subprocess.Popen(
        daskbatch_command("run", "t.toml", "--no-progress"),
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_threads_run_stopped_by_sigterm_writes_nothing_once_it_has_let_go_of_the_lock(tmp_path):
    """Blocks still computing on the driver's threads (which cannot be stopped) write
    nothing after the run has released the store's lock: another run may hold it then."""
    import json
    import time

    proc = _threads_run(tmp_path, THREADS_SPEC)
    store = tmp_path / "t.zarr"
    lock = store / ".daskbatch" / "lock"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and blocks_done(store) < 2:
            time.sleep(0.05)
        assert blocks_done(store) >= 2, "the run did not start"
        time.sleep(0.5)  # the next two blocks are half computed
        proc.send_signal(signal.SIGTERM)
        while time.monotonic() < deadline and lock.read_text().strip():  # held until released
            time.sleep(0.02)
        at_release = blocks_done(store)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert blocks_done(store) == at_release < 8, err
    assert f"{at_release} of 8 blocks done" in err
    history = json.loads((store / "zarr.json").read_text())["attributes"]["daskbatch"]["history"]
    assert history[-1]["state"] == "stopped" and history[-1]["blocks_computed"] == at_release
    r = run_cli("resume", str(store), "--no-progress")
    assert r.returncode == 0 and "80 total: 80 ok" in r.stdout, r.stderr


def test_sigterm_while_the_probe_runs_in_a_child_stops_at_once(tmp_path):
    """The probe of a first run on threads runs in a forked child: a stop ends it too,
    instead of waiting for its samples (up to 5 s before)."""
    import time

    proc = _threads_run(tmp_path, THREADS_SPEC.replace("delay = 0.15", "delay = 0.5"))
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not psutil.Process(proc.pid).children():
        time.sleep(0.05)  # until the probe's child is forked: in its 16 samples of 0.5 s
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM; nothing was written" in err
    assert took < 2.0, took
    assert not (tmp_path / "t.zarr").exists()
