"""Running a kernel on one block: the per-sample loop, the vectorised call, retries
and timeouts.

:func:`run_block` is what :meth:`~daskbatch.kernel.Kernel.run_block` runs. It calls
the kernel once per sample (or once per block, retrying a block call that raised one
sample at a time so that only the culprits fail), retries a call that raised, stops a
call past its timeout (raising in its thread, or ending the process), tells a real
Ctrl-C from a kernel's own ``KeyboardInterrupt``, and keeps threads a kernel leaves
running from holding its process alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .errors import OutputSpecError, sample_label
from .log import logger
from .outputs import Output, OutputValueError, as_dict, cast_value, check_value, unfit_message
from .ragged import blank, block_values, entry, sample_value
from .records import (
    FAILED,
    MAX_ERRORS_PER_BLOCK,
    OK,
    PENDING,
    TIMEOUT,
    TIMEOUT_EXIT_CODE,
    BlockResult,
    FailureLog,
    _BlockAsSpace,
    _locate,
    error_record,
    timeout_message,
    timeout_record,
)

__all__ = ["BlockKernel", "SampleTimeout", "run_block"]


class BlockKernel(Protocol):
    """What :func:`run_block` uses of a kernel (a :class:`~daskbatch.kernel.Kernel`)."""

    func: Callable[..., Any]
    outputs: dict[str, Output]
    per_sample: bool
    wants_state: bool
    name: str

    def _state_and_lock(self) -> tuple[Any, threading.Lock | None]: ...


#: the fewest samples a block run with ``stop_after`` computes (a probe's estimate of the
#: cost of one needs three starts after the first call's)
AT_LEAST = 4


def run_block(
    kernel: BlockKernel,
    params: Mapping[str, np.ndarray],
    batch_shape: tuple[int, ...],
    constants: Mapping[str, Any] | None = None,
    label: Callable[[tuple[int, ...]], str] | None = None,
    *,
    positions: Sequence[int] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    on_timeout: Callable[[list[int], float], None] | None = None,
    kill_on_timeout: bool = False,
    space: Any | None = None,
    region: Sequence[slice] | None = None,
    stop_after: float | None = None,
) -> BlockResult:
    """Run ``kernel`` on one block; the arguments are those of
    :meth:`Kernel.run_block <daskbatch.kernel.Kernel.run_block>`."""
    t0 = time.perf_counter()
    run = _BlockRun(
        kernel,
        params,
        batch_shape,
        constants,
        label,
        positions=positions,
        retries=retries,
        timeout=timeout,
        on_timeout=on_timeout,
        kill_on_timeout=kill_on_timeout,
        space=space,
        region=region,
        stop_after=stop_after,
    )
    run.run()
    seconds = time.perf_counter() - t0
    return BlockResult(run.outputs, run.status, run.errors, run.n_errors, seconds, run.failures)


class _BlockRun:
    """One run of a kernel on one block: its inputs, the arrays it fills and its errors.

    The output arrays start filled with their fill values; a vectorised kernel's own
    result arrays are kept instead when it computes the whole block at once, so that a
    block's outputs are not held twice (see :meth:`whole_block`).
    """

    def __init__(
        self,
        kernel: BlockKernel,
        params: Mapping[str, np.ndarray],
        batch_shape: tuple[int, ...],
        constants: Mapping[str, Any] | None,
        label: Callable[[tuple[int, ...]], str] | None,
        *,
        positions: Sequence[int] | None,
        retries: int,
        timeout: float | None,
        on_timeout: Callable[[list[int], float], None] | None,
        kill_on_timeout: bool,
        space: Any | None,
        region: Sequence[slice] | None,
        stop_after: float | None = None,
    ) -> None:
        constants = dict(constants or {})
        self.stop_after = stop_after
        if space is None:
            space, region = _BlockAsSpace(batch_shape), None
        if region is None:
            region = tuple(slice(0, n) for n in batch_shape)
        self.kernel = kernel
        self.per_sample = kernel.per_sample
        #: ragged and text outputs (padded values and their lengths, see daskbatch.ragged)
        self.variable = frozenset(k for k, o in kernel.outputs.items() if o.variable)
        self.params = params
        self.batch_shape = batch_shape
        self.label = label
        self.positions = positions
        self.retries = retries
        self.timeout = timeout
        self.space = space
        self.region = tuple(region)
        state, self.lock = kernel._state_and_lock()
        if kernel.wants_state:
            constants["state"] = state
        self.constants = constants
        self.n = n = math.prod(batch_shape)
        self.outputs: dict[str, np.ndarray] = {}
        self.flat_out: dict[str, np.ndarray] = {}
        self.status = np.full(batch_shape, PENDING, dtype=np.int8)
        self.errors: list[dict[str, Any]] = []
        self.failures = FailureLog()  # every sample that is not ok, with its message
        self.flat = {
            k: _broadcast(v, batch_shape).reshape((n, *np.shape(v)[len(batch_shape) :]))
            for k, v in params.items()
        }
        self.flat_status = self.status.reshape(n)
        if self.per_sample or positions is not None:
            self.allocate()
        self.n_errors = 0
        # every sample (a range, never a list of millions of ints) or the given ones
        self.todo: Sequence[int] = range(n) if positions is None else [int(i) for i in positions]
        self.watchdog = (
            _Watchdog(timeout, on_timeout, kill_on_timeout) if timeout is not None and self.todo else None
        )
        self.sigint: _SignalWatch | None = None

    # ------------------------------------------------------------------ bookkeeping

    def allocate(self, fresh: bool = False) -> None:
        """Give each output an array of fill values (all of them, with ``fresh``)."""
        for k, o in self.kernel.outputs.items():
            if fresh or k not in self.outputs:
                if o.variable:  # ragged or text: padded values and their lengths
                    self.outputs[k] = blank(o, self.batch_shape)
                else:
                    self.outputs[k] = np.full(self.batch_shape + o.shape, o.fill, dtype=o.dtype)
            self.flat_out[k] = self.outputs[k].reshape((self.n, *o.shape))

    def label_of(self, i: int) -> str | None:
        if self.label is None:
            return None
        return self.label(tuple(int(p) for p in np.unravel_index(i, self.batch_shape)))

    def record(self, i: int, exc: BaseException) -> None:
        self.flat_status[i] = FAILED
        self.n_errors += 1
        if len(self.errors) < MAX_ERRORS_PER_BLOCK:
            rec = error_record(self.space, self.region, i, exc, label=self.label_of(i))
            self.errors.append(rec.to_dict())
        self.failures.add_exception(i, exc)

    def record_timeout(self, i: int, whole_block: bool = False) -> None:
        self.flat_status[i] = TIMEOUT
        self.n_errors += 1
        if len(self.errors) < MAX_ERRORS_PER_BLOCK:
            rec = timeout_record(
                self.space, self.region, i, self.timeout, whole_block=whole_block, label=self.label_of(i)
            )
            self.errors.append(rec.to_dict())
        self.failures.add(i, TIMEOUT, "SampleTimeout", timeout_message(self.timeout, whole_block=whole_block))

    # ------------------------------------------------------------------ calls

    def call_one(self, i: int) -> dict[str, np.ndarray]:
        """Call the kernel on sample ``i`` and check what it returned."""
        specs = self.kernel.outputs
        kwargs = {k: v[i] for k, v in self.flat.items()}
        if self.per_sample:
            result = self.kernel.func(**kwargs, **self.constants)
        else:
            result = self.kernel.func(**{k: v[None] for k, v in kwargs.items()}, **self.constants)
        values = as_dict(specs, result, "sample")
        batch = () if self.per_sample else (1,)
        if not self.variable:  # fixed shapes only: as it always was
            return {k: check_value(specs, k, values[k], "sample", batch) for k in specs}
        checked = {}
        for k, o in specs.items():
            if not o.variable:
                checked[k] = check_value(specs, k, values[k], "sample", batch)
            elif self.per_sample:
                checked[k] = sample_value(o, k, values[k], "sample")
            else:  # a vectorised kernel called on one sample: its block of one
                one, bad = block_values(o, k, values[k], "sample", (1,))
                if bad is not None:
                    raise OutputValueError(
                        unfit_message(k, np.asarray(entry(values[k], 0, o, (1,))), o.dtype)
                    )
                checked[k] = one
        return checked

    def one_sample(self, i: int) -> None:
        """Compute sample ``i``, retried up to ``retries`` times; record it if it fails."""
        watched = self.watchdog is not None and self.per_sample
        for attempt in range(self.retries + 1):
            try:
                if watched:
                    self.watchdog.arm([i])
                try:
                    checked = self.call_one(i)
                finally:
                    if watched:
                        self.watchdog.disarm()
            except SampleTimeout:
                self.record_timeout(i)
                return
            except OutputValueError as exc:  # a value, not a transient fault: not retried
                self.record(i, exc.with_traceback(None))  # daskbatch's frame, not the kernel's
                return
            except OutputSpecError as exc:  # the same next time: not retried
                named = self.label_of(i)
                if named is None:
                    named = sample_label(self.space, _locate(self.space, self.region, i)[0])
                self.record(i, OutputSpecError(str(exc).replace("sample:", f"{named}:", 1)))
                return
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                if self.sigint.stops(exc):  # a real Ctrl-C, not the kernel's own exception
                    raise
                if attempt < self.retries:
                    continue
                self.record(i, exc)
                return
            for k, v in checked.items():
                self.flat_out[k][i] = v if self.per_sample else v[0]
            self.flat_status[i] = OK
            return

    def whole_block(self) -> None:
        """Call a vectorised kernel once on every sample to compute, and keep its results."""
        specs, positions, todo = self.kernel.outputs, self.positions, self.todo
        if positions is None:
            # a copy each, so that a kernel that works in place on its inputs cannot
            # change the parameters that are stored
            block_params = {k: np.array(_broadcast(v, self.batch_shape)) for k, v in self.params.items()}
            shape, where = self.batch_shape, "block"
        else:
            block_params = {k: v[todo] for k, v in self.flat.items()}
            shape, where = (len(todo),), "block"
        result = self.kernel.func(**block_params, **self.constants)
        values = as_dict(specs, result, where)
        checked, unfit = {}, {}
        for k, o in specs.items():
            if o.variable:  # ragged or text: one value per sample, in a list
                checked[k], bad = block_values(o, k, values[k], where, shape)
            else:
                checked[k], bad = cast_value(specs, k, values[k], where, shape)
            if bad is not None:
                unfit[k] = bad.reshape(-1)
        for k, v in checked.items():
            if positions is None:
                self.outputs[k] = v if specs[k].variable else _owned(v, values[k])
            else:
                self.flat_out[k][todo] = v
        if positions is None:
            self.status[...] = OK
        else:
            self.flat_status[todo] = OK
        if unfit:
            self.fail_unfit(values, unfit, None if positions is None else todo)

    def fail_unfit(
        self, values: Mapping[str, Any], unfit: dict[str, np.ndarray], todo: Sequence[int] | None
    ) -> None:
        """Mark failed the samples of a block call with a value that did not fit its
        output's dtype (``unfit``: a flat mask per output over the samples computed,
        ``todo`` their positions, or None for the whole block), their outputs set back
        to the fill values; the other samples keep theirs."""
        specs = self.kernel.outputs
        any_bad = np.logical_or.reduce(list(unfit.values()))
        computed = np.flatnonzero(any_bad)
        at = computed if todo is None else np.asarray(todo)[computed]
        for k, o in specs.items():
            flat = self.outputs[k].reshape((self.n, *o.shape)) if todo is None else self.flat_out[k]
            flat[at] = o.fill
        self.flat_status[at] = FAILED
        for j, i in zip(computed.tolist(), at.tolist(), strict=True):
            k = next(name for name, mask in unfit.items() if mask[j])
            if specs[k].variable:
                shape = self.batch_shape if todo is None else (len(todo),)
                value = np.asarray(entry(values[k], j, specs[k], shape))
            else:
                value = np.asarray(values[k]).reshape((-1, *specs[k].shape))[j]
            self.record(i, OutputValueError(unfit_message(k, value, specs[k].dtype)))

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        """Compute the block: under the kernel's lock, with the timeout watchdog running."""
        threads_before = set(threading.enumerate())
        self.sigint = _SignalWatch()
        try:
            with self.lock if self.lock is not None else _nullcontext():
                if self.watchdog is not None:
                    self.watchdog.start()
                if self.per_sample:
                    self.run_per_sample()
                else:
                    self.run_vectorised()
        finally:
            self.sigint.restore()
            if self.watchdog is not None:
                self.watchdog.stop()
            _release_leftover_threads(threads_before, self.kernel.name)
        self.allocate()  # an empty block, or one stopped before its outputs were set

    def run_per_sample(self) -> None:
        """Call a per-sample kernel on each sample in turn (with ``stop_after``, no more
        once that many seconds have passed and :data:`AT_LEAST` samples ran: the others
        stay pending)."""
        t0 = time.perf_counter()
        for k, i in enumerate(self.todo):
            if self.stop_after is not None and k >= AT_LEAST and time.perf_counter() - t0 > self.stop_after:
                break
            try:
                self.one_sample(i)
            except SampleTimeout:  # arrived just after the sample's own handler
                self.record_timeout(i)

    def run_vectorised(self) -> None:
        """Call a vectorised kernel on the block, retried up to ``retries`` times; if it
        still raises, run the block again one sample at a time to isolate the culprits.
        A block call past the timeout marks every sample it computed as timed out."""
        timed_out = False
        for attempt in range(self.retries + 1):
            try:
                if self.watchdog is not None:
                    self.watchdog.arm(self.todo)
                try:
                    self.whole_block()
                finally:
                    if self.watchdog is not None:
                        self.watchdog.disarm()
                break
            except SampleTimeout:
                timed_out = True
                break
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                if self.sigint.stops(exc):
                    raise
                if attempt < self.retries:
                    continue
                # isolate the culprit(s): run the block again one sample at a time
                self.allocate(fresh=True)
                for i in self.todo:
                    self.one_sample(i)
        if timed_out:
            self.allocate(fresh=self.positions is None)
            for i in self.todo:
                self.record_timeout(i, whole_block=True)


