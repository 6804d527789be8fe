"""The writer lock of a store: one run writes a store at a time.

A run holds an exclusive ``flock`` on ``.daskbatch/lock`` in the store (a plain
file, invisible to Zarr and xarray) from its first check of the store to its end.
The file holds the holder's host, pid, start time and command, and the run's
progress for ``daskbatch status``; it is emptied when the run ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import StoreLockedError

__all__ = ["StoreLock"]

_LOCK_SIZE = 2048


class StoreLock:
    """One writer at a time: an advisory ``flock`` on ``.daskbatch/lock`` in the store.

    The operating system releases the lock when its process ends, however it ends,
    so a lock left by a killed run is free again and is taken over; the file keeps
    the last holder's host, pid and start time, which name the holder when a second
    run is refused (or the run whose lock was taken over). On filesystems without
    ``flock`` the holder's pid is checked instead when it ran on this host.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._doc: dict[str, Any] = {}
        self.previous: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, or None; never takes it."""
        if not self.path.exists():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            got = _try_flock(fd, shared=True)
            if got:
                _unlock(fd)
            doc = _read_holder(self.path)
            if got is False:
                return doc or {"host": "?", "pid": "?", "start": "?"}
            if got is None and doc and _alive_here(doc):
                return doc
            return None
        finally:
            os.close(fd)

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        got = _try_flock(fd)
        doc = _read_holder(self.path)
        if got is False or (got is None and doc and _alive_here(doc)):
            os.close(fd)
            who = doc or {}
            raise StoreLockedError(
                f"store {str(self.path.parent.parent)!r} is being written by another run: host "
                f"{who.get('host', '?')}, pid {who.get('pid', '?')}, started {who.get('start', '?')}. "
                f"Wait for it to finish (`daskbatch status {shlex.quote(str(self.path.parent.parent))}` "
                "shows its progress), or stop "
                "that run; a lock left by a run that was killed is taken over automatically"
            )
        self.previous = doc or None  # a holder that is gone: its lock is stale
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300],
        }
        self._fd = fd
        self._doc = me
        os.ftruncate(fd, 0)
        self._write()
        os.fsync(fd)
        return self

    def _write(self) -> None:
        # one fixed-size write: a reader never sees a half-replaced document
        text = json.dumps(self._doc)
        os.pwrite(self._fd, text.ljust(max(_LOCK_SIZE, len(text))).encode(), 0)

    def update(self, **progress: Any) -> None:
        """Publish the run's progress (done, rate, ETA, ...) for ``daskbatch status``."""
        if self._fd is None:
            return
        self._doc["progress"] = {**progress, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):  # a full disk must not stop the run here
            self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a full disk: the lock still goes with the fd
            os.ftruncate(self._fd, 0)
        _unlock(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int, shared: bool = False) -> bool | None:
    """True: locked; False: someone else holds it; None: this filesystem has no flock."""
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _unlock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text().strip() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _alive_here(doc: Mapping[str, Any]) -> bool:
    """Whether the holder's process still runs (only knowable on its own host)."""
    if doc.get("host") != socket.gethostname():
        return True  # another host: assume it runs
    try:
        os.kill(int(doc["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True
