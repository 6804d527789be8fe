import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from daskbatch import Grid, LogUniform, MonteCarlo, Normal, Table
from daskbatch.chunking import chunks_from_block_shape
from daskbatch.errors import SpaceError
from daskbatch.space import space_from_spec

MC = MonteCarlo({"rho": LogUniform(1, 1000, size=3), "h": Normal([30, 70], [5, 10])}, n=500, seed=42)


def test_grid_axes_are_batch_dims_with_coordinates():
    g = Grid(rho1=np.logspace(1, 3, 50), rho2=np.logspace(0, 2, 40), h1=np.linspace(10, 100, 30))
    assert g.batch_dims == ("rho1", "rho2", "h1")
    assert g.batch_shape == (50, 40, 30) and g.size == 60_000
    assert set(g.batch_coords()) == {"rho1", "rho2", "h1"}
    blk = g.block((slice(0, 2), slice(5, 7), slice(0, 30)))
    assert blk["rho2"].tolist() == g.axes["rho2"][5:7].tolist()
    head = g.head(100)
    assert head.size <= 100 and head.batch_shape[-1] == 30


@settings(max_examples=30)
@given(chunk=st.integers(1, 500), start=st.integers(0, 499))
def test_montecarlo_values_do_not_depend_on_chunking(chunk, start):
    whole = MC.block((slice(0, 500),))
    lazy = MC.to_dask(chunks_from_block_shape((500,), (chunk,)))
    for name in ("rho", "h"):
        assert np.array_equal(lazy[name].compute(), whole[name])
        assert np.array_equal(MC.block((slice(start, 500),))[name], whole[name][start:])


def test_montecarlo_distribution_shapes():
    blk = MonteCarlo(MC.dists, n=10_000, seed=1).block((slice(0, 10_000),))
    assert blk["rho"].shape == (10_000, 3) and blk["h"].shape == (10_000, 2)
    assert blk["rho"].min() >= 1 and blk["rho"].max() <= 1000
    assert abs(blk["h"][:, 0].mean() - 30) < 0.3 and abs(blk["h"][:, 1].std() - 10) < 0.3
    assert MC.params["rho"].dims == ("sample", "rho_dim")


def test_montecarlo_head_is_a_prefix_and_seed_recorded():
    assert np.array_equal(MC.head(10).block((slice(0, 10),))["h"], MC.block((slice(0, 10),))["h"])
    free = MonteCarlo({"x": Normal(0, 1)}, n=3)
    assert isinstance(free.seed, int) and free.spec()["seed"] == free.seed


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: MonteCarlo({}, n=3, seed=1), "non-empty dict"),
        (lambda: MonteCarlo({"x": 3}, n=3, seed=1), "x=3 is not a distribution"),
        (lambda: MonteCarlo({"x": Normal(0, 1)}, n=0, seed=1), "n=0 must be a positive integer"),
        (lambda: MonteCarlo({"x": Normal(0, 1)}, n=5, seed=-1), "seed=-1"),
        (lambda: MonteCarlo({"not ok": Normal(0, 1)}, n=5, seed=1), "valid Python identifier"),
        (lambda: Grid(), "at least one axis"),
        (lambda: Grid(x=[]), "axis 'x' is empty"),
        (lambda: Grid(x=[[1, 2]]), "must be 1-D"),
        (lambda: Grid(x=[1.0, float("nan")]), "NaN or inf"),
    ],
)
def test_bad_spaces(make, words):
    with pytest.raises(SpaceError, match=words):
        make()


