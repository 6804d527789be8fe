"""Tables read where they are: Parquet, CSV, Zarr, folders and globs of them.

Each block reads its own rows in the worker, text is never padded, the inputs are
referenced by the store (not copied, unless ``copy=True``), columns the kernel does
not take are labels (coordinates in the store), a grown table is recognised as one
(``extension_of``), and bad inputs are refused when the Table is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

import daskbatch as db
from daskbatch import Table
from daskbatch.errors import KernelSignatureError, SpaceError
from daskbatch.sources import STRING
from daskbatch.space import space_from_spec
from daskbatch.testing import affine


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "k": np.arange(n, dtype=np.int64) * 3,
            "flag": np.arange(n) % 3 == 0,
            "name": [f"s{i}" + "a" * (i % 7) for i in range(n)],
        }
    )


def _zarr(df: pd.DataFrame, path: Path) -> Path:
    ds = xr.Dataset({k: ("sample", v.to_numpy()) for k, v in df.items()})
    ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return path


def _same(table: Table, df: pd.DataFrame) -> None:
    for lo, hi in [(0, 1), (3, 17), (15, 40), (39, 40), (0, len(df))]:
        got = table.block((slice(lo, hi),))
        for name in df.columns:
            want = df[name].to_numpy()[lo:hi]
            assert got[name].tolist() == want.tolist(), (name, lo, hi)
        assert got["name"].dtype == STRING


# ------------------------------------------------------------------ the sources


def test_every_source_reads_the_same_rows_and_digest(tmp_path):
    df = _frame()
    df.to_parquet(tmp_path / "t.parquet", row_group_size=7)
    df.to_parquet(tmp_path / "one_group.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    _zarr(df, tmp_path / "t.zarr")
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, lo in enumerate(range(0, 40, 15)):  # 15 + 15 + 10 rows, sorted by name
        df.iloc[lo : lo + 15].to_parquet(parts / f"part{i}.parquet")
        df.iloc[lo : lo + 15].to_csv(parts / f"part{i}.csv", index=False)
    digests = set()
    for source in [
        tmp_path / "t.parquet",
        str(tmp_path / "one_group.parquet"),
        tmp_path / "t.csv",
        tmp_path / "t.zarr",
        str(parts / "*.parquet"),
        str(parts / "part*.csv"),
    ]:
        t = Table(source)
        assert t.batch_shape == (40,)
        assert {n: p.dtype for n, p in t.params.items()} == {
            "x": np.float64,
            "k": np.int64,
            "flag": np.bool_,
            "name": STRING,
        }
        _same(t, df)
        spec = t.spec()
        assert spec["rows"] == 40 and spec["dtypes"]["name"] == "str"
        digests.add((spec["sha256"], json.dumps(spec["prefix"])))
    # one content digest whatever the format, the row groups or the files
    assert len(digests) == 1


def test_a_parquet_block_read_in_small_batches_gives_the_rows_and_digest_of_one_read(tmp_path, monkeypatch):
    from daskbatch import tablefiles

    df = _frame()
    df.to_parquet(tmp_path / "t.parquet", row_group_size=7)
    reader = Table(tmp_path / "t.parquet", columns=["x", "k", "flag", "name"])._reader
    whole = {(lo, hi): reader.read(lo, hi, digest=True) for lo, hi in [(0, 40), (3, 37), (13, 14)]}
    monkeypatch.setattr(tablefiles, "READ_BYTES", 1)  # 16 rows a batch: batches across row groups
    assert reader.read_rows() == 16
    for (lo, hi), (values, sums) in whole.items():
        small, small_sums = reader.read(lo, hi, digest=True)
        assert small_sums == sums == reader.rows_digest(lo, hi)
        assert set(sums) == {"x", "k", "flag", "name"}
        for name, want in values.items():
            assert small[name].dtype == want.dtype and small[name].tolist() == want.tolist()
        # a per-sample kernel's text: the same strings, without a StringDType copy
        loose, _ = reader.read(lo, hi, digest=True, objects=("name",))
        assert loose["name"].dtype == object and loose["name"].tolist() == df["name"].tolist()[lo:hi]
        assert loose["k"].dtype == np.int64
    assert reader.read(5, 5, digest=True)[0]["name"].shape == (0,)


def test_a_folder_of_one_kind_and_columns_chosen(tmp_path):
    df = _frame(10)
    (tmp_path / "d").mkdir()
    df.iloc[:4].to_parquet(tmp_path / "d" / "a.parquet")
    df.iloc[4:].to_parquet(tmp_path / "d" / "b.parquet")
    t = Table(tmp_path / "d", columns=["name", "x"])
    assert list(t.params) == ["name", "x"] and t.batch_shape == (10,)
    assert t.block((slice(2, 7),))["name"].tolist() == df.name[2:7].tolist()
    assert [Path(f[0]).name for f in t.spec()["files"]] == ["a.parquet", "b.parquet"]
    df.iloc[:2].to_csv(tmp_path / "d" / "c.csv", index=False)
    with pytest.raises(SpaceError, match=r"files of kinds \['csv', 'parquet'\]"):
        Table(tmp_path / "d")


def test_csv_blocks_find_their_rows_past_quotes_blank_lines_and_crlf(tmp_path):
    n = 5000  # several offsets (one every 1,024 rows)
    rows = []
    for i in range(n):
        text = f'"line {i}\nwith, comma and ""quotes"""' if i % 5 == 0 else f"plain{i}"
        rows.append(f"{i},{i * 0.5},{text}")
        if i % 997 == 0:
            rows.append("")  # blank lines do not count
    path = tmp_path / "q.csv"
    path.write_bytes(("i,v,text\r\n" + "\r\n".join(rows) + "\r\n").encode())
    want = pd.read_csv(path, keep_default_na=False)
    t = Table(path)
    assert t.batch_shape == (n,)
    for lo, hi in [(0, 3), (1020, 1030), (2047, 2049), (4990, 5000), (0, n)]:
        got = t.block((slice(lo, hi),))
        assert got["i"].tolist() == list(range(lo, hi))
        assert got["text"].tolist() == want.text[lo:hi].tolist()
        assert got["v"].tolist() == want.v[lo:hi].tolist()


