"""Who holds a store's lock, read from its lock file without taking the lock.

:mod:`daskbatch.lock` writes the holder document (host, pid, start, heartbeat, ...)
into ``.daskbatch/lock``; this module only reads it. A run's block tasks read it too,
in whichever process runs them (a worker on another node included), before they
change the store: a run whose lock another run took over (see
:meth:`~daskbatch.lock.StoreLock.check`) must write nothing more, or two runs would mix
their blocks and their provenance in one store. The block tasks import this module and
not :mod:`daskbatch.lock`, which a worker never needs.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import StoreLockedError

__all__ = ["LockLostError", "check_holder", "identity", "same_holder"]

#: how often a reader reads a document again that it caught half-written
READ_TRIES = 3
#: what names a holder: a run on a host, its process and when it took the lock
_IDENTITY = ("host", "pid", "start")


class LockLostError(StoreLockedError):
    """This run's lock on its store was taken over by another run (its heartbeat did
    not reach the store within its lease): it stops, and writes nothing more."""


def identity(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """The holder named by a lock document: (host, pid, start)."""
    return tuple(doc.get(k) for k in _IDENTITY)


def same_holder(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return identity(a) == identity(b)


def read_fd(fd: int) -> dict[str, Any] | None:
    """The holder document in an open lock file, or None."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        doc = json.loads(data.decode().strip() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_empty(fd: int) -> bool:
    """Whether an open lock file holds no document (nobody holds the lock)."""
    try:
        return not os.pread(fd, 64, 0).strip()
    except OSError:
        return True


def read_doc(fd: int) -> dict[str, Any] | None:
    """The holder document in an open lock file, or None; a document caught while
    another host rewrites it (not JSON) is read again, a few times."""
    for attempt in range(READ_TRIES):
        doc = read_fd(fd)
        if doc is not None:
            return doc
        if is_empty(fd):
            return None  # nobody holds it
        if attempt + 1 < READ_TRIES:
            time.sleep(0.05)
    return None


def holder_now(path: Path) -> dict[str, Any] | None:
    """The holder document of the lock file at ``path``; ``{}`` when the file is empty
    or gone (nobody holds the lock), None when it cannot be told (a document caught
    half-written every time it was read, an error reading it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError:
        return None
    try:
        doc = read_doc(fd)
        if doc is None:
            return {} if is_empty(fd) else None
        return doc
    finally:
        os.close(fd)


def _who(now: Mapping[str, Any]) -> str:
    if not now:
        return "another run took it over and has released it since"
    started = now.get("start", "?")
    return f"host {now.get('host', '?')} pid {now.get('pid', '?')} (started {started}) holds it now"


def lost_message(store: str, mine: Mapping[str, Any] | tuple[Any, ...], now: Mapping[str, Any]) -> str:
    """The error of a run whose lock on ``store`` is held by another run now (or nobody)."""
    host, pid, start = mine if isinstance(mine, tuple) else identity(mine)
    return (
        f"store {store!r}: this run (host {host}, pid {pid}, started {start}) lost its lock: {_who(now)}, "
        "as this run's heartbeat did not reach the store within its lease; this run stops and writes "
        f"nothing more. Once no run holds the store, `daskbatch status {shlex.quote(store)} --verify` "
        "checks it and running again completes it"
    )


def taken_message(store: str, now: Mapping[str, Any], lease: float) -> str:
    """What the heartbeat thread logs when it finds the lock taken over (the run stops at
    its next write to the store, with :func:`lost_message`)."""
    return (
        f"store {store!r}: this run lost its lock: {_who(now)} (this run's heartbeat did not reach "
        f"the store within its lease of {lease:g} s); this run stops before it writes to the store again"
    )


def check_holder(store: str, mine: tuple[Any, ...]) -> None:
    """:class:`LockLostError` unless the lock file of ``store`` still names the holder
    ``mine`` (:func:`identity`); a document that cannot be read counts as still held."""
    now = holder_now(Path(store) / ".daskbatch" / "lock")
    if now is not None and identity(now) != mine:
        raise LockLostError(lost_message(store, mine, now))
