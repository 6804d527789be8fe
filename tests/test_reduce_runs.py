"""Runs that reduce (``run(..., reduce=..., until=...)``), end to end: real stores, real
schedulers, runs killed and resumed, the ``daskbatch`` command and spec files.

The statistics are checked against numpy on the stored outputs of the same run; the
merges of partial states are checked bit for bit across schedulers, block orders and
kills.
"""

from __future__ import annotations

import logging
import random
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import DaskbatchError
from daskbatch.store import Store
from daskbatch.testing import affine, blocks_done, daskbatch_command, run_killed, slow_square

MOMENTS = ["count", "sum", "mean", "var", "std", "min", "max"]
Q = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
BINS = np.linspace(-2.0, 2.0, 9)
BIG = 2**52  # int sums past 2**53: float64 would round them


@db.kernel(
    outputs={
        "y": db.Output(),
        "c": db.Output(dims=("t",), shape=(3,), coords={"t": [0.0, 0.5, 1.0]}),
        "k": db.Output(dtype="int64"),
        "h": db.Output(store=False),
    },
    threadsafe=True,
)
def mixed(x, z):
    """A scalar, a core-dim output (NaN in one element for x > 1.5), a large int, and an
    output that is only reduced; samples with 0.9 < x < 1 fail."""
    if 0.9 < x < 1.0:
        raise ValueError(f"x={x} in the failing band")
    c = np.array([x, x * x, np.nan if x > 1.5 else np.exp(z)])
    return {"y": x * z, "c": c, "k": BIG + int(np.rint(x * 1e6)), "h": z - x}


MIXED_REDUCE = {
    "y": [
        *MOMENTS,
        db.Quantiles(Q),
        db.Histogram(BINS),
        db.Exceedance(0.5),
        db.Exceedance(-0.5, above=False),
    ],
    "c": MOMENTS,
    "k": ["sum", "min", "max", "mean"],
    "h": ["count", "mean", "std", "min", "max"],
}


def _rel(got, want, rtol: float, floor: float = 0.0) -> None:
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    assert np.all(err <= rtol * np.maximum(np.abs(want[ok]), floor)), (got, want, err)


def _rank_error(values: np.ndarray, est: np.ndarray, q) -> np.ndarray:
    """|rank of each estimated quantile - q| (ties split), as tests/test_reductions.py."""
    ys = np.sort(values)
    rank = (np.searchsorted(ys, est, "left") + np.searchsorted(ys, est, "right")) / 2 / ys.size
    return np.abs(rank - np.asarray(q))


