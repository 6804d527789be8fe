"""The `daskbatch` command: in subprocesses, as a user runs it, and in this process
(the `cli` fixture) where only its text and exit code are checked."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import run_cli

import daskbatch as db
from daskbatch.testing import curve, slow_square

SPEC = """\
kernel = "daskbatch.testing:curve"
store = "mc.zarr"
cluster = "processes"
workers = 2
chunk_size = 50

[space]
type = "montecarlo"
n = 400
seed = 5

[space.params.x]
dist = "uniform"
low = 0
high = 1

[space.params.w]
dist = "normal"
mean = [1, 2]
sd = 1
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(SPEC)
    return p


def _values(store):
    ds = xr.open_zarr(store)
    return {k: v.values for k, v in ds.data_vars.items()}


def test_python_dash_m_daskbatch_is_the_command(tmp_path):
    """``python -m daskbatch`` runs a sweep on worker processes (which import the main
    module again: the command must not start there) and reports as the command does."""
    (tmp_path / "sweep.toml").write_text(SPEC.replace('store = "mc.zarr"', 'store = "m.zarr"'))
    r = subprocess.run(
        [sys.executable, "-m", "daskbatch", "run", "sweep.toml", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "400 total: 400 ok" in r.stdout
    assert db.status(tmp_path / "m.zarr").complete
    v = subprocess.run([sys.executable, "-m", "daskbatch", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.strip() == f"daskbatch {db.__version__}"


def test_run_status_and_rerun(spec, tmp_path, cli):
    r = run_cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "400 total: 400 ok" in r.stdout
    space = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=400, seed=5)
    db.run(curve, space, tmp_path / "ref.zarr", cluster="serial", chunk_size=50, progress=False)
    want, got = _values(tmp_path / "ref.zarr"), _values(tmp_path / "mc.zarr")
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    st = run_cli("status", str(tmp_path / "mc.zarr"))
    assert st.returncode == 0 and "complete" in st.stdout and "8 of 8 done" in st.stdout
    again = cli("run", str(spec), "--no-progress", "--cluster", "serial")
    assert again.returncode == 0 and "nothing to compute" in again.stdout


def test_the_test_flag_before_the_spec_takes_its_default(spec, tmp_path, cli):
    """`run --test sweep.toml` said `invalid int value: 'sweep.toml'`."""
    r = cli("run", "--test", str(spec), "--no-progress", "--cluster", "serial")
    assert r.returncode == 0, r.stderr
    assert "first 100 samples" in r.stdout and (tmp_path / "mc.test.zarr").exists()


def test_test_mode_runs_a_prefix_into_its_own_store(spec, tmp_path, cli):
    r = cli("run", str(spec), "--test", "30", "--no-progress", "--cluster", "threads")
    assert r.returncode == 0, r.stderr
    assert "first 30 samples" in r.stdout
    assert not (tmp_path / "mc.zarr").exists()
    small = xr.open_zarr(tmp_path / "mc.test.zarr")
    assert small.sizes["sample"] == 30
    space = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=400, seed=5)
    assert np.array_equal(small.x.values, space.block((slice(0, 30),))["x"])


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: "workerz = 3\n" + s, "line 1: unknown key 'workerz'"),
        (lambda s: s + "\nspread = 3\n", r"line 22: space.params.w: unknown key\(s\) \['spread'\]"),
        (
            lambda s: s.replace("workers = 2", 'workers = "two"'),
            "line 4: workers = 'two' has the wrong type; expected int",
        ),
        (
            lambda s: s.replace("daskbatch.testing:curve", "nosuchmodule:f"),
            "cannot import module 'nosuchmodule'",
        ),
        (
            lambda s: s.replace("daskbatch.testing:curve", "daskbatch.testing:nothing"),
            "has no attribute 'nothing'",
        ),
        (lambda s: s.replace('dist = "uniform"', 'dist = "uniformm"'), "dist='uniformm' is not one of"),
        (lambda s: s.replace("low = 0\nhigh = 1", "low = 1\nhigh = 0"), "low=1.0 must be below high=0.0"),
        (lambda s: s.replace("[space.params.x]", "[space.params.y]"), r"no argument\(s\) \['y'\]"),
        (lambda s: s.replace('store = "mc.zarr"', 'store = "nodir/mc.zarr"'), "parent directory"),
        (lambda s: s.replace("n = 400", "n = 0"), "n=0 must be a positive integer"),
        (lambda s: s + "[[", "not valid TOML"),
    ],
    ids=[
        "unknown-key",
        "unknown-nested-key",
        "wrong-type",
        "no-module",
        "no-attr",
        "bad-dist",
        "bad-params",
        "unknown-param",
        "bad-store",
        "empty",
        "syntax",
    ],
)
def test_bad_spec_is_one_line_and_exit_2(spec, tmp_path, cli, edit, words):
    spec.write_text(edit(SPEC))
    r = cli("run", str(spec), "--no-progress")
    _assert_one_line_exit_2(r, words)
    assert not (tmp_path / "mc.zarr").exists()


