"""TEM1D forward models/s: daskbatch against the tools users would pick instead.

One command, one run: the same N three-layer models (the Monte Carlo design of the
TEM1D parallel guide) for every contender; each contender runs in its own process
tree, sampled for peak resident memory, and its responses are checked against the
sequential ones (max relative difference <= 1e-10).

    python benchmarks/tem1d.py                    # N = 20,000, every contender
    python benchmarks/tem1d.py --n 1000000 --contenders daskbatch-e2e --check 2000

Efficiency is models/s divided by the limit: workers x sequential models/s, both
measured in the same run (each round of contenders starts with a sequential run).
daskbatch's kernel calls the Fortran routine without run_tem1d's per-call overhead,
so "÷ kernel limit" (workers x the sequential-kernel rate) is what is left of the
engine's own efficiency once that gain is taken out.
The table is printed and written into docs/performance.md (between the tem1d
markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = [
    "sequential",
    "sequential-kernel",
    "ceiling",
    "multiprocessing-pool",
    "joblib",
    "dask-threads",
    "dask-processes",
    "dask-localcluster",
    "daskbatch-running",
    "daskbatch-e2e",
    "daskbatch-user",
]
DESCRIPTIONS = {
    "sequential": "a loop over run_tem1d in one process",
    "sequential-kernel": "a loop over daskbatch's kernel (models.tem1d.forward) in one process, no engine",
    "ceiling": "one independent loop per worker, started together, nothing shared: the machine's best",
    "multiprocessing-pool": "multiprocessing.Pool.map over chunks (the users' current helper)",
    "joblib": "joblib.Parallel, one delayed call per model, batch_size='auto'",
    "dask-threads": "dask.array.map_blocks, threaded scheduler",
    "dask-processes": "dask.array.map_blocks, processes scheduler",
    "dask-localcluster": "dask.array.map_blocks on a LocalCluster already running (warmed by a small run)",
    "daskbatch-running": (
        "daskbatch.run defaults + Zarr store, on a LocalCluster already running (warmed by a small run)"
    ),
    "daskbatch-e2e": (
        "daskbatch.run + Zarr store, the shipped kernel, cluster='local' started and stopped in the call"
    ),
    "daskbatch-user": (
        "daskbatch.run defaults (cluster='auto') + Zarr store, a kernel the user writes: "
        "run_tem1d(resistivity, depth).responses"
    ),
}


# --------------------------------------------------------------------------- the work


def make_models(n: int, seed: int = 2024) -> tuple[np.ndarray, np.ndarray]:
    """The guide's Monte Carlo design: log10 rho ~ N(2, 0.5); h ~ N(30, 5), N(70, 10)."""
    import daskbatch as db

    space = db.MonteCarlo(
        {
            "resistivity": db.LogNormal(2.0, 0.5, base=10, size=3, dim="layer"),
            "thickness": db.Normal([30.0, 70.0], [5.0, 10.0], dim="interface"),
        },
        n=n,
        seed=seed,
    )
    block = space.block((slice(0, n),))
    thickness = np.abs(block["thickness"]) + 1.0  # a few draws are negative: keep all models valid
    depths = np.concatenate([np.zeros((n, 1)), np.cumsum(thickness, axis=1)], axis=1)
    return block["resistivity"], depths


def compute_chunk(args):
    from pytem1d import run_tem1d

    rho, depth = args
    return np.stack([run_tem1d(r, d).responses for r, d in zip(rho, depth, strict=True)])


def compute_one(r, d):
    from pytem1d import run_tem1d

    return run_tem1d(r, d).responses


def _block(rho, depth):
    return compute_chunk((rho, depth))


def user_tem1d():
    """The kernel a user writes around pytem1d's own call (a script's kernel, shipped by value)."""
    from pytem1d import run_tem1d  # as a script imports it, at its top

    import daskbatch as db

    @db.kernel(outputs={"response": db.Output(shape=(71,), dims=("time",))})
    def run_tem1d_kernel(resistivity, depth):
        return run_tem1d(resistivity, depth).responses

    return run_tem1d_kernel


def chunk_size_by_the_guide(n: int, workers: int) -> int:
    # the guide's rule of thumb: 10-20 chunks per worker
    return max(1, math.ceil(n / (workers * 15)))


