"""The writer lock of a store: one run writes a store at a time, on any host.

A run holds an exclusive ``flock`` on ``.daskbatch/lock`` in the store (a plain
file, invisible to Zarr and xarray) from its first check of the store to its end.
The file holds the holder's host, pid, start time and command, the run's progress
for ``daskbatch status``, and a lease: ``heartbeat`` (UTC time) and
``lease_seconds``. It is emptied when the run ends.

Across hosts (a store on NFS or a parallel filesystem, written by a driver on one
node and then by a driver on another) ``flock`` is not to be trusted and a pid
cannot be checked, so the lease decides there: a lock whose holder names another
host is honoured while its heartbeat is younger than its lease, and taken over,
with a warning, once it is older (that run was killed, or its node is gone). A lock
of this host is decided as before, by ``flock`` (or, on a filesystem without it, by
whether its pid still runs). The heartbeat's age is measured from the later of its
``heartbeat`` and the file's modification time (set by the file server's clock on
NFS; the only one a holder written by an older daskbatch has), so a holder whose
clock runs behind is not taken over early; clocks that differ by a good part of the
lease (60 s by default, ``daskbatch.lease.seconds``) defeat it.

The holder renews the heartbeat every quarter of its lease from a small daemon
thread of :class:`StoreLock` (the progress that a run publishes between blocks
stops during a long block; the thread does not). How it writes: the whole document,
padded to a fixed size, in one ``pwrite`` at offset 0 of the lock file's open
descriptor, then ``fsync`` (which sends it to an NFS server at once). Replacing the
file (write aside, rename) would give the path a new inode, away from the ``flock``
held on the old one's descriptor, and a second file (a ``lease.json`` beside it)
would be a second document to keep in step with the holder's; one small write in
place keeps the lock, its holder and its lease one file. The padding means a
shorter document never leaves the tail of a longer one behind (no ``truncate``, so
no moment at which a reader sees an empty file), and a reader that parses a
document caught half-written reads it again. Before each heartbeat the thread reads
the document back: one that names another holder (or none: that run has released it
since) means this run's lock was taken over (its heartbeats did not arrive in time),
which it logs as an error; from then on it writes nothing to the lock file, and
:meth:`StoreLock.check` (before the driver writes the provenance) and the block tasks
(:func:`daskbatch.holder.check_holder`) stop the run before it changes the store again.
The thread holds no lock that a ``fork`` could catch: a fork waits for a heartbeat
being written to end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import shutil
import socket
import stat
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import warmup
from .errors import ConfigError, DaskbatchError, StoreError, StoreLockedError, StoreWriteError
from .fstools import link_message
from .holder import LockLostError, identity, is_empty, lost_message, taken_message
from .holder import read_doc as _read_doc
from .holder import same_holder as _same_holder
from .log import logger

__all__ = ["StoreLock", "hostname", "threads_besides_heartbeats"]

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

    A lock naming another host is held while its heartbeat is fresh (see the
    module): it is taken over once the heartbeat is older than the holder's lease,
    with a warning naming it; until then a run is refused, and the refusal says when
    the lock will be taken over. While it holds the lock, a daemon thread renews the
    heartbeat every quarter of :attr:`lease` seconds (``daskbatch.lease.seconds``).

    Neither ``.daskbatch`` nor the lock file is followed through a symbolic link, and
    a lock file that is not a regular file is refused: :class:`StoreError` naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._doc: dict[str, Any] = {}
        #: the holder of a lock of this host whose run had ended (its lock taken over)
        self.previous: dict[str, Any] | None = None
        #: the holder of another host's lock taken over because its heartbeat was stale
        self.taken_over: dict[str, Any] | None = None
        #: seconds of this run's lease (set when the lock is taken)
        self.lease: float = 0.0
        self._size = _LOCK_SIZE  # the longest document written: shorter ones are padded to it
        self._mutex = threading.Lock()  # one write at a time (heartbeat, progress, release, fork)
        self._stop = threading.Event()
        self._thread: _Heartbeat | None = None
        self._lost = False  # another run took this lock over: write nothing more
        self._lost_to: dict[str, Any] = {}  # its document ({}: released since)

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
            doc = _read_doc(fd)
            if got is False:
                return _with_age(doc or {"host": "?", "pid": "?", "start": "?"}, fd)
            if doc and doc.get("host") != hostname():  # another host: its lease says
                return _with_age(doc, fd)
            if got is None and doc and _alive_here(doc):
                return _with_age(doc, fd)
            return None
        finally:
            os.close(fd)

    def check_free(self) -> None:
        """:class:`StoreLockedError` naming the holder, as :meth:`acquire` would, when
        another run holds the lock (a stale holder does not count); takes nothing."""
        doc = self.holder()
        if doc is not None and not doc.get("stale"):
            age, lease = doc.get("heartbeat_age"), doc.get("lease_seconds")
            foreign = doc.get("host") != hostname()
            store = self.path.parent.parent
            has_flock = _has_flock(self.path.parent)
            raise StoreLockedError(
                _held_message(store, self.path, doc, has_flock, age=age, lease=lease, foreign=foreign)
            )

    def acquire(self) -> StoreLock:
        """Take the lock; :class:`StoreLockedError` naming the holder if another run has it.

        Creates the store folder and ``.daskbatch`` when missing (and removes them
        again when the lock cannot be taken). A file system error (a full disk, a path
        where no folder can be made) is one :class:`StoreError` naming the path. A
        ``daskbatch.lease.seconds`` that is not a positive number is a
        :class:`ConfigError` naming it.
        """
        store = self.path.parent.parent
        made: list[Path] = []
        fd: int | None = None
        try:
            self.lease = lease_seconds()
            fd = self._open(store, made)
            got = _try_flock(fd)
            doc = _read_doc(fd)
            foreign = bool(doc) and doc.get("host") != hostname()
            age, its_lease = _heartbeat_age(doc or {}, fd), _lease_of(doc or {}, self.lease)
            if got is not False and foreign and age < its_lease and _in_batch_job():
                # the next job of a chain, its driver on another node: the run before it may
                # have been killed a moment ago (walltime). A live run renews its heartbeat
                # within a quarter lease, a killed one never again
                doc, age = _wait_for_lease(store, fd, doc or {}, age, its_lease, self.path, self.lease)
                foreign = bool(doc) and doc.get("host") != hostname()
            if (
                got is False
                or (foreign and age < its_lease)
                or (got is None and not foreign and doc and _alive_here(doc))
            ):
                info = {"age": age, "lease": its_lease, "foreign": foreign}
                raise StoreLockedError(_held_message(store, self.path, doc or {}, got is False, **info))
            self.previous = None if foreign else doc or None  # a holder that is gone
            self.taken_over = doc if foreign else None
            me = {
                "host": hostname(),
                "pid": os.getpid(),
                "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:300],
                "heartbeat": _utc_now(),
                "lease_seconds": self.lease,
            }
            self._fd, self._doc, self._lost = fd, me, False
            # padded over the old document, not emptied first: never an empty file for a reader
            self._size = max(_LOCK_SIZE, os.fstat(fd).st_size)
            self._write()
            os.fsync(fd)
            if foreign:
                self._confirm_takeover(store, doc or {}, age, its_lease)
            self._start_heartbeat()
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

    def _confirm_takeover(self, store: Path, old: Mapping[str, Any], age: float, lease: float) -> None:
        """After taking over another host's stale lock: warn, and make sure that no run
        on a third host took it over at the same moment (the last document written
        wins: a run that reads another's document back a moment later gives way)."""
        time.sleep(min(1.0, lease / 10))
        now = _read_doc(self._fd) if self._fd is not None else None
        if now is not None and not _same_holder(now, self._doc):
            fd = self._fd
            age = _heartbeat_age(now, fd) if fd is not None else 0.0
            info = {"age": age, "lease": _lease_of(now, self.lease), "foreign": now.get("host") != hostname()}
            raise StoreLockedError(_held_message(store, self.path, now, False, **info))
        logger.warning(
            f"took over the lock of host {old.get('host', '?')} pid {old.get('pid', '?')}: its heartbeat "
            f"is {age:.0f} s old (lease {lease:g} s)"
        )

    def _write(self) -> None:
        # one write of a fixed size: a reader never sees a half-replaced document, nor
        # the tail of a longer one
        text = json.dumps(self._doc)
        self._size = max(self._size, len(text))
        os.pwrite(self._fd, text.ljust(self._size).encode(), 0)

    def update(self, **progress: Any) -> None:
        """Publish the run's progress (done, rate, ETA, ...) for ``daskbatch status``."""
        with self._mutex:
            # never over the document of a run that took the lock over (it would undo that)
            if self._fd is None or self._lost or self._taken() is not None:
                return
            self._doc["progress"] = {**progress, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._doc["heartbeat"] = _utc_now()
            with contextlib.suppress(OSError):  # a full disk must not stop the run here
                self._write()

    def heartbeat(self) -> bool:
        """Renew the lease now; False once the lock is released or was taken over.

        The heartbeat thread calls this every quarter of the lease. A write that fails
        (a full disk, a server that does not answer) is tried again at the next one.
        """
        with self._mutex:
            if self._fd is None or self._lost or self._taken() is not None:
                return False
            self._doc["heartbeat"] = _utc_now()
            with contextlib.suppress(OSError):
                self._write()
                os.fsync(self._fd)  # to the file server now, where other hosts read it
            return True

    def _taken(self) -> dict[str, Any] | None:
        """With the mutex held: the document of the run that took this lock over (``{}``
        if it has released it since: an empty file), or None while this run holds it.
        The first time, it is logged as an error and nothing is written from then on."""
        assert self._fd is not None
        if self._lost:
            return self._lost_to
        now = _read_doc(self._fd)
        if now is None and not is_empty(self._fd):
            return None  # caught half-written every time: read again at the next heartbeat
        if now is not None and _same_holder(now, self._doc):
            return None
        self._lost, self._lost_to = True, now or {}
        logger.error(taken_message(str(self.path.parent.parent), self._lost_to, self.lease))
        return self._lost_to

    def check(self) -> None:
        """:class:`~daskbatch.holder.LockLostError` when another run took this lock over
        (this run's heartbeat did not reach the store within its lease: a process
        stopped, a node cut off from the file server), so that the run stops before it
        writes to the store again; the heartbeat thread finds that too."""
        with self._mutex:
            if self._fd is None:
                return
            taken = self._taken()
            if taken is not None:
                raise LockLostError(lost_message(str(self.path.parent.parent), self._doc, taken))

    @property
    def identity(self) -> tuple[Any, ...]:
        """(host, pid, start) of this run's holder document, as block tasks check it."""
        return identity(self._doc)

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._thread = _Heartbeat(self, self._stop, max(0.05, self.lease / 4))
        self._thread.start()
        _HOLDING.add(self)

    def release(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)
        _HOLDING.discard(self)
        with self._mutex:
            if self._fd is None:
                return
            if not self._lost:  # the document of a run that took the lock over stays
                with contextlib.suppress(OSError):  # a full disk: the lock still goes with the fd
                    os.ftruncate(self._fd, 0)
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Heartbeat(threading.Thread):
    """Renews a held lock's lease every ``interval`` seconds until ``stop`` is set."""

    def __init__(self, lock: StoreLock, stop: threading.Event, interval: float) -> None:
        super().__init__(name="daskbatch-lock-heartbeat", daemon=True)
        self.lock, self.stop, self.interval = lock, stop, interval

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            if not self.lock.heartbeat():
                return


#: the locks this process holds, whose heartbeat threads a fork waits for
_HOLDING: weakref.WeakSet[StoreLock] = weakref.WeakSet()


def _before_fork() -> None:
    for lock in list(_HOLDING):
        lock._mutex.acquire()


def _after_fork_in_parent() -> None:
    for lock in list(_HOLDING):
        with contextlib.suppress(RuntimeError):
            lock._mutex.release()


def _after_fork_in_child() -> None:
    # a forked child (the probe) neither renews nor releases its parent's lock, nor keeps
    # it: its copy of the descriptor is closed (never unlocked: that would free the
    # parent's flock too), so that a child outliving a killed driver does not hold it
    for lock in list(_HOLDING):
        lock._mutex = threading.Lock()
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
        lock._fd, lock._thread = None, None
    _HOLDING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )


def threads_besides_heartbeats() -> int:
    """:func:`threading.active_count` without the threads a ``fork`` cannot catch
    holding a lock, so a process whose only other threads they are may fork safely:
    the heartbeat threads of held store locks (a fork waits for a heartbeat being
    written), Zarr's I/O loop and its executor's threads (idle between the calls of
    the thread that forks, and reset by Zarr in a forked child) and the thread that
    imports what a run's result needs (:mod:`daskbatch.warmup`: a fork waits for it).
    """
    zarr_threads = _zarr_threads()
    return sum(
        1
        for t in threading.enumerate()
        if not isinstance(t, _Heartbeat) and t not in zarr_threads and t.name != warmup.THREAD_NAME
    )


def _zarr_threads() -> set[threading.Thread]:
    """The threads Zarr runs in this process (its I/O loop, the loop's executor)."""
    import sys

    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return set()
    found: set[threading.Thread] = set()
    io = (getattr(sync, "iothread", None) or [None])[0]
    if isinstance(io, threading.Thread):
        found.add(io)
    loop = (getattr(sync, "loop", None) or [None])[0]
    for executor in (getattr(sync, "_executor", None), getattr(loop, "_default_executor", None)):
        found.update(getattr(executor, "_threads", ()))
    return found


def hostname() -> str:
    """This host's name, as the lock file records it (the UTS namespace's name)."""
    return socket.gethostname()


def lease_seconds() -> float:
    """``daskbatch.lease.seconds``: how long a lock stays valid without a heartbeat."""
    from . import config

    value = config.get("lease.seconds")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"the setting daskbatch.lease.seconds={value!r} is not a positive number of seconds; set "
            "it (dask.config.set, a dask config file, or DASK_DASKBATCH__LEASE__SECONDS) to e.g. 60"
        )
    return value


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


