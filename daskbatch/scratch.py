"""A scratch folder of this user's own for the Dask servers a run starts.

distributed's servers (the scheduler, each nanny and worker) take their scratch folder
from dask's ``temporary-directory`` (by default ``/tmp/dask-scratch-space``, or
``/tmp/dask-scratch-space-<uid>`` when that one is not writable), accept one that exists
already whoever made it, and put it first on ``sys.path``: on a login node shared with
other users, a module planted there by one of them (``gilknocker.py``, which every
server tries to import) runs as this user, in the driver and in every worker. So a
run that starts a cluster gives its servers a folder made for it (``mkdtemp``: mode
0700, under ``temporary-directory`` when that is set), removes it when the cluster
has stopped, and takes its entries off ``sys.path`` again.

Worker jobs of a batch system make theirs on their node in the job script
(:func:`job_script_lines`, which also tells the workers when their job ends), removed
when the job ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["job_script_lines", "private_scratch"]


@contextlib.contextmanager
def private_scratch() -> Iterator[str]:
    """A new folder of this user's (mode 0700) as dask's ``temporary-directory`` while
    inside; removed on exit, and its entries taken off ``sys.path``."""
    import dask

    base = dask.config.get("temporary-directory", None) or None
    path = tempfile.mkdtemp(prefix="daskbatch-scratch-", dir=base)
    try:
        with dask.config.set({"temporary-directory": path}):
            yield path
    finally:
        sys.path[:] = [p for p in sys.path if p != path and not p.startswith(path + os.sep)]
        shutil.rmtree(path, ignore_errors=True)


def job_script_lines(kind: str, walltime_seconds: int) -> list[str]:
    """The lines daskbatch puts before the worker in a batch job's script.

    ``DASKBATCH_WORKER_DEADLINE`` (Unix seconds) tells the job's workers when the job
    ends: SLURM's own ``SLURM_JOB_END_TIME`` where the installed SLURM sets it, else the
    job's start plus its walltime. A block task does not start a block that would not
    finish before it (see :func:`daskbatch.blocktask.leave_before_deadline`). Then a
    scratch folder of the job's own on its node (``DASK_TEMPORARY_DIRECTORY``; a worker
    given ``--local-directory`` uses that instead), removed when the job ends.

    Examples
    --------
    >>> job_script_lines("pbs", 3600)[0]
    'export DASKBATCH_WORKER_DEADLINE=$(( $(date +%s) + 3600 ))'
    >>> job_script_lines("slurm", 60)[1]
    'export DASK_TEMPORARY_DIRECTORY="$(mktemp -d "${TMPDIR:-/tmp}/daskbatch-scratch-XXXXXXXX")"'
    """
    start_plus = f"$(( $(date +%s) + {walltime_seconds} ))"
    if kind == "slurm":
        deadline = f"export DASKBATCH_WORKER_DEADLINE=${{SLURM_JOB_END_TIME:-{start_plus}}}"
    else:
        deadline = f"export DASKBATCH_WORKER_DEADLINE={start_plus}"
    return [
        deadline,
        'export DASK_TEMPORARY_DIRECTORY="$(mktemp -d "${TMPDIR:-/tmp}/daskbatch-scratch-XXXXXXXX")"',
        "trap 'rm -rf \"$DASK_TEMPORARY_DIRECTORY\"' EXIT",
    ]
