"""One frozen, validated set of run options.

:func:`daskbatch.run` and :func:`daskbatch.plan` check every argument here, before
anything touches a store or starts a worker, and pass one :class:`RunOptions` on
instead of argument lists. A bad value raises an error naming the argument, the
value and what would work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cluster import ClusterSpec, check_can_spawn, main_is_guarded, parse_cluster
from .errors import ClusterError, DaskbatchError, KernelSignatureError
from .freshness import check_kernel
from .hpc import for_kernel
from .kernel import Kernel
from .space import Space

__all__ = ["KERNEL_CHANGED", "RunOptions"]

KERNEL_CHANGED = ("refuse", "continue")
#: the longest ``timeout=`` a sample may take, in seconds (7 days): the waits that measure
#: it take at most 2**31 milliseconds (24.8 days), and a longer one overflows
MAX_TIMEOUT = 7 * 24 * 3600


@dataclass(frozen=True)
class RunOptions:
    """What a run was asked to do, checked (see :func:`daskbatch.run` for each field)."""

    cluster: ClusterSpec
    chunk_size: int | str | Mapping[str, int] = "auto"
    progress: bool = True
    overwrite: bool = False
    constants: Mapping[str, Any] = field(default_factory=dict)
    #: the constants as the store records them
    constants_json: Any = None
    retries: int = 0
    timeout: float | None = None
    retry_failed: bool = False
    verify: bool = False
    memory_limit: int | None = None
    kernel_changed: str = "refuse"
    spec_file: str | None = None
    callbacks: tuple[Any, ...] = ()
    #: ``cluster="auto"``: ``cluster`` is the local cluster the run starts unless its
    #: predicted work is less than starting one (then it runs in this process)
    auto: bool = False
    #: what is reduced, per output (a :class:`~daskbatch.reductions.Reductions`), or None
    reductions: Any = None
    #: the stopping rule (a :class:`~daskbatch.reductions.Converged`), or None
    until: Any = None

    @classmethod
    def from_arguments(
        cls,
        kernel: Any,
        space: Any,
        *,
        cluster: Any = "auto",
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
        callbacks: Sequence[Any] | None = None,
        reduce: Any = None,
        reduce_dims: str | Sequence[str] | None = None,
        until: Any = None,
        store: str | None = None,
    ) -> RunOptions:
        """Check the arguments of :func:`daskbatch.run` against ``kernel`` and ``space``
        (and ``store``, the path of the run's store, for the reductions it keeps)."""
        _check_kernel_and_space(kernel, space)
        check_kernel(kernel)  # its modules are the files the workers would import
        callbacks = check_plain_options(
            chunk_size, progress, overwrite, constants, retries, timeout, retry_failed, verify,
            kernel_changed, callbacks,
        )  # fmt: skip
        if reduce is None and not overwrite and store is not None:
            reduce = _stores_reductions(kernel, store)
        reductions = _check_reduce(kernel, space, reduce, reduce_dims, until)
        constants = dict(constants or {})
        constants_json = jsonable(constants, "constants")
        kernel.check_arguments(space.params, constants)
        memory = memory_limit_bytes(memory_limit)
        _check_size(kernel, space, chunk_size, memory)  # before any probe, store or worker
        spec, auto = cluster_of(cluster, n_workers, kernel)
        if timeout is not None and spec.in_driver:
            from .log import logger

            logger.warning(
                f"timeout={timeout:g} on cluster={spec.name!r} stops Python code only: a sample inside "
                "native code (a C or Fortran library, time.sleep) runs to its end; worker processes "
                "(cluster='local') are ended at the timeout"
            )
        return cls(
            cluster=spec,
            chunk_size=chunk_size,
            progress=progress,
            overwrite=overwrite,
            constants=constants,
            constants_json=constants_json,
            retries=retries,
            timeout=timeout,
            retry_failed=retry_failed,
            verify=verify,
            memory_limit=memory,
            kernel_changed=kernel_changed,
            spec_file=None
            if spec_file is None
            else str(Path(path_argument(spec_file, "spec_file", "sweep.toml"))),
            callbacks=callbacks,
            auto=auto,
            reductions=reductions,
            until=until,
        )


#: the endings of the builtin statistics' result names (``<output>_mean``...)
_BUILTIN_SUFFIXES = (
    *(f"_{s}" for s in ("count", "sum", "mean", "var", "std", "min", "max", "quantile", "histogram")),
    *("_underflow", "_overflow", "_exceedance", "_stderr"),
)


def check_plain_options(
    chunk_size: Any,
    progress: Any,
    overwrite: Any,
    constants: Any,
    retries: Any,
    timeout: Any,
    retry_failed: Any,
    verify: Any,
    kernel_changed: Any,
    callbacks: Any,
) -> tuple[Any, ...]:
    """The checks of :meth:`RunOptions.from_arguments` that need neither the kernel nor the
    space (a pipeline's later stages run them before their space exists); returns the
    callbacks as a tuple."""
    _check_chunking(chunk_size, progress, overwrite, constants)
    _check_reliability(retries, timeout, retry_failed, verify)
    if kernel_changed not in KERNEL_CHANGED:
        raise DaskbatchError(
            f"kernel_changed={kernel_changed!r} is not valid; use 'refuse' (the default: a store with "
            "results of other kernel code is refused) or 'continue' (keep them and go on)"
        )
    if callbacks is not None and (isinstance(callbacks, str | bytes) or not isinstance(callbacks, Sequence)):
        if any(callable(getattr(callbacks, m, None)) for m in ("on_run_start", "on_block_end", "on_run_end")):
            raise DaskbatchError(f"callbacks={callbacks!r} must be a list of callbacks; pass [{callbacks!r}]")
        raise DaskbatchError(
            f"callbacks={callbacks!r} must be a list of callbacks (daskbatch.Callback subclasses), or None"
        )
    callbacks = tuple(callbacks or ())
    for cb in callbacks:
        if not any(callable(getattr(cb, m, None)) for m in ("on_run_start", "on_block_end", "on_run_end")):
            raise DaskbatchError(
                f"callbacks: {cb!r} has none of on_run_start, on_block_end, on_run_end; "
                "subclass daskbatch.Callback"
            )
    return callbacks


def path_argument(value: Any, name: str, example: str) -> str:
    """``value`` (a ``str`` or ``os.PathLike``) as a path, or an error naming ``name``."""
    if isinstance(value, str | os.PathLike) and os.fspath(value) != "":
        text = os.fspath(value)
        if isinstance(text, str):
            return text
    raise DaskbatchError(f"{name}={value!r} is not a path; give one such as {example!r}")


def cluster_of(cluster: Any, n_workers: Any, kernel: Kernel) -> tuple[ClusterSpec, bool]:
    """``cluster=`` (and ``n_workers=``) as the spec a run uses, and whether it was "auto"."""
    auto = isinstance(cluster, str) and cluster == "auto"
    spec = for_kernel(parse_cluster("local" if auto else cluster, n_workers), kernel)
    if not auto:  # "auto" checks it once it knows it needs worker processes
        check_can_spawn(spec)
        if spec.needs_main_guard and not main_is_guarded():
            raise ClusterError(
                f"cluster={spec.name!r} starts worker processes, which run this script's top "
                "level again, and it calls daskbatch there: each worker would start the run "
                'again. Put that code under `if __name__ == "__main__":`, or run without '
                "worker processes: cluster='auto' (forks or runs here), 'threads' or 'serial'"
            )
    return spec, auto


def _stores_reductions(kernel: Kernel, store: str) -> Any:
    """The reductions an existing ``store`` keeps, when ``kernel`` has an output declared
    ``Output(store=False)`` (a rerun without ``reduce=`` goes on with them, as the run
    does for every kernel once it holds the store's lock); None otherwise."""
    if all(o.store for o in kernel.outputs.values()):
        return None
    from .reduced import reductions_of
    from .store import Store

    try:
        info = Store(store).info()
    except (DaskbatchError, OSError):
        return None  # the run says what is wrong with the store
    if info is None or info.get("reduce") is None:
        return None
    return reductions_of(info, kernel.outputs)


def check_unreduced(kernel: Kernel, reductions: Any) -> None:
    """Every output declared ``Output(store=False)`` is reduced."""
    reduced = set() if reductions is None else set(reductions.outputs)
    for name, o in kernel.outputs.items():
        if not o.store and name not in reduced:
            raise DaskbatchError(
                f"output {name!r} is declared Output(store=False) but reduce= does not reduce it; "
                f"add it to reduce (e.g. reduce={{{name!r}: 'mean'}}) or store it (store=True)"
            )


def _check_reduce(kernel: Kernel, space: Space, reduce: Any, reduce_dims: Any, until: Any) -> Any:
    """The run's :class:`~daskbatch.reductions.Reductions` (None: nothing reduced)."""
    from .reductions import Converged, Reductions, parse_reduce

    if until is not None:
        from .designs import Design

        if not isinstance(until, Converged):
            raise DaskbatchError(
                f"until={until!r} is not a stopping rule; use daskbatch.Converged(output, stat=..., "
                "rtol=...), e.g. until=daskbatch.Converged('response', rtol=0.01)"
            )
        if not isinstance(space, Design):
            raise DaskbatchError(
                f"until= needs a design whose n can grow (MonteCarlo, Sobol, Halton, Saltelli, or a "
                f"LatinHypercube with strata=); space={type(space).__name__} has a fixed size"
            )
        from .designs import LatinHypercube
        from .reduced import max_n_of

        most = max_n_of(until, space.size)
        if until.max_n is not None and until.max_n < space.size:
            raise DaskbatchError(
                f"until: max_n={until.max_n:,} is less than the design's first round of {space.size:,} "
                f"samples; give max_n >= {space.size:,}, or a smaller n"
            )
        if isinstance(space, LatinHypercube) and ("strata" not in space._options() or space.strata < most):
            raise DaskbatchError(
                f"until= grows the design up to max_n={most:,} samples, and a LatinHypercube's "
                f"points depend on its strata (now {space.strata:,}): give strata={most:,} or more "
                "(LatinHypercube(..., strata=...)), or use MonteCarlo or Sobol, which grow freely"
            )
    if isinstance(reduce, Reductions):  # a store's own, read back (daskbatch resume)
        reductions = reduce
    else:
        reductions = parse_reduce(
            reduce, kernel.outputs, space.batch_dims, dims=reduce_dims, until=until, dims_name="reduce_dims"
        )
    if until is not None and until.stat == "sobol":
        from .saltelli import Saltelli

        out = kernel.outputs.get(until.output)
        if not isinstance(space, Saltelli):
            raise DaskbatchError(
                f"until=Converged({until.output!r}, stat='sobol') needs a Saltelli design; "
                f"space={type(space).__name__}: use daskbatch.Saltelli(dists, n)"
            )
        if out is not None and not out.store:
            raise DaskbatchError(
                f"until=Converged({until.output!r}, stat='sobol') needs the output stored: the "
                f"indices are computed from every sample's value; declare {until.output!r} without "
                "store=False"
            )
    if reductions is not None and not isinstance(reduce, Reductions):
        # the results sit beside the outputs in daskbatch.open: no name may mean two things
        taken = {**{k: "output" for k in kernel.outputs}, **{k: "parameter" for k in space.params}}
        taken.update({d: "batch dim" for d in space.batch_dims})
        taken["status"] = "the status variable"
        for var in reductions.variables():
            if var in taken:
                raise DaskbatchError(
                    f"reduce: its result {var!r} has the name of the {taken[var]} {var!r}, and both "
                    f"would be in daskbatch.open's Dataset; rename the {taken[var]}"
                    + (" or the Aggregation" if not var.endswith(_BUILTIN_SUFFIXES) else "")
                )
    check_unreduced(kernel, reductions)
    return reductions


def jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON the store can record, or an error naming ``where``."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise DaskbatchError(f"{where}: arrays of dtype {value.dtype} cannot be recorded")
        return value.tolist()
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufU":
            raise DaskbatchError(
                f"{where}={value!r} cannot be recorded in the store (a numpy {value.dtype} value); give "
                "it as a number or a string"
            )
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise DaskbatchError(
        f"{where}={value!r} cannot be recorded in the store; constants must be numbers, "
        "strings, booleans, lists, dicts or numpy arrays"
    )


def _check_reliability(retries: Any, timeout: Any, retry_failed: Any, verify: Any) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DaskbatchError(f"retries={retries!r} must be a whole number >= 0 (0: no retries)")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise DaskbatchError(f"timeout={timeout!r} must be a number of seconds > 0, or None (no timeout)")
    if timeout is not None and not math.isfinite(timeout):
        raise DaskbatchError(f"timeout={timeout!r} must be finite; use None for no timeout")
    if timeout is not None and timeout > MAX_TIMEOUT:
        raise DaskbatchError(
            f"timeout={timeout!r} is more than {MAX_TIMEOUT:,} seconds (7 days); "
            "give at most that, or None for no timeout"
        )
    for name, value in (("retry_failed", retry_failed), ("verify", verify)):
        if not isinstance(value, bool):
            raise DaskbatchError(f"{name}={value!r} must be True or False")


def memory_limit_bytes(value: int | str | None) -> int | None:
    """``memory_limit=`` in bytes (text such as ``"4GiB"`` parsed), or None."""
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


def _check_kernel_and_space(kernel: Any, space: Any) -> None:
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


def _check_size(kernel: Kernel, space: Space, chunk_size: Any, memory_limit: int | None) -> None:
    """A space too big for a task or for the run's bookkeeping is refused with its numbers."""
    from .designs import Design
    from .layout import Layout
    from .plan import check_run_size

    # names that would clash in the store, refused now rather than when it is created
    shape = space.batch_shape
    Layout(space.batch_dims, shape, shape, space.params, kernel.outputs).validate()
    if isinstance(space, Design):
        what = f"n={space.n}"
    else:
        what = " × ".join(f"{d}={n}" for d, n in zip(space.batch_dims, space.batch_shape, strict=True))
    params = {name: (math.prod(p.core_shape), p.dtype) for name, p in space.params.items()}
    outputs = {name: (o.size, o.dtype) for name, o in kernel.outputs.items()}
    check_run_size(what, space.batch_dims, space.batch_shape, chunk_size, params, outputs, memory_limit)


def _check_chunking(chunk_size: Any, progress: Any, overwrite: Any, constants: Any) -> None:
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
