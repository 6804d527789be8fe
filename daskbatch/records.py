"""What a block produced: status codes, block results and error records.

:class:`Status` (``STATUS``) holds the per-sample status codes a store keeps,
:class:`BlockResult` what one run of a block gives back, and :func:`error_record`,
:func:`timeout_record` and :func:`crash_record` build the
:class:`~daskbatch.errors.ErrorRecord` of a sample that is not ok.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import ErrorRecord, sample_coords, sample_label

__all__ = [
    "CRASHED",
    "FAILED",
    "MAX_ERRORS_PER_BLOCK",
    "OK",
    "PENDING",
    "STATUS",
    "TIMEOUT",
    "TIMEOUT_EXIT_CODE",
    "BlockResult",
    "Status",
    "crash_record",
    "error_record",
    "timeout_record",
]


class Status(IntEnum):
    """Per-sample status codes stored in the ``status`` variable (int8).

    Members are ints (``STATUS.ok == 1``), named as the store names them
    (``flag_meanings``): ``STATUS["ok"]``, ``STATUS.ok`` and ``STATUS(1)`` are the
    same member; iteration gives the members in code order. ``STATUS.items()`` gives
    ``(name, member)`` pairs, as the mapping ``STATUS`` was before.

    Examples
    --------
    >>> STATUS["failed"], int(STATUS.timeout), STATUS(4).name
    (<Status.failed: 2>, 3, 'crashed')
    >>> [name for name, code in STATUS.items()]
    ['pending', 'ok', 'failed', 'timeout', 'crashed']
    """

    pending = 0
    ok = 1
    failed = 2
    timeout = 3
    crashed = 4

    @classmethod
    def items(cls) -> list[tuple[str, Status]]:
        """``(name, member)`` pairs in code order."""
        return [(m.name, m) for m in cls]


#: The status codes (an :class:`~enum.IntEnum`; see :class:`Status`).
STATUS = Status
PENDING, OK, FAILED = STATUS.pending, STATUS.ok, STATUS.failed
TIMEOUT, CRASHED = STATUS.timeout, STATUS.crashed

#: Exit code of a worker process that ended itself to stop a sample past its timeout.
TIMEOUT_EXIT_CODE = 75

#: Errors kept per block (the counts are always exact).
MAX_ERRORS_PER_BLOCK = 20


@dataclass
class BlockResult:
    """What one block produced: outputs, per-sample status, and error records.

    ``errors`` holds the first records as dicts (:meth:`ErrorRecord.to_dict`, the
    form a store keeps); :meth:`records` reads them back as :class:`ErrorRecord`.
    """

    outputs: dict[str, np.ndarray]
    status: np.ndarray
    errors: list[dict[str, Any]]
    n_errors: int
    seconds: float

    def records(self) -> list[ErrorRecord]:
        """The error records of this block."""
        return [ErrorRecord.from_dict(e) for e in self.errors]


# --------------------------------------------------------------------------- error records

#: The modules whose frames call a kernel (the block runner, the kernel wrapper):
#: an error record's traceback starts below them.
_CALLING_FILES = frozenset(
    os.path.join(os.path.dirname(__file__), f"{name}.py")
    for name in ("calls", "kernel", "outputs", "records")
)

#: Frames and characters of a traceback kept in an error record.
TRACEBACK_FRAMES = 6
TRACEBACK_CHARS = 2000


class _BlockAsSpace:
    """A block seen as a space of its own: what labels use when no space is given."""

    def __init__(self, batch_shape: tuple[int, ...]) -> None:
        self.batch_shape = tuple(batch_shape)
        n = len(self.batch_shape)
        self.batch_dims = ("sample",) if n == 1 else tuple(f"dim_{k}" for k in range(n))
        self.batch_coords: dict[str, Any] = {}


def _locate(space: Any, region: Sequence[slice], i: int) -> tuple[int, tuple[int, ...]]:
    """The flat index in the whole space, and the position in its block, of the
    sample at flat position ``i`` of the block ``region``."""
    shape = tuple(s.stop - s.start for s in region)
    position = tuple(int(p) for p in np.unravel_index(int(i), shape))
    glob = tuple(s.start + p for s, p in zip(region, position, strict=True))
    index = int(np.ravel_multi_index(glob, tuple(int(n) for n in space.batch_shape)))
    return index, position


def _place(space: Any, region: Sequence[slice], i: int, label: str | None) -> dict[str, Any]:
    index, position = _locate(space, region, i)
    return {
        "index": index,
        "coords": sample_coords(space, index),
        "position": position,
        "label": label if label is not None else sample_label(space, index),
    }


def _trimmed_traceback(exc: BaseException) -> str:
    """The traceback from the kernel's own frames on (daskbatch's calling frames
    dropped), at most :data:`TRACEBACK_FRAMES` frames and :data:`TRACEBACK_CHARS`
    characters (the end is kept)."""
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and frames[0].filename in _CALLING_FILES:
        frames.pop(0)
    if not frames:
        return ""
    shown = traceback.format_list(frames[-TRACEBACK_FRAMES:])
    if len(frames) > TRACEBACK_FRAMES:
        shown.insert(0, f"  ... {len(frames) - TRACEBACK_FRAMES} earlier frame(s)\n")
    text = "".join(shown) + "".join(traceback.format_exception_only(type(exc), exc))
    if len(text) > TRACEBACK_CHARS:
        text = "..." + text[-TRACEBACK_CHARS:]
    return text.rstrip("\n")


def _type_and_message(exc: BaseException) -> tuple[str, str, str]:
    """An exception's type name, message, and one-line text (see :func:`_describe`)."""
    text = _describe(exc)
    name = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt", text.removeprefix("KeyboardInterrupt").lstrip(": "), text
    return name, text.removeprefix(f"{name}: ") if text.startswith(f"{name}: ") else text, text


