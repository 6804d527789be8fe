import math

import numpy as np
import pytest
from scipy import stats

from daskbatch import LogNormal, LogUniform, Normal, Uniform
from daskbatch.distributions import from_spec
from daskbatch.errors import SpaceError

U = np.linspace(0.01, 0.99, 99)[:, None]


def test_inverse_cdfs_match_scipy():
    assert np.allclose(Uniform(2, 5).ppf(U), stats.uniform(2, 3).ppf(U[:, 0]))
    assert np.allclose(Normal(1, 2).ppf(U), stats.norm(1, 2).ppf(U[:, 0]))
    assert np.allclose(LogUniform(1, 1000).ppf(U), stats.loguniform(1, 1000).ppf(U[:, 0]))
    assert np.allclose(
        LogNormal(2, 0.5, base=10).ppf(U), stats.lognorm(0.5 * math.log(10), scale=100).ppf(U[:, 0])
    )


def test_vector_valued():
    d = Normal([30, 70], [5, 10])
    assert d.shape == (2,)
    x = d.ppf(np.full((3, 2), 0.5))
    assert x.tolist() == [[30, 70]] * 3
    assert LogUniform(1, 10, size=3).shape == (3,)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Uniform(1, 1), "low=1.0 must be below high=1.0"),
        (lambda: LogUniform(0, 1), "low=0.0 must be > 0"),
        (lambda: Normal(0, -1), "sd=-1.0 must be > 0"),
        (lambda: LogNormal(0, 0), "sigma=0.0 must be > 0"),
        (lambda: Normal([1, 2], [1, 1, 1]), "lengths do not match"),
        (lambda: Normal(0, 1, size=0), "size=0"),
        (lambda: Normal("a", 1), "'a' is not a number"),
        (lambda: Normal(float("nan"), 1), "must be finite"),
        (lambda: LogNormal(0, 1, base=1), "base=1"),
    ],
)
def test_invalid_parameters_name_the_value(make, words):
    with pytest.raises(SpaceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize(
    "dist",
    [Uniform(0, 1), LogUniform(1, 10, size=3, dim="layer"), Normal([1, 2], 1), LogNormal(2, 0.5, base=10)],
    ids=repr,
)
def test_spec_round_trip(dist):
    assert from_spec(dist.spec()) == dist


def test_from_spec_rejects_unknown():
    with pytest.raises(SpaceError, match="dist='gamma' is not one of"):
        from_spec({"dist": "gamma"})
    with pytest.raises(SpaceError, match=r"unknown key\(s\) \['mu'\]"):
        from_spec({"dist": "normal", "mean": 0, "sd": 1, "mu": 3})


def test_every_distribution_is_importable_from_daskbatch_distributions():
    import daskbatch.distributions
    import daskbatch.parametric

    for name in daskbatch.parametric.__all__:
        assert getattr(daskbatch.distributions, name) is getattr(daskbatch.parametric, name), name
    for name in daskbatch.distributions.__all__:
        assert hasattr(daskbatch.distributions, name), name
    # a spec names a parametric family and a distribution of this module alike
    assert isinstance(from_spec({"dist": "beta", "a": 2, "b": 3}), daskbatch.parametric.Beta)
    assert from_spec({"dist": "constant", "value": 1.5}).spec() == {"dist": "constant", "value": 1.5}
