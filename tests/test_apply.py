"""``apply``: a kernel over a space as a lazy xarray Dataset, the same bits as ``run``."""

from __future__ import annotations

import logging
import pickle
import re

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskbatch as db
from daskbatch.errors import DaskbatchError
from daskbatch.lazy import AUTO_WORKERS, apply, apply_block_shape
from daskbatch.testing import curve, fail_on_multiples

CALLS: list[int] = []


@db.kernel(
    outputs={
        "response": db.Output(units="m"),
        "spectrum": db.Output(dims=("freq",), shape=(3,), coords={"freq": [1.0, 2.0, 4.0]}),
        "count": db.Output(dtype="int16"),
        "note": db.Output(dtype="str"),
    }
)
def model(a, b, offset=0.0):
    """A kernel with a core-dim output, an int output and a text output; raises for a < 0."""
    CALLS.append(1)
    if a < 0:
        raise ValueError(f"negative a={a}")
    return {
        "response": a * b + offset,
        "spectrum": np.array([a, b, a / (b + 1.0)]),
        "count": int(a) + 1,
        "note": f"a={a:g}",
    }


@db.kernel(outputs={"z": db.Output(dtype="float32")})
def with_text(x, s):
    return 2 * x + len(s)


@db.kernel(outputs={"y": db.Output()})
def identity(x):
    return x


@db.kernel(outputs={"peaks": db.Output(dims=("peak",), shape=(None,))})
def ragged(x):
    return np.arange(int(x))


def _computed_store(kernel, space, path, **kw):
    db.run(kernel, space, path, cluster="serial", progress=False, **kw)
    ds = db.open(path).compute()
    ds.attrs = {}  # a store's provenance: apply has no store
    return ds


def _assert_same_bits(got: xr.Dataset, expected: xr.Dataset) -> None:
    """Same variables, dims, coordinates, dtypes and attributes, and the same bits."""
    xr.testing.assert_identical(got, expected)
    assert set(got.coords) == set(expected.coords) and set(got.data_vars) == set(expected.data_vars)
    for name, var in expected.variables.items():
        a, b = np.asarray(got[name].values), np.asarray(var.values)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if b.dtype.kind in "biufc":
            assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), name
        else:
            assert a.tolist() == b.tolist(), name


# --------------------------------------------------------------------------- lazy


def test_nothing_runs_until_computed_and_every_variable_is_chunked_by_block():
    CALLS.clear()
    space = db.Grid(a=np.arange(-1.0, 5.0), b=[10.0, 20.0])
    ds = apply(model, space, chunk_size=4, constants={"offset": 0.5})
    assert not CALLS
    for name in ("response", "spectrum", "count", "note", "status"):
        assert isinstance(ds[name].data, dask.array.Array), name
        assert ds[name].chunks[:2] == ((2, 2, 2), (2,)), name
    assert ds.spectrum.chunks[2] == (3,)  # whole along its core dim
    assert ds.status.dtype == np.int8
    ok = ds.response.where(ds.status == db.STATUS["ok"]).sum().compute()
    assert len(CALLS) == space.size  # each sample once
    assert float(ok) == sum(a * b + 0.5 for a in range(5) for b in (10.0, 20.0))


def test_one_kernel_task_per_block_and_a_small_graph_for_any_number_of_samples():
    space = db.MonteCarlo({"x": db.Normal(0, 1), "w": db.Uniform(0, 1, size=2)}, n=10**7, seed=3)
    ds = apply(curve, space, chunk_size=10**5)
    graph = ds.__dask_graph__()
    kernel_layers = [name for name in graph.layers if name.startswith("daskbatch-kernel-curve-")]
    assert len(kernel_layers) == 1
    assert len(graph.layers[kernel_layers[0]].get_output_keys()) == 100  # one task per block
    # a design draws its samples in the tasks: the graph is small whatever n is
    assert len(cloudpickle.dumps(dict(graph))) < 200_000


def test_the_graph_pickles_and_computes_once_unpickled():
    space = db.Grid(a=[-1.0, 1.0, 2.0], b=[10.0, 20.0])
    ds = apply(model, space, chunk_size=2)
    graph = pickle.loads(cloudpickle.dumps(dict(ds.__dask_graph__())))
    key = (ds.response.data.name, 1, 0)
    assert dask.get(graph, key).tolist() == [[10.0, 20.0]]


# --------------------------------------------------------------------------- the same bits as run


def test_a_grid_gives_the_bits_and_variables_of_a_run(tmp_path):
    space = db.Grid(a=[-1.0, 0.0, 1.5, 2.0, 3.0], b=[1.0, 2.0, 3.0])
    expected = _computed_store(model, space, tmp_path / "g.zarr", constants={"offset": 0.25})
    ds = apply(model, space, constants={"offset": 0.25}, chunk_size=4)
    _assert_same_bits(ds.compute(), expected)
    # the sample that raised: fill values and status failed, its neighbours unaffected
    assert np.isnan(expected.response.values[0]).all() and (expected.status.values[0] == 2).all()
    assert (expected["count"].values[0] == np.iinfo(np.int16).min).all()
    assert (expected.status.values[1:] == 1).all()