def run_contender(name: str, data: Path, result: Path, workers: int, store: Path) -> dict:
    """Runs in a child process; returns timings. Results go to ``result`` (npy)."""
    z = np.load(data)
    rho, depth = z["rho"], z["depth"]
    n = len(rho)
    chunk = chunk_size_by_the_guide(n, workers)
    out: np.ndarray | None = None
    extra: dict = {}
    if name == "sequential":
        t = time.perf_counter()
        out = compute_chunk((rho, depth))
        seconds = time.perf_counter() - t
    elif name == "sequential-kernel":
        from daskbatch.models.tem1d import forward, library

        lib = library()  # loaded before the clock starts, as run_tem1d's library is
        t = time.perf_counter()
        out = np.stack([forward(r, depth=d, run=lib) for r, d in zip(rho, depth, strict=True)])
        seconds = time.perf_counter() - t
    elif name == "ceiling":
        # no scheduling, no results gathered: what the cores deliver when all run at once
        part = math.ceil(n / workers)
        t = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "sequential-slice",
                    str(data),
                    str(i * part),
                    str(part),
                ],
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        for proc in procs:
            if proc.wait():
                raise SystemExit("a ceiling loop failed")
        seconds = time.perf_counter() - t
    elif name == "multiprocessing-pool":
        import multiprocessing as mp

        t = time.perf_counter()
        chunks = [(rho[i : i + chunk], depth[i : i + chunk]) for i in range(0, n, chunk)]
        with mp.Pool(workers) as pool:
            out = np.concatenate(pool.map(compute_chunk, chunks))
        seconds = time.perf_counter() - t
    elif name == "joblib":
        from joblib import Parallel, delayed

        t = time.perf_counter()
        res = Parallel(n_jobs=workers, batch_size="auto")(
            delayed(compute_one)(r, d) for r, d in zip(rho, depth, strict=True)
        )
        out = np.stack(res)
        seconds = time.perf_counter() - t
    elif name.startswith("dask-"):
        import dask
        import dask.array as da

        r = da.from_array(rho, chunks=(chunk, 3))
        d = da.from_array(depth, chunks=(chunk, 3))
        arr = da.map_blocks(_block, r, d, chunks=(r.chunks[0], (71,)), dtype=float)
        if name == "dask-localcluster":
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster):
                # "already running": the workers have computed before (imports, library loaded)
                warm = min(n, 100 * workers)
                small = r[:warm], d[:warm]
                da.map_blocks(_block, *small, chunks=(small[0].chunks[0], (71,)), dtype=float).compute()
                t = time.perf_counter()
                out = arr.compute()
                seconds = time.perf_counter() - t
        else:
            scheduler = name.removeprefix("dask-")
            t = time.perf_counter()
            with dask.config.set(scheduler=scheduler, num_workers=workers):
                out = arr.compute()
            seconds = time.perf_counter() - t
    elif name.startswith("daskbatch-"):
        import daskbatch as db
        from daskbatch.models.tem1d import tem1d

        space = db.Table({"resistivity": rho, "depth": depth})
        if name == "daskbatch-running":
            from daskbatch.cluster import ClusterSpec, start_executor

            with start_executor(ClusterSpec("local", workers)) as ex:
                # "already running": the workers have run a sweep before (imports, library loaded)
                warm = min(n, 100 * workers)
                head = db.Table({"resistivity": rho[:warm], "depth": depth[:warm]})
                scratch = store.with_suffix(".warm.zarr")
                db.run(tem1d, head, scratch, cluster=ex.client, progress=False, overwrite=True)
                t = time.perf_counter()
                res = db.run(tem1d, space, store, cluster=ex.client, progress=False, overwrite=True)
                seconds = time.perf_counter() - t
        elif name == "daskbatch-user":
            t = time.perf_counter()
            res = db.run(user_tem1d(), space, store, n_workers=workers, progress=False, overwrite=True)
            seconds = time.perf_counter() - t
        else:
            t = time.perf_counter()
            res = db.run(
                tem1d, space, store, cluster="local", n_workers=workers, progress=False, overwrite=True
            )
            seconds = time.perf_counter() - t
        extra = {"blocks": res.blocks_total, "ok": res.samples["ok"]}
    else:
        raise SystemExit(f"unknown contender {name!r}")
    if out is not None:
        np.save(result, out)
    return {"seconds": seconds, "n": n, **extra}


# --------------------------------------------------------------------------- the harness


