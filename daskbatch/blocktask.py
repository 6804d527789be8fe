"""The block task: what a worker runs for one block, and nothing else.

A worker imports only this module (and what it needs: the kernel wrapper, the store,
the space), never the driver's run loop, the CLI, analysis or reports. One task per
block draws the block's parameters, runs the kernel on them, writes the block into
its own Zarr chunks and commits it, and returns a small summary to the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .holder import check_holder
from .hygiene import limit_malloc_arenas, release_freed_memory
from .kernel import MAX_ERRORS_PER_BLOCK, STATUS, TIMEOUT, BlockResult, Kernel, timeout_record
from .records import failure_log_of
from .space import Param, Space
from .store import Layout, Store

__all__ = [
    "BlockContext",
    "block_summary",
    "block_task",
    "build_tasks",
    "compute",
    "kernel_inputs",
    "piece_task",
    "run_params",
    "should_leave",
]

#: errors a block's summary carries back to the driver
SUMMARY_ERRORS = 5


@dataclass(frozen=True)
class BlockContext:
    """What every block task of a run shares: the kernel, the store and the run's options."""

    kernel: Kernel
    store: str
    layout: Layout
    param_names: tuple[str, ...]
    constants: Mapping[str, Any]
    retries: int = 0
    timeout: float | None = None
    kill_on_timeout: bool = False
    retry_failed: bool = False
    #: what a block is expected to take (seconds), as the driver knows it: None if unknown
    block_seconds: float | None = None
    #: the probe's first samples (block shape, BlockResult), which block 0 keeps
    first: Any = None
    #: the digests of the kernel's code in the driver (:func:`~daskbatch.freshness.code_digests`),
    #: which a worker process checks before its first block; None: not checked (the driver's own)
    code_digests: Mapping[str, Sequence[str]] | None = None
    #: this run's id: a block on a thread of the driver whose run has stopped writes nothing
    run_id: str = ""
    #: the run's holder of the store's lock (host, pid, start): a block task whose run lost
    #: the lock to another run writes nothing (:func:`daskbatch.holder.check_holder`)
    holder: tuple[Any, ...] | None = None


#: the runs of this process that stopped (Ctrl-C, SIGTERM, an error), by id: their blocks
#: still running on threads of this process (cluster="threads") write nothing once the
#: run has let go of the store's lock
_STOPPED_RUNS: set[str] = set()


class RunStoppedError(Exception):
    """A block of a run that stopped, on a thread of the driver: not written."""


def stop_blocks(run_id: str) -> None:
    """Keep the blocks of run ``run_id`` that are still running on threads of this
    process from writing to the store (called as the run stops, before its lock goes)."""
    if run_id:
        _STOPPED_RUNS.add(run_id)


def _not_stopped(ctx: BlockContext) -> None:
    """Before a block task changes the store: its run must still be running, and hold the
    store's lock (a run whose lock another run took over writes nothing more)."""
    if ctx.run_id and ctx.run_id in _STOPPED_RUNS:
        raise RunStoppedError(f"the run stopped: block not written to {ctx.store!r}")
    if ctx.holder is not None:
        check_holder(ctx.store, ctx.holder)


def run_params(params: Mapping[str, Param], kernel: Kernel) -> dict[str, Param]:
    """The parameters a run's store keeps (its ``Layout.params``), given the kernel.

    A table's column the kernel does not take (``optional``, and no ``**kwargs``)
    is a label: stored, as a coordinate along the batch dims. A column read from an
    input file and taken by the kernel (``stored=False``) is referenced, not stored,
    and left out. Grid axes stay (they are their dims' coordinates).
    """
    out: dict[str, Param] = {}
    for name, p in params.items():
        if p.optional and not kernel.accepts(name):
            p = dataclasses.replace(p, stored=True, label=True)
        if p.is_axis or p.stored:
            out[name] = p
    return out


