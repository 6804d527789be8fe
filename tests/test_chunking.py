import math

import dask
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskbatch.chunking import (
    AUTO_BLOCK_BYTES,
    AUTO_BLOCKS_PER_WORKER,
    AUTO_BUSY,
    DRIVER_FLOOR_FROM,
    auto_samples_per_block,
    block_shape_for_samples,
    chunks_from_block_shape,
    driver_floor_seconds,
    plan_block_shape,
)
from daskbatch.errors import DaskbatchError
from daskbatch.plan import make_plan

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
    """The rule without the driver's floor (tested below)."""
    n = auto_samples_per_block(
        total, n_workers=workers, seconds_per_sample=sec, bytes_per_sample=nbytes, driver_seconds_per_block=0
    )
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


@settings(max_examples=300)
@given(
    total=st.integers(1, 10**9),
    workers=st.integers(1, 4096),
    sec=st.floats(1e-7, 10),
    nbytes=st.one_of(st.none(), st.integers(1, 10**8)),
    c=st.floats(0, 0.05),
)
def test_auto_blocks_last_long_enough_for_the_driver(total, workers, sec, nbytes, c):
    """The driver takes in at most 1/c blocks per second: busy workers ask for
    min(workers, blocks) / d blocks per second of blocks of d seconds, which must stay
    within AUTO_BUSY / c, unless the block is all the run or all AUTO_BLOCK_BYTES allows."""
    n = auto_samples_per_block(
        total, n_workers=workers, seconds_per_sample=sec, bytes_per_sample=nbytes, driver_seconds_per_block=c
    )
    cap = AUTO_BLOCK_BYTES // nbytes if nbytes else total
    assert 1 <= n <= max(1, min(total, cap))
    blocks, d = math.ceil(total / n), n * sec
    least = driver_floor_seconds(workers, total * sec, c)
    applies = workers * c / AUTO_BUSY >= DRIVER_FLOOR_FROM  # a small cluster: it does not
    if not applies:
        least = 0.0
    if n < min(total, cap) and applies:
        assert min(workers, blocks) * c / AUTO_BUSY <= (d + c / AUTO_BUSY) * (1 + 1e-9)
        assert d >= least * (1 - 1e-9)
    assert d <= max(1.5, 2 * least + sec)  # no longer than the floor asks (or about a second)
    if blocks > workers:  # still the same number of blocks per worker, where the bytes allow
        rounds = math.ceil(blocks / workers)
        assert rounds * n <= total / workers + rounds or n >= cap // 2


def _plan(workers: int, total: int, seconds: float) -> tuple[int, ...]:
    p = make_plan(kernel="k", batch_dims=("sample",), batch_shape=(total,), chunk_size="auto",
                  n_workers=workers, cluster="c", bytes_in_per_sample=8, bytes_out_per_sample=8,
                  seconds_per_sample=seconds, memory_limit=4 * 2**30)  # fmt: skip
    return p.block_shape


def test_a_large_cluster_gets_blocks_its_driver_keeps_up_with():
    """1,000 workers of a cheap kernel (0.1 ms a sample, 3 hours of work): blocks last
    at least 1,000 × daskbatch.auto.driver-seconds-per-block / 0.9 (5.6 s), not the 1 s
    of a small cluster; up to 17 workers the plans are what they were without the rule."""
    (size,) = _plan(1000, 10**8, 1e-4)
    assert size * 1e-4 >= 1000 * 0.005 / 0.9
    with dask.config.set({"daskbatch.auto.driver-seconds-per-block": 0.02}):  # the setting counts
        (size,) = _plan(1000, 10**9, 1e-4)
        assert size * 1e-4 >= 1000 * 0.02 / 0.9
    runs = [(n, s) for n in (10, 1000, 20_000) for s in (1e-6, 1e-4, 1.3e-3, 0.1, 10.0)]
    runs += [(10**6, 1e-6), (10**6, 1.3e-3), (10**8, 1e-6), (10**8, 1e-4)]
    today = {}
    with dask.config.set({"daskbatch.auto.driver-seconds-per-block": 0.0}):
        for n, s in runs:
            today[n, s] = _plan(2, n, s)
    # on 2 workers (and up to 17 with the default setting) the floor does not apply
    assert {run: _plan(2, *run) for run in runs} == today
    with dask.config.set({"daskbatch.auto.driver-seconds-per-block": 0.0}):
        off17 = {run: _plan(17, *run) for run in runs}
    assert {run: _plan(17, *run) for run in runs} == off17
    assert _plan(18, 10**8, 1e-4) != _plan(17, 10**8, 1e-4)  # from 18 workers on, it does


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
