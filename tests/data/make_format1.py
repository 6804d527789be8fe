"""Write the format-1 stores in this folder (run from the repository root).

    python tests/data/make_format1.py

The stores ``format1_grid`` and ``format1_mc`` were written by daskbatch
before store format 2 existed, when every store was format 1 (the per-block
bookkeeping in the Zarr arrays ``_daskbatch/*``). With a daskbatch that writes
format 2, this script writes format 1 through the store's private switch for the
format of new stores, so the stores it makes have the same layout. (Their folders
have no ``.zarr`` suffix, which ``.gitignore`` leaves out.)

- ``format1_grid``: ``fail_on_multiples`` over a 12 x 2 grid (``i`` x ``k``),
  blocks of 4 x 1, so some samples failed; block (1, 1) is pending: its data,
  status and bookkeeping are on disk but its commit marker is 0 (as after a kill
  just before the marker).
- ``format1_mc``: ``curve`` over 50 Monte Carlo samples (seed 3), blocks of
  20; block 2 is pending the same way.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import daskbatch as db
import daskbatch.store as store_module
from daskbatch.store import Store
from daskbatch.testing import curve, fail_on_multiples

HERE = Path(__file__).resolve().parent

GRID_SPACE = db.Grid(i=list(range(12)), k=[3, 5])
GRID_CHUNKS = {"i": 4, "k": 1}
GRID_PENDING = (1, 1)
MC_SPACE = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=50, seed=3)
MC_CHUNKS = 20
MC_PENDING = (2,)


def _unmark_format1(path: Path, block: tuple[int, ...]) -> None:
    """Set one block's format-1 commit marker to 0, leaving everything else on disk."""
    import zarr

    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root["_daskbatch/done"].with_config({"write_empty_chunks": True})[block] = 0


def main() -> None:
    if hasattr(store_module, "_NEW_STORE_FORMAT"):
        store_module._NEW_STORE_FORMAT = 1
    for name, kernel, space, chunks, pending in (
        ("format1_grid", fail_on_multiples, GRID_SPACE, GRID_CHUNKS, GRID_PENDING),
        ("format1_mc", curve, MC_SPACE, MC_CHUNKS, MC_PENDING),
    ):
        path = HERE / name
        shutil.rmtree(path, ignore_errors=True)
        db.run(kernel, space, path, cluster="serial", progress=False, chunk_size=chunks)
        _unmark_format1(path, pending)
        (path / ".daskbatch" / "lock").unlink(missing_ok=True)  # names this host and pid
        with contextlib.suppress(OSError):
            (path / ".daskbatch").rmdir()
        assert Store(path).info()["format"] == 1
        print(name, db.status(path))


if __name__ == "__main__":
    main()
