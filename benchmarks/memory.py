"""Peak memory against N: a kernel with 71 float64 outputs per sample.

The kernel returns a decay curve at 71 times per sample (a stand-in for a TEM1D
response: 568 bytes out per sample). Each contender runs at a small and a large N
(default 100,000 and 10,000,000) in its own process tree; the peak resident memory
of the driver and of every other process of the tree (workers, nannies, pool
processes) is read from the kernel's high-water mark while it runs.

- ``daskbatch``: ``daskbatch.run`` with its defaults (local cluster, auto chunks),
  results streamed into a Zarr store;
- ``dask``: plain ``dask.array`` ``map_blocks(...).to_zarr(...)`` on a LocalCluster,
  with dask's automatic chunks for the output;
- ``pool``: ``multiprocessing.Pool.map`` over chunks of 10,000 samples, results
  gathered in the driver and saved with ``numpy.save`` (the users' helper).

    python benchmarks/memory.py                     # N = 1e5 and 1e7
    python benchmarks/memory.py --sizes 20000,200000 --contenders daskbatch

Prints seconds and peaks, and the ratio of the large run's peaks to the small run's,
and writes the table into docs/performance.md (between the memory markers) unless
--no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tem1d import run_measured, write_table

import daskbatch as db

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ["daskbatch", "dask", "pool"]
DESCRIPTIONS = {
    "daskbatch": "daskbatch.run defaults, results streamed to Zarr",
    "dask": "dask.array map_blocks + to_zarr, dask's auto chunks, LocalCluster",
    "pool": "multiprocessing.Pool.map over chunks of 10,000, results gathered then np.save",
}
TIMES = np.logspace(-5, -2, 71)
POOL_CHUNK = 10_000


def decay(rho: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """A response curve per sample: ``rho * exp(-t / tau)`` at the 71 times."""
    return rho[:, None] * np.exp(-TIMES[None, :] / tau[:, None])


@db.kernel(
    outputs={"response": db.Output(dims=("time",), shape=(71,), coords={"time": TIMES})},
    per_sample=False,
    threadsafe=True,
)
def curves(rho, tau):
    """71 float64 outputs per sample."""
    return decay(rho, tau)


def space(n: int) -> db.MonteCarlo:
    return db.MonteCarlo({"rho": db.LogUniform(1, 1000), "tau": db.LogUniform(1e-4, 1e-2)}, n=n, seed=3)


def _pool_chunk(bounds: tuple[int, int]) -> np.ndarray:
    p = space(bounds[1]).block((slice(*bounds),))
    return decay(p["rho"], p["tau"])


def run_contender(name: str, n: int, store: Path, workers: int) -> dict:
    t = time.perf_counter()
    if name == "daskbatch":
        res = db.run(curves, space(n), store, n_workers=workers, progress=False, overwrite=True)
        return {"seconds": time.perf_counter() - t, "blocks": res.blocks_total}
    if name == "pool":
        import multiprocessing

        bounds = [(s, min(n, s + POOL_CHUNK)) for s in range(0, n, POOL_CHUNK)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_pool_chunk, bounds)
        store.mkdir(parents=True, exist_ok=True)
        np.save(store / "response.npy", np.concatenate(parts))
        return {"seconds": time.perf_counter() - t, "blocks": len(bounds)}
    if name == "dask":
        import dask.array as da
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster):
            rows = da.core.normalize_chunks("auto", (n, len(TIMES)), dtype=np.float64)[0]
            p = space(n).to_dask((rows,))
            y = da.map_blocks(
                decay, p["rho"], p["tau"], dtype=float, new_axis=1, chunks=(rows, (len(TIMES),))
            )
            y.to_zarr(str(store), component="response", overwrite=True)
            return {"seconds": time.perf_counter() - t, "blocks": len(rows)}
    raise SystemExit(f"unknown contender {name!r}; choose from {CONTENDERS}")


def _check(name: str, store: Path, n: int) -> bool:
    """The first and last 10,000 curves equal the formula on the same parameters."""
    if name == "pool":
        y = np.load(store / "response.npy", mmap_mode="r")
    else:
        import zarr

        y = zarr.open_group(str(store), mode="r")["response"]
    for sl in (slice(0, min(n, 10_000)), slice(max(0, n - 10_000), n)):
        p = space(n).block((sl,))
        if not np.array_equal(np.asarray(y[sl]), decay(p["rho"], p["tau"])):
            return False
    return True


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,10000000", help="small,large N")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", nargs=3, metavar=("NAME", "N", "STORE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        name, n, store = args.child
        print(json.dumps(run_contender(name, int(n), Path(store), args.workers)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        p.error(f"--sizes={args.sizes!r}: give two sizes, small then large, e.g. 100000,10000000")
    names = [c for c in args.contenders.split(",") if c]
    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-memory-"))
    rows = []
    for name in names:
        peaks = []
        for n in sizes:
            store = tmp / f"{name}-{n}.zarr"
            cmd = [
                sys.executable,
                __file__,
                "--workers",
                str(args.workers),
                "--child",
                name,
                str(n),
                str(store),
            ]
            code, out, mem = run_measured(cmd, interval=0.05, cwd=tmp)
            if code:
                rows.append(f"| {name} | {n:,} | failed (exit {code}) | | | | |")
                peaks.append(None)
                continue
            info = json.loads(out.strip().splitlines()[-1])
            driver = mem.peaks.get(mem.root_pid, 0)
            others = sorted((v for k, v in mem.peaks.items() if k != mem.root_pid), reverse=True)
            worker = others[0] if others else 0
            correct = _check(name, store, n)
            shutil.rmtree(store, ignore_errors=True)
            peaks.append((driver, worker))
            print(
                f"  {name:10s} N={n:>12,}  {info['seconds']:7.1f} s  {info['blocks']:5,} blocks  "
                f"driver {_mb(driver)}  processes {', '.join(_mb(v) for v in others)}  "
                f"{'correct' if correct else 'WRONG'}",
                flush=True,
            )
            rows.append(
                f"| {name} | {n:,} | {n / info['seconds']:,.0f} | {info['blocks']:,} | {_mb(driver)} | "
                f"{_mb(worker)} | {'yes' if correct else 'NO'} |"
            )
        if all(peaks):
            (d0, w0), (d1, w1) = peaks
            rows.append(f"| {name} | large ÷ small | | | {d1 / d0:.2f} | {w1 / w0 if w0 else 0:.2f} | |")
    table = (
        f"71 float64 outputs per sample, N = {sizes[0]:,} and {sizes[1]:,}, {args.workers} workers, one "
        f"run each; `python benchmarks/memory.py --sizes {sizes[0]},{sizes[1]}`\n\n"
        "| contender | N | samples/s | blocks | driver peak | largest other process | correct |\n"
        "|---|---:|---:|---:|---:|---:|---|\n" + "\n".join(rows) + "\n"
    )
    print()
    print(table)
    if not args.no_write:
        write_table(Path(args.out), table, "memory", "## Memory: 71 outputs per sample, small and large N")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
