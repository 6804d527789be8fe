import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import daskbatch as db
from daskbatch.errors import StoreError, StoreExistsError
from daskbatch.store import HIDDEN, INTERNAL, Store
from daskbatch.testing import curve

SPACE = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=50, seed=3)


def _run(store, **kw):
    return db.run(curve, SPACE, store, cluster="serial", progress=False, chunk_size=20, **kw)


def test_layout_chunks_match_blocks_and_open_zarr_is_clean(store):
    _run(store)
    root = zarr.open_group(store, mode="r")
    for name in ("x", "w", "curve", "total", "npos", "status", "sample"):
        assert root[name].chunks[0] == 20, name
    assert root["curve"].chunks == (20, 5) and root["w"].chunks == (20, 2)
    assert INTERNAL not in root  # format 2: the bookkeeping is one record file per block
    assert sorted(p.name for p in (Path(store) / HIDDEN / "blocks").iterdir()) == [
        "0.json",
        "1.json",
        "2.json",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
    assert INTERNAL not in ds.variables
    assert ds.status.dtype == np.int8 and ds.npos.dtype == np.int64
    assert ds.status.attrs["flag_meanings"].split()[:3] == ["pending", "ok", "failed"]
    assert ds.sample.values.tolist() == list(range(50))
    assert ds.t.size == 5
    info = ds.attrs["daskbatch"]
    assert info["kernel"]["identity"] == "daskbatch.testing:curve"
    assert info["seed"] == 3 and info["layout"]["block_shape"] == [20]
    assert info["history"][-1]["state"] == "finished"


def test_block_files_are_per_block(store):
    _run(store)
    # a block's chunks: one file per array per block, none shared
    files = {p.relative_to(store).as_posix() for p in Path(store).rglob("*") if p.is_file()}
    assert "curve/c/0/0" in files and "curve/c/2/0" in files and ".daskbatch/blocks/2.json" in files
    # every array along the batch dim is chunked exactly as the blocks are (20 samples
    # of 50: blocks 0, 1, 2): one chunk file per block per array, and one record per block
    assert {f for f in files if f.startswith(".daskbatch/blocks/")} == {
        f".daskbatch/blocks/{b}.json" for b in range(3)
    }
    import zarr

    root = zarr.open_group(store, mode="r")
    checked = []
    for path, arr in root.members(max_depth=None):
        if not isinstance(arr, zarr.Array):
            continue
        dims = arr.metadata.dimension_names or ()
        if "sample" in dims:  # per-sample arrays: blocks of 20 along the sample dim
            assert dims[0] == "sample" and arr.chunks[0] == 20, (path, arr.chunks)
            want = {f"{path}/c/{b}" + "/0" * (arr.ndim - 1) for b in range(3)}
        else:
            continue
        have = {f for f in files if f.startswith(f"{path}/c/")}
        assert have == want, (path, sorted(have))
        checked.append(path)
    assert {"curve", "status", "sample", "x", "w", "total", "npos"} <= set(checked), checked


def test_path_checks(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store(f).check_writable()
    with pytest.raises(StoreError, match="parent directory .* does not exist"):
        Store(tmp_path / "nope" / "out.zarr").check_writable()
    with pytest.raises(StoreError, match="must be a directory path"):
        Store("")


def test_foreign_directory_is_never_touched(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not written by daskbatch"):
            _run(str(d), overwrite=overwrite)
    assert (d / "thesis.tex").read_text() == "precious"
    with pytest.raises(StoreExistsError):
        Store(d).create(None, {}, overwrite=True)


def test_status_of_missing_or_foreign_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        db.status(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text(json.dumps({"attributes": {}}))
    with pytest.raises(StoreError, match="not a daskbatch store"):
        db.open(tmp_path / "plain")