def _bitwise(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_identical(a, b)
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _stored_n(store: Path) -> int:
    """Samples a store holds now (0 while it cannot be read); takes no lock."""
    try:
        info = Store(store).info()
        return 0 if info is None else int(info["layout"]["batch_shape"][0])
    except Exception:
        return 0


# --------------------------------------------------------------------------- 1. against numpy


def test_every_reduction_matches_numpy_on_the_stored_outputs(tmp_path):
    store = tmp_path / "mixed.zarr"
    space = db.MonteCarlo({"x": db.Normal(0.0, 1.0), "z": db.Uniform(0.0, 2.0)}, n=2000, seed=3)
    res = db.run(
        mixed,
        space,
        store,
        cluster="threads",
        n_workers=2,
        chunk_size=97,
        progress=False,
        reduce=MIXED_REDUCE,
    )
    ds = res.reductions
    stored = db.open(store)
    ok = stored["status"].values == 1
    n_ok = int(ok.sum())
    assert 0 < n_ok < 2000 and res.samples["failed"] == 2000 - n_ok  # some failed, none counted
    assert ds.attrs["n"] == n_ok and ds.attrs["samples"] == 2000 and ds.attrs["blocks"] == 21

    y, c, k = (stored[v].values[ok] for v in ("y", "c", "k"))
    h = (stored["z"].values - stored["x"].values)[ok]  # h itself is not stored
    assert not np.isnan(y).any() and np.isnan(c[:, 2]).any()

    # counts, sums, moments, extremes
    assert ds["y_count"].dtype == np.int64 and int(ds["y_count"]) == n_ok
    assert ds["c_count"].values.tolist() == (~np.isnan(c)).sum(0).tolist()  # NaN skipped per element
    _rel(ds["y_sum"], y.sum(), 1e-12, floor=np.abs(y).sum())
    for name, values in (("y", y), ("h", h)):
        _rel(ds[f"{name}_mean"], values.mean(), 1e-12, floor=np.abs(values).mean())
        _rel(ds[f"{name}_std"], values.std(), 1e-12)
        assert ds[f"{name}_min"].values == values.min() and ds[f"{name}_max"].values == values.max()
    _rel(ds["y_var"], y.var(), 1e-12)
    _rel(ds["c_sum"], np.nansum(c, 0), 1e-12, floor=np.nansum(np.abs(c), 0).max())
    _rel(ds["c_mean"], np.nanmean(c, 0), 1e-12, floor=1.0)
    _rel(ds["c_var"], np.nanvar(c, 0), 1e-12)
    _rel(ds["c_std"], np.nanstd(c, 0), 1e-12)
    assert np.array_equal(ds["c_min"].values, np.nanmin(c, 0))
    assert np.array_equal(ds["c_max"].values, np.nanmax(c, 0))
    assert ds["c_mean"].dims == ("t",) and ds["t"].values.tolist() == [0.0, 0.5, 1.0]
    # int64: the sum is exact (float64 would round it), min and max keep the dtype
    assert ds["k_sum"].dtype == np.int64 and int(ds["k_sum"]) == sum(int(v) for v in k)
    assert float(k.astype(float).sum()) != int(ds["k_sum"])  # the check means something
    assert (
        ds["k_min"].dtype == np.int64
        and int(ds["k_min"]) == int(k.min())
        and int(ds["k_max"]) == int(k.max())
    )
    _rel(ds["k_mean"], np.mean(k.astype(np.float64)), 1e-12)

    # quantiles: within the t-digest's accuracy (rank error, as tests/test_reductions.py)
    assert ds["quantile"].values.tolist() == Q
    err = _rank_error(y, ds["y_quantile"].values, Q)
    assert err.max() < 0.003, err
    # histogram and exceedance: exact counts
    counts, _ = np.histogram(y, BINS)
    assert ds["y_histogram"].values.tolist() == counts.tolist()
    assert int(ds["y_histogram_underflow"]) == int((y < BINS[0]).sum())
    assert int(ds["y_histogram_overflow"]) == int((y > BINS[-1]).sum())
    assert ds["bin_lower"].values.tolist() == BINS[:-1].tolist()
    assert ds["y_exceedance"].dims == ("threshold",) and sorted(ds["threshold"].values) == [-0.5, 0.5]
    for threshold, hits in ((0.5, (y > 0.5).sum()), (-0.5, (y < -0.5).sum())):
        p = hits / n_ok
        assert float(ds["y_exceedance"].sel(threshold=threshold)) == p
        _rel(ds["y_exceedance_stderr"].sel(threshold=threshold), np.sqrt(p * (1 - p) / n_ok), 1e-12)

    # the same dataset from open() and status()
    for name in ds.data_vars:
        assert stored[name].identical(ds[name]), name
    xr.testing.assert_identical(db.status(store).reductions, ds)


def test_reduce_dims_on_a_grid_keeps_the_other_axis_with_its_coordinates(tmp_path):
    store = tmp_path / "grid.zarr"
    x = np.round(np.arange(0.0, 1.6, 0.05), 2)  # 0.95 fails for every z
    z = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
    res = db.run(
        mixed,
        db.Grid(x=x, z=z),
        store,
        cluster="serial",
        chunk_size={"x": 7, "z": 2},
        progress=False,
        reduce={"y": ["count", "mean", "max", db.Quantiles([0.5])], "c": ["mean"], "h": "sum"},
        reduce_dims="z",
    )
    ds = res.reductions
    assert ds.attrs["reduced_dims"] == "z"
    assert ds["y_mean"].dims == ("x",) and ds["c_mean"].dims == ("x", "t")
    assert ds["y_quantile"].dims == ("quantile", "x")
    assert np.array_equal(ds["x"].values, x) and "z" not in ds.dims
    stored = db.open(store)
    ok = stored["status"].values == 1  # (x, z)
    yy = np.where(ok, stored["y"].values, np.nan)
    counts = ok.sum(1)
    assert ds["y_count"].values.tolist() == counts.tolist()
    assert counts[x.tolist().index(0.95)] == 0 and counts.max() == len(z)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want_mean, want_max = np.nanmean(yy, 1), np.nanmax(yy, 1)
    _rel(ds["y_mean"], want_mean, 1e-12, floor=1e-300)
    assert np.array_equal(ds["y_max"].values, want_max, equal_nan=True)
    _rel(ds["h_sum"], np.where(ok, z[None, :] - x[:, None], 0).sum(1), 1e-12, floor=1.0)
    cc = np.where(ok[..., None], stored["c"].values, np.nan)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        _rel(ds["c_mean"], np.nanmean(cc, 1), 1e-12, floor=1.0)
    # a median of <= 5 values: the middle one (t-digest keeps every value)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        _rel(ds["y_quantile"].values[0], np.nanmedian(yy, 1), 1e-12, floor=1e-300)


# --------------------------------------------------------------------------- 2. store=False


def test_an_output_not_stored_has_no_array_but_its_reductions(tmp_path):
    store = tmp_path / "s.zarr"
    space = db.MonteCarlo({"x": db.Normal(0.0, 1.0), "z": db.Uniform(0.0, 2.0)}, n=100, seed=1)
    db.run(
        mixed, space, store, cluster="serial", chunk_size=30, progress=False, reduce={"h": ["mean", "max"]}
    )
    root = zarr.open_group(str(store), mode="r")
    assert "h" not in root and {"y", "c", "k"} <= set(root)
    ds = db.open(store)
    assert "h" not in ds.data_vars and {"h_mean", "h_max", "h_count"} <= set(ds.data_vars)
    ok = ds["status"].values == 1
    assert float(ds["h_max"]) == float((ds["z"].values - ds["x"].values)[ok].max())


def test_reading_a_short_runs_reductions_does_not_import_dask_array(tmp_path):
    """``result.reductions`` of a short run: its statistics are read without importing
    ``dask.array`` (a quarter of a second, a tenth of a 3-second run)."""
    script = f"""
import sys
import numpy as np
import daskbatch as db

@db.kernel(outputs={{"y": db.Output(store=False)}})
def k(z):
    return np.exp(z)

res = db.run(k, db.MonteCarlo({{"z": db.Normal(0.0, 1.0)}}, n=200, seed=1), {str(tmp_path / "s.zarr")!r},
             cluster="serial", progress=False,
             reduce={{"y": ["mean", db.Quantiles([0.5]), db.Histogram([0.0, 1.0, 9.0]), db.Exceedance(2.0)]}})
ds = res.reductions
print(float(ds["y_mean"].values), ds["y_histogram"].values.sum() + ds["y_histogram_overflow"].values,
      "dask.array" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mean, counted, imported = done.stdout.split()
    assert float(mean) == pytest.approx(np.exp(0.5), rel=0.2) and counted == "200"
    assert imported == "False"


@pytest.mark.parametrize("reduce", [None, {"y": "mean"}, "count"])
def test_an_output_not_stored_and_not_reduced_is_refused_before_any_store(tmp_path, reduce):
    store = tmp_path / "never.zarr"
    if reduce == "count":  # a statistic for every output reduces h too: accepted
        db.run(mixed, db.Grid(x=[0.1, 0.2], z=[1.0]), store, cluster="serial", progress=False, reduce=reduce)
        assert int(db.open(store)["h_count"]) == 2
        return
    with pytest.raises(DaskbatchError) as e:
        db.run(mixed, db.Grid(x=[0.1, 0.2], z=[1.0]), store, cluster="serial", progress=False, reduce=reduce)
    msg = str(e.value)
    assert "\n" not in msg and "'h'" in msg and "store=False" in msg
    assert not store.exists()


# --------------------------------------------------------------------------- 3. bitwise merges

SWEEP = """\
import sys

import daskbatch as db
from daskbatch.testing import slow_square


def arguments(store, cluster="threads"):
    return dict(
        kernel=slow_square,
        space=db.MonteCarlo({"x": db.Normal(0.0, 1.0)}, n=1200, seed=21),
        store=store,
        cluster=cluster,
        n_workers=2,
        chunk_size=30,
        constants={"delay": 0.004},
        progress=False,
        reduce=[
            "count", "sum", "mean", "var", "std", "min", "max",
            db.Quantiles([0.05, 0.5, 0.95]), db.Histogram([0, 0.5, 1, 2, 4]), db.Exceedance(1.0),
        ],
    )


if __name__ == "__main__":
    db.run(**arguments(sys.argv[1]))
"""


def test_killed_and_resumed_and_any_worker_count_give_bitwise_identical_reductions(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    arguments = runpy.run_path(str(script))["arguments"]
    serial = db.run(**{**arguments(tmp_path / "serial.zarr", "serial"), "constants": {"delay": 0.0}})
    threads = db.run(**{**arguments(tmp_path / "threads.zarr"), "constants": {"delay": 0.0}})
    assert serial.blocks_computed == threads.blocks_computed == 40
    want = serial.reductions
    _bitwise(threads.reductions, want)

    store = tmp_path / "killed.zarr"
    rng = random.Random()
    first, second = sorted(rng.sample(range(2, 34), 2))
    moments = []
    for at in (first, second):  # killed twice, at random moments after `at` blocks committed
        pause = rng.uniform(0.0, 0.1)
        k = run_killed(
            [sys.executable, str(script), str(store)],
            until=lambda at=at: blocks_done(store) >= at,
            delay=pause,
            poll=0.02,
            wait=60,
        )
        moments.append((at, round(pause, 3), blocks_done(store)))
        assert k.caught and k.signalled and k.returncode == -9, (moments, k.stderr[-2000:])
    assert blocks_done(store) > 0, moments
    half = db.open(store).attrs  # a killed store reads (what is committed so far)
    assert "daskbatch" in half
    resumed = db.run(**arguments(store))  # the same call again
    assert resumed.samples["ok"] == 1200, moments
    _bitwise(resumed.reductions, want)
    _bitwise(db.status(store).reductions, want)


# --------------------------------------------------------------------------- 4. convergence


def _adaptive(store, cluster="serial", **kw):
    until = kw.pop("until", db.Converged("y", rtol=0.1, min_n=200))
    return db.run(
        slow_square,
        db.MonteCarlo({"x": db.Normal(0.0, 1.0)}, n=200, seed=7),
        store,
        cluster=cluster,
        n_workers=2,
        chunk_size=64,
        progress=False,
        reduce=["mean", "std"],
        until=until,
        **kw,
    )


def _until(store) -> dict:
    return Store(store).require_info()["until"]


def test_the_same_seed_stops_at_the_same_n_with_the_same_bits_on_every_scheduler(tmp_path):
    ref = _adaptive(tmp_path / "serial.zarr")
    want, rounds = ref.reductions, _until(tmp_path / "serial.zarr")
    assert rounds["state"] == "converged" and [r["n"] for r in rounds["rounds"]] == [200, 400, 800]
    assert rounds["rounds"][-1]["met"] and not rounds["rounds"][-2]["met"]
    assert want.attrs["n"] == 800 and ref.samples["ok"] == 800
    assert rounds["rounds"][-1]["value"] == float(want["y_mean"])
    for cluster in ("threads", "processes", "local"):
        store = tmp_path / f"{cluster}.zarr"
        res = _adaptive(store, cluster)
        _bitwise(res.reductions, want)
        assert _until(store) == rounds, cluster
    # a converged store computes nothing more
    again = _adaptive(tmp_path / "serial.zarr")
    assert again.blocks_computed == 0 and again.samples_computed == 0
    _bitwise(again.reductions, want)
    assert _until(tmp_path / "serial.zarr") == rounds


ADAPTIVE = """\
import sys

import daskbatch as db
from daskbatch.testing import slow_square

if __name__ == "__main__":
    db.run(
        slow_square,
        db.MonteCarlo({"x": db.Normal(0.0, 1.0)}, n=200, seed=7),
        sys.argv[1],
        cluster="serial",
        chunk_size=64,
        constants={"delay": 0.003},
        progress=False,
        reduce=["mean", "std"],
        until=db.Converged("y", rtol=0.1, min_n=200),
    )
"""


def test_an_adaptive_run_killed_after_it_grew_reruns_to_the_same_n_and_estimate(tmp_path):
    ref = _adaptive(tmp_path / "ref.zarr")
    script = tmp_path / "adaptive.py"
    script.write_text(ADAPTIVE)
    store = tmp_path / "killed.zarr"
    pause = random.uniform(0.0, 0.6)
    k = run_killed(
        [sys.executable, str(script), str(store)],
        until=lambda: _stored_n(store) > 200,
        delay=pause,
        poll=0.02,
    )
    assert k.caught and k.signalled and k.returncode == -9, (pause, k.stderr[-2000:])
    assert _stored_n(store) in (400, 800) and _until(store)["state"] != "converged", pause
    done = subprocess.run(
        [sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _stored_n(store) == 800
    _bitwise(db.status(store).reductions, ref.reductions)
    assert _until(store) == _until(tmp_path / "ref.zarr")


def test_an_unmeetable_tolerance_stops_at_max_n_says_so_and_computes_nothing_more(tmp_path, caplog):
    store = tmp_path / "never.zarr"
    rule = db.Converged("y", rtol=1e-9, min_n=100, max_n=700)
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        res = _adaptive(store, until=rule)
    state = _until(store)
    assert state["state"] == "max_n" and [r["n"] for r in state["rounds"]] == [200, 400, 700]
    assert not any(r["met"] for r in state["rounds"])
    assert res.samples["ok"] == 700 and res.reductions.attrs["n"] == 700
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not converged at max_n=700" in m and "max_n" in m for m in warned), warned
    assert "stopped at max_n, not converged" in str(res)
    again = _adaptive(store, until=rule)
    assert again.blocks_computed == 0 and _until(store) == state


def test_raising_max_n_goes_on_from_the_stored_samples_as_the_warning_says(tmp_path):
    store = tmp_path / "more.zarr"
    _adaptive(store, until=db.Converged("y", rtol=1e-9, min_n=100, max_n=400))
    assert _until(store)["state"] == "max_n"
    more = _adaptive(store, until=db.Converged("y", rtol=1e-9, min_n=100, max_n=800))
    assert more.blocks_computed > 0 and more.samples["ok"] == 800
    assert _until(store)["state"] == "max_n" and _until(store)["rounds"][-1]["n"] == 800


def test_retried_failures_are_merged_once(tmp_path):
    from daskbatch.testing import flaky

    space = db.Grid(i=np.arange(100))
    run = dict(cluster="serial", chunk_size=30, progress=False, reduce=["count", "sum", db.Quantiles([0.5])])
    (tmp_path / "f").mkdir()
    first = db.run(flaky, space, tmp_path / "a.zarr", constants={"folder": str(tmp_path / "f")}, **run)
    assert first.samples["failed"] > 0 and first.reductions.attrs["n"] == first.samples["ok"]
    again = db.run(
        flaky, space, tmp_path / "a.zarr", constants={"folder": str(tmp_path / "f")}, retry_failed=True, **run
    )
    assert again.samples["ok"] == 100
    (tmp_path / "g").mkdir()
    for i in range(100):  # every sample already failed once: a clean run
        (tmp_path / "g" / f"{i}.attempts").write_text("1")
    clean = db.run(flaky, space, tmp_path / "b.zarr", constants={"folder": str(tmp_path / "g")}, **run)
    _bitwise(again.reductions, clean.reductions)
    assert int(again.reductions["y_sum"]) == 2 * sum(range(100))


# --------------------------------------------------------------------------- 5. changed reduce


def test_a_changed_reduce_on_an_existing_store_is_refused_and_leaves_it_as_it_was(tmp_path):
    store = tmp_path / "s.zarr"
    space = db.MonteCarlo({"x": db.Normal(0.0, 1.0)}, n=90, seed=2)
    run = dict(cluster="serial", chunk_size=30, progress=False)
    db.run(slow_square, space, store, reduce=["std", "mean"], **run)
    before = _files(store)
    for other in (["mean"], ["mean", "std", "max"], {"y": db.Quantiles([0.5])}):
        with pytest.raises(DaskbatchError, match="reduce") as e:
            db.run(slow_square, space, store, reduce=other, **run)
        assert "\n" not in str(e.value)
        assert _files(store) == before
    # the same statistics in another order are the same reductions: nothing to compute
    assert db.run(slow_square, space, store, reduce={"y": ["mean", "std"]}, **run).blocks_computed == 0
    grid = tmp_path / "g.zarr"
    db.run(affine, db.Grid(a=[1.0, 2.0], b=[0.0, 1.0, 2.0]), grid, reduce="mean", reduce_dims="b", **run)
    before = _files(grid)
    with pytest.raises(DaskbatchError, match="reduce"):
        db.run(affine, db.Grid(a=[1.0, 2.0], b=[0.0, 1.0, 2.0]), grid, reduce="mean", reduce_dims="a", **run)
    assert _files(grid) == before


# --------------------------------------------------------------------------- 6. the command

SPEC = """\
kernel = "daskbatch.testing:slow_square"
store = "adaptive.zarr"
cluster = "serial"
chunk_size = 64

[constants]
delay = {delay}

[reduce]
y = ["mean", "std", {{quantiles = [0.1, 0.9]}}]

[until]
output = "y"
rtol = 0.1
min_n = 200

[space]
type = "montecarlo"
n = 200
seed = 7

[space.params.x]
dist = "normal"
mean = 0
sd = 1
"""


def _reference(tmp_path: Path) -> xr.Dataset:
    res = db.run(
        slow_square,
        db.MonteCarlo({"x": db.Normal(0.0, 1.0)}, n=200, seed=7),
        tmp_path / "ref.zarr",
        cluster="serial",
        chunk_size=64,
        progress=False,
        reduce={"y": ["mean", "std", db.Quantiles([0.1, 0.9])]},
        until=db.Converged("y", rtol=0.1, min_n=200),
    )
    return res.reductions


def test_a_spec_with_reduce_and_until_runs_and_status_shows_them(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(delay=0.0))
    r = run_cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    store = tmp_path / "adaptive.zarr"
    want = _reference(tmp_path)
    _bitwise(db.status(store).reductions, want)
    st = run_cli("status", str(store))
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert any(line.startswith("reduced:") and "800 ok samples" in line for line in lines), st.stdout
    mean = next(line for line in lines if line.strip().startswith("y_mean:"))
    assert f"{float(want['y_mean']):.6g}" in mean
    assert any(line.strip().startswith("y_quantile:") for line in lines)
    until = next(line for line in lines if line.startswith("until:"))
    assert "mean of 'y'" in until and "met at 800 values" in until and "(converged)" in until


REDUCE_LINE = 'y = ["mean", "std", {quantiles = [0.1, 0.9]}]'


@pytest.mark.parametrize(
    "old, new, says, at",
    [
        (REDUCE_LINE, 'y = ["mean", {quantile = [0.5]}]', "is not a statistic", "y ="),
        (REDUCE_LINE, 'y = ["mean", {quantiles = [1.5]}]', "q=1.5", "y ="),
        (REDUCE_LINE, 'y = ["mean", "median"]', "unknown statistic 'median'", "y ="),
        (REDUCE_LINE, 'nope = "mean"', "'nope' is not an output", "nope ="),
        (
            "chunk_size = 64",
            'chunk_size = 64\nreduce_dims = "depth"',
            "'depth' is not a batch dim",
            "reduce_dims",
        ),
        ('output = "y"', 'output = "w"', "'w' is not an output", "[until]"),
    ],
)
def test_a_bad_reduce_entry_is_one_line_naming_the_file_and_line(tmp_path, cli, old, new, says, at):
    spec = tmp_path / "bad.toml"
    text = SPEC.format(delay=0.0).replace(old, new)
    spec.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith(at))
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 2
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1, r.stderr
    assert f"{spec}, line {line}:" in err[0] and says in err[0], err[0]
    assert not (tmp_path / "adaptive.zarr").exists()


def test_daskbatch_resume_finishes_a_killed_adaptive_run(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(delay=0.003))
    store = tmp_path / "adaptive.zarr"
    pause = random.uniform(0.0, 0.5)
    k = run_killed(
        daskbatch_command("run", str(spec), "--no-progress"),
        until=lambda: _stored_n(store) > 200,
        delay=pause,
        poll=0.02,
    )
    assert k.caught and k.signalled and k.returncode == -9, (pause, k.stderr[-2000:])
    st = run_cli("status", str(store))
    until = [line for line in st.stdout.splitlines() if line.startswith("until:")]
    assert len(until) == 1 and "mean of 'y'" in until[0] and "(round " in until[0], st.stdout
    r = run_cli("resume", str(store), "--no-progress")
    assert r.returncode == 0, r.stderr
    want = _reference(tmp_path)
    _bitwise(db.status(store).reductions, want)
    assert _until(store) == _until(tmp_path / "ref.zarr")


# --------------------------------------------------------------------------- 7. Saltelli


@db.kernel(outputs={"y": db.Output()}, per_sample=False)
def ishigami(x1, x2, x3):
    return np.sin(x1) + 7.0 * np.sin(x2) ** 2 + 0.1 * x3**4 * np.sin(x1)


def test_a_saltelli_design_reduces_its_mean(tmp_path):
    from daskbatch.sensitivity import sobol_indices

    store = tmp_path / "s.zarr"
    space = db.Saltelli({k: db.Uniform(-np.pi, np.pi) for k in ("x1", "x2", "x3")}, n=64, seed=11)
    res = db.run(ishigami, space, store, cluster="serial", chunk_size=50, progress=False, reduce="mean")
    ds = res.reductions
    y = db.open(store)["y"].values
    assert space.n == 64 and y.size == 64 * 5 == int(ds["y_count"]) == ds.attrs["n"]
    _rel(ds["y_mean"], y.mean(), 1e-12)
    assert sobol_indices(store, "y")["S1"].sizes["parameter"] == 3  # the store is still a Saltelli one
    # growing until converged: whole powers of 2 of base points
    grown = tmp_path / "grown.zarr"
    res = db.run(
        ishigami,
        space,
        grown,
        cluster="serial",
        chunk_size=50,
        progress=False,
        reduce="mean",
        until=db.Converged("y", rtol=0.05, min_n=100),
    )
    state = _until(grown)
    sizes = [r["n"] for r in state["rounds"]]
    assert (
        state["state"] == "converged" and sizes[0] == 320 and sizes == [320 * 2**i for i in range(len(sizes))]
    )
    assert res.samples["ok"] == sizes[-1] and abs(float(res.reductions["y_mean"]) - 3.5) < 0.2


# --------------------------------------------------------------------------- what users hit


def _vec(**kw):
    from daskbatch.testing import vector_affine

    return vector_affine


def test_a_result_name_that_is_an_output_is_refused_before_the_store(tmp_path):
    @db.kernel(outputs={"y": db.Output(), "y_mean": db.Output()}, per_sample=False)
    def both(a):
        return {"y": a, "y_mean": a}

    with pytest.raises(DaskbatchError, match=r"result 'y_mean' has the name of the output 'y_mean'"):
        db.run(both, db.Grid(a=[1.0, 2.0]), tmp_path / "s.zarr", reduce={"y": "mean"}, cluster="serial")
    assert not (tmp_path / "s.zarr").exists()


def _raising_chunk(values):
    raise ValueError("a bug in chunk")


def test_an_aggregation_that_cannot_be_found_again_or_fails_is_refused_before_the_store(tmp_path):
    with pytest.raises(DaskbatchError, match="cannot be found again by its name"):
        db.Aggregation("a", lambda v: (v,), np.maximum, np.asarray)
    bad = db.Aggregation("a", _raising_chunk, np.maximum, np.asarray)
    space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1)
    with pytest.raises(
        DaskbatchError, match=r"reducing the probe's first \d+ samples failed .*a bug in chunk"
    ):
        db.run(_vec(), space, tmp_path / "s.zarr", reduce={"y": bad}, cluster="serial", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_until_stops_when_nothing_can_be_counted(tmp_path, caplog):
    @db.kernel(outputs={"y": db.Output(store=False)}, per_sample=False)
    def nan(a):
        return np.full(np.shape(a), np.nan)

    space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=32, seed=1)
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        res = db.run(
            nan,
            space,
            tmp_path / "s.zarr",
            cluster="serial",
            progress=False,
            until=db.Converged("y", rtol=0.1),
        )
    assert res.n_samples == 32  # one round, not 1024 × 32 samples
    assert db.open(tmp_path / "s.zarr").attrs["daskbatch"]["until"]["state"] == "no_values"
    assert any("no ok, finite value of 'y'" in r.getMessage() for r in caplog.records)


def test_until_refusals_for_designs_that_cannot_grow_as_asked(tmp_path):
    rule = db.Converged("y", rtol=0.1)
    lhs = db.LatinHypercube({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1)
    with pytest.raises(DaskbatchError, match=r"give strata=102,400 or more"):
        db.run(_vec(), lhs, tmp_path / "a.zarr", until=rule, cluster="serial")
    mc = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1)
    with pytest.raises(DaskbatchError, match=r"max_n=50 is less than the design's first round of 100"):
        db.run(_vec(), mc, tmp_path / "b.zarr", until=db.Converged("y", rtol=0.1, max_n=50, min_n=10))
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    fixed = db.LatinHypercube({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1, strata=2_000)
    res = db.run(
        _vec(),
        fixed,
        tmp_path / "c.zarr",
        cluster="serial",
        progress=False,
        until=db.Converged("y", rtol=0.05, min_n=10, max_n=2_000),
    )
    assert res.n_samples in (100, 200, 400, 800, 1_600, 2_000)


def test_a_rerun_without_reduce_goes_on_with_the_stores_and_a_changed_one_is_named(tmp_path, cli):
    store = tmp_path / "s.zarr"
    run = dict(cluster="serial", progress=False, chunk_size=50)
    db.run(
        _vec(),
        db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1),
        store,
        reduce={"y": ["mean", "std"]},
        **run,
    )
    with pytest.raises(DaskbatchError, match=r"reduce \(y: \[mean, std\] -> \[mean\]; .*run without reduce="):
        db.run(
            _vec(),
            db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=100, seed=1),
            store,
            reduce={"y": "mean"},
            **run,
        )
    grown = db.run(_vec(), db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=200, seed=1), store, **run)
    assert grown.blocks_computed == 2 and grown.reductions.attrs["n"] == 200
    r = cli("status", str(store), "--json")
    doc = __import__("json").loads(r.stdout)
    assert doc["reductions"]["n"] == 200 and set(doc["reductions"]["values"]) >= {"y_mean", "y_std"}


def test_a_store_with_an_output_only_reduced_reruns_grows_and_reads_like_any(tmp_path, cli):
    """An output declared Output(store=False): a rerun and a growth without reduce= go on
    with the store's reductions (not refused as if nothing reduced it), and summary,
    export, report and compare read the outputs the store holds."""
    store = tmp_path / "s.zarr"
    space = lambda n: db.MonteCarlo({"x": db.Normal(0.0, 1.0), "z": db.Uniform(0.0, 2.0)}, n=n, seed=1)  # noqa: E731
    run = dict(cluster="serial", chunk_size=30, progress=False)
    first = db.run(mixed, space(60), store, reduce={"h": ["mean", "max"]}, **run)
    again = db.run(mixed, space(60), store, **run)  # without reduce=: the store's
    assert again.blocks_computed == 0 and float(again.reductions["h_mean"]) == float(
        first.reductions["h_mean"]
    )
    assert db.plan(mixed, space(90), store, cluster="serial").n_blocks == 3
    grown = db.run(mixed, space(90), store, **run)
    assert grown.blocks_computed == 1 and sum(grown.samples.values()) == 90
    assert grown.reductions.attrs["n"] == grown.samples["ok"]
    ds = db.open(store)
    ok = ds["status"].values == 1
    assert float(grown.reductions["h_max"]) == float((ds["z"].values - ds["x"].values)[ok].max())
    with pytest.raises(DaskbatchError, match=r"output 'h' is declared Output\(store=False\) but reduce="):
        db.run(mixed, space(60), tmp_path / "new.zarr", **run)  # a new store: nothing reduces it
    assert not (tmp_path / "new.zarr").exists()

    r = cli("summary", str(store))
    rows = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert r.returncode == 0 and "y" in rows and "h" not in rows, r.stdout + r.stderr
    r = cli("export", str(store), "-o", str(tmp_path / "s.csv"))
    assert r.returncode == 0, r.stderr
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert "y" in header and "h" not in header and not any(c.startswith("h_") for c in header)
    r = cli("report", str(store), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    r = cli("compare", str(store), str(store))
    assert r.returncode == 0 and "h_mean" not in r.stdout, r.stdout + r.stderr
    assert list(db.outliers(store, "y").columns)[:3] == ["sample", "x", "z"]


@pytest.mark.parametrize(
    ("reduce", "dims", "says"),
    [
        ({"y": "mean"}, "nope", r"^reduce_dims: 'nope' is not a batch dim; use one or more of \['a', 'b'\]"),
        ({"y": "mean"}, ["a", "a"], r"^reduce_dims=\['a', 'a'\] names a dim twice"),
        (None, "a", r"^reduce_dims='a' is given without reduce=; .* or leave reduce_dims out"),
    ],
)
def test_a_bad_reduce_dims_is_named_as_run_calls_it(tmp_path, reduce, dims, says):
    space = db.Grid(a=[1.0, 2.0], b=[0.0, 1.0])
    with pytest.raises(DaskbatchError, match=says):
        db.run(affine, space, tmp_path / "s.zarr", cluster="serial", reduce=reduce, reduce_dims=dims)
    assert not (tmp_path / "s.zarr").exists()
