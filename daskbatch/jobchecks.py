"""What a batch system accepts: worker jobs checked before a run starts them, and a
run that stops once every job it submitted was refused (see :mod:`daskbatch.hpc`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ClusterError

__all__ = ["check_threads", "no_folder_left", "slurm_accepts", "wait_for_a_worker"]


#: what sbatch says when it cannot reach SLURM's controller (no judgement of the jobs)
_SLURM_UNREACHABLE = (
    "Unable to contact",
    "configuration source",
    "timed out",
    "connect failure",
    "Zero Bytes",
)


@contextlib.contextmanager
def no_folder_left(folder: Any) -> Iterator[None]:
    """Remove again the folder ``folder`` (and the parents made for it) if it did not
    exist before and is still empty: dask-jobqueue makes a ``log_directory`` when a job
    script is only written, for a check or ``daskbatch plan``."""
    if folder is None:
        yield
        return
    path = Path(os.path.abspath(os.path.expanduser(str(folder))))
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = path.exists()
    try:
        yield
    finally:
        if not existed:
            for d in [path, *path.parents]:
                with contextlib.suppress(OSError):  # not empty: something else wrote there
                    d.rmdir()
                if d == top:
                    break


def check_threads(jq: Any, kernel: Any) -> None:
    """Refuse worker jobs (a :class:`~daskbatch.hpc.JobQueue`) that run several threads per
    worker process for a kernel not declared thread-safe."""
    if (
        jq.processes is not None
        and not kernel.threadsafe
        and jq.cores_per_job
        and jq.processes < jq.cores_per_job
    ):
        raise ClusterError(
            f"JobQueue processes={jq.processes} with cores={jq.cores_per_job} runs "
            f"{jq.cores_per_job // jq.processes} threads per worker, and kernel {kernel.identity!r} is not "
            f"declared thread-safe; use processes={jq.cores_per_job} (the default) or declare it "
            "@daskbatch.kernel(..., threadsafe=True)"
        )


def slurm_accepts(script: str) -> None:
    """Refuse, before anything starts, worker jobs (their ``script``) that SLURM would reject
    (``sbatch --test-only``: a memory or core count no node has, an unknown partition or
    account, a walltime over the partition's limit). Submitted for real, they failed
    in the cluster's event loop and the run waited for a worker that never came."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="daskbatch-test-") as f:
        f.write(script)
        f.flush()
        try:
            r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return  # sbatch could not say: the real submission will
    said = " ".join(line.strip() for line in (r.stderr or r.stdout).splitlines() if line.strip())
    judged = any(w in said for w in ("submission failed", "allocation failure", "nvalid"))
    unreachable = any(w in said for w in _SLURM_UNREACHABLE)
    if r.returncode != 0 and judged and not unreachable:  # else the real submission says
        raise ClusterError(
            f"cluster='slurm': SLURM refuses the worker jobs ({said}); "
            "change the cluster's cores, memory, walltime, queue (partition) or account to what "
            "the site allows (sinfo, sacctmgr show associations user=$USER); nothing was "
            "started or written"
        )


def wait_for_a_worker(client: Any, cluster: Any, kind: str, command: str) -> None:
    """Wait until a worker joins; a :class:`ClusterError` once every job the cluster
    tried to submit was refused by the batch system (none has a job id): it would
    never come, and an unattended run would wait until its own walltime."""
    while True:
        try:
            client.wait_for_workers(1, timeout=2)
            return
        except TimeoutError:
            jobs = list(getattr(cluster, "workers", {}).values())
            if jobs and all(getattr(j, "job_id", "?") is None for j in jobs):
                raise ClusterError(
                    f"cluster={kind!r}: the batch system refused every worker job ({command} failed: "
                    "its message is above); change the cluster's cores, memory, walltime, queue or "
                    "account to what the site allows; the blocks committed so far are kept"
                ) from None
