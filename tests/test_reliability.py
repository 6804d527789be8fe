"""Faults done for real: killed drivers and workers, crashing and hanging samples,
transient errors, two runs on one store, damaged chunks, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import ClusterError, StoreError, StoreLockedError, StoreWriteError
from daskbatch.testing import (
    assert_stores_identical,
    blocks_done,
    crash_on,
    damage_chunk,
    daskbatch_command,
    flaky,
    hang_on,
    kill_worker_once,
    noise,
    run_killed,
    slow_square,
)

IDS = db.Table({"i": np.arange(40)})


def _spec(tmp_path: Path, cluster: str, chunk: int = 20, n: int = 400, delay: float = 0.0) -> Path:
    spec = tmp_path / "noise.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:noise"\nstore = "noise.zarr"\n'
        f'cluster = "{cluster}"\nworkers = 2\nchunk_size = {chunk}\n'
        f"[constants]\ndelay = {delay}\n"
        f'[space]\ntype = "grid"\naxes = {{x = {{linspace = [0, 1, {n}]}}}}\n'
    )
    return spec


@pytest.fixture(scope="module")
def big_noise_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "big.zarr"
    db.run(noise, db.Grid(x=np.linspace(0, 1, 1200)), path, cluster="serial", chunk_size=30, progress=False)
    return path


@pytest.fixture(scope="module")
def noise_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    db.run(noise, db.Grid(x=np.linspace(0, 1, 400)), path, cluster="serial", chunk_size=20, progress=False)
    return path


# --------------------------------------------------------------------------- 1. driver killed


def _writing(store: Path) -> bool:
    """True while some block has output chunks on disk but no commit record yet."""
    v, records = store / "v" / "c", store / ".daskbatch" / "blocks"
    if not v.exists():
        return False
    written = {p.name for p in v.iterdir()}
    committed = {p.name.removesuffix(".json") for p in records.glob("*.json")} if records.exists() else set()
    return bool(written - committed)


@pytest.mark.parametrize("cluster, seed", [("processes", 1), ("local", 3), ("local", 4)])
def test_driver_sigkilled_at_random_moments_then_rerun_is_byte_identical(
    tmp_path, cluster, seed, big_noise_reference
):
    """Killed twice: once at the first moment a block is half written (its output
    chunk is on disk, its marker not), once at a random moment; then run again."""
    spec = _spec(tmp_path, cluster, chunk=30, n=1200, delay=0.002)
    store = tmp_path / "noise.zarr"
    rng = random.Random(seed)
    command = daskbatch_command("run", str(spec), "--no-progress")
    for moment in ("during a block write", "at random"):
        if moment == "during a block write":
            until, poll, delay = (lambda: _writing(store)), 0.0005, 0.0
        else:
            before = blocks_done(store)
            until, poll, delay = (lambda b=before: blocks_done(store) > b), 0.01, rng.uniform(0.0, 0.5)
        # the driver only (group=False): its worker processes must follow it
        killed = run_killed(command, until=until, poll=poll, delay=delay, group=False)
        if moment == "during a block write":
            assert killed.caught, "no half-written block was seen in 60 s: the kill did not land in a write"
        assert killed.signalled, f"the run ended before the kill {moment}"
        assert not killed.outlived, "worker processes outlived their killed driver"
        st = db.status(store)
        assert st.blocks_done < st.blocks_total, f"the kill {moment} should land before the end"
    r = run_cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "1,200 total: 1,200 ok" in r.stdout
    assert_stores_identical(store, big_noise_reference)


# --------------------------------------------------------------------------- 2. worker killed


def test_worker_killed_mid_run_on_the_local_cluster_completes_correctly(tmp_path):
    flag = tmp_path / "killed-once"
    res = db.run(
        kill_worker_once,
        IDS,
        tmp_path / "k.zarr",
        cluster="local",
        n_workers=2,
        chunk_size=5,
        progress=False,
        constants={"flag": str(flag), "at": 30},
    )
    assert flag.exists(), "a worker should have been killed"
    assert res.samples["ok"] == 40 and res.complete
    assert np.array_equal(db.open(tmp_path / "k.zarr").y.values, 2.0 * np.arange(40))


def test_worker_killed_on_the_processes_scheduler_is_a_clear_error_and_resumable(tmp_path):
    flag = tmp_path / "killed-once"
    store = tmp_path / "k.zarr"
    args = dict(
        cluster="processes",
        n_workers=2,
        chunk_size=5,
        progress=False,
        constants={"flag": str(flag), "at": 30},
    )
    with pytest.raises(ClusterError, match="worker process of the processes scheduler died.*run the same"):
        db.run(kill_worker_once, IDS, store, **args)
    assert db.status(store).blocks_done < 8
    res = db.run(kill_worker_once, IDS, store, **args)  # the flag exists now: no more kills
    assert res.complete and res.samples["ok"] == 40
    assert np.array_equal(db.open(store).y.values, 2.0 * np.arange(40))


# --------------------------------------------------------------------------- 3. crashing sample


@pytest.mark.parametrize("how", ["segfault", "exit"])
def test_sample_that_always_kills_its_worker_is_isolated_and_marked_crashed(tmp_path, how):
    store = tmp_path / "c.zarr"
    args = dict(cluster="local", n_workers=2, chunk_size=8, progress=False)
    res = db.run(crash_on, IDS, store, constants={"bad": [13], "how": how}, **args)
    assert res.complete
    assert res.samples["crashed"] == 1 and res.samples["ok"] == 39
    ds = db.open(store)
    assert int(ds.status[13]) == db.STATUS["crashed"] and np.isnan(float(ds.y[13]))
    ok = np.delete(np.arange(40), 13)
    assert np.array_equal(ds.y.values[ok], 2.0 * ok)
    assert any("sample 13" in e["sample"] and "died every time" in e["error"] for e in res.errors)
    again = db.run(crash_on, IDS, store, constants={"bad": [13], "how": how}, **args)
    assert again.blocks_computed == 0  # a rerun does not try the culprit again


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_first_sample_that_kills_or_hangs_on_a_running_cluster(tmp_path, capfd, fault):
    """On a cluster that is already running, the probe of the first samples runs on a
    worker: the sample that kills (or hangs) it is isolated like any other, the
    driver and the cluster live on. (On worker processes the probe takes at most a
    twentieth of the run: the first 2 of these 40 samples.)"""
    from distributed import Client, LocalCluster

    store = tmp_path / "r.zarr"
    kernel, extra = (crash_on, {}) if fault == "crash" else (hang_on, {"timeout": 1.0})
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        res = db.run(
            kernel, IDS, store, cluster=client, chunk_size=8, progress=False, constants={"bad": [1]}, **extra
        )
        assert res.complete and res.samples["ok"] == 39
        assert res.samples["crashed" if fault == "crash" else "timeout"] == 1
        assert client.submit(lambda: 41 + 1).result() == 42  # the cluster still works
    err = capfd.readouterr().err
    assert "ended the worker that ran it" in err
    ok = np.delete(np.arange(40), 1)
    assert np.array_equal(db.open(store).y.values[ok], 2.0 * ok)


# --------------------------------------------------------------------------- 4. hanging sample


@pytest.mark.parametrize("cluster", ["local", "processes"])
def test_timeout_stops_a_sample_stuck_in_native_code(tmp_path, cluster):
    store = tmp_path / "h.zarr"
    t0 = time.perf_counter()
    res = db.run(
        hang_on,
        IDS,
        store,
        cluster=cluster,
        n_workers=2,
        chunk_size=8,
        progress=False,
        timeout=1.0,
        constants={"bad": [5, 22], "how": "sleep"},
    )
    assert time.perf_counter() - t0 < 60
    assert res.complete and res.samples["timeout"] == 2 and res.samples["ok"] == 38
    ds = db.open(store)
    assert ds.status.values[[5, 22]].tolist() == [db.STATUS["timeout"]] * 2
    assert any("timeout of 1 s" in e["error"] for e in res.errors)
    assert not (store / ".daskbatch" / "timeouts").exists() or not any(
        (store / ".daskbatch" / "timeouts").iterdir()
    )


def test_timeout_of_a_vectorised_kernel_is_per_block(tmp_path):
    from daskbatch.testing import vector_hang

    res = db.run(
        vector_hang,
        IDS,
        tmp_path / "v.zarr",
        cluster="local",
        n_workers=2,
        chunk_size=8,
        progress=False,
        timeout=1.0,
        constants={"bad": [30]},
    )
    assert res.complete and res.samples["timeout"] == 8 and res.samples["ok"] == 32
    ds = db.open(tmp_path / "v.zarr")
    assert (ds.status.values[24:32] == db.STATUS["timeout"]).all()
    assert (
        "the block call was stopped" in res.errors[0]["error"] or "timeout of 1 s" in res.errors[0]["error"]
    )


@pytest.mark.parametrize("cluster", ["serial", "threads"])
def test_timeout_stops_python_code_in_the_driver_process(tmp_path, cluster, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="daskbatch")
    res = db.run(
        hang_on,
        IDS,
        tmp_path / "h.zarr",
        cluster=cluster,
        chunk_size=8,
        progress=False,
        timeout=0.5,
        constants={"bad": [3], "how": "spin"},
    )
    assert res.samples["timeout"] == 1 and res.samples["ok"] == 39
    # said once, at the start: native code (time.sleep, a C library) is not stopped here
    said = [r.getMessage() for r in caplog.records if "stops Python code only" in r.getMessage()]
    assert len(said) == 1 and f"cluster={cluster!r}" in said[0] and "time.sleep" in said[0], said


# --------------------------------------------------------------------------- 5. transient errors


def test_retries_then_retry_failed_later(tmp_path):
    store = tmp_path / "f.zarr"
    folder = tmp_path / "attempts"
    folder.mkdir()
    args = dict(cluster="serial", chunk_size=10, progress=False)
    res = db.run(flaky, IDS, store, retries=1, constants={"folder": str(folder), "times": 1}, **args)
    assert res.samples["ok"] == 40  # every sample failed once, then succeeded

    store2 = tmp_path / "f2.zarr"
    folder2 = tmp_path / "attempts2"
    folder2.mkdir()
    # three failures per sample: the probe's call and the run's two attempts of the first
    # 16 samples, the run's two attempts of the others (then one more in the retry)
    res = db.run(flaky, IDS, store2, retries=1, constants={"folder": str(folder2), "times": 3}, **args)
    assert res.samples["failed"] == 40 and "transient failure" in res.errors[0]["error"]
    # later, the transient cause is gone: only the failed samples are computed again
    r = run_cli("resume", str(store2), "--cluster", "serial", "--retry-failed", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "40 total: 40 ok" in r.stdout
    assert np.array_equal(db.open(store2).y.values, 2.0 * np.arange(40))
    assert {p.read_text() for p in folder2.iterdir()} == {"3"}  # three failures each, then ok


def test_retry_failed_recomputes_only_the_samples_that_failed(tmp_path):
    from daskbatch.testing import fail_on_multiples

    store = tmp_path / "m.zarr"
    space = db.Table({"i": np.arange(50)})
    db.run(fail_on_multiples, space, store, cluster="serial", chunk_size=10, progress=False)
    assert db.status(store).samples["failed"] == 7
    before = shutil.copytree(store, tmp_path / "before.zarr")
    res = db.run(
        fail_on_multiples,
        space,
        store,
        cluster="serial",
        chunk_size=10,
        progress=False,
        retry_failed=True,
        constants={},
    )
    # this run computed the 7 failed samples again (5 blocks committed again), not 50
    assert (
        res.blocks_computed == 5
        and res.samples_computed == 7
        and "this run: 7 samples in 5 blocks" in str(res)
    )
    assert_stores_identical(before, store)  # deterministic failures: the store is unchanged


# --------------------------------------------------------------------------- 6. locking


def test_second_run_on_a_store_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path):
    spec = tmp_path / "slow.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "slow.zarr"\ncluster = "serial"\n'
        "chunk_size = 10\n[constants]\ndelay = 0.02\n"
        '[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 300]}}\n'
    )
    store = tmp_path / "slow.zarr"
    proc = subprocess.Popen(
        daskbatch_command("run", str(spec), "--no-progress"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not blocks_done(store):
            time.sleep(0.05)
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}, started"):
            db.run(
                slow_square,
                db.Grid(x=np.linspace(0, 1, 300)),
                store,
                cluster="serial",
                chunk_size=10,
                progress=False,
                constants={"delay": 0.02},
            )
        shown = run_cli("status", str(store))
        assert f"running now (host {os.uname().nodename}, pid {proc.pid}" in shown.stdout
    finally:
        proc.kill()
        proc.wait()
    # the killed run's lock is stale: the next run takes it over and finishes
    r = run_cli("resume", str(store), "--cluster", "serial", "--no-progress")
    assert r.returncode == 0, r.stderr
    took_over = "took over the lock of a run that ended without releasing it"
    assert f"{took_over} (host {os.uname().nodename}, pid {proc.pid}" in r.stderr
    assert "300 total: 300 ok" in r.stdout
    assert db.status(store).running is None


# --------------------------------------------------------------------------- 7. corrupted store


def test_damaged_chunks_and_markers_are_found_and_exactly_those_blocks_recomputed(tmp_path, noise_reference):
    store = tmp_path / "noise.zarr"
    db.run(noise, db.Grid(x=np.linspace(0, 1, 400)), store, cluster="serial", chunk_size=20, progress=False)
    damage_chunk(store, "v", 2, keep=100)  # truncated chunk
    damage_chunk(store, "v", 5, how="garbage")  # garbage, same size
    damage_chunk(store, "status", 9, how="delete")  # a chunk missing behind its marker
    if (store / "_daskbatch" / "done").exists():  # a format-1 store: a truncated commit marker
        damage_chunk(store, "_daskbatch/done", 12, keep=3)
    else:  # format 2: a truncated block record
        record = store / ".daskbatch" / "blocks" / "12.json"
        record.write_bytes(record.read_bytes()[:3])

    r = run_cli("status", str(store), "--verify")
    assert r.returncode == 1, r.stdout
    for b in (2, 5, 9, 12):
        assert f"block [{b}]:" in r.stdout, r.stdout
    assert "4 damaged block(s)" in r.stdout and "daskbatch resume" in r.stdout

    r = run_cli("resume", str(store), "--cluster", "serial", "--verify", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "80 samples in 4 blocks" in r.stdout
    assert_stores_identical(store, noise_reference)
    assert run_cli("status", str(store), "--verify").returncode == 0


def test_without_verify_resume_still_recomputes_missing_or_truncated_chunks(tmp_path, noise_reference):
    store = tmp_path / "noise.zarr"
    db.run(noise, db.Grid(x=np.linspace(0, 1, 400)), store, cluster="serial", chunk_size=20, progress=False)
    damage_chunk(store, "v", 3, keep=-1)
    damage_chunk(store, "v", 7, how="delete")
    res = db.run(
        noise, db.Grid(x=np.linspace(0, 1, 400)), store, cluster="serial", chunk_size=20, progress=False
    )
    assert res.blocks_computed == 2
    assert_stores_identical(store, noise_reference)


# --------------------------------------------------------------------------- 8. disk full


@pytest.fixture
def small_disk(tmp_path):
    """A real 5 MiB tmpfs, mounted for the test (needs root, as in CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full test needs root in CI")
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("cluster", ["serial", "local"])
def test_disk_full_is_a_clear_error_and_the_sweep_finishes_once_space_is_back(
    small_disk, cluster, noise_reference
):
    store = small_disk / "noise.zarr"
    args = dict(cluster=cluster, chunk_size=20, progress=False)
    if cluster == "local":
        args["n_workers"] = 2
    space = db.Grid(x=np.linspace(0, 1, 400))  # 6.5 MB of incompressible output
    with pytest.raises(StoreWriteError, match="the disk is full.*run the same command again"):
        db.run(noise, space, store, **args)
    st = db.status(store)
    assert 0 < st.blocks_done < st.blocks_total
    from daskbatch.store import Store

    assert Store(store).verify(full=True) == []  # nothing half-written counts as done
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    res = db.run(noise, space, store, **args)
    assert res.complete and res.samples["ok"] == 400
    assert_stores_identical(store, noise_reference)


def test_a_metadata_repair_on_a_full_disk_is_one_line_and_the_next_one_finishes_it(small_disk, tmp_path):
    """resume --verify rebuilding zarr.json and the template with a few KiB free: one
    StoreWriteError line each time (it was an OSError traceback from the consolidation);
    once there is room, the same repair leaves the store equal to the undamaged one."""
    from daskbatch.repair import repair
    from daskbatch.testing import vector_affine

    space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=60, seed=3)
    for store in (small_disk / "s.zarr", tmp_path / "ref.zarr"):
        db.run(vector_affine, space, store, cluster="serial", chunk_size=20, progress=False)
    store = small_disk / "s.zarr"
    filler = small_disk / "filler"
    failed = []
    for free_kib in (0, 4, 8, 12):
        (store / "zarr.json").write_bytes(b"")  # damage that the repair rebuilds
        (store / ".daskbatch" / "template.json").write_bytes(b"")
        filler.unlink(missing_ok=True)
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # every byte taken
            while True:
                f.write(b"\0" * 4096)
        os.truncate(filler, max(0, filler.stat().st_size - free_kib * 1024))
        try:
            repair(store)
        except StoreWriteError as e:
            failed.append(str(e))
            assert "\n" not in str(e) and "the disk is full" in str(e), e
            assert "No committed block was touched" in str(e)
    assert failed, "the disk never filled up: the test proves nothing"
    filler.unlink()
    repair(store)
    assert_stores_identical(store, tmp_path / "ref.zarr")


