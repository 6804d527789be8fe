"""The shipped examples (examples/images, signals, genomes), end to end at a small size.

Each test copies an example's folder into tmp_path, makes its data with its own
make_data.py, and runs it as its README says: the real `daskbatch` command in a
subprocess, or its run.py. The numbers are checked against what the data was made
with: the curvature of a disc of radius r is 1 / r, the frequency of a sine is found,
the codon counts equal a plain Python count.
"""

import csv
import importlib.util
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

import daskbatch as db

EXAMPLES = ROOT / "examples"
OK, FAILED = int(db.STATUS.ok), int(db.STATUS.failed)


def _example(name: str, tmp_path: Path) -> Path:
    """A copy of examples/<name> (its code and spec files, no data or stores)."""
    folder = tmp_path / name
    shutil.copytree(
        EXAMPLES / name,
        folder,
        ignore=shutil.ignore_patterns("data", "batch_a", "batch_b", "*.zarr", "*.csv", "__pycache__"),
    )
    return folder


def _python(folder: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _load(path: Path, name: str):
    """The module at ``path``, imported under ``name`` (every example's is called kernel.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _truth(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _by_file(ds, name: str) -> dict[str, object]:
    return {Path(str(p)).name: v for p, v in zip(ds.path.values, ds[name].values, strict=True)}


# --------------------------------------------------------------------------- images


def test_images_example(tmp_path):
    """Test mode, the full run, curvature 1/r of the discs, the CSV and the failures by file."""
    folder = _example("images", tmp_path)
    _python(folder, "make_data.py", "data", "--n", "12", "--bad", "4", "--size", "128")
    truth = _truth(folder / "data" / "truth.csv")
    broken = {f for f, row in truth.items() if row["kind"] not in ("disc", "blob")}
    assert len(broken) == 4

    # test mode: the first 5 files, into a store of its own
    r = run_cli("run", "images.toml", "--test", "5", "--no-progress", cwd=folder)
    assert r.returncode == 0, r.stderr
    test = db.open(folder / "curvature.test.zarr")
    assert test.sizes["sample"] == 5
    assert [Path(str(p)).name for p in test.path.values] == sorted(truth)[:5]

    r = run_cli("run", "images.toml", "--no-progress", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "12 total: 8 ok, 4 failed" in r.stdout
    ds = db.open(folder / "curvature.zarr")
    assert ds.curvature.attrs["units"] == "1/um" and ds.perimeter.attrs["units"] == "um"
    status = _by_file(ds, "status")
    assert {f for f, s in status.items() if s == FAILED} == broken
    assert {f for f, s in status.items() if s == OK} == set(truth) - broken

    pixel = 0.65  # the spec's pixel_size
    mean, peak, perimeter, area = (
        _by_file(ds, k) for k in ("mean_curvature", "max_curvature", "perimeter", "area")
    )
    n_points = _by_file(ds, "n_points")
    discs = [f for f, row in truth.items() if row["kind"] == "disc"]
    assert len(discs) == 2
    for i, p in enumerate(ds.path.values):
        f = Path(str(p)).name
        if f not in discs:
            continue
        r0 = float(truth[f]["r0_px"]) * pixel  # µm
        assert mean[f] == pytest.approx(1 / r0, rel=0.01)
        assert peak[f] == pytest.approx(1 / r0, rel=0.05)
        assert perimeter[f] == pytest.approx(2 * np.pi * r0, rel=0.01)
        assert area[f] == pytest.approx(np.pi * r0**2, rel=0.01)
        # the ragged profile: one value per pixel of arc, all of them 1 / r
        n = int(n_points[f])
        assert n == round(perimeter[f] / pixel)
        profile = ds.curvature.isel(sample=i).values
        assert np.allclose(profile[:n], 1 / r0, rtol=0.05)
        assert np.isnan(profile[n:]).all()
    # the blobs: curvature above and below the disc's of the same perimeter
    for f, row in truth.items():
        if row["kind"] == "blob":
            assert peak[f] > 2 * np.pi / perimeter[f] > 0

    # CSV: one row per image; a failed image has its message and empty cells for the outputs
    r = run_cli("export", "curvature.zarr", "-o", "curvature.csv", cwd=folder)
    assert r.returncode == 0, r.stderr
    with open(folder / "curvature.csv") as f:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(f)}
    assert set(rows) == set(truth)
    for f, row in rows.items():
        if f in broken:
            assert row["mean_curvature"] == row["perimeter"] == row["n_points"] == ""
            assert row["message"]
        else:
            assert float(row["mean_curvature"]) == pytest.approx(mean[f], rel=1e-12)
            assert row["message"] == ""
    messages = {f: rows[f]["message"] for f in broken}
    kinds = {f: truth[f]["kind"] for f in broken}
    expected = {
        "truncated": "truncated image",
        "garbage": "not a binary PGM image",
        "empty": "not a binary PGM image",
        "blank": "no object",
    }
    for f in broken:
        assert expected[kinds[f]] in messages[f]

    # every failure by file, with its message: the command and the DataFrame
    r = run_cli("failures", "curvature.zarr", cwd=folder)
    assert r.returncode == 0, r.stderr
    for f in broken:
        assert f in r.stdout, f"{f} not listed by `daskbatch failures`:\n{r.stdout}"
    failed = db.failures(folder / "curvature.zarr")
    assert {Path(p).name for p in failed["path"]} == broken
    assert all(failed["status"] == "failed")


# --------------------------------------------------------------------------- signals


def test_signals_example(tmp_path):
    """Two batches on threads, their summary, outliers and comparison, against the made values."""
    folder = _example("signals", tmp_path)
    _python(folder, "make_data.py", "batch_a", "--n", "12")
    _python(folder, "make_data.py", "batch_b", "--n", "12", "--batch", "B")
    for batch in ("a", "b"):
        r = run_cli("run", f"batch_{batch}.toml", "--no-progress", cwd=folder)
        assert r.returncode == 0, r.stderr
        assert "on threads" in r.stdout  # the spec's cluster: the kernel is thread-safe
        assert "12 total: 10 ok, 2 failed" in r.stdout
        truth = _truth(folder / f"batch_{batch}" / "truth.csv")
        ds = db.open(folder / f"batch_{batch}.zarr")
        status = _by_file(ds, "status")
        values = {k: _by_file(ds, k) for k in ("amplitude", "frequency", "rise_time")}
        for f, row in truth.items():
            if row["kind"] in ("dead", "truncated"):
                assert status[f] == FAILED
                continue
            assert status[f] == OK
            assert values["amplitude"][f] == pytest.approx(float(row["amplitude"]), rel=0.01)
            # truth.csv: Hz and s; the kernel: kHz and µs
            assert values["frequency"][f] == pytest.approx(float(row["frequency"]) / 1e3, rel=0.001)
            assert values["rise_time"][f] == pytest.approx(float(row["rise_time"]) * 1e6, rel=0.05)
    assert ds.amplitude.attrs["units"] == "V" and ds.rise_time.attrs["units"] == "us"

    r = run_cli("summary", "batch_a.zarr", cwd=folder)
    assert r.returncode == 0, r.stderr
    for text in ("amplitude", "frequency", "rise_time", " V ", " kHz ", " us ", "±"):
        assert text in r.stdout, r.stdout

    # the unit with slow edges is the most extreme outlier of the rise time
    slow = db.outliers(folder / "batch_a.zarr", "rise_time")
    truth = _truth(folder / "batch_a" / "truth.csv")
    first = Path(str(db.open(folder / "batch_a.zarr").path.values[slow["sample"].iloc[0]])).name
    assert truth[first]["kind"] == "slow"

    # batch B: 2 % higher frequency, 10 % slower edges, 1 % lower amplitude
    change = db.compare(folder / "batch_a.zarr", folder / "batch_b.zarr")
    a, b = change["mean a"], change["mean b"]
    assert (b["frequency"] / a["frequency"] - 1) == pytest.approx(0.02, abs=0.01)
    assert (b["amplitude"] / a["amplitude"] - 1) == pytest.approx(-0.01, abs=0.005)
    r = run_cli("compare", "batch_a.zarr", "batch_b.zarr", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "frequency" in r.stdout and "%" in r.stdout


def test_signals_kernel_finds_a_sine(tmp_path):
    """The kernel on threads in Python: the frequency, amplitude and rise time of sines."""
    measure = _load(EXAMPLES / "signals" / "kernel.py", "signals_example_kernel").measure
    assert measure.threadsafe
    rate = 1e7
    t = np.arange(20_000) / rate
    made = {}
    (tmp_path / "sines").mkdir()
    for i, (f, a) in enumerate([(5_000.0, 1.0), (12_345.6, 2.5), (31_000.0, 0.2)]):
        np.save(tmp_path / "sines" / f"sine_{i}.npy", a * np.sin(2 * np.pi * f * t + i))
        made[f"sine_{i}.npy"] = (f, a)
    db.run(
        measure,
        db.Files(tmp_path / "sines" / "*.npy"),
        tmp_path / "sines.zarr",
        cluster="threads",
        constants={"sample_rate": rate},
        progress=False,
    )
    ds = db.open(tmp_path / "sines.zarr")
    for p, f, amp, rise in zip(
        ds.path.values, ds.frequency.values, ds.amplitude.values, ds.rise_time.values, strict=True
    ):
        freq, a = made[Path(str(p)).name]
        assert f * 1e3 == pytest.approx(freq, rel=1e-4)
        assert amp == pytest.approx(2 * a, rel=0.01)
        # a sine rises from 10 % to 90 % of its swing in (asin 0.8 - asin -0.8) / (2 pi f)
        assert rise / 1e6 == pytest.approx(2 * np.arcsin(0.8) / (2 * np.pi * freq), rel=0.02)


# --------------------------------------------------------------------------- genomes


def test_genomes_example(tmp_path):
    """Codon counts of every sequence equal a plain Python count; seq_id is kept as a label."""
    import pyarrow.parquet as pq

    folder = _example("genomes", tmp_path)
    _python(folder, "make_data.py", "data", "--n", "24", "--rows-per-group", "5")
    r = run_cli("run", "codons.toml", "--no-progress", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "24 total: 24 ok" in r.stdout
    ds = db.open(folder / "codons.zarr")
    assert ds.codons.dtype == np.int64 and ds.codons.dims == ("sample", "codon")
    codons = [str(c) for c in ds.codon.values]
    assert codons[:3] == ["AAA", "AAC", "AAG"] and len(set(codons)) == 64

    table = pq.read_table(folder / "data" / "sequences.parquet").to_pydict()
    assert [str(s) for s in ds.seq_id.values] == table["seq_id"]
    lengths = [len(s) for s in table["seq"]]
    assert min(lengths) == 300 and max(lengths) == 1_000_000
    counts = ds.codons.values
    total = Counter()
    for i, seq in enumerate(table["seq"]):
        plain = Counter(seq[j : j + 3] for j in range(0, len(seq) - 2, 3))
        expected = [plain.get(c, 0) for c in codons]
        assert counts[i].tolist() == expected, table["seq_id"][i]
        assert int(ds.n_codons[i]) == sum(expected)
        total.update({c: plain.get(c, 0) for c in codons})
        if "N" in seq:  # a gap's codons are skipped
            assert sum(expected) < len(seq) // 3
    # the totals over every sequence: one reduction over the store
    assert ds.codons.sum("sample").values.tolist() == [total[c] for c in codons]


# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize(
    ("name", "make", "expect"),
    [
        ("images", [["data", "--n", "6", "--bad", "1", "--size", "96"]], "embryo_0003.pgm failed"),
        (
            "signals",
            [["batch_a", "--n", "6"], ["batch_b", "--n", "6", "--batch", "B"]],
            "outliers of the rise time",
        ),
        ("genomes", [["data", "--n", "8"]], "RSCU of leucine"),
    ],
)
def test_run_scripts(tmp_path, name, make, expect):
    """Each example's run.py, as its README shows it."""
    folder = _example(name, tmp_path)
    for args in make:
        _python(folder, "make_data.py", *args)
    out = _python(folder, "run.py")
    assert expect in out, out
