"""The store lock across hosts: a lease with a heartbeat in the lock file.

A driver on another host is played by the real ``daskbatch`` command in a UTS
namespace of its own (``unshare --uts``), whose host name differs: the kernel, the
filesystem and the store are the same, as for two nodes that mount one NFS share.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dask
import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import ConfigError, StoreLockedError
from daskbatch.holder import LockLostError
from daskbatch.lock import StoreLock
from daskbatch.testing import assert_stores_identical, blocks_done, daskbatch_command, slow_square

OTHER = "other-node"
LEASE = 4  # seconds: long enough for a command to start on a busy machine, short for a test
N, CHUNK, DELAY = 300, 10, 0.03

SPEC = (
    'kernel = "daskbatch.testing:slow_square"\nstore = "slow.zarr"\ncluster = "serial"\n'
    f"chunk_size = {CHUNK}\n[constants]\ndelay = {DELAY}\n"
    f'[space]\ntype = "grid"\naxes = {{x = {{linspace = [0, 1, {N}]}}}}\n'
)


def _env(lease: float = LEASE) -> dict[str, str]:
    return {**os.environ, "DASK_DASKBATCH__LEASE__SECONDS": str(lease)}


def _namespace_prefix() -> list[str]:
    """How to start a command on "another host": in a UTS namespace of its own (with a
    user namespace when not root). Skips where that is impossible, except on CI."""
    reason = None
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        reason = "needs Linux and unshare(1)"
    else:
        base = ["unshare", "--uts", "--fork"]
        if os.geteuid() != 0:
            base = ["unshare", "--user", "--map-root-user", "--uts", "--fork"]
        probe = subprocess.run(
            [*base, "sh", "-c", f"hostname {OTHER} && hostname"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == OTHER:
            return [*base, "sh", "-c", 'hostname "$0" && exec "$@"', OTHER]
        reason = f"cannot make a UTS namespace here ({probe.stderr.strip() or probe.returncode})"
    if os.environ.get("CI"):
        pytest.fail(f"the store lock across hosts is untested: {reason}")
    pytest.skip(reason)


def _elsewhere(prefix: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real ``daskbatch`` command, run on the other host."""
    return subprocess.run(
        [*prefix, *daskbatch_command(*args)], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def _here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        daskbatch_command(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def test_a_driver_on_another_host_is_refused_while_the_first_runs_and_takes_over_a_stale_lease(tmp_path):
    prefix = _namespace_prefix()
    (tmp_path / "slow.toml").write_text(SPEC)
    store = tmp_path / "slow.zarr"
    first = subprocess.Popen(
        daskbatch_command("run", "slow.toml", "--no-progress"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    me = socket.gethostname()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not blocks_done(store):
            time.sleep(0.05)
        assert blocks_done(store), "the first run did not start"
        # the first runs: the second driver, on another host, is refused
        r = _elsewhere(prefix, "run", "slow.toml", "--no-progress", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert "\n" not in line, line
        assert f"host {me}, pid {first.pid}, started " in line
        assert re.search(r"last heartbeat \d+ s ago", line), line
        assert f"taken over once its heartbeat is older than its lease of {LEASE} s" in line
        assert first.poll() is None, "the first run ended before the second one was refused"
        shown = _here("status", "slow.zarr", cwd=tmp_path).stdout
        assert re.search(
            rf"running now \(host {me}, pid {first.pid}, since \S+, heartbeat \d+ s ago\)", shown
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed = time.monotonic()
    assert not db.status(store).complete
    # killed: its lease is still fresh, so the other host still may not take it over
    r = _elsewhere(prefix, "run", "slow.toml", "--no-progress", cwd=tmp_path)
    if time.monotonic() - killed < LEASE - 0.5:  # (a very slow start would have let it go)
        assert r.returncode == 2 and f"pid {first.pid}" in r.stderr, r.stderr
    # once the heartbeat is older than the lease: looks stopped, then taken over
    time.sleep(max(0.0, LEASE + 0.5 - (time.monotonic() - killed)))
    shown = _elsewhere(prefix, "status", "slow.zarr", cwd=tmp_path).stdout
    assert f"looks stopped: the run on host {me} (pid {first.pid}, since " in shown, shown
    assert f"within its lease of {LEASE} s; the next run takes the lock over" in shown
    r = _elsewhere(prefix, "run", "slow.toml", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    took = re.search(
        rf"took over the lock of host {me} pid {first.pid}: its heartbeat is (\d+) s old \(lease {LEASE} s\)",
        r.stderr,
    )
    assert took and int(took.group(1)) >= LEASE, r.stderr
    assert f"{N} total: {N} ok" in r.stdout
    assert db.status(store).running is None  # released: the lock file is empty
    reference = db.run(
        slow_square,
        db.Grid(x=np.linspace(0, 1, N)),
        tmp_path / "ref.zarr",
        cluster="serial",
        chunk_size=CHUNK,
        progress=False,
    )
    assert reference.complete
    assert_stores_identical(store, tmp_path / "ref.zarr")


NAP = """\
import time

import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def nap(i, seconds=0.0):
    if int(i) == 30:  # past the probe's samples: one long sample in the only block
        time.sleep(seconds)
    return 2.0 * i
"""


def test_the_heartbeat_advances_during_a_block_longer_than_the_lease(tmp_path):
    (tmp_path / "napmod.py").write_text(NAP)
    (tmp_path / "nap.toml").write_text(
        'kernel = "napmod:nap"\nstore = "nap.zarr"\ncluster = "serial"\nchunk_size = 40\n'
        '[constants]\nseconds = 4.0\n[space]\ntype = "grid"\naxes = {i = {linspace = [0, 39, 40]}}\n'
    )
    lock = tmp_path / "nap.zarr" / ".daskbatch" / "lock"
    proc = subprocess.Popen(
        daskbatch_command("run", "nap.toml", "--no-progress"),
        cwd=tmp_path,
        env=_env(1.0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    beats: set[str] = set()
    try:
        while proc.poll() is None:
            try:
                doc = json.loads(lock.read_text().strip() or "{}")
            except (OSError, ValueError):
                doc = {}
            if doc.get("pid") == proc.pid and "heartbeat" in doc:
                assert doc["lease_seconds"] == 1.0
                beats.add(doc["heartbeat"])
            time.sleep(0.1)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    # the block took 4 s, with no progress written in it: the thread beat every 0.25 s
    assert len(beats) >= 8, sorted(beats)
    assert lock.read_text() == ""  # released


WAKE = """\
import time

import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def sleeper(i, flag="", seconds=0.0):
    if int(i) == 25:  # in the third block, after others are committed
        open(flag, "w").close()
        time.sleep(seconds)
    return 2.0 * i
"""


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store with its bytes, but the lock file (which the test writes)."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store) != Path(".daskbatch", "lock")
    }


def test_a_stopped_run_whose_lock_was_taken_over_meanwhile_writes_nothing_when_it_wakes(tmp_path):
    """A driver stopped past its lease (a suspended job, a node cut off from the file
    server) whose lock a driver on another node took over: when it goes on, it ends with
    an error and leaves the store as it is: no block, no history of its own over the
    other run's."""
    (tmp_path / "wake.py").write_text(WAKE)
    flag = tmp_path / "inside"
    (tmp_path / "wake.toml").write_text(
        'kernel = "wake:sleeper"\nstore = "wake.zarr"\ncluster = "serial"\nchunk_size = 10\n'
        f'[constants]\nflag = "{flag}"\nseconds = 3.0\n'
        '[space]\ntype = "grid"\naxes = {i = {linspace = [0, 39, 40]}}\n'
    )
    store, lock = tmp_path / "wake.zarr", tmp_path / "wake.zarr" / ".daskbatch" / "lock"
    proc = subprocess.Popen(
        daskbatch_command("run", "wake.toml", "--no-progress"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flag.exists(), proc.communicate()
        os.killpg(proc.pid, signal.SIGSTOP)  # in the kernel's sleep: no write under way
        assert blocks_done(store) >= 1  # blocks committed before: they stay
        # what a driver on another node writes once this one's heartbeat is older than its lease
        other = {"host": OTHER, "pid": 7, "start": "2026-01-01T00:00:00+0000", "lease_seconds": LEASE}
        other["heartbeat"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fd = os.open(lock, os.O_WRONLY)
        os.pwrite(fd, json.dumps(other).ljust(4096).encode(), 0)
        os.close(fd)
        before = _files(store)
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0, (out, err)
    last = err.strip().splitlines()[-1]
    assert f"lost its lock: host {OTHER} pid 7 (started 2026-01-01T00:00:00+0000) holds it now" in last, err
    assert "this run stops and writes nothing more" in last
    assert _files(store) == before  # not the block it was computing, nor its history
    assert json.loads(lock.read_text()) == other  # nor the lock file


# --------------------------------------------------------------------------- in-process


def _foreign(path: Path, **extra) -> dict:
    """A holder document of a run on another host (written by this daskbatch or an older one)."""
    path.parent.mkdir(parents=True)
    doc = {
        "host": "elsewhere",
        "pid": 4242,
        "start": "2026-01-01T00:00:00+0000",
        "command": "daskbatch run",
        **extra,
    }
    path.write_text(json.dumps(doc))
    return doc


def test_an_older_holder_of_another_host_counts_from_its_files_modification_time(tmp_path, caplog):
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    _foreign(path)  # no heartbeat: written by a daskbatch before leases
    with dask.config.set({"daskbatch.lease.seconds": 30}):
        with pytest.raises(StoreLockedError, match=r"host elsewhere, pid 4242, .*last heartbeat 0 s ago"):
            StoreLock(path).acquire()
        assert StoreLock(path).holder()["stale"] is False
        old = time.time() - 31
        os.utime(path, (old, old))
        assert StoreLock(path).holder()["stale"] is True
        with caplog.at_level(logging.WARNING, logger="daskbatch"):
            lock = StoreLock(path).acquire()
    try:
        assert (
            "took over the lock of host elsewhere pid 4242: its heartbeat is 31 s old (lease 30 s)"
            in caplog.text
        )
        assert lock.taken_over["pid"] == 4242 and lock.previous is None
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert path.read_text() == ""


def test_a_fresh_heartbeat_keeps_the_lock_although_the_file_is_old(tmp_path):
    """The later of the heartbeat and the modification time counts; the holder's lease
    (not the reader's) says when it is stale."""
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    _foreign(path, heartbeat=now, lease_seconds=100)
    old = time.time() - 50
    os.utime(path, (old, old))
    lease = dask.config.set({"daskbatch.lease.seconds": 10})
    with lease, pytest.raises(StoreLockedError, match=r"older than its lease of 100 s"):
        StoreLock(path).acquire()


def test_a_run_whose_lock_was_taken_over_stops_writing_the_lock_file(tmp_path, caplog):
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    with dask.config.set({"daskbatch.lease.seconds": 0.4}):
        lock = StoreLock(path).acquire()
    try:
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] != first  # the thread renews it
        other = {"host": "elsewhere", "pid": 7, "start": "2026-01-01T00:00:00+0000", "heartbeat": first}
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, json.dumps(other).ljust(4096).encode(), 0)
        os.close(fd)
        with caplog.at_level(logging.ERROR, logger="daskbatch"):
            assert lock.heartbeat() is False
        assert (
            "lost its lock: host elsewhere pid 7 (started 2026-01-01T00:00:00+0000) holds it now"
            in caplog.text
        )
        assert "this run stops before it writes to the store again" in caplog.text
        assert caplog.text.count("lost its lock") == 1  # said once
        lock.update(done=1)
        with pytest.raises(LockLostError, match="this run stops and writes nothing more"):
            lock.check()
    finally:
        lock.release()
    assert json.loads(path.read_text()) == other  # neither progress nor the release touched it


def test_a_lock_taken_over_and_released_since_counts_as_lost(tmp_path):
    """The other run may have finished (and emptied the lock file) before this one
    wakes up: an empty lock file under a held lock is not this run's any more."""
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    with dask.config.set({"daskbatch.lease.seconds": 60}):
        lock = StoreLock(path).acquire()
    try:
        lock.check()  # held
        os.truncate(path, 0)  # what the other run's release leaves
        with pytest.raises(LockLostError, match="another run took it over and has released it since"):
            lock.check()
        assert lock.heartbeat() is False
    finally:
        lock.release()
    assert path.read_text() == ""  # not written back


def test_a_lease_that_is_not_a_positive_number_is_one_line(tmp_path):
    bad = dask.config.set({"daskbatch.lease.seconds": 0})
    with bad, pytest.raises(ConfigError, match=r"daskbatch.lease.seconds=0.0 is not a positive number"):
        StoreLock(tmp_path / "s.zarr" / ".daskbatch" / "lock").acquire()
    assert not (tmp_path / "s.zarr").exists()


def test_the_next_job_of_a_chain_waits_for_a_killed_drivers_lease_and_refuses_a_live_one(
    tmp_path, monkeypatch, caplog
):
    """In a batch job, another host's lock within its lease is waited on: taken over once
    the lease runs out (the driver before was killed at its walltime), refused as soon as
    its holder renews the heartbeat (a run that lives). Outside a job: refused at once."""
    import threading

    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    doc = _foreign(path, heartbeat=now, lease_seconds=2.0)
    t = time.monotonic()
    with pytest.raises(StoreLockedError, match=r"host elsewhere, pid 4242"):
        StoreLock(path).acquire()  # at a terminal: answered at once
    assert time.monotonic() - t < 1.0
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    t = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        lock = StoreLock(path).acquire()
    waited = time.monotonic() - t
    try:
        assert 1.5 < waited < 4.0, waited
        assert (
            "is locked by a run on host elsewhere (pid 4242), last heartbeat 0 s ago: waiting up to"
            in caplog.text
        )
        assert "took over the lock of host elsewhere pid 4242" in caplog.text
    finally:
        lock.release()

    # a holder that renews its heartbeat: refused at its first renewal, not after the lease
    path.write_text(json.dumps({**doc, "heartbeat": datetime.now(UTC).isoformat(), "lease_seconds": 30.0}))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            beat = datetime.now(UTC).isoformat(timespec="milliseconds")
            fd = os.open(path, os.O_WRONLY)
            os.pwrite(
                fd, json.dumps({**doc, "heartbeat": beat, "lease_seconds": 30.0}).ljust(4096).encode(), 0
            )
            os.close(fd)

    holder = threading.Thread(target=renew, daemon=True)
    time.sleep(0.1)
    holder.start()
    t = time.monotonic()
    try:
        with pytest.raises(StoreLockedError, match=r"host elsewhere, pid 4242"):
            StoreLock(path).acquire()
    finally:
        stop.set()
        holder.join()
    assert time.monotonic() - t < 3.0


def test_the_wait_for_a_lease_is_capped_and_ends_if_the_lock_file_goes(tmp_path, monkeypatch):
    import threading

    import daskbatch.lock as lock_module

    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setattr(lock_module, "MAX_LEASE_WAIT", 1.0)
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    beat = datetime.now(UTC).isoformat(timespec="milliseconds")
    _foreign(path, heartbeat=beat, lease_seconds=1e9)  # a holder that promises for ever
    t = time.monotonic()
    with (
        pytest.raises(StoreLockedError, match="host elsewhere, pid 4242"),
        dask.config.set({"daskbatch.lease.seconds": 0.5}),
    ):
        StoreLock(path).acquire()
    assert time.monotonic() - t < 2.5  # the cap: the longer of this run's lease and MAX_LEASE_WAIT

    path.write_text(json.dumps({**json.loads(path.read_text()), "lease_seconds": 30.0}))
    threading.Timer(0.5, path.unlink).start()  # someone deletes the lock file meanwhile
    with (
        pytest.raises(StoreLockedError, match="was removed or replaced while this run waited for it"),
        dask.config.set({"daskbatch.lease.seconds": 0.5}),
    ):
        StoreLock(path).acquire()


def test_a_heartbeat_dated_ahead_is_taken_over_once_a_whole_lease_passes_unrenewed(tmp_path, monkeypatch):
    """A killed holder whose clock was an hour ahead: its heartbeat reads as fresh for an
    hour. At a terminal the refusal says so; the next job of a chain watches one lease
    without a renewal and takes the lock over."""
    from datetime import timedelta

    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    beat = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds")
    _foreign(path, heartbeat=beat, lease_seconds=1.0)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("PBS_JOBID", raising=False)
    with pytest.raises(StoreLockedError, match=r"last heartbeat dated 3\d\d\d s ahead of this host's clock"):
        StoreLock(path).acquire()

    monkeypatch.setenv("SLURM_JOB_ID", "4244")
    t = time.monotonic()
    lock = StoreLock(path).acquire()
    try:
        assert 1.0 <= time.monotonic() - t < 4.0
        assert lock.taken_over is not None and lock.taken_over["pid"] == 4242
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_driver_killed_during_the_probe_leaves_no_process_holding_its_lock(tmp_path):
    """The probe's forked child inherited the lock file's descriptor, so its flock: a
    driver killed (SIGKILL, an OOM kill) while the probe ran left the child, adopted by
    init, computing on and holding the lock; the next run was refused naming the dead
    driver. The child now closes that descriptor and ends with its parent."""
    (tmp_path / "p.toml").write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "p.zarr"\ncluster = "threads"\nworkers = 2\n'
        'chunk_size = 8\n[constants]\ndelay = 5.0\n[space]\ntype = "grid"\naxes = {x = {arange = [0, 40, 1]}}\n'
    )
    store = tmp_path / "p.zarr"
    driver = subprocess.Popen(
        daskbatch_command("run", "p.toml", "--no-progress"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children() -> list[int]:
        found = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(driver.pid)], capture_output=True, text=True
        )
        return [int(p) for p in found.stdout.split()]

    try:
        deadline = time.monotonic() + 60
        while not children() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = children()
        assert probe, "no probe started"
        lock = StoreLock(store / ".daskbatch" / "lock")
        assert lock.holder() is not None  # the driver holds the lock
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in probe):
        assert time.monotonic() < deadline, "the probe outlived its driver"
        time.sleep(0.05)
    assert lock.holder() is None  # nobody holds the lock: the next run takes it
    lock.check_free()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_progress_write_after_a_takeover_leaves_the_other_runs_document(tmp_path):
    """The run that lost its lock published its progress (every 2 s, before its heartbeat
    thread looked) over the document of the run that took over: that undid the takeover,
    and the run that took over was then told it had lost."""
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    with dask.config.set({"daskbatch.lease.seconds": 60}):  # no heartbeat in this test
        lock = StoreLock(path).acquire()
    try:
        other = {"host": "elsewhere", "pid": 7, "start": "2026-01-01T00:00:00+0000", "heartbeat": "x"}
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, json.dumps(other).ljust(4096).encode(), 0)
        os.close(fd)
        lock.update(done=5, total=10)
        assert json.loads(path.read_text()) == other
        with pytest.raises(LockLostError):
            lock.check()
    finally:
        lock.release()
    assert json.loads(path.read_text()) == other


@db.kernel(outputs={"y": db.Output()})
def takes_over_at(i, lock="", at=30):
    """At sample ``at``: what another run's takeover of the store's lock writes."""
    if int(i) == at:
        doc = {"host": "elsewhere", "pid": 7, "start": "2026-01-01T00:00:00+0000"}
        with open(lock, "r+") as f:
            f.write(json.dumps(doc).ljust(4096))
    return float(i)


def test_a_run_that_lost_the_lock_of_a_store_it_made_leaves_that_store(tmp_path):
    """A new store with no block committed yet is removed when its run fails: not when
    the run lost its lock, for the store is then the other run's."""
    store = tmp_path / "s.zarr"
    lock = store / ".daskbatch" / "lock"
    with pytest.raises(LockLostError, match="lost its lock: host elsewhere pid 7"):
        db.run(
            takes_over_at,
            db.Grid(i=np.arange(40)),
            store,
            cluster="serial",
            chunk_size=40,
            constants={"lock": str(lock)},
            progress=False,
        )
    assert store.is_dir() and (store / "zarr.json").is_file()
    assert json.loads(lock.read_text())["host"] == "elsewhere"
