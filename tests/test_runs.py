"""A run is a plan that executes: options checked once, callbacks, ``cluster="auto"``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import DaskbatchError
from daskbatch.options import RunOptions
from daskbatch.plan import PlanError
from daskbatch.testing import affine, assert_stores_identical, logged_sizes, slow_square


def _sizes(log) -> list[int]:
    return [int(x) for x in log.read_text().split()]


# --------------------------------------------------------------------------- plans that run


def test_plan_then_execute_probes_once_and_cuts_the_planned_blocks(tmp_path):
    log = tmp_path / "calls.log"
    space = db.Grid(a=np.arange(5_000.0))
    store = tmp_path / "p.zarr"
    p = db.plan(logged_sizes, space, store, cluster="serial", constants={"log": str(log)}, progress=False)
    probe_calls = _sizes(log)
    assert probe_calls and sum(probe_calls) < 5_000  # the probe alone, nothing written
    assert not store.exists()
    res = p.execute()
    after = _sizes(log)[len(probe_calls) :]
    # every call after the plan is a block of the plan: no second probe
    assert sum(after) == 5_000 and set(after) <= {p.samples_per_block, 5_000 % p.samples_per_block}
    assert res.blocks_total == p.n_blocks and res.samples["ok"] == 5_000
    assert db.open(store).y.values.tolist() == space.block((slice(0, 5_000),))["a"].tolist()


def test_run_is_plan_then_execute(tmp_path):
    space = db.Grid(a=np.arange(300.0), b=[0.0, 1.0])
    db.run(affine, space, tmp_path / "run.zarr", cluster="serial", chunk_size=70, progress=False)
    db.plan(affine, space, tmp_path / "plan.zarr", cluster="serial", chunk_size=70, progress=False).execute()
    assert_stores_identical(tmp_path / "run.zarr", tmp_path / "plan.zarr", provenance=True)


def test_a_plan_without_a_store_cannot_execute():
    p = db.plan(affine, db.Grid(a=[1.0, 2.0]), cluster="serial")
    with pytest.raises(PlanError, match="store path"):
        p.execute()


def test_executing_a_plan_after_the_store_was_finished_computes_nothing(tmp_path):
    space = db.Grid(a=np.arange(50.0))
    store = tmp_path / "s.zarr"
    p = db.plan(affine, space, store, cluster="serial", chunk_size=10, progress=False)
    assert p.execute().blocks_computed == 5
    again = p.execute()
    assert again.blocks_computed == 0 and again.complete


def test_options_are_checked_once_and_frozen():
    opts = RunOptions.from_arguments(affine, db.Grid(a=[1.0]), cluster="serial", retries=2)
    assert opts.retries == 2 and opts.cluster.name == "serial" and not opts.auto
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.retries = 3  # type: ignore[misc]
    auto = RunOptions.from_arguments(affine, db.Grid(a=[1.0]))
    assert auto.auto and auto.cluster.name == "local"  # what it starts unless the work is small
    with pytest.raises(DaskbatchError, match="retries=-1"):
        RunOptions.from_arguments(affine, db.Grid(a=[1.0]), retries=-1)
    with pytest.raises(TypeError):
        db.plan(affine, db.Grid(a=[1.0]), cluster="serial", not_an_option=1)


# --------------------------------------------------------------------------- callbacks


class Recorder(db.Callback):
    def __init__(self):
        self.events = []

    def on_run_start(self, event):
        self.events.append(("start", event))

    def on_block_end(self, event):
        self.events.append(("block", event))

    def on_run_end(self, event):
        self.events.append(("end", event))


def test_callbacks_hear_the_start_every_block_and_the_end(tmp_path):
    from daskbatch.testing import fail_on_multiples

    rec = Recorder()
    space = db.Grid(i=np.arange(40))
    res = db.run(
        fail_on_multiples,
        space,
        tmp_path / "c.zarr",
        cluster="threads",
        n_workers=2,
        chunk_size=10,
        progress=False,
        callbacks=[rec],
    )
    kinds = [k for k, _ in rec.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("block") == 4
    start = rec.events[0][1]
    assert start.blocks_pending == 4 and start.blocks_total == 4 and start.n_samples == 40
    blocks = [e for k, e in rec.events if k == "block"]
    assert sorted(b.block for b in blocks) == [(0,), (1,), (2,), (3,)]
    assert sum(b.counts["failed"] for b in blocks) == res.samples["failed"] == 5  # 7, 14, ..., 35
    assert all(b.n_samples == 10 and b.seconds >= 0 for b in blocks)
    assert any(b.errors and "i=7" in b.errors[0]["sample"] for b in blocks)
    end = rec.events[-1][1]
    assert end.state == "finished" and end.blocks_computed == 4 and end.samples_computed == 40
    # a resume tells what was there already
    rec2 = Recorder()
    db.run(
        fail_on_multiples,
        space,
        tmp_path / "c.zarr",
        cluster="serial",
        chunk_size=10,
        progress=False,
        callbacks=[rec2],
        retry_failed=True,
    )
    start2 = rec2.events[0][1]
    assert start2.samples_done == 0 and start2.blocks_pending == 4  # every block has a failure: all redone


def test_a_callback_that_raises_stops_the_run_and_the_store_resumes(tmp_path):
    class Boom(db.Callback):
        seen = 0

        def on_block_end(self, event):
            self.seen += 1
            if self.seen == 2:
                raise RuntimeError("callback failed")

    store = tmp_path / "b.zarr"
    space = db.Grid(a=np.arange(60.0))
    with pytest.raises(RuntimeError, match="callback failed"):
        db.run(affine, space, store, cluster="serial", chunk_size=10, progress=False, callbacks=[Boom()])
    st = db.status(store)
    assert 2 <= st.blocks_done < 6 and "callback failed" in str(st.last_run.get("error"))
    res = db.run(affine, space, store, cluster="serial", chunk_size=10, progress=False)
    assert res.complete and res.blocks_computed == 6 - st.blocks_done


def test_a_callback_without_hooks_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DaskbatchError, match="callbacks: .*on_block_end"):
        db.run(affine, db.Grid(a=[1.0]), tmp_path / "x.zarr", cluster="serial", callbacks=[object()])
    assert not (tmp_path / "x.zarr").exists()


# --------------------------------------------------------------------------- cluster="auto"


def test_auto_runs_little_work_in_this_process_and_says_so(tmp_path, capfd):
    res = db.run(slow_square, db.Grid(x=np.arange(200.0)), tmp_path / "a.zarr", progress=False)
    assert res.cluster.startswith("threads")  # slow_square is declared thread-safe
    err = capfd.readouterr().err
    assert "cluster='auto'" in err and "running in this process" in err
    from daskbatch.testing import fail_on_multiples  # not thread-safe: one thread

    res = db.run(fail_on_multiples, db.Grid(i=np.arange(50)), tmp_path / "b.zarr", progress=False)
    assert res.cluster.startswith("serial")
    info = db.open(tmp_path / "b.zarr").attrs["daskbatch"]
    assert info["options"]["cluster"] == "auto"  # a resume decides again


def test_auto_starts_the_local_cluster_when_that_is_quicker(tmp_path):
    # a cluster that costs nothing to start wins for any amount of work
    with dask.config.set({"daskbatch.auto.start-seconds": 0.0}):
        res = db.run(affine, db.Grid(a=np.arange(400.0)), tmp_path / "l.zarr", n_workers=2, progress=False)
    assert res.cluster.startswith("local") and res.samples["ok"] == 400


def test_auto_in_a_script_that_cannot_start_processes_runs_here(tmp_path):
    script = textwrap.dedent(
        f"""
        import dask, numpy as np, daskbatch as db
        from daskbatch.testing import affine
        with dask.config.set({{"daskbatch.auto.start-seconds": 0.0}}):  # a cluster would win
            res = db.run(affine, db.Grid(a=np.arange(100.0)), {str(tmp_path / "s.zarr")!r}, progress=False)
        print(res.cluster)
        """
    )
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(("serial", "threads"))
    assert "cannot start worker processes" in r.stderr


def test_a_cluster_probe_takes_at_most_a_twentieth_of_the_run(tmp_path):
    log = tmp_path / "calls.log"
    db.run(
        logged_sizes,
        db.Grid(a=np.arange(100.0)),
        tmp_path / "p.zarr",
        cluster="processes",
        n_workers=2,
        chunk_size=25,
        progress=False,
        constants={"log": str(log)},
    )
    sizes = _sizes(log)
    # 100 / 20 probed, then the blocks (a vectorised kernel's block keeps nothing of it)
    assert sizes[0] == 5 and sorted(sizes[1:]) == [25] * 4
    log.unlink()
    db.run(
        logged_sizes,
        db.Grid(a=np.arange(100.0)),
        tmp_path / "s.zarr",
        cluster="serial",
        chunk_size=25,
        progress=False,
        constants={"log": str(log)},
    )
    # in this process the probe protects the driver: the first 16 samples, whatever the run
    assert _sizes(log) == [16, 25, 25, 25, 25]


@db.kernel(outputs={"y": db.Output(), "ys": db.Output(dims=("k",), shape=(None,))})
def counted(x, log):
    with open(log, "a") as f:
        f.write(f"{int(x)}\n")
    if int(x) == 5:
        raise ValueError("five")
    return {"y": np.sqrt(x) / 3.0, "ys": np.arange(int(x) % 4) * x}


@pytest.mark.parametrize("cluster", ["serial", "threads"])
def test_a_run_in_this_process_keeps_the_probes_samples(tmp_path, cluster):
    """A short job on ``serial``/``threads``: the probe's 16 samples are not computed
    twice (a failed one is, with the run's retries), and the numbers are those of a run
    on worker processes, which keeps nothing of its probe."""
    log = tmp_path / f"{cluster}.log"
    space = db.Table({"x": np.arange(40.0)})
    here = db.run(
        counted,
        space,
        tmp_path / "here.zarr",
        cluster=cluster,
        chunk_size=10,  # the probe's 16 samples span two blocks
        progress=False,
        constants={"log": str(log)},
    )
    calls = [int(v) for v in log.read_text().split()]
    # the probe: samples 0-15 once; the run: 16-39, and 5 again (it failed in the probe)
    assert sorted(calls) == sorted([*range(40), 5])
    assert here.samples["ok"] == 39 and here.samples["failed"] == 1
    there = db.run(
        counted,
        space,
        tmp_path / "there.zarr",
        cluster="processes",
        n_workers=2,
        chunk_size=10,
        progress=False,
        constants={"log": str(tmp_path / "p.log")},
    )
    assert there.samples == here.samples
    assert_stores_identical(tmp_path / "here.zarr", tmp_path / "there.zarr")


@db.kernel(outputs={"z": db.Output()})
def grid_counted(a, b, log):
    with open(log, "a") as f:
        f.write(f"{int(a)},{int(b)}\n")
    return a * 10.0 + b / 7.0


def test_a_grid_run_in_this_process_keeps_the_probes_box(tmp_path):
    log = tmp_path / "g.log"
    space = db.Grid(a=np.arange(6.0), b=np.arange(9.0))
    run = dict(chunk_size={"a": 4, "b": 2}, progress=False, constants={"log": str(log)})
    db.run(grid_counted, space, tmp_path / "here.zarr", cluster="serial", **run)
    calls = log.read_text().split()
    assert sorted(calls) == sorted(f"{a},{b}" for a in range(6) for b in range(9))  # each once
    run["constants"] = {"log": str(tmp_path / "p.log")}
    db.run(grid_counted, space, tmp_path / "there.zarr", cluster="processes", n_workers=2, **run)
    assert_stores_identical(tmp_path / "here.zarr", tmp_path / "there.zarr")


def test_a_run_on_worker_processes_keeps_the_probes_ok_samples(tmp_path):
    """On a local cluster the probe runs on a worker: its ok samples are kept by block 0
    (not computed twice), its failed one is computed again; the numbers are those of a
    run in this process."""
    log = tmp_path / "local.log"
    space = db.Table({"x": np.arange(120.0)})
    res = db.run(
        counted,
        space,
        tmp_path / "local.zarr",
        cluster="local",
        n_workers=2,
        chunk_size=30,
        progress=False,
        constants={"log": str(log)},
    )
    calls = [int(v) for v in log.read_text().split()]
    assert sorted(calls) == sorted([*range(120), 5])  # the probe's 6 (120 / 20) once, 5 twice
    assert res.samples["ok"] == 119 and res.samples["failed"] == 1
    db.run(
        counted,
        space,
        tmp_path / "here.zarr",
        cluster="serial",
        chunk_size=30,
        progress=False,
        constants={"log": str(tmp_path / "s.log")},
    )
    assert_stores_identical(tmp_path / "local.zarr", tmp_path / "here.zarr")
