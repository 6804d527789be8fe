"""Designs and distributions: values, stratification, bitwise reproducibility under any
chunking and block order, products, TOML round trips, and built-in validation."""

from __future__ import annotations

import itertools
import math
import tomllib
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.stats import qmc

import daskbatch as db
from daskbatch.designs import halton_points, permute, sobol_points
from daskbatch.distributions import from_spec
from daskbatch.errors import SpaceError
from daskbatch.space import space_from_spec
from daskbatch.testing import affine, curve, tagged

U = np.linspace(0.005, 0.995, 199)[:, None]

# --------------------------------------------------------------------------- distributions


def test_new_inverse_cdfs_match_scipy():
    assert np.allclose(
        db.TruncatedNormal(30, 5, 20, 45).ppf(U),
        stats.truncnorm((20 - 30) / 5, (45 - 30) / 5, loc=30, scale=5).ppf(U[:, 0]),
    )
    assert np.allclose(db.Triangular(1, 2, 5).ppf(U), stats.triang(0.25, loc=1, scale=4).ppf(U[:, 0]))
    assert np.allclose(db.Beta(2, 5, 10, 20).ppf(U), stats.beta(2, 5, loc=10, scale=10).ppf(U[:, 0]))
    assert np.allclose(db.Scipy(stats.gamma(2, scale=3)).ppf(U), stats.gamma(2, scale=3).ppf(U[:, 0]))
    one_sided = db.TruncatedNormal(0, 1, 0, math.inf).ppf(U)
    assert one_sided.min() >= 0 and np.allclose(one_sided, stats.halfnorm.ppf(U[:, 0]))


def test_choice_weights_numbers_and_strings():
    mc = db.MonteCarlo(
        {"soil": db.Choice(["sand", "clay", "till"], weights=[0.5, 0.3, 0.2]), "n": db.Choice([1, 2, 3])},
        n=100_000,
        seed=4,
    )
    v = mc.block((slice(0, 100_000),))
    assert v["soil"].dtype.kind == "U" and v["n"].dtype == np.int64
    freq = {k: np.mean(v["soil"] == k) for k in ("sand", "clay", "till")}
    assert freq == pytest.approx({"sand": 0.5, "clay": 0.3, "till": 0.2}, abs=0.01)
    assert set(np.unique(v["n"]).tolist()) == {1, 2, 3}
    assert db.Choice([7.5], weights=[3]).ppf(U).tolist() == [7.5] * len(U)


def test_constant_takes_no_design_dimension():
    with_const = db.Sobol(
        {"x": db.Uniform(0, 1), "c": db.Constant("tx-1"), "y": db.Uniform(0, 1)}, n=64, seed=2
    )
    without = db.Sobol({"x": db.Uniform(0, 1), "y": db.Uniform(0, 1)}, n=64, seed=2)
    a, b = with_const.block((slice(0, 64),)), without.block((slice(0, 64),))
    assert with_const.dimension == 2
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    assert a["c"].tolist() == ["tx-1"] * 64


