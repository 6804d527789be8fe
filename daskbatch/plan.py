"""What a run will do before it does it: blocks, bytes, memory, time, cluster.

:func:`make_plan` is pure (sizes and measured costs in, a :class:`Plan` out) and is
what :func:`daskbatch.run` uses to choose its blocks; :func:`daskbatch.plan` probes
the kernel and calls it, so a user sees the same numbers without running anything.
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .chunking import (
    AUTO_BLOCK_BYTES,
    aligned_samples,
    auto_samples_per_block,
    block_shape_for_samples,
    plan_block_shape,
)
from .errors import PlanError

__all__ = ["MEMORY_FACTOR", "TASK_SHARE", "Plan", "PlanError", "default_memory_limit", "make_plan"]

#: A task holds its parameters and outputs about this many times over: the arrays
#: themselves, the kernel's own copies, and Zarr's encoding buffers.
MEMORY_FACTOR = 3
#: A task may use this share of its worker's memory limit (distributed starts to
#: spill and pause workers at 60-80%).
TASK_SHARE = 0.5
#: Memory the run's own process keeps per block: its task in the graph and its
#: bookkeeping. Measured: about 5 KB with the serial scheduler, about 15 KB with a
#: local cluster (whose scheduler runs in the run's process), which also spends about
#: a millisecond per block before the first block starts.
DRIVER_BYTES_PER_BLOCK = 16 * 2**10
#: The per-block bookkeeping of a run may use this share of the machine's memory,
#: and what the run's own process holds of the parameters (grid axes) another share.
DRIVER_SHARE = 0.25
#: No run has more blocks than this, whatever the memory: each block is a task of the
#: graph (a million take minutes to schedule) and, once committed, a record file.
MAX_BLOCKS = 1_000_000


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or less when a cgroup (a
    container, a cluster job) or ``RLIMIT_RSS`` limits it, as distributed reckons it
    (without importing distributed: a run in this process never needs it)."""
    import psutil

    limit = psutil.virtual_memory().total
    if sys.platform == "linux":
        for path in (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory.high",
            "/sys/fs/cgroup/memory.low",
        ):
            try:
                with open(path) as f:
                    value = int(f.read())
            except (OSError, ValueError):  # absent, or "max"
                continue
            if value > 0:
                limit = min(limit, value)
    if sys.platform != "win32":
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if 0 < hard < limit:
            limit = hard
    return int(limit)


def default_memory_limit(n_workers: int) -> int:
    """Memory per worker: the machine's (or the cgroup's) memory shared by the workers."""
    return machine_memory() // max(1, n_workers)


def driver_budget() -> int:
    """Bytes of parameters the run's own process may hold (grid axes):
    :data:`DRIVER_SHARE` of the machine's memory."""
    return int(DRIVER_SHARE * machine_memory())


