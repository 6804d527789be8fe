"""Whole-chunk writes in the calling thread (daskbatch.chunkwrite) give the files zarr
writes, byte for byte, or leave the write to zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import daskbatch as db
from daskbatch import store as store_module
from daskbatch.chunkwrite import write_chunk
from daskbatch.ledger import _checksum
from daskbatch.store import Store
from daskbatch.testing import assert_stores_identical

DTYPES = ["f8", "f4", "i8", "i4", "i2", "u1", "u8", "bool", "c16", ">f8"]
COMPRESSORS = {
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-zstd-bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
    "zstd": [ZstdCodec(level=3)],
    "gzip": [GzipCodec(level=1)],
    "none": None,
}


def _pair(tmp_path, name, **kw):
    arrays = []
    for side in ("zarr", "here"):
        group = zarr.open_group(str(tmp_path / side), mode="a")
        arrays.append(group.create_array(name, **kw).with_config({"write_empty_chunks": True}))
    return arrays


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@given(
    dtype=st.sampled_from(DTYPES),
    compressor=st.sampled_from(sorted(COMPRESSORS)),
    n=st.integers(1, 23),
    chunk=st.integers(1, 8),
    core=st.sampled_from([(), (3,), (2, 4)]),
    fill=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_chunk_file_equals_zarrs_own(tmp_path_factory, dtype, compressor, n, chunk, core, fill, seed):
    tmp_path = tmp_path_factory.mktemp("chunks")
    rng = np.random.default_rng(seed)
    shape, chunks = (n, *core), (chunk, *core)
    fill_value = np.nan if np.dtype(dtype).kind in "fc" and fill else fill
    a, b = _pair(
        tmp_path,
        "x",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill_value,
        compressors=COMPRESSORS[compressor],
    )
    for start in range(0, n, chunk):  # every block, the last one short when chunk does not divide n
        stop = min(start + chunk, n)
        values = (rng.standard_normal((stop - start, *core)) * 50).astype(dtype)
        a[start:stop] = values
        assert write_chunk(b, (slice(start, stop),), values)
    theirs, ours = _files(tmp_path / "zarr" / "x" / "c"), _files(tmp_path / "here" / "x" / "c")
    if compressor == "gzip":  # gzip's header holds the second it was written at (bytes 4 to 7)
        theirs, ours = ({k: v[:4] + v[8:] for k, v in files.items()} for files in (theirs, ours))
    assert ours == theirs
    assert np.array_equal(zarr.open_array(str(tmp_path / "here"), path="x")[...], a[...], equal_nan=True)


def test_what_is_not_one_whole_chunk_of_numbers_is_left_to_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "s"), mode="a")
    plain = group.create_array("plain", shape=(10, 4), chunks=(5, 2), dtype="f8").with_config(
        {"write_empty_chunks": True}
    )
    values = np.ones((5, 4))
    assert not write_chunk(plain, (slice(0, 5),), values)  # two chunks along the core dim
    square = group.create_array("square", shape=(10,), chunks=(5,), dtype="f8").with_config(
        {"write_empty_chunks": True}
    )
    assert not write_chunk(square, (slice(1, 6),), np.ones(5))  # not at a chunk's start
    assert not write_chunk(square, (slice(0, 3),), np.ones(3))  # a part of a chunk
    assert not write_chunk(square, (slice(0, 5),), np.ones(5, dtype="f4"))  # another dtype
    assert not write_chunk(square, (slice(0, 5),), np.ones(4))  # another shape
    assert not write_chunk(square, (slice(0, 10, 2),), np.ones(5))  # a step
    skipping = group.create_array("skipping", shape=(10,), chunks=(5,), dtype="f8")
    assert not write_chunk(skipping.with_config({"write_empty_chunks": False}), (slice(0, 5),), np.ones(5))
    text = group.create_array("text", shape=(10,), chunks=(5,), dtype=str).with_config(
        {"write_empty_chunks": True}
    )
    assert not write_chunk(text, (slice(0, 5),), np.array(["a"] * 5))
    sharded = group.create_array("sharded", shape=(10,), chunks=(5,), shards=(10,), dtype="f8").with_config(
        {"write_empty_chunks": True}
    )
    assert not write_chunk(sharded, (slice(0, 5),), np.ones(5))
    read_only = zarr.open_array(str(tmp_path / "s"), path="square", mode="r")
    assert not write_chunk(read_only.with_config({"write_empty_chunks": True}), (slice(0, 5),), np.ones(5))
    assert not [p for p in (tmp_path / "s").rglob("c/*") if p.is_file()]  # none of these wrote a file


def test_a_zarr_whose_internals_moved_writes_through_zarr(tmp_path, monkeypatch):
    """The writer uses parts of zarr that are not its public API: if a later zarr moves
    one (an AttributeError or TypeError), the write is left to zarr, never failed."""
    from daskbatch import chunkwrite

    group = zarr.open_group(str(tmp_path / "s"), mode="a")
    arr = group.create_array("x", shape=(10,), chunks=(5,), dtype="f8").with_config(
        {"write_empty_chunks": True}
    )
    assert chunkwrite.encode_chunk(arr, (slice(0, 5),), np.ones(5)) is not None

    def moved():
        raise TypeError("default_buffer_prototype() takes 1 positional argument")

    parts = list(chunkwrite._PARTS)
    parts[1] = moved  # the buffer prototype
    monkeypatch.setattr(chunkwrite, "_PARTS", tuple(parts))
    assert not write_chunk(arr, (slice(0, 5),), np.ones(5))
    assert not [p for p in (tmp_path / "s").rglob("c/*") if p.is_file()]


@db.kernel(
    outputs={
        "curve": db.Output(dims=("t",), shape=(3,)),
        "total": db.Output(dtype="float32"),
        "count": db.Output(dtype="int16"),
        "positive": db.Output(dtype="bool"),
    },
    threadsafe=True,
)
def several(a, b):
    curve = a * np.arange(3.0) - b
    if b == 3 and a > 0.5:
        raise ValueError("a failed sample: its outputs hold the fill value")
    return {"curve": curve, "total": curve.sum(), "count": int(b) * 2, "positive": bool(curve[-1] > 0)}


@pytest.mark.parametrize("cluster", ["serial", "threads"])
def test_a_store_written_here_equals_one_written_through_zarr(tmp_path, monkeypatch, cluster):
    """The same run with and without the chunk writer: identical files, identical Dataset."""
    import daskbatch.ledger as ledger

    space = db.Grid(a=np.linspace(0, 1, 7), b=np.arange(5))
    kw = dict(cluster=cluster, n_workers=2, chunk_size=4, progress=False)
    written = []

    def counted(*args, **kwargs):
        written.append(write_chunk(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(ledger, "write_chunk", counted)
    read_back = []
    monkeypatch.setattr(store_module, "_checksum", lambda p: read_back.append(p) or _checksum(p))
    db.run(several, space, tmp_path / "here.zarr", **kw)
    assert not read_back  # each file's size and CRC-32 came from the bytes written
    # every write of every block (outputs and status) is made here
    assert written and all(written), written
    monkeypatch.setattr(ledger, "write_chunk", lambda *a, **k: False)
    db.run(several, space, tmp_path / "zarr.zarr", **kw)
    assert_stores_identical(tmp_path / "here.zarr", tmp_path / "zarr.zarr")
    here, there = _files(tmp_path / "here.zarr"), _files(tmp_path / "zarr.zarr")
    chunks = [k for k in here if "/c/" in k and not k.startswith(".")]
    assert chunks and all(here[k] == there[k] for k in chunks)
    # the records' sizes and CRC-32s (taken from the bytes written, not read back) are
    # those of the files, and the same as when Zarr wrote them
    records = {}
    for name in ("here", "zarr"):
        ledger = Store(tmp_path / f"{name}.zarr").ledger
        records[name] = {b: r.checksums for b, r in ledger.records().items()}
        for sums in records[name].values():
            assert sums and all(
                tuple(sums[rel]) == _checksum(tmp_path / f"{name}.zarr" / rel) for rel in sums
            )
    assert records["here"] == records["zarr"]
