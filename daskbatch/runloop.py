"""The run loop: a locked store, a started executor, pending blocks → committed blocks.

:class:`Runner` does one run on a store whose writer lock it holds: it repairs what
the store's checks found, probes the kernel on a new store, plans the blocks, starts
the executor, creates the store from its template, computes the pending blocks
(isolating the ones that kill their worker, see :mod:`daskbatch.salvage`) and keeps
the store's history. What it tells the world as it goes (the progress bar, the
progress ``daskbatch status`` shows, the user's own) goes through
:class:`~daskbatch.callbacks.Callback` objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import config
from .autocluster import auto_probe, bytes_per_sample, choose_cluster
from .blocktask import BlockContext, build_tasks, run_params, stop_blocks
from .callbacks import (
    Callback,
    ImportsOnceStarted,
    ProgressBar,
    Publisher,
    RunEnd,
    RunStart,
    Tally,
    block_end,
)
from .cluster import ClusterSpec, WorkerDiedError, prestart, start_executor
from .codeid import modules_used
from .errors import StoreWriteError
from .freshness import code_digests
from .holder import LockLostError
from .kernel import STATUS, Kernel
from .log import logger
from .options import RunOptions
from .plan import Plan, make_plan
from .probe import measure
from .progress import _in_notebook
from .provenance import new_info, now
from .results import RunResult, store_status
from .space import Space
from .store import Layout, Store

__all__ = ["WARM_UP_SECONDS", "Runner", "blocks_to_retry", "make_run_plan", "workers_before_start"]

#: a run that reduces on workers imports xarray while they compute when each has at
#: least this much work left (seconds, by the probe's reckoning; see :mod:`.warmup`):
#: the import takes about 0.3 s of CPU, shared with the workers
WARM_UP_SECONDS = 0.5


@dataclass
class Runner:
    """One run on a store whose lock is held (see the module docstring)."""

    kernel: Kernel
    space: Space
    st: Store
    options: RunOptions
    lock: Any
    info: dict[str, Any] | None  # None: a new store
    provenance: Mapping[str, Any]
    t_start: float
    damaged: list[Any]
    retry: list[tuple[int, ...]]
    code_change: dict[str, Any] | None = None
    plan: Plan | None = None  # a plan made (and probed) before: no probe again
    seconds_per_sample: float | None = None  # the probe's (set by run)
    #: the probe's first samples: (block shape, BlockResult), kept by a run in this process
    probed: list[Any] = dataclasses.field(default_factory=list)
    #: how long the probe whose results are kept (``probed``) took: part of the run's time
    probe_seconds: float = 0.0

    def run(self) -> RunResult:
        self._repair()
        plan, seconds, probed = self.plan, None, self.plan is not None
        if self.options.auto:
            if self.info is None:  # the probe, in a fork of this process, says how much work it is
                t = time.perf_counter()
                seconds, probed = auto_probe(self.kernel, self.space, self.options, self.probed), True
                self.probe_seconds = time.perf_counter() - t
            else:
                seconds = seconds_per_sample(self.st)
            self.options = choose_cluster(
                self.kernel, self.space, self.options, seconds, self._pending_samples()
            )
        spec = self.options.cluster
        # worker processes get ready while this process probes, with the kernel's modules
        prestart(spec, [self.kernel.module, *modules_used(self.kernel)])
        # a cluster this run starts is up in a fraction of a second, and its first worker
        # probes the kernel: it has to load the kernel's modules anyway
        on_worker = self.info is None and not probed and spec.starts_cluster
        if self.info is None and not probed and not on_worker:
            t = time.perf_counter()
            seconds, probed = self._measure(spec), True
            self.probe_seconds = time.perf_counter() - t
        if self.info is None and plan is None:
            workers = workers_before_start(spec)
            if workers is not None:  # a block that cannot fit fails here, before any worker starts
                plan = make_run_plan(self.kernel, self.space, self.options, workers, seconds)
        with start_executor(spec, memory_limit=self.options.memory_limit) as executor:
            if on_worker:
                t = time.perf_counter()
                seconds = self._measure(dataclasses.replace(spec, client=executor.client))
                self.probe_seconds = time.perf_counter() - t
                plan = make_run_plan(self.kernel, self.space, self.options, executor.n_workers, seconds)
            if self.info is None:
                if plan is None:
                    plan = make_run_plan(self.kernel, self.space, self.options, executor.n_workers, seconds)
                self._check_reductions()  # on the probe's samples, before the store exists
                layout = self._create(plan.block_shape)
            else:
                layout = self._layout(tuple(self.info["layout"]["block_shape"]), self.info["store_id"])
            if seconds is None and plan is not None:
                seconds = plan.seconds_per_sample
            self.seconds_per_sample = seconds
            result = self._loop(executor, layout)
            blocks, samples, wall = result.blocks_computed, result.samples_computed, result.wall_seconds
            while self.options.until is not None:  # rounds, on the same cluster
                grown = self._next_round()
                if grown is None:
                    break
                result = self._loop(executor, grown)
                blocks += result.blocks_computed
                samples += result.samples_computed
                wall += result.wall_seconds
            return dataclasses.replace(
                result, blocks_computed=blocks, samples_computed=samples, wall_seconds=wall
            )

    def _next_round(self) -> Layout | None:
        """``until=``: check the estimate of the samples so far; when it has not
        converged and ``max_n`` is not reached, grow the store to the next round's
        samples and return its layout (None: the run ends here)."""
        from .grow import grow, short_blocks
        from .reduced import estimate as estimate_of
        from .reduced import max_n_of

        st, until, reductions = self.st, self.options.until, self.options.reductions
        assert self.info is not None and until is not None
        n = int(self.space.size)
        self.lock.check()  # a run whose lock was taken over writes nothing more
        info = st.require_info()  # as the round left it (history, format)
        estimate = estimate_of(until, st, info, reductions)
        state = info.setdefault("until", {"rule": until.spec(), "first_n": n, "rounds": []})
        first = int(state.get("first_n", n))
        max_n = max_n_of(until, first)
        state["rule"] = until.spec()  # a rule changed between runs: the one that decided
        state["rounds"] = [r for r in state.get("rounds", []) if r.get("n", 0) < n]
        state["rounds"].append(
            {"n": n, "used": int(estimate.n), **_estimate_json(estimate), "met": bool(estimate.met)}
        )
        state["state"] = "converged" if estimate.met else ("max_n" if n >= max_n else "running")
        if not estimate.met and int(estimate.n) == 0:  # nothing counted: more samples will not help
            state["state"] = "no_values"
        st.update_info(info)
        if state["state"] == "no_values":
            logger.warning(
                f"until: no ok, finite value of {until.output!r} in the first {n:,} samples, so "
                f"nothing to estimate; the run stops here. daskbatch.failures({str(st.path)!r}) lists "
                "the failed samples with their messages"
            )
            return None
        if estimate.met:
            logger.info(f"converged at n={n:,}: {until.describe(estimate)}")
            return None
        if n >= max_n:
            logger.warning(
                f"not converged at max_n={max_n:,}: {until.describe(estimate)}; the run stops here. "
                "Raise max_n (Converged(..., max_n=...)) and run again to go on from these samples"
            )
            return None
        # the next of first, 2 first, 4 first, ...: the same sizes whatever max_n was before
        size = first
        while size <= n:
            size *= 2
        space = self.space.resized(min(size, max_n))
        if space.size <= n:  # a design that grows only in steps (Saltelli: powers of 2)
            state["state"] = "max_n"
            st.update_info(info)
            logger.warning(f"not converged, and the design cannot grow within max_n={max_n:,}")
            return None
        info, _ = grow(st, info, space)
        self.info, self.space = info, space
        self.retry = short_blocks(st)  # the last block, when it was short: its new samples
        return self._layout(tuple(info["layout"]["block_shape"]), info["store_id"])

    def _check_reductions(self) -> None:
        """Reduce the probe's first samples as a block would (and merge and finish them):
        a user's Aggregation that raises, or returns the wrong shape, is refused now,
        naming it, rather than in the middle of the run or when the store is read."""
        reductions = self.options.reductions
        if reductions is None or not self.probed:
            return
        from .reducestats import Aggregation
        from .reductions import ReductionError

        shape, first = self.probed[0]
        own = any(isinstance(s, Aggregation) for o in reductions.outputs for s in reductions.stats(o))
        try:
            doc = reductions.partial(first.outputs, first.status, tuple(slice(0, n) for n in shape))
            merged = reductions.merge([((0,) * len(shape), doc)], tuple(shape))
            if own:  # finalize too (it needs xarray: only for a user's own statistic)
                reductions.to_dataset(merged).load()
        except Exception as e:
            text = " ".join(str(e).split())
            raise ReductionError(
                f"reduce: reducing the probe's first {math.prod(shape):,} samples failed "
                f"({type(e).__name__}: {text}); check the statistics, and an Aggregation's chunk, "
                "combine and finalize (chunk returns a tuple of arrays, finalize an array of the "
                "output's shape)"
            ) from e

    def _measure(self, spec: ClusterSpec) -> float | None:
        """The probe: outputs that cannot be stored fail here. An explicit chunk_size
        needs no cost per sample: the first samples only."""
        o = self.options
        cost = o.chunk_size == "auto"
        return measure(spec, self.kernel, self.space, o.constants, o.timeout, cost=cost, keep=self.probed)

    def _pending_samples(self) -> int:
        if self.info is None:
            return self.space.size
        return max(0, self.space.size - int(self.st.ledger.counts().sum()))

    # ----------------------------------------------------------------- before

    def _repair(self) -> None:
        st = self.st
        if self.info is not None and self.lock.previous:
            prev = self.lock.previous
            logger.info(
                f"took over the lock of a run that ended without releasing it "
                f"(host {prev.get('host')}, pid {prev.get('pid')}, started {prev.get('start')})"
            )
        if self.damaged:
            damaged = self.damaged
            logger.warning(
                "recomputing damaged blocks: "
                + "; ".join(str(d) for d in damaged[:5])
                + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            )
            st.ledger.forget([d.block for d in damaged])
        for b in self.retry:
            st.clear_timeouts(b)

    def _layout(self, block_shape: tuple[int, ...], store_id: str) -> Layout:
        space = self.space
        return Layout(
            block_shape=block_shape,
            store_id=store_id,
            batch_dims=space.batch_dims,
            batch_shape=space.batch_shape,
            params=run_params(space.params, self.kernel),  # labels; inputs referenced, not stored
            outputs=self.kernel.outputs,
            batch_coords=space.batch_coords(),
            reductions=self.options.reductions,
        )

    def _create(self, block_shape: tuple[int, ...]) -> Layout:
        numblocks = tuple(math.ceil(n / b) for n, b in zip(self.space.batch_shape, block_shape, strict=True))
        info = new_info(
            self.kernel,
            self.space,
            self.options.constants_json,
            block_shape,
            numblocks,
            self.provenance,
            constants=self.options.constants,
        )
        if self.options.reductions is not None:  # compared on every rerun, like the fingerprint
            info["reduce"] = self.options.reductions.spec()
        if self.options.until is not None:
            info["until"] = {"rule": self.options.until.spec(), "first_n": self.space.size, "rounds": []}
        layout = self._layout(block_shape, info["store_id"])
        layout.validate()
        self.st.create(layout, info, overwrite=True)
        self.info = info
        return layout

    # ----------------------------------------------------------------- the loop

    def _entry(self, executor: Any, pending: list, retry: list) -> dict[str, Any]:
        entry = {
            "start": now(),
            "state": "running",
            "cluster": executor.description,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "blocks_pending": len(pending),
        }
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
        if job:  # the batch job this run is part of (daskbatch submit)
            entry["job"] = job
        if retry:
            entry["blocks_retried"] = len(retry)
        change = self.code_change
        if change is not None and change.get("results"):
            entry["kernel_changed"] = {k: change[k] for k in ("from", "to", "parts")}
            logger.info(
                f"the kernel's code changed ({', '.join(change['parts'][:3]) or 'source'}); "
                "going on with the new code as asked (recorded in the store's history)"
            )
        return entry

    def _loop(self, executor: Any, layout: Layout) -> RunResult:
        st, info, options = self.st, self.info, self.options
        assert info is not None
        done, counts_now = st.ledger.state()  # one read of the bookkeeping
        pending = [tuple(int(i) for i in idx) for idx in np.argwhere(~done)]
        done_before = int(done.sum())
        retry = [b for b in self.retry if done[b]]
        pending += retry
        before = store_status(st, info)
        redo_samples = sum(int(counts_now[b].sum()) for b in retry)
        redo_failed = sum(int(counts_now[b].sum() - counts_now[b][STATUS["ok"]]) for b in retry)
        dashboard = executor.dashboard_link
        entry = self._entry(executor, pending, retry)
        info["options"] = {  # what `daskbatch resume` uses again
            "retries": options.retries,
            "timeout": options.timeout,
            "cluster": "auto" if options.auto else options.cluster.label,
            "workers": options.cluster.n_workers,
        }
        if pending:
            info["history"] = [*info.get("history", []), entry]
            self.lock.check()
            st.update_info(info)
        tally, bar = Tally(), ProgressBar(options.progress)
        callbacks: list[Callback] = [tally, bar, Publisher(self.lock, bar, tally, _publish_seconds())]
        callbacks += [*options.callbacks, *self._result_imports(before.samples["pending"])]
        _call(
            callbacks,
            "on_run_start",
            RunStart(
                store=str(st.path),
                n_samples=before.n_samples,
                samples_done=before.n_samples - before.samples["pending"] - redo_samples,
                samples_failed=before.n_failed - redo_failed,
                blocks_pending=len(pending),
                blocks_total=before.blocks_total,
                cluster=executor.description,
                dashboard=dashboard,
            ),
        )

        def on_done(result: np.ndarray) -> None:
            _call(callbacks, "on_block_end", block_end(result.flat[0]))

        t_compute = time.perf_counter()
        run_id = uuid.uuid4().hex
        try:
            if pending:
                ctx = self._context(layout, executor, bool(done_before), run_id)
                tasks = build_tasks(self.space, layout, ctx, pending)
                compute_all(executor, st, self.space, ctx, tasks, pending, on_done)
        except BaseException as exc:
            stop_blocks(run_id)  # its blocks still on threads of this process write nothing now
            wall = time.perf_counter() - t_compute
            _call(callbacks, "on_run_end", RunEnd("stopped", tally.blocks, tally.samples, wall, exc))
            if pending:
                self._stopped(entry, exc, tally.blocks, done_before)
            if isinstance(exc, KeyboardInterrupt):
                say_interrupted(st, exc)
            raise
        # the probe's samples, kept as results, are counted: so is the time they took
        wall = time.perf_counter() - t_compute + (self.probe_seconds if self.probed else 0.0)
        _call(callbacks, "on_run_end", RunEnd("finished", tally.blocks, tally.samples, wall))
        if pending:
            entry.update(
                state="finished",
                end=now(),
                blocks_computed=tally.blocks,
                samples_computed=tally.samples,
                samples_ok=tally.ok,
                samples_not_ok=tally.samples - tally.ok,
                wall_seconds=round(wall, 3),
                total_seconds=round(time.perf_counter() - self.t_start, 3),
            )
            info["history"][-1] = entry
            self.lock.check()  # the last block's run may have lost its lock (see holder.py)
            st.update_info(info)
        result = store_status(
            st,
            info,
            cls=RunResult,
            blocks_computed=tally.blocks,
            samples_computed=tally.samples,
            wall_seconds=wall,
            cluster=executor.description,
            dashboard=dashboard,
        )
        assert isinstance(result, RunResult)
        return result

    def _context(self, layout: Layout, executor: Any, resumed: bool, run_id: str) -> BlockContext:
        """What every block task of this run shares."""
        options, st = self.options, self.st
        return BlockContext(
            kernel=self.kernel,
            store=str(st.path),
            layout=layout,
            param_names=tuple(self.space.params),
            constants=options.constants,
            retries=options.retries,
            timeout=options.timeout,
            # only a worker process may be ended to stop native code, never this one
            kill_on_timeout=options.cluster.can_end_worker,
            retry_failed=options.retry_failed,
            block_seconds=expected_block_seconds(
                st, layout, self.seconds_per_sample, resumed and executor.client is not None
            ),
            first=self._first_samples(),
            code_digests=None if options.cluster.in_driver else code_digests(self.kernel),
            run_id=run_id,
            holder=self.lock.identity,
        )

    def _result_imports(self, pending_samples: int) -> list[Callback]:
        """A run that reduces, on workers other than the driver, and has at least
        :data:`WARM_UP_SECONDS` of work left per worker by the probe's reckoning, imports xarray
        while they compute (its reductions come back as an xarray Dataset; see
        :mod:`daskbatch.warmup`). A shorter run would end before the import does, and the
        import would only take the driver's time from the run's last steps."""
        options = self.options
        if options.reductions is None or options.cluster.in_driver or not self.seconds_per_sample:
            return []
        workers = options.cluster.workers_before_start or 1
        if self.seconds_per_sample * pending_samples / workers < WARM_UP_SECONDS:
            return []
        return [ImportsOnceStarted(("xarray",))]

    def _first_samples(self) -> tuple[tuple[int, ...], Any] | None:
        """The probe's first samples, when the blocks that hold them may keep them: the
        probe called the same per-sample kernel on the same parameters (so the same
        numbers), in this process or in a process of its own (a worker's, or one forked
        for it), for a store this run created. Only its ok samples are kept; the others
        are computed again by their block, with the run's retries and isolation."""
        if not self.probed or not self.kernel.per_sample:
            return None
        shape, first = self.probed[0]
        return (tuple(shape), first)

    def _stopped(self, entry: dict[str, Any], exc: BaseException, computed: int, done_before: int) -> None:
        """Record in the history how far a run that stopped got."""
        st, info = self.st, self.info
        assert info is not None
        entry.update(state="stopped", end=now())
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or a signal (errors.Stopped)
            entry["reason"] = str(exc) or "interrupted"
        else:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        # blocks whose task committed but whose result the driver had not taken in yet
        # count too: the markers say what was computed
        with contextlib.suppress(Exception):
            computed = max(computed, int(st.ledger.committed().sum()) - done_before)
        entry["blocks_computed"] = computed
        info["history"][-1] = entry
        # a full disk: the error that stopped it matters more; a lock another run took
        # over: that run's provenance stays
        with contextlib.suppress(OSError, StoreWriteError, LockLostError):
            self.lock.check()
            st.update_info(info)


