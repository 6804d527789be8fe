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

import os
import signal

from .hygiene import FORKSERVER_FLAG, FORKSERVER_FRESH, forget_modules

if os.environ.pop(FORKSERVER_FLAG, None):
    # the user's own modules it preloads: each forked process imports them afresh
    _fresh = [m for m in os.environ.pop(FORKSERVER_FRESH, "").split(",") if m]
    if _fresh:
        os.register_at_fork(after_in_child=lambda: forget_modules(_fresh))
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