# --------------------------------------------------------------------------- timeouts and signals


class SampleTimeout(Exception):
    """Raised in a kernel's thread when its sample (or block call) ran past ``timeout``."""


class _Watchdog:
    """A thread that stops a call running past its deadline.

    The running thread arms it before each call and disarms it after. When a call
    overruns, the watchdog calls ``on_timeout`` (which records the samples in the
    store), then either ends the process (``kill=True``: the only way to stop native
    code) or raises :class:`SampleTimeout` in the running thread.
    """

    def __init__(self, timeout: float, on_timeout, kill: bool) -> None:
        self.timeout = float(timeout)
        self.on_timeout = on_timeout
        self.kill = kill
        self.target = threading.get_ident()
        self._lock = threading.Lock()
        self._armed: tuple[Sequence[int], float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="daskbatch-timeout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, positions: Sequence[int]) -> None:
        with self._lock:
            self._armed = (positions, time.monotonic())

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        poll = min(0.05, self.timeout / 4)
        while not self._stop.wait(poll):
            with self._lock:
                armed = self._armed
                if armed is None or time.monotonic() - armed[1] < self.timeout:
                    continue
                self._armed = None
                if self.on_timeout is not None:
                    try:
                        self.on_timeout(list(armed[0]), self.timeout)
                    except Exception as e:  # pragma: no cover - the store is gone
                        logger.warning(f"could not record a timeout: {e}")
                if self.kill:
                    os._exit(TIMEOUT_EXIT_CODE)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.target), ctypes.py_object(SampleTimeout)
                )


