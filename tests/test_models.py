import numpy as np
import pytest

from daskbatch.models.dcsounding import AB2, apparent_resistivity, schlumberger


def image_series(rho1, rho2, h, s, terms=100_000):
    """Closed-form two-layer Schlumberger curve (method of images)."""
    k = (rho2 - rho1) / (rho2 + rho1)
    n = np.arange(1, terms)[:, None]
    return rho1 * (1 + 2 * np.sum(k**n * s**3 / (s**2 + (2 * n * h) ** 2) ** 1.5, axis=0))


def test_half_space_returns_its_resistivity():
    for rho in (1.0, 37.5, 1e4):
        assert np.allclose(apparent_resistivity([rho], []), rho, rtol=1e-3)
        assert np.allclose(apparent_resistivity([rho, rho, rho], [5.0, 50.0]), rho, rtol=1e-3)


@pytest.mark.parametrize("rho1, rho2", [(10, 100), (100, 10), (300, 30), (20, 200)])
def test_two_layer_matches_the_image_series(rho1, rho2):
    got = apparent_resistivity([rho1, rho2], [10.0])
    want = image_series(rho1, rho2, 10.0, AB2)
    assert np.max(np.abs(got / want - 1)) < 0.005


def test_two_layer_asymptotes():
    got = apparent_resistivity([10.0, 100.0], [5.0], ab2=np.array([0.1, 1e5]))
    assert got[0] == pytest.approx(10.0, rel=1e-3)
    assert got[1] == pytest.approx(100.0, rel=0.01)


def test_vectorised_equals_per_sample():
    rng = np.random.default_rng(0)
    rho = 10 ** rng.uniform(0, 3, size=(5, 3))
    h = rng.uniform(1, 50, size=(5, 2))
    block = apparent_resistivity(rho, h)
    for i in range(5):
        assert np.array_equal(block[i], schlumberger(rho[i], h[i]))


def test_invalid_models_raise():
    with pytest.raises(ValueError, match="positive"):
        apparent_resistivity([10.0, 20.0], [-1.0])
    with pytest.raises(ValueError, match="one value fewer"):
        apparent_resistivity([10.0, 20.0], [1.0, 2.0])
