import dask
import numpy as np
import pytest
import xarray as xr

import daskbatch as db
from daskbatch.errors import (
    ClusterError,
    FingerprintMismatchError,
    KernelSignatureError,
    OutputSpecError,
    SpaceError,
    StoreError,
)
from daskbatch.models.dcsounding import apparent_resistivity, schlumberger, schlumberger_block
from daskbatch.store import Store
from daskbatch.testing import affine, concurrency_probe, curve, fail_on_multiples, vector_affine, wrong_shape

GRID = db.Grid(rho1=np.logspace(1, 3, 4), rho2=np.logspace(0, 2, 3), h1=np.linspace(10, 100, 5))
MC = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2, 3], 1, dim="k")}, n=300, seed=11)


@db.kernel(outputs={"rhoa": schlumberger.outputs["rhoa"]}, threadsafe=True)
def two_layer_grid(rho1, rho2, h1):
    return apparent_resistivity(np.array([rho1, rho2]), np.array([h1]))


def _arrays(store):
    ds = xr.open_zarr(store)
    return {k: v.values for k, v in ds.variables.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    db.run(two_layer_grid, GRID, d / "grid.zarr", cluster="serial", progress=False, chunk_size=7)
    db.run(curve, MC, d / "mc.zarr", cluster="serial", progress=False, chunk_size=300)
    return {"grid": _arrays(d / "grid.zarr"), "mc": _arrays(d / "mc.zarr")}


def test_same_sweep_bitwise_identical_on_every_scheduler(cluster, tmp_path, reference):
    kw = {"cluster": cluster, "progress": False}
    if cluster in ("threads", "processes", "local"):
        kw["n_workers"] = 2
    r = db.run(two_layer_grid, GRID, tmp_path / "grid.zarr", chunk_size=8, **kw)
    assert r.samples["ok"] == GRID.size and r.complete
    _assert_same(_arrays(tmp_path / "grid.zarr"), reference["grid"])
    r = db.run(curve, MC, tmp_path / "mc.zarr", chunk_size=37, **kw)
    assert r.samples["ok"] == 300
    _assert_same(_arrays(tmp_path / "mc.zarr"), reference["mc"])


def test_grid_results_come_back_on_the_grid(store):
    db.run(two_layer_grid, GRID, store, cluster="serial", progress=False)
    ds = db.open(store)
    assert ds.rhoa.dims == ("rho1", "rho2", "h1", "ab2")
    for d in ("rho1", "rho2", "h1"):
        assert np.array_equal(ds[d].values, GRID.axes[d])
        assert ds[d].dims == (d,)
    want = apparent_resistivity(
        np.array([GRID.axes["rho1"][2], GRID.axes["rho2"][1]]), np.array([GRID.axes["h1"][4]])
    )
    assert np.array_equal(ds.rhoa.isel(rho1=2, rho2=1, h1=4).values, want)
    assert "rho1" not in ds.data_vars  # axes are coordinates, not broadcast copies


def _layered_table(n=40):
    rng = np.random.default_rng(5)
    return db.Table(
        xr.Dataset(
            {
                "resistivity": (("sample", "layer"), 10 ** rng.uniform(0, 3, (n, 3))),
                "thickness": (("sample", "interface"), rng.uniform(1, 50, (n, 2))),
            }
        )
    )


def test_table_with_core_dims_per_block_and_per_sample_agree(tmp_path):
    t = _layered_table()
    db.run(schlumberger_block, t, tmp_path / "a.zarr", cluster="threads", progress=False, chunk_size=16)
    db.run(schlumberger, t, tmp_path / "b.zarr", cluster="serial", progress=False, chunk_size=5)
    a, b = db.open(tmp_path / "a.zarr"), db.open(tmp_path / "b.zarr")
    assert np.allclose(a.rhoa, b.rhoa, rtol=1e-12)
    assert a.resistivity.dims == ("sample", "layer")


@pytest.mark.parametrize("cluster", ["threads", "local"])
def test_kernel_not_threadsafe_never_overlaps_in_a_process(cluster, store):
    space = db.Grid(x=np.arange(64.0))
    db.run(
        concurrency_probe,
        space,
        store,
        cluster=cluster,
        n_workers=4 if cluster == "threads" else 2,
        chunk_size=4,
        progress=False,
    )
    ds = db.open(store)
    assert int(ds.overlap.max()) == 1
    assert (ds.status == 1).all()


def test_failures_are_isolated_and_reported(store):
    space = db.Table({"i": np.arange(100)})
    r = db.run(
        fail_on_multiples, space, store, cluster="processes", n_workers=2, chunk_size=10, progress=False
    )
    assert r.samples["ok"] == 86 and r.samples["failed"] == 14 and r.complete
    assert r.errors[0]["sample"] == "sample 7" and "boom at i=7" in r.errors[0]["error"]
    assert "14 failed" in str(r)
    ds = db.open(store)
    failed = np.flatnonzero(ds.status.values == db.STATUS["failed"])
    assert failed.tolist() == list(range(7, 100, 7))
    assert np.isnan(ds.y.values[failed]).all() and ds.y.values[8] == 8.0
    st = db.status(store)
    assert st.samples["failed"] == 14 and st.blocks_done == 10


def test_rerun_computes_nothing_and_resume_computes_only_missing_blocks(store, tmp_path):
    kw = {"cluster": "serial", "progress": False, "chunk_size": 30}
    full = db.run(curve, MC, store, **kw)
    assert full.blocks_computed == 10
    again = db.run(curve, MC, store, **kw)
    assert again.blocks_computed == 0 and "nothing to compute" in str(again)
    reference = _arrays(store)
    # lose three blocks: markers gone, and half-written garbage left in their chunks
    import zarr

    root = zarr.open_group(store, mode="r+")
    Store(store).ledger.forget([(1,), (4,), (9,)])
    for b in (1, 4, 9):
        root["curve"][b * 30 : b * 30 + 10] = -1.0
    assert db.status(store).blocks_done == 7 and db.status(store).samples["pending"] == 90
    resumed = db.run(curve, MC, store, cluster="processes", n_workers=2, progress=False)
    assert resumed.blocks_computed == 3 and resumed.samples_computed == 90
    _assert_same(_arrays(store), reference)
    hist = db.open(store).attrs["daskbatch"]["history"]
    assert [h["blocks_computed"] for h in hist] == [10, 3]


def test_changed_run_is_refused_naming_what_differs(store):
    kw = {"cluster": "serial", "progress": False}
    db.run(affine, db.Grid(a=[1.0, 2.0, 3.0]), store, chunk_size=2, **kw)
    cases = [
        (dict(kernel=vector_affine, space=db.Grid(a=[1.0, 2.0, 3.0]), chunk_size=2), "kernel"),
        (dict(kernel=affine, space=db.Grid(a=[1.0, 2.0, 4.0]), chunk_size=2), "space"),
        (
            dict(kernel=affine, space=db.Grid(a=[1.0, 2.0, 3.0]), chunk_size=1),
            r"chunking \(block shape \[2\] -> \[1\]\)",
        ),
        (
            dict(kernel=affine, space=db.Grid(a=[1.0, 2.0, 3.0]), chunk_size=2, constants={"b": 1.0}),
            "constants",
        ),
    ]
    for args, words in cases:
        with pytest.raises(FingerprintMismatchError, match=words):
            db.run(store=store, **args, **kw)
    r = db.run(affine, db.Grid(a=[1.0, 2.0, 4.0]), store, overwrite=True, constants={"b": 1.0}, **kw)
    assert db.open(store).y.values.tolist() == [2.0, 3.0, 5.0] and r.complete


def test_seed_change_is_refused(store):
    kw = {"cluster": "serial", "progress": False}
    db.run(affine, db.MonteCarlo({"a": db.Uniform(0, 1)}, n=10, seed=1), store, **kw)
    with pytest.raises(FingerprintMismatchError, match="seed: 1 -> 2"):
        db.run(affine, db.MonteCarlo({"a": db.Uniform(0, 1)}, n=10, seed=2), store, **kw)


@pytest.mark.parametrize(
    "args, error, words",
    [
        (
            dict(kernel=affine, space=db.Grid(a=[1.0], c=[2.0])),
            KernelSignatureError,
            r"no argument\(s\) \['c'\]",
        ),
        (dict(kernel=affine, space=db.Grid(b=[1.0])), KernelSignatureError, r"needs argument\(s\) \['a'\]"),
        (
            dict(kernel=wrong_shape, space=db.Grid(x=[0.9])),
            OutputSpecError,
            r"has shape \(4,\), expected \(3,\)",
        ),
        (dict(kernel=lambda a: a, space=db.Grid(a=[1.0])), KernelSignatureError, "decorate the function"),
        (dict(kernel=affine, space=[1, 2]), db.DaskbatchError, "is not a parameter space"),
        (
            dict(kernel=affine, space=db.Grid(a=[1.0]), cluster="gpu"),
            ClusterError,
            "cluster='gpu' is not valid",
        ),
        (dict(kernel=affine, space=db.Grid(a=[1.0]), n_workers=0), ClusterError, "n_workers=0"),
        (
            dict(kernel=affine, space=db.Grid(a=[1.0]), chunk_size="big"),
            db.DaskbatchError,
            "chunk_size='big'",
        ),
        (
            dict(kernel=affine, space=db.Grid(a=[1.0]), constants={"scale": object()}),
            db.DaskbatchError,
            "cannot be recorded",
        ),
    ],
    ids=[
        "unknown-param",
        "missing-arg",
        "wrong-shape",
        "not-a-kernel",
        "not-a-space",
        "bad-cluster",
        "bad-workers",
        "bad-chunks",
        "bad-constant",
    ],
)
def test_bad_input_fails_before_a_store_exists(tmp_path, args, error, words):
    store = tmp_path / "never.zarr"
    with pytest.raises(error, match=words):
        db.run(store=store, progress=False, **{"cluster": "serial", **args})
    assert not store.exists()


def test_empty_space_and_bad_store_path(tmp_path):
    with pytest.raises(SpaceError, match="no rows"):
        db.Table({"a": np.array([])})
    with pytest.raises(StoreError, match="does not exist"):
        db.run(affine, db.Grid(a=[1.0]), tmp_path / "missing" / "s.zarr", cluster="serial", progress=False)
    assert not (tmp_path / "missing").exists()


def test_existing_client_is_used_and_left_open(remote_scheduler, store):
    from distributed import Client

    with Client(remote_scheduler) as client:
        r = db.run(
            affine, db.Grid(a=np.arange(20.0)), store, cluster=client, progress=False, constants={"b": 1.0}
        )
        assert r.samples["ok"] == 20 and "existing client" in r.cluster
        assert client.status == "running"
    assert db.open(store).y.values.tolist() == list(np.arange(20.0) + 1)


@pytest.mark.slow  # the client tries to connect for 10 s
def test_unreachable_scheduler_is_a_clear_error(store):
    with (
        dask.config.set({"daskbatch.connect-timeout": 1.0}),
        pytest.raises(ClusterError, match="cannot connect to the scheduler at 'tcp://127.0.0.1:9'"),
    ):
        db.run(affine, db.Grid(a=[1.0]), store, cluster="tcp://127.0.0.1:9", progress=False)


def test_store_status_of_partial_store(store):
    db.run(affine, db.Grid(a=np.arange(10.0)), store, cluster="serial", progress=False, chunk_size=5)

    Store(store).ledger.forget([(1,)])
    st = db.status(store)
    assert not st.complete and st.samples["pending"] == 5 and "resume" in str(st)
    assert Store(store).done_mask().tolist() == [True, False]


def test_an_explicit_chunk_size_skips_the_cost_probe(tmp_path):
    """Only ``chunk_size="auto"`` needs the cost per sample of a vectorised kernel."""
    from daskbatch.testing import logged_sizes

    space = db.Grid(a=np.arange(20_000.0))
    for chunk_size, name in ((2_000, "explicit"), ("auto", "auto")):
        log = tmp_path / f"{name}.log"
        # the probe's time budget out of the way: a busy machine's slow first call (which
        # writes the log) would leave fewer than a twentieth of the samples for the second
        with dask.config.set({"daskbatch.probe.seconds": 600}):
            db.run(
                logged_sizes,
                space,
                tmp_path / f"{name}.zarr",
                cluster="serial",
                chunk_size=chunk_size,
                progress=False,
                constants={"log": str(log)},
            )
        sizes = [int(x) for x in log.read_text().split()]
        assert sum(sizes) >= 20_000
        if name == "explicit":
            assert sizes == [16] + [2_000] * 10  # the probe's first samples, then the blocks
        else:
            # the cost probe takes a twentieth of the samples at most, not 16,384 of 20,000
            assert sizes[1] == 1_000
            assert sum(sizes[2:]) == 20_000


def test_the_rate_of_a_run_counts_the_time_of_the_probe_whose_samples_it_counts(tmp_path):
    """The probe's results are kept and counted as the run's samples; its time was not:
    10 samples of 0.05 s on one thread read 0.03 s, 356 samples/s."""
    from daskbatch.testing import slow_square

    res = db.run(
        slow_square, db.Grid(x=np.arange(10.0)), tmp_path / "s.zarr", cluster="threads", n_workers=1,
        constants={"delay": 0.05}, progress=False,
    )  # fmt: skip
    assert res.samples_computed == 10 and res.wall_seconds >= 0.45, res.wall_seconds
    assert res.samples_per_second <= 10 / 0.45
