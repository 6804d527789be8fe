"""How far a cluster scales: blocks per second the driver can take in.

Per-block cost in the driver (scheduling, taking in results, callbacks, status
publishing) and in the task (the commit) decides how many workers a run can keep
busy. Here the workers are threads of this process (a ``LocalCluster`` with
``processes=False``: many slots on a 2-core machine) and the kernel sleeps 0.2 s per
block, so the cores are free for the overhead and the ideal rate is slots / 0.2 s.

- ``client-map``: plain ``client.map`` of the same sleeps (nothing written);
- ``daskbatch``: ``daskbatch.run`` on the same cluster (``cluster=client``), one
  block per task, each written and committed to a Zarr store.

Efficiency is blocks/s over the ideal; "CPU per block" is the CPU time of the whole
process per block: the driver and its in-process workers (scheduling, taking in
results, callbacks, status publishing, and the block task's write and commit), what
limits the rate once the workers are many.

    python benchmarks/scaling.py                     # 64 and 128 slots, 1,000 blocks
    python benchmarks/scaling.py --slots 16 --blocks 100 --no-write

Writes the table into docs/performance.md (between the scaling markers) unless
--no-write.
"""

from __future__ import annotations

import argparse
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
SLEEP = 0.2


@db.kernel(outputs={"y": db.Output()}, per_sample=False, threadsafe=True)
def sleepy(x):
    """One block: a 0.2 s wait (a kernel that leaves the cores free), then the values."""
    time.sleep(SLEEP)
    return x * 2.0


def _sleep(i: int) -> int:
    time.sleep(SLEEP)
    return i


def measure(client, slots: int, blocks: int, samples: int, tmp: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    # plain dask: one task per block, results gathered as they finish
    from distributed import as_completed

    cpu, t = time.process_time(), time.perf_counter()
    for fut in as_completed(client.map(_sleep, range(blocks), pure=False)):
        fut.result()
        fut.release()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    out["client-map"] = {"rate": blocks / wall, "cpu_ms": 1e3 * cpu / blocks}
    space = db.Grid(x=np.arange(float(blocks * samples)))
    store = tmp / f"s{slots}.zarr"
    cpu, t = time.process_time(), time.perf_counter()
    res = db.run(sleepy, space, store, cluster=client, chunk_size=samples, progress=False, overwrite=True)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    assert res.blocks_done == blocks and res.samples["ok"] == blocks * samples
    out["daskbatch"] = {"rate": blocks / wall, "cpu_ms": 1e3 * cpu / blocks}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slots", default="64,128", help="worker threads, comma-separated")
    p.add_argument("--blocks", type=int, default=1000)
    p.add_argument("--samples", type=int, default=10, help="samples per block")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-scaling-"))
    rows = []
    for slots in (int(s) for s in args.slots.split(",")):
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=slots, processes=False, dashboard_address=None
            ) as lc,
            Client(lc) as client,
        ):
            measure(client, slots, min(args.blocks, 2 * slots), args.samples, tmp)  # warm-up
            runs = [measure(client, slots, args.blocks, args.samples, tmp) for _ in range(args.repeat)]
        ideal = slots / SLEEP
        for name in ("client-map", "daskbatch"):
            rate = statistics.median(r[name]["rate"] for r in runs)
            cpu = statistics.median(r[name]["cpu_ms"] for r in runs)
            rows.append((slots, name, rate, rate / ideal, cpu))
            print(
                f"{slots:4d} slots  {name:11s} {rate:7.1f} blocks/s  "
                f"efficiency {rate / ideal:4.2f}  {cpu:5.1f} ms CPU per block"
            )
    table = (
        f"{args.blocks:,} blocks of {args.samples} samples, a kernel that sleeps {SLEEP} s per block, "
        f"workers as threads of one process; medians of {args.repeat}; `python benchmarks/scaling.py"
        + (f" --slots {args.slots}" if args.slots != "64,128" else "")
        + (f" --blocks {args.blocks}" if args.blocks != 1000 else "")
        + "`\n\n| slots | contender | blocks/s | efficiency | CPU per block (driver + workers) |\n"
        + "|---:|---|---:|---:|---:|\n"
        + "".join(f"| {s} | {n} | {r:,.1f} | {e:.2f} | {c:.1f} ms |\n" for s, n, r, e, c in rows)
    )
    print()
    print(table)
    if not args.no_write:
        write_table(Path(args.out), table, "scaling", heading="## How far a cluster scales")
    return 0


if __name__ == "__main__":
    sys.exit(main())
