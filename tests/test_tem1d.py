"""TEM1D, the Fortran core: the kernel, validation against sequential calls, the experiments."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import daskbatch as db

try:
    from daskbatch.models.tem1d import GATE_TIMES, tem1d, tem1d_two_layer
except ImportError as e:  # never in CI, where the library is installed by .ci/run
    if os.environ.get("CI"):
        raise
    pytest.skip(f"TEM1D is not usable here: {e}", allow_module_level=True)

from conftest import ROOT, run_cli
from pytem1d import run_tem1d

RTOL = 1e-10


def _models(n, seed=3):
    rng = np.random.default_rng(seed)
    rho = 10 ** rng.normal(2, 0.5, (n, 3))
    th = np.abs(rng.normal([30, 70], [5, 10], (n, 2))) + 1
    return rho, th


def _sequential(rho, th, **kw):
    return np.stack(
        [
            run_tem1d(r, np.concatenate([[0.0], np.cumsum(t)]), **kw).responses
            for r, t in zip(rho, th, strict=True)
        ]
    )


def test_gate_times_are_the_library_times():
    assert np.allclose(run_tem1d([100, 10], [0, 50]).times, GATE_TIMES, rtol=1e-12, atol=0)


def test_kernel_equals_direct_calls_with_thickness_or_depth_and_options():
    rho, th = _models(3)
    want = _sequential(rho, th, tx_area=1000.0, rx_height=2.0)
    for i in range(3):
        depth = np.concatenate([[0.0], np.cumsum(th[i])])
        assert np.array_equal(
            tem1d(rho[i], thickness=th[i], tx_area=1000.0, rx_height=2.0, state=run_tem1d), want[i]
        )
        assert np.array_equal(
            tem1d(rho[i], depth=depth, tx_area=1000.0, rx_height=2.0, state=run_tem1d), want[i]
        )
    impulse = tem1d(rho[0], thickness=th[0], response_type="impulse", state=run_tem1d)
    assert not np.allclose(impulse, want[0])


@pytest.mark.parametrize("chunk", [7, 40])
def test_parallel_equals_sequential_on_every_scheduler(cluster, tmp_path, chunk):
    """Experiment 3 of the guide: parallel results equal sequential calls to 1e-10."""
    rho, th = _models(120)
    space = db.Table({"resistivity": rho, "thickness": th})
    kw = {"n_workers": 2} if cluster in ("threads", "processes", "local") else {}
    r = db.run(tem1d, space, tmp_path / "t.zarr", cluster=cluster, chunk_size=chunk, progress=False, **kw)
    assert r.samples["ok"] == 120
    got = db.open(tmp_path / "t.zarr").response.values
    want = _sequential(rho, th)
    assert np.max(np.abs(got - want) / np.abs(want)) <= RTOL


def test_invalid_models_fail_alone(store):
    rho, th = _models(10)
    th[4, 0] = -5.0  # depths no longer increase
    r = db.run(
        tem1d, db.Table({"resistivity": rho, "thickness": th}), store, cluster="serial", progress=False
    )
    assert r.samples["ok"] == 9 and r.samples["failed"] == 1
    assert r.errors[0]["sample"] == "sample 4" and "monotonically increasing" in r.errors[0]["error"]


def test_grid_of_two_layer_models(store):
    grid = db.Grid(rho1=np.logspace(1, 3, 3), rho2=np.logspace(0, 2, 2), h1=np.linspace(10, 100, 2))
    db.run(tem1d_two_layer, grid, store, cluster="processes", n_workers=2, progress=False)
    ds = db.open(store)
    assert ds.response.dims == ("rho1", "rho2", "h1", "time")
    assert np.array_equal(ds.time.values, GATE_TIMES)
    want = run_tem1d([grid.axes["rho1"][2], grid.axes["rho2"][1]], [0.0, grid.axes["h1"][1]]).responses
    assert np.array_equal(ds.response.isel(rho1=2, rho2=1, h1=1).values, want)


def test_import_without_the_fortran_runtime_says_what_to_install():
    code = (
        "import ctypes\n"
        "real = ctypes.CDLL\n"
        "def fake(name, *a, **k):\n"
        "    if 'gfortran' in str(name):\n"
        "        raise OSError(name + ': cannot open shared object file')\n"
        "    return real(name, *a, **k)\n"
        "ctypes.CDLL = fake\n"
        "import daskbatch.models.tem1d\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert "apt-get install libgfortran5" in r.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("tem1d_*.toml")))
def test_experiment_spec_files_run_in_test_mode(name, tmp_path):
    spec = tmp_path / name
    spec.write_text((ROOT / "examples" / name).read_text())
    r = run_cli("run", str(spec), "--test", "24", "--cluster", "processes", "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "24 ok" in r.stdout or "total: 24" in r.stdout
    stores = list(Path(tmp_path).glob("*.test.zarr"))
    assert len(stores) == 1
