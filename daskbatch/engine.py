"""The run: pending blocks → one dask task each → a scheduler → summaries.

:func:`run` checks every argument before it touches the store or starts a worker,
compares the store's fingerprint when the store exists, creates the store from a
template when it does not, and computes only the blocks whose commit marker is
missing. Each block task runs the kernel and writes the block into its own Zarr
chunks; only a small summary per block comes back to the driver, so memory stays
flat however many samples there are.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import html
import json
import math
import os
import shlex
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .chunking import plan_block_shape
from .cluster import (
    ClusterSpec,
    WorkerDiedError,
    check_can_spawn,
    default_workers,
    limit_malloc_arenas,
    parse_cluster,
    prestart,
    release_freed_memory,
    start_executor,
)
from .errors import (
    DaskbatchError,
    FingerprintMismatchError,
    KernelChangedError,
    KernelSignatureError,
    StoreError,
)
from .kernel import MAX_ERRORS_PER_BLOCK, STATUS, TIMEOUT, BlockResult, Kernel
from .plan import Plan, make_plan
from .progress import Progress, format_eta
from .provenance import changed_parts, code_changes, kernel_code, kernel_origin
from .space import Space, Table
from .store import Layout, Store

__all__ = ["RunResult", "StoreStatus", "open", "plan", "run", "status"]

_PROBE_SAMPLES = 16
_VECTOR_PROBE_SAMPLES = 16_384
_QUICK_PROBE_SECONDS = 0.05
_PUBLISH_SECONDS = 2.0  # how often a run writes its progress for `daskbatch status`
_SHOWN_ERRORS = 5
_KERNEL_CHANGED = ("refuse", "continue")


# --------------------------------------------------------------------------- results


def _counts_dict(counts: np.ndarray) -> dict[str, int]:
    return {name: int(counts[code]) for name, code in STATUS.items()}


@dataclass
class StoreStatus:
    """Totals of a store: samples and blocks done, failed and pending.

    ``samples["pending"]`` counts the samples of blocks without a commit marker.
    """

    store: str
    samples: dict[str, int]
    n_samples: int
    blocks_done: int
    blocks_total: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] | None = None
    kernel: str = ""
    running: dict[str, Any] | None = None  # who holds the store's lock now (host, pid, start)
    #: how to continue: a command to run, or what to rerun (a notebook cell, a script)
    resume_hint: str = ""
    #: runs that went on with changed kernel code (``kernel_changed="continue"``)
    kernel_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.blocks_done == self.blocks_total

    @property
    def n_failed(self) -> int:
        return self.n_samples - self.samples["ok"] - self.samples["pending"]

    def _state(self) -> str:
        if self.running:
            h = self.running
            text = f"running now (host {h.get('host')}, pid {h.get('pid')}, since {h.get('start')})"
            prog = h.get("progress") or {}
            if prog.get("rate"):
                text += (
                    f"; {prog['rate']:,.0f} samples/s, ETA {format_eta(prog.get('eta_seconds'))} "
                    f"(as of {prog.get('updated', '?')})"
                )
            return text
        if self.complete:
            return "complete"
        run = self.last_run or {}
        if run.get("state") == "running":
            return f"stopped without finishing (killed?); {self._resume_text()}"
        if run.get("state") == "stopped" and run.get("reason"):  # "stopped by SIGTERM", "interrupted"
            return f"{run['reason']}; {self._resume_text()}"
        return f"incomplete; {self._resume_text()}"

    def _resume_text(self) -> str:
        hint = self.resume_hint or f"daskbatch resume {shlex.quote(self.store)}"
        return f"resume with: {hint}" if hint.startswith(("daskbatch ", "python ", "cd ")) else hint

    def _lines(self) -> list[str]:
        s = self.samples
        pct = 100.0 * (self.n_samples - s["pending"]) / self.n_samples if self.n_samples else 100.0
        lines = [
            f"store:    {self.store}",
            f"kernel:   {self.kernel}",
            f"state:    {self._state()}",
            f"samples:  {self.n_samples:,} total: {s['ok']:,} ok, {s['failed']:,} failed, "
            f"{s['timeout']:,} timed out, {s['crashed']:,} crashed, {s['pending']:,} pending "
            f"({pct:.1f}% done)",
            f"blocks:   {self.blocks_done:,} of {self.blocks_total:,} done",
        ]
        for ch in self.kernel_changes:
            lines.insert(
                2,
                f"code:     went on with changed kernel code at {ch.get('start', '?')} "
                f"({str(ch.get('from'))[:12]} -> {str(ch.get('to'))[:12]}: "
                f"{', '.join(ch.get('parts', [])[:3]) or 'source'}); blocks before it used the old code",
            )
        if self.errors:
            lines.append("errors (first ones):")
            lines += [f"  {e['sample']}: {e['error']}" for e in self.errors[:_SHOWN_ERRORS]]
        return lines

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


@dataclass
class RunResult(StoreStatus):
    """What :func:`run` returns: the store's totals plus what this call did."""

    blocks_computed: int = 0
    samples_computed: int = 0
    wall_seconds: float = 0.0
    cluster: str = ""
    dashboard: str | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples_computed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def _lines(self) -> list[str]:
        lines = super()._lines()
        if self.blocks_computed:
            lines.insert(
                3,
                f"this run: {self.samples_computed:,} samples in {self.blocks_computed:,} blocks, "
                f"{self.wall_seconds:.2f} s, {self.samples_per_second:,.0f} samples/s on "
                f"{self.cluster}",
            )
        else:
            lines.insert(3, "this run: nothing to compute, every block was already done")
        return lines

    def open(self):
        """The results as a lazy :class:`xarray.Dataset` (see :func:`open`)."""
        return open(self.store)


# --------------------------------------------------------------------------- helpers


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise DaskbatchError(f"{where}: arrays of dtype {value.dtype} cannot be recorded")
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise DaskbatchError(
        f"{where}={value!r} cannot be recorded in the store; constants must be numbers, "
        "strings, booleans, lists, dicts or numpy arrays"
    )


def _space_fingerprint(space: Space) -> dict[str, Any]:
    spec = dict(space.spec())
    spec.pop("path", None)  # a table is identified by its contents, not where it lies
    return spec


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _describe_difference(name: str, stored: Any, now: Any) -> str:
    if isinstance(stored, dict) and isinstance(now, dict):
        keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        parts = [f"{k}: {_short(stored.get(k))} -> {_short(now.get(k))}" for k in keys[:4]]
        return f"{name} ({'; '.join(parts)})"
    return f"{name} ({_short(stored)} -> {_short(now)})"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _validate_reliability_args(retries, timeout, retry_failed, verify):
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DaskbatchError(f"retries={retries!r} must be a whole number >= 0 (0: no retries)")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise DaskbatchError(f"timeout={timeout!r} must be a number of seconds > 0, or None (no timeout)")
    if timeout is not None and not math.isfinite(timeout):
        raise DaskbatchError(f"timeout={timeout!r} must be finite; use None for no timeout")
    for name, value in (("retry_failed", retry_failed), ("verify", verify)):
        if not isinstance(value, bool):
            raise DaskbatchError(f"{name}={value!r} must be True or False")


