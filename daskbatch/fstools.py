"""Filesystem steps a store needs to be safe: no links followed, creation in one rename.

- :func:`first_link` finds a symbolic link under a store. daskbatch makes none, so a
  link there was planted: a run refuses the store rather than write (or delete)
  through it, wherever it points. The store path itself may be a link the user made
  to a folder: it is followed, and only what is below it is checked.
- :func:`build_aside` and :func:`put_in_place` make a store atomically: its template
  is written whole into ``.<name>.creating-<pid>`` next to the store, then swapped
  with the store path in one ``rename`` (``renameat2(RENAME_EXCHANGE)`` on Linux). A
  creation stopped at any moment leaves the store path as it was (nothing, or the old
  store of an overwrite) or the complete new store; the temporary it leaves is
  removed by the next run (:func:`remove_stale`) once the process named in its name
  has ended.
- :func:`test_pause` is a hook for tests only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "build_aside",
    "clear_partial",
    "first_link",
    "link_message",
    "put_in_place",
    "remove_stale",
    "test_pause",
]

#: Test hook, used only by tests: ``DASKBATCH_TEST_PAUSE="<point>:<file>"`` makes the
#: process that reaches the named point write its pid to ``<file>`` and wait there up
#: to 120 s, so that a test can stop it at a known moment. Points: ``create-written``
#: (a new store's template is whole in its temporary, the store path untouched) and
#: ``create-swapped`` (the new store is in place, the old contents not yet removed).
PAUSE_ENV = "DASKBATCH_TEST_PAUSE"

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:creating|old)-(?P<pid>\d+)$")


def test_pause(point: str) -> None:
    """The test hook (see :data:`PAUSE_ENV`); nothing unless that variable names ``point``."""
    hook = os.environ.get(PAUSE_ENV)
    if not hook:
        return
    name, _, flag = hook.partition(":")
    if name != point:
        return
    Path(flag).write_text(str(os.getpid()))
    time.sleep(120)


test_pause.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def first_link(root: Path) -> Path | None:
    """The first symbolic link found below ``root`` (not ``root`` itself), or None.

    Reads directories only (``scandir`` says which entries are links without a
    ``stat`` each), never through a link.
    """
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        return Path(entry.path)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def link_message(store: Path, link: Path) -> str:
    """The one line that refuses a store holding a symbolic link."""
    try:
        target = f" (to {os.readlink(link)!r})"
    except OSError:
        target = ""
    return (
        f"store {str(store)!r}: {str(link)!r} is a symbolic link{target}, which daskbatch did not "
        "make and does not follow inside a store; remove the link (or put the folder or file it "
        "points to in its place) and run again"
    )


def _temp(real: Path, kind: str, pid: int | None = None) -> Path:
    return real.parent / f".{real.name}.{kind}-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(real: Path) -> list[Path]:
    """Remove the temporaries that stopped creations of the store at ``real`` left
    (``.<name>.creating-<pid>``, ``.<name>.old-<pid>`` next to it) whose process has
    ended; returns them. A temporary of a process that runs is left alone."""
    removed: list[Path] = []
    found: list[os.DirEntry[str]] = []  # none when its folder cannot be listed (it does not exist)
    with contextlib.suppress(OSError), os.scandir(real.parent) as entries:
        found = [e for e in entries if e.name.startswith(f".{real.name}.")]
    for entry in found:
        m = _TEMP.match(entry.name)
        if m is None or m["name"] != real.name or _alive(int(m["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)  # never follows a link inside
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def build_aside(real: Path) -> Iterator[Path]:
    """A fresh temporary folder next to ``real`` to build a store in; removed (never
    through a link) if the block raises or is interrupted."""
    tmp = _temp(real, "creating")
    if os.path.lexists(tmp):
        _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def put_in_place(
    tmp: Path, real: Path, keep: str | None = None, pause: Callable[[], None] | None = None
) -> None:
    """Put the store built in ``tmp`` at ``real`` in one step, then remove what was there.

    ``keep`` is the path (relative to the store) of a file of the old contents to
    carry over by a hard link, the same file: the writer lock this run holds, so that
    no other run can take it at any moment. ``pause`` is called once the new store is
    in place, before the old contents are removed (the test hook).
    """
    if os.path.lexists(real):
        if keep is not None and os.path.isfile(real / keep) and not os.path.islink(real / keep):
            (tmp / keep).parent.mkdir(parents=True, exist_ok=True)
            os.link(real / keep, tmp / keep)
        if not _exchange(tmp, real):  # rename real aside, then tmp in its place
            old = _temp(real, "old")
            os.rename(real, old)
            try:
                os.rename(tmp, real)
            except OSError:
                with contextlib.suppress(OSError):
                    os.rename(old, real)
                raise
            os.rename(old, tmp)
    else:
        os.rename(tmp, real)
    if pause is not None:
        pause()
    _remove(tmp)  # the old contents (nothing where there was no store)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def clear_partial(tmp: Path) -> None:
    """Remove a ``.partial`` file a stopped export or report left at ``tmp`` (a link
    itself, never what it points to), so that the new one is written afresh.

    Raises :class:`~daskbatch.errors.DaskbatchError` when ``tmp`` is a folder.
    """
    from .errors import DaskbatchError

    if tmp.is_dir() and not tmp.is_symlink():
        raise DaskbatchError(
            f"{str(tmp)!r} is a folder, in the place of the temporary file daskbatch writes "
            "before renaming it into place; remove it or write to another path"
        )
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
