"""How the stores ``zarr_strings_table`` and ``zarr_strings_grid`` in this folder were made.

They were written by daskbatch before text was stored as UTF-8 bytes (store format 2,
commit a39686e): their text parameters, text grid axis and text output coordinate
use Zarr's own ``string`` data type (and fixed-width UTF-32 for the coordinate).
Current daskbatch writes text as padded UTF-8 bytes with a ``<name>_length`` array
(``daskbatch/ragged.py``), so this script, run with it, no longer writes that
layout; it records what the stores hold. tests/test_ragged.py opens them as they are.

    PYTHONPATH=<a checkout of a39686e> python tests/data/make_zarr_strings.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

import daskbatch as db
from daskbatch.testing import tagged

HERE = Path(__file__).resolve().parent

TABLE = pd.DataFrame(
    {"kind": ["granite", "shale", "sänd", "clay", "granite"], "x": [1.0, 2.0, 3.0, 4.0, 5.0]}
)
GRID = db.Grid(kind=["granite", "shale", "sänd"], x=[1.0, 2.0])


@db.kernel(outputs={"v": db.Output(dims=("band",), shape=(2,), coords={"band": ["low", "high"]})})
def banded(kind, x):
    return [x, len(kind) * x]


def main() -> None:
    for name, kernel, space in (
        ("zarr_strings_table", tagged, db.Table(TABLE)),
        ("zarr_strings_grid", banded, GRID),
    ):
        path = HERE / name
        shutil.rmtree(path, ignore_errors=True)
        db.run(kernel, space, path, cluster="serial", progress=False, chunk_size=2)


if __name__ == "__main__":
    main()