def _call(callbacks: list[Callback], method: str, event: Any) -> None:
    for cb in callbacks:
        hook = getattr(cb, method, None)
        if hook is not None:
            hook(event)


def _publish_seconds() -> float:
    """How often a run writes its progress for ``daskbatch status``."""
    return float(config.get("publish-interval"))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user name in a container
        return ""


def say_interrupted(st: Store, exc: KeyboardInterrupt) -> None:
    """In Python (a notebook, a script), one line on how far a stopped run got and how
    to go on; the ``daskbatch`` command prints its own."""
    if config.get("cli"):
        return
    with contextlib.suppress(Exception):
        done = st.done_mask()
        how = f" by {exc.args[0].removeprefix('stopped by ')}" if str(exc).startswith("stopped by") else ""
        again = "Run the cell again" if _in_notebook() else "Run the same call again"
        logger.info(
            f"interrupted{how}; {int(done.sum()):,} of {done.size:,} blocks done and kept. "
            f"{again} to continue"
        )


# --------------------------------------------------------------------------- planning


def seconds_per_sample(st: Store) -> float | None:
    """The kernel seconds per sample of a store's committed blocks (None: none yet)."""
    records = st.ledger.records().values()
    samples = sum(int(r.counts_array().sum()) for r in records)
    if not samples:
        return None
    return float(np.nansum([r.seconds for r in records])) / samples


