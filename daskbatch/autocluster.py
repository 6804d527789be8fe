"""``cluster="auto"``: where a run computes, decided from a probe of its first samples.

:func:`auto_probe` runs the first samples in a fork of this process and measures
them; :func:`choose_cluster` compares the predicted time of the run in this process,
on processes forked from it and on a local cluster, and picks the quickest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from . import config
from .cluster import ClusterSpec
from .kernel import Kernel
from .log import logger
from .options import RunOptions
from .probe import measure
from .space import Space

__all__ = [
    "THREADS_UP_TO_SECONDS",
    "WRITE_SECONDS_PER_BYTE",
    "auto_probe",
    "bytes_per_sample",
    "choose_cluster",
]


#: what writing a byte of a block costs (encoding and compressing it, the file
#: system): about 3 ns here, measured with a cheap kernel whose time goes to Zarr
WRITE_SECONDS_PER_BYTE = 3e-9


def auto_probe(
    kernel: Kernel, space: Space, options: RunOptions, keep: list[Any] | None = None
) -> float | None:
    """``cluster="auto"``'s probe: in a fork of this process (quick, no cluster), with
    the cost per sample of a vectorised kernel. None when it could not finish, or
    when a sample ended the process that ran it (a cluster isolates such samples)."""
    from .errors import KernelCrashError

    in_process = ClusterSpec("serial", 1)
    try:
        return measure(
            in_process, kernel, space, options.constants, options.timeout, cost=True, keep=keep, budget=True
        )
    except KernelCrashError as e:
        logger.warning(f"{e}; cluster='auto' runs it on a local cluster, which isolates such samples")
        return None


#: ``cluster="auto"``: a vectorised thread-safe kernel runs on this process's threads
#: (in parallel: numpy releases the GIL) when its work takes up to this long on them
THREADS_UP_TO_SECONDS = 10.0


def choose_cluster(
    kernel: Kernel, space: Space, options: RunOptions, seconds: float | None, n_samples: int
) -> RunOptions:
    """Resolve ``cluster="auto"``: whichever of this process, processes forked from it
    and the local cluster is predicted to finish first.

    The work is the kernel's ``seconds`` per sample, plus writing each sample's
    parameters and outputs (reckoned at :data:`WRITE_SECONDS_PER_BYTE`), times
    ``n_samples``. In this process, the run takes about that (on threads when the
    kernel is declared thread-safe, reckoned as one: the GIL may serialise them,
    unless the kernel is vectorised and the run takes up to :data:`THREADS_UP_TO_SECONDS`
    on them: its numpy calls on whole blocks run at once). On ``n`` worker processes,
    that divided by ``n``, plus their start: ``daskbatch.auto.fork-start-seconds`` for
    processes forked from this one (``"fork"``: Linux, a driver with no threads of its
    own such as a notebook's, no ``memory_limit``, and at most
    ``daskbatch.auto.fork-up-to-seconds`` of work per process), else
    ``daskbatch.auto.start-seconds`` for the local cluster (its dashboard, its memory
    limits: what a long run wants). An unknown cost (no probe) means the local
    cluster; a script that cannot start it (no main guard) forks, or runs here.
    """
    from .cluster import check_can_spawn, parse_cluster
    from .errors import ClusterError
    from .executors import main_is_guarded
    from .forkpool import can_fork
    from .lock import threads_besides_heartbeats

    local = options.cluster
    n = local.workers_before_start or 1
    threads = kernel.threadsafe and n > 1
    here = parse_cluster("threads" if threads else "serial", n if threads else None)
    fork = parse_cluster("fork", local.n_workers)
    forkable = n > 1 and can_fork() and options.memory_limit is None and threads_besides_heartbeats() == 1
    try:
        check_can_spawn(local)
        guarded = main_is_guarded()
    except ClusterError:
        guarded = False
    if not guarded:
        logger.info(
            "cluster='auto': this script cannot start worker processes that import it (no main guard)"
        )
    if seconds is None:
        return options if guarded else dataclasses.replace(options, cluster=here)
    b_in, b_out = bytes_per_sample(kernel, space)
    work = (seconds + (b_in + b_out) * WRITE_SECONDS_PER_BYTE) * n_samples
    parallel = threads and not kernel.per_sample and work / n <= THREADS_UP_TO_SECONDS
    costs = {"here": work / n if parallel else work}  # the first of equal costs wins
    if forkable and work / n <= config.get("auto.fork-up-to-seconds"):
        costs["fork"] = config.get("auto.fork-start-seconds") + work / n
    if guarded:
        costs["local"] = float(config.get("auto.start-seconds")) + work / n
    best = min(costs, key=costs.__getitem__)
    if best == "local":
        return options
    chosen = here if best == "here" else fork
    where = (
        f"less than starting worker processes would save; running in this process ({here.description})"
        if best == "here"
        else f"running on {fork.description}, as a short run"
    )
    logger.info(
        f"cluster='auto': about {_duration(work)} of work, {where}. cluster='local' forces a local cluster"
    )
    return dataclasses.replace(options, cluster=chosen)


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:,.1f} s"


def bytes_per_sample(kernel: Kernel, space: Space) -> tuple[int, int]:
    """Bytes of parameters and of outputs per sample, as the store keeps them."""
    b_in = sum(math.prod(p.core_shape) * p.dtype.itemsize for p in space.params.values())
    b_out = sum(o.size * o.dtype.itemsize for o in kernel.outputs.values())
    return b_in, b_out