def test_correlated_normals():
    corr = [[1, 0.8, -0.3], [0.8, 1, 0], [-0.3, 0, 1]]
    d = db.MultivariateNormal([1, 2, 3], corr=corr, sd=[1, 2, 0.5], dim="layer")
    v = db.MonteCarlo({"z": d}, n=200_000, seed=9).block((slice(0, 200_000),))["z"]
    assert v.shape == (200_000, 3)
    assert np.allclose(np.corrcoef(v.T), corr, atol=0.01)
    assert np.allclose(v.mean(axis=0), [1, 2, 3], atol=0.02)
    assert np.allclose(v.std(axis=0), [1, 2, 0.5], rtol=0.02)
    cov = db.MultivariateNormal([0, 0], cov=[[4, 1], [1, 1]])
    assert cov.cov.tolist() == [[4, 1], [1, 1]]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: db.TruncatedNormal(0, 1, 2, 1), "low=2.0 must be below high=1.0"),
        (lambda: db.TruncatedNormal(0, 0, -1, 1), "sd=0.0 must be > 0"),
        (lambda: db.Triangular(0, 2, 1), "mode=2.0 must lie between"),
        (lambda: db.Beta(0, 1), "a=0.0 must be > 0"),
        (lambda: db.Beta(1, 1, 1, 0), "low=1.0 must be below high=0.0"),
        (lambda: db.Choice([]), "must be a non-empty 1-D list"),
        (lambda: db.Choice(["a", "b"], weights=[1]), "1 entries for 2 values"),
        (lambda: db.Choice(["a", "b"], weights=[-0.5, 1.5]), "must be >= 0"),
        (lambda: db.Choice(["a", "b"], weights=[0, 0]), "positive sum"),
        (lambda: db.Choice(["a", 1]), None),  # numpy makes strings of a mix: allowed as strings
        (lambda: db.Choice([True, False]), "not booleans"),
        (lambda: db.Constant([[1, 2]]), "a value or a 1-D list"),
        (lambda: db.Scipy(stats.norm(0, -1)), "out of range"),
        (lambda: db.Scipy("gamma"), "not a frozen scipy.stats distribution"),
        (lambda: db.MultivariateNormal([0, 0]), "give either cov=, or corr= with sd="),
        (lambda: db.MultivariateNormal([0, 0], [[1, 2], [2, 1]]), "not positive definite"),
        (lambda: db.MultivariateNormal([0, 0], [[1, 0.5], [0, 1]]), "symmetric"),
        (lambda: db.MultivariateNormal([0, 0], corr=[[1, 0.5], [0.5, 1]]), "needs sd="),
        (lambda: db.MultivariateNormal([0, 0], corr=[[2, 0], [0, 1]], sd=1), "ones on the diagonal"),
        (lambda: db.MultivariateNormal([0, 0, 0], [[1, 0], [0, 1]]), r"expected \(3, 3\)"),
    ],
)
def test_invalid_parameters_raise_at_construction(make, words):
    if words is None:
        assert make().dtype.kind == "U"
        return
    with pytest.raises(SpaceError, match=words):
        make()


@pytest.mark.parametrize(
    "dist",
    [
        db.TruncatedNormal(30, 5, 0, math.inf),
        db.Triangular(0, [1, 2], 3, dim="k"),
        db.Beta(2, 3, size=2),
        db.Choice(["a", "b"], weights=[1, 3]),
        db.Choice([1.5, 2.5], size=4),
        db.Constant([1, 2, 3], dim="layer"),
        db.Scipy(stats.gamma(2, scale=3)),
        db.MultivariateNormal([0, 1], corr=[[1, 0.2], [0.2, 1]], sd=[1, 2]),
        db.MultivariateNormal([0, 1], cov=[[1, 0.2], [0.2, 2]]),
    ],
    ids=repr,
)
def test_every_distribution_round_trips_through_its_spec(dist):
    back = from_spec(tomllib.loads(_toml({"d": dist.spec()}))["d"])
    assert back == dist
    u = np.random.default_rng(0).random((50, dist.n_uniforms))
    assert np.array_equal(back.ppf(u), dist.ppf(u))


def _toml(doc):
    import tomli_w

    return tomli_w.dumps(doc)


# --------------------------------------------------------------------------- designs

DISTS = {
    "a": db.Normal(0, 1),
    "b": db.LogUniform(1, 100, size=2, dim="k"),
    "c": db.Choice(["x", "y", "z"], weights=[1, 2, 3]),
    "d": db.MultivariateNormal([0, 0], corr=[[1, 0.5], [0.5, 1]], sd=[1, 1]),
}


