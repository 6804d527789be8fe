"""Scheduling and storage overhead: a cheap vectorised numpy kernel over N samples.

The kernel is a handful of numpy operations per sample with one float64 out; its
two parameters are drawn by daskbatch's counter-based generator (the same numbers
for every contender). Contenders, each in its own process tree, medians of rounds:

- ``numpy-single``: one process draws the whole parameter arrays, computes the
  whole output with numpy and writes parameters and output to a Zarr store;
- ``dask-running``: plain ``dask.array.map_blocks(...)`` and ``to_zarr`` of the
  parameters and the output, with dask's own chunking, on a LocalCluster already
  running (warmed by a small computation);
- ``dask-running-lz4``: the same with the codec daskbatch uses (Blosc-LZ4 with
  shuffling) instead of Zarr's default (Zstandard), to show what is the codec;
- ``dask-e2e``: plain dask with ``LocalCluster()`` and ``Client`` started (and
  closed) in the timed call, as a script would;
- ``daskbatch-running``: ``daskbatch.run`` with its defaults on the same kind of
  cluster, already running;
- ``daskbatch-e2e``: ``daskbatch.run`` with ``cluster="local"``, started in the call.

    python benchmarks/overhead.py                 # N = 50,000,000
    python benchmarks/overhead.py --n 2000000 --repeat 1

Prints samples/s and ratios against ``numpy-single``, and writes the table into
docs/performance.md (between the overhead markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tem1d import run_measured, write_table

import daskbatch as db

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = [
    "numpy-single",
    "dask-running",
    "dask-running-lz4",
    "dask-e2e",
    "daskbatch-running",
    "daskbatch-e2e",
]
DESCRIPTIONS = {
    "numpy-single": "one process: whole arrays with numpy, then written to Zarr",
    "dask-running": "dask.array map_blocks + to_zarr of a, b, y, dask's chunks, LocalCluster already running",
    "dask-running-lz4": "the same, written with daskbatch's codec (Blosc-LZ4) instead of Zarr's default",
    "dask-e2e": "the same as dask-running, LocalCluster() and Client started and closed in the call",
    "daskbatch-running": "daskbatch.run defaults, LocalCluster already running",
    "daskbatch-e2e": "daskbatch.run defaults, cluster='local' started in the call",
}


def formula(a, b):
    return np.sqrt(a * a + b * b) * np.sin(a) + np.log1p(b) - a * b


@db.kernel(outputs={"y": db.Output()}, per_sample=False, threadsafe=True)
def cheap(a, b):
    """A handful of numpy operations per sample, one float64 out."""
    return formula(a, b)


def space(n: int) -> db.MonteCarlo:
    return db.MonteCarlo({"a": db.Uniform(0, 1), "b": db.Uniform(0, 1)}, n=n, seed=7)


def _plain_dask(target: Path, size: int, codec=None) -> None:
    """What a user of dask.array writes: dask's own chunks (128 MiB), map_blocks, to_zarr."""
    import dask
    import dask.array as da

    chunks = da.core.normalize_chunks("auto", (size,), dtype=np.float64)
    arrays = space(size).to_dask(chunks)
    y = da.map_blocks(formula, arrays["a"], arrays["b"], dtype=float)
    extra = {} if codec is None else {"compressors": (codec,)}
    # parameters and output, as the single process and daskbatch keep them
    dask.compute(
        *(
            da.to_zarr(x, str(target), component=key, overwrite=True, compute=False, **extra)
            for key, x in (("a", arrays["a"]), ("b", arrays["b"]), ("y", y))
        )
    )


