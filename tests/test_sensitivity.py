"""Sobol sensitivity: the Saltelli design (SALib's rows, drawn block by block, growing with
n) and sobol_indices read back from real stores, checked on the Ishigami function."""

from __future__ import annotations

import tomllib
import warnings

import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import DaskbatchError, SpaceError
from daskbatch.sensitivity import Saltelli, sobol_indices
from daskbatch.space import space_from_spec

A, B = 7.0, 0.1
NAMES = ["x1", "x2", "x3"]


def _ishigami(x1, x2, x3):
    return np.sin(x1) + A * np.sin(x2) ** 2 + B * x3**4 * np.sin(x1)


def _analytic() -> dict[str, np.ndarray]:
    """Ishigami's indices for x uniform on [-pi, pi]."""
    pi4, pi8 = np.pi**4, np.pi**8
    v1 = B * pi4 / 5 + B**2 * pi8 / 50 + 0.5
    v2 = A**2 / 8
    v13 = B**2 * pi8 / 18 - B**2 * pi8 / 50
    v = v1 + v2 + v13
    return {"S1": np.array([v1, v2, 0.0]) / v, "ST": np.array([v1 + v13, v2, v13]) / v, "S13": v13 / v}


@db.kernel(
    outputs={
        "y": db.Output(),
        "curve": db.Output(dims=("gate",), shape=(5,), coords={"gate": [1e-5, 2e-5, 4e-5, 8e-5, 1.6e-4]}),
    },
    per_sample=False,
)
def ishigami(x1, x2, x3):
    y = _ishigami(x1, x2, x3)
    curve = np.stack([np.sin(x1), A * np.sin(x2) ** 2, y, 3 * y, np.ones_like(y)], axis=-1)
    return {"y": y, "curve": curve}


def _design(n: int, **kw) -> Saltelli:
    return Saltelli({k: db.Uniform(-np.pi, np.pi) for k in NAMES}, n=n, seed=11, **kw)


def _run(space, store, **kw):
    return db.run(ishigami, space, store, cluster="serial", progress=False, **kw)


def _close(si, key: str, expected, k: int | None = None) -> None:
    est = si[key].values if k is None else si[key].values[:, k]
    conf = si[f"{key}_conf"].values if k is None else si[f"{key}_conf"].values[:, k]
    expected = np.asarray(expected, dtype=float)
    assert np.all(np.abs(est - expected) <= 3 * conf + 1e-12), (key, k, est, conf, expected)


# --------------------------------------------------------------------------- the design


@pytest.mark.parametrize("second_order", [False, True])
def test_the_design_is_salibs_sample_row_for_row(second_order):
    from SALib.sample.sobol import sample

    design = Saltelli({k: db.Uniform(0, 1) for k in NAMES}, n=64, seed=5, second_order=second_order)
    got = design.block((slice(0, design.size),))
    x = np.stack([got[k] for k in NAMES], axis=1)
    problem = {"num_vars": 3, "names": NAMES, "bounds": [[0, 1]] * 3}
    ref = sample(problem, 64, calc_second_order=second_order, seed=np.random.default_rng(5))
    assert design.size == 64 * (8 if second_order else 5) == ref.shape[0]
    assert np.array_equal(x, ref)


def test_a_parameter_with_several_values_is_one_group_and_the_rows_cross_exactly():
    design = Saltelli(
        {"a": db.Uniform(0, 1, size=2), "b": db.Normal(0, 1), "c": db.LogUniform(1, 10)},
        n=16,
        seed=3,
        second_order=True,
    )
    R = 2 * 3 + 2
    assert design.rows == R and design.size == 16 * R and design.parameters == ["a", "b", "c"]
    v = {k: x.reshape(16, R, *x.shape[1:]) for k, x in design.block((slice(0, design.size),)).items()}
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        ab, ba = 1 + i, 1 + 3 + i
        for other in names:
            a_rows, b_rows = v[other][:, 0], v[other][:, R - 1]
            # AB^(i): A with parameter i from B; BA^(i): B with parameter i from A
            assert np.array_equal(v[other][:, ab], b_rows if other == name else a_rows)
            assert np.array_equal(v[other][:, ba], a_rows if other == name else b_rows)
    assert not np.any(v["a"][:, 0] == v["a"][:, R - 1])  # A and B are different points


