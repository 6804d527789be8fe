"""The ``daskbatch`` logger: what daskbatch tells its user, on standard error.

Library code logs through :data:`logger` (or ``logging.getLogger(__name__)`` in a
module of the package) instead of printing. Unless the user configured logging for
it, an INFO record shows on standard error as one line prefixed ``daskbatch: ``,
the form these messages have always had, in a terminal, a log file and a notebook
alike. Like distributed, which sets up its own loggers on import, this module adds
its handler when it is imported (:func:`setup_logging`); unlike distributed, it
leaves ``propagate`` on, so records also reach the user's own handlers.

The user has configured logging for daskbatch, and the handler added here keeps
quiet, when a record meets a handler of their own on the way up from its logger to
the root: any handler on ``daskbatch`` or a logger below it (including the one
distributed adds for a ``daskbatch`` entry in dask's ``logging`` config), or, on the
root logger, one that writes to standard error or standard output at the record's
level (``logging.basicConfig()``). Root handlers that write elsewhere (a file, or
pytest's capture) leave the line on standard error. The level is the user's too:
``logging.getLogger("daskbatch").setLevel(logging.WARNING)`` silences the INFO
lines; a level set before daskbatch is imported is kept, otherwise it is INFO.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FORMAT", "logger", "setup_logging"]

#: how the default handler formats a record
FORMAT = "daskbatch: %(message)s"

#: the package's logger; modules of daskbatch log through it or a child of it
logger = logging.getLogger("daskbatch")


class _DefaultHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or a test may
    replace it), unless the user's own handlers show the record (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(_unless_shown_elsewhere)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _terminal(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream
    return any(stream is s for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) if s is not None)


def _unless_shown_elsewhere(record: logging.LogRecord) -> bool:
    """False when a handler of the user's takes ``record`` (see the module)."""
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, _DefaultHandler):
                continue
            if current is not logging.root:
                return False
            if _terminal(handler) and record.levelno >= handler.level:
                return False
        if not current.propagate:
            break
        current = current.parent
    return True


def setup_logging() -> logging.Logger:
    """Give the ``daskbatch`` logger its default handler (once) and, when no level is
    set on it, the INFO level; returns the logger. Called when this module is
    imported."""
    if not any(isinstance(h, _DefaultHandler) for h in logger.handlers):
        logger.addHandler(_DefaultHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


setup_logging()
