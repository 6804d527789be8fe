"""Callbacks: what a run tells the world as it goes.

A run calls :meth:`Callback.on_run_start` once its pending blocks are known,
:meth:`Callback.on_block_end` in the driver as each block is committed (in whatever
order blocks finish), and :meth:`Callback.on_run_end` when it finishes or stops.
The progress bar and the progress that ``daskbatch status`` shows from another shell
are callbacks too; pass your own with ``daskbatch.run(..., callbacks=[...])``.

Examples
--------
>>> import daskbatch as db, tempfile, os
>>> class Count(db.Callback):
...     blocks = 0
...     def on_block_end(self, event):
...         self.blocks += 1
>>> @db.kernel(outputs={"y": db.Output()})
... def twice(x):
...     return 2 * x
>>> counter = Count()
>>> path = os.path.join(tempfile.mkdtemp(), "t.zarr")
>>> _ = db.run(twice, db.Grid(x=range(10)), path, cluster="serial", chunk_size=5,
...            progress=False, callbacks=[counter])
>>> counter.blocks
2
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .kernel import STATUS
from .progress import Progress, show_dashboard
from .warmup import import_in_background

__all__ = ["BlockEnd", "Callback", "RunEnd", "RunStart"]


@dataclass(frozen=True)
class RunStart:
    """A run is about to compute its pending blocks."""

    store: str
    n_samples: int
    #: samples already done (ok or not) before this run, and of those not ok
    samples_done: int
    samples_failed: int
    blocks_pending: int
    blocks_total: int
    cluster: str
    dashboard: str | None = None


@dataclass(frozen=True)
class BlockEnd:
    """A block was committed to the store."""

    block: tuple[int, ...]
    #: samples per status name (``ok``, ``failed``, ``timeout``, ``crashed``, ...)
    counts: dict[str, int]
    #: seconds the kernel ran on this block (in the worker)
    seconds: float
    #: the block's first errors, as recorded in the store
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: samples per status name of those the kernel computed for this commit: fewer than
    #: ``counts`` when the block was completed after its store grew, or retried
    #: (``retry_failed``: the others are kept as stored); None: all of them
    computed: dict[str, int] | None = None

    @property
    def n_samples(self) -> int:
        return sum(self.counts.values())

    @property
    def n_not_ok(self) -> int:
        return self.n_samples - self.counts.get("ok", 0)


@dataclass(frozen=True)
class RunEnd:
    """A run finished (``state="finished"``) or stopped (``"stopped"``, with its error)."""

    state: str
    blocks_computed: int
    samples_computed: int
    wall_seconds: float
    error: BaseException | None = None


class Callback:
    """Subclass and override what you need; every method does nothing by default.

    Methods run in the driver process, between blocks: keep them quick (a slow
    callback delays taking in the next block's result, not the workers).
    """

    def on_run_start(self, event: RunStart) -> None:
        """Called once, before the first pending block is computed."""

    def on_block_end(self, event: BlockEnd) -> None:
        """Called as each block is committed."""

    def on_run_end(self, event: RunEnd) -> None:
        """Called once when the run finishes or stops (also on Ctrl-C)."""


def block_end(summary: dict[str, Any]) -> BlockEnd:
    """The event for a block task's summary."""
    counts, computed = summary["counts"], summary.get("computed")
    return BlockEnd(
        block=tuple(summary["block"]),
        counts={name: int(counts[code]) for name, code in STATUS.items()},
        seconds=float(summary["seconds"]),
        errors=list(summary["errors"]),
        computed=None if computed is None else {name: int(computed[code]) for name, code in STATUS.items()},
    )


class Tally(Callback):
    """Blocks and samples this run computed (what :class:`~daskbatch.RunResult` reports)."""

    def __init__(self) -> None:
        self.blocks = self.samples = self.ok = 0

    def on_block_end(self, event: BlockEnd) -> None:
        computed = event.counts if event.computed is None else event.computed
        self.blocks += 1
        self.samples += sum(computed.values())
        self.ok += computed.get("ok", 0)


class ProgressBar(Callback):
    """The dashboard's link and the progress bar (samples, rate, ETA, failures), in a
    notebook a link and a widget (see :mod:`daskbatch.progress`); quiet when not
    ``enabled``, but it still measures the rate and ETA that :class:`Publisher` records."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None

    def on_run_start(self, event: RunStart) -> None:
        if self.enabled and event.dashboard and event.blocks_pending:
            show_dashboard(event.dashboard)
        self.bar = Progress(
            event.n_samples,
            initial=event.samples_done,
            failed=event.samples_failed,
            enabled=self.enabled and event.blocks_pending > 0,
        )

    def on_block_end(self, event: BlockEnd) -> None:
        if self.bar is not None:
            self.bar.update(event.n_samples, event.n_not_ok)

    def on_run_end(self, event: RunEnd) -> None:
        if self.bar is not None:
            self.bar.close()


class Publisher(Callback):
    """Writes the run's progress into the store's lock file every ``interval`` seconds,
    for ``daskbatch status`` in another shell."""

    def __init__(self, lock: Any, bar: ProgressBar, tally: Tally, interval: float) -> None:
        self.lock, self.bar, self.tally, self.interval = lock, bar, tally, interval
        self.pending = 0
        self.published = 0.0

    def on_run_start(self, event: RunStart) -> None:
        self.pending = event.blocks_pending

    def on_block_end(self, event: BlockEnd) -> None:
        now = time.monotonic()
        bar = self.bar.bar
        if bar is None or now - self.published < self.interval:
            return
        self.published = now
        with contextlib.suppress(OSError):  # progress for others: never worth stopping the run
            self.lock.update(
                done=bar.done,
                total=bar.total,
                failed=bar.failed,
                rate=bar.rate,
                eta_seconds=bar.eta,
                blocks_computed=self.tally.blocks,
                blocks_pending=self.pending,
            )


class ImportsOnceStarted(Callback):
    """Imports ``modules`` in the background (:mod:`daskbatch.warmup`) when the run's
    first block is back: its workers exist then, so no fork of the driver is due."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        self.started = False

    def on_block_end(self, event: BlockEnd) -> None:
        if not self.started:
            self.started = True
            import_in_background(self.modules)