#: the longest a run waits for another host's lease (seconds), whatever that lease
MAX_LEASE_WAIT = 600.0


def _in_batch_job() -> bool:
    """Whether this process runs in a SLURM or PBS batch job (a chain's next job waits
    for a lease; a user at a terminal or notebook is answered at once)."""
    return bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"))


def _wait_for_lease(
    store: Path, fd: int, doc: dict[str, Any], age: float, lease: float, path: Path, own_lease: float
) -> tuple[dict[str, Any], float]:
    """Wait while another host's lock is within its lease: until its holder renews its
    heartbeat (a live run: it is refused) or the lease runs out (a run that was killed:
    its lock is taken over). At most one lease, and never longer than the longer of this
    run's lease and :data:`MAX_LEASE_WAIT` (a holder promising a longer one is refused).
    Returns the holder's document and age; a lock file removed or replaced meanwhile is
    a :class:`StoreLockedError`."""
    logger.warning(
        f"store {str(store)!r} is locked by a run on host {doc.get('host', '?')} "
        f"(pid {doc.get('pid', '?')}), last heartbeat {age:.0f} s ago: waiting up to "
        f"{max(0.0, lease - age):.0f} s for its next heartbeat (a run that lives) or the end of its "
        f"lease of {lease:g} s (a run that was stopped)"
    )
    started = time.monotonic()
    deadline = started + min(max(0.0, lease - age) + 0.5, max(own_lease, MAX_LEASE_WAIT))
    before = (doc.get("heartbeat"), _mtime(fd))
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.05, lease / 40)))
        try:
            same_file = os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
        except OSError:
            same_file = False
        if not same_file:
            raise StoreLockedError(
                f"store {str(store)!r}: its lock file {str(path)!r} was removed or replaced while this run "
                "waited for it; run the same command again (`daskbatch status` shows who holds it)"
            )
        now = _read_doc(fd) or {}
        age = _heartbeat_age(now, fd)
        renewed = (now.get("heartbeat"), _mtime(fd)) != before
        if renewed or not _same_holder(now, doc) or age >= lease:
            # renewed (or another run took it): refused; past its lease: taken over
            return now, min(age, lease * 0.99) if renewed else age
    if time.monotonic() - started >= lease:
        # a whole lease watched without a renewal: stopped, whatever its clock says (a
        # heartbeat dated ahead of this host's clock reads as fresh for ever)
        return doc, lease
    return doc, _heartbeat_age(doc, fd)