class _SignalWatch:
    """Tells a stop by a signal (Ctrl-C, SIGTERM) from a ``KeyboardInterrupt`` or other
    exception the kernel raised itself.

    A signal's Python handler runs in the main thread, between two bytecodes of
    whatever runs there: the kernel, on ``"serial"``. While a block runs in the main
    thread, this wraps the handlers of SIGINT and SIGTERM to note that a signal came
    and what its handler raised. An exception with no signal behind it (and any in
    another thread, where no handler runs) is the kernel's own, and is that sample's
    failure.
    """

    def __init__(self) -> None:
        self.received = False
        self.raised: BaseException | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.getsignal(signum)
            except (ValueError, OSError):  # pragma: no cover - no signals here
                continue
            if not callable(previous):  # ignored, default or not Python's: it raises nothing
                continue
            try:
                signal.signal(signum, self._handler(previous))
            except (ValueError, OSError):  # pragma: no cover
                continue
            self._previous[signum] = previous

    def _handler(self, previous: Callable[..., Any]) -> Callable[..., Any]:
        def handler(signum, frame):
            self.received = True
            try:
                return previous(signum, frame)
            except BaseException as e:
                self.raised = e
                raise

        return handler

    def stops(self, exc: BaseException) -> bool:
        """Whether ``exc`` must stop the run rather than be recorded as a failure."""
        return exc is self.raised or (isinstance(exc, KeyboardInterrupt) and self.received)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, previous)
        self._previous = {}