def test_a_csv_integer_column_with_a_decimal_far_down_is_float(tmp_path):
    path = tmp_path / "late.csv"
    values = [str(i) for i in range(200_000)] + ["2.5"]  # past the rows types are guessed from
    path.write_text("a\n" + "\n".join(values) + "\n")
    t = Table(path)
    assert t.params["a"].dtype == np.float64
    assert t.block((slice(200_000, 200_001),))["a"].tolist() == [2.5]


def test_in_memory_tables_keep_strings_unpadded_and_their_digest():
    t = Table({"s": np.array(["a", "b" * 1000]), "x": [1.0, 2.0]})
    block = t.block((slice(0, 2),))
    assert block["s"].dtype == STRING and block["s"].nbytes == 32
    # the digest of a table held in memory is as before text stopped being padded
    h = hashlib.sha256()
    s = np.array(["a", "b" * 1000])
    h.update(b"s" + str(s.dtype).encode() + str(s.shape).encode() + "\x00".join(s).encode())
    x = np.array([1.0, 2.0])
    h.update(b"x" + b"float64" + str(x.shape).encode() + x.tobytes())
    assert t.spec()["sha256"] == h.hexdigest()
    assert t.params["s"].optional and t.params["s"].stored and t.carries_rows


# ------------------------------------------------------------------ runs

LONG = {0: 300, 1: 1_000_000, 2: 300, 3: 1_000_000}  # characters of the first rows' seq


@db.kernel(outputs={"n": db.Output(dtype="int64"), "pid": db.Output(dtype="int64")}, per_sample=False)
def measure_seq(x, seq, log=""):
    """Count each sample's characters; log the pid and how the block's text arrived."""
    if log:
        entry = {"pid": os.getpid(), "rows": len(seq), "dtype": str(seq.dtype), "nbytes": int(seq.nbytes)}
        with open(os.path.join(log, f"{os.getpid()}-{float(x[0])}.json"), "w") as f:
            json.dump(entry, f)
    n = np.array([len(s) for s in seq.tolist()], dtype=np.int64) + 0 * np.asarray(x, dtype=np.int64)
    return {"n": n, "pid": np.full(len(seq), os.getpid(), dtype=np.int64)}


@db.kernel(outputs={"n": db.Output(dtype="int64")})
def count_labels(x, **meta):
    """Per sample: how many labels came as keyword arguments (and that they are str)."""
    assert isinstance(meta["snip_id"], str)
    return len(meta)


