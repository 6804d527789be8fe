"""Batches of files and a big table: the three shipped examples against the scripts their users write.

Every contender runs in a process of its own, its process tree sampled for each
process's peak resident memory; the time is that of the job inside it (pool or
cluster started, every file or row computed, the results written), imports apart.
Medians of ``--repeat`` rounds, the contenders of a part one after the other in each
round. Results are checked against the sequential contender of the part.

(a) images (``examples/images``): curvature of 300 PGM images, 2 % of them broken.
    ``sequential`` (a loop, results to two CSV files as the users' script writes
    them), ``pool-chunksize`` (their best script: ``multiprocessing.Pool`` with
    ``imap_unordered(..., chunksize=5)``, one process per worker), ``daskbatch``
    (``daskbatch.run`` with its defaults, ``db.Files``, into a Zarr store). Then a
    100-image job: ``sequential-100`` against ``daskbatch-100``.
(b) signals (``examples/signals``): two batches of 200 captures. ``sequential``,
    ``threadpool`` (``ThreadPoolExecutor`` and ``as_completed``, the users' script),
    ``daskbatch-threads`` (the spec files' ``cluster="threads"``: the kernel is
    declared thread-safe), batch A then batch B.
(c) genomes (``examples/genomes``): codon counts of 20,000 sequences of 300 to
    1,000,000 bases (about 304 million) from one Parquet file. ``pyarrow-loop`` (a
    loop over the row groups with ``pyarrow.parquet.ParquetFile.read_row_group``,
    the counts gathered and saved with numpy) and ``daskbatch`` (``db.Table(path)``,
    defaults); then both again with one more 1,000,000-base sequence (``+1Mb``).

The targets of the issue are printed against the figures: images and signals at
most 1.1 × the users' best Pool / ThreadPool script; the 100-image job at most
1.2 × a sequential loop; genomes under 1 GB of peak memory in every process and at
most 1.5 × the pyarrow loop's time.

    python benchmarks/files.py                       # full size: a few minutes
    python benchmarks/files.py --parts genomes --repeat 1
    python benchmarks/files.py --small --repeat 1    # a few files and rows (the smoke test)

Prints the table and writes it into docs/performance.md (between the files markers)
unless --no-write.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tem1d import THREAD_LIMITS, run_measured, write_table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PARTS = ("images", "signals", "genomes")
#: contenders of each part, the baseline (the users' best script) first
CONTENDERS = {
    "images": ["sequential", "pool-chunksize", "daskbatch", "sequential-100", "daskbatch-100"],
    "signals": ["sequential", "threadpool", "daskbatch-threads"],
    "genomes": ["pyarrow-loop", "daskbatch", "pyarrow-loop+1Mb", "daskbatch+1Mb"],
}
DESCRIPTIONS = {
    ("images", "sequential"): "a loop over the files, results to two CSV files",
    ("images", "pool-chunksize"): "multiprocessing.Pool, imap_unordered(chunksize=5), then the CSV files",
    ("images", "daskbatch"): "daskbatch.run defaults, db.Files, Zarr store",
    ("images", "sequential-100"): "the loop, 100 images",
    ("images", "daskbatch-100"): "daskbatch.run defaults, 100 images",
    ("signals", "sequential"): "a loop over both batches, a CSV file each",
    ("signals", "threadpool"): "ThreadPoolExecutor + as_completed per batch, a CSV file each",
    ("signals", "daskbatch-threads"): "daskbatch.run per batch, cluster='threads' (thread-safe kernel)",
    ("genomes", "pyarrow-loop"): "ParquetFile.read_row_group loop, counts stacked, np.savez",
    ("genomes", "daskbatch"): "daskbatch.run defaults, db.Table(parquet), Zarr store",
    ("genomes", "pyarrow-loop+1Mb"): "the loop, one more 1,000,000-base sequence",
    ("genomes", "daskbatch+1Mb"): "daskbatch.run defaults, one more 1,000,000-base sequence",
}
FULL = {"images": 300, "images-100": 100, "signals": 200, "genomes": 20_000}
SMALL = {"images": 12, "images-100": 6, "signals": 10, "genomes": 40}
PIXEL_SIZE = 0.65
SAMPLE_RATE = 1e7
GIB = 2**30


# --------------------------------------------------------------------------- the users' scripts


def _image_one(path: str):
    """One image as the users' worker function: the result, or the error as text."""
    from kernel import curvature

    try:
        return path, curvature(path, pixel_size=PIXEL_SIZE), None
    except Exception as e:
        return path, None, f"{type(e).__name__}: {e}"


