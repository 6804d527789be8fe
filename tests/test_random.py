import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daskbatch.random import uniforms


@settings(max_examples=50)
@given(
    seed=st.integers(0, 2**63 - 1),
    n=st.integers(1, 500),
    cut=st.integers(0, 500),
    draws=st.integers(1, 4),
)
def test_any_split_gives_the_same_numbers(seed, n, cut, draws):
    cut = min(cut, n)
    whole = uniforms(seed, "x", np.arange(n), draws)
    parts = np.concatenate(
        [uniforms(seed, "x", np.arange(0, cut), draws), uniforms(seed, "x", np.arange(cut, n), draws)]
    )
    assert np.array_equal(whole, parts)


def test_open_interval_and_roughly_uniform():
    u = uniforms(1, "x", np.arange(200_000), 2)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.003
    hist, _ = np.histogram(u, bins=20, range=(0, 1))
    assert hist.min() > 0.95 * hist.mean()
    # draws of one sample and neighbouring samples are uncorrelated
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.01


def test_seeds_and_streams_differ():
    idx = np.arange(1000)
    a = uniforms(1, "x", idx)
    assert not np.array_equal(a, uniforms(2, "x", idx))
    assert not np.array_equal(a, uniforms(1, "y", idx))
    assert np.array_equal(a, uniforms(1, "x", idx))