def run_contender(name: str, n: int, store: Path, workers: int) -> dict:
    sp = space(n)
    if name == "numpy-single":
        import zarr

        t = time.perf_counter()
        params = sp.block((slice(0, n),))
        y = formula(params["a"], params["b"])
        root = zarr.open_group(str(store), mode="w")
        for key, values in (("a", params["a"]), ("b", params["b"]), ("y", y)):
            root.create_array(key, data=values, chunks=(1_000_000,))
        return {"seconds": time.perf_counter() - t}
    if name == "daskbatch-e2e":
        t = time.perf_counter()
        res = db.run(cheap, sp, store, n_workers=workers, progress=False, overwrite=True)
        return {"seconds": time.perf_counter() - t, "blocks": res.blocks_total}
    if name == "dask-e2e":
        from distributed import Client, LocalCluster

        t = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster):
            _plain_dask(store, n)
        return {"seconds": time.perf_counter() - t}
    from daskbatch.cluster import ClusterSpec, start_executor

    with start_executor(ClusterSpec("local", workers)) as ex:
        if name.startswith("dask-running"):
            codec = None
            if name == "dask-running-lz4":
                from zarr.codecs import BloscCodec

                codec = BloscCodec(cname="lz4", clevel=5)

            def go(target: Path, size: int) -> None:
                _plain_dask(target, size, codec)

            go(store.with_suffix(".warm.zarr"), 100_000)
            t = time.perf_counter()
            go(store, n)
            return {"seconds": time.perf_counter() - t}
        db.run(cheap, space(100_000), store.with_suffix(".warm.zarr"), cluster=ex.client, progress=False)
        t = time.perf_counter()
        res = db.run(cheap, sp, store, cluster=ex.client, progress=False, overwrite=True)
        return {"seconds": time.perf_counter() - t, "blocks": res.blocks_total}


def _check(name: str, store: Path, n: int) -> bool:
    """The output equals the formula on the same parameters (first and last million)."""
    import zarr

    y = zarr.open_group(str(store), mode="r")["y"]
    sp = space(n)
    for sl in (slice(0, min(n, 1_000_000)), slice(max(0, n - 1_000_000), n)):
        p = sp.block((sl,))
        if not np.array_equal(y[sl], formula(p["a"], p["b"])):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000_000)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("NAME", "STORE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_contender(args.child[0], args.n, Path(args.child[1]), args.workers)))
        return 0
    names = [c for c in args.contenders.split(",") if c]
    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-overhead-"))
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeat):
        for name in names:
            store = tmp / f"{name}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            cmd = [sys.executable, __file__, "--n", str(args.n), "--workers", str(args.workers)]
            code, out, mem = run_measured([*cmd, "--child", name, str(store)])
            peak = max(mem.peaks.values(), default=0)
            if code:
                runs[name].append({"error": f"exit {code}"})
                continue
            runs[name].append({**json.loads(out.strip().splitlines()[-1]), "peak": peak, "store": store})
    base = None
    rows = []
    rates_by_name: dict[str, float] = {}
    for name in names:
        ok = [r for r in runs[name] if "error" not in r]
        if len(ok) < len(runs[name]):
            rows.append(f"| {name} | {DESCRIPTIONS[name]} | failed | | | |")
            continue
        rate = statistics.median(args.n / r["seconds"] for r in ok)
        rates_by_name[name] = rate
        base = base or (rate if name == "numpy-single" else None)
        correct = _check(name, ok[-1]["store"], args.n)
        ratio = f"{rate / base:.2f}" if base else "-"
        peak = max(r["peak"] for r in ok) / 2**20
        rows.append(
            f"| {name} | {DESCRIPTIONS[name]} | {rate:,.0f} | {ratio} | {peak:,.0f} MB | "
            f"{'yes' if correct else 'NO'} |"
        )
        rates = ", ".join(f"{args.n / r['seconds']:,.0f}" for r in ok)
        print(f"  {name:18s} {rate:12,.0f} samples/s  x{ratio}  peak {peak:6,.0f} MB  (runs: {rates})")
    pairs = [
        ("daskbatch-running", "dask-running"),
        ("daskbatch-running", "dask-running-lz4"),
        ("daskbatch-e2e", "dask-e2e"),
    ]
    against = [
        f"{a} ÷ {b} = {rates_by_name[a] / rates_by_name[b]:.2f}"
        for a, b in pairs
        if a in rates_by_name and b in rates_by_name
    ]
    table = (
        f"N = {args.n:,} samples, {args.workers} workers, medians of {args.repeat} rounds; "
        f"`python benchmarks/overhead.py --n {args.n}`\n\n"
        "| contender | what | samples/s | ÷ numpy-single | peak RSS of any process | correct |\n"
        "|---|---|---:|---:|---:|---|\n"
        + "\n".join(rows)
        + "\n"
        + (f"\nAgainst plain dask: {'; '.join(against)}.\n" if against else "")
    )
    print()
    print(table)
    if not args.no_write:
        write_table(Path(args.out), table, "overhead", "## Overhead: a cheap vectorised kernel")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