def test_a_monte_carlo_design_gives_the_bits_of_a_run(tmp_path):
    space = db.MonteCarlo({"i": db.Choice(np.arange(30)), "w": db.Normal(0, 1, size=3)}, n=200, seed=11)

    @db.kernel(outputs={"y": db.Output(), "curve": curve.outputs["curve"]})
    def kernel(i, w):
        return {"y": fail_on_multiples.func(i), "curve": curve.func(float(i), w)["curve"]}

    expected = _computed_store(kernel, space, tmp_path / "mc.zarr")
    got = apply(kernel, space).compute()
    _assert_same_bits(got, expected)
    failed = got.status.values == db.STATUS["failed"]
    assert failed.any() and not failed.all()
    assert np.isnan(got.y.values[failed]).all() and not np.isnan(got.y.values[~failed]).any()
    assert got.w.dims == ("sample", "w_dim")  # a parameter with a core dim, as the store has it


def test_tables_files_and_products_give_the_variables_of_a_run(tmp_path):
    csv = tmp_path / "t.csv"
    pd.DataFrame(
        {"x": np.arange(12.0), "s": [f"s{i}" * (1 + i % 3) for i in range(12)], "lab": np.arange(12)}
    ).to_csv(csv, index=False)
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text("x" * i)

    @db.kernel(outputs={"n": db.Output(dtype="int64")})
    def length(path):
        with open(path) as f:
            return len(f.read())

    @db.kernel(outputs={"y": db.Output()})
    def mixed(a, s, u):
        return a * u + len(s)

    product = db.Product(
        db.Grid(a=[1.0, 2.0], s=["p", "qq"]), db.MonteCarlo({"u": db.Uniform(0, 1)}, n=5, seed=2)
    )
    cases = [
        # a table in memory: a text column the kernel takes, a label it does not
        (with_text, db.Table({"x": [1.0, 2.0, 3.0], "s": ["a", "bb", ""], "name": ["p", "q", "r"]})),
        (with_text, db.Table(csv)),  # read where it is: its columns referenced, its labels kept
        (with_text, db.Table(csv, copy=True)),
        (length, db.Files(tmp_path / "*.txt")),
        (mixed, product),
        (mixed, db.Product(product.outer, product.inner, flat=True)),
    ]
    for i, (kernel, space) in enumerate(cases):
        expected = _computed_store(kernel, space, tmp_path / f"{i}.zarr", chunk_size=3)
        _assert_same_bits(apply(kernel, space, chunk_size=5).compute(), expected)


def test_a_vectorised_kernel_gives_the_bits_of_a_run(tmp_path):
    @db.kernel(outputs={"y": db.Output(dtype="int16")}, per_sample=False)
    def vector(a, b):
        if np.any(a == 3):
            raise ValueError("a=3 in the block")
        return (a * 10 + b).astype(np.int64)

    space = db.Grid(a=np.arange(7), b=np.arange(5))
    expected = _computed_store(vector, space, tmp_path / "v.zarr", chunk_size=10)
    got = apply(vector, space, chunk_size=10).compute()
    _assert_same_bits(got, expected)
    assert (got.status.sel(a=3) == db.STATUS["failed"]).all() and (
        got.status.sel(a=4) == db.STATUS["ok"]
    ).all()


def test_failures_are_logged_for_a_few_blocks(caplog):
    space = db.Grid(a=[-3.0, -2.0, -1.0, -0.5, -0.25, 1.0], b=[1.0])
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        status = apply(model, space, chunk_size=1).status.values
    assert status.ravel().tolist() == [2, 2, 2, 2, 2, 1]
    lines = [r.getMessage() for r in caplog.records if r.name == "daskbatch"]
    failed = [line for line in lines if "1 of 1 samples failed in the block a " in line]
    assert len(failed) == 3 and len(lines) == 4  # then one line says that more are not shown
    assert all(
        re.search(r"first: a=(-[0-9.]+), b=1 \(sample \d\): ValueError: negative a=\1", x) for x in failed
    )
    assert any("more blocks have failed samples" in line for line in lines)


# --------------------------------------------------------------------------- refused as run refuses


def _run_error(tmp_path, *args, **kw) -> tuple[type, str]:
    with pytest.raises(DaskbatchError) as info:
        db.run(*args, tmp_path / "refused.zarr", cluster="serial", progress=False, **kw)
    return type(info.value), str(info.value)


