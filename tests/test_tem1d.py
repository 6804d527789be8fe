"""TEM1D, the Fortran core: the kernel, validation against sequential calls, the experiments."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daskbatch as db

try:
    from daskbatch.models.tem1d import GATE_TIMES, Library, library, tem1d, tem1d_two_layer
except ImportError as e:  # never in CI, where the library is installed by .ci/run
    if os.environ.get("CI"):
        raise
    pytest.skip(f"TEM1D is not usable here: {e}", allow_module_level=True)

from conftest import ROOT
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
    for state in (library(), run_tem1d):
        for i in range(3):
            depth = np.concatenate([[0.0], np.cumsum(th[i])])
            assert np.array_equal(
                tem1d(rho[i], thickness=th[i], tx_area=1000.0, rx_height=2.0, state=state), want[i]
            )
            assert np.array_equal(
                tem1d(rho[i], depth=depth, tx_area=1000.0, rx_height=2.0, state=state), want[i]
            )
    impulse = tem1d(rho[0], thickness=th[0], response_type="impulse", state=library())
    assert not np.allclose(impulse, want[0])
    assert np.array_equal(
        impulse, run_tem1d(rho[0], [0.0, *np.cumsum(th[0])], response_type="impulse").responses
    )


def _fresh_run_tem1d(tmp_path, models, **kw):
    """References from ``run_tem1d`` in a fresh process that computes only these."""
    data, out = tmp_path / "in.npz", tmp_path / "out.npy"
    np.savez(data, **{f"m{i}_{k}": v for i, m in enumerate(models) for k, v in zip("rd", m, strict=True)})
    code = (
        "import json, sys, numpy as np\n"
        "from pytem1d import run_tem1d\n"
        "z = np.load(sys.argv[1])\n"
        "kw = json.loads(sys.argv[3])\n"
        "n = len(z.files) // 2\n"
        "np.save(sys.argv[2], np.stack([run_tem1d(z[f'm{i}_r'], z[f'm{i}_d'], **kw).responses "
        "for i in range(n)]))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(data), str(out), json.dumps(kw)], check=True)
    return np.load(out)


def _layered(rng, nlay):
    rho = 10 ** rng.uniform(-1, 4, nlay)
    return rho, np.concatenate([[0.0], np.cumsum(rng.uniform(0.1, 80.0, nlay - 1))])


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 40),  # layers: a short model after a long one must not see its layers
            st.integers(0, 2**32 - 1),
            st.sampled_from(["step", "impulse"]),
            st.floats(1.0, 5000.0),
            st.floats(0.0, 30.0),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_direct_call_gives_run_tem1ds_numbers_bit_for_bit(calls):
    # central loops only: this process's run_tem1d must keep one geometry (see the next test)
    lib = library()
    for nlay, seed, kind, area, height in calls:
        rho, top = _layered(np.random.default_rng(seed), nlay)
        kw = {"tx_area": area, "tx_height": height, "response_type": kind}
        assert np.array_equal(lib.response(rho, top, **kw), run_tem1d(rho, top, **kw).responses)
    assert lib.direct == {True: True}


def test_central_and_offset_loops_mixed_in_one_process_give_a_fresh_processs_numbers(tmp_path):
    """TEM1D keeps the Hankel filter of its first call's geometry only; pytem1d alone
    gets the other geometry wrong afterwards. Each geometry has its own library copy here."""
    rng = np.random.default_rng(11)
    models = [_layered(rng, n) for n in (3, 1, 7, 2, 30, 3)]
    central = _fresh_run_tem1d(tmp_path, models)
    offset = _fresh_run_tem1d(tmp_path, models, tx_rx_separation=40.0)
    assert np.max(np.abs(offset - central) / np.abs(central)) > 1  # two different answers
    lib = Library()
    for i, (rho, top) in enumerate(models):  # alternate: offset first, then central, ...
        assert np.array_equal(lib.response(rho, top, tx_rx_separation=40.0), offset[i])
        assert np.array_equal(lib.response(rho, top), central[i])
    assert lib.direct == {True: True, False: True}


@pytest.mark.parametrize("cluster", ["serial", "processes"])
def test_a_sweep_over_offset_loops_equals_a_fresh_processs_run_tem1d(tmp_path, cluster):
    """The separation is a swept parameter here: each worker mixes both geometries."""
    rng = np.random.default_rng(5)
    models = [_layered(rng, 3) for _ in range(12)]
    rho = np.stack([m[0] for m in models])
    depth = np.stack([m[1] for m in models])
    separation = np.array([40.0, 0.0, 25.0] * 4)
    space = db.Table({"resistivity": rho, "depth": depth, "tx_rx_separation": separation})
    store = tmp_path / "s.zarr"
    kw = {"n_workers": 2} if cluster == "processes" else {}
    r = db.run(tem1d, space, store, cluster=cluster, chunk_size=4, progress=False, **kw)
    assert r.samples["ok"] == 12
    got = db.open(store).response.values
    for sep in (0.0, 40.0, 25.0):
        rows = np.flatnonzero(separation == sep)
        want = _fresh_run_tem1d(tmp_path, [models[i] for i in rows], tx_rx_separation=sep)
        assert np.array_equal(got[rows], want), sep


@pytest.mark.parametrize(
    ("rho", "top", "kw", "message"),
    [
        ([100.0, -5.0], [0.0, 20.0], {}, "resistivity[1] = -5.0: resistivities must be positive"),
        ([100.0, np.nan], [0.0, 20.0], {}, "resistivity[1] = nan"),
        ([100.0, 10.0], [1.0, 20.0], {}, "depth[0] = 1.0: the first layer starts at the surface"),
        ([100.0, 10.0, 5.0], [0.0, 20.0, 20.0], {}, "depth[2] = 20.0 after depth[1] = 20.0"),
        ([100.0, 10.0], [0.0, 20.0, 30.0], {}, "depth has shape (3,) but resistivity (2,)"),
        ([[100.0, 10.0]], [[0.0, 20.0]], {}, "resistivity must be a 1-D array"),
        (np.full(513, 10.0), np.arange(513.0), {}, "resistivity has 513 layers; TEM1D takes at most 512"),
        ([100.0], [0.0], {"tx_area": -1.0}, "tx_area=-1.0: the transmitter loop's area must be positive"),
        ([100.0], [0.0], {"tx_area": "big"}, "tx_area='big' is not a number"),
        ([100.0], [0.0], {"response_type": "ramp"}, "response_type='ramp' is not one of"),
        ([100.0], [0.0], {"response_type": "convolved"}, "'convolved' needs a waveform"),
    ],
)
def test_bad_models_and_options_are_named_with_their_values(rho, top, kw, message):
    with pytest.raises(ValueError) as e:
        library().response(rho, top, **kw)
    assert message in str(e.value)


def test_a_pytem1d_that_calls_fortran_differently_is_called_through_run_tem1d(monkeypatch):
    rho, th = _models(2)
    top = np.concatenate([[0.0], np.cumsum(th[0])])
    lib = Library()
    real_call = Library._call
    monkeypatch.setattr(Library, "_call", lambda self, *a: real_call(self, *a) * 2)  # a wrong mapping
    with pytest.warns(RuntimeWarning, match="using pytem1d.run_tem1d"):
        got = lib.response(rho[0], top)
    assert lib.direct == {True: False}
    assert np.array_equal(got, run_tem1d(rho[0], top).responses)


def test_parallel_equals_sequential_on_every_scheduler(cluster, tmp_path):
    """Experiment 3 of the guide: parallel results equal sequential calls to 1e-10,
    in 18 blocks (the last of one sample)."""
    _parallel_equals_sequential(cluster, tmp_path, chunk=7)


def test_parallel_equals_sequential_in_larger_blocks(tmp_path):
    """The same in 3 blocks, on threads (one library for the whole run); the other
    schedulers are tested with the small blocks above."""
    _parallel_equals_sequential("threads", tmp_path, chunk=40)


def _parallel_equals_sequential(cluster: str, tmp_path: Path, chunk: int) -> None:
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
    db.run(tem1d_two_layer, grid, store, cluster="serial", progress=False)
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
def test_experiment_spec_files_run_in_test_mode(name, tmp_path, cli):
    spec = tmp_path / name
    spec.write_text((ROOT / "examples" / name).read_text())
    r = cli("run", str(spec), "--test", "24", "--cluster", "processes", "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "24 ok" in r.stdout or "total: 24" in r.stdout
    stores = list(Path(tmp_path).glob("*.test.zarr"))
    assert len(stores) == 1


def test_where_no_library_copy_can_load_the_second_geometry_raises(monkeypatch):
    """A TMPDIR (and home cache) that cannot hold libraries: pytem1d's own library serves
    the first geometry; the other one is refused rather than computed wrong."""
    import daskbatch.models.tem1d as tm

    real = ctypes.CDLL

    def noexec(name, *a, **k):
        if "daskbatch-tem1d-" in str(name):
            raise OSError(f"{name}: failed to map segment from shared object")
        return real(name, *a, **k)

    monkeypatch.setattr(ctypes, "CDLL", noexec)
    monkeypatch.setattr(tm, "_shared_geometry", [])
    rho, th = _models(1)
    top = np.concatenate([[0.0], np.cumsum(th[0])])
    lib = Library()
    assert np.array_equal(lib.response(rho[0], top), run_tem1d(rho[0], top).responses)
    with pytest.raises(RuntimeError, match="could not load a second copy.*failed to map segment.*TMPDIR"):
        lib.response(rho[0], top, tx_rx_separation=40.0)


def test_the_kernels_do_not_import_pytem1d_or_its_matplotlib():
    """Workers load only the compiled library: importing pytem1d costs each process
    0.4-0.6 s and ~28 MB (it imports matplotlib.pyplot)."""
    code = (
        "import sys\n"
        "import daskbatch.models.tem1d as t\n"
        "r = t.forward([100.0, 10.0], [50.0]), t.forward([100.0, 10.0], [50.0], tx_rx_separation=20.0)\n"
        "assert t.library().direct == {True: True, False: True}, t.library().direct\n"
        "print(sorted(m for m in ('pytem1d', 'matplotlib') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
