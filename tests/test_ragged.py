"""Outputs of any length, text outputs and parameters, and output units.

Ragged outputs (``Output(dims=("peak",), shape=(None,))``) and text
(``Output(dtype="str")``, text parameters and coordinates) are stored padded, as
``uint8`` bytes for text, with a ``<name>_length`` array: every Zarr v3 reader reads
them. These tests run real sweeps into real stores and read them back with
``daskbatch.open`` and with xarray alone.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import daskbatch as db
from daskbatch.errors import OutputSpecError, StoreError
from daskbatch.ragged import RaggedBlock, chunk_width, decode_text, encode_text
from daskbatch.raggedstore import grow_width
from daskbatch.repair import check
from daskbatch.testing import assert_stores_identical, blocks_done, run_killed_and_resumed

RUN = {"progress": False}
DATA = Path(__file__).parent / "data"

ROCKS = ["granite", "shale", "sänd", "", "clay", "glimmerschiefer", "ø", "granite", "b", "c", "d", "e"]
TABLE = pd.DataFrame({"rock": ROCKS, "n": [0, 1, 0, 2, 3, 5, 1, 8, 13, 4, 0, 21]})


def peaks_of(n: int, rock: str) -> np.ndarray:
    return np.arange(int(n), dtype=np.float64) * 0.5 + len(rock)


@db.kernel(
    outputs={
        "peaks": db.Output(dims=("peak",), shape=(None,), units="s"),
        "label": db.Output(dtype="str"),
        "y": db.Output(units="m"),
    }
)
def sample_kernel(rock, n):
    """Per sample: ``n`` peaks (0 included), a label with non-ASCII text."""
    return {"peaks": peaks_of(n, rock), "label": f"{rock}·{n}", "y": float(n)}


@db.kernel(
    outputs={
        "peaks": db.Output(dims=("peak",), shape=(None,), units="s"),
        "label": db.Output(dtype="str"),
        "y": db.Output(units="m"),
    },
    per_sample=False,
)
def block_kernel(rock, n):
    """Vectorised: lists with one entry per sample."""
    rocks, ns = np.asarray(rock).reshape(-1), np.asarray(n).reshape(-1)
    return {
        "peaks": [peaks_of(k, r) for r, k in zip(rocks.tolist(), ns.tolist(), strict=True)],
        "label": [f"{r}·{k}" for r, k in zip(rocks.tolist(), ns.tolist(), strict=True)],
        "y": ns.astype(np.float64),
    }


@db.kernel(outputs={"counts": db.Output(dims=("hit",), shape=(None,), dtype="int32")}, per_sample=False)
def grid_counts(rock, depth):
    """On a grid (2-D blocks): an object array of the block's shape, ints of any length."""
    out = np.empty(np.broadcast_shapes(np.shape(rock), np.shape(depth)), dtype=object)
    for idx in np.ndindex(out.shape):
        out[idx] = list(
            range(len(np.broadcast_to(rock, out.shape)[idx]) + int(np.broadcast_to(depth, out.shape)[idx]))
        )
    return out


def expected_labels() -> list[str]:
    return [f"{r}·{k}" for r, k in zip(ROCKS, TABLE["n"], strict=True)]


