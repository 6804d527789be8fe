"""Repairing a store: damaged metadata is rebuilt and committed results kept; only
blocks whose data is proven wrong are recomputed. Done as a user does it: the real
``daskbatch status --verify`` and ``daskbatch resume --verify`` in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.repair import check
from daskbatch.testing import affine, assert_stores_identical, blocks_done, damage_chunk

KERNEL = """
import numpy as np
import daskbatch as db

T = np.array([0.0, 0.5, 1.0])


@db.kernel(outputs={"curve": db.Output(dims=("t",), shape=(3,), coords={"t": T}), "y": db.Output()})
def k(x, n):
    return {"curve": x * T + n, "y": x * 2.0 + n}
"""

# a module name of its own: the command runs in this process (the cli fixture), where a
# module of the same name imported by another test from another folder would be found first
SPEC = """kernel = "repair_kern:k"
store = "s.zarr"
cluster = "serial"
chunk_size = 4
[space]
type = "grid"
axes = {x = {linspace = [0, 1, 12]}, n = [1, 2]}
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A finished store made by the CLI from a spec: a grid, an output with a coordinate."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "repair_kern.py").write_text(KERNEL)
    (folder / "spec.toml").write_text(SPEC)
    r = run_cli("run", "spec.toml", "--no-progress", cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder / "s.zarr"


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set_consolidated_dtype(doc) -> None:
    doc["consolidated_metadata"]["metadata"]["y"]["data_type"] = "int32"


def _set_dtype(doc) -> None:
    doc["data_type"] = "float32"


def _attrs(change):
    """Damage that edits the root's attributes['daskbatch'] (the JSON still parses)."""

    def damage(store: Path) -> None:
        _edit_json(store / "zarr.json", lambda doc: change(doc["attributes"]["daskbatch"]))

    return damage


def _set_root_attrs(value):
    return lambda s: _edit_json(
        s / "zarr.json", lambda doc: doc["attributes"].__setitem__("daskbatch", value)
    )


def _drop_root_attrs(s: Path) -> None:
    _edit_json(s / "zarr.json", lambda doc: doc["attributes"].pop("daskbatch"))


def _other_block_shape(info) -> None:
    layout = info["layout"]
    layout["block_shape"] = [layout["block_shape"][0] * 2, *layout["block_shape"][1:]]


def _consistent_block_shape(info) -> None:  # numblocks follows; only the fingerprint tells
    layout = info["layout"]
    _other_block_shape(info)
    layout["numblocks"] = [
        -(-n // b) for n, b in zip(layout["batch_shape"], layout["block_shape"], strict=True)
    ]


def _copy(store: Path, change) -> None:
    _edit_json(store / ".daskbatch/provenance.json", lambda doc: change(doc["daskbatch"]))


# damage to the root's provenance whose JSON still parses: the copy is right
ROOT_ATTRS = {
    "store_id changed": _attrs(lambda a: a.__setitem__("store_id", "deadbeef" * 4)),
    "store_id an integer": _attrs(lambda a: a.__setitem__("store_id", 5)),
    "block_shape changed": _attrs(_other_block_shape),
    "block_shape and numblocks changed": _attrs(_consistent_block_shape),
    "numblocks changed": _attrs(lambda a: a["layout"].__setitem__("numblocks", [1, 1])),
    "a grid value changed": _attrs(lambda a: a["space"]["axes"]["x"].__setitem__(3, 0.5)),
    "an output dtype changed": _attrs(lambda a: a["kernel"]["outputs"]["y"].__setitem__("dtype", "float32")),
    "the fingerprint changed": _attrs(lambda a: a.__setitem__("fingerprint", "0" * 64)),
    "the kernel removed": _attrs(lambda a: a.pop("kernel")),
    "history a string": _attrs(lambda a: a.__setitem__("history", "junk")),
    "history of strings": _attrs(lambda a: a.__setitem__("history", ["junk"])),
    "attributes removed": _drop_root_attrs,
    "attributes a list": _set_root_attrs([1, 2]),
}

# damage to the repair copies: verify reports them, repair writes them again
COPIES = {
    "delete provenance.json": lambda s: (s / ".daskbatch/provenance.json").unlink(),
    "truncate provenance.json": lambda s: (s / ".daskbatch/provenance.json").write_text('{"daskb'),
    "garble provenance.json": lambda s: (s / ".daskbatch/provenance.json").write_bytes(b"\x00\xff" * 64),
    "another store_id in provenance.json": lambda s: _copy(s, lambda a: a.__setitem__("store_id", "x")),
    "another space in provenance.json": lambda s: _copy(s, lambda a: a["space"].__setitem__("axes", {})),
    "delete template.json": lambda s: (s / ".daskbatch/template.json").unlink(),
    "truncate template.json": lambda s: (s / ".daskbatch/template.json").write_text('{"store_id'),
    "garble template.json": lambda s: (s / ".daskbatch/template.json").write_bytes(b"\x00\xff" * 64),
    "another store_id in template.json": lambda s: _edit_json(
        s / ".daskbatch/template.json", lambda d: d.__setitem__("store_id", "x")
    ),
    "status dtype in template.json": lambda s: _edit_json(
        s / ".daskbatch/template.json", lambda d: d["arrays"]["status"].__setitem__("data_type", "int16")
    ),
}

DAMAGE = {
    **{f"root provenance: {k}": ("zarr.json", v) for k, v in ROOT_ATTRS.items()},
    **{k: (f".daskbatch/{k.split()[-1]}", v) for k, v in COPIES.items()},
    "delete status/zarr.json": ("status/zarr.json", lambda s: (s / "status/zarr.json").unlink()),
    "delete an output's zarr.json": ("y/zarr.json", lambda s: (s / "y/zarr.json").unlink()),
    "garble an output's zarr.json": (
        "curve/zarr.json",
        lambda s: (s / "curve/zarr.json").write_text("{garb"),
    ),
    "edit a dtype": ("y/zarr.json", lambda s: _edit_json(s / "y/zarr.json", _set_dtype)),
    "edit the consolidated copy": (
        "zarr.json",
        lambda s: _edit_json(s / "zarr.json", _set_consolidated_dtype),
    ),
    "truncate root zarr.json": (
        "zarr.json",
        lambda s: (s / "zarr.json").write_bytes((s / "zarr.json").read_bytes()[:100]),
    ),
    "delete a grid axis chunk": ("x/c/0", lambda s: (s / "x/c/0").unlink()),
    "delete an output coordinate chunk": ("t/c/0", lambda s: (s / "t/c/0").unlink()),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_metadata_is_rebuilt_and_no_committed_block_lost(reference, tmp_path, case, cli):
    file, damage = DAMAGE[case]
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    before = blocks_done(store)
    assert before == 6
    damage(store)

    r = cli("status", str(store), "--verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "metadata problem(s)" in r.stdout and f"  {file}: " in r.stdout, r.stdout
    assert "damaged block(s)" not in r.stdout, r.stdout
    assert f"repair with: daskbatch resume {store} --verify" in r.stdout, r.stdout

    r = cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"repaired the store's metadata: {file}: " in r.stderr, r.stderr
    assert "nothing to compute" in r.stdout, r.stdout  # every committed block kept
    assert blocks_done(store) == before
    assert_stores_identical(store, reference)
    ds, ref = db.open(store), db.open(reference)
    for name in ("x", "t", "y", "curve", "status"):
        assert np.array_equal(ds[name].values, ref[name].values)
    assert check(store).ok
    # the provenance and both copies are the ones made with the store
    root = json.loads((store / "zarr.json").read_text())["attributes"]["daskbatch"]
    assert root == json.loads((reference / "zarr.json").read_text())["attributes"]["daskbatch"]
    for name in ("provenance.json", "template.json"):
        assert json.loads((store / ".daskbatch" / name).read_text()) == json.loads(
            (reference / ".daskbatch" / name).read_text()
        ), name


def test_a_run_without_verify_refuses_damaged_metadata_and_names_the_repair(reference, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    (store / "status/zarr.json").unlink()
    r = run_cli("resume", str(store), "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "status/zarr.json: is missing" in r.stderr and "--verify" in r.stderr, r.stderr
    assert blocks_done(store) == 6


def test_damaged_data_is_still_recomputed_and_only_those_blocks(reference, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    damage_chunk(store, "y", (2, 0), how="garbage")
    damage_chunk(store, "status", (4, 0), how="delete")
    r = run_cli("status", str(store), "--verify")
    assert r.returncode == 1 and "metadata problem" not in r.stdout, r.stdout
    assert "2 damaged block(s) (their data is wrong; recomputed)" in r.stdout, r.stdout
    r = run_cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "8 samples in 2 blocks" in r.stdout, r.stdout
    assert_stores_identical(store, reference)


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}


# the root's provenance unusable and its copy gone: the store cannot be repaired
GONE = {
    "root truncated": lambda s: (s / "zarr.json").write_text("{"),
    "root deleted": lambda s: (s / "zarr.json").unlink(),
    "root history a string": _attrs(lambda a: a.__setitem__("history", "junk")),
    "root attributes a list": _set_root_attrs([1, 2]),
}


@pytest.mark.parametrize("case", list(GONE))
def test_a_store_whose_provenance_is_gone_is_named_and_left_alone(reference, tmp_path, case, cli):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    GONE[case](store)
    (store / ".daskbatch" / "provenance.json").unlink()
    before = _files(store)
    r = cli("status", str(store), "--verify")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot repair: the store's provenance is gone ("), lines
    assert "provenance.json is missing" in lines[0] and "--overwrite" in lines[0], lines
    for args in (("resume", str(store), "--verify", "--no-progress"), ("status", str(store))):
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "its provenance is gone (zarr.json " in lines[0], lines
        assert "cannot be repaired; nothing was changed" in lines[0], lines
    assert _files(store) == before


def test_a_repaired_copy_repairs_a_later_root_damage(reference, tmp_path, cli):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    (store / ".daskbatch" / "provenance.json").unlink()
    (store / ".daskbatch" / "template.json").write_text("xx")
    assert cli("resume", str(store), "--verify", "--no-progress").returncode == 0
    (store / "zarr.json").write_bytes((store / "zarr.json").read_bytes()[:100])
    (store / "y" / "zarr.json").unlink()
    r = cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0 and "nothing to compute" in r.stdout, r.stdout + r.stderr
    assert "zarr.json: is not JSON" in r.stderr and "y/zarr.json: is missing" in r.stderr, r.stderr
    assert_stores_identical(store, reference)
    assert check(store).ok


def test_a_run_stopped_between_root_and_copy_keeps_the_root(reference, tmp_path, cli):
    # the root is written first: a copy one history entry behind is only out of date
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    _copy(store, lambda a: a.__setitem__("history", a["history"][:-1]))
    r = cli("status", str(store), "--verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "  .daskbatch/provenance.json: differs from the root's in what a run changes" in r.stdout
    assert "rewritten from zarr.json" in r.stdout and "damaged block" not in r.stdout, r.stdout
    r = cli("resume", str(store), "--no-progress")  # not refused: the copy is written again
    assert r.returncode == 0 and "nothing to compute" in r.stdout, r.stdout + r.stderr
    r = cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0 and "nothing to compute" in r.stdout, r.stdout + r.stderr
    root = json.loads((store / "zarr.json").read_text())["attributes"]
    assert json.loads((store / ".daskbatch" / "provenance.json").read_text()) == root
    assert check(store).ok


def test_readers_use_the_copy_while_the_root_provenance_is_damaged(reference, tmp_path, cli):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    _attrs(lambda a: a.__setitem__("history", "junk"))(store)
    r = cli("status", str(store))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "blocks:   6 of 6 done" in r.stdout, r.stdout
    assert np.array_equal(db.open(store)["y"].values, db.open(reference)["y"].values)
    r = cli("resume", str(store), "--no-progress")  # a run without verify is refused
    assert r.returncode == 2 and "zarr.json: holds a damaged daskbatch provenance" in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("daskbatch: error: ")]
    assert len(errors) == 1 and errors[0].endswith("--verify (or daskbatch.run(..., verify=True))"), r.stderr


FORMAT1 = Path(__file__).parent / "data" / "format1_mc"


@pytest.mark.parametrize(
    "file", ["_daskbatch/counts/zarr.json", "_daskbatch/done/zarr.json", "status/zarr.json"]
)
def test_format1_store_metadata_is_rebuilt_and_resumed(tmp_path, file, cli):
    store = tmp_path / "f1.zarr"
    shutil.copytree(FORMAT1, store)
    (store / file).unlink()
    r = cli("status", str(store), "--verify")
    assert r.returncode == 1 and f"  {file}: is missing" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    r = cli("resume", str(store), "--verify", "--cluster", "serial", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10 samples in 1 blocks" in r.stdout, r.stdout  # only the block that was pending
    st = db.status(store)
    assert st.complete and st.blocks_done == 3
    assert cli("status", str(store), "--verify").returncode == 0


def test_root_and_copy_that_both_look_right_are_not_chosen_between(reference, tmp_path, cli):
    # both well-formed, each consistent with its own fingerprint, store id and layout:
    # nothing tells which is right, so nothing is rebuilt
    import hashlib

    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)

    def other_constants(info) -> None:
        info["constants"] = {"scale": 2.0}
        fields = {k: info[k] for k in ("kernel", "space", "constants", "layout")}
        info["fingerprint"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    _attrs(other_constants)(store)
    before = _files(store)
    r = cli("status", str(store), "--verify")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert (
        "zarr.json: its daskbatch provenance and .daskbatch/provenance.json differ in constants" in r.stdout
    )
    assert "cannot repair: zarr.json cannot be rebuilt" in r.stdout, r.stdout
    r = cli("resume", str(store), "--verify", "--no-progress")  # refused, whatever it meets first
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert _files(store) == before


def test_a_deleted_block_record_only_uncommits_its_block(reference, tmp_path, cli):
    # by design: a block without a record is pending, whatever is on disk
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    next((store / ".daskbatch" / "blocks").glob("*.json")).unlink()
    r = cli("status", str(store), "--verify")
    assert r.returncode == 0 and "blocks:   5 of 6 done" in r.stdout, r.stdout + r.stderr
    r = cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0 and "4 samples in 1 blocks" in r.stdout, r.stdout + r.stderr
    assert_stores_identical(store, reference)


def test_a_writes_leftover_temporary_is_not_taken_for_a_chunk_when_metadata_is_rebuilt(reference, tmp_path):
    """A kill during a chunk's write can leave ``<key>.<id>.partial`` beside the chunks
    (Zarr's writes and daskbatch's alike). Rebuilding an array's metadata test-decodes
    one of its chunk files: never the temporary, even when it sorts first."""
    from daskbatch.repair import _undecodable

    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    doc = json.loads((store / "y" / "zarr.json").read_text())
    chunks = sorted(p for p in (store / "y" / "c").rglob("*") if p.is_file())
    first = chunks[0]
    partial = first.with_name(f"{first.name}.0123abcd.partial")
    partial.write_bytes(first.read_bytes()[:7])  # a write cut short
    first.unlink()  # the block was being written for the first time
    assert sorted(p for p in (store / "y" / "c").rglob("*") if p.is_file())[0] == partial
    assert _undecodable(store, "y", doc) is None


@pytest.mark.parametrize("damage", [None, "label-metadata"])
def test_a_table_the_store_references_verifies_clean_and_its_repair_adds_no_array(tmp_path, damage):
    """A Parquet table's column the kernel takes is referenced, not stored: verify took
    its missing array for damage, and the repair it proposed made one of fill values,
    which daskbatch.open then showed as the input: NaN for every sample."""
    import pandas as pd

    pd.DataFrame({"a": np.arange(20) * 0.5, "tag": [f"t{i}" for i in range(20)]}).to_parquet(
        tmp_path / "t.parquet"
    )
    store = tmp_path / "s.zarr"
    db.run(
        db.testing.affine,
        db.Table(tmp_path / "t.parquet"),
        store,
        cluster="serial",
        progress=False,
        chunk_size=8,
    )
    before = db.open(store).load()
    assert "tag" in before.coords and not (store / "a").exists()  # the label stored, the input referenced
    if damage == "label-metadata":
        (store / "tag" / "zarr.json").unlink()
    r = run_cli("status", str(store), "--verify")
    if damage is None:
        assert r.returncode == 0 and "every committed block matches its checksums (3 checked)" in r.stdout, (
            r.stdout
        )
    else:
        assert r.returncode == 1 and "tag/zarr.json: is missing" in r.stdout and "'a'" not in r.stdout, (
            r.stdout
        )
    r = run_cli("resume", str(store), "--verify", "--no-progress", "--cluster", "serial")
    assert r.returncode == 0, r.stderr
    assert not (store / "a").exists()
    after = db.open(store).load()
    assert "a" not in after  # (an array of fill values is what the repair had made)
    assert after["tag"].values.tolist() == before["tag"].values.tolist()
    np.testing.assert_array_equal(after["y"].values, before["y"].values)


@pytest.mark.parametrize("how", ["empty", "garbage"])
def test_a_sample_index_chunk_that_cannot_be_decoded_is_its_blocks_damage_not_the_stores(tmp_path, cli, how):
    """xarray reads the sample index to open a store: one undecodable chunk of it (an
    empty file is what a crash leaves after a rename whose data was not flushed) made
    the whole store "cannot be repaired", advising --overwrite. It is its block's."""
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=40, seed=1)
    ref, store = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    for path in (ref, store):
        db.run(affine, space, path, cluster="serial", chunk_size=10, progress=False)
    damage_chunk(store, "sample", 3, **({"keep": 0} if how == "empty" else {"how": "garbage"}))
    with pytest.raises(db.DaskbatchError, match="resume .* --verify repairs it"):
        db.open(store)
    r = cli("status", str(store), "--verify")
    assert r.returncode == 1
    assert "block [3]: its 'sample' coordinate cannot be decoded" in r.stdout, r.stdout
    assert "cannot be rebuilt" not in r.stdout and "--overwrite" not in r.stdout
    r = cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10 samples in 1 blocks" in r.stdout
    assert_stores_identical(store, ref)
    assert db.open(store).sample.size == 40
