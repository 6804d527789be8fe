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
from daskbatch.testing import assert_stores_identical, blocks_done, damage_chunk

KERNEL = """
import numpy as np
import daskbatch as db

T = np.array([0.0, 0.5, 1.0])


@db.kernel(outputs={"curve": db.Output(dims=("t",), shape=(3,), coords={"t": T}), "y": db.Output()})
def k(x, n):
    return {"curve": x * T + n, "y": x * 2.0 + n}
"""

SPEC = """kernel = "kern:k"
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
    (folder / "kern.py").write_text(KERNEL)
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


DAMAGE = {
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
def test_damaged_metadata_is_rebuilt_and_no_committed_block_lost(reference, tmp_path, case):
    file, damage = DAMAGE[case]
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    before = blocks_done(store)
    assert before == 6
    damage(store)

    r = run_cli("status", str(store), "--verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "metadata problem(s)" in r.stdout and f"  {file}: " in r.stdout, r.stdout
    assert "damaged block(s)" not in r.stdout, r.stdout
    assert f"repair with: daskbatch resume {store} --verify" in r.stdout, r.stdout

    r = run_cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"repaired the store's metadata: {file}: " in r.stderr, r.stderr
    assert "nothing to compute" in r.stdout, r.stdout  # every committed block kept
    assert blocks_done(store) == before
    assert_stores_identical(store, reference)
    ds, ref = db.open(store), db.open(reference)
    for name in ("x", "t", "y", "curve", "status"):
        assert np.array_equal(ds[name].values, ref[name].values)
    assert check(store).ok


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


def test_a_file_that_cannot_be_rebuilt_stops_the_repair_before_any_change(reference, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    (store / "zarr.json").write_text("{")
    (store / ".daskbatch" / "provenance.json").unlink()
    records = sorted(p.name for p in (store / ".daskbatch" / "blocks").iterdir())
    r = run_cli("resume", str(store), "--verify", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "zarr.json cannot be read" in r.stderr and "provenance.json" in r.stderr, r.stderr
    assert sorted(p.name for p in (store / ".daskbatch" / "blocks").iterdir()) == records


FORMAT1 = Path(__file__).parent / "data" / "format1_mc"


@pytest.mark.parametrize(
    "file", ["_daskbatch/counts/zarr.json", "_daskbatch/done/zarr.json", "status/zarr.json"]
)
def test_format1_store_metadata_is_rebuilt_and_resumed(tmp_path, file):
    store = tmp_path / "f1.zarr"
    shutil.copytree(FORMAT1, store)
    (store / file).unlink()
    r = run_cli("status", str(store), "--verify")
    assert r.returncode == 1 and f"  {file}: is missing" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    r = run_cli("resume", str(store), "--verify", "--cluster", "serial", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10 samples in 1 blocks" in r.stdout, r.stdout  # only the block that was pending
    st = db.status(store)
    assert st.complete and st.blocks_done == 3
    assert run_cli("status", str(store), "--verify").returncode == 0
