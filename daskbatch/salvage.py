"""Crash isolation: a block whose task killed its worker every time, in smaller pieces.

The block's samples are split into pieces, each a separate task that returns its
results instead of writing them; a piece that kills its worker again is split again,
down to single samples. A worker that dies also takes the blame for the task it was
about to run, so a single sample given up on is tried once more with nothing else in
flight, and only then marked ``crashed``. The driver then writes the block. Bounded:
each sample is tried a few times at most.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .blocktask import BlockContext, _not_stopped, block_inputs, block_summary, piece_task, read_block
from .kernel import MAX_ERRORS_PER_BLOCK, STATUS, BlockResult, crash_record
from .ragged import blank
from .records import FailureLog
from .space import Space
from .store import Store

__all__ = ["salvage"]

#: pieces a block (or a piece that killed its worker again) is split into
PIECES = 8


def salvage(
    executor: Any, st: Store, space: Space, ctx: BlockContext, block: tuple[int, ...], on_done: Callable
) -> None:
    """Compute ``block`` in ever smaller pieces, write it, and report it to ``on_done``."""
    _Salvage(executor, st, space, ctx, block).run(on_done)


class _Salvage:
    def __init__(
        self, executor: Any, st: Store, space: Space, ctx: BlockContext, block: tuple[int, ...]
    ) -> None:
        layout = ctx.layout
        self.executor, self.st, self.ctx, self.block = executor, st, ctx, block
        self.client = executor.client
        self.region = layout.block_slices(block)
        self.batch_shape = tuple(s.stop - s.start for s in self.region)
        self.n = n = math.prod(self.batch_shape)
        values, self.inputs = read_block(space, self.region)
        self.kernel_params, self.stored_params = block_inputs(
            ctx, block, [values[k] for k in ctx.param_names]
        )
        self.outputs = {k: blank(o, self.batch_shape) for k, o in layout.outputs.items()}
        self.flat_out = {k: v.reshape((n, *layout.outputs[k].shape)) for k, v in self.outputs.items()}
        self.status = np.full(self.batch_shape, STATUS["pending"], dtype=np.int8)
        self.flat_status = self.status.reshape(-1)
        self.errors: list[dict[str, Any]] = []
        self.n_errors, self.seconds = 0, 0.0
        self.failures = FailureLog()  # every sample that is not ok, with its message
        self.owners: dict[str, list[int]] = {}
        # crashed samples, and the worker that died last running each
        self.dead: dict[int, tuple[str | None, int | None]] = {}
        # single samples whose piece was given up on while other pieces were in flight: a
        # worker also holds the next task it will run, and that task is blamed too when the
        # worker dies, so each is tried again alone before it is called crashed
        self.suspects: list[int] = []

    def submit(self, positions: list[int]) -> Any:
        # the block's parameters go with each piece: scattered data would die with a worker
        fut = self.client.submit(piece_task, self.ctx, self.block, self.kernel_params, positions, pure=False)
        self.owners[fut.key] = positions
        return fut

    def take(self, res: BlockResult, positions: list[int]) -> None:
        piece_status = res.status.reshape(-1)
        for i in positions:
            self.flat_status[i] = piece_status[i]
            for k, flat in self.flat_out.items():
                flat[i] = res.outputs[k].reshape(flat.shape)[i]
        self.n_errors += res.n_errors
        self.errors.extend(res.errors[: MAX_ERRORS_PER_BLOCK - len(self.errors)])
        self.failures.merge(res.failures, positions)
        self.seconds += res.seconds

    def crashed(self, i: int, exc: BaseException) -> None:
        last = getattr(exc, "last_worker", None)
        if isinstance(last, str) or last is None:
            self.dead[i] = (last, None)
        else:
            self.dead[i] = (getattr(last, "address", None), getattr(last, "memory_limit", None))

    def run(self, on_done: Callable) -> None:
        # On daskbatch's own cluster the scheduler gives up on a task sooner here: after one
        # death instead of allowed-failures + 1 (4) for a piece, which is split again, and
        # after two for a sample tried alone. Every death costs a worker restart, and each
        # sample given up on in a piece is tried again alone anyway.
        scheduler = getattr(self.executor._cluster, "scheduler", None)  # a cluster daskbatch started
        allowed = getattr(scheduler, "allowed_failures", None)

        def allow(failures: int) -> None:
            if scheduler is not None and isinstance(allowed, int):
                scheduler.allowed_failures = min(allowed, failures)

        try:
            allow(0)
            self._pieces()
            allow(1)
            self._suspects()
        finally:
            if scheduler is not None and isinstance(allowed, int):
                scheduler.allowed_failures = allowed
        self._record_crashes()
        st, layout = self.st, self.ctx.layout
        _not_stopped(self.ctx)  # a run that lost its store's lock meanwhile writes nothing
        counts = st.write_block(
            layout,
            self.block,
            self.stored_params,
            self.outputs,
            self.status,
            self.errors,
            self.n_errors,
            self.seconds,
            failures=self.failures,
            inputs=self.inputs,
        )
        st.clear_timeouts(self.block)
        res = BlockResult(self.outputs, self.status, self.errors, self.n_errors, self.seconds, self.failures)
        on_done(block_summary(self.block, counts, res, len(self.region)))

    def _pieces(self) -> None:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        n = self.n
        step = max(1, math.ceil(n / PIECES))
        # the results are fetched here, one by one: as_completed(with_results=True) fetches
        # them in the client's loop, and a piece whose worker died after it finished and
        # whose recomputation then failed was never handed over (the loop waited for ever).
        # A finished piece whose worker dies before its result is fetched is computed again.
        queue = as_completed(
            [self.submit(list(range(i, min(i + step, n)))) for i in range(0, n, step)],
            loop=self.client.loop,  # this client's: it need not be dask's default
        )
        for fut in queue:
            positions = self.owners.pop(fut.key)
            try:
                res = fut.result()
            except KilledWorker:
                if len(positions) == 1:
                    self.suspects.append(positions[0])
                    continue
                step = max(1, math.ceil(len(positions) / PIECES))
                for j in range(0, len(positions), step):
                    queue.add(self.submit(positions[j : j + step]))
                continue
            finally:
                fut.release()
            self.take(res, positions)

    def _suspects(self) -> None:
        from distributed.scheduler import KilledWorker

        for i in self.suspects:
            fut = self.submit([i])
            try:
                self.take(fut.result(), self.owners.pop(fut.key))
            except KilledWorker as exc:
                self.owners.pop(fut.key, None)
                self.crashed(i, exc)
            finally:
                fut.release()

    def _record_crashes(self) -> None:
        # distributed's nanny ends a worker that exceeds its memory limit, and says so
        memory_kills: dict[str, Any] = {}
        if self.dead:
            with contextlib.suppress(Exception):
                for _, event in self.client.get_events("worker-restart-memory"):
                    memory_kills[event.get("worker")] = event
        for i, (addr, limit) in self.dead.items():
            self.flat_status[i] = STATUS.crashed
            self.n_errors += 1
            event = memory_kills.get(addr)
            record = crash_record(
                self.ctx.layout,
                self.region,
                i,
                memory_limit=event is not None,
                rss=(event or {}).get("rss"),
                limit=limit,
            )
            self.failures.add_record(i, record)
            if len(self.errors) < MAX_ERRORS_PER_BLOCK:
                self.errors.append(record.to_dict())
