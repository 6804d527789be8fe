"""Kernels: a numerical core adapted to run over blocks of samples.

:func:`kernel` wraps a plain function. :meth:`Kernel.run_block` is what every
worker runs: it calls the function once per sample (or once per block), checks the
outputs against their :class:`Output` declarations, isolates the samples that raise,
and guarantees that a kernel not declared thread-safe never runs twice at once in one
process, whatever the scheduler.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import inspect
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import KernelSignatureError, OutputSpecError

__all__ = ["STATUS", "BlockResult", "Kernel", "Output", "kernel"]

#: Per-sample status codes stored in the ``status`` variable.
STATUS: dict[str, int] = {"pending": 0, "ok": 1, "failed": 2, "timeout": 3, "crashed": 4}
PENDING, OK, FAILED = STATUS["pending"], STATUS["ok"], STATUS["failed"]
TIMEOUT, CRASHED = STATUS["timeout"], STATUS["crashed"]

#: Exit code of a worker process that ended itself to stop a sample past its timeout.
TIMEOUT_EXIT_CODE = 75

#: Errors kept per block (the counts are always exact).
MAX_ERRORS_PER_BLOCK = 20


def default_fill(dtype: np.dtype) -> Any:
    """The fill value an output gets where no result exists (pending or failed).

    NaN for floats and complex, the most negative value for signed integers, the
    largest value for unsigned integers, False for booleans.
    """
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind == "i":
        return int(np.iinfo(dtype).min)
    if dtype.kind == "u":
        return int(np.iinfo(dtype).max)
    if dtype.kind == "b":
        return False
    raise OutputSpecError(f"Output: dtype {dtype} is not supported; use a float, int or bool dtype")


@dataclass(frozen=True)
class Output:
    """Declaration of one kernel output, per sample.

    Parameters
    ----------
    dims
        Names of the output's own (core) dims, e.g. ``("time",)``; ``()`` for a scalar.
    shape
        Sizes of those dims, e.g. ``(71,)``.
    dtype
        A numpy float, int or bool dtype.
    fill
        Value stored where there is no result (pending or failed samples). Defaults
        to NaN for floats, the most negative value for signed ints, the largest for
        unsigned ints, False for bools.
    coords
        Optional coordinate values for the core dims, e.g. ``{"time": gate_times}``.
    attrs
        Optional attributes stored on the variable (``units``, ``long_name``...).

    Examples
    --------
    >>> Output(dims=("time",), shape=(71,)).fill
    nan
    """

    dims: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: Any = "float64"
    fill: Any = None
    coords: Mapping[str, Any] | None = field(default=None, compare=False)
    attrs: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        dims = (self.dims,) if isinstance(self.dims, str) else tuple(self.dims)
        shape = (self.shape,) if isinstance(self.shape, int) else tuple(self.shape)
        if len(dims) != len(shape):
            raise OutputSpecError(f"Output: dims={dims!r} and shape={shape!r} must have the same length")
        for s in shape:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
                raise OutputSpecError(f"Output: shape={shape!r} must hold positive integers")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as e:
            raise OutputSpecError(f"Output: dtype={self.dtype!r} is not a numpy dtype") from e
        fill = default_fill(dtype) if self.fill is None else self.fill
        if dtype.kind in "iub" and isinstance(fill, float) and not float(fill).is_integer():
            raise OutputSpecError(f"Output: fill={fill!r} is not a valid {dtype} value")
        coords = {}
        for d, values in (self.coords or {}).items():
            if d not in dims:
                raise OutputSpecError(f"Output: coords for {d!r}, which is not one of dims={dims!r}")
            arr = np.asarray(values)
            if arr.shape != (shape[dims.index(d)],):
                raise OutputSpecError(
                    f"Output: coords[{d!r}] has shape {arr.shape}, expected ({shape[dims.index(d)]},)"
                )
            coords[d] = arr
        object.__setattr__(self, "dims", tuple(str(d) for d in dims))
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "fill", fill)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "attrs", dict(self.attrs or {}))

    def spec(self) -> dict[str, Any]:
        fill = self.fill
        return {
            "dims": list(self.dims),
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "fill": None if isinstance(fill, float) and math.isnan(fill) else np.asarray(fill).item(),
        }


@dataclass
class BlockResult:
    """What one block produced: outputs, per-sample status, and error records."""

    outputs: dict[str, np.ndarray]
    status: np.ndarray
    errors: list[dict[str, Any]]
    n_errors: int
    seconds: float


# Per-process state: setup results and locks, keyed by the kernel's token. A kernel
# object is unpickled many times in one worker; these make setup run once and the
# lock be one lock per process.
_PROCESS_LOCK = threading.Lock()
_STATES: dict[str, Any] = {}
_KERNEL_LOCKS: dict[str, threading.Lock] = {}


def _module_and_qualname(func: Callable[..., Any]) -> tuple[str, str]:
    """Where a kernel's function is defined, in a form that is the same in every run:
    never a repr with a memory address (a ``functools.partial``, a callable object)."""
    import functools

    if isinstance(func, functools.partial):
        inner_module, inner_name = _module_and_qualname(func.func)
        return inner_module, f"partial({inner_name})"
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if isinstance(qualname, str) and isinstance(module, str):
        return module, qualname
    cls = type(func)
    return getattr(cls, "__module__", None) or "__main__", f"{cls.__qualname__}()"


def _load_kernel(module: str, qualname: str) -> Kernel:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Kernel):
        raise KernelSignatureError(f"{module}:{qualname} is not a daskbatch kernel")
    return obj


class Kernel:
    """A function made runnable over blocks of samples. Build one with :func:`kernel`."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        outputs: Mapping[str, Output],
        per_sample: bool = True,
        threadsafe: bool = False,
        setup: Callable[[], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(func):
            raise KernelSignatureError(f"kernel: {func!r} is not callable")
        if isinstance(outputs, Output):
            raise KernelSignatureError("kernel: outputs must name each output, e.g. outputs={'y': Output()}")
        if not isinstance(outputs, Mapping) or not outputs:
            raise KernelSignatureError(
                f"kernel: outputs={outputs!r} must be a non-empty dict {{name: Output(...)}}"
            )
        for k, v in outputs.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise KernelSignatureError(f"kernel: output name {k!r} must be an identifier")
            if not isinstance(v, Output):
                raise KernelSignatureError(f"kernel: outputs[{k!r}]={v!r} is not an Output(...)")
        if setup is not None and not callable(setup):
            raise KernelSignatureError(f"kernel: setup={setup!r} must be callable or None")
        self.func = func
        self.outputs: dict[str, Output] = dict(outputs)
        self.per_sample = bool(per_sample)
        self.threadsafe = bool(threadsafe)
        self.setup = setup
        self.module, self.qualname = _module_and_qualname(func)
        self.name = name or getattr(func, "__name__", "kernel")
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func
        sig = inspect.signature(func)
        self._args = {
            n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        self._varkw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        positional_only = [n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_ONLY]
        if positional_only:
            raise KernelSignatureError(
                f"kernel {self.name!r}: positional-only arguments {positional_only} cannot be "
                "passed by parameter name"
            )
        self.wants_state = "state" in self._args
        if self.wants_state and setup is None:
            raise KernelSignatureError(
                f"kernel {self.name!r} takes 'state' but has no setup=; 'state' is what setup() returns"
            )
        for n in self.outputs:
            if n in self._args:
                raise KernelSignatureError(f"kernel {self.name!r}: output {n!r} has the name of an argument")

    # ------------------------------------------------------------------ identity

    @property
    def identity(self) -> str:
        """``module:qualname``, the name by which the kernel is re-imported on resume."""
        return f"{self.module}:{self.qualname}"

    @property
    def token(self) -> str:
        return f"{self.identity}#{self.name}"

    def source_hash(self) -> str | None:
        try:
            src = inspect.getsource(self.func)
        except (OSError, TypeError):
            return None
        return hashlib.sha256(src.encode()).hexdigest()[:16]

    def source_file(self) -> str | None:
        try:
            return inspect.getfile(self.func)
        except (OSError, TypeError):
            return None

    def spec(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "name": self.name,
            "per_sample": self.per_sample,
            "outputs": {k: v.spec() for k, v in self.outputs.items()},
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function directly, as if it were not decorated."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        outs = ", ".join(f"{k}{list(v.dims) if v.dims else ''}: {v.dtype}" for k, v in self.outputs.items())
        mode = "per sample" if self.per_sample else "per block"
        safe = "thread-safe" if self.threadsafe else "not thread-safe"
        return f"<daskbatch.Kernel {self.identity} ({mode}, {safe}) -> {outs}>"

    def __reduce__(self):
        # By reference when importable (cheap, and keeps module state such as a loaded
        # library); by value otherwise (a kernel defined in a notebook or __main__), and
        # when its module is registered with cloudpickle.register_pickle_by_value (a
        # user's module that a remote cluster's workers cannot import). The function is
        # then pickled by cloudpickle here, whatever pickler pickles the kernel: plain
        # pickle, which distributed tries first, would store it by reference.
        if self.module != "__main__" and _pickled_by_value(self.module):
            import cloudpickle

            fields = (self.func, self.outputs, self.per_sample, self.threadsafe, self.setup, self.name)
            return (_loads_kernel, (cloudpickle.dumps(fields),))
        if self.module != "__main__":
            try:
                if _load_kernel(self.module, self.qualname) is self:
                    return (_load_kernel, (self.module, self.qualname))
            except Exception:
                pass
        return (
            _rebuild_kernel,
            (self.func, self.outputs, self.per_sample, self.threadsafe, self.setup, self.name),
        )

    # ------------------------------------------------------------------ checks

    def check_arguments(self, params: Mapping[str, Any], constants: Mapping[str, Any]) -> None:
        """Raise :class:`KernelSignatureError` unless every argument has a value.

        Every parameter and constant must be accepted by the kernel, and every
        kernel argument without a default must be a parameter or a constant.
        """
        both = sorted(set(params) & set(constants))
        if both:
            raise KernelSignatureError(
                f"constants {both} have the names of parameters of the space; rename one of them"
            )
        if "state" in params or "state" in constants:
            raise KernelSignatureError(
                "'state' is reserved for the value returned by setup=; rename the parameter"
            )
        given = set(params) | set(constants)
        if not self._varkw:
            unknown = sorted(given - set(self._args))
            if unknown:
                raise KernelSignatureError(
                    f"kernel {self.name!r} has no argument(s) {unknown}; its arguments are "
                    f"{sorted(set(self._args) - {'state'})}. Rename the parameter(s) or add them "
                    "to the kernel's signature"
                )
        missing = sorted(
            n for n, p in self._args.items() if p.default is p.empty and n not in given and n != "state"
        )
        if missing:
            raise KernelSignatureError(
                f"kernel {self.name!r} needs argument(s) {missing}, which are neither parameters "
                f"of the space ({sorted(params)}) nor constants ({sorted(constants)}); add them "
                "to the space, pass constants={...}, or give them defaults"
            )

    def _check_value(self, name: str, value: Any, where: str, batch_shape: tuple[int, ...] = ()):
        out = self.outputs[name]
        arr = np.asarray(value)
        expected = batch_shape + out.shape
        if arr.shape != expected:
            raise OutputSpecError(
                f"{where}: output {name!r} has shape {arr.shape}, expected {expected} "
                f"(declared Output(dims={out.dims}, shape={out.shape}))"
            )
        if arr.dtype != out.dtype:
            if not np.can_cast(arr.dtype, out.dtype, casting="same_kind"):
                raise OutputSpecError(
                    f"{where}: output {name!r} has dtype {arr.dtype}, expected {out.dtype}; "
                    f"declare Output(dtype={str(arr.dtype)!r}) or convert the value in the kernel"
                )
            arr = arr.astype(out.dtype)
        return arr

    def _as_dict(self, result: Any, where: str) -> Mapping[str, Any]:
        if isinstance(result, Mapping):
            keys = set(result)
            expected = set(self.outputs)
            if keys != expected:
                raise OutputSpecError(
                    f"{where}: kernel returned outputs {sorted(keys)}, expected {sorted(expected)}"
                )
            return result
        if len(self.outputs) == 1:
            return {next(iter(self.outputs)): result}
        raise OutputSpecError(
            f"{where}: kernel returned a {type(result).__name__}; with several outputs it must "
            f"return a dict with keys {sorted(self.outputs)}"
        )

    # ------------------------------------------------------------------ running

    def _state_and_lock(self) -> tuple[Any, threading.Lock | None]:
        token = self.token
        with _PROCESS_LOCK:
            lock = _KERNEL_LOCKS.setdefault(token, threading.Lock())
        if self.setup is not None and token not in _STATES:
            with lock:
                if token not in _STATES:
                    _STATES[token] = self.setup()
        return _STATES.get(token), (None if self.threadsafe else lock)

    def run_block(
        self,
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
    ) -> BlockResult:
        """Run the kernel on one block.

        Parameters
        ----------
        params
            Parameter values, each broadcastable to ``batch_shape`` + its core shape.
        batch_shape
            The block's shape along the batch dims.
        constants
            Keyword arguments passed unchanged to every call.
        label
            Turns a position in the block into a sample label for error messages.
        positions
            Compute only these samples (flat positions in the block); the others stay
            pending. A vectorised kernel is then called on just those samples.
        retries
            Calls again a sample (or block) that raised, up to this many times, before
            marking it failed.
        timeout
            Seconds per sample (per-sample kernels) or per call (vectorised kernels).
            A call past it is stopped: by raising in its thread, which stops Python
            code, or, with ``kill_on_timeout``, by ending this process, which stops
            native code too. ``on_timeout(positions, timeout)`` is called first, so
            that the next attempt at the block can skip those samples.
        """
        t0 = time.perf_counter()
        constants = dict(constants or {})
        label = label or (lambda idx: f"sample {idx}")
        state, lock = self._state_and_lock()
        if self.wants_state:
            constants["state"] = state
        n = math.prod(batch_shape)
        # the output arrays, filled with their fill values; a vectorised kernel's own
        # result arrays are kept instead when it computes the whole block at once, so
        # that a block's outputs are not held twice (see whole_block)
        outputs: dict[str, np.ndarray] = {}
        flat_out: dict[str, np.ndarray] = {}

        def allocate(fresh: bool = False) -> None:
            for k, o in self.outputs.items():
                if fresh or k not in outputs:
                    outputs[k] = np.full(batch_shape + o.shape, o.fill, dtype=o.dtype)
                flat_out[k] = outputs[k].reshape((n, *o.shape))

        status = np.full(batch_shape, PENDING, dtype=np.int8)
        errors: list[dict[str, Any]] = []
        flat = {
            k: _broadcast(v, batch_shape).reshape((n, *np.shape(v)[len(batch_shape) :]))
            for k, v in params.items()
        }
        flat_status = status.reshape(n)
        if self.per_sample or positions is not None:
            allocate()
        n_errors = 0
        # every sample (a range, never a list of millions of ints) or the given ones
        todo: Sequence[int] = range(n) if positions is None else [int(i) for i in positions]
        watchdog = _Watchdog(timeout, on_timeout, kill_on_timeout) if timeout is not None and todo else None

        def record(i: int, exc: BaseException, code: int = FAILED) -> None:
            nonlocal n_errors
            flat_status[i] = code
            n_errors += 1
            if len(errors) < MAX_ERRORS_PER_BLOCK:
                pos = np.unravel_index(i, batch_shape)
                errors.append(
                    {
                        "position": [int(p) for p in pos],
                        "sample": label(tuple(int(p) for p in pos)),
                        "error": _describe(exc),
                        "where": _last_frame(exc),
                    }
                )

        def call_one(i: int) -> dict[str, np.ndarray]:
            kwargs = {k: v[i] for k, v in flat.items()}
            if self.per_sample:
                result = self.func(**kwargs, **constants)
            else:
                result = self.func(**{k: v[None] for k, v in kwargs.items()}, **constants)
            values = self._as_dict(result, "sample")
            return {
                k: self._check_value(k, values[k], "sample", () if self.per_sample else (1,))
                for k in self.outputs
            }

        def one_sample(i: int) -> None:
            for attempt in range(retries + 1):
                try:
                    if watchdog is not None and self.per_sample:
                        watchdog.arm([i])
                    try:
                        checked = call_one(i)
                    finally:
                        if watchdog is not None and self.per_sample:
                            watchdog.disarm()
                except SampleTimeout:
                    record(i, SampleTimeout(f"stopped after the timeout of {timeout:g} s"), TIMEOUT)
                    return
                except OutputSpecError as exc:  # the same next time: not retried
                    named = label(tuple(int(p) for p in np.unravel_index(i, batch_shape)))
                    record(i, OutputSpecError(str(exc).replace("sample:", f"{named}:", 1)))
                    return
                except (Exception, SystemExit, KeyboardInterrupt) as exc:
                    if sigint.stops(exc):  # a real Ctrl-C, not the kernel's own exception
                        raise
                    if attempt < retries:
                        continue
                    record(i, exc)
                    return
                for k, v in checked.items():
                    flat_out[k][i] = v if self.per_sample else v[0]
                flat_status[i] = OK
                return

        def whole_block() -> None:
            if positions is None:
                # a copy each, so that a kernel that works in place on its inputs cannot
                # change the parameters that are stored
                block_params = {k: np.array(_broadcast(v, batch_shape)) for k, v in params.items()}
                shape, where = batch_shape, "block"
            else:
                block_params = {k: v[todo] for k, v in flat.items()}
                shape, where = (len(todo),), "block"
            result = self.func(**block_params, **constants)
            values = self._as_dict(result, where)
            checked = {k: self._check_value(k, values[k], where, shape) for k in self.outputs}
            for k, v in checked.items():
                if positions is None:
                    outputs[k] = _owned(v, values[k])
                else:
                    flat_out[k][todo] = v
            if positions is None:
                status[...] = OK
            else:
                flat_status[todo] = OK

        threads_before = set(threading.enumerate())
        sigint = _SignalWatch()
        try:
            with lock if lock is not None else _nullcontext():
                if watchdog is not None:
                    watchdog.start()
                if self.per_sample:
                    for i in todo:
                        try:
                            one_sample(i)
                        except SampleTimeout:  # arrived just after the sample's own handler
                            record(i, SampleTimeout(f"stopped after the timeout of {timeout:g} s"), TIMEOUT)
                else:
                    timed_out = False
                    for attempt in range(retries + 1):
                        try:
                            if watchdog is not None:
                                watchdog.arm(todo)
                            try:
                                whole_block()
                            finally:
                                if watchdog is not None:
                                    watchdog.disarm()
                            break
                        except SampleTimeout:
                            timed_out = True
                            break
                        except (Exception, SystemExit, KeyboardInterrupt) as exc:
                            if sigint.stops(exc):
                                raise
                            if attempt < retries:
                                continue
                            # isolate the culprit(s): run the block again one sample at a time
                            allocate(fresh=True)
                            for i in todo:
                                one_sample(i)
                    if timed_out:
                        allocate(fresh=positions is None)
                        exc = SampleTimeout(f"the block call was stopped after the timeout of {timeout:g} s")
                        for i in todo:
                            record(i, exc, TIMEOUT)
        finally:
            sigint.restore()
            if watchdog is not None:
                watchdog.stop()
            _release_leftover_threads(threads_before, self.name)
        allocate()  # an empty block, or one stopped before its outputs were set
        return BlockResult(outputs, status, errors, n_errors, time.perf_counter() - t0)

    def probe(
        self,
        params: Mapping[str, np.ndarray],
        batch_shape: tuple[int, ...],
        constants: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        kill_on_timeout: bool = False,
    ) -> BlockResult:
        """Run a small block in this process and raise if its outputs break their spec.

        Used before a run starts, so that a kernel whose outputs cannot be stored
        (wrong shape, dtype or names) fails before a store is created or a worker
        started. Other exceptions are left to the run, where failures are data.
        ``timeout`` and ``kill_on_timeout`` are as in :meth:`run_block`.
        """
        res = self.run_block(
            params,
            batch_shape,
            constants,
            label=lambda idx: f"probe sample {idx}",
            timeout=timeout,
            kill_on_timeout=kill_on_timeout,
        )
        for err in res.errors:
            if err["error"].startswith("OutputSpecError"):
                raise OutputSpecError(err["error"].removeprefix("OutputSpecError: "))
        return res


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
                        print(f"daskbatch: could not record a timeout: {e}", file=sys.stderr)
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


def _describe(exc: BaseException) -> str:
    """The error text recorded for a sample."""
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return f"SystemExit: the kernel called sys.exit({code})"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the kernel" + (f": {exc}" if str(exc) else "")
    return f"{type(exc).__name__}: {exc}"


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
            print(
                f"daskbatch: kernel {name!r} left a thread running ({t.name!r}); it will not keep "
                "this process from exiting (further threads it leaves are not named)",
                file=sys.stderr,
                flush=True,
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


def _last_frame(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def _pickled_by_value(module: str) -> bool:
    """Whether ``module`` (or a package above it) is registered with cloudpickle's
    ``register_pickle_by_value``."""
    if "cloudpickle" not in sys.modules:  # nothing can be registered without it
        return False
    registered = sys.modules["cloudpickle"].list_registry_pickle_by_value()
    return any(module == m or module.startswith(m + ".") for m in registered)


def _loads_kernel(payload: bytes) -> Kernel:
    import cloudpickle

    return _rebuild_kernel(*cloudpickle.loads(payload))


def _rebuild_kernel(func, outputs, per_sample, threadsafe, setup, name) -> Kernel:
    return Kernel(func, outputs=outputs, per_sample=per_sample, threadsafe=threadsafe, setup=setup, name=name)


def kernel(
    func: Callable[..., Any] | None = None,
    *,
    outputs: Mapping[str, Output],
    per_sample: bool = True,
    threadsafe: bool = False,
    setup: Callable[[], Any] | None = None,
    name: str | None = None,
) -> Any:
    """Declare a numerical core as a daskbatch kernel.

    Parameters
    ----------
    func
        The core. With ``per_sample=True`` it is called once per sample with one
        keyword argument per parameter (a scalar, or an array for a parameter with
        core dims) plus the constants; with ``per_sample=False`` once per block, with
        arrays whose leading dims are the block's batch dims. It returns the output
        value, or a dict ``{output name: value}`` when there are several.
    outputs
        ``{name: Output(...)}``: the shape and dtype of each output, per sample.
    per_sample
        Call per sample (default) or per block (a vectorised core). A block call that
        raises is retried one sample at a time, so only the culprits are marked failed.
    threadsafe
        Declare that the core may run in several threads of one process at once.
        Leave it False (the default) for Fortran/C libraries with global state:
        daskbatch then never runs two calls at once in one process.
    setup
        Called once per worker process before the first sample, e.g. to load a shared
        library. The kernel receives its return value if it has an argument named
        ``state``.
    name
        A display name (defaults to the function's name).

    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> square(3.0)
    9.0
    """
    opts = dict(outputs=outputs, per_sample=per_sample, threadsafe=threadsafe, setup=setup, name=name)
    if func is None:
        return lambda f: Kernel(f, **opts)
    return Kernel(func, **opts)
