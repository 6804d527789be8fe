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
import shutil
import socket
import stat
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import DaskbatchError, StoreError, StoreLockedError, StoreWriteError
from .fstools import link_message

__all__ = ["StoreLock"]

_LOCK_SIZE = 2048


class StoreLock:
    """One writer at a time: an advisory ``flock`` on ``.daskbatch/lock`` in the store.

    The operating system releases the lock when its process ends, however it ends,
    so a lock left by a killed run is free again and is taken over; the file keeps
    the last holder's host, pid and start time, which name the holder when a second
    run is refused (or the run whose lock was taken over). On filesystems without
    ``flock`` the lock is held while the process it names runs: on this host its pid
    is checked (a pid that a newer process has reused does not count); a lock naming
    another host is held until the file is deleted, which the refusal says.

    Neither ``.daskbatch`` nor the lock file is followed through a symbolic link, and
    a lock file that is not a regular file is refused: :class:`StoreError` naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._doc: dict[str, Any] = {}
        self.previous: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, or None; never takes it (nor reads through a link)."""
        if self.path.parent.is_symlink():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # none, or not a file daskbatch made: nobody holds it
            return None
        try:
            got = _try_flock(fd, shared=True)
            if got:
                _unlock(fd)
            doc = _read_fd(fd)
            if got is False:
                return doc or {"host": "?", "pid": "?", "start": "?"}
            if got is None and doc and _alive_here(doc):
                return doc
            return None
        finally:
            os.close(fd)

    def acquire(self) -> StoreLock:
        """Take the lock; :class:`StoreLockedError` naming the holder if another run has it.

        Creates the store folder and ``.daskbatch`` when missing (and removes them
        again when the lock cannot be taken). A file system error (a full disk, a path
        where no folder can be made) is one :class:`StoreError` naming the path.
        """
        store = self.path.parent.parent
        made: list[Path] = []
        fd: int | None = None
        try:
            fd = self._open(store, made)
            got = _try_flock(fd)
            doc = _read_fd(fd)
            if got is False or (got is None and doc and _alive_here(doc)):
                raise StoreLockedError(_held_message(store, self.path, doc or {}, has_flock=got is False))
            self.previous = doc or None  # a holder that is gone: its lock is stale
            me = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:300],
            }
            self._fd, self._doc = fd, me
            os.ftruncate(fd, 0)
            self._write()
            os.fsync(fd)
            return self
        except BaseException as e:
            self._fd = None
            if fd is not None:
                _unlock(fd)
                os.close(fd)
            for d in reversed(made):  # what this call made, nothing else
                shutil.rmtree(d, ignore_errors=True)
            if isinstance(e, OSError) and not isinstance(e, DaskbatchError):
                raise _os_error(store, self.path, e) from e
            raise

    def _open(self, store: Path, made: list[Path]) -> int:
        """The lock file, opened without following a link (made with its folders if missing)."""
        hidden = self.path.parent
        if not store.is_dir():  # the store path itself may be a link the user made to a folder
            store.mkdir()
            made.append(store)
        if hidden.is_symlink():
            raise StoreError(link_message(store, hidden))
        if not hidden.exists():
            hidden.mkdir()
            if not made:
                made.append(hidden)
        dfd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(self.path.name, flags, 0o644, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StoreError(link_message(store, self.path)) from None
                if e.errno == errno.EISDIR:
                    raise StoreError(
                        f"store {str(store)!r}: its lock file {str(self.path)!r} is a directory, not a "
                        "file daskbatch made; remove it (daskbatch never deletes data it did not write)"
                    ) from None
                raise
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(
                f"store {str(store)!r}: its lock file {str(self.path)!r} is not a regular file; remove it"
            )
        return fd

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


def _read_fd(fd: int) -> dict[str, Any] | None:
    """The holder document in an open lock file, or None."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        doc = json.loads(data.decode().strip() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The holder document of the lock file at ``path`` (never through a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _held_message(store: Path, lock: Path, who: Mapping[str, Any], has_flock: bool) -> str:
    """Why a run is refused: who holds the lock, and what to do about it (one line)."""
    host, pid = who.get("host", "?"), who.get("pid", "?")
    where = shlex.quote(str(store))
    text = (
        f"store {str(store)!r} is being written by another run: host {host}, pid {pid}, started "
        f"{who.get('start', '?')}. Wait for it to finish (`daskbatch status {where}` shows its "
        "progress), or stop that run"
    )
    if has_flock:
        return text + "; a lock left by a run that was killed is taken over automatically"
    if host == socket.gethostname():
        held = f"while pid {pid} runs on this host ({host})"
    else:
        held = f"until it is removed: daskbatch cannot see whether pid {pid} still runs on host {host}"
    return (
        f"{text}. This filesystem has no file locks, so the lock is held {held}; if you are sure "
        f"no run is writing this store, delete the lock file {str(lock)!r} and run again"
    )


def _os_error(store: Path, lock: Path, e: OSError) -> StoreError:
    """A file system error while taking the lock, as one line naming the path."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(
            f"store {str(store)!r}: cannot write its lock file {str(lock)!r}: the disk is full; make "
            "room and run again",
            e.errno,
        )
    where = e.filename if e.filename else lock
    return StoreWriteError(
        f"store {str(store)!r}: cannot write there ({e.strerror or e}: {str(where)!r}); give a "
        "store path in a writable folder of a regular filesystem",
        e.errno,
    )


def _start_of(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive_here(doc: Mapping[str, Any]) -> bool:
    """Whether the holder's process still runs (only knowable on its own host).

    A process with the holder's pid that started after the lock was taken is another
    process that reuses the pid: the holder is gone.
    """
    if doc.get("host") != socket.gethostname():
        return True  # another host: assume it runs
    try:
        pid = int(doc["pid"])
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError, OverflowError):
        return False
    except PermissionError:
        pass
    started = _start_of(pid)
    try:
        taken = datetime.strptime(str(doc.get("start")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return True
    # the lock's start has whole seconds; the process took it after it started
    return started is None or started <= taken + 2.0
