"""Kernels: a numerical core adapted to run over blocks of samples.

:func:`kernel` wraps a plain function. :meth:`Kernel.run_block` is what every
worker runs: it calls the function once per sample (or once per block), checks the
outputs against their :class:`Output` declarations, isolates the samples that raise,
and guarantees that a kernel not declared thread-safe never runs twice at once in one
process, whatever the scheduler.

The parts live in modules of their own, and their names stay importable from here:
:mod:`daskbatch.outputs` (:class:`Output` and the checks of a kernel's results),
:mod:`daskbatch.records` (:data:`STATUS`, :class:`BlockResult`, the error records)
and :mod:`daskbatch.calls` (running a block: retries, timeouts, signals, threads).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import calls

# re-exported: these names were defined here before the split and stay importable from here
from .calls import (  # noqa: F401
    SampleTimeout,
    _broadcast,
    _exempt_from_exit_wait,
    _exit_without_waiting,
    _nullcontext,
    _owned,
    _release_leftover_threads,
    _released_threads,
    _SignalWatch,
    _warned_kernels,
    _Watchdog,
)
from .errors import ErrorRecord, KernelSignatureError, OutputSpecError, sample_coords, sample_label  # noqa: F401
from .outputs import (  # noqa: F401
    RESERVED_NAMES,
    RESERVED_TEXT,
    Output,
    as_dict,
    check_value,
    default_fill,
    name_problem,
)
from .parsing import getsource
from .records import (  # noqa: F401
    CRASHED,
    FAILED,
    MAX_ERRORS_PER_BLOCK,
    OK,
    PENDING,
    STATUS,
    TIMEOUT,
    TIMEOUT_EXIT_CODE,
    TRACEBACK_CHARS,
    TRACEBACK_FRAMES,
    BlockResult,
    Status,
    _BlockAsSpace,
    _describe,
    _last_frame,
    _locate,
    _place,
    _trimmed_traceback,
    _type_and_message,
    crash_record,
    error_record,
    timeout_record,
)

__all__ = [
    "STATUS",
    "BlockResult",
    "Kernel",
    "Output",
    "Status",
    "crash_record",
    "error_record",
    "kernel",
    "timeout_record",
]


# Per-process state: setup results and locks, keyed by the kernel's token. A kernel
# object is unpickled many times in one worker; these make setup run once and the
# lock be one lock per process.
_PROCESS_LOCK = threading.Lock()
_STATES: dict[tuple[Any, ...], Any] = {}
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
            problem = name_problem(k)
            if problem == "invalid":
                raise KernelSignatureError(f"kernel: output name {k!r} must be an identifier")
            if problem == "reserved":
                raise KernelSignatureError(
                    f"kernel: output name {k!r} is reserved by daskbatch ({RESERVED_TEXT}); "
                    f"rename the output, e.g. {k + '_'!r}"
                )
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
            src = getsource(self.func)
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
        shown = {k: "str" if v.text else v.dtype for k, v in self.outputs.items()}
        outs = ", ".join(f"{k}{list(v.dims) if v.dims else ''}: {shown[k]}" for k, v in self.outputs.items())
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
        kernel argument without a default must be a parameter or a constant. A
        table's column the kernel does not take (``Param.optional``) is a label,
        not an error: it is stored, not passed.
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
            labels = {n for n, p in params.items() if getattr(p, "optional", False)}
            unknown = sorted(given - set(self._args) - labels)
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

    def _check_value(
        self, name: str, value: Any, where: str, batch_shape: tuple[int, ...] = ()
    ) -> np.ndarray:
        """Output ``name``'s ``value`` checked and cast (see :func:`~daskbatch.outputs.check_value`)."""
        return check_value(self.outputs, name, value, where, batch_shape)

    def _as_dict(self, result: Any, where: str) -> Mapping[str, Any]:
        """A result as ``{output name: value}`` (see :func:`~daskbatch.outputs.as_dict`)."""
        return as_dict(self.outputs, result, where)

    def accepts(self, name: str) -> bool:
        """Whether the kernel takes an argument ``name`` (any name, with ``**kwargs``)."""
        return self._varkw or name in self._args

    # ------------------------------------------------------------------ running

    def _state_and_lock(self) -> tuple[Any, threading.Lock | None]:
        token = self.token
        with _PROCESS_LOCK:
            lock = _KERNEL_LOCKS.setdefault(token, threading.Lock())
        if self.setup is None:
            return None, (None if self.threadsafe else lock)
        # the state of this setup code: a setup edited and reloaded, or another
        # project's kernel of the same name, in a process that lives on (a notebook),
        # makes its own; the same code unpickled again (by value) finds it
        code = getattr(inspect.unwrap(self.setup), "__code__", None)
        key = (token, getattr(code, "co_filename", None), code)
        if key not in _STATES:
            with lock:
                if key not in _STATES:
                    _STATES[key] = self.setup()
        return _STATES[key], (None if self.threadsafe else lock)

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
        space: Any | None = None,
        region: Sequence[slice] | None = None,
        stop_after: float | None = None,
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
            Turns a position in the block (a tuple) into the sample's label in error
            records, instead of :func:`~daskbatch.errors.sample_label`.
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
        space, region
            The space (or the store's :class:`~daskbatch.store.Layout`) and this
            block's slice of it along each batch dim: error records then name each
            sample by its flat index in the space and, on a grid, its axis values.
            Without them the block is its own space (``"sample 7"`` is the block's
            eighth sample).
        stop_after
            A per-sample kernel starts no sample once this many seconds have passed
            (after its first four): the others stay pending (the probe's budget).

        Error records (:class:`~daskbatch.errors.ErrorRecord`, as dicts) are kept for
        the first :data:`MAX_ERRORS_PER_BLOCK` samples that are not ok. Parameters
        the kernel does not take (a table's labels) are not passed to it.
        """
        if not self._varkw and any(k not in self._args for k in params):
            params = {k: v for k, v in params.items() if k in self._args}
        return calls.run_block(
            self,
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

    def probe(
        self,
        params: Mapping[str, np.ndarray],
        batch_shape: tuple[int, ...],
        constants: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        kill_on_timeout: bool = False,
        stop_after: float | None = None,
    ) -> BlockResult:
        """Run a small block in this process and raise if its outputs break their spec.

        Used before a run starts, so that a kernel whose outputs cannot be stored
        (wrong shape, dtype or names) fails before a store is created or a worker
        started. Other exceptions are left to the run, where failures are data.
        ``timeout``, ``kill_on_timeout`` and ``stop_after`` are as in :meth:`run_block`.
        """
        res = self.run_block(
            params,
            batch_shape,
            constants,
            # the probe's block is the first one, at the origin: its positions are the samples'
            label=lambda idx: (
                f"sample {idx[0]}" if len(idx) == 1 else f"sample at {tuple(int(i) for i in idx)}"
            ),
            timeout=timeout,
            kill_on_timeout=kill_on_timeout,
            stop_after=stop_after,
        )
        for err in res.errors:
            if err["error"].startswith("OutputSpecError"):
                raise OutputSpecError(err["error"].removeprefix("OutputSpecError: "))
        return res


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