def expected_block_seconds(
    st: Store, layout: Layout, seconds_per_sample: float | None, measured: bool | int = True
) -> float | None:
    """What a block is expected to take, for a worker to decide whether it can start one
    before its job ends (:func:`daskbatch.blocktask.leave_before_deadline`).

    With ``measured``, the median kernel seconds of the store's committed blocks, if
    any; else ``seconds_per_sample`` (the probe's) times the samples of a block; else
    None (unknown: the workers measure their own blocks).
    """
    if measured:
        seconds = [r.seconds for r in st.ledger.records().values() if r.seconds == r.seconds]
        if seconds:
            return float(np.median(seconds))
    if seconds_per_sample is None:
        return None
    return seconds_per_sample * math.prod(layout.block_shape)


def workers_before_start(spec: ClusterSpec) -> int | None:
    """Workers the run will have, when that is known before anything starts."""
    return spec.workers_before_start


def make_run_plan(
    kernel: Kernel, space: Space, options: RunOptions, n_workers: int, seconds_per_sample: float | None
) -> Plan:
    """The plan for ``n_workers`` workers, from the sizes and the probe's cost per sample.

    With ``until=`` and ``chunk_size="auto"``, blocks are cut for the rounds to come (up
    to 64 × the first ``n``), as large as the first round allows: the store keeps its
    blocks as it grows, and blocks cut for the first round alone would be many small
    ones by the last.
    """
    if options.until is not None and options.chunk_size == "auto" and len(space.batch_shape) == 1:
        from .reduced import max_n_of

        first = int(space.batch_shape[0])
        ahead = space.resized(max(first, min(max_n_of(options.until, first), 64 * first)))
        size = make_run_plan(
            kernel, ahead, dataclasses.replace(options, until=None), n_workers, seconds_per_sample
        ).block_shape[0]
        options = dataclasses.replace(options, until=None, chunk_size=min(size, first))
    spec = options.cluster
    b_in, b_out = bytes_per_sample(kernel, space)
    desc = spec.description if spec.in_driver else dataclasses.replace(spec, n_workers=n_workers).description
    return make_plan(
        kernel=kernel.identity,
        batch_dims=space.batch_dims,
        batch_shape=space.batch_shape,
        chunk_size=options.chunk_size,
        n_workers=n_workers,
        cluster=desc,
        bytes_in_per_sample=b_in,
        bytes_out_per_sample=b_out,
        seconds_per_sample=seconds_per_sample,
        # a job-queue cluster's workers have the memory of their jobs, not of this machine
        memory_limit=options.memory_limit or getattr(spec.options, "worker_memory", None),
        block_multiple=getattr(space, "block_multiple", None),
    )