def test_bad_spec_in_the_real_command_is_one_line_and_exit_2(spec, tmp_path):
    """The same as above, in a process of its own: no traceback reaches the terminal."""
    spec.write_text(SPEC.replace("daskbatch.testing:curve", "nosuchmodule:f"))
    r = run_cli("run", str(spec), "--no-progress")
    _assert_one_line_exit_2(r, "cannot import module 'nosuchmodule'")
    assert not (tmp_path / "mc.zarr").exists()


def _assert_one_line_exit_2(r, words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert re.search(words, r.stderr), r.stderr
    assert r.stderr.startswith("daskbatch: error:") and r.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["processes", "local"])
def test_driver_killed_then_resume_equals_uninterrupted(tmp_path, cluster, cli):
    spec = tmp_path / "slow.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:slow_square"\nstore = "slow.zarr"\n'
        f'cluster = "{cluster}"\nworkers = 2\nchunk_size = 20\n'
        "[constants]\ndelay = 0.01\n"
        '[space]\ntype = "grid"\naxes = {x = {linspace = [0, 1, 300]}}\n'
    )
    exe = Path(sys.executable).with_name("daskbatch")
    proc = subprocess.Popen(
        [str(exe), "run", str(spec), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done_dir = tmp_path / "slow.zarr" / ".daskbatch" / "blocks"
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(list(done_dir.glob("*.json"))) if done_dir.exists() else 0
        if n >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a scheduler's kill would
    proc.wait()
    st = db.status(tmp_path / "slow.zarr")
    assert 0 < st.blocks_done < st.blocks_total, "the kill should land mid-run"
    assert "stopped without finishing" in str(st)
    # the real `resume` command is tested on its own below
    r = cli(
        "resume", str(tmp_path / "slow.zarr"), "--cluster", "processes", "--workers", "2", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert "300 total: 300 ok" in r.stdout
    db.run(
        slow_square,
        db.Grid(x=np.linspace(0, 1, 300)),
        tmp_path / "ref.zarr",
        cluster="threads",
        chunk_size=20,
        progress=False,
        constants={"delay": 0.0},
    )
    got, want = _values(tmp_path / "slow.zarr"), _values(tmp_path / "ref.zarr")
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_resume_of_an_in_memory_table_reads_its_rows_from_the_store(tmp_path):
    """In a process of its own: the table exists nowhere but in the store."""
    store = tmp_path / "t.zarr"
    space = db.Table({"x": np.arange(30.0)})
    db.run(slow_square, space, store, cluster="serial", chunk_size=10, progress=False)
    from daskbatch.store import Store

    Store(store).ledger.forget([(2,)])
    r = run_cli("resume", str(store), "--cluster", "serial", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10 samples in 1 blocks" in r.stdout


def test_status_of_a_missing_store_is_exit_2(tmp_path, cli):
    r = cli("status", str(tmp_path / "none.zarr"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_a_folder_given_as_the_spec_file_is_named_as_a_folder(tmp_path, cli):
    (tmp_path / "sweep.toml").write_text("")
    for command in (["run"], ["plan"], ["submit", "--slurm", "--walltime", "01:00:00"]):
        r = cli(*command[:1], str(tmp_path), *command[1:])
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert (
            f"spec file {str(tmp_path)!r} is a folder (it holds sweep.toml); give the path of a .toml"
            in r.stderr
        )


@pytest.mark.slow
def test_demo(tmp_path):
    r = run_cli(
        "demo", "--n", "3000", "--store", str(tmp_path / "demo.zarr"), "--workers", "2", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert "3,000 total" in r.stdout and "median" in r.stdout
    ds = db.open(tmp_path / "demo.zarr")
    assert ds.rhoa.dims == ("sample", "ab2") and int((ds.status == 1).sum()) > 2900


TYPED_KERNEL = '''
import numpy as np
import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def typed(a, w, pair, names, scale):
    """Raises unless every constant comes with the type it was passed with."""
    assert isinstance(w, np.ndarray) and w.dtype == np.float32 and w.shape == (2, 1), repr(w)
    assert isinstance(pair, tuple) and pair == (1, "b"), repr(pair)
    assert names == {1: "one", 2: [3, 4]}, repr(names)
    assert isinstance(scale, np.float32), repr(scale)
    return float(a * w.sum() * scale)
'''


def test_resume_and_validate_pass_the_constants_as_they_were_passed(tmp_path, monkeypatch):
    """numpy arrays and scalars, tuples and int keys come back as such, not as their JSON."""
    import importlib

    (tmp_path / "typed_kernel.py").write_text(TYPED_KERNEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("typed_kernel")
    store = tmp_path / "c.zarr"
    constants = {
        "w": np.array([[0.5], [0.25]], dtype=np.float32),
        "pair": (1, "b"),
        "names": {1: "one", 2: [3, 4]},
        "scale": np.float32(0.1),
    }
    db.run(
        mod.typed,
        db.Grid(a=[1.0, 2.0, 3.0, 4.0]),
        store,
        chunk_size=2,
        constants=constants,
        cluster="serial",
        progress=False,
    )
    want = db.open(store).y.values.copy()
    from daskbatch.store import Store

    Store(store).ledger.forget([(1,)])
    r = run_cli("resume", str(store), "--cluster", "serial", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ds = db.open(store)
    assert ds.status.values.tolist() == [1, 1, 1, 1], db.failures(store)["message"].tolist()
    assert np.array_equal(ds.y.values, want)
    r = run_cli("validate", str(store), "--n", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # the record the fingerprint compares is unchanged: the JSON of the constants
    assert Store(store).require_info()["constants"]["pair"] == [1, "b"]


def test_a_numpy_value_that_json_cannot_hold_is_refused_as_a_constant(tmp_path):
    with pytest.raises(db.DaskbatchError, match=r"constants\['when'\]=.*datetime64.*number or a string"):
        db.run(
            slow_square,
            db.Grid(x=[1.0]),
            tmp_path / "s.zarr",
            constants={"when": np.datetime64("2026-01-01")},
        )
    assert not (tmp_path / "s.zarr").exists()


def test_a_zero_flag_is_checked_not_dropped_for_the_spec_files_value(spec, cli):
    for flag, words in [
        ("--chunk-size", "chunk_size=0 must be a positive integer"),
        ("--workers", "n_workers=0 must be a positive integer"),
    ]:
        r = cli("run", str(spec), flag, "0", "--no-progress")
        assert r.returncode == 2 and words in r.stderr, r.stderr
    assert not (spec.parent / "mc.zarr").exists()


@db.kernel(outputs={"y": db.Output()})
def weighted_sum(x, w):
    return float(x * np.nansum(w))


def test_a_nan_in_an_array_constant_does_not_make_the_store_refuse_its_own_rerun(tmp_path):
    store = tmp_path / "n.zarr"
    constants = {"w": np.array([np.nan, 1.0])}
    grid = db.Grid(x=[1.0, 2.0, 3.0, 4.0])
    db.run(weighted_sum, grid, store, chunk_size=2, constants=constants, cluster="serial", progress=False)
    from daskbatch.store import Store

    Store(store).ledger.forget([(1,)])
    r = db.run(weighted_sum, grid, store, chunk_size=2, constants=constants, cluster="serial", progress=False)
    assert r.complete and r.blocks_computed == 1


def test_a_run_whose_every_sample_fails_exits_1_naming_the_failures_command(tmp_path, cli):
    """A model that fails every sample used to end with exit 0 and `complete`: a script or a
    job chain could not tell it from a good run."""
    spec = tmp_path / "all.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:fail_on_multiples"\nstore = "all.zarr"\ncluster = "serial"\n'
        '[constants]\nk = 1\n[space]\ntype = "grid"\naxes = {i = [1, 2, 3, 4]}\n'
    )
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert (
        "no sample succeeded (4 done, none ok: each failed" in r.stderr and "daskbatch failures" in r.stderr
    )
    again = cli("resume", str(tmp_path / "all.zarr"), "--no-progress")
    assert again.returncode == 1 and "no sample succeeded" in again.stderr
    spec.write_text(spec.read_text().replace("k = 1", "k = 3"))  # one of four fails: 0
    r = cli("run", str(spec), "--no-progress", "--overwrite")
    assert r.returncode == 0 and "no sample succeeded" not in r.stderr


def test_a_store_given_to_run_and_a_spec_given_to_resume_say_which_command_takes_them(spec, tmp_path, cli):
    r = cli("run", str(spec), "--no-progress", "--cluster", "serial")
    assert r.returncode == 0, r.stderr
    store = tmp_path / "mc.zarr"
    r = cli("run", str(store))
    assert r.returncode == 2 and "is a store, not a spec file; `daskbatch resume" in r.stderr
    r = cli("resume", str(spec))
    assert r.returncode == 2 and "daskbatch resume takes a store (a folder)" in r.stderr
    assert f"`daskbatch run {spec}` runs it" in r.stderr
