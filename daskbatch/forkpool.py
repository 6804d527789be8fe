"""``cluster="fork"``: worker processes forked from the driver, as ``multiprocessing.Pool``.

A local cluster costs about a second to start here (a forkserver that imports
numpy, distributed and daskbatch, a scheduler, TLS, nannies); a fork of the driver,
which has all of that imported already, costs milliseconds. For a run of less than a
minute or so that second is most of daskbatch's overhead over a user's own ``Pool``
script, so ``cluster="auto"`` forks for such runs (see
:func:`daskbatch.autocluster.choose_cluster`) and keeps the local cluster (its dashboard,
its memory limits, its isolation of samples that crash their worker) for longer
ones. Linux only: elsewhere a fork of a process with threads is not safe.

The processes are forked once, when the first blocks are handed out, while the
driver does nothing else: its only other threads then are Zarr's I/O loop (which
Zarr resets in a forked child) and the store lock's heartbeat (which a fork waits
for). They ignore SIGINT and SIGTERM, which the driver handles (an orderly stop that
kills them: a block in flight is never half committed), and end with the driver, even
a killed one.

**A sample that crashes its worker** (a segfault in the core, an abort, a kill)
breaks the whole pool. The blocks committed so far stay committed; the rest are
computed on a local cluster started then, which isolates the sample that crashed,
marks it ``crashed`` and goes on: the run ends as it would have on the local cluster.
A script without a main guard cannot start one (its workers would run the script's
top level again): there the run stops with :class:`~daskbatch.errors.WorkerDiedError`.
A sample past its ``timeout`` ends its worker too; it is recorded, and the rest go on
on a fresh fork.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import hygiene
from .errors import ClusterError
from .executors import ClusterSpec, Executor, compute_on_pool, get_executor, main_is_guarded
from .log import logger

__all__ = ["ForkExecutor", "can_fork", "start_fork"]


def can_fork() -> bool:
    """Whether ``cluster="fork"`` works here (Linux, where a fork is safe enough)."""
    return sys.platform.startswith("linux")


class ForkExecutor(Executor):
    """Computes blocks on processes forked from this one; after a worker died,
    :meth:`fall_back` moves the rest to a local cluster (see the module's text)."""

    def __init__(self, spec: ClusterSpec, start_local: Callable[[], Executor]) -> None:
        super().__init__(spec)
        self._start_local = start_local
        self._local: Executor | None = None

    @property
    def description(self) -> str:
        if self._local is not None:
            return f"{self.spec.description}, then {self._local.description}"
        return self.spec.description

    @property
    def dashboard_link(self) -> str | None:
        return None if self._local is None else self._local.dashboard_link

    @property
    def n_workers(self) -> int:
        return self.spec.workers_before_start or 1

    def compute(self, tasks: Sequence[Any], on_done: Callable[[Any], None]) -> list[int]:
        if self._local is not None:
            return self._local.compute(tasks, on_done)
        if tasks:
            self._compute_forked(tasks, on_done)
        return []

    def fall_back(self) -> bool:
        """Start the local cluster that computes the blocks from now on; False when this
        script cannot start one (its top level is not under a main guard)."""
        if self._local is None and not main_is_guarded():
            logger.warning(
                "a forked worker process died (a sample may have crashed it); a local cluster "
                "would isolate that sample, but its worker processes would run this script's "
                'top level again (no `if __name__ == "__main__":` guard): the run stops here'
            )
            return False
        if self._local is None:
            logger.warning(
                "a forked worker process died (a sample may have crashed it, or passed its "
                "timeout). The finished blocks are kept; the others go on on a local cluster, "
                "which isolates a sample that ends its worker and marks it"
            )
            self._local = self._start_local()
            self.client, self._cluster = self._local.client, self._local._cluster  # as salvage asks
        return True

    def _compute_forked(self, tasks: Sequence[Any], on_done: Callable[[Any], None]) -> None:
        import multiprocessing

        from dask.multiprocessing import get

        # one block per hand-out (dask's default of 6 leaves a worker idle at the end)
        who = "a forked worker process"
        fork = multiprocessing.get_context("fork")
        hint = not main_is_guarded()
        compute_on_pool(
            tasks, on_done, who, hint, self.n_workers, fork, hygiene.pool_worker, scheduler=get, chunksize=1
        )


@contextlib.contextmanager
def start_fork(spec: ClusterSpec, memory_limit: int | None) -> Iterator[Executor]:
    """Start ``cluster="fork"`` (registered by :mod:`daskbatch.cluster`): its processes
    are forked when the first blocks are handed out."""
    if not can_fork():
        raise ClusterError(
            f"cluster='fork' forks this process, which is safe on Linux only (this is {sys.platform}); "
            "use cluster='local' or cluster='processes'"
        )
    with contextlib.ExitStack() as stack:

        def start_local() -> Executor:
            local = ClusterSpec("local", spec.n_workers)
            start = get_executor("local").start
            assert start is not None
            return stack.enter_context(start(local, memory_limit))

        yield ForkExecutor(spec, start_local)