def error_record(
    space: Any,
    region: Sequence[slice],
    i: int,
    exc: BaseException,
    *,
    status: int | str = "failed",
    label: str | None = None,
) -> ErrorRecord:
    """The record of a sample whose kernel call raised ``exc``.

    ``space`` names the sample (a :class:`~daskbatch.space.Space` or a store's
    :class:`~daskbatch.store.Layout`; see :func:`~daskbatch.errors.sample_label`),
    ``region`` is its block (a slice per batch dim, ``Layout.block_slices(block)``)
    and ``i`` the sample's flat position in the block. ``label`` replaces the label
    :func:`~daskbatch.errors.sample_label` gives.
    """
    error_type, message, text = _type_and_message(exc)
    return ErrorRecord(
        **_place(space, region, i, label),
        error_type=error_type,
        message=message,
        error=text,
        status=status,
        traceback=_trimmed_traceback(exc),
        where=_last_frame(exc),
    )


def timeout_record(
    space: Any,
    region: Sequence[slice],
    i: int,
    timeout: float,
    *,
    whole_block: bool = False,
    process_ended: bool = False,
    label: str | None = None,
) -> ErrorRecord:
    """The record of a sample stopped by ``timeout`` seconds (status ``timeout``).

    ``whole_block``: the vectorised call of the whole block ran past it;
    ``process_ended``: the process running it was ended (a later attempt at the block
    records the sample). The other arguments are as for :func:`error_record`.
    """
    message = f"stopped after the timeout of {timeout:g} s"
    if whole_block:
        message = "the block call was " + message
    if process_ended:
        message += " (the process running it was ended)"
    return ErrorRecord(
        **_place(space, region, i, label),
        error_type="SampleTimeout",
        message=message,
        status="timeout",
        seconds=timeout,
    )


def crash_record(
    space: Any,
    region: Sequence[slice],
    i: int,
    *,
    memory_limit: bool = False,
    rss: float | None = None,
    limit: float | None = None,
) -> ErrorRecord:
    """The record of a sample whose worker process died every time it was tried
    (status ``crashed``): ``WorkerCrash``, or ``MemoryLimit`` when the worker's nanny
    ended it for its memory (``memory_limit``; ``rss`` and ``limit`` in bytes, when
    known). The other arguments are as for :func:`error_record`.

    Examples
    --------
    >>> from daskbatch import Grid
    >>> r = crash_record(Grid(a=[1.0, 2.0], b=[5, 6, 7]), (slice(1, 2), slice(0, 3)), 2)
    >>> r.label, r.status, r.error_type
    ('a=2, b=7 (sample 5)', 'crashed', 'WorkerCrash')
    """
    if memory_limit:
        used = f" ({rss / 2**20:.0f} MiB" if rss else ""
        used += (f" of {limit / 2**20:.0f} MiB)" if limit else ")") if used else ""
        error_type = "MemoryLimit"
        message = (
            "the worker process running this sample died every time it was tried: its nanny "
            f"ended it for exceeding its memory limit{used}"
        )
    else:
        error_type = "WorkerCrash"
        message = (
            "the worker process running this sample died every time it was tried "
            "(a segfault, an abort, os._exit, or its memory limit)"
        )
    place = _place(space, region, i, None)
    return ErrorRecord(**place, error_type=error_type, message=message, status="crashed")


def _describe(exc: BaseException) -> str:
    """The error text recorded for a sample."""
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return f"SystemExit: the kernel called sys.exit({code})"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the kernel" + (f": {exc}" if str(exc) else "")
    return f"{type(exc).__name__}: {exc}"


def _last_frame(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"