def kernel_inputs(
    values: Mapping[str, Any], params: Mapping[str, Any], batch_dims: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A block's parameter values as the kernel sees them, and what the store keeps.

    A grid axis (a 1-D array along its own dim) is shaped to broadcast against the
    block's batch dims and is not stored per block (it is the dim's coordinate); every
    other parameter is passed as it is (the kernel drops those it does not take: a
    table's labels) and stored if ``params`` has it with ``stored`` set (a column
    read from an input file is referenced instead, see :func:`run_params`).
    """
    nd = len(batch_dims)
    kernel_params: dict[str, np.ndarray] = {}
    stored_params: dict[str, np.ndarray] = {}
    for name, arr in values.items():
        p = params.get(name)
        if p is not None and p.is_axis:
            shape = [1] * nd
            shape[batch_dims.index(name)] = -1
            kernel_params[name] = np.asarray(arr).reshape(shape)
        else:
            kernel_params[name] = np.asarray(arr)
            if p is not None and getattr(p, "stored", True):
                stored_params[name] = kernel_params[name]
    return kernel_params, stored_params


def block_inputs(ctx: BlockContext, block: tuple[int, ...], param_arrays) -> tuple[dict, dict]:
    """The kernel's view of a block's parameters, and what the store keeps of them."""
    values = dict(zip(ctx.param_names, param_arrays, strict=True))
    return kernel_inputs(values, ctx.layout.params, tuple(ctx.layout.batch_dims))


def compute(
    ctx: BlockContext,
    block: tuple[int, ...],
    kernel_params: Mapping[str, np.ndarray],
    positions: list[int] | None = None,
) -> BlockResult:
    """Run the kernel on a block (or some of its samples), honouring recorded timeouts."""
    layout = ctx.layout
    region = layout.block_slices(block)
    batch_shape = tuple(s.stop - s.start for s in region)
    st = Store(ctx.store)

    # samples a timeout stopped in an earlier attempt (their process was ended): skipped
    stopped = st.timeouts(block) if ctx.timeout is not None else {}
    wanted = range(math.prod(batch_shape)) if positions is None else positions
    todo = None
    if stopped or positions is not None:
        todo = [i for i in wanted if i not in stopped]
    res = ctx.kernel.run_block(
        kernel_params,
        batch_shape,
        ctx.constants,
        positions=todo,
        retries=ctx.retries,
        timeout=ctx.timeout,
        on_timeout=lambda pos, secs: st.record_timeout(block, pos, secs),
        kill_on_timeout=ctx.kill_on_timeout,
        space=layout,
        region=region,
    )
    flat_status = res.status.reshape(-1)
    for i in sorted(stopped) if stopped else ():  # never a Python loop over every sample
        if positions is None or i in positions:
            flat_status[i] = TIMEOUT
            res.n_errors += 1
            rec = timeout_record(layout, region, i, stopped[i], process_ended=True)
            res.failures.add_record(i, rec)
            if len(res.errors) < MAX_ERRORS_PER_BLOCK:
                res.errors.append(rec.to_dict())
    return res


def block_summary(block, counts, res: BlockResult, nd: int, ran: np.ndarray | None = None) -> np.ndarray:
    """What the driver hears of a committed block: its samples per status, those of the
    samples computed in this task (``ran``, a flat mask; None: all of them; a block
    completed or retried keeps the others as stored), its first errors and seconds."""
    out = np.empty((1,) * nd, dtype=object)
    computed = counts
    if ran is not None:
        computed = np.bincount(res.status.reshape(-1)[ran], minlength=len(STATUS))
    out[(0,) * nd] = {
        "block": block,
        "counts": [int(c) for c in counts],
        "computed": [int(c) for c in computed],
        "errors": res.errors[:SUMMARY_ERRORS],
        "seconds": res.seconds,
    }
    return out


class Opaque:
    """A value passed to a task as it is. dask walks the arguments of every task it
    builds, and a dataclass field by field (the run's context: kernel, layout, its
    coordinates): 1.7 ms per block, seconds for thousands of blocks."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


#: set by a batch job's script for its workers: when the job ends (Unix seconds)
DEADLINE_ENV = "DASKBATCH_WORKER_DEADLINE"
#: a block starts only with at least SAFETY × its expected seconds + MARGIN seconds left
SAFETY = 1.25
MARGIN = 10.0
#: wall seconds of the last blocks this worker process ran (their median is its estimate)
_BLOCK_WALL: list[float] = []
_KEEP_WALL = 20