def _write_images(results: list, out: Path) -> None:
    """The summary CSV and the curvature-arrays CSV of the users' script."""
    out.mkdir(parents=True, exist_ok=True)
    names = ["mean_curvature", "max_curvature", "perimeter", "area", "n_points"]
    with open(out / "summary.csv", "w", newline="") as f, open(out / "arrays.csv", "w", newline="") as g:
        summary, arrays = csv.writer(f), csv.writer(g)
        summary.writerow(["path", *names, "error"])
        arrays.writerow(["path", "curvature"])
        for path, res, err in sorted(results, key=lambda r: r[0]):
            if res is None:
                summary.writerow([path, *([""] * len(names)), err])
                continue
            summary.writerow([path, *(repr(res[n]) for n in names), ""])
            arrays.writerow([path, ";".join(map(repr, res["curvature"].tolist()))])


def _signal_one(path: str):
    from kernel import measure

    try:
        return path, measure(path, sample_rate=SAMPLE_RATE), None
    except Exception as e:
        return path, None, f"{type(e).__name__}: {e}"


def _write_signals(results: list, path: Path) -> None:
    names = ["amplitude", "frequency", "rise_time"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *names, "error"])
        for p, res, err in sorted(results, key=lambda r: r[0]):
            w.writerow([p, *(repr(float(res[n])) if res else "" for n in names), err or ""])


def run_contender(part: str, name: str, data: Path, out: Path, workers: int) -> dict:
    """Runs in a child process; returns the job's seconds."""
    sys.path.insert(0, str(EXAMPLES / part))
    import daskbatch as db

    base = name.split("+")[0].removesuffix("-100")
    if part == "images":
        from kernel import curvature

        paths = sorted(glob.glob(str(data / "*.pgm")))
        t = time.perf_counter()
        if base == "sequential":
            _write_images([_image_one(p) for p in paths], out)
        elif base == "pool-chunksize":
            import multiprocessing

            with multiprocessing.Pool(workers) as pool:
                results = list(pool.imap_unordered(_image_one, paths, chunksize=5))
            _write_images(results, out)
        else:
            space = db.Files(str(data / "*.pgm"))
            db.run(
                curvature, space, out, constants={"pixel_size": PIXEL_SIZE}, n_workers=workers, progress=False
            )
        return {"seconds": time.perf_counter() - t}
    if part == "signals":
        from kernel import measure

        batches = {b: sorted(glob.glob(str(data / f"batch_{b}" / "*.npy"))) for b in ("a", "b")}
        t = time.perf_counter()
        if base == "sequential":
            out.mkdir(parents=True, exist_ok=True)
            for b, paths in batches.items():
                _write_signals([_signal_one(p) for p in paths], out / f"batch_{b}.csv")
        elif base == "threadpool":
            from concurrent.futures import ThreadPoolExecutor, as_completed

            out.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(max_workers=workers) as ex:
                for b, paths in batches.items():
                    futures = [ex.submit(_signal_one, p) for p in paths]
                    _write_signals([f.result() for f in as_completed(futures)], out / f"batch_{b}.csv")
        else:
            out.mkdir(parents=True, exist_ok=True)
            for b in batches:
                space = db.Files(str(data / f"batch_{b}" / "*.npy"))
                constants = {"sample_rate": SAMPLE_RATE}
                db.run(
                    measure,
                    space,
                    out / f"batch_{b}.zarr",
                    cluster="threads",
                    n_workers=workers,
                    constants=constants,
                    progress=False,
                )
        return {"seconds": time.perf_counter() - t}
    if part == "genomes":
        from kernel import count_codons

        t = time.perf_counter()
        if base == "pyarrow-loop":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(data)
            ids, counts, totals, gc = [], [], [], []
            for i in range(pf.num_row_groups):
                table = pf.read_row_group(i, columns=["seq_id", "seq"])
                seqs = table.column("seq").to_pylist()
                for seq_id, seq in zip(table.column("seq_id").to_pylist(), seqs, strict=True):
                    res = count_codons(seq)
                    ids.append(seq_id)
                    counts.append(res["codons"])
                    totals.append(res["n_codons"])
                    gc.append(res["gc_content"])
                del table
            np.savez(out, seq_id=np.array(ids), codons=np.stack(counts), n_codons=totals, gc_content=gc)
        else:
            db.run(count_codons, db.Table(str(data)), out, n_workers=workers, progress=False)
        return {"seconds": time.perf_counter() - t}
    raise SystemExit(f"unknown part {part!r}")


