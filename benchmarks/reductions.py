"""Answers without storing everything: reductions, measured against what users would do.

Three parts, each contender in a fresh child process (its whole process tree's peak
memory sampled):

(a) genomes (``examples/genomes``): the 64 codon totals over 20,000 sequences of
    300 to 30,000 bases (303 Mbases of Parquet). The users' loop reads the file with
    pyarrow's ``iter_batches`` and adds each sequence's counts; daskbatch runs the
    same counting with ``reduce={"codons": "sum"}`` and ``Output(store=False)``, so
    nothing per sequence is stored. Targets: daskbatch at least 1.5 × as fast as the
    loop on 2 cores, every process under 1 GB, a store under 1 MB.
(b) Monte Carlo: a cheap vectorised numpy kernel (a log-normal response) with its
    mean, std and p10/p50/p90. Reducing as it runs with nothing stored, against
    storing every output and computing the statistics from the store afterwards
    (``store-then-reduce``, what a user would do without ``reduce=``; target: reducing
    ≥ 1.5 × its throughput) and against storing and reducing at once; and reducing
    10^6 against 10^8 samples (target: peak memory of every process within 1.25 ×).
(c) adaptive: ``until=Converged("y", rtol=0.01)`` on the mean of the log-normal
    output, from n = 1,000 doubling: the samples it used against the 10^5 the users'
    documents pick by rule of thumb, and how far its answer is from the exact mean.

    python benchmarks/reductions.py                 # full sizes (a few minutes)
    python benchmarks/reductions.py --small          # tiny sizes (the test suite's smoke run)

Figures go into docs/performance.md between ``<!-- reductions:start/end -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tem1d import THREAD_LIMITS, run_measured, write_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PARTS = ("genomes", "montecarlo", "adaptive")
FULL = {"genomes": 20_000, "mc-throughput": 10_000_000, "mc-small": 1_000_000, "mc-big": 100_000_000}
SMALL = {"genomes": 40, "mc-throughput": 20_000, "mc-small": 10_000, "mc-big": 40_000}
#: the log-normal response of parts (b) and (c): y = exp(mu + sigma z)
MU, SIGMA = 0.0, 1.0


def _lognormal_kernel(store: bool):
    import daskbatch as db

    @db.kernel(outputs={"y": db.Output(store=store)}, per_sample=False, threadsafe=True)
    def response(z):
        return np.exp(MU + SIGMA * z)

    return response


STATS = ["mean", "std"]


def child(part: str, name: str, data: str, out: str, n: int, workers: int) -> dict:
    """Runs in a child process: one contender; returns its figures."""
    import daskbatch as db

    if part == "genomes":
        sys.path.insert(0, str(EXAMPLES / "genomes"))
        from kernel import CODONS, codon_counts

        t = time.perf_counter()
        if name == "pyarrow-iter_batches":
            import pyarrow.parquet as pq

            totals = np.zeros(64, np.int64)
            for batch in pq.ParquetFile(data).iter_batches(batch_size=256, columns=["seq"]):
                for seq in batch.column(0).to_pylist():
                    totals += codon_counts(seq)
            np.save(out, totals)
        else:

            @db.kernel(
                outputs={"codons": db.Output(dims=("codon",), shape=(64,), dtype="int64", store=False)},
                threadsafe=True,
            )
            def codon_totals(seq):
                return codon_counts(seq)

            res = db.run(
                codon_totals,
                db.Table(data, columns=["seq"]),
                out,
                n_workers=workers,
                progress=False,
                reduce={"codons": "sum"},
            )
            totals = res.reductions["codons_sum"].values
            np.save(out + ".npy", totals)
        seconds = time.perf_counter() - t
        assert len(CODONS) == 64
        return {"seconds": seconds}
    if part == "montecarlo":
        space = db.MonteCarlo({"z": db.Normal(0.0, 1.0)}, n=n, seed=7)
        t = time.perf_counter()
        if name == "store-then-reduce":  # every output stored, the statistics read back after
            res = db.run(_lognormal_kernel(True), space, out, n_workers=workers, progress=False)
            y = db.open(out).y
            mean, std = float(y.mean().compute()), float(y.std().compute())
            q = np.quantile(y.values, [0.1, 0.5, 0.9])  # an exact quantile needs every value at once
            seconds = time.perf_counter() - t
            return {"seconds": seconds, "mean": mean, "std": std, "q": q.tolist()}
        res = db.run(
            _lognormal_kernel(name == "store-and-reduce"),
            space,
            out,
            n_workers=workers,
            progress=False,
            reduce={"y": [*STATS, db.Quantiles([0.1, 0.5, 0.9])]},
        )
        seconds = time.perf_counter() - t
        ds = res.reductions
        return {"seconds": seconds, "mean": float(ds["y_mean"]), "samples": int(res.samples["ok"])}
    if part == "adaptive":
        space = db.MonteCarlo({"z": db.Normal(0.0, 1.0)}, n=1_000, seed=7)
        t = time.perf_counter()
        res = db.run(
            _lognormal_kernel(False),
            space,
            out,
            n_workers=workers,
            progress=False,
            until=db.Converged("y", stat="mean", rtol=0.01, max_n=n),
        )
        seconds = time.perf_counter() - t
        return {
            "seconds": seconds,
            "n": int(res.n_samples),
            "mean": float(res.reductions["y_mean"]),
        }
    raise SystemExit(f"unknown part {part!r}")


def _run(part: str, name: str, data: Path | str, out: Path, n: int, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--workers",
        str(workers),
        "--child",
        part,
        name,
        str(data),
        str(out),
        str(n),
    ]
    code, stdout, mem = run_measured(cmd, cwd=out.parent, env={**os.environ, **THREAD_LIMITS})
    if code != 0:
        return {"error": f"exit {code}"}
    info = json.loads(stdout.strip().splitlines()[-1])
    peaks = [v for v in mem.peaks.values() if v > 0]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0
    return {**info, "peak": max(peaks, default=0), "store_bytes": size}


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--small", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--child", nargs=5, metavar=("PART", "NAME", "DATA", "OUT", "N"))
    args = p.parse_args(argv)
    if args.child:
        part, name, data, out, n = args.child
        print(json.dumps(child(part, name, data, out, int(n), args.workers)))
        return 0
    sizes = SMALL if args.small else FULL
    parts = [x for x in args.parts.split(",") if x]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="daskbatch-reductions-") as tmp_name:
        tmp = Path(tmp_name)
        if "genomes" in parts:
            lines += _genomes(tmp, sizes, args)
        if "montecarlo" in parts:
            lines += _montecarlo(tmp, sizes, args)
        if "adaptive" in parts:
            lines += _adaptive(tmp, sizes, args)
    table = "\n".join(lines) + "\n"
    print(table)
    if set(parts) >= set(PARTS):
        write_table(args.out, table, "reductions", "## Reductions")
    else:  # the section holds every part: a subset would drop the others' figures
        print(f"(not written into {args.out}: only {', '.join(parts)} ran; the section needs every part)")
    return 0


def _genomes(tmp: Path, sizes: dict[str, int], args) -> list[str]:
    data_dir = tmp / "genomes"
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "genomes" / "make_data.py"),
            str(data_dir),
            "--n",
            str(sizes["genomes"]),
        ],
        check=True,
        capture_output=True,
    )
    data = data_dir / "sequences.parquet"
    rows: dict[str, list[dict]] = {"pyarrow-iter_batches": [], "daskbatch-reduce": []}
    for _ in range(args.repeat):
        for name in rows:
            out = tmp / "out" / f"genomes-{name}.zarr"
            out.parent.mkdir(exist_ok=True)
            rows[name].append(_run("genomes", name, data, out, sizes["genomes"], args.workers))
    loop = np.load(tmp / "out" / "genomes-pyarrow-iter_batches.zarr.npy")
    ours = np.load(tmp / "out" / "genomes-daskbatch-reduce.zarr.npy")
    same = bool(np.array_equal(loop, ours))
    t_loop, t_ours = (
        _median(rows["pyarrow-iter_batches"], "seconds"),
        _median(rows["daskbatch-reduce"], "seconds"),
    )
    peak = max(r.get("peak", 0) for r in rows["daskbatch-reduce"])
    store = max(r.get("store_bytes", 0) for r in rows["daskbatch-reduce"])
    speed = t_loop / t_ours
    return [
        f"(a) genomes: codon totals of {sizes['genomes']:,} sequences, {args.repeat} runs each, "
        f"{args.workers} workers",
        "",
        "| contender | median s | largest process peak (MB) | store |",
        "|---|---|---|---|",
        f"| pyarrow-iter_batches (the users' loop) | {t_loop:.2f} | "
        f"{max(r.get('peak', 0) for r in rows['pyarrow-iter_batches']) / 2**20:,.0f} | - |",
        f"| daskbatch reduce='sum', Output(store=False) | {t_ours:.2f} | {peak / 2**20:,.0f} | "
        f"{store / 1024:,.0f} KiB |",
        "",
        f"- daskbatch is {speed:.2f} × as fast as the loop (target ≥ 1.5: "
        f"{'met' if speed >= 1.5 else 'NOT met'}); totals identical: {'yes' if same else 'NO'}",
        f"- largest process peak {peak / 2**20:,.0f} MB (target < 1,024: "
        f"{'met' if peak < 2**30 else 'NOT met'}); store {store / 1024:,.0f} KiB (target < 1,024 KiB: "
        f"{'met' if store < 2**20 else 'NOT met'})",
        "",
    ]


def _montecarlo(tmp: Path, sizes: dict[str, int], args) -> list[str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    n = sizes["mc-throughput"]
    rows: dict[str, list[dict]] = {"store-then-reduce": [], "store-and-reduce": [], "daskbatch-reduce": []}
    for _ in range(args.repeat):
        for name in rows:
            rows[name].append(_run("montecarlo", name, "-", out / f"mc-{name}.zarr", n, args.workers))
    rate = {k: n / _median(v, "seconds") for k, v in rows.items()}
    ratio = rate["daskbatch-reduce"] / rate["store-then-reduce"]
    ratio_both = rate["daskbatch-reduce"] / rate["store-and-reduce"]
    small = _run(
        "montecarlo", "daskbatch-reduce", "-", out / "mc-small.zarr", sizes["mc-small"], args.workers
    )
    big = _run("montecarlo", "daskbatch-reduce", "-", out / "mc-big.zarr", sizes["mc-big"], args.workers)
    growth = big["peak"] / small["peak"] if small.get("peak") else math.nan
    return [
        f"(b) Monte Carlo: a vectorised log-normal kernel, mean, std and p10/p50/p90, "
        f"{args.workers} workers, cluster='auto', {args.repeat} runs each",
        "",
        "| contender | samples | median s | samples/s | largest process peak (MB) |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {n:,} | {_median(v, 'seconds'):.2f} | {rate[k]:,.0f} | "
            f"{max(r.get('peak', 0) for r in v) / 2**20:,.0f} |"
            for k, v in rows.items()
        ],
        f"| daskbatch-reduce | {sizes['mc-small']:,} | {small.get('seconds', math.nan):.2f} | "
        f"{sizes['mc-small'] / small.get('seconds', math.nan):,.0f} | {small.get('peak', 0) / 2**20:,.0f} |",
        f"| daskbatch-reduce | {sizes['mc-big']:,} | {big.get('seconds', math.nan):.2f} | "
        f"{sizes['mc-big'] / big.get('seconds', math.nan):,.0f} | {big.get('peak', 0) / 2**20:,.0f} |",
        "",
        f"- reducing only is {ratio:.2f} × the throughput of storing every output and computing the "
        f"statistics from the store afterwards (target ≥ 1.5: {'met' if ratio >= 1.5 else 'NOT met'}), "
        f"and {ratio_both:.2f} × that of a run that stores every output and reduces as it goes",
        f"- peak memory at {sizes['mc-big']:,} samples is {growth:.2f} × that at {sizes['mc-small']:,} "
        f"(target ≤ 1.25: {'met' if growth <= 1.25 else 'NOT met'})",
        "",
    ]


def _adaptive(tmp: Path, sizes: dict[str, int], args) -> list[str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    r = _run("adaptive", "daskbatch-until", "-", out / "adaptive.zarr", 10**7, args.workers)
    exact = math.exp(MU + SIGMA**2 / 2)
    err = abs(r["mean"] - exact) / exact
    return [
        "(c) adaptive: until=Converged('y', stat='mean', rtol=0.01), from n=1,000 doubling",
        "",
        f"- stopped at n = {r['n']:,} samples ({r['n'] / 1e5:.2f} × the 10^5 of the rule of thumb) "
        f"in {r['seconds']:.2f} s; its mean {r['mean']:.5f} is {100 * err:.2f}% from the exact "
        f"{exact:.5f} (asked: 1% at 95% confidence)",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
