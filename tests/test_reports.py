"""What users read about a store: the summary (units, mean ± sd, outliers, success
rate), compare (percent changes), the HTML report's failures by their inputs (escaped),
and the export of ragged and text outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.analysis import scalar_summary

RUN = {"cluster": "serial", "progress": False}


@db.kernel(outputs={"depth": db.Output(attrs={"units": "m"}), "count": db.Output(dtype="int64")})
def well(a):
    if a < 0:
        raise ValueError(f"a={a} is negative")
    return {"depth": float(a), "count": int(a)}


@db.kernel(outputs={"y": db.Output()})
def tagged_fail(x, file):
    if x > 2:
        raise ValueError(f"<script>alert('{file}')</script> & x={x}")
    return float(x)


@pytest.fixture(scope="module")
def well_store(tmp_path_factory):
    a = np.concatenate([np.arange(1.0, 41.0), [500.0], [-1.0, -2.0, -3.0]])  # one outlier, 3 failures
    store = tmp_path_factory.mktemp("r") / "well.zarr"
    db.run(well, db.Table({"a": a}), store, chunk_size=16, **RUN)
    return store, a


def test_summary_shows_units_mean_sd_outliers_and_success_rate(well_store, cli):
    store, a = well_store
    ok = a[a >= 0]
    table = scalar_summary(store)
    row = table.loc["depth"]
    assert row["units"] == "m" and row["count"] == ok.size
    assert row["mean"] == pytest.approx(ok.mean()) and row["sd"] == pytest.approx(ok.std(ddof=1))
    assert row["outliers"] == 1 and row["outliers %"] == pytest.approx(100 / ok.size)
    assert db.outliers(store, "depth").attrs["total"] == row["outliers"]
    assert db.summarize(store).depth.attrs["units"] == "m"
    r = run_cli("summary", str(store))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "44 (41 ok, 3 failed, 0 timed out, 0 crashed, 0 pending)" in lines[1]
    assert lines[2].startswith("success rate 93.18% of those run (41 ok of 44); the 3 not ok")
    assert f"daskbatch failures {store}" in lines[2]
    depth = next(line for line in lines if line.startswith("depth "))
    assert f"{ok.mean():.4g} ± {ok.std(ddof=1):.4g}" in depth and "1 (2.4%)" in depth
    assert re.match(r"depth\s+m\s+41\s", depth)
    doc = json.loads(cli("summary", str(store), "--json").stdout)
    assert doc["success_rate"] == pytest.approx(41 / 44) and doc["outputs"]["depth"]["units"] == "m"
    assert doc["scalars"]["count"]["outliers"] == 1 and doc["scalars"]["depth"]["units"] == "m"


def test_compare_gives_percent_changes(tmp_path, cli):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    db.run(well, db.Table({"a": np.arange(1.0, 11.0)}), a, **RUN)
    db.run(well, db.Table({"a": 1.1 * np.arange(1.0, 11.0)}), b, **RUN)
    df = db.compare(a, b)
    assert df.loc["depth", "mean change %"] == pytest.approx(10.0)
    assert df.loc["depth", "p50 change %"] == pytest.approx(10.0)
    assert not df.attrs["same_parameters"]
    r = run_cli("compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    depth = next(line for line in r.stdout.splitlines() if line.startswith("depth"))
    assert depth.split()[:7] == ["depth", "5.5", "6.05", "+10.00%", "5.5", "6.05", "+10.00%"]
    doc = json.loads(cli("compare", str(a), str(a), "--json").stdout)
    assert doc["same_parameters"] and doc["outputs"]["depth"]["samples differing"] == 0


def test_report_lists_failures_by_their_inputs_escaped(tmp_path):
    x = np.arange(6.0)
    files = [f"in/<b>{i}</b>.dat" for i in range(6)]
    store = tmp_path / "t.zarr"
    db.run(tagged_fail, db.Table({"x": x, "file": files}), store, chunk_size=4, **RUN)
    page = db.report(store, tmp_path / "r.html").read_text()
    assert "Failures: 3 of 6 samples" in page
    # the values are escaped once by the report, then once more as bokeh embeds the
    # text: a tag from a value never reaches the page as a tag
    assert "&amp;lt;script&amp;gt;alert(" in page and "in/&amp;lt;b&amp;gt;3&amp;lt;/b&amp;gt;.dat" in page
    assert "<script>alert(" not in page and "&lt;script&gt;alert(" not in page
    assert "&lt;b&gt;3" not in page
    assert "x=3.0" in page and "sample 3" not in page


# --------------------------------------------------------------------------- ragged and text outputs


@db.kernel(
    outputs={
        "p": db.Output(dims=("peak",), shape=(None,), units="s"),
        "tag": db.Output(dtype="str"),
        "m": db.Output(dtype="int32"),
    }
)
def peaks(x):
    if x > 0.8:
        raise ValueError(f"too big: {x:.3f}")
    n = int(x * 5)
    return {"p": np.arange(n) * 1.5, "tag": "t" * n, "m": n}


def test_export_of_ragged_and_text_outputs(tmp_path):
    sp = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=30, seed=2)
    store = tmp_path / "r.zarr"
    db.run(peaks, sp, store, chunk_size=7, **RUN)
    x = sp.block((slice(0, 30),))["x"]
    ok = x <= 0.8
    n = np.where(ok, (x * 5).astype(int), 0)
    width = int(n.max())
    db.export(store, tmp_path / "w.csv", curves="wide")
    wide = pd.read_csv(tmp_path / "w.csv", keep_default_na=False)
    assert [c for c in wide.columns if c.startswith("p_")] == ["p_length", *(f"p_{j}" for j in range(width))]
    for i in range(30):
        row = wide.iloc[i]
        assert row["status"] == (1 if ok[i] else 2)
        got = [row[f"p_{j}"] for j in range(width)]
        want = [1.5 * j for j in range(n[i])] + [""] * (width - n[i])
        assert [float(v) if v != "" else "" for v in got] == want, i
        assert row["tag"] == ("t" * n[i] if ok[i] else "") and str(row["m"]) == (str(n[i]) if ok[i] else "")
        assert row["message"] == ("" if ok[i] else f"too big: {x[i]:.3f}")
    db.export(store, tmp_path / "l.parquet", curves="long")
    long = pd.read_parquet(tmp_path / "l.parquet")
    assert len(long) == int(np.maximum(n, 1).sum())  # a row per value; one for a sample without
    first = long[long["sample"] == int(np.argmax(n))]
    assert first["p"].tolist() == [1.5 * j for j in range(width)] and first["peak"].tolist() == list(
        range(width)
    )
    none = long[long["sample"] == int(np.flatnonzero(~ok)[0])]
    assert len(none) == 1 and none["p"].isna().all() and none["peak"].isna().all()
    summary = db.summarize(store)
    assert summary.p.attrs["units"] == "s" and "tag" not in summary
    assert float(summary.p.sel(stat="count", peak=0)) == int((n > 0).sum())


@db.kernel(outputs={"n": db.Output()})
def file_bytes(path):
    with open(path, "rb") as f:
        return float(len(f.read()))


def test_compare_of_two_batches_of_files_does_not_call_them_the_same_samples(tmp_path):
    stores = []
    for batch in ("a", "b"):
        folder = tmp_path / batch
        folder.mkdir()
        for i in range(4):
            (folder / f"{batch}{i}.bin").write_bytes(b"x" * (i + 1))
        stores.append(tmp_path / f"{batch}.zarr")
        db.run(file_bytes, db.Files(str(folder)), stores[-1], **RUN)
    # the same values, from other files: compared as distributions, never sample by sample
    df = db.compare(*stores)
    assert not df.attrs["same_parameters"] and df.loc["n", "samples differing"] is None
    assert db.compare(stores[0], stores[0]).attrs["same_parameters"]


@db.kernel(outputs={"y": db.Output()})
def twice(x, name):
    return 2 * x


def test_compare_of_one_table_saved_as_csv_and_parquet_is_sample_by_sample(tmp_path):
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"x": np.arange(6.0), "name": list("abcdef")})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    a, b = tmp_path / "p.zarr", tmp_path / "c.zarr"
    db.run(twice, db.Table(str(tmp_path / "t.parquet")), a, **RUN)
    db.run(twice, db.Table(str(tmp_path / "t.csv")), b, **RUN)
    df = db.compare(a, b)
    assert df.attrs["same_parameters"] and df.loc["y", "samples differing"] == 0
    frame.assign(x=frame.x + 1).to_csv(tmp_path / "t.csv", index=False)
    db.run(twice, db.Table(str(tmp_path / "t.csv")), b, overwrite=True, **RUN)
    assert not db.compare(a, b).attrs["same_parameters"]  # other contents


def test_a_report_never_writes_over_a_spec_file_or_into_a_store(tmp_path):
    """`report -o sweep.toml` replaced the spec with HTML; `-o store.zarr` blamed the store."""
    store = tmp_path / "t.zarr"
    db.run(tagged_fail, db.Table({"x": np.arange(4.0), "file": [f"f{i}" for i in range(4)]}), store, **RUN)
    spec = tmp_path / "sweep.toml"
    spec.write_text("kept = true\n")
    for path, words in ((spec, "is not an .html file"), (store, "is a folder")):
        with pytest.raises(
            db.DaskbatchError, match=rf"report: the output .* {words}; give a path ending in .html"
        ):
            db.report(store, path)
    assert (
        spec.read_text() == "kept = true\n"
        and db.status(store).samples["ok"] == 4 - db.status(store).n_failed
    )


@db.kernel(outputs={"curve": db.Output(dims=("t",), shape=(3,))})
def only_curve(x):
    return x * np.arange(3.0)


def test_compare_of_stores_with_only_curves_says_what_it_compares(tmp_path):
    space = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=8, seed=1)
    for name in ("a", "b"):
        db.run(only_curve, space, tmp_path / f"{name}.zarr", **RUN)
    with pytest.raises(
        db.DaskbatchError, match=r"share no scalar output .*outputs with core dims \(curves\)"
    ):
        db.compare(tmp_path / "a.zarr", tmp_path / "b.zarr")
