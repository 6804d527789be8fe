"""Plans: blocks within a memory budget, estimates checked against a real run."""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import example, given, settings
from hypothesis import strategies as st

import daskbatch as db
from daskbatch.chunking import auto_samples_per_block, driver_floor_seconds
from daskbatch.plan import MEMORY_FACTOR, TASK_SHARE, PlanError, make_plan, max_blocks
from daskbatch.store import Store
from daskbatch.testing import slow_square


@settings(max_examples=200)
@given(
    n=st.integers(1, 10**9),
    workers=st.integers(1, 512),
    seconds=st.one_of(st.none(), st.floats(1e-7, 100)),
    b_in=st.integers(1, 10**6),
    b_out=st.integers(1, 10**7),
    memory=st.integers(2**20, 2**40),
)
@example(n=10**8, workers=512, seconds=1e-4, b_in=1, b_out=1, memory=2**40)  # the driver's floor
def test_auto_blocks_always_fit_the_memory_budget(n, workers, seconds, b_in, b_out, memory):
    args = dict(
        kernel="k",
        batch_dims=("sample",),
        batch_shape=(n,),
        chunk_size="auto",
        n_workers=workers,
        cluster="c",
        bytes_in_per_sample=b_in,
        bytes_out_per_sample=b_out,
        seconds_per_sample=seconds,
        memory_limit=memory,
    )
    if MEMORY_FACTOR * (b_in + b_out) > TASK_SHARE * memory:
        with pytest.raises(PlanError, match="one sample needs about"):
            make_plan(**args)
        return
    size = auto_samples_per_block(
        n, n_workers=workers, seconds_per_sample=seconds, bytes_per_sample=b_in + b_out
    )
    size = max(1, min(size, int(TASK_SHARE * memory) // (MEMORY_FACTOR * (b_in + b_out))))
    if -(-n // size) > max_blocks():  # more blocks than a run keeps track of: refused, with advice
        with pytest.raises(
            PlanError, match=r"blocks; .* at most [\d,]+ blocks.*chunk_size= at least|several runs"
        ):
            make_plan(**args)
        return
    p = make_plan(**args)
    assert 1 <= p.samples_per_block <= n
    assert p.task_memory <= TASK_SHARE * memory
    # the blocks cover the space with no empty block, and every worker gets work
    assert (p.n_blocks - 1) * p.samples_per_block < n <= p.n_blocks * p.samples_per_block
    # blocks last at least the driver's floor (auto.driver-seconds-per-block): when that is
    # more than a sample, fewer and longer blocks, at most twice the floor
    least = 0.0 if seconds is None else driver_floor_seconds(workers, n * seconds, 0.005)
    if seconds is None or least <= seconds:
        assert p.n_blocks >= min(n, workers)
        if seconds is not None and p.samples_per_block > 1:
            assert p.seconds_per_block <= 2.0  # never much more than a second of work
    else:
        assert p.seconds_per_block <= max(2.0, 2 * least + seconds)


def test_a_block_that_cannot_fit_fails_before_anything_exists_naming_both_numbers(tmp_path):
    big = db.kernel(outputs={"v": db.Output(dims=("k",), shape=(1_000_000,))})(lambda x: np.zeros(10**6))
    store = tmp_path / "never.zarr"
    with pytest.raises(PlanError, match=r"one sample needs about 22\.9 MiB .* more than the 5\.0 MiB"):
        db.run(big, db.Grid(x=[1.0, 2.0]), store, cluster="serial", progress=False, memory_limit="10MiB")
    assert not store.exists()
    with pytest.raises(
        PlanError,
        match=r"a block of 100 samples needs about 4\.7 KiB, more than the 1\.0 KiB.*use at most 21 samples",
    ):
        db.run(
            slow_square,
            db.Grid(x=np.arange(100.0)),
            store,
            cluster="serial",
            chunk_size=100,
            progress=False,
            memory_limit=2048,
        )
    assert not store.exists()
    with pytest.raises(db.DaskbatchError, match="memory_limit='lots' is not a size"):
        db.run(slow_square, db.Grid(x=[1.0]), store, cluster="serial", progress=False, memory_limit="lots")


def test_plan_is_what_run_does_and_its_time_estimate_holds(tmp_path):
    """Tolerance: the measured mean block time is within ±50% of the plan's."""
    space = db.Grid(x=np.linspace(0, 1, 200))
    args = dict(cluster="threads", n_workers=2, constants={"delay": 0.005})
    p = db.plan(slow_square, space, chunk_size=20, **args)
    assert (p.n_blocks, p.samples_per_block, p.block_shape) == (10, 20, (20,))
    assert p.bytes_in_per_sample == 8 and p.bytes_out_per_sample == 8
    assert p.seconds_per_block == pytest.approx(0.1, rel=0.5)
    res = db.run(slow_square, space, tmp_path / "s.zarr", chunk_size=20, progress=False, **args)
    assert res.blocks_total == p.n_blocks
    measured = Store(tmp_path / "s.zarr").ledger.seconds()
    assert measured.mean() == pytest.approx(p.seconds_per_block, rel=0.5)
    assert res.wall_seconds == pytest.approx(p.total_seconds, rel=0.5)
    # auto chunking: the same plan in `plan` and in `run` (the cost here is in the balance)
    cheap = db.Grid(x=np.arange(1000.0))
    auto = db.plan(slow_square, cheap, cluster="threads", n_workers=2)
    res = db.run(slow_square, cheap, tmp_path / "a.zarr", cluster="threads", n_workers=2, progress=False)
    assert res.blocks_total == auto.n_blocks == 8
    # a store's own blocks are the plan's, and its committed ones are not counted again
    again = db.plan(slow_square, space, tmp_path / "s.zarr", chunk_size="auto", **args)
    assert again.block_shape == (20,) and again.blocks_done == 10 and again.total_seconds == 0
    assert "10 done in the store" in str(again) and "time left:        none: every block is done" in str(
        again
    )
    # what the run would refuse, the plan refuses (it printed a plan; the run then said no)
    with pytest.raises(
        db.errors.FingerprintMismatchError, match=r"chunking \(block shape \[20\] -> \[40\]\)"
    ):
        db.plan(slow_square, space, tmp_path / "s.zarr", chunk_size=40, **args)
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"what differs: constants"):
        db.plan(slow_square, space, tmp_path / "s.zarr", **{**args, "constants": {"delay": 0.0}})


def test_plan_prints_and_renders(tmp_path):
    p = db.plan(slow_square, db.Grid(x=np.arange(50.0)), cluster="serial", chunk_size=10)
    text = str(p)
    for words in (
        "samples:",
        "50 (x: 50)",
        "blocks:",
        "5 of 10 samples",
        "bytes per sample:",
        "memory:",
        "per task",
        "time per block:",
        "time in all:",
        "cluster:",
        "serial",
    ):
        assert words in text, text
    assert p._repr_html_().startswith("<table><caption>daskbatch plan</caption>")
    spec = tmp_path / "s.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "s.zarr"\ncluster = "serial"\n'
        '[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 300]}}\n'
    )
    r = run_cli("plan", str(spec), "--chunk-size", "30")
    assert r.returncode == 0, r.stderr
    assert "10 of 30 samples" in r.stdout and not (tmp_path / "s.zarr").exists()


def _memory_now() -> tuple[int, int]:
    """This process's resident memory and its high-water mark (Linux), in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


@pytest.mark.serial
@pytest.mark.slow
def test_plan_memory_estimate_bounds_a_real_workers_peak(tmp_path):
    """Tolerance: a worker's measured peak growth during the run lies between a third
    of the plan's per-worker memory and the plan itself (the plan is an upper bound)."""
    from daskbatch.cluster import ClusterSpec, start_executor
    from daskbatch.testing import noise

    space = db.Grid(x=np.linspace(0, 1, 8000))
    with start_executor(ClusterSpec("local", 2)) as ex:
        p = db.plan(noise, space, chunk_size=2000, cluster=ex.client)
        # 2,000 samples x 16 KiB out: 31 MiB of outputs per block, x MEMORY_FACTOR
        assert p.task_memory == MEMORY_FACTOR * 2000 * (8 + 2048 * 8)
        before = ex.client.run(_memory_now)
        db.run(noise, space, tmp_path / "n.zarr", chunk_size=2000, cluster=ex.client, progress=False)
        after = ex.client.run(_memory_now)
    growth = max(after[w][1] - before[w][0] for w in before)
    assert p.task_memory / 3 <= growth <= p.task_memory, (growth / 2**20, p.task_memory / 2**20)


def _arena_max() -> str | None:
    return os.environ.get("MALLOC_ARENA_MAX")


def _housekeeping(dask_worker) -> dict[str, float]:
    times = {k: pc.callback_time for k, pc in dask_worker.periodic_callbacks.items()}
    times["memory-monitor"] = dask_worker.memory_manager.memory_monitor_interval * 1000
    return times


def _scheduler_tick(dask_scheduler) -> float:
    return dask_scheduler.periodic_callbacks["tick"].callback_time


@pytest.mark.serial
@pytest.mark.slow
def test_a_workers_memory_does_not_climb_with_the_blocks_it_runs(tmp_path):
    """40 blocks of 8 MB per worker after 4: the peak grows by less than 2.5 blocks.

    With glibc's default malloc arenas (one per thread) it grew by 60 MB here, as Zarr's
    threads kept freed blocks in their own arenas; with one arena by 25 MB, as glibc
    kept freed blocks in its heap; a worker that hands them back once they pile up
    (hygiene.release_freed_memory: once two blocks of them have piled up, so the peak
    may rise by as much over the first run's) grew by 8-14 MB in six runs, once 18.5.
    Its peak still creeps (about 5 MB more per 80 further blocks, as the worker's
    bounded logs fill): what is caught is a block's worth kept per few blocks.
    The same cluster's servers check their event loops every 500 ms, not every 20 ms,
    and poll memory every 500 ms (see cluster.start_executor).
    """
    from daskbatch.cluster import ClusterSpec, start_executor
    from daskbatch.testing import noise

    block_bytes = 500 * 2048 * 8
    driver_env = os.environ.get("MALLOC_ARENA_MAX")
    with start_executor(ClusterSpec("local", 2)) as ex:
        client = ex.client
        assert set(client.run(_arena_max).values()) == {"1"}
        assert client.run_on_scheduler(_scheduler_tick) == 500
        for times in client.run(_housekeeping).values():
            assert times["tick"] == 500 and times["memory-monitor"] == 500, times
        space = db.Grid(x=np.linspace(0, 1, 4000))
        db.run(noise, space, tmp_path / "a.zarr", chunk_size=500, cluster=client, progress=False)
        short = client.run(_memory_now)
        space = db.Grid(x=np.linspace(0, 1, 40_000))
        db.run(noise, space, tmp_path / "b.zarr", chunk_size=500, cluster=client, progress=False)
        long = client.run(_memory_now)
    growth = {w: (long[w][1] - short[w][1]) / 2**20 for w in short}
    assert max(growth.values()) < 2.5 * block_bytes / 2**20, growth
    assert os.environ.get("MALLOC_ARENA_MAX") == driver_env  # the driver's own is left alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_is_handed_back_once_per_two_blocks_of_growth(monkeypatch):
    """Memory kept on purpose becomes the new floor: no trim after every block."""
    from daskbatch import hygiene

    monkeypatch.setattr(hygiene, "_rss_floor", None)
    block = 8 * 2**20
    assert not hygiene.release_freed_memory(block)  # the first block sets the floor
    floor = hygiene._rss_floor
    # grows the process by 4 blocks and stays: its own mapping, so that memory freed
    # earlier in this process (by other tests) cannot serve it without growing
    kept = mmap.mmap(-1, 4 * block)
    kept.write(b"\1" * (4 * block))
    assert not hygiene.release_freed_memory(100 * block)  # within 2 blocks of 100 MB
    assert hygiene.release_freed_memory(block)  # 4 blocks past the floor
    assert hygiene._rss_floor >= floor
    # what the trim could not return (the array kept) is the new floor: no trim again
    assert not hygiene.release_freed_memory(block)
    assert not hygiene.release_freed_memory(block)
    kept.close()