def blocks_to_retry(st: Store) -> list[tuple[int, ...]]:
    """Committed blocks with samples that failed, timed out or crashed."""
    done, counts = st.ledger.state()
    bad = done & (counts[..., STATUS["ok"]] + counts[..., STATUS["pending"]] < counts.sum(axis=-1))
    return [tuple(int(i) for i in idx) for idx in np.argwhere(bad)]


# --------------------------------------------------------------------------- computing


def compute_all(
    executor: Any, st: Store, space: Space, ctx: BlockContext, tasks: dict, pending: list, on_done: Callable
) -> None:
    """Compute the pending blocks; isolate those whose task keeps killing its worker.

    With dask's processes scheduler a dead worker breaks the whole pool: if it was
    ended by a timeout (recorded in the store), the remaining blocks are computed
    again with a fresh pool, which skips the samples that timed out; any other death
    moves the rest to a local cluster (``"fork"``, see :mod:`daskbatch.forkpool`) or
    stops the run with an error (``"processes"``), and the store stays resumable.

    On a cluster daskbatch did not start (an address or a ``Client``), the kernel
    travels by value when the workers cannot import its module (see
    :func:`~daskbatch.cluster.kernel_shipped`), and a kernel they cannot load at all
    stops the run, before anything is computed, with an error that says what to
    install where.
    """
    if executor.client is not None and not executor.spec.imports_like_driver:
        from .cluster import kernel_shipped

        where = f"cluster at {executor.client.scheduler.address}"
        with kernel_shipped(executor.client, ctx.kernel, where):
            try:
                _compute_all_here(executor, st, space, ctx, tasks, pending, on_done)
            except RuntimeError as e:
                # the scheduler could not unpickle the graph after all (a worker that
                # joined later, a module that differs): one line, not a traceback
                if "deserializ" not in str(e):
                    raise
                from .errors import WorkerImportError

                cause = e.__cause__ or e.__context__
                detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
                raise WorkerImportError(
                    f"the {where} cannot load the tasks of kernel {ctx.kernel.identity!r} ({detail}): "
                    "its scheduler and workers need the packages this process has"
                ) from None
        return
    _compute_all_here(executor, st, space, ctx, tasks, pending, on_done)


def _compute_all_here(
    executor: Any, st: Store, space: Space, ctx: BlockContext, tasks: dict, pending: list, on_done: Callable
) -> None:
    from .salvage import salvage

    while True:
        # a record is only cleared when its block commits, which needs another round
        round_start = time.time() - 1.0  # filesystem time stamps may be coarse
        try:
            lost = executor.compute([tasks[b] for b in pending], on_done)
        except WorkerDiedError:  # a timeout recorded: a fresh pool; else somewhere that isolates
            if not st.timeouts_recorded_since(round_start) and not executor.fall_back():
                raise
            done = st.ledger.committed()
            pending = [b for b in pending if not done[b]]
            continue
        break
    for i in lost:
        salvage(executor, st, space, ctx, pending[i], on_done)


def _estimate_json(estimate: Any) -> dict[str, Any]:
    """An estimate's value and error as JSON (NaN as None; arrays as flat lists)."""
    from .reduced import _plain

    def flat(v: Any) -> Any:
        arr = np.asarray(v, dtype=float)
        return _plain(arr if arr.ndim == 0 else arr.ravel())

    return {"value": flat(estimate.value), "error": flat(estimate.error)}
