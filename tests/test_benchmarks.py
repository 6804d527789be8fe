"""Every benchmark also runs once, small, so that it cannot rot."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

# each starts several clusters in processes of their own
pytestmark = pytest.mark.slow


def _bench(name: str, tmp_path, *args: str) -> str:
    out = tmp_path / "performance.md"
    out.write_text(f"# Performance\n\n<!-- {name}:start -->\nold\n<!-- {name}:end -->\n\nkept\n")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / f"{name}.py"),
        "--workers",
        "2",
        "--out",
        str(out),
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "old" not in text and text.endswith("kept\n")
    return text


def test_tem1d_benchmark_smoke(tmp_path):
    pytest.importorskip("joblib")
    if not os.environ.get("CI"):
        pytest.importorskip("daskbatch.models.tem1d", exc_type=ImportError)
    names = "sequential,ceiling,multiprocessing-pool,joblib,dask-threads,daskbatch-running,daskbatch-user"
    text = _bench("tem1d", tmp_path, "--n", "40", "--repeat", "1", "--contenders", names)
    for name in (
        "sequential",
        "ceiling",
        "multiprocessing-pool",
        "joblib",
        "daskbatch-running",
        "daskbatch-user",
    ):
        assert f"| {name} |" in text
    assert "| daskbatch-running |" in text and "yes (0e+00)" in text


def test_overhead_benchmark_smoke(tmp_path):
    text = _bench("overhead", tmp_path, "--n", "200000", "--repeat", "1")
    for name in (
        "numpy-single",
        "dask-running",
        "dask-running-lz4",
        "dask-e2e",
        "daskbatch-running",
        "daskbatch-e2e",
    ):
        assert f"| {name} |" in text
    assert "daskbatch-e2e ÷ dask-e2e = " in text
    assert "| NO |" not in text and "failed" not in text


def test_memory_benchmark_smoke(tmp_path):
    text = _bench("memory", tmp_path, "--sizes", "2000,20000")
    for name in ("daskbatch", "dask", "pool"):
        assert f"| {name} | 20,000 |" in text and f"| {name} | large ÷ small |" in text
    assert "| NO |" not in text and "failed" not in text


def test_chunking_benchmark_smoke(tmp_path):
    text = _bench("chunking", tmp_path, "--scale", "0.005", "--repeat", "1", "--max-blocks", "50")
    for name in ("cheap", "1ms", "varying"):
        assert f"| {name} |" in text


def test_scaling_benchmark_smoke(tmp_path):
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\n<!-- scaling:start -->\nold\n<!-- scaling:end -->\n\nkept\n")
    script = ROOT / "benchmarks" / "scaling.py"
    cmd = [sys.executable, str(script), "--smoke", "--out", str(out)]  # 4 and 8 slots, 16 blocks
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "old" not in text and text.endswith("kept\n")
    for slots in (4, 8):
        assert f"| {slots} | client-map |" in text and f"| {slots} | daskbatch |" in text
    # the projection to 1,000 workers, formulas with the measured numbers
    assert "1 / c = 1 / " in text and "blocks/s" in text
    assert "1,000 workers with 1-second blocks: efficiency = min(1, (1 / c) / (1,000 / 1 s))" in text
    assert "d_min = 1,000 × c / 0.9 = 1,000 × " in text


def test_files_benchmark_smoke(tmp_path):
    """The three examples' benchmark at a few files and sequences, each contender checked."""
    pytest.importorskip("psutil")
    text = _bench("files", tmp_path, "--small", "--repeat", "1")
    for part, names in (
        ("images", ("sequential", "pool-chunksize", "daskbatch", "sequential-100", "daskbatch-100")),
        ("signals", ("sequential", "threadpool", "daskbatch-threads")),
        ("genomes", ("pyarrow-loop", "daskbatch", "pyarrow-loop+1Mb", "daskbatch+1Mb")),
    ):
        for name in names:
            assert f"| {part} | {name} |" in text
    assert "| NO |" not in text and "failed" not in text
    assert "images: daskbatch ÷ pool-chunksize = " in text
    assert "genomes+1Mb: largest peak RSS of any daskbatch process = " in text


def test_commit_benchmark_smoke():
    script = ROOT / "benchmarks" / "commit.py"
    r = subprocess.run(
        [sys.executable, str(script), "--blocks", "20"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "format 2: write_block median" in r.stdout and "format 1: write_block median" in r.stdout


@pytest.mark.slurm
def test_slurm_overhead_benchmark_smoke(slurm, tmp_path):
    """On the test SLURM (its SLURM_CONF): local and SLURM runs, both stores identical."""
    script = ROOT / "benchmarks" / "slurm_overhead.py"
    out = tmp_path / "perf.md"
    out.write_text("<!-- slurm-overhead:start -->\nold\n<!-- slurm-overhead:end -->\n")
    r = subprocess.run(
        [sys.executable, str(script), "--n", "100", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=slurm.env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "old" not in text
    for row in (
        "| local cluster, started in the call |",
        "| SLURM: the sweep on the 2 running workers alone |",
    ):
        assert row in text


def test_reductions_benchmark_smoke(tmp_path):
    text = _bench("reductions", tmp_path, "--small", "--repeat", "1")
    assert "totals identical: yes" in text and "(b) Monte Carlo" in text and "(c) adaptive" in text
    # a subset of the parts is printed, never written over the others' figures
    out = tmp_path / "performance.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reductions.py"), "--small", "--repeat", "1"]
    r = subprocess.run(
        [*cmd, "--parts", "adaptive", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and "not written into" in r.stdout
    assert out.read_text() == text