# --------------------------------------------------------------------------- checks


def _store_column(store: Path, name: str, key: str = "path") -> dict[str, float]:
    import daskbatch as db

    ds = db.open(store)
    keys = [Path(str(p)).name for p in ds[key].values]
    ok = ds.status.values == int(db.STATUS.ok)
    values = ds[name].values
    return {k: float(v) for k, v, good in zip(keys, values, ok, strict=True) if good}


def _csv_column(path: Path, name: str) -> dict[str, float]:
    with open(path) as f:
        return {Path(r["path"]).name: float(r[name]) for r in csv.DictReader(f) if r[name] != ""}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(np.isclose(a[k], b[k], rtol=1e-12, atol=0) for k in a)


def check(part: str, name: str, out: Path, reference: Path) -> bool:
    """The contender's results equal the sequential contender's."""
    if part == "images":
        ref = _csv_column(reference / "summary.csv", "mean_curvature")
        if name.startswith("daskbatch"):
            return _same(_store_column(out, "mean_curvature"), ref)
        return _same(_csv_column(out / "summary.csv", "mean_curvature"), ref)
    if part == "signals":
        good = True
        for b in ("a", "b"):
            ref = _csv_column(reference / f"batch_{b}.csv", "rise_time")
            if name.startswith("daskbatch"):
                got = _store_column(out / f"batch_{b}.zarr", "rise_time")
            else:
                got = _csv_column(out / f"batch_{b}.csv", "rise_time")
            good = good and _same(got, ref)
        return good
    ref = np.load(reference)
    if name.startswith("daskbatch"):
        import daskbatch as db

        ds = db.open(out)
        ids = [str(x) for x in ds.seq_id.values]
        return bool(
            (ds.status.values == int(db.STATUS.ok)).all()
            and ids == ref["seq_id"].tolist()
            and np.array_equal(ds.codons.values, ref["codons"])
        )
    got = np.load(out)
    return bool(np.array_equal(got["codons"], ref["codons"]) and np.array_equal(got["seq_id"], ref["seq_id"]))


# --------------------------------------------------------------------------- the harness


def _make_data(tmp: Path, part: str, sizes: dict[str, int]) -> dict[str, Path]:
    """Runs the example's make_data.py as a user does; returns the data of each contender."""
    script = str(EXAMPLES / part / "make_data.py")

    def make(*args: str) -> None:
        subprocess.run([sys.executable, script, *args], check=True, stdout=subprocess.DEVNULL)

    if part == "images":
        make(str(tmp / "images"), "--n", str(sizes["images"]))
        make(str(tmp / "images-100"), "--n", str(sizes["images-100"]))
        full, small = tmp / "images", tmp / "images-100"
        return {n: (small if n.endswith("-100") else full) for n in CONTENDERS[part]}
    if part == "signals":
        make(str(tmp / "signals" / "batch_a"), "--n", str(sizes["signals"]))
        make(str(tmp / "signals" / "batch_b"), "--n", str(sizes["signals"]), "--batch", "B")
        return dict.fromkeys(CONTENDERS[part], tmp / "signals")
    make(str(tmp / "genomes"), "--n", str(sizes["genomes"]))
    make(str(tmp / "genomes-long"), "--n", str(sizes["genomes"]), "--add-long", "1")
    plain, long = tmp / "genomes" / "sequences.parquet", tmp / "genomes-long" / "sequences.parquet"
    return {n: (long if n.endswith("+1Mb") else plain) for n in CONTENDERS[part]}


def _out_path(tmp: Path, part: str, name: str) -> Path:
    if name.startswith("daskbatch") and part != "signals":
        return tmp / "out" / f"{part}-{name}.zarr"
    if part == "genomes":
        return tmp / "out" / f"{part}-{name}.npz"
    return tmp / "out" / f"{part}-{name}"