def _designs(n, seed=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Sobol at n not a power of 2
        return {
            "montecarlo": db.MonteCarlo(DISTS, n=n, seed=seed),
            "latinhypercube": db.LatinHypercube(DISTS, n=n, seed=seed),
            "sobol": db.Sobol(DISTS, n=n, seed=seed),
            "halton": db.Halton(DISTS, n=n, seed=seed),
        }


def test_latin_hypercube_puts_one_sample_in_every_stratum():
    n = 1000
    lhs = db.LatinHypercube(
        {"x": db.Uniform(0, 1), "y": db.Normal(0, 1), "v": db.Uniform(0, 1, size=3)}, n=n, seed=1
    )
    v = lhs.block((slice(0, n),))
    for col in (v["x"], stats.norm.cdf(v["y"]), *v["v"].T):
        assert sorted(np.floor(col * n).astype(int).tolist()) == list(range(n))
    assert sorted(permute(np.arange(4097), 4097, key=3).tolist()) == list(range(4097))


def test_sobol_and_halton_are_scipys_sequences():
    for d in (1, 4):
        ref = qmc.Sobol(d, scramble=True, rng=np.random.default_rng(5))
        assert np.array_equal(sobol_points(5, d, 0, 512), ref.random(512))
        ref.fast_forward(1000)
        assert np.array_equal(sobol_points(5, d, 1512, 1600), ref.random(88))
        h = qmc.Halton(d, scramble=True, rng=np.random.default_rng(5))
        h.fast_forward(300)
        assert np.array_equal(halton_points(5, d, 300, 400), h.random(100))


def test_sobol_warns_off_powers_of_two_and_caps_n():
    with pytest.warns(UserWarning, match=r"n=1,000 is not a power of 2.*n=512 or n=1,024"):
        db.Sobol({"x": db.Uniform(0, 1)}, n=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        db.Sobol({"x": db.Uniform(0, 1)}, n=1024)
    with pytest.raises(SpaceError, match="more than the 2\\*\\*30 points"):
        db.Sobol({"x": db.Uniform(0, 1)}, n=2**30 + 1)


@settings(max_examples=25)
@given(
    kind=st.sampled_from(["montecarlo", "latinhypercube", "sobol", "halton"]),
    cuts=st.lists(st.integers(1, 299), max_size=12, unique=True),
    order=st.randoms(use_true_random=False),
)
def test_any_chunking_and_block_order_gives_the_same_bits(kind, cuts, order):
    design = _designs(300)[kind]
    whole = design.block((slice(0, 300),))
    edges = [0, *sorted(cuts), 300]
    blocks = list(itertools.pairwise(edges))
    order.shuffle(blocks)
    for name in DISTS:
        got = np.empty_like(whole[name])
        for lo, hi in blocks:
            got[lo:hi] = design.block((slice(lo, hi),))[name]
        assert np.array_equal(got, whole[name]), (kind, name)


def test_different_seeds_are_independent_streams():
    for kind in ("montecarlo", "latinhypercube"):
        a = _designs(2000, seed=1)[kind].block((slice(0, 2000),))["a"]
        b = _designs(2000, seed=2)[kind].block((slice(0, 2000),))["a"]
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.1, kind
    # quasi-random designs: each seed is an independent scramble of the same sequence,
    # so estimates from different seeds are independent replicates (randomised QMC);
    # the points of two seeds are not paired at random by index (that is the design)
    for kind in ("sobol", "halton"):
        means = [_designs(256, seed=s)[kind].block((slice(0, 256),))["a"].mean() for s in range(8)]
        assert len(set(means)) == 8 and np.std(means) > 0, kind


def test_a_billion_samples_are_made_block_by_block():
    n = 10**9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        designs = [
            cls({"x": db.Uniform(0, 1), "y": db.Normal(0, 1)}, n=n, seed=3)
            for cls in (db.MonteCarlo, db.LatinHypercube, db.Sobol, db.Halton)
        ]
    for d in designs:
        chunks = ((n // 2, n // 2 - 1000, 1000),)
        arrays = d.to_dask(chunks)  # lazy: nothing is drawn until a block is computed
        assert arrays["x"].shape == (n,)
        tail = d.block((slice(n - 1000, n),))
        assert tail["x"].shape == (1000,) and np.all((tail["x"] > 0) & (tail["x"] < 1))
        assert np.array_equal(arrays["x"][n - 1000 :].compute(), tail["x"])


# --------------------------------------------------------------------------- products


def test_product_of_configurations_and_realisations():
    grid = db.Grid(b=np.arange(10.0))
    inner = db.MonteCarlo({"a": db.Normal(0, 1)}, n=1000, seed=7)
    p = db.Product(grid, inner)
    assert (p.batch_dims, p.batch_shape) == (("b", "realisation"), (10, 1000))
    v = p.block((slice(0, 10), slice(0, 1000)))
    assert v["a"].shape == (10, 1000) and v["b"].shape == (10,)
    # each configuration its own realisations; the first is the inner design reseeded
    assert not np.array_equal(v["a"][0], v["a"][1])
    # flat: the same values, configuration-major
    flat = db.Product(grid, inner, flat=True)
    fv = flat.block((slice(0, 10_000),))
    assert np.array_equal(fv["a"], v["a"].ravel()) and np.array_equal(
        fv["b"], np.repeat(grid.axes["b"], 1000)
    )
    # blocks across configurations agree with the whole
    part = flat.block((slice(1500, 3700),))
    assert np.array_equal(part["a"], fv["a"][1500:3700])
    # common random numbers: the same realisations in every configuration
    common = db.Product(grid, inner, common=True).block((slice(0, 10), slice(0, 1000)))["a"]
    assert np.array_equal(common[0], common[9]) and np.array_equal(
        common[0], inner.block((slice(0, 1000),))["a"]
    )


def test_product_with_a_table_and_a_latin_hypercube_runs(tmp_path):
    configs = db.Table(xr.Dataset({"b": ("sample", [1.0, 10.0, 100.0])}))
    p = db.Product(configs, db.LatinHypercube({"a": db.Uniform(0, 1)}, n=50, seed=2), dim="member")
    assert p.batch_dims == ("config", "member")
    db.run(
        affine,
        p,
        tmp_path / "p.zarr",
        cluster="serial",
        chunk_size={"config": 1, "member": 16},
        progress=False,
    )
    ds = db.open(tmp_path / "p.zarr")
    assert ds.y.dims == ("config", "member")
    assert np.array_equal(ds.y.values, ds.a.values + ds.b.values)
    for c in range(3):  # every configuration is a whole Latin hypercube
        assert sorted(np.floor(ds.a.values[c] * 50).astype(int).tolist()) == list(range(50))


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda: db.Product(db.Grid(a=[1]), db.MonteCarlo({"a": db.Uniform(0, 1)}, n=2)),
            "in both outer and inner",
        ),
        (
            lambda: db.Product(
                db.MonteCarlo({"a": db.Uniform(0, 1)}, n=2), db.MonteCarlo({"b": db.Uniform(0, 1)}, n=2)
            ),
            "must be a Grid or a Table",
        ),
        (lambda: db.Product(db.Grid(a=[1]), db.Grid(b=[1])), "must be a design"),
        (
            lambda: db.Product(db.Grid(a=[1]), db.MonteCarlo({"b": db.Uniform(0, 1)}, n=2), dim="a"),
            "already a dim",
        ),
        (
            lambda: db.Product(db.Grid(a=[1]), db.MonteCarlo({"b": db.Uniform(0, 1)}, n=2), flat="yes"),
            "flat='yes'",
        ),
        (
            lambda: db.LatinHypercube({"x": db.Uniform(0, 1)}, n=10, strata=5),
            "strata=5 must be an integer >= n=10",
        ),
        (lambda: db.Halton({"x": db.Uniform(0, 1)}, n=10, scramble=1), "scramble=1"),
        (lambda: db.MonteCarlo({"x": "uniform"}, n=10), "is not a distribution"),
    ],
)
def test_bad_designs_name_the_argument(make, words):
    with pytest.raises(SpaceError, match=words):
        make()


# --------------------------------------------------------------------------- runs


def _spaces():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inner = db.LatinHypercube({"a": db.Normal(0, 1)}, n=40, seed=3)
        return {
            "lhs": db.LatinHypercube({"a": db.Normal(0, 1), "b": db.Triangular(0, 1, 3)}, n=120, seed=1),
            "sobol": db.Sobol({"a": db.Uniform(-1, 1), "b": stats.gamma(2)}, n=128, seed=1),
            "halton": db.Halton({"a": db.Beta(2, 2), "b": db.TruncatedNormal(0, 1, -1, 1)}, n=100, seed=1),
            "product": db.Product(db.Grid(b=[0.5, 1.5, 2.5]), inner),
            "flat": db.Product(db.Grid(b=[0.5, 1.5, 2.5]), inner, flat=True),
        }


def _arrays(store):
    ds = xr.open_zarr(store)
    return {k: v.values for k, v in ds.variables.items()}


@pytest.mark.parametrize("name", ["lhs", "sobol", "halton", "product", "flat"])
def test_runs_are_bitwise_identical_across_chunking_schedulers_and_resume(name, tmp_path, remote_scheduler):
    space = _spaces()[name]
    ref = tmp_path / "ref.zarr"
    db.run(affine, space, ref, cluster="serial", chunk_size=7, progress=False)
    other = tmp_path / "other.zarr"
    db.run(affine, space, other, cluster="threads", n_workers=2, chunk_size=16, progress=False)
    a, b = _arrays(ref), _arrays(other)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # resume point: forget some committed blocks, run again, same bits
    from daskbatch.store import Store

    st = Store(other)
    done = st.done_mask()
    blocks = [tuple(int(i) for i in idx) for idx in np.argwhere(done)][::2]
    st.unmark(blocks)
    # in the worker processes of a running scheduler (the suite's, started once)
    r = db.run(affine, space, other, cluster=remote_scheduler, progress=False)
    assert r.blocks_computed == len(blocks)
    b = _arrays(other)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["lhs", "sobol", "halton", "product", "flat"])