def _sequences(tmp_path: Path, n: int = 200, groups: int = 25) -> tuple[Path, list[str]]:
    seqs = ["ACGT"[i % 4] * LONG.get(i, 10 + i) for i in range(n)]
    table = pa.table(
        {
            "x": np.arange(n, dtype=np.float64),
            "seq": pa.array(seqs, type=pa.large_string()),
            "snip_id": [f"snip{i:04d}" for i in range(n)],
        }
    )
    path = tmp_path / "seqs.parquet"
    pq.write_table(table, path, row_group_size=groups)
    return path, seqs


def test_serial_run_references_the_input_and_stores_labels(tmp_path):
    path, seqs = _sequences(tmp_path, n=60, groups=10)
    store = tmp_path / "ref.zarr"
    space = Table(path)
    db.run(measure_seq, space, store, cluster="serial", chunk_size=16, progress=False)
    root = zarr.open_group(store, mode="r")
    assert "x" not in root and "seq" not in root and "snip_id" in root  # referenced; the label kept
    ds = db.open(store)
    assert "snip_id" in ds.coords and "snip_id" not in ds.data_vars
    assert ds.snip_id.values.tolist() == [f"snip{i:04d}" for i in range(60)]
    assert ds.n.values.tolist() == [len(s) for s in seqs]
    spec = json.loads((store / "zarr.json").read_text())["attributes"]["daskbatch"]["space_spec"]
    st = path.stat()
    assert spec["path"] == str(path) and spec["source"] == "parquet" and spec["copy"] is False
    assert spec["size"] == st.st_size and spec["mtime_ns"] == st.st_mtime_ns and spec["rows"] == 60
    assert spec["dtypes"] == {"x": "float64", "seq": "str", "snip_id": "str"}
    assert spec["sha256"] == space.spec()["sha256"]
    # a rerun on the same file resumes (nothing to do); touching it changes nothing
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = db.run(measure_seq, Table(path), store, cluster="serial", chunk_size=16, progress=False)
    assert again.complete
    # copy=True stores the columns as before
    store2 = tmp_path / "copy.zarr"
    db.run(measure_seq, Table(path, copy=True), store2, cluster="serial", chunk_size=16, progress=False)
    ds2 = db.open(store2)
    assert ds2.seq.values.tolist() == seqs and "x" in ds2.data_vars and "snip_id" in ds2.coords


def test_a_process_run_reads_each_block_in_its_worker_unpadded(tmp_path):
    from daskbatch.tables import READS

    path, seqs = _sequences(tmp_path)
    log = tmp_path / "log"
    log.mkdir()
    store = tmp_path / "proc.zarr"
    READS.clear()
    res = db.run(
        measure_seq,
        Table(path),
        store,
        cluster="processes",
        n_workers=2,
        chunk_size=50,
        constants={"log": str(log)},
        progress=False,
    )
    assert res.complete
    entries = [json.loads(p.read_text()) for p in log.glob("*.json")]
    blocks = [e for e in entries if e["rows"] == 50]
    assert len(blocks) == 4
    # the blocks ran (and read their rows) in worker processes, not here
    assert all(e["pid"] != os.getpid() for e in blocks)
    assert all(hi - lo <= 16 for lo, hi in READS), READS  # here: the probe's first rows only
    # text arrives as variable-width strings: 16 bytes a sample, not 4 million
    assert all(e["dtype"] == "StringDType()" and e["nbytes"] == 16 * 50 for e in blocks)
    assert db.open(store).n.values.tolist() == [len(s) for s in seqs]


