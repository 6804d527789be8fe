"""Growing stores: a design's n raised (or rows added to a table) computes only the new
samples, and the stored ones stay bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.store import Store

CALLS: list[int] = []


@db.kernel(outputs={"y": db.Output(), "k": db.Output(dtype="int32")})
def noisy(x):
    if 0.45 < x < 0.46:
        raise ValueError(f"bad {x}")
    return {"y": np.sin(x) * 1e3, "k": int(x * 1000)}


def _run(space, store, **kw):
    return db.run(noisy, space, store, cluster="serial", chunk_size=100, progress=False, **kw)


def _mc(n, **kw):
    return db.MonteCarlo({"x": db.Uniform(0, 1)}, n=n, seed=7, **kw)


@pytest.mark.parametrize("design", ["montecarlo", "sobol", "halton", "lhs-strata"])
def test_raising_n_computes_only_the_new_samples_bit_for_bit(tmp_path, design):
    def space(n):
        dists = {"x": db.Uniform(0, 1)}
        if design == "montecarlo":
            return db.MonteCarlo(dists, n=n, seed=7)
        if design == "sobol":
            return db.Sobol(dists, n=n, seed=7)
        if design == "halton":
            return db.Halton(dists, n=n, seed=7)
        return db.LatinHypercube(dists, n=n, seed=7, strata=4096)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Sobol sizes that are not powers of 2
        store = tmp_path / "grow.zarr"
        first = _run(space(256), store)
        before = db.open(store).load()
        grown = _run(space(420), store)
        whole = _run(space(420), tmp_path / "whole.zarr")
    after = db.open(store).load()
    assert after.sizes["sample"] == 420
    # the stored samples: the same bits; the whole store: what one run of 420 gives
    for name in ("y", "k", "status", "x"):
        assert np.array_equal(after[name].values[:256], before[name].values, equal_nan=True), name
        assert np.array_equal(
            after[name].values, db.open(tmp_path / "whole.zarr")[name].values, equal_nan=True
        )
    # only the new samples ran: block 2 (samples 200-255 kept) is completed, blocks 3-4 are new
    assert first.samples["pending"] == 0 and grown.samples["pending"] == 0
    assert grown.blocks_computed == 3 and grown.samples_computed == 420 - 256  # the new ones only
    # the failures of the stored samples are still recorded, with the new ones
    assert sorted(e["index"] for e in grown.errors) == sorted(e["index"] for e in whole.errors)
    assert grown.samples == whole.samples
    info = Store(store).info()
    assert info["grown"][-1]["samples"] == [256, 420]
    assert info["layout"]["batch_shape"] == [420] and info["layout"]["numblocks"] == [5]
    out = run_cli("status", str(store), "--verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every committed block matches its checksums (5 checked)" in out.stdout


def test_a_store_grows_twice_and_a_rerun_of_the_same_size_computes_nothing(tmp_path):
    store = tmp_path / "g.zarr"
    _run(_mc(150), store)
    _run(_mc(151), store)
    r = _run(_mc(380), store)
    assert r.samples["pending"] == 0 and db.open(store).sizes["sample"] == 380
    again = _run(_mc(380), store)
    assert again.blocks_computed == 0
    assert [g["samples"] for g in Store(store).info()["grown"]] == [[150, 151], [151, 380]]


def test_what_cannot_grow_is_refused_naming_why(tmp_path):
    store = tmp_path / "lhs.zarr"
    lhs = {"x": db.Uniform(0, 1)}
    _run(db.LatinHypercube(lhs, n=200, seed=1), store)
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"depend on its size \(n=200\).*strata="):
        _run(db.LatinHypercube(lhs, n=300, seed=1), store)
    mc = tmp_path / "mc.zarr"
    _run(_mc(200), mc)
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"seed changed \(7 -> 8\)"):
        _run(db.MonteCarlo({"x": db.Uniform(0, 1)}, n=300, seed=8), mc)
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"n: 200 -> 100"):
        _run(_mc(100), mc)  # fewer samples: never a cut
    assert db.open(mc).sizes["sample"] == 200  # nothing changed by a refusal
    assert db.open(store).sizes["sample"] == 200
    product = tmp_path / "product.zarr"

    def prod(n):
        return db.Product(
            db.Grid(g=[0.1, 0.2]), db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=n, seed=1)
        )

    db.run(lin, prod(10), product, cluster="serial", progress=False)
    with pytest.raises(
        db.errors.FingerprintMismatchError, match=r"only a store along the one dim 'sample' grows"
    ):
        db.run(lin, prod(20), product, cluster="serial", progress=False)


@db.kernel(outputs={"y": db.Output()})
def lin(a, b, g=0.0):
    return 2 * a + b + g


def test_parameters_given_in_another_order_are_refused_where_the_order_decides_the_values(tmp_path):
    """A Sobol design gives its parameters the point set's columns in order, a grid its dims:
    the same tables in another order are another design (its samples written next to the
    stored ones would mix two point sets). A Monte Carlo design's values depend on names."""
    import hashlib

    def digest(path):
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    a, b = db.Uniform(0, 1), db.Uniform(0, 2)
    kw = {"cluster": "serial", "chunk_size": 10, "progress": False}
    for name, make in [
        ("sobol", lambda d, n: db.Sobol(d, n=n, seed=1)),
        ("halton", lambda d, n: db.Halton(d, n=n, seed=1)),
        ("product", lambda d, n: db.Product(db.Grid(g=[1.0, 2.0]), db.Sobol(d, n=n, seed=1))),
    ]:
        store = tmp_path / f"{name}.zarr"
        db.run(lin, make({"a": a, "b": b}, 32), store, **kw)
        before = digest(store)
        for n in (32, 64):  # a rerun, a growth
            with pytest.raises(db.errors.FingerprintMismatchError, match=r"the order of the parameters of a"):
                db.run(lin, make({"b": b, "a": a}, n), store, **kw)
        assert digest(store) == before, name
    grid = tmp_path / "grid.zarr"
    db.run(lin, db.Grid(a=[1.0, 2.0], b=[3.0, 4.0]), grid, **kw)
    with pytest.raises(
        db.errors.FingerprintMismatchError, match=r"the order of the axes of a grid \(\['a', 'b'\]"
    ):
        db.run(lin, db.Grid(b=[3.0, 4.0], a=[1.0, 2.0]), grid, **kw)
    mc = tmp_path / "mc.zarr"
    db.run(lin, db.MonteCarlo({"a": a, "b": b}, n=20, seed=1), mc, **kw)
    db.run(lin, db.MonteCarlo({"b": b, "a": a}, n=40, seed=1), mc, **kw)  # the same values: it grows
    ds = db.open(mc).load()
    assert np.array_equal(ds.y.values, 2 * ds.a.values + ds.b.values) and ds.sizes["sample"] == 40


