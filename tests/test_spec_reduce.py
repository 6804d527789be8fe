"""Reductions in spec files: every accepted form runs through the real command and gives
what the same ``daskbatch.run`` call gives; every refusal is one line naming the file
and the line, before any store exists."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import SpecFileError
from daskbatch.specfile import load_spec

KERNELS = '''
import numpy as np

import daskbatch as db


@db.kernel(outputs={"y": db.Output(), "peak": db.Output(store=False)}, per_sample=False)
def twice(a):
    """y stored; peak only reduced."""
    return {"y": 2.0 * a, "peak": 3.0 * a}
'''

HEAD = """\
kernel = "{kernel}"
store = "out.zarr"
cluster = "serial"
{top}
[space]
type = "montecarlo"
n = 40
seed = 5

[space.params.a]
dist = "uniform"
low = 0
high = 300
"""


def _spec(folder: Path, top: str = "", tail: str = "", kernel: str = "daskbatch.testing:affine") -> Path:
    """A spec file in ``folder``: ``top`` before [space] (top-level keys), ``tail`` after."""
    (folder / "kernels_spec_reduce.py").write_text(KERNELS)
    spec = folder / "sweep.toml"
    spec.write_text(HEAD.format(kernel=kernel, top=top) + textwrap.dedent(tail))
    return spec


def _line(spec: Path, starts: str) -> int:
    return next(i for i, x in enumerate(spec.read_text().splitlines(), 1) if x.startswith(starts))


def _refused(spec: Path) -> str:
    with pytest.raises(SpecFileError) as e:
        load_spec(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{spec}, line "), msg
    return msg


# --------------------------------------------------------------------------- accepted forms


def test_a_top_level_list_of_statistics_reduces_every_output(tmp_path, cli):
    spec = _spec(tmp_path, top='reduce = ["mean", "max"]\n')
    assert load_spec(spec)["reduce"] == ["mean", "max"]
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    ds = db.open(tmp_path / "out.zarr")
    y = ds.y.values
    assert float(ds.y_mean) == pytest.approx(y.mean(), rel=1e-12) and float(ds.y_max) == y.max()


@pytest.mark.parametrize(
    "entry, want",
    [
        ("{exceedance = 150.0}", db.Exceedance(150.0)),
        ("{exceedance = 150.0, above = false}", db.Exceedance(150.0, above=False)),
        ("{exceedance = {threshold = 150.0, above = false}}", db.Exceedance(150.0, above=False)),
        ("{quantiles = [0.1, 0.9]}", db.Quantiles([0.1, 0.9])),
        ("{quantiles = [0.1, 0.9], compression = 100}", db.Quantiles([0.1, 0.9], 100)),
        ("{quantiles = {q = [0.1, 0.9], compression = 100}}", db.Quantiles([0.1, 0.9], 100)),
        ("{quantiles = 0.5}", db.Quantiles([0.5])),
        ("{histogram = [0, 100, 200, 300]}", db.Histogram([0, 100, 200, 300])),
        ("{histogram = {bins = [0, 100, 200, 300]}}", db.Histogram([0, 100, 200, 300])),
    ],
)
def test_every_table_form_of_a_statistic_is_read(tmp_path, entry, want):
    spec = _spec(tmp_path, tail=f"\n[reduce]\ny = [{entry}]\n")
    assert load_spec(spec)["reduce"] == {"y": [want]}


def test_the_forms_run_and_match_python(tmp_path, cli):
    tail = """
    [reduce]
    y = ["mean", {exceedance = 150.0, above = false}, {quantiles = [0.5], compression = 100}]
    peak = [{exceedance = {threshold = 400.0, above = true}}, "max"]
    """
    spec = _spec(tmp_path, tail=tail, kernel="kernels_spec_reduce:twice")
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    ds = db.open(tmp_path / "out.zarr")
    y = ds.y.values
    assert "peak" not in ds.data_vars or ds.peak.dims != ("sample",)
    assert float(ds.y_exceedance) == pytest.approx(np.mean(y < 150.0))
    assert ds.y_exceedance.attrs.get("above") in (False, 0)
    assert float(ds.peak_exceedance) == pytest.approx(np.mean(1.5 * y > 400.0))
    assert float(ds.peak_max) == pytest.approx(1.5 * y.max())
    assert abs(float(ds.y_quantile.squeeze()) - np.median(y)) < 0.05 * np.ptp(y)


# --------------------------------------------------------------------------- refusals


def test_until_without_output_names_the_line_and_the_outputs(tmp_path):
    spec = _spec(tmp_path, tail="\n[until]\nrtol = 0.01\n")
    msg = _refused(spec)
    assert f"line {_line(spec, '[until]')}:" in msg
    assert 'needs output = "<name>"' in msg and "['y']" in msg and "Converged.__init__" not in msg


@pytest.mark.parametrize(
    "entry, says",
    [
        ('"aggregation"', "Python-only"),
        ('{aggregation = "mymod:fn"}', "Python-only"),
        (
            "{exceedance = 150.0, abve = false}",
            "unknown key 'abve' beside exceedance; exceedance takes only 'above'",
        ),
        ("{histogram = [0, 1], above = true}", "unknown key 'above' beside histogram"),
        ("{exceedance = {threshold = 1.0}, above = false}", "goes inside it"),
        ("{exceedance = {limit = 1.0}}", "takes the keys ['threshold', 'above']"),
        ("{exceedance = 1.0, above = 3}", "above=3 must be True"),
        ("{quantiles = [0.5], compression = 5}", "compression=5"),
        ("{quantile = [0.5]}", "is not a statistic"),
        ('"median"', "{quantiles = [0.5]}"),
        # the fixes offered in the spec's own words, not Python's
        (
            "{quantiles = [0.5, 95]}",
            "q=95 is not a probability strictly between 0 and 1; give e.g. {quantiles = [0.05",
        ),
        ('"bogus"', "'max', or {quantiles = [...]}, {histogram = [edges]}, {exceedance = threshold}"),
    ],
)
def test_a_bad_statistic_is_one_line_naming_the_file_and_line(tmp_path, entry, says):
    spec = _spec(tmp_path, tail=f"\n[reduce]\ny = [{entry}]\n")
    msg = _refused(spec)
    assert f"line {_line(spec, 'y =')}:" in msg and says in msg, msg
    if "Python-only" in says:
        assert "daskbatch.run(..., reduce={'y': daskbatch.Aggregation(...)})" in msg


def test_an_output_not_stored_and_not_reduced_names_the_reduce_line(tmp_path):
    spec = _spec(tmp_path, tail='\n[reduce]\ny = "mean"\n', kernel="kernels_spec_reduce:twice")
    msg = _refused(spec)
    assert f"line {_line(spec, '[reduce]')}:" in msg
    assert "output 'peak'" in msg and "Output(store=False)" in msg and 'peak = "mean"' in msg


def test_an_output_not_stored_without_reduce_names_the_kernel_line(tmp_path, cli):
    spec = _spec(tmp_path, kernel="kernels_spec_reduce:twice")
    msg = _refused(spec)
    assert f"line {_line(spec, 'kernel =')}:" in msg and "the spec has no reduce" in msg
    r = cli("run", str(spec), "--no-progress")  # the command says the same, on one line
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(err) == 1 and "output 'peak'" in err[0], r.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_until_on_a_space_of_fixed_size_names_the_until_line(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(
        textwrap.dedent(
            """\
            kernel = "daskbatch.testing:affine"
            store = "out.zarr"

            [space]
            type = "grid"
            axes = { a = [1.0, 2.0] }

            [until]
            output = "y"
            rtol = 0.1
            """
        )
    )
    msg = _refused(spec)
    assert f"line {_line(spec, '[until]')}:" in msg and "needs a design whose n can grow" in msg, msg
    assert "this [space] is Grid" in msg


@pytest.mark.parametrize(
    "top, says",
    [
        ('reduce = "median"', "reduce: unknown statistic 'median'; in a spec file give {quantiles = [0.5]}"),
        ('reduce = ["mean", "aggregation"]', "reduce: user-defined aggregations"),
        ('reduce = ["mean", {exceedance = 1.0, below = true}]', "reduce: unknown key 'below'"),
        ('reduce = ["mean", "avg"]', "unknown statistic 'avg'"),
    ],
)
def test_a_bad_top_level_reduce_names_its_line(tmp_path, top, says):
    spec = _spec(tmp_path, top=top + "\n")
    msg = _refused(spec)
    assert f"line {_line(spec, 'reduce =')}:" in msg and says in msg, msg