def test_labels_reach_a_kernel_with_kwargs_and_only_tables_have_labels(tmp_path):
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "snip_id": ["a", "b", "c"], "batch": [7, 7, 8]})
    df.to_csv(tmp_path / "l.csv", index=False)
    store = tmp_path / "kw.zarr"
    db.run(count_labels, Table(tmp_path / "l.csv"), store, cluster="serial", progress=False)
    ds = db.open(store)
    assert ds.n.values.tolist() == [2, 2, 2]
    assert "snip_id" not in ds.coords  # the kernel takes them: inputs, referenced
    # a grid parameter the kernel does not take is still an error
    with pytest.raises(KernelSignatureError, match=r"has no argument\(s\) \['c'\]"):
        db.run(affine, db.Grid(a=[1.0], c=[2.0]), tmp_path / "g.zarr", cluster="serial", progress=False)
    # an in-memory table's label is stored as a coordinate; validate works on file tables
    store2 = tmp_path / "mem.zarr"
    db.run(affine, Table(df.rename(columns={"x": "a"})), store2, cluster="serial", progress=False)
    ds2 = db.open(store2)
    assert set(ds2.coords) >= {"snip_id", "batch"} and "a" in ds2.data_vars
    assert ds2.batch.values.tolist() == [7, 7, 8]
    df.rename(columns={"x": "a"}).to_parquet(tmp_path / "a.parquet")
    store3 = tmp_path / "file.zarr"
    db.run(affine, Table(tmp_path / "a.parquet"), store3, cluster="serial", progress=False)
    assert db.validate(store3, n=3).ok
    assert db.validate(store2, n=3).ok


def test_spec_round_trips_through_a_spec_file(tmp_path):
    _frame(12).to_parquet(tmp_path / "t.parquet")
    t = Table(tmp_path / "t.parquet", columns=["x", "name"], copy=True)
    toml = tomllib.loads(t.to_toml())
    again = space_from_spec(toml["space"])
    assert again.spec() == t.spec() and again.copy and list(again.params) == ["x", "name"]
    user = space_from_spec({"type": "table", "path": "t.parquet", "columns": ["x"]}, base_dir=tmp_path)
    assert list(user.params) == ["x"] and not user.copy


# ------------------------------------------------------------------ extension_of


def test_extension_of_a_file_table(tmp_path):
    df = _frame(20)
    df.to_parquet(tmp_path / "old.parquet")
    old = Table(tmp_path / "old.parquet").spec()
    grown = pd.concat([df, _frame(25).iloc[20:]], ignore_index=True)
    grown.to_parquet(tmp_path / "new.parquet", row_group_size=6)
    grown.to_csv(tmp_path / "new.csv", index=False)
    assert Table(tmp_path / "new.parquet").extension_of(old) is None
    assert Table(tmp_path / "new.csv").extension_of(old) is None  # the same rows, as CSV
    changed = grown.copy()
    changed.loc[3, "name"] = "other"
    changed.to_parquet(tmp_path / "changed.parquet")
    assert (
        Table(tmp_path / "changed.parquet").extension_of(old)
        == "row 3 changed in column 'name' (now 'other')"
    )
    changed = grown.copy()
    changed.loc[18, "x"] = 0.25
    changed.to_parquet(tmp_path / "changed2.parquet")
    assert (
        Table(tmp_path / "changed2.parquet").extension_of(old)
        == "a row among rows 16-19 changed in column 'x'"
    )
    grown.drop(columns="flag").to_parquet(tmp_path / "fewer.parquet")
    assert Table(tmp_path / "fewer.parquet").extension_of(old) == "column 'flag' removed"
    grown.assign(k=grown.k * 0.5).to_parquet(tmp_path / "typed.parquet")
    assert Table(tmp_path / "typed.parquet").extension_of(old) == "column 'k' changed type int64 -> float64"
    assert Table(tmp_path / "old.parquet").extension_of(old) == "it has 20 rows, not more than the stored 20"
    assert "copy=True now" in Table(tmp_path / "new.parquet", copy=True).extension_of(old)
    assert Table(grown).extension_of(old).startswith("the stored table was read from")
    assert Table(tmp_path / "new.parquet").extension_of({"type": "grid"}) == (
        "the store's space is a grid, not a table"
    )