def test_a_grown_store_resumes_after_an_interrupt(tmp_path):
    store = tmp_path / "i.zarr"
    _run(_mc(250), store)

    class Stop(db.Callback):
        def __init__(self):
            self.n = 0

        def on_block_end(self, event):
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(_mc(900), store, callbacks=[Stop()])
    r = _run(_mc(900), store)
    assert r.samples["pending"] == 0
    whole = _run(_mc(900), tmp_path / "w.zarr")
    assert np.array_equal(db.open(store).y.values, db.open(tmp_path / "w.zarr").y.values, equal_nan=True)
    assert r.samples == whole.samples


@db.kernel(outputs={"n": db.Output(dtype="int64")})
def file_size(path):
    with open(path, "rb") as f:
        return len(f.read())


def test_files_added_to_a_folder_compute_only_the_new_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"img_{i:03d}.bin").write_bytes(b"x" * (i + 1))
    store = tmp_path / "files.zarr"
    run = dict(cluster="serial", progress=False, chunk_size=4)
    db.run(file_size, db.Files(str(folder / "*.bin")), store, **run)
    for i in range(6, 9):
        (folder / f"img_{i:03d}.bin").write_bytes(b"x" * (i + 1))
    r = db.run(file_size, db.Files(str(folder / "*.bin")), store, **run)
    assert r.blocks_computed == 2 and r.samples["ok"] == 9  # block 1 completed, block 2 new
    ds = db.open(store)
    assert ds.n.values.tolist() == list(range(1, 10))
    assert [p.rsplit("/", 1)[-1] for p in ds.path.values.tolist()] == [f"img_{i:03d}.bin" for i in range(9)]
    # a file that sorts among the stored ones changes their rows: refused, naming the row
    (folder / "img_000a.bin").write_bytes(b"zz")
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"row 1 changed: path .*img_001.bin"):
        db.run(file_size, db.Files(str(folder / "*.bin")), store, **run)


@db.kernel(outputs={"y": db.Output()})
def double(x):
    return 2 * x


