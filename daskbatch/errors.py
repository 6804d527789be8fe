"""Errors raised by daskbatch, and the record kept of a sample that failed.

Every error subclasses :class:`DaskbatchError`, itself a :class:`ValueError`, so a
caller can catch them all at once; subclasses also inherit the builtin that fits
(``FileExistsError`` for a store that belongs to someone else, ...).

:class:`ErrorRecord` is what a store keeps of a sample that did not end ``ok``
(failed, timed out or crashed), and :func:`sample_label` the one way a sample is
named to a user. Both are plain Python, so that worker processes can use them
without importing anything else of daskbatch.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ClusterError",
    "ConfigError",
    "DaskbatchError",
    "ErrorRecord",
    "FingerprintMismatchError",
    "KernelChangedError",
    "KernelCrashError",
    "KernelSignatureError",
    "OutputSpecError",
    "PlanError",
    "SpaceError",
    "SpecFileError",
    "StaleModuleError",
    "Stopped",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreWriteError",
    "ValidationError",
    "WorkerDiedError",
    "WorkerImportError",
    "sample_coords",
    "sample_label",
]


class DaskbatchError(ValueError):
    """Base class of every error daskbatch raises on purpose."""


class SpaceError(DaskbatchError):
    """A parameter space or distribution was given invalid values."""


class KernelSignatureError(DaskbatchError, TypeError):
    """The kernel's arguments do not match the parameters and constants."""


class OutputSpecError(DaskbatchError):
    """A kernel returned outputs that do not match its declared ``outputs``."""


class StoreError(DaskbatchError):
    """The store path cannot be used, or the store is not a daskbatch store."""


class StoreExistsError(StoreError, FileExistsError):
    """The store path holds data that daskbatch did not write."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """There is no store at the path given (also a :class:`FileNotFoundError`)."""


class FingerprintMismatchError(StoreError):
    """An existing store was written by a different kernel, space or chunking."""


class KernelChangedError(FingerprintMismatchError):
    """The store holds results computed by other code of the same kernel."""


class StaleModuleError(DaskbatchError):
    """A module the kernel uses changed on disk since this process imported it, and was
    not reloaded: the workers would run other code than this process."""


class ClusterError(DaskbatchError, RuntimeError):
    """The ``cluster=`` argument cannot be turned into a scheduler."""


class WorkerImportError(ClusterError):
    """The scheduler or workers of a running cluster cannot load the kernel: a module it
    needs is not installed there."""


class KernelCrashError(ClusterError):
    """A sample ended the process that ran it where daskbatch cannot isolate it: with
    ``"serial"`` or ``"threads"`` that process is the driver itself."""


class KernelCodeError(DaskbatchError):
    """Every one of the kernel's first samples raised an error that no input causes (a
    misspelled name, a module that is not installed): the run stops before its store
    is made or a worker job started, rather than record it as each sample's failure."""


class WorkerDiedError(ClusterError):
    """A worker process of dask's processes scheduler died, breaking its pool."""


class SpecFileError(DaskbatchError):
    """A TOML spec file has unknown keys or values of the wrong type."""


class StoreLockedError(StoreError):
    """Another run is writing to the store right now."""


class StoreWriteError(StoreError):
    """Writing results to the store failed (disk full, permissions, ...).

    Blocks committed before the failure are kept; the failed block is not counted
    as done, so running again recomputes it. ``errno`` is the operating system's
    error number (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def of(cls, e: OSError, failed: str, then: str) -> StoreWriteError:
        """``"<failed> failed: <why>. <then>"``, ``why`` "the disk is full" for a full
        disk or a quota, else the operating system's message."""
        import errno as codes

        why = "the disk is full" if e.errno in (codes.ENOSPC, codes.EDQUOT) else str(e)
        return cls(f"{failed} failed: {why}. {then}", e.errno)

    def __reduce__(self):  # crosses process boundaries intact
        return (type(self), (str(self), self.errno))


class PlanError(DaskbatchError):
    """No block fits the memory budget, or the planning arguments are invalid."""


class ConfigError(DaskbatchError):
    """A setting in dask's configuration has a value daskbatch cannot use."""


class ValidationError(DaskbatchError):
    """Recomputed samples differ from the stored ones beyond the tolerance.

    The full :class:`~daskbatch.validation.ValidationReport` is in ``.report``.
    """

    def __init__(self, report: Any) -> None:
        super().__init__(str(report))
        self.report = report

    def __reduce__(self):
        return (type(self), (self.report,))


