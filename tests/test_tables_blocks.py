"""A Parquet table too large to read whole when it is made (over
``daskbatch.table.scan-up-to`` bytes of column data; set to 0 here so that small files
take that path): the driver reads its metadata and its float columns only, each
block records the digest of the rows it read, and a rerun on a file that changed
compares those digests. A rerun never mixes results of old rows with new ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import FingerprintMismatchError, SpaceError
from daskbatch.store import Store
from daskbatch.tablefiles import ParquetSource
from daskbatch.tableread import Digest

RUN = dict(cluster="serial", progress=False, chunk_size=10)


@pytest.fixture(autouse=True)
def by_blocks():
    with dask.config.set({"daskbatch.table.scan-up-to": 0}):
        yield


@db.kernel(outputs={"n": db.Output(dtype="int64")})
def weigh(seq, x):
    return len(seq) * 1000 + int(x)


def _frame(n: int = 40, seq=None) -> pd.DataFrame:
    seqs = seq or ["ACGT"[i % 4] * (i + 1) for i in range(n)]
    return pd.DataFrame({"seq": seqs, "x": np.arange(len(seqs), dtype=np.float64)})


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, row_group_size=10)
    return path


def _records(store: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in (store / ".daskbatch" / "blocks").glob("*.json")}


def test_the_driver_reads_only_metadata_and_float_columns_and_blocks_record_their_digests(
    tmp_path, monkeypatch
):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    read: list[list[str]] = []
    real = ParquetSource._iter

    def spy(self, groups, batch_rows=None):
        read.append(list(self.columns))
        return real(self, groups, batch_rows)

    monkeypatch.setattr(ParquetSource, "_iter", spy)
    table = db.Table(path)
    assert read == [["x"]]  # the text column was checked from the row groups' statistics
    spec = table.spec()
    assert spec["digest"] == "blocks" and "column_sha256" not in spec and "prefix" not in spec
    monkeypatch.setattr(ParquetSource, "_iter", real)
    store = tmp_path / "s.zarr"
    res = db.run(weigh, table, store, **RUN)
    assert res.samples["ok"] == 40
    assert db.open(store).n.values.tolist() == [len(s) * 1000 + i for i, s in enumerate(df.seq)]
    records = _records(store)
    assert sorted(records) == [0, 1, 2, 3]
    for b, rec in records.items():
        lo, hi = 10 * b, 10 * b + 10
        assert rec["inputs"]["rows"] == [lo, hi]
        # the same digest as a scan of those rows alone computes, from pyarrow's arrays
        digest = Digest(ParquetSource(str(path)).columns)
        part = pa.table({"seq": pa.array(df.seq[lo:hi].tolist()), "x": df.x[lo:hi].to_numpy()})
        digest.update(hi - lo, {"seq": (part["seq"].chunk(0), None), "x": (part["x"].to_numpy(), None)})
        want = {c: h[:32] for c, h in digest.final().columns.items()}
        assert rec["inputs"]["sha256"] == want


def test_a_rewritten_or_touched_file_with_the_same_rows_goes_on_and_records_its_new_state(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    store = tmp_path / "s.zarr"
    db.run(weigh, db.Table(path), store, **RUN)
    before = {p.name: p.stat().st_mtime_ns for p in (store / ".daskbatch" / "blocks").glob("*.json")}
    was = path.stat()
    _write(df, path)  # the same rows, written again
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))
    res = db.run(weigh, db.Table(path), store, **RUN)
    assert res.complete and res.blocks_computed == 0
    after = {p.name: p.stat().st_mtime_ns for p in (store / ".daskbatch" / "blocks").glob("*.json")}
    assert after == before  # nothing recomputed
    info = Store(store).info()
    assert info["space_spec"]["mtime_ns"] == was.st_mtime_ns + 10**9
    assert [e["now"]["mtime_ns"] for e in info["inputs"]] == [was.st_mtime_ns + 10**9]
    # and again: the recorded state is the file's, so nothing is compared this time
    assert db.run(weigh, db.Table(path), store, **RUN).complete


def test_a_changed_stored_row_is_refused_naming_its_block_and_column(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    store = tmp_path / "s.zarr"
    db.run(weigh, db.Table(path), store, **RUN)
    changed = df.copy()
    changed.loc[13, "seq"] = "TTT"
    _write(changed, path)
    with pytest.raises(
        FingerprintMismatchError, match=r"where: a row among rows 10-19 changed in column 'seq'"
    ):
        db.run(weigh, db.Table(path), store, **RUN)
    # grown too: the new rows are not added to stored ones that changed
    _write(pd.concat([changed, _frame(5)], ignore_index=True), path)
    with pytest.raises(
        FingerprintMismatchError, match=r"cannot be added .*rows 10-19 changed in column 'seq'"
    ):
        db.run(weigh, db.Table(path), store, **RUN)
    assert db.open(store).sizes["sample"] == 40  # a refusal changes nothing


def test_rows_appended_compute_only_the_new_rows(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    store = tmp_path / "s.zarr"
    db.run(weigh, db.Table(path), store, **RUN)
    grown = pd.concat([df, _frame(7)], ignore_index=True)
    _write(grown, path)
    res = db.run(weigh, db.Table(path), store, **RUN)
    assert res.blocks_computed == 1 and res.samples["ok"] == 47
    want = [len(s) * 1000 + int(x) for s, x in zip(grown.seq, grown.x, strict=True)]
    assert db.open(store).n.values.tolist() == want


def test_a_row_changed_in_a_block_not_yet_stored_is_computed_from_the_new_file(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    store = tmp_path / "s.zarr"
    db.run(weigh, db.Table(path), store, **RUN)
    Store(store).ledger.forget([(3,)])  # as if the run had stopped before block 3
    changed = df.copy()
    changed.loc[35, "seq"] = "G"
    _write(changed, path)
    res = db.run(weigh, db.Table(path), store, **RUN)
    assert res.complete and res.blocks_computed == 1
    assert db.open(store).n.values[35] == 1000 + 35  # the new row's result, the old ones kept
    assert _records(store)[3]["inputs"]["rows"] == [30, 40]


def test_bad_values_are_still_refused_before_any_store_exists(tmp_path):
    store = tmp_path / "s.zarr"
    missing = pa.table({"seq": pa.array(["A", None, "C"]), "x": [1.0, 2.0, 3.0]})
    pq.write_table(missing, tmp_path / "m.parquet")
    with pytest.raises(SpaceError, match=r"column 'seq' .* missing value \(first: row 1\)"):
        db.Table(tmp_path / "m.parquet")
    nan = pa.table({"seq": ["A", "B", "C"], "x": [1.0, float("nan"), 3.0]})
    pq.write_table(nan, tmp_path / "n.parquet")
    with pytest.raises(SpaceError, match=r"column 'x' .* NaN or inf \(first: row 1"):
        db.Table(tmp_path / "n.parquet")
    # a file written without statistics: its text column is read to check it
    pq.write_table(
        nan.set_column(1, "x", pa.array([1.0, 2.0, 3.0])), tmp_path / "s.parquet", write_statistics=False
    )
    assert db.Table(tmp_path / "s.parquet").spec()["digest"] == "blocks"
    assert not store.exists()


def test_a_store_made_from_a_table_read_whole_keeps_reading_it_whole(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    store = tmp_path / "s.zarr"
    with dask.config.set({"daskbatch.table.scan-up-to": 1 << 40}):
        db.run(weigh, db.Table(path), store, **RUN)  # read whole: its blocks keep no digests
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    # the same file, now over the setting: compared by its contents, as the store was made
    assert db.run(weigh, db.Table(path), store, **RUN).blocks_computed == 0
    grown = pd.concat([df, _frame(5)], ignore_index=True)
    _write(grown, path)
    res = db.run(weigh, db.Table(path), store, **RUN)
    assert res.samples["ok"] == 45 and "digest" not in Store(store).info()["space_spec"]
    changed = grown.copy()
    changed.loc[3, "x"] = 0.5
    _write(changed, path)
    with pytest.raises(FingerprintMismatchError, match=r"row 3 changed in column 'x' \(now 0.5\)"):
        db.run(weigh, db.Table(path), store, **RUN)


def test_one_table_run_on_two_stores_is_compared_with_each_stores_blocks(tmp_path):
    df = _frame()
    path = _write(df, tmp_path / "t.parquet")
    done, partial = tmp_path / "done.zarr", tmp_path / "partial.zarr"
    table = db.Table(path)
    db.run(weigh, table, done, **RUN)
    db.run(weigh, table, partial, **RUN)
    Store(partial).ledger.forget([(3,)])  # stopped before block 3
    changed = df.copy()
    changed.loc[35, "seq"] = "G"
    _write(changed, path)
    table = db.Table(path)
    assert db.run(weigh, table, partial, **RUN).blocks_computed == 1  # row 35 was not stored
    with pytest.raises(FingerprintMismatchError, match=r"rows 30-39 changed in column 'seq'"):
        db.run(weigh, table, done, **RUN)  # it was stored here


def test_a_file_rewritten_with_its_old_size_and_time_is_compared(tmp_path):
    df = _frame()
    path = tmp_path / "t.parquet"
    df.to_parquet(path, row_group_size=10, compression=None)
    was = path.stat()
    store = tmp_path / "s.zarr"
    db.run(weigh, db.Table(path), store, **RUN)
    changed = df.copy()
    changed.loc[5, "x"] = 99.0
    changed.to_parquet(path, row_group_size=10, compression=None)
    assert path.stat().st_size == was.st_size
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns))  # as cp -p or tar would
    with pytest.raises(FingerprintMismatchError, match=r"rows 0-9 changed in column 'x'"):
        db.run(weigh, db.Table(path), store, **RUN)
    # another file of the same size and time, at another path
    other = tmp_path / "other.parquet"
    changed.to_parquet(other, row_group_size=10, compression=None)
    os.utime(other, ns=(was.st_atime_ns, was.st_mtime_ns))
    with pytest.raises(FingerprintMismatchError, match=r"rows 0-9 changed in column 'x'"):
        db.run(weigh, db.Table(other), store, **RUN)


def test_a_products_configurations_are_read_whole(tmp_path):
    path = _write(_frame(6), tmp_path / "c.parquet")
    space = db.Product(db.Table(path), db.MonteCarlo({"z": db.Normal(0, 1)}, n=3, seed=1))
    assert "digest" not in space.spec()["outer"]


def test_a_list_of_strings_with_a_missing_row_is_refused_naming_it(tmp_path):
    values = pa.array([["a", "b"], None, ["c", "d"]], type=pa.list_(pa.string(), 2))
    pq.write_table(pa.table({"v": values}), tmp_path / "l.parquet")
    with pytest.raises(SpaceError, match=r"column 'v' .* missing value \(first: row 1\)"):
        db.Table(tmp_path / "l.parquet")


def test_a_pinned_digest_reads_the_table_whole(tmp_path):
    path = _write(_frame(), tmp_path / "t.parquet")
    with dask.config.set({"daskbatch.table.scan-up-to": 1 << 40}):
        pinned = db.Table(path).spec()["sha256"]
    table = db.Table.from_spec({"type": "table", "source": "parquet", "path": str(path), "sha256": pinned})
    assert table.spec()["sha256"] == pinned and "digest" not in table.spec()
    with pytest.raises(SpaceError, match="changed since the run started"):
        db.Table.from_spec({"type": "table", "source": "parquet", "path": str(path), "sha256": "0" * 64})


def test_the_command_line_resumes_a_store_whose_file_was_rewritten(tmp_path):
    path = _write(_frame(), tmp_path / "t.parquet")
    spec = tmp_path / "run.toml"
    spec.write_text(
        'kernel = "test_tables_blocks:weigh"\nstore = "s.zarr"\nchunk_size = 10\ncluster = "serial"\n\n'
        '[space]\ntype = "table"\npath = "t.parquet"\n'
    )
    env = {"DASK_DASKBATCH__TABLE__SCAN_UP_TO": "0", "PYTHONPATH": str(Path(__file__).parent)}
    first = run_cli("run", str(spec), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert Store(tmp_path / "s.zarr").info()["space_spec"]["digest"] == "blocks"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = run_cli("resume", "s.zarr", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "changed (size or modification time) but not the rows" in again.stderr


def test_a_block_salvaged_around_a_crashing_sample_keeps_its_digest(tmp_path):
    from daskbatch.testing import crash_on

    path = tmp_path / "t.parquet"
    pd.DataFrame({"i": np.arange(30), "name": [f"s{i}" for i in range(30)]}).to_parquet(
        path, row_group_size=10
    )
    store = tmp_path / "s.zarr"
    res = db.run(
        crash_on,
        db.Table(path),
        store,
        cluster="local",
        n_workers=1,
        chunk_size=10,
        constants={"bad": [13], "how": "exit"},
        progress=False,
    )
    assert res.samples["crashed"] == 1 and res.samples["ok"] == 29
    assert all(rec.get("inputs", {}).get("rows") for rec in _records(store).values())
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = db.run(
        crash_on,
        db.Table(path),
        store,
        cluster="serial",
        constants={"bad": [13], "how": "exit"},
        progress=False,
    )
    assert again.blocks_computed == 0


@db.kernel(outputs={"n": db.Output(dtype="int64"), "is_str": db.Output(dtype="int64")})
def text_type(seq, x):
    return {"n": len(seq), "is_str": int(type(seq) is str)}


@pytest.mark.parametrize("cluster", ["serial", "fork"])
def test_a_per_sample_kernels_text_comes_as_python_strings_read_in_batches(tmp_path, monkeypatch, cluster):
    """The block of a per-sample kernel holds the text it does not store as Python
    strings (no StringDType copy); a read decodes no more than its rows need."""
    df = _frame(40, [f"{'ACGT'[i % 4] * (i + 1)}é" for i in range(40)])
    df["label"] = [f"s{i}" for i in range(40)]  # not taken by the kernel: stored, a label
    path = _write(df, tmp_path / "t.parquet")
    calls, sizes = [], []
    read, batches = ParquetSource.read, ParquetSource._iter

    def recording_read(self, start, stop, digest=False, objects=()):
        calls.append((start, stop, tuple(objects)))
        return read(self, start, stop, digest=digest, objects=objects)

    def recording_iter(self, groups, batch_rows=None):
        sizes.append(batch_rows)
        return batches(self, groups, batch_rows)

    monkeypatch.setattr(ParquetSource, "read", recording_read)
    monkeypatch.setattr(ParquetSource, "_iter", recording_iter)
    res = db.run(text_type, db.Table(path), tmp_path / "t.zarr", **{**RUN, "cluster": cluster})
    assert res.complete
    ds = db.open(tmp_path / "t.zarr")
    assert ds.n.values.tolist() == [len(s) for s in df.seq] and (ds.is_str.values == 1).all()
    assert ds.label.values.tolist() == df.label.tolist()
    if cluster == "serial":  # the blocks' reads ran here
        blocks = [c for c in calls if c[1] - c[0] == 10]
        assert len(blocks) == 4 and all(c[2] == ("seq",) for c in blocks), calls
    reader = db.Table(path)._reader
    sizes.clear()
    reader.read(39, 40)  # the last row of a group of 10: one batch of the group's 10 rows
    reader.read(0, 3)  # the first rows only: no more decoded
    assert sizes == [10, 3]