def test_rows_appended_to_a_parquet_table_compute_only_the_new_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "t.parquet"
    store = tmp_path / "t.zarr"
    run = dict(cluster="serial", progress=False, chunk_size=4)
    pd.DataFrame({"x": np.arange(10.0), "label": [f"s{i}" for i in range(10)]}).to_parquet(path)
    db.run(double, db.Table(path), store, **run)
    pd.DataFrame({"x": np.arange(13.0), "label": [f"s{i}" for i in range(13)]}).to_parquet(path)
    r = db.run(double, db.Table(path), store, **run)
    assert r.blocks_computed == 2 and r.samples["ok"] == 13
    ds = db.open(store)
    assert ds.y.values.tolist() == [2.0 * i for i in range(13)]
    assert ds.label.values.tolist() == [f"s{i}" for i in range(13)]
    # an edited stored row is no extension
    pd.DataFrame({"x": [*range(9), 99.0, *range(10, 14)], "label": [f"s{i}" for i in range(14)]}).to_parquet(
        path
    )
    with pytest.raises(db.errors.FingerprintMismatchError, match=r"row 9 changed"):
        db.run(double, db.Table(path), store, **run)


def test_a_changed_input_of_the_same_size_is_refused_naming_where(tmp_path):
    import os

    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.bin").write_bytes(b"x" * (i + 1))
    store = tmp_path / "s.zarr"
    run = dict(cluster="serial", progress=False, chunk_size=4)
    db.run(file_size, db.Files(str(folder / "*.bin")), store, **run)
    os.utime(folder / "f2.bin", (1, 1))  # touched: same bytes, another modification time
    with pytest.raises(db.errors.FingerprintMismatchError) as e:
        db.run(file_size, db.Files(str(folder / "*.bin")), store, **run)
    assert "where: row 2 changed: file" in str(e.value) and "f2.bin" in str(e.value)
    assert "overwrite=True (--overwrite)" in str(e.value)


_KILLED_GROWTH = """
import os, signal, sys
import daskbatch as db, daskbatch.repair, daskbatch.repaircheck, daskbatch.store
from daskbatch.testing import vector_affine

point = sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "arrays":  # one array has its new length, the others not
    write = daskbatch.repaircheck.write_json
    def write_json(target, doc):
        write(target, doc)
        if target.name == "zarr.json":
            die()
    daskbatch.repaircheck.write_json = write_json
elif point == "root":  # the root's provenance grown, its copy not
    daskbatch.store.save_provenance = lambda path: die()
elif point == "template":  # root and copy grown, the template not
    daskbatch.repair._record_template = lambda *a, **k: die()
if __name__ == "__main__":
    space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=160, seed=3)
    db.run(vector_affine, space, sys.argv[1], cluster="serial", chunk_size=30, progress=False,
           reduce={"y": ["mean", db.Quantiles([0.5])]})
"""


