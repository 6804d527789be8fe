"""What SLURM costs: the same TEM1D sweep on the local cluster and on SLURM worker jobs.

One command, one run, the same cores: N TEM1D models (the Monte Carlo design of
benchmarks/tem1d.py) with the shipped kernel, through ``daskbatch.run``

- on ``cluster="local"`` with 2 worker processes, started and stopped in the call;
- on ``daskbatch.JobQueue("slurm", jobs=2, cores=1, processes=1)``: two SLURM jobs of
  one worker each, submitted, waited for and cancelled in the call (end to end);
- the same two jobs started first (the queue wait and the workers' start, shown
  apart), then the sweep on them (the compute alone).

Both stores are checked identical. SLURM must be running: the one named by
``SLURM_CONF`` if ``sinfo`` answers, otherwise (as root, with slurm-wlm and munge
installed) the one-node SLURM of the test suite is started for the run.

    python benchmarks/slurm_overhead.py               # N = 20,000
    python benchmarks/slurm_overhead.py --n 200 --no-write

The table is printed and written into docs/performance.md (between the
slurm-overhead markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tem1d import make_models, write_table  # noqa: E402

#: one block size for every run, so that the stores can be compared byte for byte
CHUNK = 500


@contextlib.contextmanager
def slurm_cluster() -> Iterator[None]:
    """A SLURM to submit to: the running one, or the test suite's one-node SLURM."""
    running = os.environ.get("SLURM_CONF") and shutil.which("sinfo")
    if running and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        yield
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from slurm_fixture import running_slurm
    except ImportError as e:  # pragma: no cover - pytest missing
        raise SystemExit(f"cannot start the test SLURM ({e}); set SLURM_CONF to a running SLURM") from e
    with running_slurm():
        yield


def _jobqueue(logs: Path):
    import daskbatch as db

    return db.JobQueue(
        "slurm",
        cores=1,
        processes=1,
        memory="2GB",
        jobs=2,
        walltime="00:30:00",
        extra={"log_directory": str(logs)},
    )


def measure(n: int, folder: Path) -> dict[str, float]:
    import daskbatch as db
    from daskbatch.cluster import start_executor
    from daskbatch.executors import parse_cluster
    from daskbatch.models.tem1d import tem1d
    from daskbatch.testing import assert_stores_identical

    rho, depth = make_models(n)
    space = db.Table({"resistivity": rho, "depth": depth})
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    figures: dict[str, float] = {}

    t = time.perf_counter()
    local = folder / "local.zarr"
    db.run(tem1d, space, local, cluster="local", n_workers=2, progress=False, chunk_size=CHUNK)
    figures["local"] = time.perf_counter() - t

    t = time.perf_counter()
    db.run(tem1d, space, folder / "slurm.zarr", cluster=_jobqueue(logs), progress=False, chunk_size=CHUNK)
    figures["slurm"] = time.perf_counter() - t

    t = time.perf_counter()
    with start_executor(parse_cluster(_jobqueue(logs), None)) as ex:
        ex.client.wait_for_workers(2, timeout=600)
        figures["slurm-up"] = time.perf_counter() - t
        t = time.perf_counter()
        db.run(tem1d, space, folder / "running.zarr", cluster=ex.client, progress=False, chunk_size=CHUNK)
        figures["slurm-compute"] = time.perf_counter() - t

    assert_stores_identical(folder / "local.zarr", folder / "slurm.zarr")
    assert_stores_identical(folder / "local.zarr", folder / "running.zarr")
    return figures


def table(n: int, f: dict[str, float]) -> str:
    rows = [
        ("local cluster, started in the call", f["local"]),
        ("SLURM, 2 jobs submitted, waited for and cancelled in the call", f["slurm"]),
        ("SLURM: the 2 jobs' queue wait and workers' start alone", f["slurm-up"]),
        ("SLURM: the sweep on the 2 running workers alone", f["slurm-compute"]),
    ]
    lines = [
        f"N = {n:,} TEM1D models, the shipped kernel, 2 worker processes either way (one per "
        f"core), blocks of {CHUNK}; the stores identical; `python benchmarks/slurm_overhead.py"
        + (f" --n {n}" if n != 20000 else "")
        + "`",
        "",
        "| run | seconds | models/s | ÷ local |",
        "|---|---:|---:|---:|",
    ]
    for what, s in rows:
        rate = "-" if "queue wait" in what else f"{n / s:,.0f}"
        lines.append(f"| {what} | {s:.2f} | {rate} | {s / f['local']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="models (default 20000)")
    p.add_argument("--out", default=str(HERE.parent / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    with slurm_cluster(), tempfile.TemporaryDirectory(prefix="daskbatch-slurm-bench-") as tmp:
        figures = measure(args.n, Path(tmp))
    text = table(args.n, figures)
    print(text)
    if not args.no_write:
        write_table(Path(args.out), text + "\n", "slurm-overhead", "### SLURM against the local cluster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
