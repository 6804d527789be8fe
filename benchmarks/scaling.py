"""How far a cluster scales: blocks per second the driver and scheduler can take in.

Per-block cost in the driver (scheduling, taking in results, callbacks, status
publishing) and in the scheduler decides how many workers a run can keep busy. Here
the workers are threads of this process (a ``LocalCluster`` with ``processes=False``:
many slots on a 2-core machine) and the kernel sleeps 0.2 s per block, so the cores
are free for the overhead and the ideal rate is slots / 0.2 s.

- ``client-map``: plain ``client.map`` of the same sleeps (nothing written);
- ``daskbatch``: ``daskbatch.run`` on the same cluster (``cluster=client``), one
  block per task, each written and committed to a Zarr store.

Efficiency is blocks/s over the ideal. Two CPU figures per block: the whole process
(driver, scheduler and the worker threads' block tasks: on a real cluster those run
on the workers' own cores) and the driver and scheduler alone: the process's CPU
time less that of the worker pool's threads (``Dask-Default-Threads``, per-thread
CPU clocks). The second, ``c``, is what a cluster of any size shares: the
driver takes in at most ``1 / c`` blocks per second, so ``N`` workers with blocks of
``d`` seconds are at most ``min(1, d / (N × c))`` busy, and stay 90% busy when
``d ≥ N × c / 0.9`` (the floor ``chunk_size="auto"`` keeps, with ``c`` from the
setting ``daskbatch.auto.driver-seconds-per-block``). The projection to 1,000
workers takes ``c`` of daskbatch at the most slots.

    python benchmarks/scaling.py                     # 64, 128 and 256 slots, 1,000 blocks
    python benchmarks/scaling.py --smoke --no-write  # a few seconds

Writes the table into docs/performance.md (between the scaling markers) unless
--no-write.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
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


WORKER_THREADS = "Dask-Default-Threads"  # distributed's name for a worker's task threads
BUSY = 0.9  # the share of the time workers should be busy
PROJECTED = 1000  # workers of the projection


class CPU:
    """CPU seconds of this process, and of the worker pool's threads, since it was made."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, dict[int, float]]:
        pool = {}
        for t in threading.enumerate():
            if WORKER_THREADS in t.name and t.ident is not None:
                # the thread's own CPU clock (nanoseconds, not /proc's ticks); gone if it just ended
                with contextlib.suppress(OSError, ProcessLookupError):
                    pool[t.ident] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        return time.process_time(), pool

    def spent(self) -> tuple[float, float]:
        """(whole process, driver and scheduler) CPU seconds since this object was made."""
        (total0, pool0), (total1, pool1) = self.start, self._now()
        workers = sum(t - pool0.get(i, 0.0) for i, t in pool1.items())
        return total1 - total0, max(0.0, total1 - total0 - workers)