def should_leave(
    now: float, deadline: float | None, expected: float | None, safety: float = SAFETY, margin: float = MARGIN
) -> bool:
    """Whether a block expected to take ``expected`` seconds must not start at ``now``.

    True when the time left before ``deadline`` (Unix seconds) is less than
    ``expected × safety + margin``; False when the deadline or the block's duration
    is not known.

    Examples
    --------
    >>> should_leave(1000.0, 1100.0, 20.0), should_leave(1000.0, 1030.0, 20.0)
    (False, True)
    >>> should_leave(1000.0, None, 20.0), should_leave(1000.0, 1001.0, None)
    (False, False)
    """
    if deadline is None or expected is None:
        return False
    return deadline - now < expected * safety + margin


@functools.cache
def _process_start() -> float:
    import psutil

    return float(psutil.Process().create_time())


def worker_deadline(worker: Any) -> float | None:
    """When ``worker`` must be gone (Unix seconds), or None (a local cluster).

    The earlier of its batch job's end (:data:`DEADLINE_ENV`, exported by the job
    script) and the moment its own ``--lifetime`` retires it (counted from its
    process's start, which a nanny's restart resets, the job's end it does not).
    """
    times = []
    with contextlib.suppress(ValueError):
        times.append(float(os.environ.get(DEADLINE_ENV) or "nan"))
    lifetime = getattr(worker, "lifetime", None)
    if lifetime:
        times.append(_process_start() + float(lifetime))
    times = [t for t in times if t == t]  # not NaN
    return min(times) if times else None


def leave_before_deadline(block_seconds: float | None) -> None:
    """On a worker whose job ends before a block could finish: retire, run the block elsewhere.

    Does nothing outside a ``distributed`` worker or without a deadline
    (:func:`worker_deadline`). Otherwise compares the time left with the block's
    expected duration: the median wall time of the blocks this worker process ran,
    else ``block_seconds`` (the driver's estimate). If it cannot finish in time
    (:func:`should_leave`), the worker retires gracefully (the scheduler moves its
    data, its nanny does not restart it, its job ends) and the block task raises
    ``distributed.Reschedule``: the scheduler runs it on another worker, and neither
    dask nor daskbatch counts it as a failure. Without another worker the block waits
    for the job that replaces this one.
    """
    if "distributed" not in sys.modules:
        return
    from distributed import Reschedule, get_worker
    from distributed.core import Status

    try:
        worker = get_worker()
    except ValueError:  # not on a distributed worker
        return
    deadline = worker_deadline(worker)
    expected = statistics.median(_BLOCK_WALL) if _BLOCK_WALL else block_seconds
    now = time.time()
    if not should_leave(now, deadline, expected):
        return
    assert deadline is not None and expected is not None
    working = (Status.running, Status.paused)
    if worker.status in working:
        reason = (
            f"daskbatch: {deadline - now:.0f} s left before this worker must leave (its job's "
            f"walltime, its --lifetime), "
            f"a block takes about {expected:.0f} s; no new block starts here"
        )
        worker.loop.add_callback(worker.close_gracefully, reason=reason)
    # once the scheduler knows the worker retires, it gives the block to another one
    give_up = time.monotonic() + 10.0
    while worker.status in working and time.monotonic() < give_up:
        time.sleep(0.05)
    raise Reschedule()


def read_block(
    space: Space, region: tuple[slice, ...], objects: Sequence[str] = ()
) -> tuple[Mapping[str, Any], dict[str, Any] | None]:
    """A block's parameters, and what its record keeps of its input: for a table read
    from a Parquet file the digest of the rows read (a rerun on a changed file compares
    it), else None. Such a table's text columns named in ``objects`` come as object
    arrays of Python strings."""
    if getattr(space, "digests_rows", False):
        return space.block_with_digest(region, objects=objects)  # type: ignore[attr-defined]
    return space.block(region), None


def loose_text(ctx: BlockContext, space: Space) -> tuple[str, ...]:
    """The text parameters a per-sample kernel gets one string at a time (no core dims)
    and the store does not keep: a block may hold them as Python strings (each sample
    gets the ``str`` a ``StringDType`` array would make for it, without one more copy of
    the text)."""
    if not ctx.kernel.per_sample:
        return ()
    kept = ctx.layout.params  # what the store keeps (labels included)
    return tuple(
        n
        for n, p in space.params.items()
        if n not in kept and not p.core_shape and p.dtype.kind == "T" and ctx.kernel.accepts(n)
    )