def _seconds_ahead(doc: Mapping[str, Any]) -> float:
    """How far the holder's ``heartbeat`` is ahead of this host's clock (0 when behind)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        beat = datetime.fromisoformat(str(doc["heartbeat"]))
        if beat.tzinfo is not None:
            return max(0.0, beat.timestamp() - time.time())
    return 0.0


def _mtime(fd: int) -> float:
    with contextlib.suppress(OSError):
        return os.fstat(fd).st_mtime
    return 0.0


def _lease_of(doc: Mapping[str, Any], default: float) -> float:
    """The lease a holder promised to renew within (``default`` for an older holder)."""
    value = doc.get("lease_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return default


def _heartbeat_age(doc: Mapping[str, Any], fd: int) -> float:
    """Seconds since the holder's last sign of life: the later of its ``heartbeat``
    and the lock file's modification time (all a holder without a heartbeat has)."""
    last = 0.0
    with contextlib.suppress(OSError):
        last = os.fstat(fd).st_mtime
    with contextlib.suppress(KeyError, TypeError, ValueError):
        beat = datetime.fromisoformat(str(doc["heartbeat"]))
        if beat.tzinfo is not None:
            last = max(last, beat.timestamp())
    return max(0.0, time.time() - last)


def _with_age(doc: dict[str, Any], fd: int) -> dict[str, Any]:
    """The holder document with ``heartbeat_age`` (seconds), its lease, and ``stale``:
    whether it is another host's whose heartbeat is older than its lease."""
    age = _heartbeat_age(doc, fd)
    lease = _lease_of(doc, lease_seconds())
    foreign = doc.get("host") != hostname()
    return {**doc, "heartbeat_age": round(age, 1), "lease_seconds": lease, "stale": foreign and age >= lease}


