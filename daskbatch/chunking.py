"""Chunk planning: how many samples go into one block (one task, one Zarr chunk).

Pure functions of sizes and measured costs, with no Dask or Zarr in sight, so they
can be property-tested (the one setting read, ``daskbatch.auto.driver-seconds-per-block``,
is also an argument).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import config
from .errors import DaskbatchError

__all__ = [
    "AUTO_BLOCKS_PER_WORKER",
    "AUTO_BLOCK_SECONDS",
    "AUTO_BUSY",
    "block_shape_for_samples",
    "block_starts",
    "chunks_from_block_shape",
    "driver_floor_seconds",
    "plan_block_shape",
]

#: Aim for blocks of about this much work, so that scheduling overhead is noise.
AUTO_BLOCK_SECONDS = 1.0
#: ... and at least this many blocks per worker, so that workers finish together.
AUTO_BLOCKS_PER_WORKER = 4
#: No block holds more than this many bytes of parameters and outputs.
AUTO_BLOCK_BYTES = 8 * 2**20
#: Without a measured cost, blocks hold at most this many samples (with one, the
#: time per block decides).
AUTO_MAX_SAMPLES = 100_000
#: The driver may be busy at most this share of the time taking in blocks, so that
#: workers are kept at least this busy (see :func:`driver_floor_seconds`).
AUTO_BUSY = 0.9


def block_shape_for_samples(samples: int, batch_shape: Sequence[int]) -> tuple[int, ...]:
    """Spread about ``samples`` samples over the batch dims, trailing dims first.

    Trailing dims are kept whole while they fit, so a block of a grid is a
    contiguous slab; the first dim that does not fit is cut.

    Examples
    --------
    >>> block_shape_for_samples(1000, (50, 40, 30))
    (1, 33, 30)
    >>> block_shape_for_samples(10, (100,))
    (10,)
    """
    samples = max(1, int(samples))
    out = []
    budget = samples
    for n in reversed(batch_shape):
        k = max(1, min(n, budget))
        out.append(k)
        budget = max(1, budget // k)
    return tuple(reversed(out))


def chunks_from_block_shape(
    batch_shape: Sequence[int], block_shape: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """Dask-style chunks: equal blocks along each dim, the last one possibly shorter.

    Examples
    --------
    >>> chunks_from_block_shape((10,), (4,))
    ((4, 4, 2),)
    """
    out = []
    for n, b in zip(batch_shape, block_shape, strict=True):
        full, rest = divmod(n, b)
        out.append((b,) * full + ((rest,) if rest else ()))
    return tuple(out)


def block_starts(chunks: Sequence[int]) -> list[int]:
    """Start offsets of the blocks along one dim."""
    starts = [0]
    for c in chunks[:-1]:
        starts.append(starts[-1] + c)
    return starts


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DaskbatchError(f"{name}={value!r} must be a positive integer")
    return value


def plan_block_shape(
    batch_dims: Sequence[str],
    batch_shape: Sequence[int],
    chunk_size: int | str | Mapping[str, int],
    *,
    n_workers: int,
    seconds_per_sample: float | None = None,
    bytes_per_sample: int | None = None,
) -> tuple[int, ...]:
    """Choose the block shape along the batch dims.

    Parameters
    ----------
    batch_dims, batch_shape
        The space's batch dims and their sizes.
    chunk_size
        ``"auto"``, samples per block (an int spread over the dims), or a dict of
        block sizes per batch dim (dims left out are taken whole).
    n_workers
        Workers the run will use.
    seconds_per_sample, bytes_per_sample
        Measured by a probe of the kernel, if available.

    Examples
    --------
    >>> plan_block_shape(("sample",), (1000,), 100, n_workers=2)
    (100,)
    >>> plan_block_shape(("a", "b"), (10, 20), {"a": 2}, n_workers=2)
    (2, 20)
    >>> plan_block_shape(("sample",), (10_000,), "auto", n_workers=2, seconds_per_sample=1e-3)
    (1000,)
    """
    total = math.prod(batch_shape)
    if isinstance(chunk_size, Mapping):
        unknown = sorted(set(chunk_size) - set(batch_dims))
        if unknown:
            raise DaskbatchError(
                f"chunk_size: {unknown} are not batch dims; the batch dims are {list(batch_dims)}"
            )
        shape = []
        for d, n in zip(batch_dims, batch_shape, strict=True):
            b = _check_int(f"chunk_size[{d!r}]", chunk_size.get(d, n))
            shape.append(min(b, n))
        return tuple(shape)
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise DaskbatchError(
                f"chunk_size={chunk_size!r} is not valid; use 'auto', a number of samples per "
                "block, or a dict of block sizes per batch dim"
            )
        return block_shape_for_samples(
            auto_samples_per_block(
                total,
                n_workers=n_workers,
                seconds_per_sample=seconds_per_sample,
                bytes_per_sample=bytes_per_sample,
            ),
            batch_shape,
        )
    return block_shape_for_samples(min(_check_int("chunk_size", chunk_size), total), batch_shape)


#: the floor of :func:`driver_floor_seconds` applies from this many seconds on (with the
#: default setting, from 18 workers): on fewer workers the other rules already keep blocks
#: long enough, and plans of a few workers stay what they were, independent of the
#: probe's noise on runs of milliseconds
DRIVER_FLOOR_FROM = 0.1


def driver_floor_seconds(n_workers: int, total_seconds: float, driver_seconds_per_block: float) -> float:
    """The shortest block (seconds) that keeps the driver from being the bottleneck.

    The driver and scheduler take in at most ``1 / c`` blocks per second (``c``:
    their CPU seconds per block), and ``w`` busy workers finish ``w / d`` blocks per
    second of ``d`` seconds each; so ``w / d ≤ AUTO_BUSY / c``, that is
    ``d ≥ w × c / AUTO_BUSY``. With as many workers busy as there are blocks,
    ``w = min(n_workers, total_seconds / d)``, which gives
    ``d ≥ min(n_workers × k, √(total_seconds × k))`` with ``k = c / AUTO_BUSY``.

    Examples
    --------
    >>> round(driver_floor_seconds(1000, 1e6, 0.005), 3)  # 1,000 workers, 5 ms per block
    5.556
    >>> round(driver_floor_seconds(1000, 100.0, 0.005), 3)  # a short run: fewer blocks
    0.745
    >>> round(driver_floor_seconds(2, 1e6, 0.005), 4)
    0.0111
    """
    k = max(0.0, float(driver_seconds_per_block)) / AUTO_BUSY
    return min(max(1, int(n_workers)) * k, math.sqrt(max(0.0, total_seconds) * k))


def aligned_samples(size: int, multiple: int | None, total: int) -> int:
    """``size`` samples per block fitted to a source read in pieces of ``multiple`` rows
    (a Parquet file's row groups): a multiple of it, or a divisor of it, so that no
    block reads a piece another block reads too; ``size`` as it is when ``multiple`` is
    None, 1, or not smaller than every row.

    Examples
    --------
    >>> [aligned_samples(n, 500, 20_000) for n in (770, 1900, 120)]
    [500, 1500, 100]
    """
    if not multiple or multiple <= 1 or multiple >= total or size <= 0:
        return size
    if size >= multiple:
        return size // multiple * multiple
    k = math.ceil(multiple / size)
    while multiple % k:  # a divisor of the piece: blocks tile it
        k += 1
    return multiple // k


def auto_samples_per_block(
    total: int,
    *,
    n_workers: int,
    seconds_per_sample: float | None = None,
    bytes_per_sample: int | None = None,
    driver_seconds_per_block: float | None = None,
) -> int:
    """Samples per block for ``chunk_size="auto"``.

    The smallest of: what takes about :data:`AUTO_BLOCK_SECONDS` (when the cost
    is known, else :data:`AUTO_MAX_SAMPLES`), what leaves
    :data:`AUTO_BLOCKS_PER_WORKER` blocks per worker, and what fits
    :data:`AUTO_BLOCK_BYTES`; never below one sample. Then made a little
    smaller if that gives every worker the same number of equal blocks.

    When the cost is known, blocks last at least :func:`driver_floor_seconds`
    (``n_workers × driver_seconds_per_block / 0.9`` when there is work for every
    worker), over the two time rules above, so that a large cluster is not held up
    by its driver: the driver takes in at most ``1 / driver_seconds_per_block``
    blocks per second. Only :data:`AUTO_BLOCK_BYTES` (and the memory budget
    :func:`~daskbatch.plan.make_plan` applies) caps that floor. It applies only when
    ``n_workers × driver_seconds_per_block / 0.9`` reaches :data:`DRIVER_FLOOR_FROM`
    (18 workers with the default setting): a few workers' plans are unchanged.
    ``driver_seconds_per_block`` defaults to the setting
    ``daskbatch.auto.driver-seconds-per-block``; 0 turns the floor off.

    Examples
    --------
    >>> auto_samples_per_block(1_000_000, n_workers=2, seconds_per_sample=1e-3)
    1000
    >>> auto_samples_per_block(100, n_workers=2)
    10
    >>> auto_samples_per_block(10**8, n_workers=1000, seconds_per_sample=1e-4,
    ...                        driver_seconds_per_block=0.005)  # 10 s: one round, not 1 s
    100000
    """
    workers = max(1, int(n_workers))
    balance = max(1, total // (AUTO_BLOCKS_PER_WORKER * workers))
    limits = [balance]
    cap = total
    if bytes_per_sample:
        cap = max(1, AUTO_BLOCK_BYTES // int(bytes_per_sample))
        limits.append(cap)
    floor = 1
    if seconds_per_sample is not None and seconds_per_sample > 0:
        limits.append(max(1, round(AUTO_BLOCK_SECONDS / seconds_per_sample)))
        if driver_seconds_per_block is None:
            driver_seconds_per_block = config.get("auto.driver-seconds-per-block")
        k = max(0.0, float(driver_seconds_per_block)) / AUTO_BUSY
        if workers * k >= DRIVER_FLOOR_FROM:  # a large cluster: the driver could hold it up
            least = driver_floor_seconds(workers, total * seconds_per_sample, driver_seconds_per_block)
            floor = max(1, min(math.ceil(least / seconds_per_sample), cap, total))
    else:  # no measured cost: keep blocks moderate
        limits.append(AUTO_MAX_SAMPLES)
    size = max(1, min(limits), floor)
    # the same number of equal blocks per worker: as many rounds of blocks as this size
    # needs, cut evenly, so that no worker is left with one more block, or a longer one,
    # than the others at the end (the smaller size never breaks the limits above; when
    # it would break the floor, one round fewer)
    blocks = math.ceil(total / size)
    if blocks > workers:
        even = max(1, math.ceil(total / (math.ceil(blocks / workers) * workers)))
        if even < floor:  # blocks > workers, so total > workers × floor: at least one round
            even = math.ceil(total / (total // (workers * floor) * workers))
        if even <= cap:
            size = even
    return size
