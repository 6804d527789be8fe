"""Parsing Python source one thread at a time.

CPython 3.11 before 3.11.9 keeps one counter per interpreter while it turns a parse
into ``ast`` objects (gh-106905): two threads parsing at once (the driver computing
blocks in a thread while its main thread takes the code's digests) can fail with
``SystemError: AST constructor recursion depth mismatch``. Every parse of the
package's, and every :func:`inspect.getsource` (a class's parses its file), goes
through here.
"""

from __future__ import annotations

import ast
import inspect
import threading
from typing import Any

_PARSING = threading.RLock()


def parse(source: str) -> ast.Module:
    """:func:`ast.parse`, one thread at a time."""
    with _PARSING:
        return ast.parse(source)


def getsource(obj: Any) -> str:
    """:func:`inspect.getsource`, one thread at a time."""
    with _PARSING:
        return inspect.getsource(obj)
