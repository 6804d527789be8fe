"""Errors raised by daskbatch.

Every error subclasses :class:`DaskbatchError`, itself a :class:`ValueError`, so a
caller can catch them all at once; subclasses also inherit the builtin that fits
(``FileExistsError`` for a store that belongs to someone else, ...).
"""

from __future__ import annotations

import signal

__all__ = [
    "ClusterError",
    "DaskbatchError",
    "FingerprintMismatchError",
    "KernelChangedError",
    "KernelCrashError",
    "KernelSignatureError",
    "OutputSpecError",
    "SpaceError",
    "SpecFileError",
    "Stopped",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreWriteError",
    "WorkerDiedError",
    "WorkerImportError",
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


class ClusterError(DaskbatchError, RuntimeError):
    """The ``cluster=`` argument cannot be turned into a scheduler."""


class WorkerImportError(ClusterError):
    """The scheduler or workers of a running cluster cannot load the kernel: a module it
    needs is not installed there."""


class KernelCrashError(ClusterError):
    """A sample ended the process that ran it where daskbatch cannot isolate it: with
    ``"serial"`` or ``"threads"`` that process is the driver itself."""


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

    def __reduce__(self):  # crosses process boundaries intact
        return (type(self), (str(self), self.errno))


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