def _high_water(pid: int) -> int | None:
    """The kernel's record of a process's peak resident memory (Linux ``VmHWM``), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Samples the peak resident memory of a process and its children; keeps each one's.

    On Linux each sample reads the kernel's high-water mark (``VmHWM``), so a peak
    between two samples is not missed; elsewhere the current RSS is sampled.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.root_pid = pid
        self._root = psutil.Process(pid)
        self._interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = _high_water(p.pid) or p.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
            time.sleep(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peaks.values(), default=0)


def run_measured(cmd: list[str], interval: float = 0.2, **popen) -> tuple[int, str, PeakMemory]:
    """Run ``cmd`` as a child, sampling its process tree's peak memory; returns the exit
    code, its standard output and the sampler (``.peaks`` by pid; the child's pid is
    ``.root_pid``)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **popen)
    mem = PeakMemory(proc.pid, interval=interval)
    out, _ = proc.communicate()
    mem.stop()
    return proc.returncode, out, mem


def _responses(name: str, result: Path, store: Path, rows: np.ndarray) -> np.ndarray:
    if name.startswith("daskbatch-"):
        import xarray as xr

        ds = xr.open_zarr(store)
        return ds.response.isel(sample=rows).values
    return np.load(result, mmap_mode="r")[rows]


# every contender runs with the thread limits that dask's and joblib's workers set
# themselves, so that no one's BLAS or OpenMP threads compete for the cores
THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_child(name: str, args, data: Path, tmp: Path) -> dict:
    result, store = tmp / f"{name}.npy", tmp / f"{name}.zarr"
    cmd = [
        sys.executable,
        __file__,
        "--workers",
        str(args.workers),
        "--child",
        name,
        str(data),
        str(result),
        str(store),
    ]
    code, stdout, mem = run_measured(cmd, cwd=tmp, env={**os.environ, **THREAD_LIMITS})
    peak = max(mem.peaks.values(), default=0)
    if code != 0:
        return {"error": f"exit {code}"}
    info = json.loads(stdout.strip().splitlines()[-1])
    return {**info, "peak": peak, "result": result, "store": store}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="models (default 20000)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    p.add_argument("--check", type=int, default=0, help="check only this many random models (0: all)")
    p.add_argument("--sequential-n", type=int, default=0, help="models for the sequential rate (0: N)")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--tag", default="", help="the markers in --out to write the table between")
    p.add_argument("--child", nargs=4, metavar=("NAME", "DATA", "RESULT", "STORE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child and args.child[0] == "sequential-slice":
        z = np.load(args.child[1])
        start, count = int(args.child[2]), int(args.child[3])
        compute_chunk((z["rho"][start : start + count], z["depth"][start : start + count]))
        return 0
    if args.child:
        name, data, result, store = args.child
        print(json.dumps(run_contender(name, Path(data), Path(result), args.workers, Path(store))))
        return 0

    contenders = [c for c in args.contenders.split(",") if c]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {CONTENDERS}")
    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-bench-"))
    rho, depth = make_models(args.n)
    rows = np.arange(args.n)
    if args.check:
        rows = np.sort(np.random.default_rng(0).choice(args.n, size=min(args.check, args.n), replace=False))
    reference = compute_chunk((rho[rows], depth[rows]))
    data = tmp / "models.npz"
    np.savez(data, rho=rho, depth=depth)
    # the sequential rate, the same way as every contender: a child process, median of runs
    n_seq = min(args.sequential_n or args.n, args.n)
    seq_data = data
    if n_seq < args.n:
        seq_data = tmp / "models-seq.npz"
        np.savez(seq_data, rho=rho[:n_seq], depth=depth[:n_seq])
    # rounds, each starting with a sequential run, so that slow spells of the machine
    # hit the limit as much as every contender
    seq_runs: list[dict] = []
    runs: dict[str, list[dict]] = {name: [] for name in contenders if name != "sequential"}
    for i in range(args.repeat):
        seq_runs.append(_run_child("sequential", args, seq_data, tmp))
        print(f"  round {i + 1}: sequential {n_seq / seq_runs[-1]['seconds']:,.0f} models/s", flush=True)
        for name in runs:
            runs[name].append(_run_child(name, args, data, tmp))
    seq_rate = statistics.median(n_seq / r["seconds"] for r in seq_runs)
    limit = args.workers * seq_rate
    print(
        f"TEM1D benchmark: N = {args.n:,} three-layer models, {args.workers} workers; "
        f"sequential {seq_rate:,.0f} models/s (median of {args.repeat}), limit {limit:,.0f} models/s"
    )
    if "sequential" in contenders:
        runs = {"sequential": [{**r, "n_rows": n_seq} for r in seq_runs], **runs}
    rows_out = []
    for name, results in runs.items():
        bad = [r for r in results if "error" in r]
        if bad:
            rows_out.append({"name": name, "error": bad[0]["error"]})
            print(f"  {name:22s} FAILED ({bad[0]['error']})")
            continue
        last = results[-1]
        if name == "ceiling" or (name == "sequential" and n_seq < args.n):
            max_rel = float("nan")  # produces no results to check
        else:
            got = _responses(name, last["result"], last["store"], rows)
            rel = np.abs(got - reference) / np.maximum(np.abs(reference), 1e-300)
            max_rel = float(np.nanmax(rel)) if np.isfinite(got).all() else float("inf")
        n_done = last.get("n_rows", args.n)
        rates = [n_done / r["seconds"] for r in results]
        rate = statistics.median(rates)
        row = {
            "name": name,
            "rate": rate,
            "rates": rates,
            "speedup": rate / seq_rate,
            "efficiency": rate / limit,
            "peak_mb": max(r["peak"] for r in results) / 2**20,
            "max_rel": max_rel,
            "correct": max_rel <= 1e-10,
            "checked": not np.isnan(max_rel),
        }
        rows_out.append(row)
        print(
            f"  {name:22s} {rate:9,.0f} models/s  x{row['speedup']:5.2f}  eff {row['efficiency']:5.2f}"
            f"  peak {row['peak_mb']:6.0f} MB  max rel diff {max_rel:.1e}  "
            f"{'correct' if row['correct'] else ('WRONG' if row['checked'] else '-')}"
            f"  (runs: {', '.join(f'{x:,.0f}' for x in rates)})"
        )
    table = _table(args, seq_rate, limit, rows_out)
    print()
    print(table)
    if not args.no_write:
        tag = args.tag or ("tem1d-large" if args.n >= 500_000 else "tem1d")
        write_table(Path(args.out), table, tag, heading=f"### N = {args.n:,}")
    return 0


def _table(args, seq_rate, limit, rows) -> str:
    head = (
        f"N = {args.n:,} models, {args.workers} workers, sequential {seq_rate:,.0f} models/s, "
        f"limit {limit:,.0f} models/s (workers × sequential); medians of {args.repeat} runs; "
        + ("every response checked" if not args.check else f"{args.check:,} random responses checked")
        + f"; `python benchmarks/tem1d.py --n {args.n}"
        + (f" --contenders {args.contenders}" if args.contenders != ",".join(CONTENDERS) else "")
        + (f" --check {args.check}" if args.check else "")
        + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
        + (f" --sequential-n {args.sequential_n}" if args.sequential_n else "")
        + "`\n\n"
    )
    ceiling = next((r["rate"] for r in rows if r["name"] == "ceiling" and "rate" in r), None)
    kernel = next((r["rate"] for r in rows if r["name"] == "sequential-kernel" and "rate" in r), None)
    kernel_limit = args.workers * kernel if kernel else None
    lines = [
        "| contender | what | models/s | × sequential | efficiency | ÷ ceiling | ÷ kernel limit "
        "| peak RSS of any process | correct (≤ 1e-10) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {DESCRIPTIONS[r['name']]} | failed | | | | | | {r['error']} |")
            continue
        of_ceiling = f"{r['rate'] / ceiling:.2f}" if ceiling else "-"
        of_kernel = f"{r['rate'] / kernel_limit:.2f}" if kernel_limit else "-"
        lines.append(
            f"| {r['name']} | {DESCRIPTIONS[r['name']]} | {r['rate']:,.0f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.2f} | {of_ceiling} | {of_kernel} | {r['peak_mb']:,.0f} MB | "
            + (f"{'yes' if r['correct'] else 'NO'} ({r['max_rel']:.0e}) |" if r["checked"] else "- |")
        )
    return head + "\n".join(lines) + "\n"


def write_table(path: Path, table: str, tag: str, heading: str = "") -> None:
    """Put ``table`` between the ``<!-- tag:start/end -->`` markers of ``path``.

    Without the markers, the table (under ``heading``) is appended.
    """
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{start}\n{table}{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    path.write_text(text)
    print(f"written into {path}")


if __name__ == "__main__":
    sys.exit(main())
