"""Automatic chunking against hand-picked chunk sizes.

Users of hand-written pools tune a chunk size ("individual" = 1 sample per task,
"batched" = many) by hand. Here daskbatch runs the same sweep with
``chunk_size="auto"`` and with each hand-picked size (1, 10, 100, 1,000, 10,000
samples per block), on a LocalCluster already running, for three kernels:

- ``cheap``: a vectorised numpy formula (a handful of operations per sample);
- ``1ms``: a per-sample kernel that computes for 1 ms (busy, not sleeping);
- ``varying``: a per-sample kernel whose cost varies 100x between samples
  (0.1 to 10 ms, log-uniformly, in random order).

A hand-picked size that would need more than --max-blocks blocks is skipped (it is
far from the best: every block costs a task and a commit). Each setting is run
--repeat times; the median wall time is reported, with auto's time against the
best hand-picked one.

    python benchmarks/chunking.py
    python benchmarks/chunking.py --kernels 1ms --repeat 1

Writes the table into docs/performance.md (between the chunking markers) unless
--no-write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tem1d import write_table

import daskbatch as db

ROOT = Path(__file__).resolve().parent.parent
SIZES = [1, 10, 100, 1000, 10000]


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@db.kernel(outputs={"y": db.Output()}, per_sample=False, threadsafe=True)
def cheap(a, b):
    """A handful of numpy operations per sample."""
    return np.sqrt(a * a + b * b) * np.sin(a) + np.log1p(b) - a * b


@db.kernel(outputs={"y": db.Output()}, threadsafe=True)
def one_ms(a, b):
    """1 ms of computation per sample."""
    _spin(1e-3)
    return a + b


@db.kernel(outputs={"y": db.Output()}, threadsafe=True)
def varying(a, b):
    """0.1 ms to 10 ms per sample: ``1e-4 * 100**b``, with ``b`` uniform in [0, 1]."""
    _spin(1e-4 * 100.0**b)
    return a + b


KERNELS = {
    # name: (kernel, N)
    "cheap": (cheap, 200_000),
    "1ms": (one_ms, 4_000),
    "varying": (varying, 2_000),
}


def space(n: int) -> db.MonteCarlo:
    return db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=n, seed=11)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-blocks", type=int, default=5_000)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every N (smoke runs)")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from daskbatch.cluster import ClusterSpec, start_executor

    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-chunking-"))
    rows = []
    with start_executor(ClusterSpec("local", args.workers)) as ex:
        db.run(cheap, space(10_000), tmp / "warm.zarr", cluster=ex.client, progress=False)
        for name in [k for k in args.kernels.split(",") if k]:
            kern, n = KERNELS[name]
            n = max(1, int(n * args.scale))
            results: dict[str, tuple[float, int]] = {}
            for setting in ["auto", *SIZES]:
                if setting != "auto" and n / setting > args.max_blocks:
                    print(f"  {name:8s} chunk_size={setting!s:>6}: skipped ({n // setting:,} blocks)")
                    continue
                times, blocks = [], 0
                for _ in range(args.repeat):
                    store = tmp / f"{name}-{setting}.zarr"
                    shutil.rmtree(store, ignore_errors=True)
                    t = time.perf_counter()
                    res = db.run(kern, space(n), store, cluster=ex.client, chunk_size=setting, progress=False)
                    times.append(time.perf_counter() - t)
                    blocks = res.blocks_total
                    assert res.samples["ok"] == n, res.samples
                results[str(setting)] = (statistics.median(times), blocks)
                print(
                    f"  {name:8s} chunk_size={setting!s:>6}: {statistics.median(times):7.2f} s "
                    f"({blocks:,} blocks; runs {', '.join(f'{t:.2f}' for t in times)})",
                    flush=True,
                )
            hand = {k: v for k, v in results.items() if k != "auto"}
            best = min(hand, key=lambda k: hand[k][0])
            auto_t, auto_blocks = results["auto"]
            cells = []
            for s in SIZES:
                cells.append(f"{hand[str(s)][0]:.2f}" if str(s) in hand else "skipped")
            auto_cell = f"{auto_t:.2f} ({n // auto_blocks:,} per block)"
            ratio = auto_t / hand[best][0]
            rows.append(f"| {name} | {n:,} | {' | '.join(cells)} | {auto_cell} | {best} | {ratio:.2f} |")
    shutil.rmtree(tmp, ignore_errors=True)
    table = (
        f"Wall seconds (median of {args.repeat}), {args.workers} workers, LocalCluster already running; "
        f"`python benchmarks/chunking.py --max-blocks {args.max_blocks}`\n\n"
        "| kernel | N | 1 | 10 | 100 | 1,000 | 10,000 | auto | best hand-picked | auto ÷ best |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    print()
    print(table)
    if not args.no_write:
        write_table(Path(args.out), table, "chunking", "## Automatic chunking against hand-picked sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