def test_a_block_drawn_alone_is_those_rows_of_the_whole_design():
    design = _design(32, second_order=True)
    whole = design.block((slice(0, design.size),))
    lazy = design.to_dask(((100, 100, 56),))
    for start, stop in [(0, 1), (3, 17), (7, 8), (95, 160), (255, 256), (0, 256)]:
        part = design.block((slice(start, stop),))
        for k in NAMES:
            assert np.array_equal(part[k], whole[k][start:stop]), (start, stop, k)
            assert np.array_equal(design._draw(k, start, stop), whole[k][start:stop])
    for k in NAMES:
        assert np.array_equal(lazy[k].compute(scheduler="sync"), whole[k])


def test_raising_n_keeps_every_sample_bit_for_bit():
    small, big = _design(8), _design(64)
    s, b = small.block((slice(0, small.size),)), big.block((slice(0, big.size),))
    for k in NAMES:
        assert np.array_equal(b[k][: small.size], s[k])
    assert big.extension_of(small.spec()) is None
    assert "does not add samples" in small.extension_of(big.spec())
    assert "second_order changed" in _design(64, second_order=True).extension_of(small.spec())
    assert "seed changed" in big.reseeded(12).extension_of(small.spec())
    assert "design changed" in big.extension_of(db.Sobol({k: db.Uniform(-1, 1) for k in NAMES}, n=8).spec())


def test_spec_head_and_repr():
    design = _design(1024, second_order=True)
    spec = design.spec()
    assert spec["type"] == "saltelli" and spec["n"] == 1024 and spec["second_order"] is True
    again = space_from_spec(spec)
    assert isinstance(again, Saltelli) and again.spec() == spec and again.size == 1024 * 8
    assert "second_order" not in _design(8).spec()
    # a spec file's [space] table makes the same design
    assert space_from_spec(tomllib.loads(design.to_toml())["space"]).spec() == spec
    head = design.head(100)  # a smoke run: the first base points, a power of 2 of them
    assert head.n == 8 and head.size == 64 and head.second_order
    assert np.array_equal(head.block((slice(0, 64),))["x1"], design.block((slice(0, 64),))["x1"])
    assert design.head(10**9).n == 1024 and design.head(1).n == 2
    assert "8,192 samples" in repr(design)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1000}, r"n=1,000 is not a power of 2.*n=512 or n=1,024"),
        ({"n": 1}, r"n=1 base points are too few"),
        ({"n": 0}, r"n=0 base points are too few"),
        ({"n": 2.0}, r"n=2.0 must be a whole number"),
        ({"n": True}, r"n=True must be a whole number"),
        ({"n": 2**31}, r"more than the 2\*\*30 base points"),
        ({"n": 8, "second_order": 1}, r"second_order=1 must be True or False"),
        ({"n": 8, "seed": -1}, r"seed=-1"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, match):
    with pytest.raises(SpaceError, match=match) as e:
        Saltelli({"x": db.Uniform(0, 1)}, **kwargs)
    assert "\n" not in str(e.value)


def test_constants_and_products_are_refused():
    with pytest.raises(SpaceError, match=r"parameter 'c' is a constant.*constants=") as e:
        Saltelli({"x": db.Uniform(0, 1), "c": db.Constant(3.0)}, n=8)
    assert "\n" not in str(e.value)
    with pytest.raises(SpaceError, match="inner=Saltelli"):
        db.Product(db.Grid(config=[1, 2]), _design(8))
    with pytest.raises(SpaceError, match=r"unknown key\(s\) \['scramble'\]"):
        space_from_spec({**_design(8).spec(), "scramble": False})


# --------------------------------------------------------------------------- indices