def max_blocks(memory: int | None = None) -> int:
    """The most blocks a run keeps track of: :data:`DRIVER_BYTES_PER_BLOCK` each within
    :data:`DRIVER_SHARE` of ``memory`` (default: the machine's), and never more than
    :data:`MAX_BLOCKS`.

    Examples
    --------
    >>> max_blocks(2**30)
    16384
    """
    memory = machine_memory() if memory is None else memory
    return max(1, min(MAX_BLOCKS, int(DRIVER_SHARE * memory) // DRIVER_BYTES_PER_BLOCK))


def check_blocks(
    what: str, total: int, samples_per_block: int, per_sample: int, budget: int, blocks: int | None = None
) -> None:
    """Refuse a run of more blocks than :func:`max_blocks`, saying what chunk size would do.

    ``total`` samples cut into blocks of at most ``samples_per_block``; ``per_sample``
    bytes a sample takes in a task, ``budget`` the bytes a task may use; ``blocks``
    the number of blocks, when it is known (a grid's blocks may be fewer samples).

    Examples
    --------
    >>> check_blocks("n=10", 10, 1, 8, 2**20)
    """
    limit = max_blocks()
    if blocks is None:
        blocks = math.ceil(total / max(1, samples_per_block))
    if blocks <= limit:
        return
    need = math.ceil(total / limit)
    if need * per_sample <= budget:
        advice = (
            f"give chunk_size= at least {need:,} samples per block (about "
            f"{_bytes(need * per_sample)} in a task), or make the space smaller"
        )
    else:
        advice = (
            f"a task cannot hold the {need:,} samples per block that needs (about "
            f"{_bytes(need * per_sample)}, more than its {_bytes(budget)}): make the space smaller "
            "or split it into several runs"
        )
    if limit < MAX_BLOCKS:
        why = (
            f"a run keeps about {_bytes(DRIVER_BYTES_PER_BLOCK)} per block in its own process, so "
            f"this machine ({_bytes(machine_memory())}) runs at most {limit:,} blocks"
        )
    else:
        why = f"a run has at most {limit:,} blocks (each is a task to schedule and a record to keep)"
    raise PlanError(
        f"{what}: {total:,} samples in blocks of at most {samples_per_block:,} make {blocks:,} "
        f"blocks; {why}; {advice}"
    )


def check_run_size(
    what: str,
    batch_dims: Sequence[str],
    batch_shape: Sequence[int],
    chunk_size: int | str | Mapping[str, int],
    params: Mapping[str, tuple[int, Any]],
    outputs: Mapping[str, tuple[int, Any]],
    memory_limit: int | None = None,
) -> None:
    """Refuse, before anything starts, a run that cannot fit, whatever the probe measures.

    ``what`` names the space's size (``"n=1000"``); ``params`` and ``outputs`` give
    each parameter's and output's values per sample and dtype. A sample must fit a task (with the memory of a
    single worker unless ``memory_limit`` is given), and the fewest blocks the chunk
    size allows must be at most :func:`max_blocks`. :func:`make_plan` checks again
    with the workers the run has and the cost the probe measured.
    """
    memory_limit = machine_memory() if memory_limit is None else memory_limit
    budget = int(TASK_SHARE * memory_limit)
    sizes = {
        (kind, name): (n, np.dtype(dtype), n * np.dtype(dtype).itemsize)
        for kind, given in (("parameter", params), ("output", outputs))
        for name, (n, dtype) in given.items()
    }
    b_in = sum(size for (kind, _), (_, _, size) in sizes.items() if kind == "parameter")
    bytes_out_per_sample = sum(size for (kind, _), (_, _, size) in sizes.items() if kind == "output")
    per_sample = MEMORY_FACTOR * (b_in + bytes_out_per_sample)
    if per_sample > budget:
        (kind, name), (n, dtype, size) = max(sizes.items(), key=lambda kv: kv[1][2])
        one = _one_sample(b_in, bytes_out_per_sample, memory_limit)
        raise PlanError(f"{kind} {name!r} holds {n:,} {dtype} values per sample ({_bytes(size)}): {one}")
    total = math.prod(batch_shape)
    if chunk_size == "auto":
        largest = min(total, budget // max(1, per_sample))
        if b_in + bytes_out_per_sample:
            largest = min(largest, max(1, AUTO_BLOCK_BYTES // (b_in + bytes_out_per_sample)))
        what = f"{what} (chunk_size='auto')"
    else:
        largest = math.prod(plan_block_shape(batch_dims, batch_shape, chunk_size, n_workers=1))
        what = f"{what} (chunk_size={chunk_size!r})"
    check_blocks(what, total, largest, per_sample, budget)


def _one_sample(b_in: int, b_out: int, memory_limit: int) -> str:
    per_sample = MEMORY_FACTOR * (b_in + b_out)
    budget = int(TASK_SHARE * memory_limit)
    return (
        f"one sample needs about {_bytes(per_sample)} in a task ({MEMORY_FACTOR} × "
        f"{_bytes(b_in)} of parameters + {_bytes(b_out)} of outputs), "
        f"more than the {_bytes(budget)} a task may use ({TASK_SHARE:.0%} of memory_limit="
        f"{_bytes(memory_limit)} per worker): give the workers more memory (memory_limit=) or "
        "make the parameters or outputs smaller"
    )


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def _seconds(s: float | None) -> str:
    if s is None:
        return "unknown (no probe)"
    if s < 1e-3:
        return f"{s * 1e6:,.1f} µs"
    if s < 1:
        return f"{s * 1e3:,.1f} ms"
    if s < 120:
        return f"{s:,.1f} s"
    h, rest = divmod(round(s), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class Plan:
    """A run's plan: how the samples are cut into blocks and what that will cost.

    Estimates of time come from the probe of the first samples; estimates of memory
    from the declared sizes of parameters and outputs (times :data:`MEMORY_FACTOR`
    for a task, plus nothing for the kernel's own data, which daskbatch cannot see).
    """

    kernel: str
    batch_dims: tuple[str, ...]
    batch_shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    bytes_in_per_sample: int
    bytes_out_per_sample: int
    seconds_per_sample: float | None
    n_workers: int
    cluster: str
    memory_limit: int
    #: blocks the store holds already (committed): the run computes the others
    blocks_done: int = 0
    #: the run this plan was made for (set by :func:`daskbatch.plan`); see :meth:`execute`
    request: Any = field(default=None, repr=False, compare=False)

    def execute(self) -> Any:
        """Run what this plan describes; returns a :class:`~daskbatch.RunResult`.

        Blocks are cut as planned, and the kernel is not probed again (the plan's
        probe already checked its outputs and measured its cost). The store is checked
        again at this point: one that another run created or changed since the plan
        was made is handled as :func:`daskbatch.run` would.
        """
        if self.request is None:
            raise PlanError(
                "this plan was not made by daskbatch.plan(kernel, space, store, ...) with a store "
                "path, so it has nothing to run; call daskbatch.plan with the store path, or daskbatch.run"
            )
        return self.request.execute(self)

    @property
    def n_samples(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def samples_per_block(self) -> int:
        return math.prod(self.block_shape)

    @property
    def n_blocks(self) -> int:
        return math.prod(math.ceil(n / b) for n, b in zip(self.batch_shape, self.block_shape, strict=True))

    @property
    def task_memory(self) -> int:
        """Bytes one task holds at its peak (estimate)."""
        per = self.bytes_in_per_sample + self.bytes_out_per_sample
        return MEMORY_FACTOR * per * self.samples_per_block

    @property
    def seconds_per_block(self) -> float | None:
        if self.seconds_per_sample is None:
            return None
        return self.seconds_per_sample * self.samples_per_block

    @property
    def total_seconds(self) -> float | None:
        """Wall time of the computation if every worker is busy all the time."""
        if self.seconds_per_block is None:
            return None
        rounds = math.ceil(max(0, self.n_blocks - self.blocks_done) / max(1, self.n_workers))
        return rounds * self.seconds_per_block

    def _rows(self) -> list[tuple[str, str]]:
        dims = ", ".join(f"{d}: {n:,}" for d, n in zip(self.batch_dims, self.batch_shape, strict=True))
        block = " × ".join(f"{b:,}" for b in self.block_shape)
        done = f"; {self.blocks_done:,} done in the store" if self.blocks_done else ""
        return [
            ("kernel", self.kernel),
            ("samples", f"{self.n_samples:,} ({dims})"),
            ("blocks", f"{self.n_blocks:,} of {self.samples_per_block:,} samples ({block}){done}"),
            (
                "bytes per sample",
                f"{_bytes(self.bytes_in_per_sample)} in, {_bytes(self.bytes_out_per_sample)} out "
                f"({_bytes(self.bytes_out_per_sample * self.n_samples)} of results in all)",
            ),
            (
                "memory",
                f"{_bytes(self.task_memory)} per task, {_bytes(self.task_memory)} per worker "
                f"(1 task at a time; limit {_bytes(self.memory_limit)} per worker)",
            ),
            ("time per sample", _seconds(self.seconds_per_sample)),
            ("time per block", _seconds(self.seconds_per_block)),
            (
                "time in all" if not self.blocks_done else "time left",
                "none: every block is done"
                if self.blocks_done >= self.n_blocks
                else f"{_seconds(self.total_seconds)} on {_workers(self.n_workers)} (estimate)",
            ),
            ("cluster", self.cluster),
        ]

    def __str__(self) -> str:
        return "\n".join(f"{k + ':':18s}{v}" for k, v in self._rows())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython shows the text, not the dataclass's fields."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        return f"<table><caption>daskbatch plan</caption>{rows}</table>"


def make_plan(
    *,
    kernel: str,
    batch_dims: Sequence[str],
    batch_shape: Sequence[int],
    chunk_size: int | str | Mapping[str, int],
    n_workers: int,
    cluster: str,
    bytes_in_per_sample: int,
    bytes_out_per_sample: int,
    seconds_per_sample: float | None,
    memory_limit: int | None = None,
    block_multiple: int | None = None,
) -> Plan:
    """Choose the blocks within the memory budget and estimate the run.

    ``chunk_size="auto"`` takes :func:`~daskbatch.chunking.auto_samples_per_block`,
    capped so that a task fits :data:`TASK_SHARE` of ``memory_limit`` (per worker;
    default :func:`default_memory_limit`). An explicit ``chunk_size`` is kept, but a
    block that does not fit is refused, like a single sample that does not fit.
    ``block_multiple``: the rows a table's source reads at once (a Parquet file's row
    groups, when they are all alike); ``"auto"`` blocks are then a multiple or a
    divisor of it (:func:`~daskbatch.chunking.aligned_samples`), so no row group is
    read by two blocks.

    Examples
    --------
    >>> p = make_plan(kernel="k", batch_dims=("sample",), batch_shape=(1000,), chunk_size="auto",
    ...               n_workers=2, cluster="local", bytes_in_per_sample=8, bytes_out_per_sample=8,
    ...               seconds_per_sample=0.01, memory_limit=2**30)
    >>> p.block_shape, p.n_blocks, p.total_seconds
    ((100,), 10, 5.0)
    """
    if memory_limit is None:
        memory_limit = default_memory_limit(n_workers)
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0:
        raise PlanError(f"memory_limit={memory_limit!r} must be a number of bytes > 0, e.g. 4 * 2**30")
    per_sample = MEMORY_FACTOR * (bytes_in_per_sample + bytes_out_per_sample)
    budget = int(TASK_SHARE * memory_limit)
    if per_sample > budget:
        raise PlanError(_one_sample(bytes_in_per_sample, bytes_out_per_sample, memory_limit))
    total = math.prod(batch_shape)
    if chunk_size == "auto":
        size = auto_samples_per_block(
            total,
            n_workers=n_workers,
            seconds_per_sample=seconds_per_sample,
            bytes_per_sample=bytes_in_per_sample + bytes_out_per_sample,
        )
        size = max(1, min(size, budget // max(1, per_sample)))
        if len(batch_shape) == 1:  # a table read in row groups: blocks that share none
            size = aligned_samples(size, block_multiple, total)
        block_shape = block_shape_for_samples(size, batch_shape)
    else:
        block_shape = plan_block_shape(batch_dims, batch_shape, chunk_size, n_workers=n_workers)
        need = per_sample * math.prod(block_shape)
        if need > budget:
            fits = budget // max(1, per_sample)
            raise PlanError(
                f"chunk_size={chunk_size!r}: a block of {math.prod(block_shape):,} samples needs about "
                f"{_bytes(need)}, more than the {_bytes(budget)} a task may use ({TASK_SHARE:.0%} of "
                f"memory_limit={_bytes(memory_limit)} per worker); use at most {fits:,} samples per "
                "block, or chunk_size='auto'"
            )
    dims = ", ".join(f"{d}: {n:,}" for d, n in zip(batch_dims, batch_shape, strict=True))
    blocks = math.prod(math.ceil(n / b) for n, b in zip(batch_shape, block_shape, strict=True))
    check_blocks(
        f"chunk_size={chunk_size!r} ({dims})", total, math.prod(block_shape), per_sample, budget, blocks
    )
    return Plan(
        kernel=kernel,
        batch_dims=tuple(batch_dims),
        batch_shape=tuple(batch_shape),
        block_shape=tuple(block_shape),
        bytes_in_per_sample=int(bytes_in_per_sample),
        bytes_out_per_sample=int(bytes_out_per_sample),
        seconds_per_sample=seconds_per_sample,
        n_workers=int(n_workers),
        cluster=cluster,
        memory_limit=int(memory_limit),
    )