def _has_flock(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has file locks, tried on a file of its own (never
    on the lock file, which a run starting this moment may be taking)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".flock-", dir=folder)
    except OSError:
        return True  # cannot tell: the message for the common case
    try:
        return _try_flock(fd) is not None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


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


def _held_message(
    store: Path,
    lock: Path,
    who: Mapping[str, Any],
    has_flock: bool,
    age: float | None = None,
    lease: float | None = None,
    foreign: bool = False,
) -> str:
    """Why a run is refused: who holds the lock, and what to do about it (one line)."""
    host, pid = who.get("host", "?"), who.get("pid", "?")
    where = shlex.quote(str(store))
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    ahead = _seconds_ahead(who)
    if age is not None and ahead > 1:
        beat = f", last heartbeat dated {ahead:.0f} s ahead of this host's clock"
    text = (
        f"store {str(store)!r} is being written by another run: host {host}, pid {pid}, started "
        f"{who.get('start', '?')}{beat}. Wait for it to finish (`daskbatch status {where}` shows its "
        "progress), or stop that run"
    )
    if foreign and age is not None and lease is not None:
        if age >= lease:  # stale, but its file lock is held: a process that lives
            return (
                f"{text}; its heartbeat is older than its lease of {lease:g} s, yet its file lock is "
                "held: that run may be stopped or hung"
            )
        return (
            f"{text}; a lock of another host is taken over once its heartbeat is older than its "
            f"lease of {lease:g} s (that run looks stopped then)"
        )
    if has_flock:
        return text + "; a lock left by a run that was killed is taken over automatically"
    held = f"while pid {pid} runs on this host ({host})"
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
    if doc.get("host") != hostname():
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