def test_ishigami_indices_of_a_grown_store_scalar_and_per_gate(tmp_path):
    store = tmp_path / "ishigami.zarr"
    _run(_design(2**12), store)
    before = db.open(store).load()
    result = _run(_design(2**13), store)  # n doubled: the store grows, the samples computed stay
    after = db.open(store)
    assert after.sizes["sample"] == 2**13 * 5 and result.samples["ok"] == 2**13 * 5
    for name in (*NAMES, "y", "curve"):
        assert np.array_equal(after[name].values[: 2**12 * 5], before[name].values), name
    whole = _design(2**13).block((slice(0, 2**13 * 5),))
    assert all(np.array_equal(after[k].values, whole[k]) for k in NAMES)

    exact = _analytic()
    si = sobol_indices(result, "y")
    assert si.S1.dims == ("parameter",) and si.parameter.values.tolist() == NAMES
    assert si.attrs["n"] == si.attrs["n_used"] == 2**13 and si.attrs["conf_level"] == 0.95
    assert si.attrs["n_dropped_failed"] == 0 and si.attrs["n_dropped_nonfinite"] == 0
    _close(si, "S1", exact["S1"])
    _close(si, "ST", exact["ST"])
    assert np.all(si.S1_conf.values < 0.05) and np.all(si.ST_conf.values < 0.05)
    # the same from the path and from the Dataset; the resampling has a seed
    assert si.identical(sobol_indices(str(store), "y"))
    assert si.S1.equals(sobol_indices(after, "y", seed=3).S1)

    curve = sobol_indices(store, "curve", conf_level=0.9, num_resamples=50)
    assert curve.S1.dims == ("parameter", "gate") and curve.gate.values.tolist()[0] == 1e-5
    assert curve.attrs["conf_level"] == 0.9
    for key in ("S1", "ST"):
        _close(curve, key, [1, 0, 0], k=0)  # sin(x1) alone
        _close(curve, key, [0, 1, 0], k=1)  # 7 sin(x2)^2 alone
        for k in (2, 3):  # Ishigami, and 3 times it: the same indices
            _close(curve, key, exact[key], k=k)
        assert np.isnan(curve[key].values[:, 4]).all()  # a constant gate: nothing to share out
    np.testing.assert_allclose(curve.S1.values[:, 3], curve.S1.values[:, 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(curve.S1.values[:, 2], si.S1.values, rtol=1e-12, atol=1e-12)


def test_second_order_indices(tmp_path):
    result = _run(_design(2**11, second_order=True), tmp_path / "s2.zarr")
    si = sobol_indices(result, "y")
    assert si.S2.dims == ("parameter", "parameter_2") and si.attrs["second_order"] == 1
    exact = _analytic()
    s2 = np.zeros((3, 3))
    s2[0, 2] = s2[2, 0] = exact["S13"]
    off = ~np.eye(3, dtype=bool)
    assert np.all(np.abs(si.S2.values - s2)[off] <= 3 * si.S2_conf.values[off]), si.S2.values
    assert np.isnan(np.diag(si.S2.values)).all()
    assert si.S2.sel(parameter="x1", parameter_2="x3") == si.S2.sel(parameter="x3", parameter_2="x1")
    _close(si, "S1", exact["S1"])
    _close(si, "ST", exact["ST"])


@db.kernel(outputs={"y": db.Output()})
def flaky(x1, x2, x3):
    if x1 > 2.5:
        raise ValueError(f"x1={x1} too large")
    if x2 > 2.8:
        return float("nan")
    return float(_ishigami(x1, x2, x3))


@db.kernel(outputs={"y": db.Output()})
def broken(x1, x2, x3):
    raise ValueError("never works")


def test_failed_samples_leave_their_base_points_out(tmp_path):
    store = tmp_path / "flaky.zarr"
    db.run(flaky, _design(2**6), store, cluster="serial", progress=False)
    ds = db.open(store)
    failed_rows = (ds.status.values != db.STATUS["ok"]).reshape(64, 5).any(axis=1)
    nan_rows = ~np.isfinite(ds.y.values.reshape(64, 5)).all(axis=1) & ~failed_rows
    assert failed_rows.any() and nan_rows.any()
    with pytest.warns(
        UserWarning, match=rf"{int((failed_rows | nan_rows).sum())} of 64 base points left out"
    ):
        si = sobol_indices(store, "y")
    assert si.attrs["n_dropped_failed"] == int(failed_rows.sum())
    assert si.attrs["n_dropped_nonfinite"] == int(nan_rows.sum())
    assert si.attrs["n_used"] == 64 - int((failed_rows | nan_rows).sum())
    assert np.isfinite(si.S1.values).all() and np.isfinite(si.ST_conf.values).all()

    db.run(broken, _design(4), tmp_path / "broken.zarr", cluster="serial", progress=False)
    with pytest.raises(DaskbatchError, match=r"only 0 of 4 base points.*4 have a failed sample") as e:
        sobol_indices(tmp_path / "broken.zarr", "y")
    assert "\n" not in str(e.value)


def test_pending_samples_are_refused_with_how_many(tmp_path):
    store = tmp_path / "stopped.zarr"

    class Stop(db.Callback):
        def on_block_end(self, event):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(_design(2**6), store, chunk_size=64, callbacks=[Stop()])
    with pytest.raises(DaskbatchError, match=r"256 of 320 samples .* not computed yet; run or resume"):
        sobol_indices(store, "y")


def test_what_sobol_indices_refuses(tmp_path):
    mc = tmp_path / "mc.zarr"
    db.run(ishigami, db.MonteCarlo({k: db.Uniform(-1, 1) for k in NAMES}, n=20, seed=1), mc, cluster="serial")
    checks = [
        ((mc, "y"), {}, r"'montecarlo' space, not a Saltelli design"),
        ((tmp_path / "nothing.zarr", "y"), {}, r"nothing\.zarr"),
        ((42, "y"), {}, r"source=42 must be a store path"),
    ]
    store = tmp_path / "s.zarr"
    _run(_design(2), store)
    checks += [
        ((store, "z"), {}, r"output='z' is not an output.*\['curve', 'y'\]"),
        ((store, "x1"), {}, r"output='x1' is not an output"),
        ((store, "y"), {"conf_level": 95}, r"conf_level=95 must be between 0 and 1"),
        ((store, "y"), {"num_resamples": 1}, r"num_resamples=1 must be a whole number >= 2"),
        ((store, "y"), {"seed": -2}, r"seed=-2"),
        ((db.open(store).isel(sample=slice(0, 5)), "y"), {}, r"has 5 samples, not the n\*5=10"),
    ]
    for args, kw, match in checks:
        with pytest.raises(db.errors.DaskbatchError, match=match) as e:
            sobol_indices(*args, **kw)
        assert "\n" not in str(e.value), str(e.value)


def test_no_warnings_from_a_clean_store(tmp_path):
    result = _run(_design(2**4), tmp_path / "clean.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        si = sobol_indices(result, "curve")
    assert si.S1.shape == (3, 5)


def test_until_sobol_grows_the_design_until_the_intervals_are_narrow(tmp_path):
    store = tmp_path / "adaptive.zarr"
    rule = db.Converged("y", stat="sobol", atol=0.06, min_n=100)
    res = db.run(ishigami, _design(64), store, cluster="serial", progress=False, until=rule)
    state = db.open(store).attrs["daskbatch"]["until"]
    assert state["state"] == "converged" and state["rounds"][-1]["met"]
    sizes = [r["n"] for r in state["rounds"]]
    assert sizes == [64 * 5 * 2**k for k in range(len(sizes))] and len(sizes) > 1  # base points doubled
    si = sobol_indices(store, "y")
    assert float(np.fmax(si.S1_conf, si.ST_conf).max()) <= 0.06
    truth = _analytic()
    assert np.all(np.abs(si.ST.values - truth["ST"]) < 3 * si.ST_conf.values + 0.02)
    assert "Sobol indices of 'y'" in str(res) and "(converged)" in str(res)
    # the same call again: nothing to compute
    assert (
        db.run(ishigami, _design(64), store, cluster="serial", progress=False, until=rule).blocks_computed
        == 0
    )


def test_until_sobol_needs_a_saltelli_design_and_a_stored_output(tmp_path):
    mc = db.MonteCarlo({k: db.Uniform(-np.pi, np.pi) for k in NAMES}, n=100, seed=1)
    with pytest.raises(DaskbatchError, match="needs a Saltelli design"):
        db.run(ishigami, mc, tmp_path / "x.zarr", until=db.Converged("y", stat="sobol", atol=0.1))
    assert not (tmp_path / "x.zarr").exists()