def _memory_limit(value: int | str | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(value)
        except ValueError:
            raise DaskbatchError(
                f"memory_limit={value!r} is not a size; use bytes (an int) or text such as '4GiB'"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DaskbatchError(f"memory_limit={value!r} must be a size > 0 in bytes, or text such as '4GiB'")
    return value


def _validate_run_args(kernel, space, chunk_size, progress, overwrite, constants):
    if not isinstance(kernel, Kernel):
        raise KernelSignatureError(
            f"kernel={kernel!r} is not a daskbatch kernel; decorate the function with "
            "@daskbatch.kernel(outputs={...})"
        )
    if not isinstance(space, Space):
        raise DaskbatchError(
            f"space={space!r} is not a parameter space; use daskbatch.Grid, Table, MonteCarlo, "
            "LatinHypercube, Sobol, Halton or Product"
        )
    if not (chunk_size == "auto" or isinstance(chunk_size, int | Mapping)) or isinstance(chunk_size, bool):
        raise DaskbatchError(
            f"chunk_size={chunk_size!r} is not valid; use 'auto', a number of samples per block, "
            "or a dict of block sizes per batch dim"
        )
    for name, value in (("progress", progress), ("overwrite", overwrite)):
        if not isinstance(value, bool):
            raise DaskbatchError(f"{name}={value!r} must be True or False")
    if constants is not None and not isinstance(constants, Mapping):
        raise DaskbatchError(f"constants={constants!r} must be a dict of keyword arguments")


# --------------------------------------------------------------------------- block task


@dataclass(frozen=True)
class _BlockContext:
    kernel: Kernel
    store: str
    layout: Layout
    param_names: tuple[str, ...]
    constants: Mapping[str, Any]
    retries: int = 0
    timeout: float | None = None
    kill_on_timeout: bool = False
    retry_failed: bool = False


def kernel_inputs(
    values: Mapping[str, Any], params: Mapping[str, Any], batch_dims: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A block's parameter values as the kernel sees them, and what the store keeps.

    A grid axis (a 1-D array along its own dim) is shaped to broadcast against the
    block's batch dims and is not stored per block (it is the dim's coordinate); every
    other parameter is passed and stored as it is.
    """
    nd = len(batch_dims)
    kernel_params: dict[str, np.ndarray] = {}
    stored_params: dict[str, np.ndarray] = {}
    for name, arr in values.items():
        if params[name].is_axis:
            shape = [1] * nd
            shape[batch_dims.index(name)] = -1
            kernel_params[name] = np.asarray(arr).reshape(shape)
        else:
            kernel_params[name] = stored_params[name] = np.asarray(arr)
    return kernel_params, stored_params


def _block_inputs(ctx: _BlockContext, block: tuple[int, ...], param_arrays) -> tuple[dict, dict]:
    """The kernel's view of a block's parameters, and what the store keeps of them."""
    values = dict(zip(ctx.param_names, param_arrays, strict=True))
    return kernel_inputs(values, ctx.layout.params, tuple(ctx.layout.batch_dims))


def _compute(
    ctx: _BlockContext,
    block: tuple[int, ...],
    kernel_params: Mapping[str, np.ndarray],
    positions: list[int] | None = None,
) -> BlockResult:
    """Run the kernel on a block (or some of its samples), honouring recorded timeouts."""
    layout = ctx.layout
    region = layout.block_slices(block)
    starts = tuple(s.start for s in region)
    batch_shape = tuple(s.stop - s.start for s in region)
    st = Store(ctx.store)

    def label(pos: tuple[int, ...]) -> str:
        glob = [s + p for s, p in zip(starts, pos, strict=True)]
        if not layout.batch_coords:
            return "sample " + ", ".join(str(g) for g in glob)
        parts = []
        for d, g in zip(layout.batch_dims, glob, strict=True):
            c = layout.batch_coords.get(d)
            parts.append(f"{d}={c[g].item()!r}" if c is not None else f"{d}={g}")
        return "sample " + ", ".join(parts)

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
        label,
        positions=todo,
        retries=ctx.retries,
        timeout=ctx.timeout,
        on_timeout=lambda pos, secs: st.record_timeout(block, pos, secs),
        kill_on_timeout=ctx.kill_on_timeout,
    )
    flat_status = res.status.reshape(-1)
    for i in sorted(stopped) if stopped else ():  # never a Python loop over every sample
        if positions is None or i in positions:
            flat_status[i] = TIMEOUT
            res.n_errors += 1
            if len(res.errors) < MAX_ERRORS_PER_BLOCK:
                pos = tuple(int(p) for p in np.unravel_index(i, batch_shape))
                res.errors.append(
                    {
                        "position": list(pos),
                        "sample": label(pos),
                        "error": f"SampleTimeout: stopped after the timeout of {stopped[i]:g} s "
                        "(the process running it was ended)",
                        "where": "",
                    }
                )
    return res


def _summary(block, counts, res: BlockResult, nd: int) -> np.ndarray:
    out = np.empty((1,) * nd, dtype=object)
    out[(0,) * nd] = {
        "block": block,
        "counts": [int(c) for c in counts],
        "errors": res.errors[:_SHOWN_ERRORS],
        "seconds": res.seconds,
    }
    return out


class _Opaque:
    """A value passed to a task as it is. dask walks the arguments of every task it
    builds, and a dataclass field by field (the run's context: kernel, layout, its
    coordinates): 1.7 ms per block, seconds for thousands of blocks."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _block_task(
    block: tuple[int, ...], source: Space | Mapping[str, np.ndarray], context: _Opaque
) -> np.ndarray:
    """Run one block and commit it to the store; return a small summary.

    ``source`` is the space, which draws the block's parameters here, or, for a table
    held in memory, the block's rows themselves; ``context`` holds the run's
    :class:`_BlockContext`. With its ``retry_failed`` a block that is already
    committed recomputes only its samples that are not ok.
    """
    ctx: _BlockContext = context.value
    if ctx.kill_on_timeout:  # a worker process, never the driver: fewer malloc arenas
        limit_malloc_arenas()  # once per process, in clusters daskbatch did not start too
    layout = ctx.layout
    nd = len(layout.batch_dims)
    values = source.block(layout.block_slices(block)) if isinstance(source, Space) else source
    kernel_params, stored_params = _block_inputs(ctx, block, [values[k] for k in ctx.param_names])
    st = Store(ctx.store)
    if ctx.retry_failed and st.is_done(block):
        old_outputs, old_status = st.read_block(layout, block)
        redo = [int(i) for i in np.flatnonzero(old_status.reshape(-1) != STATUS["ok"])]
        res = _compute(ctx, block, kernel_params, redo)
        keep = res.status.reshape(-1) == STATUS["pending"]  # not recomputed: the old values
        res.status.reshape(-1)[keep] = old_status.reshape(-1)[keep]
        for k, v in res.outputs.items():
            flat = v.reshape((keep.size, -1))
            flat[keep] = old_outputs[k].reshape((keep.size, -1))[keep]
        st.unmark([block])  # a crash from here on leaves the block pending, not half-new
    else:
        res = _compute(ctx, block, kernel_params)
    counts = st.write_block(
        layout, block, stored_params, res.outputs, res.status, res.errors, res.n_errors, res.seconds
    )
    st.clear_timeouts(block)
    summary = _summary(block, counts, res, nd)
    if ctx.kill_on_timeout:  # a worker process: give freed blocks back when they pile up
        block_bytes = sum(np.asarray(v).nbytes for v in (*res.outputs.values(), *stored_params.values()))
        del res, values, kernel_params, stored_params
        release_freed_memory(block_bytes)
    return summary


def _piece_task(
    ctx: _BlockContext, block: tuple[int, ...], kernel_params: Mapping[str, np.ndarray], positions: list[int]
) -> BlockResult:
    """Some samples of a block whose task kept killing its worker; nothing is written."""
    return _compute(ctx, block, kernel_params, positions)


def _build_tasks(space: Space, layout: Layout, ctx: _BlockContext, blocks) -> dict[tuple[int, ...], Any]:
    """One dask task per block in ``blocks``, with no dependencies.

    Each task draws its block's parameters itself (a design computes them from the
    sample index; a grid from its axes), so the scheduler handles one task per block
    and no parameter array ever travels. A table held in memory is the exception:
    its task carries the block's rows, not the whole table.
    """
    import dask

    token = hashlib.sha256(f"{ctx.store}{layout.store_id}".encode()).hexdigest()[:12]
    carries_rows = isinstance(space, Table)
    tasks = {}
    context = _Opaque(ctx)
    for b in blocks:
        source = space.block(layout.block_slices(b)) if carries_rows else space
        name = f"daskbatch-block-{token}-" + "-".join(str(i) for i in b)
        tasks[b] = dask.delayed(_block_task, pure=False)(b, source, context, dask_key_name=name)
    return tasks


# --------------------------------------------------------------------------- run


def _store_status(store: Store, info: Mapping[str, Any], cls=StoreStatus, **extra) -> StoreStatus:
    done = store.done_mask()
    # counts of a block without its marker are not trusted: that block is pending
    counts = store.block_counts() * done[..., None]
    n_samples = int(math.prod(info["layout"]["batch_shape"]))
    totals = counts.reshape(-1, len(STATUS)).sum(axis=0)
    samples = _counts_dict(totals)
    samples["pending"] = n_samples - int(totals.sum()) + int(totals[STATUS["pending"]])
    failing = [
        tuple(int(i) for i in idx)
        for idx in np.argwhere(done & (counts[..., STATUS["ok"]] < counts.sum(axis=-1)))
    ][:_SHOWN_ERRORS]
    errors = [e for doc in store.block_errors(failing) for e in doc["errors"]]
    history = info.get("history") or [None]
    return cls(
        store=str(store.path),
        samples=samples,
        n_samples=n_samples,
        blocks_done=int(done.sum()),
        blocks_total=int(done.size),
        errors=errors[:_SHOWN_ERRORS],
        last_run=history[-1],
        kernel=info.get("kernel", {}).get("identity", ""),
        running=None if cls is RunResult else store.lock().holder(),
        resume_hint=resume_hint(info, str(store.path)),
        kernel_changes=[
            {"start": h.get("start"), **h["kernel_changed"]}
            for h in info.get("history", [])
            if h.get("kernel_changed")
        ],
        **extra,
    )


def resume_hint(info: Mapping[str, Any], store: str) -> str:
    """How a user continues this store: a command that works, or what to rerun."""
    identity = info.get("kernel", {}).get("identity", "")
    if identity.startswith("__main__:"):
        file = info.get("kernel_file")
        if info.get("kernel_origin") == "notebook" or not file or not os.path.isfile(file):
            return "run the notebook cell that called daskbatch.run again"
        argv = list(info.get("argv") or [])
        if argv and os.path.realpath(argv[0]) == os.path.realpath(file):
            command = "python " + " ".join(shlex.quote(a) for a in argv)
        else:
            command = f"python {shlex.quote(file)}"
        cwd = info.get("cwd")
        return f"cd {shlex.quote(cwd)} && {command}" if cwd else command
    return f"daskbatch resume {shlex.quote(store)}"


def run(
    kernel: Kernel,
    space: Space,
    store: str | os.PathLike[str],
    *,
    cluster: Any = "local",
    n_workers: int | None = None,
    chunk_size: int | str | Mapping[str, int] = "auto",
    progress: bool = True,
    overwrite: bool = False,
    constants: Mapping[str, Any] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    retry_failed: bool = False,
    verify: bool = False,
    memory_limit: int | str | None = None,
    kernel_changed: str = "refuse",
    spec_file: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Run ``kernel`` over every sample of ``space``, streaming results into ``store``.

    Running the same call again continues where it stopped: blocks with a commit
    marker are skipped, so a finished store computes nothing.

    Parameters
    ----------
    kernel
        A function decorated with :func:`daskbatch.kernel`.
    space
        A :class:`~daskbatch.Grid`, :class:`~daskbatch.Table` or
        :class:`~daskbatch.MonteCarlo`.
    store
        Directory of the Zarr store (created if missing; its parent must exist).
    cluster
        ``"local"`` (a LocalCluster, one single-threaded process per core),
        ``"processes"``, ``"threads"``, ``"serial"``, a scheduler address such as
        ``"tcp://10.0.0.1:8786"``, or a :class:`distributed.Client`.
    n_workers
        Workers for ``"local"``, ``"processes"`` and ``"threads"`` (default: the
        cores available).
    chunk_size
        Samples per block: ``"auto"``, an int (spread over the batch dims, trailing
        dims first), or a dict of block sizes per batch dim.
    progress
        Show a progress bar (samples, rate, ETA, failures).
    overwrite
        Discard an existing daskbatch store at ``store`` and start again.
    constants
        Keyword arguments passed unchanged to every kernel call.
    retries
        Call a sample (or a vectorised block) that raised up to this many more times
        before marking it failed: for transient errors (a licence server, a file
        system hiccup).
    timeout
        Seconds a sample may run (per-sample kernels) or a block call may run
        (vectorised kernels). A sample past it is marked ``timeout`` and the sweep
        goes on. On worker processes (``"local"``, ``"processes"``, a cluster) the
        process running it is ended, which stops native code too; it is restarted
        and the block resumes without that sample. On ``"serial"`` and ``"threads"``
        only Python code can be stopped.
    retry_failed
        Also recompute the samples of committed blocks that failed, timed out or
        crashed (only those; the others keep their values).
    verify
        Before computing, check every committed block's chunks against their
        checksums and recompute the blocks that do not match. Without it only
        cheap checks run (unreadable markers, missing or truncated chunk files).
    memory_limit
        Memory per worker, in bytes or as text (``"4GiB"``); default: the machine's
        memory shared by the workers. ``chunk_size="auto"`` keeps each task within
        half of it (see :func:`plan`); daskbatch's LocalCluster gives it to its
        workers as their limit.
    kernel_changed
        What to do when the store holds results of *other code* of this kernel (its
        source, or the functions and constants of the user's own code it uses; see
        :mod:`daskbatch.provenance` for what counts): ``"refuse"`` (default) raises
        :class:`~daskbatch.errors.KernelChangedError` with a short diff;
        ``"continue"`` keeps the results and goes on with the new code, recorded in
        the store's history with both code hashes. ``overwrite=True`` starts again.
    spec_file
        The spec file this run was described in (the CLI passes it): recorded so
        that ``daskbatch resume`` and ``validate`` import the kernel from its folder.

    Returns
    -------
    RunResult
        Totals (ok, failed, pending), the first errors, wall time and samples/s.

    Examples
    --------
    >>> import daskbatch as db, tempfile, os
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> path = os.path.join(tempfile.mkdtemp(), "sq.zarr")
    >>> res = db.run(square, db.Grid(x=[1.0, 2.0, 3.0]), path, cluster="serial", progress=False)
    >>> db.open(path).y.values.tolist()
    [1.0, 4.0, 9.0]
    """
    t_start = time.perf_counter()
    _validate_run_args(kernel, space, chunk_size, progress, overwrite, constants)
    _validate_reliability_args(retries, timeout, retry_failed, verify)
    if kernel_changed not in _KERNEL_CHANGED:
        raise DaskbatchError(
            f"kernel_changed={kernel_changed!r} is not valid; use 'refuse' (the default: a store with "
            "results of other kernel code is refused) or 'continue' (keep them and go on)"
        )
    memory_limit = _memory_limit(memory_limit)
    constants = dict(constants or {})
    constants_json = _jsonable(constants, "constants")
    kernel.check_arguments(space.params, constants)
    spec = parse_cluster(cluster, n_workers)
    check_can_spawn(spec)
    code = kernel_code(kernel)
    st = Store(store)
    st.check_writable()
    if st.is_foreign():
        raise StoreError(
            f"store={str(st.path)!r} is not empty and was not written by daskbatch; choose a new "
            "path (daskbatch never deletes data it did not write)"
        )
    provenance = {
        "kernel_code": code,
        "kernel_origin": kernel_origin(kernel),
        "kernel_file": kernel.source_file(),
        "kernel_source_sha256": kernel.source_hash(),
    }
    if spec_file is not None:
        provenance["spec_file"] = str(Path(spec_file).resolve())
        provenance["spec_dir"] = str(Path(spec_file).resolve().parent)
        provenance["kernel_ref"] = _spec_kernel_ref(spec_file) or kernel.identity
    else:
        # how to run it again: the script and the folder it ran from (a relative store path)
        provenance["cwd"] = os.getcwd()
        provenance["argv"] = [str(a) for a in sys.argv[:50]]

    info = None if overwrite else st.info()
    if info is not None:
        space, _ = _check_store(st, info, kernel, space, constants_json, chunk_size, code, kernel_changed)
        retry = _blocks_to_retry(st) if retry_failed else []
        if not verify and not retry and st.done_mask().all() and not st.verify(full=False):
            return _store_status(st, info, cls=RunResult, cluster=spec.description)  # no probe, no lock

    created_dir = not st.path.exists()
    lock = st.lock().acquire()  # a second run on this store is refused here, naming the holder
    try:
        # read again under the lock: a run that ended meanwhile has written its history
        info = None if overwrite else st.info()
        if info is not None:
            space, code_change = _check_store(
                st, info, kernel, space, constants_json, chunk_size, code, kernel_changed, announce=False
            )
            block_shape = tuple(info["layout"]["block_shape"])
            damaged = st.verify(full=verify)
            retry = _blocks_to_retry(st) if retry_failed else []
            info.update(provenance)
        else:
            block_shape, code_change = None, None
            damaged, retry = [], []
        return _run_locked(
            kernel=kernel,
            space=space,
            st=st,
            spec=spec,
            info=info,
            block_shape=block_shape,
            damaged=damaged,
            retry=retry,
            lock=lock,
            t_start=t_start,
            chunk_size=chunk_size,
            progress=progress,
            constants=constants,
            constants_json=constants_json,
            space_fp=_space_fingerprint(space),
            retries=retries,
            timeout=timeout,
            retry_failed=retry_failed,
            memory_limit=memory_limit,
            provenance=provenance,
            code_change=code_change,
        )
    except DaskbatchError:
        # refused before any result (a kernel the cluster cannot load): a store this call
        # created and nothing committed to is not left behind
        if created_dir and st.info() is not None and not st.done_mask().any():
            lock.release()
            shutil.rmtree(st.path, ignore_errors=True)
        raise
    finally:
        lock.release()
        if created_dir and st.info() is None:  # stopped before the template: leave nothing
            shutil.rmtree(st.path, ignore_errors=True)


def _say_interrupted(st: Store, exc: KeyboardInterrupt) -> None:
    """In Python (a notebook, a script), one line on how far a stopped run got and how
    to go on; the ``daskbatch`` command prints its own."""
    import dask

    if dask.config.get("daskbatch.cli", False):
        return
    with contextlib.suppress(Exception):
        done = st.done_mask()
        how = f" by {exc.args[0].removeprefix('stopped by ')}" if str(exc).startswith("stopped by") else ""
        print(
            f"daskbatch: interrupted{how}; {int(done.sum()):,} of {done.size:,} blocks done and kept. "
            "Run the same call again to continue",
            file=sys.stderr,
            flush=True,
        )


def _check_store(
    st: Store,
    info: Mapping[str, Any],
    kernel: Kernel,
    space: Space,
    constants_json: Any,
    chunk_size: Any,
    code: Mapping[str, Any],
    kernel_changed: str,
    announce: bool = True,
) -> tuple[Space, dict[str, Any] | None]:
    """Refuse a store written by a different run; return the space to run (a seedless
    design takes the store's seed) and the change of the kernel's code, if any."""
    space = _adopt_seed(space, info, announce)
    _check_fingerprint(st, info, kernel, space, constants_json, chunk_size)
    return space, _check_kernel_code(st, info, kernel, code, kernel_changed)


def _spec_kernel_ref(spec_file: str | os.PathLike[str]) -> str | None:
    """The ``kernel`` a spec file names (how ``daskbatch resume`` imports it again)."""
    import tomllib

    try:
        ref = tomllib.loads(Path(spec_file).read_text()).get("kernel")
    except (OSError, ValueError):
        return None
    return ref if isinstance(ref, str) else None


def _adopt_seed(space: Space, info: Mapping[str, Any], announce: bool) -> Space:
    """A design given no seed continues with the seed its store was started with."""
    stored = info.get("seed")
    if space.seed_given or stored is None or stored == space.seed:
        return space
    other = space.with_seed(int(stored))
    if _space_fingerprint(other) != info.get("space"):
        return space  # something else differs too: the fingerprint check names it
    if announce:
        print(
            f"daskbatch: no seed given; continuing with the seed this store was started with ({stored})",
            file=sys.stderr,
        )
    return other


def _check_fingerprint(
    st: Store, info: Mapping[str, Any], kernel: Kernel, space: Space, constants_json, chunk_size
) -> None:
    stored_layout = info["layout"]
    now = {"kernel": kernel.spec(), "space": _space_fingerprint(space), "constants": constants_json}
    diffs = [_describe_difference(k, info.get(k), v) for k, v in now.items() if info.get(k) != v]
    if chunk_size != "auto":
        bs = plan_block_shape(space.batch_dims, space.batch_shape, chunk_size, n_workers=1)
        if list(bs) != stored_layout["block_shape"]:
            diffs.append(f"chunking (block shape {stored_layout['block_shape']} -> {list(bs)})")
    if diffs:
        raise FingerprintMismatchError(
            f"store {str(st.path)!r} was written by a different run; what differs: "
            + ", ".join(diffs)
            + ". Pass overwrite=True to discard it and start again, or use a new store path"
        )


def _check_kernel_code(
    st: Store, info: Mapping[str, Any], kernel: Kernel, code: Mapping[str, Any], kernel_changed: str
) -> dict[str, Any] | None:
    """None when the kernel's code is the store's; else the change, or a refusal naming it.

    A store with no committed block takes the new code silently: nothing would mix.
    """
    old = info.get("kernel_code")
    if old is None:  # written before the code was recorded: only a hash of the raw source
        raw = info.get("kernel_source_sha256")
        if raw is None or raw == kernel.source_hash():
            return None
        old = {"sha256": raw, "parts": {}}
        lines = ["  (this store recorded only a hash of the kernel's source: no diff to show)"]
    elif old.get("sha256") == code["sha256"]:
        return None
    else:
        lines = code_changes(old, code)
    done = st.done_mask()
    change = {
        "from": old.get("sha256"),
        "to": code["sha256"],
        "parts": changed_parts(old, code),
    }
    if not done.any():
        change["results"] = False
        return change
    if kernel_changed == "continue":
        change["results"] = True
        return change
    raise KernelChangedError(
        f"store {str(st.path)!r} holds results of other code of kernel {kernel.identity!r} "
        f"({int(done.sum()):,} of {done.size:,} blocks done). What changed:\n"
        + "\n".join(lines)
        + "\nTo discard those results and start again: overwrite=True (--overwrite). To keep them "
        "and go on with the new code: kernel_changed='continue' (--kernel-changed continue); "
        "the store's history records it"
    )


def _run_locked(
    *,
    kernel,
    space,
    st,
    spec,
    info,
    block_shape,
    damaged,
    retry,
    lock,
    t_start,
    chunk_size,
    progress,
    constants,
    constants_json,
    space_fp,
    retries,
    timeout,
    retry_failed,
    memory_limit,
    provenance,
    code_change,
) -> RunResult:
    if info is not None and lock.previous:
        prev = lock.previous
        print(
            f"daskbatch: took over the lock of a run that ended without releasing it "
            f"(host {prev.get('host')}, pid {prev.get('pid')}, started {prev.get('start')})",
            file=sys.stderr,
        )
    if damaged:
        print(
            "daskbatch: recomputing damaged blocks: "
            + "; ".join(str(d) for d in damaged[:5])
            + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""),
            file=sys.stderr,
        )
        st.unmark([d.block for d in damaged])
    for b in retry:
        st.clear_timeouts(b)
    prestart(spec, [kernel.module])  # worker processes get ready while this process probes

    # a first look at the kernel, in this process: outputs that cannot be stored fail here
    probe_seconds = None
    if info is None:
        # an explicit chunk_size needs no cost per sample: the first samples only
        probe_seconds = _measure(spec, kernel, space, constants, timeout, cost=chunk_size == "auto")
    layout_args = dict(
        batch_dims=space.batch_dims,
        batch_shape=space.batch_shape,
        params=space.params,
        outputs=kernel.outputs,
        batch_coords=space.batch_coords(),
    )

    plan = None
    if block_shape is None:
        workers = _workers_before_start(spec)
        if workers is not None:  # a block that cannot fit fails here, before any worker starts
            plan = _make_run_plan(kernel, space, spec, chunk_size, workers, probe_seconds, memory_limit)

    with start_executor(spec, memory_limit=memory_limit) as executor:
        if block_shape is None:
            if plan is None:
                plan = _make_run_plan(
                    kernel, space, spec, chunk_size, executor.n_workers, probe_seconds, memory_limit
                )
            block_shape = plan.block_shape
            layout = Layout(block_shape=block_shape, store_id=uuid.uuid4().hex, **layout_args)
            layout.validate()
            info = {
                "format": 1,
                "version": __version__,
                "store_id": layout.store_id,
                "kernel": kernel.spec(),
                **provenance,
                "space": space_fp,
                "space_spec": space.spec(),
                "seed": space.seed,
                "constants": constants_json,
                "layout": {
                    "batch_dims": list(space.batch_dims),
                    "batch_shape": list(space.batch_shape),
                    "block_shape": list(block_shape),
                    "numblocks": list(layout.numblocks),
                },
                "fingerprint": "",
                "history": [],
            }
            info["fingerprint"] = _digest({k: info[k] for k in ("kernel", "space", "constants", "layout")})
            st.create(layout, info, overwrite=True)
        else:
            layout = Layout(block_shape=block_shape, store_id=info["store_id"], **layout_args)

        done = st.done_mask()
        pending = [tuple(int(i) for i in idx) for idx in np.argwhere(~done)]
        done_before = int(done.sum())
        retry = [b for b in retry if done[b]]
        pending += retry
        before = _store_status(st, info)
        counts_now = st.block_counts() * done[..., None]
        redo_samples = sum(int(counts_now[b].sum()) for b in retry)
        redo_failed = sum(int(counts_now[b].sum() - counts_now[b][STATUS["ok"]]) for b in retry)
        dashboard = executor.dashboard_link
        entry = {
            "start": _now(),
            "state": "running",
            "cluster": executor.description,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "blocks_pending": len(pending),
        }
        if retry:
            entry["blocks_retried"] = len(retry)
        if code_change is not None and code_change.get("results"):
            entry["kernel_changed"] = {k: code_change[k] for k in ("from", "to", "parts")}
            print(
                f"daskbatch: the kernel's code changed ({', '.join(code_change['parts'][:3]) or 'source'}); "
                "going on with the new code as asked (recorded in the store's history)",
                file=sys.stderr,
            )
        info["options"] = {  # what `daskbatch resume` uses again
            "retries": retries,
            "timeout": timeout,
            "cluster": spec.address if spec.kind == "address" else spec.kind,
            "workers": spec.n_workers,
        }
        if pending:
            info["history"] = [*info.get("history", []), entry]
            st.update_info(info)
        if progress and dashboard and pending:
            print(f"daskbatch: Dask dashboard at {dashboard}", flush=True)
        computed = {"blocks": 0, "samples": 0, "ok": 0}
        t_compute = time.perf_counter()
        bar = Progress(
            before.n_samples,
            initial=before.n_samples - before.samples["pending"] - redo_samples,
            failed=before.n_failed - redo_failed,
            enabled=progress and bool(pending),
        )

        published = [0.0]

        def publish(final: bool = False) -> None:
            now = time.monotonic()
            if final or now - published[0] >= _PUBLISH_SECONDS:
                published[0] = now
                lock.update(
                    done=bar.done,
                    total=bar.total,
                    failed=bar.failed,
                    rate=bar.rate,
                    eta_seconds=bar.eta,
                    blocks_computed=computed["blocks"],
                    blocks_pending=len(pending),
                )

        def on_done(result: np.ndarray) -> None:
            summary = result.flat[0]
            counts = summary["counts"]
            n = sum(counts)
            computed["blocks"] += 1
            computed["samples"] += n
            computed["ok"] += counts[STATUS["ok"]]
            bar.update(n, n - counts[STATUS["ok"]])
            publish()

        try:
            if pending:
                ctx = _BlockContext(
                    kernel=kernel,
                    store=str(st.path),
                    layout=layout,
                    param_names=tuple(space.params),
                    constants=constants,
                    retries=retries,
                    timeout=timeout,
                    # only a worker process may be ended to stop native code, never this one
                    kill_on_timeout=spec.kind not in ("serial", "threads"),
                    retry_failed=retry_failed,
                )
                tasks = _build_tasks(space, layout, ctx, pending)
                _compute_all(executor, st, space, ctx, tasks, pending, on_done)
        except BaseException as exc:
            bar.close()
            if pending:
                entry.update(state="stopped", end=_now())
                if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or a signal (errors.Stopped)
                    entry["reason"] = str(exc) or "interrupted"
                else:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                # blocks whose task committed but whose result the driver had not taken
                # in yet count too: the markers say what was computed
                committed_now = computed["blocks"]
                with contextlib.suppress(Exception):
                    committed_now = max(committed_now, int(st.done_mask().sum()) - done_before)
                entry["blocks_computed"] = committed_now
                info["history"][-1] = entry
                with contextlib.suppress(OSError):  # a full disk: the error that stopped it matters more
                    st.update_info(info)
            if isinstance(exc, KeyboardInterrupt):
                _say_interrupted(st, exc)
            raise
        bar.close()
        wall = time.perf_counter() - t_compute
        if pending:
            entry.update(
                state="finished",
                end=_now(),
                blocks_computed=computed["blocks"],
                samples_computed=computed["samples"],
                samples_ok=computed["ok"],
                samples_not_ok=computed["samples"] - computed["ok"],
                wall_seconds=round(wall, 3),
                total_seconds=round(time.perf_counter() - t_start, 3),
            )
            info["history"][-1] = entry
            st.update_info(info)
        return _store_status(
            st,
            info,
            cls=RunResult,
            blocks_computed=computed["blocks"],
            samples_computed=computed["samples"],
            wall_seconds=wall,
            cluster=executor.description,
            dashboard=dashboard,
        )


def _probe_block(space: Space, n: int) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    """The first ``n`` samples (or so) of ``space``: their block shape and parameters."""
    shape = plan_block_shape(space.batch_dims, space.batch_shape, n, n_workers=1)
    params = {}
    for name, values in space.block(tuple(slice(0, b) for b in shape)).items():
        p = space.params[name]
        if p.is_axis:
            axis = [1] * len(space.batch_dims)
            axis[space.batch_dims.index(name)] = -1
            values = values.reshape(axis)
        params[name] = values
    return shape, params


def _measure(spec, kernel: Kernel, space: Space, constants, timeout, cost: bool = True) -> float | None:
    """Probe the first samples (checking their outputs); return seconds per sample.

    A vectorised core called on 16 samples measures mostly its call overhead, so
    when that call was quick and ``cost`` is wanted (``chunk_size="auto"`` sizes
    blocks by it) a second probe of up to 16,384 samples gives the cost per sample.
    None if the probe could not finish.
    """
    shape, params = _probe_block(space, min(_PROBE_SAMPLES, space.size))
    probe = _probe(spec, kernel, params, shape, constants, timeout)
    if probe is None:
        return None
    seconds = probe.seconds / math.prod(shape)
    quick = probe.seconds < _QUICK_PROBE_SECONDS
    if cost and not kernel.per_sample and quick and space.size > math.prod(shape):
        shape, params = _probe_block(space, min(_VECTOR_PROBE_SAMPLES, space.size))
        second = _probe(spec, kernel, params, shape, constants, timeout)
        if second is not None:
            seconds = second.seconds / math.prod(shape)
    return seconds


def _probe(spec, kernel: Kernel, params, shape, constants, timeout) -> BlockResult | None:
    """Run the first samples once, before anything starts: outputs that break their spec
    raise here. Returns None when the probe could not finish (see below).

    The probe runs in a child process, so that a sample that ends its process (a
    segfault in a compiled core, ``os._exit``, a Fortran ``STOP``) or hangs past
    ``timeout`` cannot take this process with it. With worker processes the child is
    forked from daskbatch's forkserver, and the run then goes on without the probe's
    figures and isolates that sample like any other. With ``"serial"`` and
    ``"threads"`` the child is a fork of this process (from the forkserver when this
    process runs other threads and has one already; without one, as in a notebook that
    has not run on worker processes yet, the probe runs here: starting a forkserver would
    cost about a second per run), and a sample that ends its process stops the run
    with :class:`~daskbatch.cluster.KernelCrashError` naming it: the run would run it
    in this process. A kernel that cannot be pickled is probed here then.

    With a cluster that is already running (a ``Client``), the probe is a task on one
    of its workers instead: they have the kernel's module loaded already (a fresh
    process would import it again: a second or more for cores that import plotting
    libraries), and a worker that dies is restarted by its nanny.
    """
    if sys.platform == "win32":
        return kernel.probe(params, shape, constants, timeout=timeout)
    if spec.kind == "client":
        res = _probe_on_worker(spec.client, kernel, params, shape, constants, timeout)
        if res is not False:
            return res
    import multiprocessing
    import threading

    import cloudpickle

    from .kernel import TIMEOUT_EXIT_CODE

    in_driver = spec.kind in ("serial", "threads")
    args = (kernel, dict(params), shape, dict(constants), timeout)
    if in_driver and not (threading.active_count() == 1 or _forkserver_running()):
        # a driver with other threads (a notebook) that has no forkserver yet: starting
        # one would cost about a second per run; the run computes in this process anyway
        return kernel.probe(params, shape, constants, timeout=timeout)
    if in_driver and sys.platform.startswith("linux") and threading.active_count() == 1:
        # a fork of this process: quick, and the kernel need not be picklable. Only
        # with no other thread running, which a fork could catch holding a lock.
        ctx = multiprocessing.get_context("fork")
        payload: Any = args
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            with contextlib.suppress(Exception):
                stream.flush()
    else:
        try:
            payload = cloudpickle.dumps(args)
        except Exception:
            if in_driver:  # a kernel or constants that cannot leave this process
                return kernel.probe(params, shape, constants, timeout=timeout)
            raise
        prestart(spec if not in_driver else ClusterSpec("processes", None), [kernel.module])
        ctx = multiprocessing.get_context("forkserver")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_probe_child, args=(payload, send), daemon=True, name="daskbatch-probe")
    with _without_main_module():  # a forked child must not run the user's script again
        child.start()
    send.close()
    n = math.prod(shape)
    limit = None if timeout is None else 5.0 + timeout * n
    deadline = None if limit is None else time.monotonic() + limit
    running = None  # the position of the sample the child is running
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not receive.poll(wait):
                child.kill()
                print(
                    f"daskbatch: the probe of the first samples ran past {limit:g} s; going on without it",
                    file=sys.stderr,
                )
                return None
            kind, value = cloudpickle.loads(receive.recv_bytes())
            if kind != "sample":
                break
            running = value
    except (EOFError, OSError):
        child.join()
        who = (
            "sample " + ", ".join(str(int(i)) for i in np.unravel_index(running, shape))
            if running is not None
            else f"one of the first {n} samples"
        )
        code = child.exitcode
        if code == TIMEOUT_EXIT_CODE and timeout is not None:
            print(
                f"daskbatch: probe {who} ran past the timeout of {timeout:g} s; going on without the probe",
                file=sys.stderr,
            )
            return None
        how = _describe_exit(code)
        if in_driver:
            from .cluster import KernelCrashError

            raise KernelCrashError(
                f"{who} ended the process that ran it ({how}) when the first {n} samples were "
                f"tried in a separate process; with cluster={spec.kind!r} it would end this one. "
                "Fix the kernel, or use cluster='local', which isolates such a sample and marks "
                "it crashed"
            ) from None
        print(
            f"daskbatch: probe {who} ended the process that ran it ({how}); going on without the probe",
            file=sys.stderr,
        )
        return None
    finally:
        receive.close()
        child.join(timeout=5)
    if kind == "unloadable":
        if in_driver:  # the run computes in this process anyway
            return kernel.probe(params, shape, constants, timeout=timeout)
        print(
            f"daskbatch: a fresh process could not load the kernel to probe it ({value}); "
            "going on without the probe",
            file=sys.stderr,
        )
        return None
    if kind == "error":
        raise value
    return value


def _forkserver_running() -> bool:
    """Whether this process has a multiprocessing forkserver already (daskbatch's, say)."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None) is not None


def _describe_exit(code: int | None) -> str:
    """What a process's exit code says about how it ended."""
    import signal

    if code is None:
        return "it is still running"
    if code < 0:
        name = {signal.SIGSEGV: "a segfault", signal.SIGABRT: "an abort", signal.SIGKILL: "SIGKILL"}
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by {sig.name}" + (f": {name[sig]}" if sig in name else "")
    return f"exit code {code}: os._exit or exit() called by the kernel or its native code"


@contextlib.contextmanager
def _without_main_module():
    """While inside, processes started by multiprocessing do not import the main script.

    A spawned or forkserver child runs the script that started this process again
    (under ``__mp_main__``) so that objects defined there unpickle; the probe's
    payload is pickled by value and needs nothing from it, and a script that calls
    ``daskbatch.run`` without an ``if __name__ == "__main__":`` guard would start its
    whole work again in the child.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original


def _probe_on_worker(client, kernel: Kernel, params, shape, constants, timeout) -> BlockResult | bool | None:
    """The probe as a task pinned to one worker of a running cluster.

    Pinned, so that a probe that ends its worker (a crash, or a sample past the
    timeout) is not tried again on the next worker: the driver sees the worker leave
    and goes on without the probe. None then; ``False`` when there is no worker.
    """
    from .cluster import kernel_shipped

    workers = sorted(client.nthreads())
    if not workers:
        return False
    n = math.prod(shape)
    addr = workers[0]
    where = f"cluster at {client.scheduler.address}"
    with kernel_shipped(client, kernel, where):  # by value if the workers cannot import it
        fut = client.submit(
            _probe_task,
            kernel,
            dict(params),
            shape,
            dict(constants),
            timeout,
            key=f"daskbatch-probe-{uuid.uuid4().hex}",
            pure=False,
            workers=[addr],
            allow_other_workers=False,
        )
    limit = None if timeout is None else 5.0 + timeout * n
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while True:
            try:
                kind, value = fut.result(timeout=0.2)
                break
            except TimeoutError:
                pass
            if addr not in client.nthreads():
                print(
                    f"daskbatch: the probe of the first {n} samples ended the worker that ran it "
                    "(a crash, or a sample past the timeout); going on without it",
                    file=sys.stderr,
                )
                return None
            if deadline is not None and time.monotonic() > deadline:
                print(
                    f"daskbatch: the probe of the first {n} samples ran past {limit:g} s; "
                    "going on without it",
                    file=sys.stderr,
                )
                return None
    finally:
        fut.cancel()
    if kind == "error":
        raise value
    return value


def _probe_task(kernel: Kernel, params, shape, constants, timeout) -> tuple[str, Any]:
    try:  # a sample past the timeout ends this worker process; its nanny starts another
        return "ok", kernel.probe(params, shape, constants, timeout=timeout, kill_on_timeout=True)
    except Exception as e:
        return "error", e


def _probe_child(payload: Any, send) -> None:
    """The probe, in its own process: before each sample, its position goes to the
    parent (which names the sample that ends the process); then the result or the
    error. ``payload`` is the arguments, pickled unless this process is a fork."""
    import functools
    import pickle
    import signal

    import cloudpickle

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
        if isinstance(payload, bytes):
            try:
                payload = cloudpickle.loads(payload)
            except Exception as e:  # e.g. a kernel module on the driver's sys.path only
                send.send_bytes(pickle.dumps(("unloadable", f"{type(e).__name__}: {e}")))
                return
        kernel, params, shape, constants, timeout = payload
        if kernel.per_sample:  # the probe runs its samples in order, each once
            func, calls = kernel.func, iter(range(math.prod(shape)))

            @functools.wraps(func)
            def announced(*args, **kwargs):
                send.send_bytes(pickle.dumps(("sample", next(calls, None))))
                return func(*args, **kwargs)

            kernel.func = announced
        try:  # a sample past the timeout ends this process, which is all the parent needs to know
            message = ("ok", kernel.probe(params, shape, constants, timeout=timeout, kill_on_timeout=True))
        except Exception as e:
            message = ("error", e)
        send.send_bytes(cloudpickle.dumps(message))
        send.close()
    finally:  # never back into a forked parent's code, nor waiting for threads left behind
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


def _workers_before_start(spec) -> int | None:
    """Workers the run will have, when that is known before anything starts."""
    if spec.kind == "serial":
        return 1
    if spec.kind in ("threads", "processes", "local"):
        return spec.n_workers or default_workers()
    if spec.kind == "client":
        return max(1, sum(spec.client.nthreads().values()))
    return None


def _bytes_per_sample(kernel: Kernel, space: Space) -> tuple[int, int]:
    b_in = sum(math.prod(p.core_shape) * p.dtype.itemsize for p in space.params.values())
    b_out = sum(math.prod(o.shape) * o.dtype.itemsize for o in kernel.outputs.values())
    return b_in, b_out


def _make_run_plan(kernel, space, spec, chunk_size, n_workers, seconds_per_sample, memory_limit) -> Plan:
    b_in, b_out = _bytes_per_sample(kernel, space)
    if spec.kind in ("serial", "threads"):
        desc = spec.description
    else:
        desc = ClusterSpec(spec.kind, n_workers, spec.address, spec.client).description
    return make_plan(
        kernel=kernel.identity,
        batch_dims=space.batch_dims,
        batch_shape=space.batch_shape,
        chunk_size=chunk_size,
        n_workers=n_workers,
        cluster=desc,
        bytes_in_per_sample=b_in,
        bytes_out_per_sample=b_out,
        seconds_per_sample=seconds_per_sample,
        memory_limit=memory_limit,
    )


def _blocks_to_retry(st: Store) -> list[tuple[int, ...]]:
    """Committed blocks with samples that failed, timed out or crashed."""
    done = st.done_mask()
    counts = st.block_counts()
    bad = done & (counts[..., STATUS["ok"]] + counts[..., STATUS["pending"]] < counts.sum(axis=-1))
    return [tuple(int(i) for i in idx) for idx in np.argwhere(bad)]


def _compute_all(executor, st: Store, space: Space, ctx: _BlockContext, tasks, pending, on_done) -> None:
    """Compute the pending blocks; isolate those whose task keeps killing its worker.

    With dask's processes scheduler a dead worker breaks the whole pool: if it was
    ended by a timeout (recorded in the store), the remaining blocks are computed
    again with a fresh pool, which skips the samples that timed out; any other death
    stops the run with an error, and the store stays resumable.

    On a cluster daskbatch did not start (an address or a ``Client``), the kernel
    travels by value when the workers cannot import its module (see
    :func:`~daskbatch.cluster.kernel_shipped`), and a kernel they cannot load at all
    stops the run, before anything is computed, with an error that says what to
    install where.
    """
    if executor.spec.kind in ("address", "client"):
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
                from .cluster import WorkerImportError

                cause = e.__cause__ or e.__context__
                detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
                raise WorkerImportError(
                    f"the {where} cannot load the tasks of kernel {ctx.kernel.identity!r} ({detail}): "
                    "its scheduler and workers need the packages this process has"
                ) from None
        return
    _compute_all_here(executor, st, space, ctx, tasks, pending, on_done)


def _compute_all_here(executor, st: Store, space: Space, ctx: _BlockContext, tasks, pending, on_done) -> None:
    while True:
        # a record is only cleared when its block commits, which needs another round
        round_start = time.time() - 1.0  # filesystem time stamps may be coarse
        try:
            lost = executor.compute([tasks[b] for b in pending], on_done)
        except WorkerDiedError:
            if not st.timeouts_recorded_since(round_start):
                raise
            done = st.done_mask()
            pending = [b for b in pending if not done[b]]
            continue
        break
    for i in lost:
        _salvage(executor, st, space, ctx, pending[i], on_done)


_PIECES = 8


def _salvage(executor, st: Store, space: Space, ctx: _BlockContext, block, on_done) -> None:
    """Compute a block whose task killed its worker every time, in ever smaller pieces.

    The block's samples are split into pieces, each a separate task that returns its
    results instead of writing them; a piece that kills its worker again is split
    again, down to single samples. A worker that dies also takes the blame for the
    task it was about to run, so a single sample given up on is tried once more with
    nothing else in flight, and only then marked ``crashed``. The driver then writes
    the block. Bounded: each sample is tried a few times at most.
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    layout = ctx.layout
    region = layout.block_slices(block)
    batch_shape = tuple(s.stop - s.start for s in region)
    n = math.prod(batch_shape)
    block_values = space.block(region)
    kernel_params, stored_params = _block_inputs(ctx, block, [block_values[k] for k in ctx.param_names])
    outputs = {k: np.full(batch_shape + o.shape, o.fill, dtype=o.dtype) for k, o in layout.outputs.items()}
    flat_out = {k: v.reshape((n, *layout.outputs[k].shape)) for k, v in outputs.items()}
    status = np.full(batch_shape, STATUS["pending"], dtype=np.int8)
    flat_status = status.reshape(-1)
    errors: list[dict[str, Any]] = []
    n_errors, seconds = 0, 0.0
    client = executor.client

    def submit(positions: list[int]):
        # the block's parameters go with each piece: scattered data would die with a worker
        fut = client.submit(_piece_task, ctx, block, kernel_params, positions, pure=False)
        owners[fut.key] = positions
        return fut

    # crashed samples, and the worker that died last running each
    dead: dict[int, tuple[str | None, int | None]] = {}

    def crashed(i: int, exc: BaseException) -> None:
        last = getattr(exc, "last_worker", None)
        if isinstance(last, str) or last is None:
            dead[i] = (last, None)
        else:
            dead[i] = (getattr(last, "address", None), getattr(last, "memory_limit", None))

    def record_crashes() -> None:
        nonlocal n_errors
        # distributed's nanny ends a worker that exceeds its memory limit, and says so
        memory_kills: dict[str, Any] = {}
        if dead:
            with contextlib.suppress(Exception):
                for _, event in client.get_events("worker-restart-memory"):
                    memory_kills[event.get("worker")] = event
        for i, (addr, limit) in dead.items():
            flat_status[i] = STATUS["crashed"]
            n_errors += 1
            if len(errors) >= MAX_ERRORS_PER_BLOCK:
                continue
            pos = [int(p) for p in np.unravel_index(i, batch_shape)]
            glob = [s.start + q for s, q in zip(region, pos, strict=True)]
            if addr in memory_kills:
                rss = memory_kills[addr].get("rss")
                used = f" ({rss / 2**20:.0f} MiB" if rss else ""
                used += (f" of {limit / 2**20:.0f} MiB)" if limit else ")") if used else ""
                text = (
                    "MemoryLimit: the worker process running this sample died every time it was "
                    f"tried: its nanny ended it for exceeding its memory limit{used}"
                )
            else:
                text = (
                    "WorkerCrash: the worker process running this sample died every time it was tried "
                    "(a segfault, an abort, os._exit, or its memory limit)"
                )
            errors.append(
                {
                    "position": pos,
                    "sample": "sample " + ", ".join(str(g) for g in glob),
                    "error": text,
                    "where": "",
                }
            )

    def take(res: BlockResult, positions: list[int]) -> None:
        nonlocal n_errors, seconds
        piece_status = res.status.reshape(-1)
        for i in positions:
            flat_status[i] = piece_status[i]
            for k in flat_out:
                flat_out[k][i] = res.outputs[k].reshape(flat_out[k].shape)[i]
        n_errors += res.n_errors
        errors.extend(res.errors[: MAX_ERRORS_PER_BLOCK - len(errors)])
        seconds += res.seconds

    owners: dict[str, list[int]] = {}
    # single samples whose piece was given up on while other pieces were in flight: a
    # worker also holds the next task it will run, and that task is blamed too when the
    # worker dies, so each is tried again alone before it is called crashed
    suspects: list[int] = []
    # On daskbatch's own cluster the scheduler gives up on a task sooner here: after one
    # death instead of allowed-failures + 1 (4) for a piece, which is split again, and
    # after two for a sample tried alone. Every death costs a worker restart, and each
    # sample given up on in a piece is tried again alone anyway.
    scheduler = getattr(executor._cluster, "scheduler", None) if executor.spec.kind == "local" else None
    allowed = getattr(scheduler, "allowed_failures", None)

    def allow(failures: int) -> None:
        if scheduler is not None and isinstance(allowed, int):
            scheduler.allowed_failures = min(allowed, failures)

    try:
        allow(0)
        step = max(1, math.ceil(n / _PIECES))
        # with the results: a finished piece's result is fetched at once, before the
        # death of its worker (running another piece) can lose it
        queue = as_completed(
            [submit(list(range(i, min(i + step, n)))) for i in range(0, n, step)],
            with_results=True,
            raise_errors=False,
        )
        for fut, res in queue:
            positions = owners.pop(fut.key)
            fut.release()
            if isinstance(res, BlockResult):
                take(res, positions)
                continue
            exc = res[1] if isinstance(res, tuple) else res
            if not isinstance(exc, KilledWorker):
                raise exc
            if len(positions) == 1:
                suspects.append(positions[0])
                continue
            step = max(1, math.ceil(len(positions) / _PIECES))
            for j in range(0, len(positions), step):
                queue.add(submit(positions[j : j + step]))
        allow(1)
        for i in suspects:
            fut = submit([i])
            try:
                take(fut.result(), owners.pop(fut.key))
            except KilledWorker as exc:
                owners.pop(fut.key, None)
                crashed(i, exc)
            finally:
                fut.release()
    finally:
        if scheduler is not None and isinstance(allowed, int):
            scheduler.allowed_failures = allowed
    record_crashes()
    counts = st.write_block(layout, block, stored_params, outputs, status, errors, n_errors, seconds)
    st.clear_timeouts(block)
    on_done(_summary(block, counts, BlockResult(outputs, status, errors, n_errors, seconds), len(region)))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user name in a container
        return ""


def status(store: str | os.PathLike[str]) -> StoreStatus:
    """Totals of samples and blocks done, failed and pending in ``store``.

    Examples
    --------
    >>> import daskbatch as db, tempfile, os
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def double(x):
    ...     return 2 * x
    >>> path = os.path.join(tempfile.mkdtemp(), "d.zarr")
    >>> _ = db.run(double, db.Grid(x=[1.0, 2.0]), path, cluster="serial", progress=False)
    >>> db.status(path).samples["ok"]
    2
    """
    st = Store(store)
    return _store_status(st, st.require_info())


def plan(
    kernel: Kernel,
    space: Space,
    store: str | os.PathLike[str] | None = None,
    *,
    cluster: Any = "local",
    n_workers: int | None = None,
    chunk_size: int | str | Mapping[str, int] = "auto",
    constants: Mapping[str, Any] | None = None,
    memory_limit: int | str | None = None,
    timeout: float | None = None,
) -> Plan:
    """What :func:`run` would do with these arguments, without doing it.

    Runs the first samples (up to 16) once, as :func:`run` does, to measure the time
    per sample and check the outputs, then returns the :class:`~daskbatch.plan.Plan`
    that :func:`run` would follow: batch dims and sizes, blocks and samples per
    block, bytes per sample in and out, memory per task and per worker, time per
    block and in total, and the cluster. Starts no cluster (a scheduler address is
    asked for its workers) and writes nothing; with the path of an existing store,
    its blocks are the plan's.

    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> p = db.plan(square, db.Grid(x=range(1000)), cluster="threads", n_workers=2, chunk_size=100)
    >>> p.n_blocks, p.samples_per_block, p.bytes_out_per_sample
    (10, 100, 8)
    """
    _validate_run_args(kernel, space, chunk_size, True, False, constants)
    _validate_reliability_args(0, timeout, False, False)
    memory_limit = _memory_limit(memory_limit)
    constants = dict(constants or {})
    kernel.check_arguments(space.params, constants)
    spec = parse_cluster(cluster, n_workers)
    check_can_spawn(spec)
    if store is not None:
        info = Store(store).info()
        if info is not None and info["layout"]["batch_shape"] == list(space.batch_shape):
            chunk_size = dict(zip(space.batch_dims, info["layout"]["block_shape"], strict=True))
    seconds = _measure(spec, kernel, space, constants, timeout)
    workers = _workers_before_start(spec)
    if workers is None:  # a scheduler address: ask it
        with start_executor(spec) as executor:
            workers = executor.n_workers
    return _make_run_plan(kernel, space, spec, chunk_size, workers, seconds, memory_limit)


def open(store: str | os.PathLike[str]):
    """Open a store as a lazy, dask-backed :class:`xarray.Dataset`.

    Batch dims carry their coordinates (``sample`` indices, or the grid axes);
    the variables are the parameters, the outputs, and ``status`` (0 pending,
    1 ok, 2 failed, 3 timeout, 4 crashed). Only committed blocks count as done:
    ``status`` is 0 for every sample of a block without its commit marker (being
    written now, or left by a run that stopped), as :func:`status` counts them, so a
    sample shown as done has its outputs on disk. Everything stays lazy; the markers
    are read with the chunks of ``status``. ``xarray.open_zarr(store)`` opens the
    same arrays with ``status`` as it is on disk (see docs/store-format.md).
    """
    return Store(store).open_dataset()
