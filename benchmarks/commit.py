"""The cost of committing a block: ``Store.write_block`` for many small blocks.

Each block is 50 samples of one parameter and one output (one failed sample with its
error), so the time is the store's per-block overhead, not data: the data chunks,
the status chunk, the bookkeeping and the commit. Run it against another checkout of
daskbatch (``PYTHONPATH=/path/to/other python benchmarks/commit.py``) to compare
versions; with this one it also measures format-1 stores, which it still writes
when it resumes them.

    python benchmarks/commit.py              # 400 blocks
    python benchmarks/commit.py --blocks 50  # quick

Prints the median and 90th percentile per block, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import daskbatch.store as store_module
from daskbatch.distributions import Uniform
from daskbatch.kernel import Output
from daskbatch.space import MonteCarlo

SAMPLES = 50


def measure(blocks: int, fmt: int | None, folder: Path) -> list[float]:
    """Seconds of each ``write_block`` call; ``fmt`` picks the format of a new store."""
    if fmt is not None:
        store_module._NEW_STORE_FORMAT = fmt
    space = MonteCarlo({"x": Uniform(0, 1)}, n=blocks * SAMPLES, seed=1)
    layout = store_module.Layout(
        batch_dims=space.batch_dims,
        batch_shape=space.batch_shape,
        block_shape=(SAMPLES,),
        params=space.params,
        outputs={"y": Output()},
        batch_coords=space.batch_coords(),
        store_id=f"commit-{fmt}",
    )
    info = {
        "format": fmt or 1,
        "store_id": layout.store_id,
        "layout": {
            "batch_dims": ["sample"],
            "batch_shape": [blocks * SAMPLES],
            "block_shape": [SAMPLES],
            "numblocks": [blocks],
        },
        # the fields every reader of a store's provenance checks for
        "kernel": {
            "identity": "commit-benchmark",
            "outputs": {"y": {"dims": [], "shape": [], "dtype": "float64"}},
        },
        "space": {"type": "MonteCarlo"},
        "space_spec": {"type": "MonteCarlo"},
        "fingerprint": "commit-benchmark",
        "history": [],
    }
    st = store_module.Store(folder / f"commit-{fmt}.zarr")
    st.create(layout, info)
    x = np.random.default_rng(0).random(SAMPLES)
    status = np.ones(SAMPLES, dtype=np.int8)
    status[3] = 2
    errors = [{"sample": "sample 3", "error": "RuntimeError: boom", "where": ""}]
    times = []
    for b in range(blocks):
        t = time.perf_counter()
        st.write_block(layout, (b,), {"x": x}, {"y": 2 * x}, status, errors, 1, 0.01)
        times.append(time.perf_counter() - t)
    assert st.done_mask().all()
    return times[1:]  # the first opens the arrays


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=400)
    args = p.parse_args(argv)
    formats: list[int | None] = [2, 1] if hasattr(store_module, "_NEW_STORE_FORMAT") else [None]
    with tempfile.TemporaryDirectory(prefix="daskbatch-commit-") as d:
        for fmt in formats:
            ms = [t * 1e3 for t in measure(args.blocks, fmt, Path(d))]
            label = f"format {fmt}" if fmt is not None else "this checkout (format 1 only)"
            p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
            print(
                f"{label}: write_block median {statistics.median(ms):.2f} ms, p90 {p90:.2f} ms "
                f"per block ({len(ms)} blocks of {SAMPLES} samples) [{store_module.__file__}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