def test_every_design_round_trips_through_a_toml_spec_file(name, tmp_path, cli):
    space = _spaces()[name]
    text = space.to_toml()
    again = space_from_spec(tomllib.loads(text)["space"])
    assert again.spec() == space.spec()
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'kernel = "daskbatch.testing:affine"\nstore = "s.zarr"\ncluster = "serial"\n\n{text}')
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    db.run(affine, space, tmp_path / "py.zarr", cluster="serial", progress=False)
    a, b = _arrays(tmp_path / "s.zarr"), _arrays(tmp_path / "py.zarr")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_string_choices_are_stored_and_passed_to_the_kernel(tmp_path):
    mc = db.MonteCarlo({"kind": db.Choice(["ab", "abcd"]), "x": db.Uniform(0, 1)}, n=50, seed=2)
    db.run(tagged, mc, tmp_path / "s.zarr", cluster="local", n_workers=2, progress=False)
    ds = db.open(tmp_path / "s.zarr")
    assert set(ds.kind.values.tolist()) == {"ab", "abcd"}
    lengths = np.array([len(k) for k in ds.kind.values.tolist()])
    assert np.array_equal(ds.y.values, lengths + ds.x.values)


# --------------------------------------------------------------------------- validate


def test_validate_passes_then_catches_a_changed_value(tmp_path, cli):
    store = tmp_path / "v.zarr"
    space = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2, 3], 1, dim="k")}, n=400, seed=3)
    # validate recomputes in this process: that runs on any scheduler give the same
    # bits is test_runs_are_bitwise_identical_across_chunking_schedulers_and_resume's
    db.run(curve, space, store, cluster="serial", progress=False)
    report = db.validate(store, n=30)
    assert report.ok and report.n_checked == 30 and set(report.outputs) == set(curve.outputs)
    assert all(a == 0 for a, _ in report.outputs.values())
    r = run_cli("validate", str(store), "--n", "20")
    assert r.returncode == 0, r.stderr
    assert "validated 20 random ok samples" in r.stdout and r.stdout.strip().endswith("OK")
    # damage every stored value of one output a little: validation must notice
    out = next(iter(curve.outputs))
    arr = zarr.open_group(str(store), mode="r+", use_consolidated=False)[out]
    arr[...] = arr[...] * (1 + 1e-6)
    with pytest.raises(db.ValidationError, match="differ beyond the tolerance") as info:
        db.validate(store, n=10)
    assert info.value.report.n_mismatched == 10 and info.value.report.outputs[out][1] == pytest.approx(
        1e-6, rel=0.01
    )
    assert db.validate(store, n=10, rtol=1e-5).ok
    r = cli("validate", str(store), "--n", "10")
    assert r.returncode == 1 and "FAILED" in r.stdout
    # a parameter that the design no longer reproduces
    x = zarr.open_group(str(store), mode="r+", use_consolidated=False)["x"]
    x[...] = x[...] + 1
    report = db.validate(store, n=5, rtol=1, raise_on_failure=False)
    assert report.params_differ == ["x"] and not report.ok