def test_a_growth_on_a_full_disk_is_one_line_and_the_next_run_grows_it(small_disk, tmp_path):
    """Raising n on a disk that fills up during the growth (a few KiB left: the record,
    an array's metadata or the provenance fails): one StoreWriteError line each time (it
    was an OSError traceback), no temporary file left, and the store readable or
    saying that the next run undoes the growth; once there is room, the same call grows
    it to what an uninterrupted run gives."""
    from daskbatch.store import Store
    from daskbatch.testing import vector_affine

    def run(n, store):
        space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=n, seed=3)
        return db.run(vector_affine, space, store, cluster="serial", chunk_size=30, progress=False)

    store = small_disk / "g.zarr"
    run(100, store)
    run(160, tmp_path / "whole.zarr")
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # every byte taken
        while True:
            f.write(b"\0" * 4096)
    full = filler.stat().st_size
    failed = []
    for free_kib in (4, 8, 12, 16, 24):
        os.truncate(filler, full - free_kib * 1024)
        try:
            run(160, store)
        except StoreWriteError as e:
            failed.append(str(e))
            assert "\n" not in str(e) and "the disk is full" in str(e), e
            assert not list((store / ".daskbatch").glob("*.tmp"))
        except StoreError as e:  # the lock file, before the growth
            assert "the disk is full" in str(e), e
        else:
            break
        try:
            assert Store(store).info()["layout"]["batch_shape"] in ([100], [160])
        except StoreError as e:
            assert "The next run of this store" in str(e), e
    assert any("a growth from 100 to 160 samples failed" in m for m in failed), failed
    filler.unlink()
    grown = run(160, store)
    assert grown.samples["ok"] == 160
    assert_stores_identical(store, tmp_path / "whole.zarr")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"retries": -1}, "retries=-1 must be a whole number >= 0"),
        ({"retries": 1.5}, "retries=1.5"),
        ({"timeout": 0}, "timeout=0 must be a number of seconds > 0"),
        ({"timeout": "10"}, "timeout='10'"),
        ({"timeout": float("inf")}, "must be finite"),
        ({"retry_failed": "yes"}, "retry_failed='yes' must be True or False"),
    ],
)
def test_bad_fault_options_fail_before_a_store_exists(tmp_path, kwargs, words):
    store = tmp_path / "never.zarr"
    with pytest.raises(db.DaskbatchError, match=words):
        db.run(slow_square, db.Grid(x=[1.0]), store, cluster="serial", progress=False, **kwargs)
    assert not store.exists()


def test_nan_into_an_integer_output_is_refused_before_a_store_exists(tmp_path):
    @db.kernel(outputs={"n": db.Output(dtype="int64")})
    def count(x):
        return float("nan")

    store = tmp_path / "never.zarr"
    with pytest.raises(db.DaskbatchError, match="output 'n' has dtype float64, expected int64"):
        db.run(count, db.Grid(x=[1.0]), store, cluster="serial", progress=False)
    assert not store.exists()


def test_lock_file_and_timeout_records_are_invisible_to_xarray(tmp_path):
    store = tmp_path / "s.zarr"
    db.run(slow_square, db.Grid(x=[1.0, 2.0]), store, cluster="serial", progress=False)
    assert (store / ".daskbatch" / "lock").exists()
    assert json.loads((store / ".daskbatch" / "lock").read_text() or "null") is None
    ds = db.open(store)
    assert set(ds.data_vars) == {"y", "status"}
