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
(:func:`job_scratch_lines`, after the user's prologue), removed when the job ends.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["job_scratch_lines", "job_script_lines", "private_scratch", "users_temporary_directory"]


#: the folder each :func:`private_scratch` made -> dask's temporary-directory before it
_USERS_OWN: dict[str, str | None] = {}


@contextlib.contextmanager
def private_scratch() -> Iterator[str]:
    """A new folder of this user's (mode 0700) as dask's ``temporary-directory`` while
    inside, under the one configured (made if missing); removed on exit, and its entries
    taken off ``sys.path``. Folders of this user's runs that were killed (their process
    is gone) are removed as a new one is made."""
    import dask

    before = dask.config.get("temporary-directory", None) or None
    base = os.path.abspath(os.path.expanduser(before)) if before else tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    _remove_stale(base)
    path = tempfile.mkdtemp(prefix=f"daskbatch-scratch-{os.getpid()}-", dir=base)
    _USERS_OWN[path] = before
    try:
        with dask.config.set({"temporary-directory": path}):
            yield path
    finally:
        _USERS_OWN.pop(path, None)
        sys.path[:] = [p for p in sys.path if p != path and not p.startswith(path + os.sep)]
        shutil.rmtree(path, ignore_errors=True)


def users_temporary_directory() -> str | None:
    """dask's ``temporary-directory`` as the user configured it (not the folder a
    :func:`private_scratch` of this process set meanwhile)."""
    import dask

    now = dask.config.get("temporary-directory", None) or None
    return _USERS_OWN.get(now, now) if now is not None else None


def _remove_stale(base: str) -> None:
    """Remove this user's ``daskbatch-scratch-<pid>-*`` folders in ``base`` whose process
    has ended (a run killed outright: its spilled data would stay for good)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        parts = entry.name.split("-")
        if not entry.name.startswith("daskbatch-scratch-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
            continue
        if _alive(int(parts[2])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process now: this user's run has ended
        return False
    return True


def job_script_lines(kind: str, walltime_seconds: int) -> list[str]:
    """The lines daskbatch puts before the user's prologue in a batch job's script.

    ``DASKBATCH_WORKER_DEADLINE`` (Unix seconds) tells the job's workers when the job
    ends: SLURM's own ``SLURM_JOB_END_TIME`` where the installed SLURM sets it, else the
    job's start plus its walltime. A block task does not start a block that would not
    finish before it (see :func:`daskbatch.blocktask.leave_before_deadline`).

    Examples
    --------
    >>> job_script_lines("pbs", 3600)
    ['export DASKBATCH_WORKER_DEADLINE=$(( $(date +%s) + 3600 ))']
    """
    start_plus = f"$(( $(date +%s) + {walltime_seconds} ))"
    if kind == "slurm":
        return [f"export DASKBATCH_WORKER_DEADLINE=${{SLURM_JOB_END_TIME:-{start_plus}}}"]
    return [f"export DASKBATCH_WORKER_DEADLINE={start_plus}"]


def job_scratch_lines(base: str | None = None) -> list[str]:
    """The lines daskbatch puts after the user's prologue in a batch job's script: a
    scratch folder of the job's own on its node, under ``DASK_TEMPORARY_DIRECTORY`` (a
    prologue may set it), else ``base`` (dask's temporary-directory as configured where
    the script is written), else ``TMPDIR`` or ``/tmp``; under ``/tmp`` when that fails;
    the job stops when no folder can be made. It is removed when the job ends. A worker
    given ``--local-directory`` uses that instead.

    Examples
    --------
    >>> job_scratch_lines()[:2]
    ['_db_default="${TMPDIR:-/tmp}"', '_db_base="${DASK_TEMPORARY_DIRECTORY:-$_db_default}"']
    >>> job_scratch_lines("/scratch/me dask")[0]
    "_db_default='/scratch/me dask'"
    """
    default = f"_db_default={shlex.quote(base)}" if base else '_db_default="${TMPDIR:-/tmp}"'
    return [
        default,
        '_db_base="${DASK_TEMPORARY_DIRECTORY:-$_db_default}"',
        '_db_scratch="$(mkdir -p "$_db_base" 2>/dev/null; mktemp -d "$_db_base/daskbatch-scratch-XXXXXXXX" '
        '2>/dev/null || mktemp -d /tmp/daskbatch-scratch-XXXXXXXX)" || exit 1',
        'export DASK_TEMPORARY_DIRECTORY="$_db_scratch"',
        "trap 'rm -rf \"$_db_scratch\"' EXIT",
    ]