def test_validate_on_a_grid_skips_failed_samples(tmp_path):
    from daskbatch.testing import fail_on_multiples

    store = tmp_path / "g.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(60)), store, cluster="serial", progress=False)
    report = db.validate(store, n=1000)  # more than there are ok samples: all ok ones
    assert report.ok and report.n_checked == 60 - len(range(7, 60, 7))
    with pytest.raises(db.DaskbatchError, match="n=0 must be a positive"):
        db.validate(store, n=0)
    with pytest.raises(db.DaskbatchError, match="rtol=-1"):
        db.validate(store, rtol=-1)


def test_design_pictures_in_the_docs_are_what_the_script_draws():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "design_pictures.py"
    spec = importlib.util.spec_from_file_location("design_pictures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pictures = module.pictures()
    assert len(pictures) == 5
    for file, text in pictures.items():
        assert text.count("<circle") == 256
        assert (path.parent / "img" / file).read_text() == text, (
            f"run python docs/design_pictures.py ({file})"
        )


def test_the_readme_picture_is_what_its_script_draws():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "band_picture.py"
    spec = importlib.util.spec_from_file_location("band_picture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.svg(*module.band())
    assert text.count("<polygon") == 1 and text.count("<polyline") == 1
    assert module.OUT.read_text() == text, "run python docs/band_picture.py"
