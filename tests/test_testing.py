"""The helpers of daskbatch.testing, on real stores and real processes: each one is
shown to catch what it is for (a one-bit difference, a damaged chunk, a process
left behind), not only to pass."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import daskbatch as db
from daskbatch.store import Store
from daskbatch.testing import (
    affine,
    assert_stores_identical,
    blocks_done,
    damage_chunk,
    daskbatch_command,
    run_killed,
    run_killed_and_resumed,
)

GRID = db.Grid(a=np.linspace(-1.0, 1.0, 12), b=[0.0, 2.0])


def _run(path: Path, chunk: int = 6, **kw) -> Path:
    db.run(affine, GRID, path, cluster="serial", chunk_size=chunk, progress=False, **kw)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pair")
    return _run(d / "a.zarr"), _run(d / "b.zarr")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- assert_stores_identical


def test_identical_runs_are_identical(pair):
    assert_stores_identical(*pair)
    assert_stores_identical(*pair, provenance=True)


def test_a_one_bit_difference_in_an_output_is_caught(pair, tmp_path):
    b = _copy(pair[1], tmp_path / "b.zarr")
    y = zarr.open_array(str(b / "y"), mode="r+")
    v = y[3, 1]
    y[3, 1] = np.frombuffer((np.float64(v).view(np.uint64) ^ np.uint64(1)).tobytes(), np.float64)[0]
    with pytest.raises(AssertionError, match=r"'y': 1 of 24 values differ, first at \(3, 1\)"):
        assert_stores_identical(pair[0], b)


def test_minus_zero_and_nan_payloads_count_as_differences(pair, tmp_path):
    b = _copy(pair[1], tmp_path / "b.zarr")
    zarr.open_array(str(b / "y"), mode="r+")[0, 0] = -0.0
    c = _copy(pair[1], tmp_path / "c.zarr")
    zarr.open_array(str(c / "y"), mode="r+")[0, 0] = 0.0
    with pytest.raises(AssertionError, match="'y': 1 of 24"):
        assert_stores_identical(b, c)  # np.array_equal would call these equal
    quiet = np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), np.float64)[0]
    zarr.open_array(str(c / "y"), mode="r+")[0, 0] = np.nan
    zarr.open_array(str(b / "y"), mode="r+")[0, 0] = quiet
    with pytest.raises(AssertionError, match="'y': 1 of 24"):
        assert_stores_identical(b, c)


def test_a_difference_in_status_or_parameters_is_caught(pair, tmp_path):
    b = _copy(pair[1], tmp_path / "b.zarr")
    zarr.open_array(str(b / "status"), mode="r+")[5, 0] = db.STATUS.failed
    with pytest.raises(AssertionError) as e:
        assert_stores_identical(pair[0], b)
    assert "'status': 1 of 24" in str(e.value) and "status (committed)" in str(e.value)
    c = _copy(pair[1], tmp_path / "c.zarr")
    zarr.open_array(str(c / "b"), mode="r+")[1] = 2.5  # a grid axis (a coordinate)
    with pytest.raises(AssertionError, match="'b': 1 of 2 values differ"):
        assert_stores_identical(pair[0], c)


def test_committed_blocks_are_compared(pair, tmp_path):
    b = _copy(pair[1], tmp_path / "b.zarr")
    Store(b).unmark([(1, 0)])  # the data stays on disk; the block is no longer committed
    with pytest.raises(AssertionError, match=r"committed blocks differ: only in a \[\(1, 0\)\]"):
        assert_stores_identical(pair[0], b)


def test_other_chunking_differs_unless_blocks_false(pair, tmp_path):
    other = _run(tmp_path / "o.zarr", chunk=4)
    with pytest.raises(AssertionError, match="chunks"):
        assert_stores_identical(pair[0], other)
    assert_stores_identical(pair[0], other, blocks=False)


def test_provenance_is_compared_only_when_asked(pair, tmp_path):
    other = _run(tmp_path / "s.zarr", constants={"scale": 1.0})  # the default: same values
    assert_stores_identical(pair[0], other)
    with pytest.raises(AssertionError, match="provenance 'constants'"):
        assert_stores_identical(pair[0], other, provenance=True)


def test_a_missing_array_is_caught(pair, tmp_path):
    import shutil

    b = _copy(pair[1], tmp_path / "b.zarr")
    shutil.rmtree(b / "y")
    with pytest.raises(AssertionError, match="arrays differ"):
        assert_stores_identical(pair[0], b)


# --------------------------------------------------------------------------- damage_chunk


@pytest.mark.parametrize("how", ["truncate", "garbage", "zeros", "delete"])
def test_damage_chunk_damages_exactly_that_block(tmp_path, how):
    store = _run(tmp_path / "s.zarr")
    path = damage_chunk(store, "y", block=(1, 0), how=how)
    assert path == store / "y" / "c" / "1" / "0"
    problems = Store(store).verify(full=True)
    assert [tuple(p.block) for p in problems] == [(1, 0)], problems


@pytest.mark.parametrize("array", ["y", "status"])
def test_a_damaged_chunk_is_a_difference_stores_identical_names(tmp_path, array):
    a, b = _run(tmp_path / "a.zarr"), _run(tmp_path / "b.zarr")
    damage_chunk(b, array, block=(1, 0), how="zeros")
    with pytest.raises(AssertionError, match=r"cannot be read.*decompression"):
        assert_stores_identical(a, b)


def test_damage_chunk_truncates_as_asked_and_refuses_nonsense(tmp_path):
    store = _run(tmp_path / "s.zarr")
    path = store / "status" / "c" / "0" / "0"
    size = path.stat().st_size
    damage_chunk(store, "status", (0, 0), keep=-1)
    assert path.stat().st_size == size - 1
    damage_chunk(store, "status", (0, 0), keep=3)
    assert path.stat().st_size == 3
    before = (store / "y" / "c" / "0" / "0").read_bytes()
    damage_chunk(store, "y", (0, 0), how="garbage")
    after = (store / "y" / "c" / "0" / "0").read_bytes()
    assert len(after) == len(before) and after != before
    with pytest.raises(ValueError, match="how='burn'"):
        damage_chunk(store, "y", (1, 0), how="burn")
    damage_chunk(store, "y", (1, 0), how="delete")
    with pytest.raises(FileNotFoundError, match="no chunk file"):
        damage_chunk(store, "y", (1, 0))


def test_damage_chunk_of_a_one_dim_store_takes_an_int(tmp_path):
    store = tmp_path / "m.zarr"
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=30, seed=1)
    db.run(affine, space, store, cluster="serial", chunk_size=10, progress=False)
    assert damage_chunk(store, "y", 2, how="zeros") == store / "y" / "c" / "2"
    assert [tuple(p.block) for p in Store(store).verify(full=True)] == [(2,)]


# --------------------------------------------------------------------------- run_killed


def test_run_killed_waits_for_the_condition_then_kills(tmp_path):
    flag = tmp_path / "flag"
    script = f"import pathlib, time\ntime.sleep(0.3)\npathlib.Path({str(flag)!r}).touch()\ntime.sleep(60)\n"
    t0 = time.monotonic()
    k = run_killed([sys.executable, "-c", script], until=flag.exists)
    assert k.caught and k.signalled and k.returncode == -signal.SIGKILL
    assert k.seconds >= 0.3 and time.monotonic() - t0 < 30
    assert not k.outlived


def test_run_killed_says_when_the_condition_never_came_or_the_command_ended_first(tmp_path):
    k = run_killed([sys.executable, "-c", "import time; time.sleep(60)"], until=lambda: False, wait=0.3)
    assert not k.caught and k.signalled
    done = run_killed([sys.executable, "-c", "print('hello')"], until=lambda: False)
    assert not done.caught and not done.signalled and done.returncode == 0 and done.stdout == "hello\n"


def test_run_killed_catches_processes_that_outlive_the_command(tmp_path):
    """A child left in the group when only the command was signalled is reported and
    ended: the helper never leaves processes behind."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import pathlib, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        tmp = pathlib.Path({str(pidfile)!r} + ".tmp")
        tmp.write_text(str(child.pid))
        tmp.rename({str(pidfile)!r})  # whole when it appears: the kill follows at once
        time.sleep(60)
        """
    )
    k = run_killed([sys.executable, "-c", script], until=pidfile.exists, group=False, group_timeout=0.5)
    assert k.outlived and k.returncode == -signal.SIGKILL
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_run_killed_with_a_signal_the_command_handles(tmp_path):
    script = textwrap.dedent(
        """
        import signal, sys, time
        def bye(signum, frame):
            print("stopping", file=sys.stderr)
            sys.exit(143)
        signal.signal(signal.SIGTERM, bye)
        time.sleep(60)
        """
    )
    k = run_killed([sys.executable, "-c", script], signum=signal.SIGTERM, ready_signal=signal.SIGTERM)
    assert k.returncode == 143 and k.lines == ["stopping"]


def test_run_killed_and_resumed_on_the_real_command_equals_an_uninterrupted_run(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "s.zarr"\ncluster = "serial"\n'
        "chunk_size = 10\n[constants]\ndelay = 0.01\n"
        '[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 200]}}\n'
    )
    store = tmp_path / "s.zarr"
    r = run_killed_and_resumed(
        daskbatch_command("run", str(spec), "--no-progress"),
        daskbatch_command("resume", str(store), "--no-progress"),
        until=lambda: blocks_done(store) >= 2,
    )
    (killed,) = r.killed
    assert killed.caught and killed.signalled and killed.returncode == -signal.SIGKILL
    assert r.resumed.returncode == 0, r.resumed.stderr
    assert "200 total: 200 ok" in r.resumed.stdout
    from daskbatch.testing import slow_square

    ref = tmp_path / "ref.zarr"
    db.run(
        slow_square, db.Grid(x=np.linspace(0, 1, 200)), ref, cluster="serial", chunk_size=10, progress=False
    )
    assert_stores_identical(store, ref)
    assert blocks_done(store) == 20 and blocks_done(tmp_path / "nothing.zarr") == 0