@pytest.mark.parametrize("point", ["arrays", "root", "template"])
@pytest.mark.parametrize("then", ["rerun", "resume"])
def test_a_growth_killed_part_way_is_undone_by_the_next_run_and_nothing_is_lost(tmp_path, cli, point, then):
    """A kill between the files a growth writes (arrays' lengths, the root's provenance,
    its copy, the template) left a store whose provenance and copy disagreed with nothing
    to tell which was right: refused until overwritten. Now readers say what happened in
    one line, and the next run or resume undoes the growth: a rerun grows it again to
    what an uninterrupted run gives, a resume leaves it as it was before."""
    import subprocess
    import sys

    from daskbatch.testing import assert_stores_identical, vector_affine

    def run(n, store):
        space = db.MonteCarlo({"a": db.Uniform(0.0, 1.0)}, n=n, seed=3)
        return db.run(
            vector_affine,
            space,
            store,
            cluster="serial",
            chunk_size=30,
            progress=False,
            reduce={"y": ["mean", db.Quantiles([0.5])]},
        )

    store, small, whole = tmp_path / "s.zarr", tmp_path / "small.zarr", tmp_path / "whole.zarr"
    run(100, store)
    run(100, small)
    run(160, whole)
    script = tmp_path / "grow_killed.py"
    script.write_text(_KILLED_GROWTH)
    r = subprocess.run(
        [sys.executable, str(script), str(store), point], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -9, r.stderr
    s = cli("status", str(store))
    assert s.returncode == 2 and s.stderr.count("\n") == 1, s.stderr
    assert "a growth from 100 to 160 samples was stopped part way" in s.stderr
    assert "nothing computed is lost" in s.stderr and "daskbatch resume" in s.stderr
    if then == "rerun":
        grown = run(160, store)
        assert grown.blocks_computed == 3  # the short last block completed, two new ones
        assert_stores_identical(store, whole)
        assert float(grown.reductions["y_mean"]) == float(db.status(whole).reductions["y_mean"])
    else:
        r = cli("resume", str(store), "--no-progress")
        assert r.returncode == 0, r.stderr
        assert "had been stopped part way; undone" in r.stderr
        assert_stores_identical(store, small)
    v = cli("status", str(store), "--verify")
    assert v.returncode == 0 and "every committed block matches its checksums" in v.stdout, (
        v.stdout + v.stderr
    )


def test_a_store_grown_by_another_process_reads_whole_where_it_was_open(tmp_path):
    """A notebook reads a store; a batch job (another process) grows it; the notebook's next
    read sees the grown store (its per-process caches were of the old shape: `status` said
    "complete" with 60 pending, and load() failed)."""
    import subprocess
    import sys

    (tmp_path / "kern.py").write_text(
        "import daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef lin(a):\n    return 2 * a\n"
    )
    script = (
        "import sys; sys.path.insert(0, {here!r})\nimport daskbatch as db\nfrom kern import lin\n"
        "db.run(lin, db.MonteCarlo({{'a': db.Uniform(0, 1)}}, n={n}, seed=1), {store!r}, "
        "cluster='serial', chunk_size=10, progress=False)\n"
    )
    store = tmp_path / "s.zarr"
    for n in (40, 100):
        subprocess.run(
            [sys.executable, "-c", script.format(here=str(tmp_path), n=n, store=str(store))], check=True
        )
        if n == 40:
            assert db.open(store).load().sizes["sample"] == 40 and db.status(store).samples["ok"] == 40
    st = db.status(store)
    assert st.samples["ok"] == 100 and st.samples["pending"] == 0 and st.blocks_total == 10
    ds = db.open(store).load()
    assert ds.sizes["sample"] == 100 and (ds.status.values == 1).all()
    assert np.array_equal(ds.y.values, 2 * ds.a.values)


def test_a_store_made_smaller_than_its_chunk_size_grows_and_reruns_with_the_same_call(tmp_path, caplog):
    """Made with n below chunk_size, its blocks were cut to n; after a growth the same call
    (a resume) was refused: "chunking (block shape [100] -> [500])"."""
    import logging

    store = tmp_path / "s.zarr"
    kw = {"cluster": "serial", "chunk_size": 1000, "progress": False}
    db.run(lin, db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=100, seed=1), store, **kw)
    with caplog.at_level(logging.INFO, logger="daskbatch"):
        db.run(lin, db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=101, seed=1), store, **kw)
    assert "in blocks of 100 as it was made); computing the 1 new one" in caplog.text
    for n in (500, 500):  # a growth, then the same call again
        result = db.run(
            lin, db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=n, seed=1), store, **kw
        )
    assert result.blocks_computed == 0 and db.status(store).samples["ok"] == 500
    with pytest.raises(
        db.errors.FingerprintMismatchError, match=r"chunking \(block shape \[100\] -> \[50\]\)"
    ):
        db.run(
            lin,
            db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=500, seed=1),
            store,
            **{**kw, "chunk_size": 50},
        )


def test_a_design_given_no_seed_grows_with_the_seed_its_store_was_made_with(tmp_path):
    """Refused before as "seed changed (A -> B)": B was a fresh draw the user never chose."""
    store = tmp_path / "s.zarr"
    kw = {"cluster": "serial", "chunk_size": 10, "progress": False}
    dists = {"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}
    db.run(lin, db.MonteCarlo(dists, n=40), store, **kw)
    before = db.open(store).load()
    db.run(lin, db.MonteCarlo(dists, n=60), store, **kw)
    after = db.open(store).load()
    seed = int(Store(store).info()["seed"])
    whole = db.run(lin, db.MonteCarlo(dists, n=60, seed=seed), tmp_path / "w.zarr", **kw).open().load()
    assert after.sizes["sample"] == 60 and after.a.values[:40].tobytes() == before.a.values.tobytes()
    assert (
        after.a.values.tobytes() == whole.a.values.tobytes()
        and after.y.values.tobytes() == whole.y.values.tobytes()
    )


def test_a_refusal_names_the_value_that_differs_however_deep(tmp_path):
    """Cut at 60 characters, both sides of a change in the second parameter read the same;
    and a design of the same n was told its n "does not add samples"."""
    store = tmp_path / "s.zarr"
    kw = {"cluster": "serial", "progress": False}
    dists = {"amplitude": db.Normal(1.0, 0.1), "b": db.Uniform(0, 2)}
    db.run(lin_amp, db.MonteCarlo(dists, n=20, seed=1), store, **kw)
    with pytest.raises(db.errors.FingerprintMismatchError) as e:
        db.run(lin_amp, db.MonteCarlo({**dists, "b": db.Uniform(0, 3)}, n=20, seed=1), store, **kw)
    text = str(e.value)
    assert "what differs: space (params.b.high: 2 -> 3)." in text and "does not add samples" not in text


@db.kernel(outputs={"y": db.Output()})
def lin_amp(amplitude, b):
    return amplitude * b