def check_store(path: Path) -> None:
    """What every run below must give, read with daskbatch.open and xarray alone."""
    ds = db.open(path)
    assert (ds.status.values == 1).all()
    lengths = ds.peaks_length.values
    assert lengths.tolist() == TABLE["n"].tolist()
    assert ds.peaks.shape == (12, 21)  # padded to the longest value (21), fill NaN
    for i, (rock, n) in enumerate(zip(ROCKS, TABLE["n"], strict=True)):
        np.testing.assert_array_equal(ds.peaks.values[i, :n], peaks_of(n, rock))
        assert np.isnan(ds.peaks.values[i, n:]).all()
    assert ds.peaks.attrs["units"] == "s" and ds.y.attrs["units"] == "m"
    assert ds.peaks.attrs["daskbatch"] == {"ragged": True, "length": "peaks_length"}
    # text: decoded to strings, their byte and length variables gone
    assert ds.label.dtype.kind == "T" and ds.label.dims == ("sample",)
    assert ds.label.values.tolist() == expected_labels()
    assert ds.rock.values.tolist() == ROCKS
    assert not {"label_length", "rock_length", "label_bytes", "rock_bytes"} & (
        set(ds.variables) | set(ds.dims)
    )
    frame = ds[["label", "rock", "y"]].to_dataframe()
    assert frame["label"].tolist() == expected_labels()
    # xarray alone: bytes and lengths, no string data type anywhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = xr.open_zarr(path)
    assert raw.label.dtype == np.uint8 and raw.label.dims == ("sample", "label_bytes")
    texts = [bytes(raw.label.values[i, : raw.label_length.values[i]]).decode() for i in range(12)]
    assert texts == expected_labels()
    assert raw.peaks.shape == (12, 21) and raw.peaks_length.values.tolist() == TABLE["n"].tolist()
    for name, arr in zarr.open_group(str(path), mode="r").arrays():
        assert "string" not in json.dumps(arr.metadata.to_dict()["data_type"]), name
    # the consolidated metadata has the widths the arrays grew to
    root = json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    for name in ("peaks", "label", "rock"):
        assert root[name]["shape"] == json.loads((path / name / "zarr.json").read_text())["shape"]
    assert check(path).ok, check(path)


def test_per_sample_kernel_ragged_text_and_units(tmp_path):
    # blocks of 3: the first block's longest value is 1, later ones longer (2, 8, 21):
    # the arrays widen block after block, and samples of length 0 are everywhere
    res = db.run(sample_kernel, db.Table(TABLE), tmp_path / "s.zarr", cluster="serial", chunk_size=3, **RUN)
    assert res.samples_computed == 12 and db.status(tmp_path / "s.zarr").samples["ok"] == 12
    check_store(tmp_path / "s.zarr")
    meta = json.loads((tmp_path / "s.zarr" / "peaks" / "zarr.json").read_text())
    assert meta["shape"] == [12, 21] and meta["chunk_grid"]["configuration"]["chunk_shape"] == [
        3,
        chunk_width(3, 8),
    ]
    assert meta["attributes"]["units"] == "s"
    spec = db.open(tmp_path / "s.zarr").attrs["daskbatch"]["kernel"]["outputs"]
    assert spec["peaks"] == {
        "dims": ["peak"],
        "shape": [None],
        "dtype": "float64",
        "fill": None,
        "units": "s",
    }
    assert spec["label"] == {"dims": [], "shape": [], "dtype": "str", "fill": ""}


def test_vectorised_kernel_on_processes_gives_the_same_store(tmp_path):
    db.run(sample_kernel, db.Table(TABLE), tmp_path / "a.zarr", cluster="serial", chunk_size=3, **RUN)
    db.run(
        block_kernel,
        db.Table(TABLE),
        tmp_path / "b.zarr",
        cluster="processes",
        n_workers=2,
        chunk_size=3,
        **RUN,
    )
    check_store(tmp_path / "b.zarr")
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_grid_with_text_axis_and_text_coords(tmp_path):
    @db.kernel(outputs={"v": db.Output(dims=("band",), shape=(2,), coords={"band": ["tief", "hoch"]})})
    def banded(rock, depth):
        return [depth, len(rock) * depth]

    space = db.Grid(rock=["granite", "sänd", ""], depth=[1.0, 2.0, 3.0, 4.0])
    db.run(banded, space, tmp_path / "g.zarr", cluster="threads", chunk_size={"rock": 2, "depth": 3}, **RUN)
    ds = db.open(tmp_path / "g.zarr")
    assert ds.rock.values.tolist() == ["granite", "sänd", ""] and ds.indexes["rock"] is not None
    assert ds.band.values.tolist() == ["tief", "hoch"]
    assert float(ds.v.sel(rock="sänd", depth=2.0, band="hoch")) == 8.0
    raw = xr.open_zarr(tmp_path / "g.zarr")  # xarray alone: the axis as bytes, no index
    assert raw.rock.dtype == np.uint8 and raw.rock_length.values.tolist() == [7, 5, 0]
    assert check(tmp_path / "g.zarr").ok

    db.run(
        grid_counts, space, tmp_path / "c.zarr", cluster="serial", chunk_size={"rock": 2, "depth": 2}, **RUN
    )
    ds = db.open(tmp_path / "c.zarr")
    assert ds.counts.dtype == np.int32 and ds.counts.shape == (3, 4, 11)
    assert ds.counts_length.values.tolist() == [[8, 9, 10, 11], [5, 6, 7, 8], [1, 2, 3, 4]]
    assert ds.counts.values[2, 0, 1] == np.iinfo(np.int32).min  # padded with the int fill
    assert check(tmp_path / "c.zarr").ok


