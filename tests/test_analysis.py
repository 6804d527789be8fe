"""Summaries checked against numpy, the approximate quantiles of large reductions, and
the streamed export round-tripped through pandas (and the commands that print them)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch import analysis
from daskbatch.testing import affine, curve, fail_on_multiples, vector_affine

MC = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2, 3], 1, dim="k")}, n=500, seed=4)


@pytest.fixture(scope="module")
def mc_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("a") / "mc.zarr"
    db.run(curve, MC, store, cluster="serial", chunk_size=64, progress=False)
    return store


def test_summary_statistics_equal_numpy(mc_store):
    s = db.summarize(mc_store)
    ds = db.open(mc_store).load()
    assert list(s.stat.values) == ["count", "mean", "std", "min", "max", "p10", "p50", "p90"]
    assert int(s.n_ok) == 500 and int(s.n_failed) == 0
    for name in ("total", "npos"):
        v = ds[name].values.astype(float)
        want = [v.size, v.mean(), v.std(ddof=1), v.min(), v.max(), *np.quantile(v, [0.1, 0.5, 0.9])]
        assert np.allclose(s[name].values, want, rtol=1e-12), name
    # a curve: the same statistics per time, i.e. ensemble bands
    c = ds.curve.values
    assert s.curve.dims == ("stat", "t")
    assert np.allclose(s.curve.sel(stat="p50"), np.median(c, axis=0), rtol=1e-12)
    assert np.allclose(s.curve.sel(stat="p90"), np.quantile(c, 0.9, axis=0), rtol=1e-12)
    assert np.allclose(s.curve.sel(stat="std"), c.std(axis=0, ddof=1), rtol=1e-12)  # the sample sd


def test_failed_samples_are_counted_not_averaged(tmp_path):
    store = tmp_path / "f.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(70)), store, cluster="serial", progress=False)
    s = db.summarize(store)
    ok = np.array([i for i in range(70) if i % 7 or i == 0], dtype=float)
    assert int(s.n_ok) == ok.size and int(s.n_failed) == 9
    assert float(s.y.sel(stat="mean")) == pytest.approx(ok.mean())
    assert float(s.y.sel(stat="count")) == ok.size


def test_statistics_over_chosen_grid_dims(tmp_path):
    store = tmp_path / "g.zarr"
    grid = db.Grid(a=np.arange(4.0), b=np.arange(10.0))
    db.run(vector_affine, grid, store, cluster="serial", progress=False, constants={"scale": 2.0})
    s = db.summarize(store, over=["b"])
    assert s.y.dims == ("stat", "a") and list(s.a.values) == [0, 1, 2, 3]
    assert np.allclose(s.y.sel(stat="mean"), 2 * np.arange(4.0) + 4.5)
    with pytest.raises(db.DaskbatchError, match=r"over=\['c'\]: give some of the batch dims \['a', 'b'\]"):
        db.summarize(store, over=["c"])
    with pytest.raises(db.DaskbatchError, match="must be probabilities"):
        db.summarize(store, quantiles=[50])


def test_large_reductions_use_approximate_quantiles_within_tolerance(tmp_path, monkeypatch):
    store = tmp_path / "big.zarr"
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=200_000, seed=2)
    db.run(vector_affine, space, store, cluster="threads", n_workers=2, chunk_size=20_000, progress=False)
    exact = db.summarize(store)
    monkeypatch.setattr(analysis, "EXACT_QUANTILE_VALUES", 10_000)
    approx = db.summarize(store)
    # documented: dask's merged per-chunk percentiles, within 1% of the range here
    assert np.allclose(
        approx.y.sel(stat=["p10", "p50", "p90"]), exact.y.sel(stat=["p10", "p50", "p90"]), atol=0.01
    )
    assert np.allclose(approx.y.sel(stat="mean"), exact.y.sel(stat="mean"), rtol=1e-12)


def test_approximate_bands_of_a_curve_output(tmp_path, monkeypatch):
    store = tmp_path / "curves.zarr"
    space = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2, 3], 1, dim="k")}, n=20_000, seed=5)
    db.run(curve, space, store, cluster="serial", chunk_size=2000, progress=False)
    exact = db.summarize(store)
    monkeypatch.setattr(analysis, "EXACT_QUANTILE_VALUES", 100)
    approx = db.summarize(store)
    for q in ("p10", "p50", "p90"):
        a, e = approx.curve.sel(stat=q).values, exact.curve.sel(stat=q).values
        assert approx.curve.sel(stat=q).dims == ("t",)
        assert np.allclose(a, e, rtol=0.01, atol=0.01 * np.ptp(e)), q


def test_export_round_trips_through_pandas(mc_store, tmp_path):
    ds = db.open(mc_store).load()
    n = db.export(mc_store, tmp_path / "out.csv")
    df = pd.read_csv(tmp_path / "out.csv")
    assert n == len(df) == 500
    params = ["sample", "x", "w_0", "w_1", "w_2"]
    assert set(df.columns) == {*params, "status", "error", "message", "total", "npos"}
    assert df["message"].isna().all() and df["error"].isna().all()  # every sample ok: empty cells
    assert np.array_equal(df["sample"], np.arange(500))
    assert np.allclose(df["x"], ds.x.values, rtol=1e-15) and np.allclose(
        df["w_2"], ds.w.values[:, 2], rtol=1e-15
    )
    assert np.array_equal(df["npos"], ds.npos.values) and (df["status"] == 1).all()
    # parquet keeps the bits; wide curves
    db.export(mc_store, tmp_path / "out.parquet", curves="wide")
    pq = pd.read_parquet(tmp_path / "out.parquet")
    assert np.array_equal(pq["total"], ds.total.values)
    assert np.array_equal(pq[[f"curve_{j}" for j in range(5)]].to_numpy(), ds.curve.values)
    # long curves: a row per sample and time index
    db.export(mc_store, tmp_path / "long.parquet", curves="long")
    long = pd.read_parquet(tmp_path / "long.parquet")
    assert len(long) == 2500 and np.array_equal(long["curve"].to_numpy().reshape(500, 5), ds.curve.values)
    with pytest.raises(db.DaskbatchError, match="format='xlsx'"):
        db.export(mc_store, tmp_path / "out.xlsx")


def test_export_of_a_grid_labels_rows_with_the_axis_values(tmp_path):
    from daskbatch.testing import tagged

    store = tmp_path / "g.zarr"
    db.run(tagged, db.Grid(x=[0.5, 1.5], kind=["a", "bb", "ccc"]), store, cluster="serial", progress=False)
    assert db.export(store, tmp_path / "g.csv") == 6
    df = pd.read_csv(tmp_path / "g.csv")
    assert list(df["x"]) == [0.5, 0.5, 0.5, 1.5, 1.5, 1.5] and list(df["kind"]) == ["a", "bb", "ccc"] * 2
    assert list(df["y"]) == [1.5, 2.5, 3.5, 2.5, 3.5, 4.5]


def test_summary_and_export_commands(mc_store, tmp_path, cli):
    r = run_cli("summary", str(mc_store))
    assert r.returncode == 0, r.stderr
    assert "500 ok, 0 failed" in r.stdout and "success rate 100.00%" in r.stdout
    assert "total" in r.stdout and "curve over t (5):" in r.stdout and "outliers" in r.stdout
    r = cli("summary", str(mc_store), "--json")  # the same command, in this process
    doc = json.loads(r.stdout)
    assert doc["samples"]["ok"] == 500 and len(doc["outputs"]["curve"]["p50"]) == 5
    r = run_cli("export", str(mc_store), "-o", str(tmp_path / "e.parquet"), "--curves", "wide")
    assert r.returncode == 0 and "wrote 500 rows" in r.stdout
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 500


def test_outliers_are_found_on_planted_data(tmp_path):
    values = np.random.default_rng(1).normal(0, 1, 1000)
    values[[17, 404, 777]] = [50.0, -40.0, 12.0]
    store = tmp_path / "o.zarr"
    db.run(affine, db.Table({"a": values}), store, cluster="serial", chunk_size=128, progress=False)
    for method, threshold in (("iqr", 5.0), ("zscore", 5.0)):
        df = db.outliers(store, "y", method=method, threshold=threshold)
        assert sorted(df["sample"].tolist()) == [17, 404, 777], method
        assert df["sample"].iloc[0] == 17 and df["a"].iloc[0] == 50.0  # the most extreme first
        assert df.attrs["total"] == 3
    assert db.outliers(store, "y", threshold=5.0, limit=2)["sample"].tolist() == [17, 404]
    with pytest.raises(db.DaskbatchError, match="method='mad'"):
        db.outliers(store, "y", method="mad")


def test_convergence_of_a_running_mean(tmp_path):
    store = tmp_path / "c.zarr"
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=5000, seed=8)
    db.run(affine, space, store, cluster="serial", chunk_size=700, progress=False)
    c = db.convergence(store, "y", points=50)
    a = db.open(store).a.values
    assert int(c.n[-1]) == 5000 and (np.diff(c.n) > 0).all()
    assert float(c["mean"][-1]) == pytest.approx(a.mean(), rel=1e-12)
    assert float(c.sem[-1]) == pytest.approx(a.std(ddof=1) / np.sqrt(5000), rel=1e-9)
    k = int(c.n[10])
    assert float(c["mean"][10]) == pytest.approx(a[:k].mean(), rel=1e-12)


def test_compare_two_runs(tmp_path):
    space = db.MonteCarlo({"a": db.Normal(0, 1)}, n=3000, seed=2)
    db.run(affine, space, tmp_path / "a.zarr", cluster="serial", chunk_size=500, progress=False)
    db.run(affine, space, tmp_path / "b.zarr", cluster="threads", chunk_size=300, progress=False)
    same = db.compare(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert same.attrs["same_parameters"] and same.loc["y", "samples differing"] == 0
    assert same.loc["y", "ks p-value"] == pytest.approx(1.0) and abs(same.loc["y", "mean diff"]) < 1e-12
    db.run(
        affine,
        space,
        tmp_path / "c.zarr",
        cluster="serial",
        progress=False,
        constants={"scale": 1.001},
    )
    close = db.compare(tmp_path / "a.zarr", tmp_path / "c.zarr", rtol=1e-6)
    assert close.attrs["same_parameters"] and close.loc["y", "samples differing"] > 2900
    other = db.MonteCarlo({"a": db.Normal(0.3, 1)}, n=3000, seed=3)
    db.run(affine, other, tmp_path / "d.zarr", cluster="serial", progress=False)
    shifted = db.compare(tmp_path / "a.zarr", tmp_path / "d.zarr")
    assert not shifted.attrs["same_parameters"] and shifted.loc["y", "samples differing"] is None
    assert shifted.loc["y", "ks p-value"] < 1e-6 and shifted.loc["y", "mean diff"] == pytest.approx(
        0.3, abs=0.08
    )


def _chromium() -> str:
    import os
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: `make test` installs it (apt-get install chromium)")
        pytest.skip("needs chromium (apt-get install chromium)")
    return exe


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_plot_drawn(mc_store, tmp_path):
    import re
    import subprocess

    exe = _chromium()
    out = tmp_path / "report.html"
    r = run_cli("report", str(mc_store), "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "Provenance" in text and "Failures" not in text
    for words in ("total: histogram", "curve: median and p10", "total: running mean", "total against x"):
        assert words in text, words
    dom = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=30000",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    m = re.search(r'data-plots="(\d+)"[^>]*>canvases=(\d+) drawn=(\d+)<', dom)
    assert m, dom[-2000:]
    plots, canvases, drawn = (int(g) for g in m.groups())
    assert plots == 5 and drawn >= plots, (plots, canvases, drawn)


def test_report_lists_failures_with_their_messages(tmp_path):
    store = tmp_path / "f.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(30)), store, cluster="serial", progress=False)
    path = db.report(store, tmp_path / "r.html")
    text = path.read_text()
    assert "Failures: 4 of 30 samples" in text and "boom at i=7" in text and "RuntimeError" in text


@db.kernel(outputs={"y": db.Output(), "n": db.Output(dtype="int64")})
def never_ok(x):
    raise ValueError("refused")


@db.kernel(outputs={"y": db.Output(store=False)}, per_sample=False)
def only_reduced(a):
    return np.exp(a)


def test_json_is_strict_and_stores_that_keep_no_output_say_where_their_reductions_are(tmp_path, cli):
    store = tmp_path / "f.zarr"
    db.run(never_ok, db.Grid(x=[1.0, 2.0, 3.0]), store, cluster="serial", progress=False)
    for command in (["summary", str(store), "--json"], ["status", str(store), "--json"]):
        r = cli(*command)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout, parse_constant=lambda c, w=command: pytest.fail(f"{w}: {c} is not JSON"))
    assert doc["samples"]["failed"] == 3
    r = cli("compare", str(store), str(store), "--json")
    json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"compare: {c} is not JSON"))

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for seed, path in ((1, a), (2, b)):
        space = db.MonteCarlo({"a": db.Normal(0, 1)}, n=200, seed=seed)
        db.run(only_reduced, space, path, cluster="serial", progress=False, reduce=["mean"])
    r = cli("compare", str(a), str(b))
    assert r.returncode == 2 and "only reduced) has its reductions in `daskbatch status STORE`" in r.stderr
    r = cli("summary", str(a))
    assert (
        r.returncode == 0
        and f"only reduced (Output(store=False)): y; their reductions: daskbatch status {a}" in r.stdout
    )


@db.kernel(outputs={"r": db.Output(dims=("q",), shape=(None,))})
def one_long(i):
    return np.arange(3000.0) if i == 7 else np.arange(float(i % 5))


def test_approximate_quantiles_of_a_long_ragged_value_are_taken_a_few_chunks_at_a_time(tmp_path, monkeypatch):
    """One long value makes a wide padded array: the blocks' percentiles of every position
    at once took blocks x 202 x width x 8 bytes (gigabytes for a value of a million). Taken
    a few chunks at a time, the result is the same."""
    from daskbatch import ragged

    store = tmp_path / "long.zarr"
    monkeypatch.setattr(ragged, "CHUNK_BYTES", 20 * 8 * 256)  # 256 values per chunk (in this process)
    db.run(one_long, db.Table({"i": np.arange(200)}), store, cluster="serial", chunk_size=20, progress=False)
    monkeypatch.setattr(analysis, "EXACT_QUANTILE_VALUES", 100)
    whole = db.summarize(store)
    assert db.open(store).r.data.numblocks[1] > 1  # the padded array is cut along its values
    seen = []
    merged = analysis._merged_sketches

    def counted(data, grid, qs):
        seen.append(data.shape[1])
        return merged(data, grid, qs)

    monkeypatch.setattr(analysis, "_merged_sketches", counted)
    monkeypatch.setattr(analysis, "SKETCH_BYTES", 202 * 8 * 300)  # a few hundred values at a time
    sliced = db.summarize(store)
    assert len(seen) > 1 and sum(seen) == 3000 and max(seen) < 3000
    assert sliced.r.identical(whole.r)
    tail = sliced.r.sel(stat="p50").values[100:]  # positions only the long value reaches: its own
    assert np.array_equal(tail, np.arange(100.0, 3000.0))


@db.kernel(outputs={"y": db.Output(), "peaks": db.Output(dims=("peak",), shape=(None,))})
def peaks_of(x):
    if x == 2.0:
        raise ValueError("bad two")
    return {"y": 2 * x, "peaks": np.arange(int(x)) + 0.5}


@pytest.mark.parametrize("curves", ["wide", "long"])
def test_export_keeps_label_columns_named_like_its_own_as_param_columns(tmp_path, curves):
    """Labels named error, message or peaks_0 were overwritten by the export's own columns."""
    table = pd.DataFrame({"x": [1.0, 2.0, 3.0], "error": ["e1", "e2", "e3"], "message": ["m1", "m2", "m3"]})
    table["peaks_0"] = [100, 200, 300]
    table.to_parquet(tmp_path / "t.parquet")
    store = tmp_path / "o.zarr"
    db.run(peaks_of, db.Table(str(tmp_path / "t.parquet")), store, cluster="serial", progress=False)
    db.export(store, tmp_path / "o.csv", curves=curves)
    df = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    first = df.groupby("sample").first()
    assert list(first.param_error) == ["e1", "e2", "e3"] and list(first.param_message) == ["m1", "m2", "m3"]
    assert list(first.error) == ["", "ValueError", ""] and list(first.message) == ["", "bad two", ""]
    if curves == "wide":
        assert list(df.param_peaks_0) == [100, 200, 300] and list(df.peaks_0) == ["0.5", "", "0.5"]
    else:
        assert list(first.peaks_0) == [100, 200, 300]
        two = df[df["sample"] == 2]
        assert list(two.peak) == ["0", "1", "2"] and list(two.peaks) == ["0.5", "1.5", "2.5"]


def test_a_store_of_many_small_blocks_is_summarised_several_blocks_per_chunk(tmp_path, monkeypatch):
    """2,000 blocks of 10 samples made some 50,000 tasks (21 s for a summary); read several
    blocks per chunk, the statistics are the same."""
    store = tmp_path / "many.zarr"
    db.run(
        vector_affine,
        db.MonteCarlo({"a": db.Uniform(0, 1)}, n=2000, seed=3),
        store,
        cluster="threads",
        chunk_size=10,
        progress=False,
    )
    ds, _ = analysis._open(store)
    assert ds.y.data.numblocks[0] < 20 and ds.status.data.chunks == ds.y.data.chunks
    fast = db.summarize(store)
    monkeypatch.setattr(analysis, "SUMMARY_CHUNK_BYTES", 1)  # a chunk per block, as before
    assert analysis._open(store)[0].y.data.numblocks[0] == 200
    slow = db.summarize(store)
    for stat in ("count", "min", "max", "p50"):
        assert float(fast.y.sel(stat=stat)) == float(slow.y.sel(stat=stat)), stat
    assert float(fast.y.sel(stat="mean")) == pytest.approx(float(slow.y.sel(stat="mean")), rel=1e-12)