def measure(client, slots: int, blocks: int, samples: int, tmp: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    # plain dask: one task per block, results gathered as they finish
    from distributed import as_completed

    cpu, t = CPU(), time.perf_counter()
    for fut in as_completed(client.map(_sleep, range(blocks), pure=False)):
        fut.result()
        fut.release()
    wall = time.perf_counter() - t
    out["client-map"] = _figures(blocks, wall, *cpu.spent())
    space = db.Grid(x=np.arange(float(blocks * samples)))
    store = tmp / f"s{slots}.zarr"
    cpu, t = CPU(), time.perf_counter()
    res = db.run(sleepy, space, store, cluster=client, chunk_size=samples, progress=False, overwrite=True)
    wall = time.perf_counter() - t
    assert res.blocks_done == blocks and res.samples["ok"] == blocks * samples
    out["daskbatch"] = _figures(blocks, wall, *cpu.spent())
    return out


def _figures(blocks: int, wall: float, total: float, driver: float) -> dict[str, float]:
    return {"rate": blocks / wall, "cpu_ms": 1e3 * total / blocks, "driver_ms": 1e3 * driver / blocks}


def projection(c: float, workers: int = PROJECTED, block_seconds: float = 1.0) -> str:
    """What ``c`` seconds of driver and scheduler CPU per block allow ``workers``."""
    limit = 1 / c
    efficiency = min(1.0, limit / (workers / block_seconds))
    d_min = workers * c / BUSY
    return (
        f"- throughput limit of the driver and scheduler: 1 / c = 1 / {c * 1e3:.2f} ms = "
        f"{limit:,.0f} blocks/s\n"
        f"- {workers:,} workers with {block_seconds:g}-second blocks: efficiency = min(1, (1 / c) / "
        f"({workers:,} / {block_seconds:g} s)) = min(1, {limit:,.0f} / {workers / block_seconds:,.0f}) = "
        f"{efficiency:.2f}\n"
        f"- smallest block that keeps {workers:,} workers ≥ {BUSY:.0%} busy: d_min = {workers:,} × c / "
        f"{BUSY} = {workers:,} × {c * 1e3:.2f} ms / {BUSY} = {d_min:.2f} s\n"
    )


def main(argv: list[str] | None = None) -> int:
    global SLEEP
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slots", default="64,128,256", help="worker threads, comma-separated")
    p.add_argument("--blocks", type=int, default=1000)
    p.add_argument("--samples", type=int, default=10, help="samples per block")
    p.add_argument("--sleep", type=float, default=SLEEP, help="seconds the kernel sleeps per block")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny: 4 and 8 slots, 16 blocks of 0.05 s")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.slots, args.blocks, args.samples, args.sleep = "4,8", 16, 2, 0.05
    SLEEP = args.sleep
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
            rate, cpu, driver = (
                statistics.median(r[name][k] for r in runs) for k in ("rate", "cpu_ms", "driver_ms")
            )
            rows.append((slots, name, rate, rate / ideal, driver, cpu))
            print(
                f"{slots:4d} slots  {name:11s} {rate:7.1f} blocks/s  efficiency {rate / ideal:4.2f}  "
                f"{driver:5.2f} ms CPU per block in driver + scheduler ({cpu:5.2f} ms in the process)"
            )
    most = max(s for s, *_ in rows)
    c = {n: d / 1e3 for s, n, _, _, d, _ in rows if s == most}
    table = (
        f"{args.blocks:,} blocks of {args.samples} samples, a kernel that sleeps {SLEEP:g} s per block, "
        f"workers as threads of one process; medians of {args.repeat}; `python benchmarks/scaling.py"
        + (f" --slots {args.slots}" if args.slots != "64,128,256" else "")
        + (f" --blocks {args.blocks}" if args.blocks != 1000 else "")
        + (f" --samples {args.samples}" if args.samples != 10 else "")
        + (f" --sleep {args.sleep:g}" if args.sleep != 0.2 else "")
        + (f" --repeat {args.repeat}" if args.repeat != 1 else "")
        + "`\n\n| slots | contender | blocks/s | efficiency | CPU per block: driver + scheduler "
        "| CPU per block: whole process |\n"
        + "|---:|---|---:|---:|---:|---:|\n"
        + "".join(
            f"| {s} | {n} | {r:,.1f} | {e:.2f} | {d:.2f} ms | {t:.2f} ms |\n" for s, n, r, e, d, t in rows
        )
        + f"\nFrom daskbatch's driver + scheduler CPU per block at {most} slots, "
        + f"c = {c['daskbatch'] * 1e3:.2f} ms:\n\n"
        + projection(c["daskbatch"])
        + f"\n(Plain `client.map` at {most} slots, c = {c['client-map'] * 1e3:.2f} ms: "
        + f"d_min = {PROJECTED * c['client-map'] / BUSY:.2f} s.)\n"
    )
    print()
    print(table)
    if not args.no_write:
        write_table(Path(args.out), table, "scaling", heading="## How far a cluster scales")
    return 0


if __name__ == "__main__":
    sys.exit(main())