@pytest.mark.parametrize(
    ("kernel", "space", "options"),
    [
        (lambda a: a, db.Grid(a=[1.0]), {}),
        (model, {"a": [1.0]}, {}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"chunk_size": "big"}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"chunk_size": 0}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"chunk_size": {"c": 2}}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"constants": "offset=1"}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"constants": {"scale": 2.0}}),
        (model, db.Grid(a=[1.0], b=[1.0]), {"constants": {"offset": object()}}),
        (model, db.Grid(a=[1.0]), {}),
    ],
)
def test_bad_arguments_are_refused_with_the_errors_of_run(tmp_path, kernel, space, options):
    expected_type, expected = _run_error(tmp_path, kernel, space, **options)
    with pytest.raises(expected_type) as info:
        apply(kernel, space, **options)
    assert str(info.value) == expected and "\n" not in expected


def test_a_ragged_output_is_refused_in_one_line_pointing_to_run():
    with pytest.raises(DaskbatchError, match=r"^output 'peaks' is ragged .* use daskbatch\.run") as info:
        apply(ragged, db.Grid(x=[1.0, 2.0]))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- chunks


def test_chunks_are_the_same_on_any_cluster_and_explicit_ones_are_runs():
    # "auto" without a probe: at least 4 blocks for each of AUTO_WORKERS workers, cut evenly
    assert AUTO_WORKERS == 8
    assert apply_block_shape(fail_on_multiples, db.Grid(i=np.arange(1000))) == (25,)  # 40 blocks
    # ... and at most 100,000 samples a block: 104 equal blocks of 10 million samples
    assert apply_block_shape(fail_on_multiples, db.Grid(i=np.arange(10**7))) == (96_154,)
    # dask's own settings, the scheduler or a cluster change nothing
    with dask.config.set(scheduler="synchronous", **{"array.chunk-size": "1KiB"}):
        assert apply(fail_on_multiples, db.Grid(i=np.arange(1000))).y.chunks == ((25,) * 40,)
    grid = db.Grid(a=np.arange(30.0), b=np.arange(7.0))
    for chunk_size in (10, 100, {"a": 4}, {"b": 3}):
        planned = db.plan(model, grid, cluster="serial", chunk_size=chunk_size)
        assert apply_block_shape(model, grid, chunk_size) == planned.block_shape


# --------------------------------------------------------------------------- composing with xarray and dask


def test_two_spaces_computed_together_keep_their_own_parameters():
    one = apply(with_text, db.Table({"x": [1.0, 2.0], "s": ["a", "b"]}))
    two = apply(with_text, db.Table({"x": [10.0, 20.0], "s": ["a", "b"]}))
    z1, z2 = dask.compute(one.z, two.z)
    assert z1.values.tolist() == [3.0, 5.0] and z2.values.tolist() == [21.0, 41.0]
    # two designs with the same seed, names and size, but other distributions
    mc = [db.MonteCarlo({"x": db.Normal(mu, 1)}, n=4, seed=1) for mu in (0.0, 100.0)]
    a, b = dask.compute(*(apply(identity, m).y for m in mc))
    assert np.allclose(b.values - a.values, 100.0)


def test_two_kernels_over_one_space_merge_without_computing():
    space = db.Grid(i=np.arange(20.0))
    CALLS.clear()

    @db.kernel(outputs={"twice": db.Output()})
    def twice(i):
        CALLS.append(1)
        return 2 * i

    merged = xr.merge(
        [apply(fail_on_multiples, space, chunk_size=5), apply(twice, space, chunk_size=7)[["twice"]]]
    )
    assert not CALLS and set(merged.data_vars) == {"y", "status", "twice"}
    assert (merged.twice.values == 2 * merged.i.values).all()


def test_means_and_zarr_on_the_threaded_scheduler_and_a_distributed_cluster(tmp_path):
    from distributed import Client, LocalCluster

    space = db.MonteCarlo({"i": db.Choice(np.arange(50)), "w": db.Normal(0, 1, size=2)}, n=300, seed=5)

    @db.kernel(outputs={"response": db.Output(), "curve": curve.outputs["curve"]})
    def kernel(i, w):
        return {"response": fail_on_multiples.func(i), "curve": curve.func(float(i), w)["curve"]}

    expected = _computed_store(kernel, space, tmp_path / "run.zarr")
    mean = float(expected.response.mean("sample"))  # failed samples (NaN) skipped
    ds = apply(kernel, space)
    assert float(ds.response.mean("sample").compute()) == pytest.approx(mean, rel=1e-12)
    ds.to_zarr(tmp_path / "threads.zarr", consolidated=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        assert float(ds.response.mean("sample").compute()) == pytest.approx(mean, rel=1e-12)
        curves = ds.curve.mean("sample").compute()
        np.testing.assert_allclose(curves.values, expected.curve.mean("sample").values, rtol=1e-12)
        ds.to_zarr(tmp_path / "distributed.zarr", consolidated=False)
    for name in ("threads", "distributed"):
        written = xr.open_zarr(tmp_path / f"{name}.zarr", consolidated=False).compute()
        _assert_same_bits(written, expected)
