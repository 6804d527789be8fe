"""The block ledger, store format 2, and stores of format 1 (read, resumed, refused when newer)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskbatch as db
import daskbatch.store as store_module
from daskbatch.errors import StoreError
from daskbatch.store import HIDDEN, INTERNAL, BlockRecord, Store
from daskbatch.testing import curve, fail_on_multiples

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import make_format1 as fixture  # noqa: E402  (the script that wrote the format-1 stores)

RUN = {"cluster": "serial", "progress": False}
STORES = {
    "format1_grid": (fail_on_multiples, fixture.GRID_SPACE, fixture.GRID_CHUNKS, fixture.GRID_PENDING),
    "format1_mc": (curve, fixture.MC_SPACE, fixture.MC_CHUNKS, fixture.MC_PENDING),
}


def _arrays(store) -> dict[str, np.ndarray]:
    """Every array of the results (the format-1 bookkeeping left out)."""
    root = zarr.open_group(str(store), mode="r")  # consolidated: no listing of .daskbatch/
    return {name: arr[...] for name, arr in root.arrays()}


def _assert_same_results(a, b) -> None:
    got, want = _arrays(a), _arrays(b)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].tobytes() == want[k].tobytes(), k  # bit for bit


def _records(store) -> list[str]:
    d = Path(store) / HIDDEN / "blocks"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------- format 2


def test_new_store_is_format_2_with_one_record_per_block(store):
    db.run(fail_on_multiples, db.Grid(i=np.arange(30)), store, chunk_size=10, **RUN)
    st = Store(store)
    assert st.info()["format"] == 2 and st.format == 2 and st.ledger.format == 2
    assert INTERNAL not in zarr.open_group(store, mode="r")
    assert _records(store) == ["0.json", "1.json", "2.json"]
    doc = json.loads((Path(store) / HIDDEN / "blocks" / "1.json").read_text())
    assert doc["block"] == [1] and doc["store_id"] == st.info()["store_id"]
    assert doc["counts"] == [0, 9, 1, 0, 0] and doc["n_errors"] == 1
    assert doc["errors"][0]["error"] == "RuntimeError: boom at i=14"
    # the checksums cover the data chunk files and the status chunk, as they are on disk
    assert set(doc["checksums"]) == {"y/c/1", "status/c/1"}
    for rel, (size, crc) in doc["checksums"].items():
        data = (Path(store) / rel).read_bytes()
        assert [len(data), zlib.crc32(data)] == [size, crc]
    recs = st.ledger.records()
    assert sorted(recs) == [(0,), (1,), (2,)]
    assert recs[(2,)] == BlockRecord.from_doc(
        json.loads((Path(store) / HIDDEN / "blocks" / "2.json").read_text()), (2,), st.info()["store_id"]
    )
    assert st.ledger.committed().tolist() == [True, True, True]
    assert st.ledger.counts()[:, 2].tolist() == [1, 1, 2]  # 7, 14, 21 and 28 failed
    assert np.isfinite(st.ledger.seconds()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
    assert INTERNAL not in ds.variables and HIDDEN not in ds.variables
    assert st.verify(full=True) == []
    # forget makes a block pending again; its data stays
    st.ledger.forget([(1,)])
    assert st.done_mask().tolist() == [True, False, True] and not st.is_done((1,))
    assert db.status(store).samples["pending"] == 10
    assert (db.open(store).status.values[10:20] == 0).all()
    assert (zarr.open_group(store, mode="r")["status"][10:20] != 0).all()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other block", "bad counts"])
def test_unreadable_record_makes_its_block_pending_and_verify_reports_it(store, damage, tmp_path):
    space = db.Grid(i=np.arange(30))
    db.run(fail_on_multiples, space, store, chunk_size=10, **RUN)
    ref = tmp_path / "ref.zarr"
    shutil.copytree(store, ref)
    rec = Path(store) / HIDDEN / "blocks" / "1.json"
    text = rec.read_text()
    damaged = {
        "truncated": text[: len(text) // 2],
        "garbage": "\x00\x17garbage{",
        "empty": "",
        "other block": text.replace('"block":[1]', '"block":[2]'),
        "bad counts": text.replace('"counts":[0,9,1,0,0]', '"counts":[0,9]'),
    }[damage]
    assert damaged != text
    rec.write_text(damaged)
    st = Store(store)
    assert st.done_mask().tolist() == [True, False, True]
    assert st.ledger.record((1,)) is None and (1,) not in st.ledger.records()
    assert db.status(store).samples["pending"] == 10 and db.status(store).blocks_done == 2
    assert (db.open(store).status.values[10:20] == 0).all()
    for full in (False, True):
        problems = st.verify(full=full)
        assert [p.block for p in problems] == [(1,)]
        assert "record 1.json cannot be read" in problems[0].problem
    res = db.run(fail_on_multiples, space, store, chunk_size=10, **RUN)
    assert res.blocks_computed == 1 and res.complete
    assert st.verify(full=True) == []
    _assert_same_results(store, ref)


@pytest.mark.parametrize("where", ["before the record", "before the rename"])
def test_kill_after_status_before_commit_leaves_the_block_pending(tmp_path, where):
    """A real process dies between writing a block's status and committing its record."""
    store = tmp_path / "s.zarr"
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        import daskbatch as db
        import daskbatch.store as sm
        from daskbatch.testing import fail_on_multiples

        n = [0]
        if {where!r} == "before the record":
            commit = sm._Format2Ledger.commit
            def dying(self, block, record):
                n[0] += 1
                if n[0] == 3:
                    os._exit(9)
                commit(self, block, record)
            sm._Format2Ledger.commit = dying
        else:
            replace = os.replace
            def dying(src, dst):
                if str(dst).endswith(".json") and "blocks" in str(dst):
                    n[0] += 1
                    if n[0] == 3:
                        os._exit(9)
                replace(src, dst)
            os.replace = dying
        db.run(fail_on_multiples, db.Grid(i=np.arange(40)), {str(store)!r},
               cluster="serial", progress=False, chunk_size=10)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    raw = zarr.open_group(store, mode="r")["status"][...].reshape(4, 10)
    names = sorted(p.name for p in (store / HIDDEN / "blocks").iterdir())
    committed = [int(n.removesuffix(".json")) for n in names if n.endswith(".json")]
    assert len(committed) == 2  # the third commit was killed
    st = Store(store)
    assert st.done_mask().tolist() == [b in committed for b in range(4)]
    # the killed block: its data and status are on disk, its record is not
    (killed,) = [b for b in range(4) if b not in committed and (raw[b] != 0).all()]
    if where == "before the rename":
        assert any(n.startswith(f"{killed}.json.") and n.endswith(".tmp") for n in names)
    assert db.status(store).samples["pending"] == 20
    shown = db.open(store).status.values.reshape(4, 10)
    assert (shown[killed] == 0).all() and (shown[committed] != 0).all()
    assert st.verify(full=True) == []
    res = db.run(fail_on_multiples, db.Grid(i=np.arange(40)), store, chunk_size=10, **RUN)
    assert res.blocks_computed == 2 and res.complete
    fresh = tmp_path / "fresh.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(40)), fresh, chunk_size=10, **RUN)
    _assert_same_results(store, fresh)