def test_extension_of_a_table_in_memory():
    df = _frame(20)
    old = Table(df).spec()
    grown = pd.concat([df, _frame(30).iloc[20:]], ignore_index=True)
    assert Table(grown).extension_of(old) is None
    grown.loc[5, "k"] = -1
    assert Table(grown).extension_of(old).startswith("row 5 changed")
    assert Table(df.drop(columns="x")).extension_of(old) == "column 'x' removed"


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_refused_when_the_table_is_made(tmp_path):
    store = tmp_path / "never.zarr"
    (tmp_path / "fake.parquet").write_text("a,b\n1,2\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4,5\n")
    pq.write_table(pa.table({"a": pa.array([1.0, None, 3.0])}), tmp_path / "null.parquet")
    pq.write_table(pa.table({"a": [1.0, float("nan"), 3.0, float("nan")]}), tmp_path / "nan.parquet")
    (tmp_path / "nan.csv").write_text("a,b\n1,x\nnan,y\n")
    (tmp_path / "mixed.csv").write_text("a\n" + "\n".join(str(i) for i in range(200_000)) + "\nabc\n")
    (tmp_path / "mixed_early.csv").write_text("a\nfoo\n2\n")
    when = pa.array([1, 2], type=pa.timestamp("s"))
    pq.write_table(pa.table({"t": when, "a": [1.0, 2.0]}), tmp_path / "time.parquet")
    pq.write_table(pa.table({"a": pa.array([1, None, 3], type=pa.int64())}), tmp_path / "null_int.parquet")
    (tmp_path / "blank.csv").write_text("x,notes\n1,\n2,\n3,\n")  # a column left blank
    (tmp_path / "allinf.csv").write_text("y\ninf\n-inf\ninf\n")  # values, though none finite
    (tmp_path / "semi.csv").write_text("x;name\n1;a\n2;b\n")
    cases = [
        (
            tmp_path / "blank.csv",
            r"column 'notes' of .* has no value in any of its 3 row\(s\) .*columns=\[...\]",
        ),
        (
            tmp_path / "null_int.parquet",
            r"column 'a' of .* has 1 row\(s\) without a value \(null; first: row 1\)",
        ),
        (
            tmp_path / "allinf.csv",
            r"column 'y' of .* has 3 row\(s\) with NaN or inf \(first: row 0, value inf\)",
        ),
        (tmp_path / "semi.csv", r"column name 'x;name' .*\(is the file ';'-separated\?"),
        (str(tmp_path / "in" / "*.parquet"), r"'.*\*.parquet' matches no file in '.*/in'"),
        (tmp_path / "fake.parquet", r"fake.parquet' is not a Parquet file \(Parquet magic bytes"),
        (tmp_path / "bad.csv", r"cannot parse '.*bad.csv' as CSV: .*Expected 2 columns, got 3"),
        (tmp_path / "missing.csv", r"file '.*missing.csv' does not exist"),
        (tmp_path / "null.parquet", r"column 'a' of .* has 1 row\(s\) with NaN or inf \(first: row 1"),
        (tmp_path / "nan.parquet", r"column 'a' of .* has 2 row\(s\) with NaN or inf \(first: row 1"),
        (tmp_path / "nan.csv", r"column 'a' of .* 1 row\(s\) without a value \(null; first: row 1"),
        (tmp_path / "mixed.csv", r"column 'a' of .* mixes numbers and text \(row 200000: 'abc'\)"),
        (tmp_path / "mixed_early.csv", r"column 'a' of .* mixes numbers and text \(row 1: '2'\)"),
        (tmp_path / "time.parquet", r"column 't' of .* has type timestamp\[\w+\]; .* columns=\[...\]"),
    ]
    for data, words in cases:
        with pytest.raises(SpaceError, match=words):
            Table(data)
    _frame(3).to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(SpaceError, match=r"column 'z' is not in '.*ok.parquet'; its columns are \['x'"):
        Table(tmp_path / "ok.parquet", columns=["x", "z"])
    with pytest.raises(SpaceError, match=r"columns='x' must be a list of column names"):
        Table(tmp_path / "ok.parquet", columns="x")
    with pytest.raises(SpaceError, match=r"copy='yes' must be True"):
        Table(tmp_path / "ok.parquet", copy="yes")
    assert list(Table(tmp_path / "time.parquet", columns=["a"]).params) == ["a"]  # t left out
    assert not store.exists()


def test_a_block_of_an_input_that_changed_is_refused(tmp_path):
    df = _frame(10)
    df.to_csv(tmp_path / "t.csv", index=False)
    t = Table(tmp_path / "t.csv")
    df.iloc[::-1].to_csv(tmp_path / "t.csv", index=False)  # rows moved: the offsets are wrong now
    with pytest.raises(SpaceError, match=r"input file '.*t.csv' changed since the table was read"):
        t.block((slice(0, 5),))


