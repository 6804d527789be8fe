"""Imports done while a run's workers compute: what reading its result will need.

A run whose blocks compute in other processes leaves its driver waiting for them. A
run's reductions come back as an xarray Dataset, and importing xarray (and pandas)
costs about a quarter of a second: a short run paid it after its last block, when
its result was read. :func:`import_in_background` imports such modules in a thread
of the driver while it waits, once the workers exist.

A fork of the driver while that thread imports would copy its import locks held, and
a child that imported one of those modules would wait forever. So any fork of this
process waits until the imports are done (a handler of ``os.register_at_fork``): a
fresh pool of forked workers (after a timeout ended one) starts at most that much
later, and the thread does not keep the next run from forking
(:func:`daskbatch.lock.threads_besides_heartbeats` leaves it out). Code of the driver
that needs such a module waits for :func:`imports_done` first: a thread that imports a
module while another one's import of it fails gets the half-made module.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Sequence

__all__ = ["THREAD_NAME", "import_in_background", "imports_done"]

#: the name of the thread that imports
THREAD_NAME = "daskbatch-imports"
#: set when no background import is in progress
_idle = threading.Event()
_idle.set()
_state = threading.Lock()
_fork_hooked = False


def import_in_background(modules: Sequence[str]) -> threading.Thread | None:
    """Import ``modules`` in a daemon thread (those not imported yet); returns it, or
    None when there is nothing to import or another such import is under way.

    An import that fails is left to the code that needs the module (it raises there,
    as it would have).
    """
    global _fork_hooked
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return None
    with _state:
        if not _idle.is_set():
            return None
        if not _fork_hooked and hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_before_fork)
            _fork_hooked = True
        _idle.clear()
    thread = threading.Thread(target=_import, args=(missing,), name=THREAD_NAME, daemon=True)
    try:
        thread.start()
    except BaseException:
        _idle.set()
        raise
    return thread


def imports_done(timeout: float | None = None) -> bool:
    """Wait until no background import is under way; whether none is."""
    return _idle.wait(timeout)


def _import(names: Sequence[str]) -> None:
    try:
        for name in names:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
    finally:
        _idle.set()


def _before_fork() -> None:
    """Before any fork of this process: no import half done in the importing thread."""
    if threading.current_thread().name != THREAD_NAME:
        _idle.wait(60.0)
