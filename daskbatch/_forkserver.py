"""Imported first by daskbatch's forkserver (see :func:`daskbatch.hygiene.start_forkserver`).

A Ctrl-C in a terminal sends SIGINT to the whole process group, and a batch system
at the end of a job's time sends SIGTERM to every process of the job: the driver,
the forkserver, the LocalCluster's worker processes and the probe. Only the driver
acts on them: it records the stop in the store and shuts its workers down in order
(a worker that does not stop in time is killed). Workers that acted on their own
would print a KeyboardInterrupt traceback each, or die under their nannies, which
then restart them, while the forkserver they fork from is gone. So the server
ignores both signals, and every process forked from it inherits that. The server
is started with both blocked, so that one that comes during its start stays
pending until it is ignored here.

Anywhere else (the module imported by other means) this does nothing.
"""

from __future__ import annotations

import functools
import os
import signal

from .hygiene import FORKSERVER_FLAG, forget_modules, users_modules

if os.environ.pop(FORKSERVER_FLAG, None):
    # the user's own modules, as the server holds them once its preload is done: each
    # forked process imports them afresh (daskbatch.hygiene.start_forkserver)
    @functools.cache
    def _users() -> tuple[str, ...]:  # listed in the server, before its first fork
        return tuple(users_modules())

    os.register_at_fork(before=_users, after_in_child=lambda: forget_modules(_users()))
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    # distributed's log in the workers: what a worker logs before its Worker object
    # exists and after it closes (its Worker sets its own level in between, see
    # daskbatch.cluster.quiet_level), unless the user configured distributed's logging
    import logging

    import distributed  # noqa: F401  (sets up distributed's logging, as in any process)

    from .cluster import quiet_level

    _level = quiet_level()
    if _level is not None:
        for _handler in logging.getLogger("distributed").handlers:
            if isinstance(_handler, logging.StreamHandler):
                _handler.setLevel(_level)
