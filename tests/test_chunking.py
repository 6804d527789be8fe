import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskbatch.chunking import (
    AUTO_BLOCKS_PER_WORKER,
    auto_samples_per_block,
    block_shape_for_samples,
    chunks_from_block_shape,
    plan_block_shape,
)
from daskbatch.errors import DaskbatchError

shapes = st.lists(st.integers(1, 60), min_size=1, max_size=4).map(tuple)


@settings(max_examples=200)
@given(shape=shapes, samples=st.integers(1, 10**6))
def test_block_shape_fits_and_covers(shape, samples):
    b = block_shape_for_samples(samples, shape)
    assert all(1 <= bi <= n for bi, n in zip(b, shape, strict=True))
    # never more than asked, and more than half of it (or the whole space)
    assert math.prod(b) <= samples
    assert 2 * math.prod(b) > min(samples, math.prod(shape))
    # trailing dims are kept whole: before the dim that is cut, every dim is 1
    cut = [i for i, (bi, n) in enumerate(zip(b, shape, strict=True)) if bi < n]
    if cut:
        assert all(bi == 1 for bi in b[: cut[-1]])
    chunks = chunks_from_block_shape(shape, b)
    assert tuple(sum(c) for c in chunks) == shape
    # regular: every chunk but the last has the block size (a Zarr regular grid)
    assert all(all(c == bi for c in cs[:-1]) for cs, bi in zip(chunks, b, strict=True))


@settings(max_examples=200)
@given(
    total=st.integers(1, 10**9),
    workers=st.integers(1, 512),
    sec=st.one_of(st.none(), st.floats(1e-7, 100)),
    nbytes=st.one_of(st.none(), st.integers(1, 10**8)),
)
def test_auto_rule_bounds(total, workers, sec, nbytes):
    n = auto_samples_per_block(total, n_workers=workers, seconds_per_sample=sec, bytes_per_sample=nbytes)
    assert n >= 1
    # enough blocks for load balance whenever there are enough samples
    if total >= AUTO_BLOCKS_PER_WORKER * workers:
        assert math.ceil(total / n) >= AUTO_BLOCKS_PER_WORKER * workers
    if sec is not None and n > 1:
        assert n * sec <= 1.5
    # balanced rounds, when there are more blocks than workers: the busiest worker (one
    # block per round) has at most one sample per round more than an even share
    blocks = math.ceil(total / n)
    if blocks > workers:
        rounds = math.ceil(blocks / workers)
        assert rounds * n <= total / workers + rounds


def test_explicit_chunk_sizes():
    assert plan_block_shape(("a", "b"), (10, 20), 50, n_workers=1) == (2, 20)
    assert plan_block_shape(("a", "b"), (10, 20), {"b": 5}, n_workers=1) == (10, 5)
    assert plan_block_shape(("s",), (10,), 1000, n_workers=1) == (10,)


@pytest.mark.parametrize(
    "chunk, words",
    [
        (0, "chunk_size=0 must be a positive integer"),
        ("big", "chunk_size='big' is not valid"),
        ({"c": 2}, r"\['c'\] are not batch dims"),
        ({"a": -1}, r"chunk_size\['a'\]=-1"),
    ],
)
def test_bad_chunk_sizes(chunk, words):
    with pytest.raises(DaskbatchError, match=words):
        plan_block_shape(("a", "b"), (10, 20), chunk, n_workers=1)