#: threads a kernel left running that no longer keep their process from exiting
_released_threads: set[threading.Thread] = set()
#: kernels already named in that warning, in this process
_warned_kernels: set[str] = set()


def _release_leftover_threads(before: set[threading.Thread], name: str) -> None:
    """Let this process exit although the kernel left non-daemon threads running.

    Python waits for every non-daemon thread before a process exits, so a thread the
    kernel started and never stopped would keep the driver (on ``"serial"`` and
    ``"threads"``) or a worker process alive for ever after the run. Such a thread is
    named in a one-line warning (once per kernel and process) and exempted from that wait (it ends with the
    process). Thread pools (``concurrent.futures``) are left alone: they stop their
    threads themselves at exit.
    """
    for t in threading.enumerate():
        if t in before or t.daemon or t is threading.current_thread() or not t.is_alive():
            continue
        if getattr(getattr(t, "_target", None), "__module__", "") == "concurrent.futures.thread":
            continue
        if t in _released_threads:
            continue
        _released_threads.add(t)
        if name not in _warned_kernels:  # once per kernel and process: not a line per sample
            _warned_kernels.add(name)
            logger.warning(
                f"kernel {name!r} left a thread running ({t.name!r}); it will not keep "
                "this process from exiting (further threads it leaves are not named)"
            )
        _exempt_from_exit_wait(t)


