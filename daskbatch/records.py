"""What a block produced: status codes, block results and error records.

:class:`Status` (``STATUS``) holds the per-sample status codes a store keeps,
:class:`BlockResult` what one run of a block gives back, and :func:`error_record`,
:func:`timeout_record` and :func:`crash_record` build the
:class:`~daskbatch.errors.ErrorRecord` of a sample that is not ok.
"""

from __future__ import annotations

import base64
import json
import os
import traceback
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import ErrorRecord, sample_coords, sample_label
from .parsing import LOCK

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
    "FailureLog",
    "Status",
    "crash_record",
    "error_record",
    "timeout_message",
    "timeout_record",
]


class Status(IntEnum):
    """Per-sample status codes stored in the ``status`` variable (int8).

    ====  ===========  ==================================================================
    code  name         meaning
    ====  ===========  ==================================================================
    0     ``pending``  not computed yet (or its block is not committed)
    1     ``ok``       computed; its outputs are the kernel's
    2     ``failed``   the kernel raised (after ``retries``), or returned a value its
                       ``Output`` cannot hold; outputs hold the fill value
    3     ``timeout``  it ran past ``timeout=`` and was stopped
    4     ``crashed``  it ended its worker process every time it was tried (a segfault,
                       ``os._exit``, a Fortran ``STOP``), so it was isolated
    ====  ===========  ==================================================================

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

#: Full error records (with their tracebacks) kept per block; every failed sample's
#: status, error type and message are kept besides, in the block's :class:`FailureLog`.
MAX_ERRORS_PER_BLOCK = 20


@dataclass
class BlockResult:
    """What one block produced: outputs, per-sample status, and error records.

    ``errors`` holds the first records as dicts (:meth:`ErrorRecord.to_dict`, the
    form a store keeps); :meth:`records` reads them back as :class:`ErrorRecord`.
    ``failures`` holds every sample that is not ok, compactly (:class:`FailureLog`).
    """

    outputs: dict[str, np.ndarray]
    status: np.ndarray
    errors: list[dict[str, Any]]
    n_errors: int
    seconds: float
    failures: FailureLog = field(default_factory=lambda: FailureLog())

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
    return _frames_text(exc, with_exception=True)


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
    message = timeout_message(timeout, whole_block=whole_block, process_ended=process_ended)
    return ErrorRecord(
        **_place(space, region, i, label),
        error_type="SampleTimeout",
        message=message,
        status="timeout",
        seconds=timeout,
    )


def timeout_message(timeout: float, *, whole_block: bool = False, process_ended: bool = False) -> str:
    """The message of a sample stopped by ``timeout`` seconds (see :func:`timeout_record`).

    Examples
    --------
    >>> timeout_message(2.5, process_ended=True)
    'stopped after the timeout of 2.5 s (the process running it was ended)'
    """
    message = f"stopped after the timeout of {timeout:g} s"
    if whole_block:
        message = "the block call was " + message
    if process_ended:
        message += " (the process running it was ended)"
    return message


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


# --------------------------------------------------------------------------- every failure of a block

#: Characters of an error message kept for every sample that is not ok (longer ones
#: are cut, ending in "...").
MESSAGE_CHARS = 500
#: Characters of distinct messages a block keeps at up to :data:`MESSAGE_CHARS` each;
#: past them each new distinct message keeps :data:`SHORT_MESSAGE_CHARS`, and past
#: :data:`MESSAGE_LIMIT` none is kept (the error type and status still are), so that
#: the record of a block of many samples failing with different messages stays small.
MESSAGE_BUDGET = 100_000
SHORT_MESSAGE_CHARS = 80
MESSAGE_LIMIT = 1_000_000
#: Distinct tracebacks a block keeps: every failure whose traceback is one of them
#: (the same frames, file and line) gets it, whatever its message.
MAX_TRACEBACKS_PER_BLOCK = MAX_ERRORS_PER_BLOCK
#: The message of a failure whose message was not kept (see MESSAGE_LIMIT).
MESSAGE_NOT_KEPT = "(message not kept: this block's record holds too many distinct messages)"
#: A block's failures take more than this many characters of JSON: they are kept
#: compressed (zlib, base64) in its record. Messages that differ in a number or two
#: compress about tenfold: 10,000 different messages cost about 0.1 MB.
COMPRESS_ABOVE = 64 * 1024
_MAX_INFLATED = 1 << 30
#: Messages remembered as they were given, to find their entry without cutting them again.
_CACHED_KINDS = 100_000


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(0, chars - 3)] + "..."


def _frame_key(exc: BaseException) -> tuple[tuple[str, int], ...]:
    """Where ``exc`` was raised, frame by frame from the kernel's own frames on: two
    failures with the same key have the same traceback (but for the message)."""
    key = [(f.f_code.co_filename, lineno) for f, lineno in traceback.walk_tb(exc.__traceback__)]
    while key and key[0][0] in _CALLING_FILES:
        key.pop(0)
    return tuple(key)


def _frames_text(exc: BaseException, with_exception: bool = False) -> str:
    """The frames of :func:`_trimmed_traceback`, without the exception's own line(s)
    unless ``with_exception``."""
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and frames[0].filename in _CALLING_FILES:
        frames.pop(0)
    if not frames:
        return ""
    with LOCK:  # 3.11's ^^^ markers parse each line (see daskbatch.parsing)
        shown = traceback.format_list(frames[-TRACEBACK_FRAMES:])
    if len(frames) > TRACEBACK_FRAMES:
        shown.insert(0, f"  ... {len(frames) - TRACEBACK_FRAMES} earlier frame(s)\n")
    if with_exception:
        shown += traceback.format_exception_only(type(exc), exc)
    text = "".join(shown)
    if len(text) > TRACEBACK_CHARS:
        text = "..." + text[-TRACEBACK_CHARS:]
    return text.rstrip("\n")


class FailureLog:
    """Every sample of a block that is not ok: its status, error type and message, and
    its traceback when it is one of the block's first distinct ones.

    Compact by construction: a sample costs its position and the index of its
    ``(status, type, message, traceback)`` entry, entries are shared by the samples
    that failed the same way, messages are cut to :data:`MESSAGE_CHARS` (fewer past
    :data:`MESSAGE_BUDGET`), and at most :data:`MAX_TRACEBACKS_PER_BLOCK` distinct
    tracebacks are kept; past :data:`COMPRESS_ABOVE` characters the record keeps
    them compressed. A block of 10,000 samples failing with one message, or with
    10,000 messages that differ in a number, is a record of about 0.1 MB.

    Positions are flat (row-major) positions in the block. ``to_doc()`` gives the
    JSON form a block's record keeps (``failures``), ``from_doc()`` reads it.

    Examples
    --------
    >>> log = FailureLog()
    >>> for i in (3, 5, 8):
    ...     log.add(i, "failed", "ValueError", "x < 0")
    >>> log.add(9, "timeout", "SampleTimeout", "stopped after the timeout of 2 s")
    >>> len(log), log.to_doc()["kinds"][0]
    (4, [2, 'ValueError', 'x < 0', -1])
    >>> [(p, s, m) for p, s, _, m, _ in FailureLog.from_doc(log.to_doc()).entries()][-1]
    (9, 'timeout', 'stopped after the timeout of 2 s')
    """

    __slots__ = ("_chars", "_kind_ids", "_tb_ids", "kind", "kinds", "position", "tracebacks")

    def __init__(self) -> None:
        self.position: list[int] = []
        self.kind: list[int] = []
        #: ``[status code, error type, message, traceback index or -1]`` per entry
        self.kinds: list[list[Any]] = []
        #: distinct tracebacks (frames only; the exception's line is added when read)
        self.tracebacks: list[str] = []
        self._kind_ids: dict[tuple[int, str, str, int], int] = {}
        self._tb_ids: dict[Any, int] = {}
        self._chars = 0

    def __len__(self) -> int:
        return len(self.position)

    def __repr__(self) -> str:
        return f"<FailureLog: {len(self)} sample(s), {len(self.kinds)} distinct error(s)>"

    # ------------------------------------------------------------------ adding

    def _message(self, message: str) -> str:
        if self._chars >= MESSAGE_LIMIT:
            return MESSAGE_NOT_KEPT
        return _cut(message, MESSAGE_CHARS if self._chars < MESSAGE_BUDGET else SHORT_MESSAGE_CHARS)

    def add(self, position: int, status: int | str, error_type: str, message: str, tb: int = -1) -> None:
        """Add the sample at flat ``position`` of the block (``tb``: an index into
        :attr:`tracebacks`, or -1)."""
        code = int(STATUS[status]) if isinstance(status, str) else int(status)
        key = (code, str(error_type), _cut(str(message), MESSAGE_CHARS), int(tb))
        k = self._kind_ids.get(key)
        if k is None:
            kept = self._message(key[2])
            short = (code, key[1], kept, key[3])
            k = self._kind_ids.get(short)  # cut to the same text as an earlier one
            if k is None:
                k = len(self.kinds)
                self.kinds.append([code, key[1], kept, key[3]])
                self._kind_ids[short] = k
                self._chars += len(kept)
            if len(self._kind_ids) < _CACHED_KINDS:
                self._kind_ids[key] = k
        self.position.append(int(position))
        self.kind.append(k)

    def _traceback_of(self, exc: BaseException) -> int:
        key = _frame_key(exc)
        if not key:
            return -1
        t = self._tb_ids.get(key)
        if t is None:
            if len(self.tracebacks) >= MAX_TRACEBACKS_PER_BLOCK:
                return -1
            t = self._tb_ids[key] = len(self.tracebacks)
            self.tracebacks.append(_frames_text(exc))
        return t

    def add_exception(self, position: int, exc: BaseException, status: int | str = "failed") -> None:
        """Add a sample whose kernel call raised ``exc``."""
        error_type, message, _ = _type_and_message(exc)
        self.add(position, status, error_type, message, self._traceback_of(exc))

    def add_record(self, position: int, record: ErrorRecord | Mapping[str, Any]) -> None:
        """Add a sample described by an :class:`ErrorRecord` (or its dict): a timeout,
        a crash, or a record carried over from an earlier run of the block."""
        rec = record if isinstance(record, ErrorRecord) else ErrorRecord.from_dict(record)
        self.add(position, rec.status, rec.error_type, rec.message)

    def merge(self, other: FailureLog, positions: Iterable[int] | None = None) -> None:
        """Add the samples of ``other`` (a log of the same block), or those of them at
        ``positions``."""
        wanted = None if positions is None else {int(p) for p in positions}
        tb_map: dict[int, int] = {}
        for p, k in zip(other.position, other.kind, strict=True):
            if wanted is not None and p not in wanted:
                continue
            code, error_type, message, t = other.kinds[k]
            if t >= 0 and t not in tb_map:
                text = other.tracebacks[t]
                tb_map[t] = self._tb_ids.get(("text", text), -1)
                if tb_map[t] < 0 and len(self.tracebacks) < MAX_TRACEBACKS_PER_BLOCK:
                    tb_map[t] = self._tb_ids[("text", text)] = len(self.tracebacks)
                    self.tracebacks.append(text)
            self.add(p, code, error_type, message, tb_map.get(t, -1))

    # ------------------------------------------------------------------ reading

    def entries(self) -> Iterator[tuple[int, str, str, str, str | None]]:
        """``(position, status name, error type, message, traceback or None)`` per
        sample, in the order added."""
        names = {int(s): s.name for s in STATUS}
        for p, k in zip(self.position, self.kind, strict=True):
            code, error_type, message, t = self.kinds[k]
            tb = None
            if 0 <= t < len(self.tracebacks) and self.tracebacks[t]:
                tb = self.tracebacks[t] + "\n" + (f"{error_type}: {message}" if error_type else message)
            yield p, names.get(int(code), str(code)), error_type, message, tb

    def to_doc(self) -> dict[str, Any]:
        """The JSON form kept in a block's record: plain JSON, or, past
        :data:`COMPRESS_ABOVE` characters, that JSON compressed (``{"zlib": base64}``)."""
        doc = {
            "position": list(self.position),
            "kind": list(self.kind),
            "kinds": [list(k) for k in self.kinds],
            "tracebacks": list(self.tracebacks),
        }
        text = json.dumps(doc, separators=(",", ":"))
        if len(text) <= COMPRESS_ABOVE:
            return doc
        return {"zlib": base64.b64encode(zlib.compress(text.encode(), 6)).decode("ascii")}

    @classmethod
    def from_doc(cls, doc: Any) -> FailureLog:
        """Read :meth:`to_doc`'s form; ``ValueError`` if it is not that."""
        if isinstance(doc, Mapping) and isinstance(doc.get("zlib"), str):
            try:
                raw = zlib.decompressobj().decompress(base64.b64decode(doc["zlib"]), _MAX_INFLATED)
                doc = json.loads(raw)
            except (ValueError, zlib.error) as e:
                raise ValueError(f"the compressed failures of a block record cannot be read ({e})") from None
        if not isinstance(doc, Mapping):
            raise ValueError("the failures of a block record are not a JSON object")
        log = cls()
        pos, kind, kinds, tbs = (doc.get(k) for k in ("position", "kind", "kinds", "tracebacks"))
        if not (
            isinstance(pos, list)
            and isinstance(kind, list)
            and len(pos) == len(kind)
            and isinstance(kinds, list)
            and isinstance(tbs, list)
        ):
            raise ValueError("the failures of a block record are not lists of positions and kinds")
        for entry in kinds:
            if not (isinstance(entry, list) and len(entry) == 4):
                raise ValueError(f"a failure kind {entry!r} is not [status, type, message, traceback]")
            code, error_type, message, t = entry
            log.kinds.append([int(code), str(error_type), str(message), int(t)])
        n = len(log.kinds)
        if any(not isinstance(k, int) or not 0 <= k < n for k in kind):
            raise ValueError("a failure refers to no kind")
        log.position = [int(p) for p in pos]
        log.kind = list(kind)
        log.tracebacks = [str(t) for t in tbs]
        return log


def failure_log_of(
    failures: Mapping[str, Any] | None, errors: Sequence[Mapping[str, Any]], shape: Sequence[int]
) -> FailureLog:
    """The :class:`FailureLog` a block's record keeps (its ``failures``), or, for a
    record written before daskbatch kept every failure (or whose ``failures`` cannot be
    read), one made of its first ``errors``. ``shape`` is the block's shape (the
    errors give their position per batch dim)."""
    if failures is not None:
        try:
            return FailureLog.from_doc(failures)
        except (ValueError, TypeError):
            pass
    log = FailureLog()
    for e in errors:
        try:
            position = int(np.ravel_multi_index(tuple(int(p) for p in e.get("position") or ()), shape))
            log.add_record(position, e)
        except (ValueError, TypeError):  # a record without a usable position
            continue
    return log