def block_task(
    block: tuple[int, ...], source: Space | Mapping[str, np.ndarray], context: Opaque
) -> np.ndarray:
    """Run one block and commit it to the store; return a small summary.

    ``source`` is the space, which draws the block's parameters here, or, for a table
    held in memory, the block's rows themselves; ``context`` holds the run's
    :class:`BlockContext`. With its ``retry_failed`` a block that is already
    committed recomputes only its samples that are not ok.
    """
    ctx: BlockContext = context.value
    _not_stopped(ctx)
    leave_before_deadline(ctx.block_seconds)  # a worker whose job is about to end: elsewhere
    t0 = time.monotonic()
    _check_code(ctx)
    if ctx.kill_on_timeout:  # a worker process, never the driver: fewer malloc arenas
        limit_malloc_arenas()  # once per process, in clusters daskbatch did not start too
    layout = ctx.layout
    nd = len(layout.batch_dims)
    if isinstance(source, Space):
        values, inputs = read_block(source, layout.block_slices(block), loose_text(ctx, source))
    else:
        values, inputs = source, None
    kernel_params, stored_params = block_inputs(ctx, block, [values[k] for k in ctx.param_names])
    st = Store(ctx.store)
    # found once per process and store: st.ledger reads the provenance again, which a
    # long grid axis makes megabytes (60 ms a block at 200,000 axis values)
    ledger = st._writer_ledger(layout)
    if ledger.is_committed(block):
        # a committed block runs again to retry its failed samples (retry_failed), or to
        # complete it once the store grew (its new samples are pending): the others are
        # read back and kept bit for bit
        old_outputs, old_status = st.read_block(layout, block)
        flat_old = old_status.reshape(-1)
        redo_mask = flat_old == STATUS["pending"]
        if ctx.retry_failed:
            redo_mask |= flat_old != STATUS["ok"]
        if len(layout.outputs) < len(ctx.kernel.outputs):
            # outputs only reduced (Output(store=False)) cannot be read back: the block's
            # partial reductions need every sample again (the stored values are still kept)
            redo_mask[:] = True
        redo = [int(i) for i in np.flatnonzero(redo_mask)]
        ran = redo_mask
        res = compute(ctx, block, kernel_params, redo)
        keep = res.status.reshape(-1) == STATUS["pending"]  # not recomputed: the old values
        res.status.reshape(-1)[keep] = old_status.reshape(-1)[keep]
        for k, v in res.outputs.items():
            if k not in old_outputs:
                continue
            flat = v.reshape((keep.size, -1))
            flat[keep] = old_outputs[k].reshape((keep.size, -1))[keep]
        _keep_old_errors(st, layout, block, res, keep & (flat_old != STATUS["ok"]))
        ledger.forget([block])  # a crash from here on leaves the block pending, not half-new
    elif ctx.first is not None and all(
        s.start < n for s, n in zip(layout.block_slices(block), ctx.first[0], strict=True)
    ):
        res, ran = _with_first_samples(ctx, block, kernel_params), None  # the probe's: this run's too
    else:
        res, ran = compute(ctx, block, kernel_params), None
    _not_stopped(ctx)  # a thread of a run that stopped while this block computed
    counts = st.write_block(
        layout,
        block,
        stored_params,
        res.outputs,
        res.status,
        res.errors,
        res.n_errors,
        res.seconds,
        failures=res.failures,
        inputs=inputs,
    )
    st.clear_timeouts(block)
    summary = block_summary(block, counts, res, nd, ran)
    if ctx.kill_on_timeout:  # a worker process: give freed blocks back when they pile up
        block_bytes = sum(np.asarray(v).nbytes for v in (*res.outputs.values(), *stored_params.values()))
        del res, values, kernel_params, stored_params
        release_freed_memory(block_bytes)
    _BLOCK_WALL.append(time.monotonic() - t0)
    del _BLOCK_WALL[:-_KEEP_WALL]
    return summary