# --------------------------------------------------------------------------- format check


@pytest.mark.parametrize("value", [3, 17, "2", "garbage", None, 0, True, 1.5])
def test_store_of_an_unknown_format_is_refused_by_readers_and_writers(store, value):
    space = db.Grid(i=np.arange(20))
    db.run(fail_on_multiples, space, store, chunk_size=10, **RUN)
    meta = Path(store) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["daskbatch"]["format"] = value
    meta.write_text(json.dumps(doc))
    before = {p: p.read_bytes() for p in Path(store).rglob("*") if p.is_file() and p.name != "lock"}
    if isinstance(value, int) and not isinstance(value, bool) and value > 2:
        want = rf"store format {value}, which is newer than this daskbatch \({db.__version__}\).*formats 1 to 2.*Upgrade daskbatch"
    else:
        want = rf"unknown store format {value!r}.*formats 1 to 2.*upgrade daskbatch"
    st = Store(store)
    for attempt in (
        lambda: db.status(store),
        lambda: db.open(store),
        lambda: db.validate(store, n=2),
        lambda: db.summarize(store),
        lambda: st.ledger,
        lambda: st.done_mask(),
        lambda: st.verify(),
        lambda: st.update_info({"format": 2}),
        lambda: db.run(fail_on_multiples, space, store, chunk_size=10, **RUN),
        lambda: db.run(fail_on_multiples, space, store, chunk_size=10, overwrite=True, **RUN),
    ):
        with pytest.raises(StoreError, match=want):
            attempt()
    after = {p: p.read_bytes() for p in Path(store).rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before  # nothing was written


# --------------------------------------------------------------------------- format 1


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(DATA / name, dest)
    return dest


@pytest.mark.parametrize("name", sorted(STORES))
def test_format1_fixture_opens_and_shows_its_status(name):
    pending = STORES[name][3]
    path = DATA / name
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    st = Store(path)
    assert st.format == 1 and st.ledger.format == 1
    done = st.ledger.committed()
    assert done.sum() == done.size - 1 and not done[pending]
    s = db.status(path)
    assert s.blocks_done == s.blocks_total - 1
    n_pending = int(np.prod([b.stop - b.start for b in st.ledger._region(pending)]))
    assert s.samples["pending"] == n_pending
    ds = db.open(path)
    assert int((ds.status.values == 0).sum()) == n_pending
    raw = zarr.open_group(str(path), mode="r")["status"][...]
    assert (raw != 0).all()  # the pending block's status is on disk, only its marker is 0
    recs = st.ledger.records()
    assert sorted(recs) == sorted(tuple(int(i) for i in b) for b in np.argwhere(done))
    assert sum(r.counts[1] for r in recs.values()) == s.samples["ok"]
    assert st.verify(full=True) == []
    if name == "format1_grid":
        assert s.samples == {"pending": 4, "ok": 16, "failed": 4, "timeout": 0, "crashed": 0}
        assert [e["error"] for e in s.errors][:2] == [
            "RuntimeError: boom at i=3",
            "RuntimeError: boom at i=6",
        ]
        assert st.ledger.errors([(0, 0)]) == [recs[(0, 0)].errors_doc()]
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before  # reading wrote nothing


@pytest.mark.parametrize("name", sorted(STORES))
def test_format1_fixture_resumes_to_the_results_of_a_fresh_format2_run(name, tmp_path):
    kernel, space, chunks, _ = STORES[name]
    path = _copy(name, tmp_path)
    res = db.run(kernel, space, path, chunk_size=chunks, **RUN)
    assert res.complete and res.blocks_computed == 1
    st = Store(path)
    assert st.format == 1 and _records(path) == []  # resumed in format 1
    assert st.done_mask().all() and st.verify(full=True) == []
    fresh = tmp_path / "fresh.zarr"
    db.run(kernel, space, fresh, chunk_size=chunks, **RUN)
    assert Store(fresh).format == 2
    _assert_same_results(path, fresh)
    assert db.status(path).samples == db.status(fresh).samples
    # the bookkeeping agrees too, format 1 against format 2
    a, b = st.ledger.records(), Store(fresh).ledger.records()
    assert a.keys() == b.keys()
    for blk in a:
        assert a[blk].counts == b[blk].counts and a[blk].n_errors == b[blk].n_errors
        # the same samples failed with the same message (the label text is the one of the
        # daskbatch that wrote the block; what else a record holds is the kernel's affair)
        assert [(list(e["position"]), e["error"]) for e in a[blk].errors] == [
            (list(e["position"]), e["error"]) for e in b[blk].errors
        ]
        data = {k for k in b[blk].checksums}
        assert {k: a[blk].checksums[k] for k in data} == dict(b[blk].checksums)


def test_format1_retry_failed_and_damage_are_handled(tmp_path):
    path = _copy("format1_grid", tmp_path)
    kernel, space, chunks, _ = STORES["format1_grid"]
    marker = path / INTERNAL / "done" / "c" / "0" / "0"
    marker.write_bytes(marker.read_bytes()[:2])  # a truncated format-1 commit marker
    st = Store(path)
    problems = st.verify(full=False)
    assert [p.block for p in problems] == [(0, 0)] and "commit marker cannot be read" in problems[0].problem
    assert not st.done_mask()[0, 0]
    res = db.run(kernel, space, path, chunk_size=chunks, retry_failed=True, **RUN)
    assert res.complete and st.format == 1 and st.verify(full=True) == []


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40),
    chunk=st.integers(1, 12),
    pending=st.sets(st.integers(0, 39), max_size=6),
    damaged_marker=st.booleans(),
)
def test_stores_written_in_format1_open_and_resume_under_format2_code(
    tmp_path_factory, n, chunk, pending, damaged_marker
):
    tmp = tmp_path_factory.mktemp("f1")
    space = db.Grid(i=np.arange(n))
    old = tmp / "old.zarr"
    store_module._NEW_STORE_FORMAT = 1
    try:
        db.run(fail_on_multiples, space, old, chunk_size=chunk, **RUN)
    finally:
        store_module._NEW_STORE_FORMAT = 2
    nb = -(-n // chunk)
    gone = sorted({(b % nb,) for b in pending})
    root = zarr.open_group(str(old), mode="r+")
    done = root[f"{INTERNAL}/done"].with_config({"write_empty_chunks": True})
    for b in gone:
        done[b] = 0
    if damaged_marker and nb > 0:
        f = old / INTERNAL / "done" / "c" / str(nb - 1)
        f.write_bytes(b"\x01")
        gone = sorted({*gone, (nb - 1,)})
    st = Store(old)
    assert st.format == 1
    assert [tuple(int(i) for i in b) for b in np.argwhere(~st.done_mask())] == gone
    ds = db.open(old)
    assert int((ds.status.values == 0).sum()) == sum(min(chunk, n - b[0] * chunk) for b in gone)
    res = db.run(fail_on_multiples, space, old, chunk_size=chunk, **RUN)
    assert res.complete and res.blocks_computed == len(gone)
    assert st.format == 1 and st.verify(full=True) == []
    fresh = tmp / "fresh.zarr"
    db.run(fail_on_multiples, space, fresh, chunk_size=chunk, **RUN)
    _assert_same_results(old, fresh)


def test_readers_use_the_ledger_not_what_is_on_disk(store, tmp_path):
    """validate and export skip a block that is not committed, whatever its data says."""
    space = db.Grid(i=np.arange(30))
    db.run(fail_on_multiples, space, store, chunk_size=10, **RUN)
    Store(store).ledger.forget([(1,)])
    root = zarr.open_group(store, mode="r+")
    root["y"].with_config({"write_empty_chunks": True})[10:20] = -1.0  # wrong, and uncommitted
    report = db.validate(store, n=30)
    assert report.ok and report.n_checked == 20 - 3  # the ok samples of blocks 0 and 2 (7, 21, 28 failed)
    out = tmp_path / "out.csv"
    db.export(store, out)
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 30 and not any(",-1.0" in r for r in rows)


def test_a_failed_write_raises_only_once_every_write_of_its_round_has_returned():
    """A region write that fails does not leave its siblings writing after the error
    is raised (a rerun's write of the same chunk could otherwise be overwritten)."""
    import asyncio
    from types import SimpleNamespace

    from zarr.core.sync import sync

    from daskbatch.ledger import _gather_writes, settle_zarr_io

    ended: list[str] = []

    async def fails(sel, value):
        raise OSError(28, "No space left on device")

    async def slow(sel, value):
        await asyncio.sleep(0.3)
        ended.append("slow")

    writes = [
        (SimpleNamespace(async_array=SimpleNamespace(setitem=fails)), slice(0, 1), 0),
        (SimpleNamespace(async_array=SimpleNamespace(setitem=slow)), slice(1, 2), 0),
    ]
    with pytest.raises(OSError, match="No space"):
        sync(_gather_writes(writes))
    assert ended == ["slow"]

    left: list[asyncio.Task] = []

    async def left_running() -> None:
        async def late() -> None:
            await asyncio.sleep(0.3)
            ended.append("late")

        left.append(asyncio.ensure_future(late()))

    sync(left_running())
    settle_zarr_io()
    assert ended == ["slow", "late"]