def _run_child(part: str, name: str, data: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if out.is_file():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--workers", str(workers), "--child", part, name, str(data), str(out)]
    code, stdout, mem = run_measured(cmd, cwd=out.parent, env={**os.environ, **THREAD_LIMITS})
    if code != 0:
        return {"error": f"exit {code}"}
    driver = mem.peaks.get(mem.root_pid, 0)
    # processes seen only as they ended (no memory left to read) are not counted
    others = [v for pid, v in mem.peaks.items() if pid != mem.root_pid and v > 0]
    info = json.loads(stdout.strip().splitlines()[-1])
    return {
        **info,
        "driver": driver,
        "other": max(others, default=0),
        "others": sorted(others, reverse=True),
        "n_procs": 1 + len(others),
    }


def _baseline(part: str, name: str) -> str:
    """The users' script on the same data, which ``name`` is measured against."""
    if part == "genomes":
        return "pyarrow-loop+1Mb" if name.endswith("+1Mb") else "pyarrow-loop"
    if part == "signals":
        return "threadpool"
    return "sequential-100" if name.endswith("-100") else "pool-chunksize"


def _reference(part: str, name: str) -> str:
    """The contender whose results ``name``'s are checked against: the loop on the same data."""
    if part == "genomes":
        return "pyarrow-loop+1Mb" if name.endswith("+1Mb") else "pyarrow-loop"
    return "sequential-100" if name.endswith("-100") else "sequential"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated: images, signals, genomes")
    p.add_argument("--small", action="store_true", help="a few files and sequences (the smoke test)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", nargs=4, metavar=("PART", "NAME", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        part, name, data, out = args.child
        print(json.dumps(run_contender(part, name, Path(data), Path(out), args.workers)))
        return 0
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts {args.parts!r}: unknown part(s) {unknown}; choose from {list(PARTS)}")
    sizes = SMALL if args.small else FULL
    tmp = Path(tempfile.mkdtemp(prefix="daskbatch-files-"))
    rows: list[dict] = []
    try:
        for part in parts:
            data = _make_data(tmp, part, sizes)
            runs: dict[str, list[dict]] = {n: [] for n in CONTENDERS[part]}
            for i in range(args.repeat):
                for name in CONTENDERS[part]:
                    runs[name].append(
                        _run_child(part, name, data[name], _out_path(tmp, part, name), args.workers)
                    )
                done = ", ".join(f"{n} {r[-1].get('seconds', float('nan')):.2f} s" for n, r in runs.items())
                print(f"  {part} round {i + 1}: {done}", flush=True)
            for name, results in runs.items():
                bad = [r for r in results if "error" in r]
                if bad:
                    rows.append({"part": part, "name": name, "error": bad[0]["error"]})
                    continue
                ref_out = _out_path(tmp, part, _reference(part, name))
                ok = check(part, name, _out_path(tmp, part, name), ref_out)
                rows.append(
                    {
                        "part": part,
                        "name": name,
                        "seconds": statistics.median(r["seconds"] for r in results),
                        "runs": [r["seconds"] for r in results],
                        "driver": max(r["driver"] for r in results),
                        "other": max(r["other"] for r in results),
                        "n_procs": max(r["n_procs"] for r in results),
                        "others": max((r["others"] for r in results), key=lambda o: o[:1]),
                        "correct": ok,
                    }
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = _table(args, sizes, parts, rows)
    print()
    print(table)
    if not args.no_write and set(parts) >= set(PARTS):
        write_table(Path(args.out), table, "files", "## Batches of files and a big table")
    elif not args.no_write:  # the section holds every part: a subset would drop the others'
        print(f"(not written into {args.out}: only {', '.join(parts)} ran; the section needs every part)")
    return 0


def _ratio(rows: list[dict], part: str, a: str, b: str) -> float | None:
    got = {r["name"]: r for r in rows if r["part"] == part and "seconds" in r}
    return got[a]["seconds"] / got[b]["seconds"] if a in got and b in got else None


def _target(text: str, value: float | None, limit: float) -> str:
    if value is None:
        return f"- {text}: not measured (a contender failed)"
    return f"- {text} = {value:.2f} (target ≤ {limit}: {'met' if value <= limit else 'NOT met'})"


def _table(args, sizes: dict[str, int], parts: list[str], rows: list[dict]) -> str:
    what = {
        "images": f"{sizes['images']} images (and a {sizes['images-100']}-image job)",
        "signals": f"2 × {sizes['signals']} captures",
        "genomes": f"{sizes['genomes']:,} sequences",
    }
    head = (
        f"{'; '.join(what[p] for p in parts)}; {args.workers} workers; medians of {args.repeat} "
        f"rounds; `python benchmarks/files.py{' --small' if args.small else ''}"
        f"{'' if args.parts == ','.join(PARTS) else ' --parts ' + args.parts}"
        f"{'' if args.repeat == 3 else f' --repeat {args.repeat}'}`\n\n"
    )
    lines = [
        "| part | contender | what | seconds | ÷ users' script | peak RSS, driver | peak RSS, largest other "
        "| processes | correct |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for part in parts:
        for r in (r for r in rows if r["part"] == part):
            desc = DESCRIPTIONS[(part, r["name"])]
            if "error" in r:
                lines.append(f"| {part} | {r['name']} | {desc} | failed | | | | | {r['error']} |")
                continue
            ratio = _ratio(rows, part, r["name"], _baseline(part, r["name"]))
            ratio = "-" if ratio is None else f"{ratio:.2f}"
            other = f"{r['other'] / 2**20:,.0f} MB" if r["n_procs"] > 1 else "-"
            lines.append(
                f"| {part} | {r['name']} | {desc} | {r['seconds']:.2f} | {ratio} | "
                f"{r['driver'] / 2**20:,.0f} MB | {other} | {r['n_procs']} | "
                f"{'yes' if r['correct'] else 'NO'} |"
            )
    targets = []
    if "images" in parts:
        targets.append(
            _target(
                "images: daskbatch ÷ pool-chunksize",
                _ratio(rows, "images", "daskbatch", "pool-chunksize"),
                1.1,
            )
        )
        targets.append(
            _target(
                f"images, {sizes['images-100']}-image job: daskbatch-100 ÷ sequential-100",
                _ratio(rows, "images", "daskbatch-100", "sequential-100"),
                1.2,
            )
        )
    if "signals" in parts:
        targets.append(
            _target(
                "signals: daskbatch-threads ÷ threadpool",
                _ratio(rows, "signals", "daskbatch-threads", "threadpool"),
                1.1,
            )
        )
    if "genomes" in parts:
        for suffix in ("", "+1Mb"):
            targets.append(
                _target(
                    f"genomes{suffix}: daskbatch{suffix} ÷ pyarrow-loop{suffix}",
                    _ratio(rows, "genomes", f"daskbatch{suffix}", f"pyarrow-loop{suffix}"),
                    1.5,
                )
            )
            got = [
                r
                for r in rows
                if r["part"] == "genomes" and r["name"] == f"daskbatch{suffix}" and "seconds" in r
            ]
            if got:
                peak = max(got[0]["driver"], got[0]["other"])
                targets.append(
                    f"- genomes{suffix}: largest peak RSS of any daskbatch process = {peak / 2**20:,.0f} MB "
                    f"(target < 1,024 MB: {'met' if peak < GIB else 'NOT met'})"
                )
        for r in rows:
            if r["part"] == "genomes" and "seconds" in r:
                others = "".join(f", {v / 2**20:,.0f}" for v in r["others"])
                targets.append(
                    f"- genomes, {r['name']}: peak RSS of every process (MB): driver "
                    f"{r['driver'] / 2**20:,.0f}{'; others' + others[1:] if others else ''}"
                )
        plain, long = (
            next((r for r in rows if r["part"] == "genomes" and r["name"] == n and "seconds" in r), None)
            for n in ("daskbatch", "daskbatch+1Mb")
        )
        if plain and long:
            a, b = max(plain["driver"], plain["other"]), max(long["driver"], long["other"])
            targets.append(
                "- genomes: one more 1 Mb sequence changes daskbatch's largest peak by "
                f"{(b - a) / 2**20:+,.0f} MB"
            )
    return head + "\n".join(lines) + "\n\nAgainst the targets:\n\n" + "\n".join(targets) + "\n"


if __name__ == "__main__":
    sys.exit(main())