def _with_first_samples(ctx: BlockContext, block: tuple[int, ...], kernel_params) -> BlockResult:
    """A block of a run in this process that overlaps the probe's first samples: the
    ones the probe computed ok are kept, the others computed (a short job would
    otherwise compute its first 16 twice)."""
    shape, first = ctx.first
    region = ctx.layout.block_slices(block)
    bshape = tuple(s.stop - s.start for s in region)
    # the part of the probe's box in this block, in the block's and the probe's positions
    lo = [s.start for s in region]
    hi = [min(s.stop, n) for s, n in zip(region, shape, strict=True)]
    if any(h <= a for a, h in zip(lo, hi, strict=True)):
        return compute(ctx, block, kernel_params)
    grid = np.indices([h - a for a, h in zip(lo, hi, strict=True)]).reshape(len(shape), -1)
    in_block = np.ravel_multi_index(grid, bshape)
    in_probe = np.ravel_multi_index(grid + np.asarray(lo)[:, None], shape)
    ok = first.status.reshape(-1)[in_probe] == STATUS["ok"]
    kept = np.zeros(math.prod(bshape), dtype=bool)
    kept[in_block[ok]] = True
    res = compute(ctx, block, kernel_params, [int(i) for i in np.flatnonzero(~kept)])
    res.status.reshape(-1)[kept] = STATUS["ok"]
    taken = np.zeros(first.status.size, dtype=bool)
    taken[in_probe[ok]] = True
    for k, v in res.outputs.items():
        # both masks list the samples in the same order: row-major in the box
        v.reshape((kept.size, -1))[kept] = first.outputs[k].reshape((taken.size, -1))[taken]
    res.seconds += first.seconds * float(taken.sum()) / max(1, taken.size)
    return res


def _keep_old_errors(st: Store, layout: Layout, block: tuple[int, ...], res: BlockResult, kept) -> None:
    """Carry the error records of the not-ok samples a block keeps (not recomputed) into
    its new record, before the new ones."""
    n_kept = int(np.count_nonzero(kept))
    if not n_kept:
        return
    region = layout.block_slices(block)
    shape = tuple(s.stop - s.start for s in region)
    positions = np.unravel_index(np.flatnonzero(kept), shape)
    glob = tuple(p + s.start for p, s in zip(positions, region, strict=True))
    indices = set(np.ravel_multi_index(glob, layout.batch_shape).tolist())
    record = st._writer_ledger(layout).record(block)
    old = [e for e in (record.errors if record is not None else []) if e.get("index") in indices]
    res.errors = old + res.errors
    res.n_errors += n_kept
    if record is not None:  # every kept failure's message too
        res.failures.merge(failure_log_of(record.failures, old, shape), np.flatnonzero(kept).tolist())


def piece_task(
    ctx: BlockContext, block: tuple[int, ...], kernel_params: Mapping[str, np.ndarray], positions: list[int]
) -> BlockResult:
    """Some samples of a block whose task kept killing its worker; nothing is written."""
    _check_code(ctx)
    return compute(ctx, block, kernel_params, positions)


def _check_code(ctx: BlockContext) -> None:
    """A worker that imported an edited file of the kernel's code computes nothing
    (:func:`daskbatch.freshness.check_worker_code`)."""
    if ctx.code_digests is not None:
        from .freshness import check_worker_code

        check_worker_code(ctx.kernel, ctx.code_digests)


def build_tasks(space: Space, layout: Layout, ctx: BlockContext, blocks) -> dict[tuple[int, ...], Any]:
    """One dask task per block in ``blocks``, with no dependencies.

    Each task draws its block's parameters itself (a design computes them from the
    sample index; a grid from its axes; a table read from files reads its rows), so
    the scheduler handles one task per block and no parameter array ever travels.
    The exceptions (``Space.carries_rows``) are a table held in memory and a list of
    files: their task carries the block's rows, not the whole table.
    """
    import dask

    token = hashlib.sha256(f"{ctx.store}{layout.store_id}".encode()).hexdigest()[:12]
    carries_rows = bool(getattr(space, "carries_rows", False))
    tasks = {}
    # the probe's first samples travel only with the blocks that hold some of them
    context = Opaque(dataclasses.replace(ctx, first=None))
    with_first = Opaque(ctx) if ctx.first is not None else context
    for b in blocks:
        region = layout.block_slices(b)
        source = space.block(region) if carries_rows else space
        name = f"daskbatch-block-{token}-" + "-".join(str(i) for i in b)
        holds = ctx.first is not None and all(s.start < n for s, n in zip(region, ctx.first[0], strict=True))
        task_context = with_first if holds else context
        tasks[b] = dask.delayed(block_task, pure=False)(b, source, task_context, dask_key_name=name)
    return tasks


# --------------------------------------------------------------------------- run
