"""Bad input to `daskbatch run`: one line on stderr naming the bad value, exit 2, no
traceback, and nothing on disk (no store, no worker started).

Most cases run the command in this process (the `cli` fixture); the sizes that used
to allocate terabytes or hang run the real command in a subprocess, with a timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import DaskbatchError, PlanError, SpaceError, StoreError
from daskbatch.space import space_from_spec
from daskbatch.testing import affine, daskbatch_command

HEAD = """\
kernel = "daskbatch.testing:affine"
store = "out.zarr"
progress = false
"""


def _grid(axis: str) -> str:
    return f'cluster = "serial"\n\n[space]\ntype = "grid"\naxes = {{ a = {axis} }}\n'


def _design(n: int, extra: str = "") -> str:
    return (
        f'[space]\ntype = "montecarlo"\nn = {n}\nseed = 1\n\n'
        f'[space.params.a]\ndist = "uniform"\nlow = 0\nhigh = 1\n{extra}'
    )


# name: (spec after HEAD, text the one line names)
CASES = {
    "arange_step_0": (_grid("{ arange = [0, 10, 0] }"), "step=0"),
    "arange_no_values": (_grid("{ arange = [0, 10, -1] }"), "step=-1"),
    "linspace_negative_num": (_grid("{ linspace = [0, 1, -3] }"), "num=-3"),
    "linspace_fractional_num": (_grid("{ linspace = [0, 1, 2.5] }"), "num=2.5"),
    "linspace_huge_num": (_grid("{ linspace = [0, 1, 1e12] }"), "1,000,000,000,000 values"),
    "logspace_infinite_stop": (_grid("{ logspace = [0, inf, 3] }"), "stop=inf"),
    "axis_mixes_numbers_and_strings": (_grid('[1, "a"]'), "[1, 'a']"),
    "axis_mixes_numbers_and_booleans": (_grid("[1, true]"), "[1, True]"),
    "huge_value_per_sample": (
        'cluster = "serial"\n\n' + _design(10, "size = 1000000000\n"),
        "1,000,000,000 float64 values per sample",
    ),
}


def _two_params(dim: str) -> str:
    """A Monte Carlo design whose parameter ``a`` holds 3 values along core dim ``dim``."""
    return 'cluster = "serial"\n\n' + _design(
        10, f'size = 3\ndim = "{dim}"\n\n[space.params.b]\ndist = "uniform"\nlow = 0\nhigh = 1\n'
    )


def _store(store: str) -> str:
    """The spec of a small grid written to ``store`` (replacing HEAD's store line)."""
    return f'store = "{store}"\n' + _grid("[1.0, 2.0]")


# bad core-dim names: refused where the parameter is declared, or with the name it hides
CASES |= {
    f"core_dim_{label}": (_two_params(dim), named)
    for label, dim, named in [
        ("status", "status", "dim='status' is reserved by daskbatch"),
        ("sample", "sample", "dim='sample' is reserved by daskbatch"),
        ("internal", "_daskbatch", "dim='_daskbatch' is reserved by daskbatch"),
        ("dotdot", "../x", "dim='../x' is not a valid name"),
        ("slash", "a/b", "dim='a/b' is not a valid name"),
        ("space", "x y", "dim='x y' is not a valid name"),
        ("other_param", "b", "parameter 'a' has core dim 'b', the name of parameter 'b'"),
        ("own_name", "a", "parameter 'a' has core dim 'a', the name of parameter 'a'"),
        ("output", "y", "core dim 'y' is also the name of output 'y'"),
    ]
}
# values that gave a traceback (exit 1) or more than one line
CASES |= {
    "timeout_1e300": (
        "timeout = 1e300\n" + _grid("[1.0, 2.0]"),
        "line 4: timeout = 1e+300 is more than 604,800 seconds (7 days); give at most that, or leave it out",
    ),
    # run()'s checks of plain options, at the spec's line and in its words
    "workers_0": ("workers = 0\n" + _grid("[1.0, 2.0]"), "line 4: workers = 0 must be a positive integer"),
    "retries_negative": (
        "retries = -1\n" + _grid("[1.0, 2.0]"),
        "line 4: retries = -1 must be a whole number >= 0",
    ),
    "chunk_size_0": (
        "chunk_size = 0\n" + _grid("[1.0, 2.0]"),
        "line 4: chunk_size = 0 must be a positive integer",
    ),
    "timeout_0": (
        "timeout = 0\n" + _grid("[1.0, 2.0]"),
        "line 4: timeout = 0 must be a number of seconds > 0 (leave it out",
    ),
    "store_null_byte": (_store("a\\u0000b.zarr"), "b.zarr' contains a null byte; give a path without"),
    "store_name_too_long": (_store("x" * 300 + ".zarr"), "has 305 bytes, more than the 255"),
    "logspace_overflow": (_grid("{ logspace = [0, 400, 3] }"), "logspace = [0, 400, 3]: gives inf"),
    "axis_nested": (
        _grid("[[1, 2], [3, 4]]"),
        "axis 'a' must be 1-D, a flat list of values, got nested values of shape (2, 2)",
    ),
    "axis_ragged": (_grid("[[1], [2, 3]]"), "axis 'a' must be 1-D, a flat list of values, got nested lists"),
    "axis_duplicate_value": (_grid("[1.0, 2.0, 1.0]"), "axis 'a' has the value 1.0 more than once"),
    "axis_duplicate_string": (_grid('["x", "y", "y"]'), "axis 'a' has the value 'y' more than once"),
}
# sizes that made the old code allocate petabytes or hang: the real command, in a subprocess
SUBPROCESS_CASES = {
    "n_1e15": (_design(10**15), "n=1000000000000000"),
    "n_1e12": (_design(10**12), "n=1000000000000"),
}


def _spec(tmp_path: Path, body: str) -> Path:
    spec = tmp_path / "sweep.toml"
    head = HEAD.replace('store = "out.zarr"\n', "") if body.startswith("store = ") else HEAD
    spec.write_text(head + body)
    return spec


def _check(r: subprocess.CompletedProcess, named: str, tmp_path: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one line, no traceback
    assert lines[0].startswith("daskbatch: error: "), lines[0]
    assert named in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]  # no store, nothing else


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_one_line_and_exit_2_with_nothing_on_disk(case, tmp_path, cli):
    body, named = CASES[case]
    r = cli("run", str(_spec(tmp_path, body)))
    _check(r, named, tmp_path)


def test_a_store_under_an_unknown_users_home_is_one_line(tmp_path, cli):
    """``~user`` of a user that does not exist: the path cannot be expanded (it was a
    RuntimeError and a traceback)."""
    spec = _spec(tmp_path, _store("~nonexistentuser/x.zarr"))
    r = cli("run", spec.name, cwd=tmp_path)  # a spec in the current folder: its store as given
    _check(r, "store='~nonexistentuser/x.zarr': '~nonexistentuser' names no user", tmp_path)


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_a_space_too_big_to_run_is_refused_at_plan_time(case, tmp_path):
    """The size is refused with its numbers and what would work, in about the time the
    command takes to start: before a store exists or a worker starts."""
    body, named = SUBPROCESS_CASES[case]
    spec = _spec(tmp_path, body)
    r = subprocess.run(daskbatch_command("run", str(spec)), capture_output=True, text=True, timeout=60)
    _check(r, named, tmp_path)
    assert "blocks" in r.stderr and "at most" in r.stderr
    advice = "chunk_size= at least" if case == "n_1e12" else "make the space smaller"
    assert advice in r.stderr


def test_python_api_refuses_the_same_values_with_their_errors(tmp_path):
    with pytest.raises(SpaceError, match=r"axis a=\[1, 'a'\] mixes numbers and strings") as e:
        db.Grid(a=[1, "a"])
    assert isinstance(e.value, ValueError)
    assert db.Grid(a=["x", "y"]).axes["a"].tolist() == ["x", "y"]  # all strings: fine
    assert db.Grid(a=[1, 2.5]).axes["a"].tolist() == [1.0, 2.5]  # all numbers: fine
    with pytest.raises(SpaceError, match=r"num=2\.5 must be a whole number"):
        space_from_spec({"type": "grid", "axes": {"a": {"linspace": [0, 1, 2.5]}}})
    # a whole number written as a float is the number
    assert space_from_spec({"type": "grid", "axes": {"a": {"linspace": [0, 1, 3.0]}}}).size == 3
    store = tmp_path / "never.zarr"
    big = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=10**12, seed=1)
    with pytest.raises(PlanError, match=r"n=1000000000000 \(chunk_size='auto'\): 1,000,000,000,000 samples"):
        db.run(affine, big, store, cluster="serial", progress=False)
    with pytest.raises(PlanError, match=r"\(chunk_size=1000\): .*make 1,000,000,000 blocks"):
        db.plan(affine, big, cluster="serial", chunk_size=1000)
    assert not store.exists()