class Stopped(KeyboardInterrupt):
    """A run stopped on purpose by a signal (SIGINT or SIGTERM); the store is resumable.

    A :class:`KeyboardInterrupt`, so that ``except Exception`` (in kernels, in dask)
    does not swallow it and code that handles Ctrl-C handles it too. ``signum`` is the
    signal's number and ``exit_code`` what a command should exit with (128 + signum).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        name = signal.Signals(self.signum).name
        super().__init__("interrupted (SIGINT)" if self.signum == signal.SIGINT else f"stopped by {name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):  # crosses process boundaries intact
        return (type(self), (self.signum,))


# --------------------------------------------------------------------------- sample errors

#: statuses an error record can have (the names of the codes in ``STATUS``)
RECORD_STATUSES = ("failed", "timeout", "crashed")


def _batch_info(space: Any) -> tuple[tuple[str, ...], tuple[int, ...], Mapping[str, Any]]:
    """Batch dims, batch shape and coordinate values (``{dim: values}``) of a space.

    ``space`` is a :class:`~daskbatch.space.Space` (``batch_coords()`` is a method), a
    store's :class:`~daskbatch.store.Layout` (``batch_coords`` is a mapping), or any
    object with ``batch_dims`` and ``batch_shape`` (and optionally ``batch_coords``).
    """
    dims = tuple(str(d) for d in space.batch_dims)
    shape = tuple(int(n) for n in space.batch_shape)
    coords = getattr(space, "batch_coords", None)
    if callable(coords):
        coords = coords()
    return dims, shape, dict(coords or {})


def _unravel(index: int, shape: Sequence[int]) -> tuple[int, ...]:
    """``numpy.unravel_index`` (row-major) for one index, without numpy."""
    out = []
    for n in reversed(shape):
        index, r = divmod(index, n) if n else (index, 0)
        out.append(r)
    return tuple(reversed(out))


def _plain(value: Any) -> Any:
    """A coordinate value as a plain Python value (a numpy scalar's ``item()``)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _show(value: Any) -> str:
    """A coordinate value as a label shows it: ``10`` for 10.0, ``0.1``, ``'sand'``."""
    if isinstance(value, int):  # bools too
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def sample_coords(space: Any, index: int) -> dict[str, Any]:
    """The coordinate values of sample ``index`` along the batch dims that have them.

    ``{axis: value}`` for the axes of a grid (plain Python values); ``{}`` for a
    Monte Carlo design or a table, whose ``sample`` dim has no values of its own.
    ``space`` is as for :func:`sample_label`.

    Examples
    --------
    >>> import numpy as np
    >>> from daskbatch import Grid
    >>> sample_coords(Grid(rho1=[10.0, 20.0], rho2=[100.0, 200.0, 300.0]), 5)
    {'rho1': 20.0, 'rho2': 300.0}
    """
    dims, shape, coords = _batch_info(space)
    pos = _unravel(int(index), shape)
    return {d: _plain(coords[d][p]) for d, p in zip(dims, pos, strict=True) if d in coords}


def sample_label(space: Any, index: int) -> str:
    """How a sample is named to a user: in status, error lists, CLI messages, reports.

    ``index`` is the sample's flat index in the whole space (row-major over the batch
    dims, as ``numpy.ravel_multi_index``). A space with one batch dim without values
    (a Monte Carlo design, a table) gives ``"sample 222"``. Otherwise each batch dim
    is named with the sample's value on it (a grid axis), or its index along it (a
    dim without values, such as a :class:`~daskbatch.space.Product`'s realisations),
    followed by the flat index: ``"rho1=10, rho2=100 (sample 5)"``. Whole floats are
    shown without ``.0``, other floats exactly (``repr``), strings quoted.

    ``space`` is a :class:`~daskbatch.space.Space`, a store's
    :class:`~daskbatch.store.Layout`, or any object with ``batch_dims``,
    ``batch_shape`` and (for values) ``batch_coords``.

    Examples
    --------
    >>> from daskbatch import Grid, MonteCarlo, Uniform
    >>> sample_label(MonteCarlo({"x": Uniform(0, 1)}, n=1000, seed=1), 222)
    'sample 222'
    >>> sample_label(Grid(rho1=[1.0, 10.0], rho2=[10.0, 50.0, 100.0]), 5)
    'rho1=10, rho2=100 (sample 5)'
    """
    dims, shape, coords = _batch_info(space)
    index = int(index)
    if len(dims) == 1 and dims[0] not in coords:
        return f"sample {index}"
    pos = _unravel(index, shape)
    parts = [
        f"{d}={_show(_plain(coords[d][p]))}" if d in coords else f"{d}={p}"
        for d, p in zip(dims, pos, strict=True)
    ]
    return f"{', '.join(parts)} (sample {index})"


def _split_error(text: str) -> tuple[str, str]:
    """``"ValueError: bad"`` -> ``("ValueError", "bad")``; text without a type -> ``("", text)``."""
    head, sep, rest = text.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
        return head, rest
    return "", text


def _status_of(error_type: str) -> str:
    """The status of a record stored before records kept theirs."""
    if error_type == "SampleTimeout":
        return "timeout"
    if error_type in ("WorkerCrash", "MemoryLimit"):
        return "crashed"
    return "failed"


@dataclass(frozen=True)
class ErrorRecord:
    """What is kept of one sample that did not end ``ok``: which sample, and why.

    Parameters
    ----------
    index
        The sample's flat index in the whole space (row-major over the batch dims);
        ``None`` in records of stores written before records kept it.
    coords
        ``{axis: value}`` of the sample on the batch dims that have values (a grid's
        axes); ``{}`` for a Monte Carlo design or a table.
    error_type
        The exception's class name (``"ValueError"``), or what happened:
        ``"SampleTimeout"``, ``"WorkerCrash"``, ``"MemoryLimit"``.
    message
        The error's message.
    status
        ``"failed"``, ``"timeout"`` or ``"crashed"`` (a ``STATUS`` name).
    traceback
        The end of the traceback, from the kernel's own frames on (trimmed); ``""``
        where there is none (a timeout, a crash).
    where
        ``file:line in function`` of the frame that raised, or ``""``.
    seconds
        The timeout that stopped the sample, or ``None``.
    position
        The sample's position in its block, one index per batch dim.
    label
        The sample as shown to users (:func:`sample_label`).
    error
        One line for users; ``"<error_type>: <message>"`` unless given.

    ``to_dict()`` gives the JSON form a store keeps, with the keys stores always had
    (``sample``, ``error``, ``where``, ``position``), so that every reader of errors
    keeps working; ``from_dict()`` reads that form, from any store.

    Examples
    --------
    >>> r = ErrorRecord(index=7, error_type="ValueError", message="bad", label="sample 7")
    >>> r.error, r.status
    ('ValueError: bad', 'failed')
    >>> ErrorRecord.from_dict(r.to_dict()) == r
    True
    >>> old = {"position": [7], "sample": "sample 7", "error": "RuntimeError: boom", "where": ""}
    >>> ErrorRecord.from_dict(old).error_type
    'RuntimeError'
    """

    index: int | None = None
    coords: Mapping[str, Any] = field(default_factory=dict)
    error_type: str = ""
    message: str = ""
    status: str = "failed"
    traceback: str = ""
    where: str = ""
    seconds: float | None = None
    position: tuple[int, ...] = ()
    label: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        status = getattr(self.status, "name", self.status)  # a STATUS member
        if isinstance(status, int):
            status = ("pending", "ok", *RECORD_STATUSES)[status]
        if status not in RECORD_STATUSES:
            raise ValueError(f"ErrorRecord: status={self.status!r} must be one of {RECORD_STATUSES}")
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "index", None if self.index is None else int(self.index))
        object.__setattr__(self, "coords", {str(k): _plain(v) for k, v in dict(self.coords).items()})
        object.__setattr__(self, "position", tuple(int(p) for p in self.position))
        seconds = self.seconds
        object.__setattr__(self, "seconds", None if seconds is None else float(seconds))
        if not self.error:
            text = f"{self.error_type}: {self.message}" if self.error_type else self.message
            object.__setattr__(self, "error", text)
        if not self.label and self.index is not None:
            object.__setattr__(self, "label", f"sample {self.index}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-compatible form stored in a block and returned in ``errors`` lists."""
        return {
            "sample": self.label,
            "error": self.error,
            "where": self.where,
            "position": list(self.position),
            "index": self.index,
            "coords": dict(self.coords),
            "type": self.error_type,
            "message": self.message,
            "status": self.status,
            "traceback": self.traceback,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ErrorRecord:
        """Read a record from ``to_dict()``'s form, or from a store written before
        records kept their type, status and index (only ``sample``, ``error``,
        ``where``, ``position``): the type is then read from the error text."""
        error = str(doc.get("error", ""))
        guessed_type, guessed_message = _split_error(error)
        error_type = doc.get("type")
        error_type = guessed_type if error_type is None else str(error_type)
        message = doc.get("message")
        message = guessed_message if message is None else str(message)
        seconds = doc.get("seconds")
        if seconds is None and error_type == "SampleTimeout" and "timeout of " in message:
            with contextlib.suppress(ValueError, IndexError):
                seconds = float(message.split("timeout of ", 1)[1].split(" s", 1)[0])
        if seconds is not None and not math.isfinite(float(seconds)):
            seconds = None
        return cls(
            index=doc.get("index"),
            coords=doc.get("coords") or {},
            error_type=error_type,
            message=message,
            status=doc.get("status") or _status_of(error_type),
            traceback=str(doc.get("traceback") or ""),
            where=str(doc.get("where") or ""),
            seconds=seconds,
            position=tuple(doc.get("position") or ()),
            label=str(doc.get("sample") or ""),
            error=error,
        )
