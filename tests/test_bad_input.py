"""Bad input to `daskbatch run`: one line on stderr naming the bad value, exit 2, no
traceback, and nothing on disk (no store, no worker started).

Most cases run the command in this process (the `cli` fixture); the sizes that used
to allocate terabytes or hang run the real command in a subprocess, with a timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import daskbatch as db
from daskbatch.errors import PlanError, SpaceError
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
# sizes that made the old code allocate petabytes or hang: the real command, in a subprocess
SUBPROCESS_CASES = {
    "n_1e15": (_design(10**15), "n=1000000000000000"),
    "n_1e12": (_design(10**12), "n=1000000000000"),
}


def _spec(tmp_path: Path, body: str) -> Path:
    spec = tmp_path / "sweep.toml"
    spec.write_text(HEAD + body)
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