def test_auto_blocks_of_a_parquet_table_never_share_a_row_group(tmp_path):
    from daskbatch.chunking import aligned_samples

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(20_000, dtype=np.float64)}), path, row_group_size=500)
    table = db.Table(path)
    assert table.block_multiple == 500
    p = db.plan(affine, table, cluster="threads", n_workers=2, constants={"scale": 2.0})
    assert p.block_shape[0] % 500 == 0 or 500 % p.block_shape[0] == 0
    assert [aligned_samples(n, 500, 20_000) for n in (770, 1900, 120, 7)] == [500, 1500, 100, 5]
    ragged = tmp_path / "r.parquet"
    with pq.ParquetWriter(ragged, pa.schema([("a", pa.float64())])) as w:
        for n in (300, 500, 400):
            w.write_table(pa.table({"a": np.arange(n, dtype=np.float64)}))
    assert db.Table(ragged).block_multiple is None  # unequal row groups: nothing to align to


@db.kernel(outputs={"y": db.Output()})
def doubled(x):
    return 2 * x


def test_a_zarr_tables_index_along_its_sample_dim_rides_along_and_odd_variables_can_be_left_out(tmp_path):
    """xarray's usual layout: the rows along `station`, named by its index coordinate. Like
    the index pandas writes into Parquet, it is a column when named in columns= (it said it
    is not there); a variable without the sample dim can be left out."""
    ds = xr.Dataset(
        {"x": ("station", [1.0, 2.0, 3.0]), "t0": ((), 5.0)},
        coords={
            "station": np.array(["AB1", "CD2", "EF3"], dtype=object),
            "when": ("station", np.array([1, 2, 3], "datetime64[s]")),
        },
    )
    ds.to_zarr(tmp_path / "st.zarr", zarr_format=3, consolidated=False, mode="w")
    path = str(tmp_path / "st.zarr")
    with pytest.raises(
        db.errors.SpaceError, match=r"variable 't0' .* without the sample dim 'station'.*columns="
    ):
        db.Table(path)
    with pytest.raises(
        db.errors.SpaceError, match=r"'when' .* has type datetime64.*leave it out with columns="
    ):
        db.Table(path, columns=["x", "station", "when"])
    assert list(db.Table(path, columns=["x"]).params) == ["x"]
    table = db.Table(path, columns=["x", "station"])
    db.run(doubled, table, tmp_path / "o.zarr", cluster="serial", progress=False)
    out = db.open(tmp_path / "o.zarr").load()
    assert list(out.station.values) == ["AB1", "CD2", "EF3"] and list(out.y.values) == [2.0, 4.0, 6.0]
    xr.Dataset({"x": ("station", [1.0, 2.0])}, coords={"station": np.array([1, 2], "datetime64[s]")}).to_zarr(
        tmp_path / "t.zarr", zarr_format=3, consolidated=False, mode="w"
    )
    assert list(db.Table(str(tmp_path / "t.zarr")).params) == ["x"]  # a time index: not a column unless named
    # 'sample' is the sample dim also when the first variable lacks it (it crashed: not in tuple)
    xr.Dataset({"meta": ("station", [1.0, 2.0]), "x": ("sample", [1.0, 2.0, 3.0])}).to_zarr(
        tmp_path / "m.zarr", zarr_format=3, consolidated=False, mode="w"
    )
    with pytest.raises(db.errors.SpaceError, match=r"variable 'meta' .* without the sample dim 'sample'"):
        db.Table(str(tmp_path / "m.zarr"))
    assert db.Table(str(tmp_path / "m.zarr"), columns=["x"]).size == 3
    with pytest.raises(db.errors.SpaceError, match=r"'station' .* has type datetime64"):
        db.Table(str(tmp_path / "t.zarr"), columns=["x", "station"])


def test_a_table_column_named_like_an_output_says_how_to_leave_it_out(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n3,4\n")
    with pytest.raises(
        db.errors.StoreError, match=r"output 'y' clashes .*\(table column\); .*columns=\[\.\.\.\]"
    ):
        db.run(
            doubled, db.Table(str(tmp_path / "t.csv")), tmp_path / "o.zarr", cluster="serial", progress=False
        )
    assert not (tmp_path / "o.zarr").exists()
    db.run(
        doubled,
        db.Table(str(tmp_path / "t.csv"), columns=["x"]),
        tmp_path / "o.zarr",
        cluster="serial",
        progress=False,
    )