@db.kernel(outputs={"y": db.Output()})
def _total(a, b):
    return float(np.sum(a) + np.sum(b))


def test_python_api_refuses_bad_core_dims_grids_timeouts_and_store_paths(tmp_path):
    store = tmp_path / "never.zarr"
    with pytest.raises(SpaceError, match=r"Uniform: dim='status' is reserved by daskbatch"):
        db.Uniform(0, 1, size=3, dim="status")
    with pytest.raises(SpaceError, match=r"Choice: dim='a/b' is not a valid name"):
        db.Choice([1, 2], size=3, dim="a/b")
    with pytest.raises(SpaceError, match=r"parameter 'a' has core dim 'b', the name of parameter 'b'"):
        db.MonteCarlo({"a": db.Uniform(0, 1, size=3, dim="b"), "b": db.Uniform(0, 1)}, n=4, seed=1)
    # the default core dim "a_dim" taken by a parameter
    with pytest.raises(SpaceError, match=r"core dim 'a_dim', the name of parameter 'a_dim'"):
        db.MonteCarlo({"a": db.Uniform(0, 1, size=3), "a_dim": db.Uniform(0, 1)}, n=4, seed=1)
    with pytest.raises(SpaceError, match=r"Product: dim='status' is reserved"):
        db.Product(db.Grid(c=[1, 2]), db.MonteCarlo({"a": db.Uniform(0, 1)}, n=2, seed=1), dim="status")
    # a core dim named like an output: refused before a store exists (or a worker starts)
    hides_y = db.MonteCarlo({"a": db.Uniform(0, 1, size=3, dim="y")}, n=4, seed=1)
    with pytest.raises(StoreError, match=r"parameter 'a': core dim 'y' is also the name of output 'y'"):
        db.run(affine, hides_y, store, cluster="serial", progress=False)
    # two parameters of the same length may share a core dim
    shared = db.MonteCarlo(
        {"a": db.Uniform(0, 1, size=3, dim="layer"), "b": db.Normal(0, 1, size=3, dim="layer")}, n=4, seed=1
    )
    assert db.plan(_total, shared, cluster="serial", chunk_size=2).n_blocks == 2
    with pytest.raises(SpaceError, match=r"axis 'a' has the value 2 more than once"):
        db.Grid(a=[1, 2, 3, 2])
    with pytest.raises(SpaceError, match=r"axis 'a' must be 1-D, a flat list of values, got nested values"):
        db.Grid(a=np.ones((2, 2)))
    with pytest.raises(SpaceError, match=r"logspace = \[0, 400, 3\]: gives inf, past the largest float64"):
        space_from_spec({"type": "grid", "axes": {"a": {"logspace": [0, 400, 3]}}})
    grid = db.Grid(a=[1.0, 2.0])
    with pytest.raises(DaskbatchError, match=r"timeout=1e\+300 is more than 604,800 seconds"):
        db.run(affine, grid, store, cluster="serial", progress=False, timeout=1e300)
    assert db.plan(affine, grid, cluster="serial", timeout=7 * 24 * 3600).n_blocks >= 1  # the bound: fine
    for path, named in [
        ("~nonexistentuser/x.zarr", "'~nonexistentuser' names no user"),
        (str(tmp_path / "a\0b.zarr"), "contains a null byte"),
        (str(tmp_path / ("x" * 300)), "has 300 bytes, more than the 255"),
    ]:
        with pytest.raises(StoreError, match=named):
            db.run(affine, grid, path, cluster="serial", progress=False)
    for kwargs, named in [
        ({"store": None}, r"store=None is not a path; give one such as 'results.zarr'"),
        ({"callbacks": 5}, r"callbacks=5 must be a list of callbacks"),
        ({"callbacks": db.Callback()}, r"callbacks=.* must be a list of callbacks; pass \["),
        ({"spec_file": 123}, r"spec_file=123 is not a path; give one such as 'sweep.toml'"),
    ]:
        with pytest.raises(DaskbatchError, match=named):
            db.run(affine, grid, **{"store": store, "cluster": "serial", "progress": False, **kwargs})
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