def _exempt_from_exit_wait(t: threading.Thread) -> None:
    t._daemonic = True  # type: ignore[attr-defined]  # what t.daemon reports from now on
    locks = getattr(threading, "_shutdown_locks", None)
    tstate_lock = getattr(t, "_tstate_lock", None)
    if locks is not None and tstate_lock is not None:  # Python 3.11 and 3.12
        with threading._shutdown_locks_lock:  # type: ignore[attr-defined]
            locks.discard(tstate_lock)
        return
    # Python 3.13+ waits for the thread in C: end the process before that wait instead
    # (after flushing), with 1 when the program ended by an uncaught exception.
    global _exit_hook_registered
    if not _exit_hook_registered and hasattr(threading, "_register_atexit"):
        _exit_hook_registered = True
        threading._register_atexit(_exit_without_waiting)  # type: ignore[attr-defined]


_exit_hook_registered = False


def _exit_without_waiting() -> None:  # pragma: no cover - Python 3.13+
    if not any(t.is_alive() for t in _released_threads):
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    failed = getattr(sys, "last_exc", None) is not None or getattr(sys, "last_value", None) is not None
    os._exit(1 if failed else 0)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _owned(checked: np.ndarray, returned: Any) -> np.ndarray:
    """``checked`` as an array of the block's own: the kernel's result itself when it is
    a fresh, writable, contiguous array (no copy), else a copy."""
    if (
        checked is returned
        and checked.flags.writeable
        and checked.flags.c_contiguous
        and checked.flags.owndata
    ):
        return checked
    return np.array(checked, order="C")


def _broadcast(value: np.ndarray, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast ``value`` (batch dims first, some of length 1, then core dims)."""
    arr = np.asarray(value)
    return np.broadcast_to(arr, batch_shape + arr.shape[len(batch_shape) :])
