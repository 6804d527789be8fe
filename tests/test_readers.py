"""Readers see only committed blocks as done: `status`, `open`, the analysis functions,
the export and the `summary` command agree on a store with a block left unmarked, and
readers of a store being written never see a sample as done before its outputs."""

from __future__ import annotations

import json
import threading
import time
from functools import partial

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import daskbatch as db
from daskbatch.store import Store
from daskbatch.testing import curve

SPACE = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=100, seed=5)
UNMARKED = 2  # the block whose marker is removed: samples 40..59


@pytest.fixture(scope="module")
def unmarked_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("r") / "unmarked.zarr"
    db.run(curve, SPACE, store, cluster="serial", chunk_size=20, progress=False)
    Store(store).unmark([(UNMARKED,)])  # its data stays on disk, its marker goes
    return store


def _committed() -> np.ndarray:
    keep = np.ones(100, dtype=bool)
    keep[20 * UNMARKED : 20 * (UNMARKED + 1)] = False
    return keep


def test_every_reader_counts_an_unmarked_block_as_pending(unmarked_store, tmp_path, cli):
    store = unmarked_store
    st = db.status(store)
    assert st.samples["pending"] == 20 and st.samples["ok"] == 80 and st.blocks_done == 4

    raw = xr.open_zarr(store).status.values  # on disk, the block is all ok
    assert (raw == 1).all()
    status = db.open(store).status
    assert status.chunks is not None  # still lazy, dask-backed
    values = status.values
    assert (values[~_committed()] == 0).all() and (values[_committed()] == 1).all()

    s = db.summarize(store)
    assert {k: int(s[f"n_{k}"]) for k in st.samples} == st.samples
    total = db.open(store).total.values[_committed()]
    assert int(s.total.sel(stat="count")) == 80
    assert float(s.total.sel(stat="mean")) == pytest.approx(total.mean(), rel=1e-12)
    assert float(s.total.sel(stat="max")) == pytest.approx(total.max(), rel=1e-12)

    csv = tmp_path / "out.csv"
    assert db.export(store, csv) == 100
    df = pd.read_csv(csv)
    counts = df.status.value_counts().to_dict()
    assert counts == {1: st.samples["ok"], 0: st.samples["pending"]}
    assert df.total[df.status == 0].isna().all() and df.total[df.status == 1].notna().all()
    assert (df.status.to_numpy() == values).all()

    c = db.convergence(store, "total")
    assert int(c.n[-1]) == 80 and float(c["mean"][-1]) == pytest.approx(total.mean(), rel=1e-12)
    cmp = db.compare(store, store)
    assert cmp.loc["total", "count a"] == 80 and cmp.loc["total", "samples differing"] == 0
    out = db.outliers(store, "total", method="zscore", threshold=0.5)
    far = np.abs(total - total.mean()) > 0.5 * total.std()
    assert out.attrs["total"] == int(far.sum()) and not set(out["sample"]) & set(range(40, 60))

    r = cli("summary", str(store), "--json")  # the real command: test_analysis.py
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples"] == st.samples


def test_a_resumed_run_commits_the_block_and_every_reader_sees_it(tmp_path):
    store = tmp_path / "resumed.zarr"
    db.run(curve, SPACE, store, cluster="serial", chunk_size=20, progress=False)
    Store(store).unmark([(1,)])
    assert int((db.open(store).status == 0).sum()) == 20
    db.run(curve, SPACE, store, cluster="serial", chunk_size=20, progress=False)
    assert db.status(store).samples["ok"] == 100
    assert int(db.summarize(store).n_ok) == 100 and (db.open(store).status.values == 1).all()


def test_open_while_a_run_rewrites_the_root_metadata(tmp_path):
    # a run replaces the provenance at its start and end, then consolidates the
    # metadata again: in between, daskbatch.open reads every array's own metadata
    store = tmp_path / "meta.zarr"
    db.run(curve, SPACE, store, cluster="serial", chunk_size=20, progress=False)
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    root.attrs["daskbatch"] = dict(root.attrs["daskbatch"])
    assert "consolidated_metadata" not in json.loads((store / "zarr.json").read_text())
    assert (db.open(store).status.values == 1).all() and int(db.summarize(store).n_ok) == 100


# ------------------------------------------------------------ reading during a run

# 8 MB of outputs a block: writing them takes a few milliseconds, long enough for a
# reader to catch a status written with (not after) the outputs, as it once was
BLOCK, N_CORE, N_BLOCKS = 25, 40_000, 20


@db.kernel(outputs={"y": db.Output(dims=("k",), shape=(N_CORE,))}, per_sample=False, threadsafe=True)
def wide(a, delay=0.0):
    """A block of wide curves, after sleeping ``delay`` seconds."""
    time.sleep(delay)
    a = np.asarray(a, dtype=float)
    return np.sin(a[:, None] * np.arange(N_CORE)[None, :])


def _watch(store, opener) -> tuple[int, int]:
    """Open the store and poll the status of its blocks without a marker until some of
    their samples show as done, then read the outputs of the first such block at once
    (and, for daskbatch.open, its marker). Returns the samples seen done and those of
    them without outputs (or without a marker)."""
    (pending,) = np.nonzero(~Store(store).done_mask())
    if not pending.size:
        return 0, 0
    span = slice(int(pending[0]) * BLOCK, (int(pending[-1]) + 1) * BLOCK)
    unmarked = np.repeat(np.isin(np.arange(pending[0], pending[-1] + 1), pending), BLOCK)
    ds = opener(store)
    for _ in range(100):
        ok = (ds.status.isel(sample=span).values == 1) & unmarked[: span.stop - span.start]
        if ok.any():
            break
    else:
        return 0, 0
    block = int(pending[0]) + int(np.argmax(ok)) // BLOCK
    region = slice(block * BLOCK, (block + 1) * BLOCK)
    ok = ok[region.start - span.start : region.stop - span.start]
    bad = np.isnan(ds.y.isel(sample=region).values[ok]).any(axis=1)
    if opener is db.open and not Store(store).is_done((block,)):
        bad[:] = True
    return int(ok.sum()), int(bad.sum())


@pytest.mark.parametrize("reader", ["xarray.open_zarr", "daskbatch.open"])
def test_readers_during_a_run_never_see_done_samples_without_outputs(tmp_path, reader):
    store = tmp_path / "live.zarr"
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=BLOCK * N_BLOCKS, seed=1)
    # plain xarray without dask (the quickest reader), or daskbatch's lazy Dataset
    opener = (
        partial(xr.open_zarr, chunks=None, consolidated=True) if reader == "xarray.open_zarr" else db.open
    )
    failure: list[BaseException] = []

    def write() -> None:
        try:
            db.run(
                wide,
                space,
                store,
                cluster="serial",
                chunk_size=BLOCK,
                progress=False,
                constants={"delay": 0.02},
            )
        except BaseException as e:  # pragma: no cover - reported below
            failure.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    reads = seen = bad = 0
    try:
        while writer.is_alive():
            if not (Store(store).info() or {}).get("history"):  # the run has not started
                time.sleep(0.005)
                continue
            try:
                n_ok, n_bad = _watch(store, opener)
            except ValueError:  # the run ended: its root metadata is being rewritten
                continue
            reads, seen, bad = reads + 1, seen + (n_ok > 0), bad + n_bad
    finally:
        writer.join()
    assert not failure, failure
    assert db.status(store).complete
    # the reader caught blocks being committed, and never saw a done sample without outputs
    assert seen >= 5 and bad == 0, f"{reads} reads, {seen} saw blocks being committed, {bad} bad samples"