def test_width_grows_only_in_blocks_and_chunk_files_are_recorded(tmp_path):
    path = tmp_path / "s.zarr"
    db.run(sample_kernel, db.Table(TABLE), path, cluster="serial", chunk_size=3, **RUN)
    # every block's record lists the chunk columns it wrote and its length chunk
    width = chunk_width(3, 8)
    for block in range(4):
        sums = json.loads((path / ".daskbatch" / "blocks" / f"{block}.json").read_text())["checksums"]
        longest = max(TABLE["n"][3 * block : 3 * block + 3])
        columns = -(-longest // width)
        assert sorted(k for k in sums if k.startswith("peaks/")) == [
            f"peaks/c/{block}/{c}" for c in range(columns)
        ]
        assert f"peaks_length/c/{block}" in sums and f"label_length/c/{block}" in sums
    # concurrent widening: never narrower than the widest asked for
    needs = [5, 40, 3, 17, 40, 2, 33, 9]
    threads = [threading.Thread(target=grow_width, args=(path, "peaks", n)) for n in needs * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads((path / "peaks" / "zarr.json").read_text())["shape"] == [12, 40]
    root = json.loads((path / "zarr.json").read_text())
    assert root["consolidated_metadata"]["metadata"]["peaks"]["shape"] == [12, 40]
    assert db.open(path).peaks.shape == (12, 40)
    assert check(path).ok  # wider than the template: what block writers do, no damage


def test_resume_after_kill_keeps_bits(tmp_path, cli):
    script = tmp_path / "sweep.py"
    script.write_text(
        "import sys, time\nimport numpy as np, pandas as pd\nimport daskbatch as db\n"
        "@db.kernel(outputs={'peaks': db.Output(dims=('peak',), shape=(None,)), 'label': db.Output(dtype='str')})\n"
        "def slow(i):\n"
        "    time.sleep(0.02)\n"
        "    return {'peaks': np.sqrt(np.arange(i % 37)), 'label': 'é' * (i % 11)}\n"
        "if __name__ == '__main__':\n"
        "    db.run(slow, db.Table(pd.DataFrame({'i': np.arange(200)})), sys.argv[1], cluster='serial',\n"
        "           chunk_size=10, progress=False)\n"
    )
    store = tmp_path / "killed.zarr"
    r = run_killed_and_resumed(
        [sys.executable, str(script), str(store)], until=lambda: blocks_done(store) >= 3, wait=120
    )
    assert r.resumed.returncode == 0, r.resumed.stderr
    assert r.killed[0].signalled, "the kill should land mid-run"
    ref = tmp_path / "ref.zarr"
    done = __import__("subprocess").run(
        [sys.executable, str(script), str(ref)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert_stores_identical(store, ref)
    verify = cli("status", str(store), "--verify")
    assert (
        verify.returncode == 0 and "every committed block matches its checksums (20 checked)" in verify.stdout
    )
    ds = db.open(store)
    assert ds.peaks.shape == (200, 36) and ds.label.values[10] == "é" * 10


@db.kernel(
    outputs={"peaks": db.Output(dims=("peak",), shape=(None,)), "label": db.Output(dtype="str")},
)
def fails_first(i, flag):
    if i % 4 == 1 and not Path(flag).exists():
        raise RuntimeError("not yet")
    return {"peaks": np.full(i, float(i)), "label": "x" * i}


def test_retry_failed_keeps_old_values_and_fills_new(tmp_path):
    path, flag = tmp_path / "r.zarr", tmp_path / "flag"
    space = db.Table(pd.DataFrame({"i": np.arange(10)}))
    db.run(fails_first, space, path, cluster="serial", chunk_size=4, constants={"flag": str(flag)}, **RUN)
    before = db.open(path).load()  # before the retry
    assert (before.status.values == 2).sum() == 3 and before.peaks_length.values[1] == 0
    kept = {name: zarr.open_array(str(path / name), mode="r")[...] for name in ("peaks", "label")}
    flag.write_text("")
    db.run(
        fails_first,
        space,
        path,
        cluster="serial",
        chunk_size=4,
        constants={"flag": str(flag)},
        retry_failed=True,
        **RUN,
    )
    ds = db.open(path)
    assert (ds.status.values == 1).all()
    assert ds.peaks_length.values.tolist() == list(range(10))
    assert ds.label.values.tolist() == ["x" * i for i in range(10)]
    for i in range(10):
        np.testing.assert_array_equal(ds.peaks.values[i, :i], np.full(i, float(i)))
    ok = before.status.values == 1  # not recomputed: the same bytes
    for name, old in kept.items():
        new = zarr.open_array(str(path / name), mode="r")[...]
        np.testing.assert_array_equal(new[ok][:, : old.shape[1]], old[ok])
    assert check(path).ok


def test_kernel_value_errors_are_one_line_per_sample():
    k = db.kernel(
        lambda x: {
            "y": "oops" if x == 1 else (np.arange(3.0) if x == 2 else x),
            "s": 7 if x == 3 else "ok",
            "p": np.ones((2, 2)) if x == 4 else ("ab" if x == 5 else (["x"] if x == 0 else [1.0] * int(x))),
        },
        outputs={"y": db.Output(), "s": db.Output(dtype="str"), "p": db.Output(dims=("k",), shape=(None,))},
    )
    res = k.run_block({"x": np.arange(7.0)}, (7,))
    errors = {e["position"][0]: e["error"] for e in res.errors}
    assert res.status.tolist() == [2, 2, 2, 2, 2, 2, 1]
    assert errors[0].startswith(
        "OutputSpecError: sample 0: output 'p' is text (the list ['x']), expected a 1-D"
    )
    assert "(declared Output(dims=('k',), shape=(None,)))" in errors[0]
    assert errors[1].startswith(
        "OutputSpecError: sample 1: output 'y' is text (the str 'oops'), expected float64"
    )
    assert "declare Output(dtype='str')" in errors[1]
    assert "output 'y' has shape (3,), expected ()" in errors[2]
    assert "declare Output(dims=('item',), shape=(None,))" in errors[2]
    assert "output 's' is the int 7, expected a str (declared Output(dtype='str'))" in errors[3]
    assert "output 'p' is the ndarray" in errors[4] and "expected a 1-D array of any length" in errors[4]
    assert "output 'p' is text (the str 'ab')" in errors[5]
    assert all("\n" not in e for e in errors.values())
    assert res.outputs["p"].lengths.tolist() == [0, 0, 0, 0, 0, 0, 6]  # failed samples: empty


def test_fixed_output_given_ragged_values_suggests_shape_none(tmp_path):
    vec = db.kernel(
        lambda x: [np.arange(int(v)) for v in x],
        outputs={"y": db.Output(dims=("t",), shape=(3,))},
        per_sample=False,
    )
    res = vec.run_block({"x": np.array([3.0, 3.0, 5.0])}, (3,))
    # the block call is refused, then each sample alone: only the 5-long one fails
    assert res.status.tolist() == [1, 1, 2]
    assert "output 'y' has shape (1, 5), expected (1, 3)" in res.errors[0]["error"]
    assert "shape=(None,)" in res.errors[0]["error"]
    # the probe stops a run whose first samples break the spec, before any store exists
    bad = db.kernel(lambda x: str(x), outputs={"y": db.Output()})
    with pytest.raises(OutputSpecError, match=r"output 'y' is text .*declare Output\(dtype='str'\)"):
        db.run(bad, db.Grid(x=[1.0, 2.0]), tmp_path / "bad.zarr", cluster="serial", **RUN)
    assert not (tmp_path / "bad.zarr").exists()


def test_values_out_of_range_fail_their_sample_only():
    k = db.kernel(
        lambda x: [1, 2, 300 if x else 3], outputs={"p": db.Output(dims=("k",), shape=(None,), dtype="int8")}
    )
    res = k.run_block({"x": np.array([0, 1, 0])}, (3,))
    assert res.status.tolist() == [1, 2, 1]
    assert "output 'p': value 300 at index (2,) does not fit in int8" in res.errors[0]["error"]
    vk = db.kernel(
        lambda x: [[1, 2, 300 if v else 3] for v in x],
        outputs={"p": db.Output(dims=("k",), shape=(None,), dtype="int8")},
        per_sample=False,
    )
    res = vk.run_block({"x": np.array([0, 1, 0])}, (3,))
    assert res.status.tolist() == [1, 2, 1] and res.outputs["p"].lengths.tolist() == [3, 0, 3]
    assert "value 300 at index (2,) does not fit in int8" in res.errors[0]["error"]
    # [] is float64 to numpy: an empty value fits any dtype
    empty = db.kernel(lambda x: [], outputs={"p": db.Output(dims=("k",), shape=(None,), dtype="int64")})
    assert empty.run_block({"x": np.zeros(2)}, (2,)).status.tolist() == [1, 1]


def test_output_declarations():
    with pytest.raises(OutputSpecError, match=r"shape=\(None, 3\) is not supported: only a 1-D output"):
        db.Output(dims=("a", "b"), shape=(None, 3))
    with pytest.raises(OutputSpecError, match=r"Output\(dtype='str', dims=\('k',\)\): a text output is one"):
        db.Output(dims=("k",), shape=(2,), dtype="str")
    with pytest.raises(OutputSpecError, match=r"units='m' and attrs\['units'\]='s' differ"):
        db.Output(units="m", attrs={"units": "s"})
    with pytest.raises(OutputSpecError, match="coords for 'k', a ragged dim"):
        db.Output(dims=("k",), shape=(None,), coords={"k": [1, 2]})
    with pytest.raises(OutputSpecError, match="fill='-'"):
        db.Output(dtype="str", fill="-")
    assert db.Output(units="m", attrs={"units": "m", "long_name": "depth"}).attrs == {
        "units": "m",
        "long_name": "depth",
    }
    assert db.Output(dtype=str) == db.Output(dtype="str") and db.Output(dtype="str").text
    assert db.Output().spec() == {"dims": [], "shape": [], "dtype": "float64", "fill": None}  # unchanged


def test_names_the_padding_adds_must_be_free(tmp_path):
    k = db.kernel(
        lambda x: {"p": [x], "p_length": x},
        outputs={"p": db.Output(dims=("k",), shape=(None,)), "p_length": db.Output()},
    )
    with pytest.raises(StoreError, match="its lengths under the name 'p_length', which clashes with output"):
        db.run(k, db.Grid(x=[1.0]), tmp_path / "a.zarr", cluster="serial", **RUN)
    shared = db.kernel(
        lambda x: {"a": [x], "b": [x, x]},
        outputs={"a": db.Output(dims=("k",), shape=(None,)), "b": db.Output(dims=("k",), shape=(None,))},
    )
    with pytest.raises(StoreError, match=r"output 'a': its ragged dim 'k' .* is also a dim of output 'b'"):
        db.run(shared, db.Grid(x=[1.0]), tmp_path / "b.zarr", cluster="serial", **RUN)


def test_repair_keeps_the_width_of_a_damaged_ragged_array(tmp_path):
    path = tmp_path / "s.zarr"
    db.run(sample_kernel, db.Table(TABLE), path, cluster="serial", chunk_size=3, **RUN)
    (path / "peaks" / "zarr.json").write_text("{garbage")
    report = check(path)
    assert [p.file for p in report.metadata] == ["peaks/zarr.json"]
    db.run(sample_kernel, db.Table(TABLE), path, cluster="serial", chunk_size=3, verify=True, **RUN)
    check_store(path)


def test_validate_compares_ragged_and_text(tmp_path):
    path = tmp_path / "s.zarr"
    db.run(sample_kernel, db.Table(TABLE), path, cluster="serial", chunk_size=3, **RUN)
    report = db.validate(path, n=12)
    assert report.ok, str(report)


def test_stores_with_zarr_strings_still_open(tmp_path):
    """Stores written before text was stored as UTF-8 bytes (Zarr's string type)."""
    for name in ("zarr_strings_table", "zarr_strings_grid"):
        shutil.copytree(DATA / name, tmp_path / name)
    ds = db.open(tmp_path / "zarr_strings_table")
    assert ds.kind.values.tolist() == ["granite", "shale", "sänd", "clay", "granite"]
    assert ds.y.values.tolist() == [8.0, 7.0, 7.0, 8.0, 12.0]
    ds = db.open(tmp_path / "zarr_strings_grid")
    assert ds.kind.values.tolist() == ["granite", "shale", "sänd"] and ds.band.values.tolist() == [
        "low",
        "high",
    ]
    assert float(ds.v.sel(kind="shale", x=2.0, band="high")) == 10.0
    for name in ("zarr_strings_table", "zarr_strings_grid"):
        assert check(tmp_path / name).ok, check(tmp_path / name)


def test_text_encoding_round_trips():
    values = np.array([["", "a", "ñ\0"], ["日本語", "x" * 300, "\0b"]], dtype=object)  # NULs kept
    data, lengths = encode_text(values)
    assert data.dtype == np.uint8 and lengths.tolist() == [[0, 1, 3], [9, 300, 2]]
    assert decode_text(data, lengths).tolist() == values.tolist()
    assert decode_text(np.zeros((2, 0), np.uint8), np.zeros(2, np.int64)).tolist() == ["", ""]
    block = RaggedBlock.from_padded(db.Output(dtype="str"), data.reshape(6, -1), lengths.reshape(6))
    assert block.texts() == values.reshape(-1).tolist()


def test_a_store_with_zarr_strings_is_resumed_as_it_is(tmp_path):
    from daskbatch.testing import tagged

    path = tmp_path / "old.zarr"
    shutil.copytree(DATA / "zarr_strings_table", path)
    (path / ".daskbatch" / "blocks" / "1.json").unlink()  # block 1 pending: written again
    table = pd.DataFrame(
        {"kind": ["granite", "shale", "sänd", "clay", "granite"], "x": [1.0, 2.0, 3.0, 4.0, 5.0]}
    )
    res = db.run(tagged, db.Table(table), path, cluster="serial", chunk_size=2, **RUN)
    assert res.blocks_computed == 1
    assert json.loads((path / "kind" / "zarr.json").read_text())["data_type"] == "string"  # kept as it was
    assert not (path / "kind_length").exists()
    ds = db.open(path)
    assert ds.kind.values.tolist() == table["kind"].tolist() and (ds.status.values == 1).all()
    assert check(path).ok, check(path)


def test_the_lock_folder_is_the_ledgers():
    from daskbatch import ledger, ragged

    assert ragged.HIDDEN == ledger.HIDDEN


@db.kernel(outputs={"y": db.Output(units="m"), "peaks": db.Output(dims=("peak",), shape=(None,))})
def no_peaks(x):
    return {"y": x, "peaks": []}


@db.kernel(outputs={"a": db.Output(dims=("i",), shape=(None,)), "b": db.Output(dims=("j",), shape=(None,))})
def two_dims(x):
    return {"a": [x] * int(x), "b": [-x] * (3 - int(x))}


def test_an_output_empty_in_every_sample_is_summarised_and_compared(tmp_path, cli):
    store = tmp_path / "e.zarr"
    db.run(no_peaks, db.Table({"x": np.arange(6.0)}), store, cluster="serial", **RUN)
    summary = db.summarize(store)
    assert summary.peaks.shape == (len(summary.stat), 0)
    assert summary.y.sel(stat="count").item() == 6
    r = cli("summary", str(store))
    assert r.returncode == 0, r.stderr
    assert "peaks over peak (0):\n  no values: every sample's is empty" in r.stdout
    assert cli("compare", str(store), str(store)).returncode == 0
    assert cli("report", str(store), "-o", str(tmp_path / "r.html")).returncode == 0


def test_a_long_export_of_curves_along_different_dims_is_refused(tmp_path):
    store = tmp_path / "two.zarr"
    db.run(two_dims, db.Table({"x": np.array([1.0, 2.0])}), store, cluster="serial", **RUN)
    with pytest.raises(
        db.DaskbatchError, match=r"along different dims \('a' along i, 'b' along j\); use curves='wide'"
    ):
        db.export(store, tmp_path / "long.csv", curves="long")
    assert not (tmp_path / "long.csv").exists()
    db.export(store, tmp_path / "wide.csv", curves="wide")
    assert pd.read_csv(tmp_path / "wide.csv")[["a_length", "b_length"]].values.tolist() == [[1, 2], [2, 1]]


@db.kernel(outputs={"label": db.Output(dtype="str")})
def lone_surrogate(x):
    return "a\ud800b" if x > 3 else "ok"


@db.kernel(outputs={"y": db.Output()})
def maybe_none(x):
    return None if x > 3 else 1.0


def test_text_utf8_cannot_encode_fails_its_sample_and_none_for_a_number_says_what_to_return(tmp_path):
    store = tmp_path / "s.zarr"
    db.run(lone_surrogate, db.Table({"x": np.arange(6.0)}), store, cluster="serial", **RUN)
    df = db.failures(store)
    assert df["sample"].tolist() == [4, 5] and set(df["error"]) == {"OutputValueError"}
    assert df["message"][0].startswith("output 'label' has a character UTF-8 cannot encode: U+D800")
    assert db.open(store).label.values.tolist()[:4] == ["ok"] * 4
    with pytest.raises(
        OutputSpecError, match=r"sample 4: output 'y' is None, not float64 values.*float\('nan'\)"
    ):
        db.run(maybe_none, db.Table({"x": np.arange(6.0)}), tmp_path / "n.zarr", cluster="serial", **RUN)
    assert not (tmp_path / "n.zarr").exists()


def test_a_text_input_empty_in_every_sample_of_a_block_is_stored(tmp_path):
    """A CSV row with a missing trailing value gives "" (a label here); a block whose
    values are all "" has no width: it crashed the run at its first write."""
    (tmp_path / "t.csv").write_text("x,name\n1,a\n2,\n3,c\n")
    kw = {"cluster": "serial", "chunk_size": 1, "progress": False}
    db.run(twice_x, db.Table(str(tmp_path / "t.csv")), tmp_path / "t.zarr", **kw)
    ds = db.open(tmp_path / "t.zarr").load()
    assert list(ds.name.values) == ["a", "", "c"] and list(ds.y.values) == [2.0, 4.0, 6.0]
    space = db.MonteCarlo({"x": db.Uniform(0, 1), "s": db.Choice(["", "ab"])}, n=40, seed=3)
    db.run(twice_s, space, tmp_path / "c.zarr", cluster="threads", n_workers=2, chunk_size=2, progress=False)
    ds = db.open(tmp_path / "c.zarr").load()
    assert db.status(tmp_path / "c.zarr").samples["ok"] == 40 and set(ds.s.values) == {"", "ab"}
    assert np.array_equal(
        ds.y.values, [2 * x + len(s) for x, s in zip(ds.x.values, ds.s.values, strict=True)]
    )


@db.kernel(outputs={"y": db.Output()})
def twice_x(x):
    return 2.0 * x


@db.kernel(outputs={"y": db.Output()})
def twice_s(x, s):
    return 2 * x + len(s)


def test_a_store_with_zarr_string_coordinates_reruns_with_its_kernel(tmp_path):
    """Its output coordinate is in Zarr's string type: the rerun's check of the kernel's
    coordinates compared it with UTF-8 bytes, and refused the unchanged kernel."""
    import subprocess

    path = tmp_path / "grid.zarr"
    shutil.copytree(DATA / "zarr_strings_grid", path)
    first = sorted((path / ".daskbatch" / "blocks").iterdir())[0]
    first.unlink()  # a block pending: the rerun computes it
    script = tmp_path / "rerun.py"
    script.write_text(  # the kernel as the store was made with it (__main__:banded)
        "import sys\nimport daskbatch as db\n\n"
        "@db.kernel(outputs={'v': db.Output(dims=('band',), shape=(2,), coords={'band': ['low', 'high']})})\n"
        "def banded(kind, x):\n    return [x, len(kind) * x]\n\n"
        "r = db.run(banded, db.Grid(kind=['granite', 'shale', 'sänd'], x=[1.0, 2.0]), sys.argv[1],\n"
        "           cluster='serial', chunk_size=2, progress=False)\nprint('computed', r.blocks_computed)\n"
    )
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "computed 1" in r.stdout
    assert db.open(path).band.values.tolist() == ["low", "high"]