def test_table_from_every_source(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "name": ["x", "y", "z"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    ds = xr.Dataset({k: ("row", v.to_numpy()) for k, v in df.items()})
    ds.to_zarr(tmp_path / "t.zarr", zarr_format=3, consolidated=False)
    for source in (
        df,
        dict(df.items()),
        ds,
        tmp_path / "t.csv",
        str(tmp_path / "t.parquet"),
        tmp_path / "t.zarr",
    ):
        t = Table(source)
        assert t.batch_shape == (3,)
        assert t.block((slice(1, 3),))["a"].tolist() == [2.0, 3.0]
        assert t.block((slice(0, 1),))["name"].tolist() == ["x"]


def test_table_core_dims_from_dataset_and_dict():
    ds = xr.Dataset({"resistivity": (("sample", "layer"), np.ones((4, 3))), "x": ("sample", np.arange(4.0))})
    t = Table(ds)
    assert t.params["resistivity"].dims == ("sample", "layer")
    t2 = Table({"r": np.ones((4, 2))})
    assert t2.params["r"].dims == ("sample", "r_dim")


@pytest.mark.parametrize(
    "data, words",
    [
        ({"a": [1.0, np.nan]}, "column 'a' has 1 row.* NaN or inf .first: row 1"),
        ({"a": [1.0, np.inf, 2.0]}, "NaN or inf"),
        (pd.DataFrame({"a": [1, "x", 3]}), "column 'a' mixes numbers and text .row 1: 'x'"),
        (pd.DataFrame({"a": ["x", 1, "z"]}), "column 'a' mixes numbers and text .row 1: 1"),
        (pd.DataFrame({"a": ["", "x", None]}), "column 'a' has a missing value .first: row 2: .*fillna"),
        (
            pd.DataFrame({"a": pd.array(["x", None], dtype="string")}),
            "column 'a' has a missing value .first: row 1",
        ),
        (pd.DataFrame({"a": []}), "no rows"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), r"duplicated column\(s\) \['a'\]"),
        ({"a": [1, 2], "b": [1, 2, 3]}, "column 'b' has 3 rows, others have 2"),
        ({}, "no columns"),
        (42, "not supported"),
        ("missing.csv", "does not exist"),
    ],
)
def test_bad_tables(data, words):
    with pytest.raises(SpaceError, match=words):
        Table(data)


@pytest.mark.parametrize(
    "space",
    [MC, Grid(x=[1.0, 2.0], label=["a", "b", "c"])],
    ids=["montecarlo", "grid"],
)
def test_spec_round_trip(space):
    again = space_from_spec(space.spec())
    assert again.spec() == space.spec()
    assert again.batch_shape == space.batch_shape


def test_grid_spec_with_ranges_and_bad_keys():
    g = space_from_spec({"type": "grid", "axes": {"x": {"logspace": [0, 2, 3]}, "y": [1, 2]}})
    assert g.axes["x"].tolist() == [1.0, 10.0, 100.0]
    with pytest.raises(SpaceError, match=r"unknown key\(s\) \['n'\] for type='grid'"):
        space_from_spec({"type": "grid", "axes": {"x": [1]}, "n": 3})
    with pytest.raises(SpaceError, match="space.type='lhs' is not one of"):
        space_from_spec({"type": "lhs"})


def test_spaces_are_importable_from_daskbatch_space_as_the_same_classes():
    import pickle

    import daskbatch.designs
    import daskbatch.space
    import daskbatch.spacebase
    import daskbatch.tables

    homes = {
        "Param": daskbatch.spacebase,
        "Space": daskbatch.spacebase,
        "Table": daskbatch.tables,
        "_load_table": daskbatch.tables,
        "Design": daskbatch.designs,
        "MonteCarlo": daskbatch.designs,
        "LatinHypercube": daskbatch.designs,
        "Sobol": daskbatch.designs,
        "Halton": daskbatch.designs,
        "_QMC": daskbatch.designs,
    }
    for name, home in homes.items():
        assert getattr(daskbatch.space, name) is getattr(home, name), name
    for name in daskbatch.space.__all__:
        assert hasattr(daskbatch.space, name), name
    # a space travels to workers by pickle; it comes back equal from its new module
    t = Table({"x": [1.0, 2.0]})
    for space in (
        t,
        MC,
        daskbatch.space.Product(Grid(c=[1, 2]), MonteCarlo({"k": Normal(0, 1)}, n=4, seed=1)),
    ):
        again = pickle.loads(pickle.dumps(space))
        assert again.spec() == space.spec()
        assert all(
            np.array_equal(a, b)
            for a, b in zip(
                again.block((slice(0, 2),) * len(space.batch_dims)).values(),
                space.block((slice(0, 2),) * len(space.batch_dims)).values(),
                strict=True,
            )
        )
