"""Parsing Python source safely beside other threads.

CPython 3.11 before 3.11.9 keeps one counter per interpreter while it turns a parse
into ``ast`` objects (gh-106905): two threads parsing at once can fail with
``SystemError: AST constructor recursion depth mismatch``. Parses happen in threads
daskbatch does not own too: ``inspect.signature`` of a compiled function parses its
text signature (importing ``numpy.ma`` does, which distributed does when a worker first
sends an array), and so do :mod:`traceback`'s ``^^^`` markers.

Every parse of the package's, and every :func:`inspect.getsource` (a class's parses
its file), takes :data:`LOCK` and is tried again when that error shows another thread's
parse got in between (a parse is a pure function of its text). The package's other
parses (:mod:`traceback` formatting) take the lock too.
"""

from __future__ import annotations

import ast
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LOCK", "getsource", "parse"]

LOCK = threading.RLock()

_MISMATCH = "AST constructor recursion depth mismatch"
_TRIES = 20  # each a fresh start: another thread gets into one now and then
_T = TypeVar("_T")


def _retried(func: Callable[[Any], _T], arg: Any) -> _T:
    for attempt in range(_TRIES):
        try:
            with LOCK:
                return func(arg)
        except SystemError as e:
            if _MISMATCH not in str(e) or attempt == _TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def parse(source: str) -> ast.Module:
    """:func:`ast.parse`, one thread at a time, again if another's parse got in."""
    return _retried(ast.parse, source)


def getsource(obj: Any) -> str:
    """:func:`inspect.getsource`, one thread at a time, again if another's parse got in."""
    return _retried(inspect.getsource, obj)
