"""The test SLURM itself (tests/slurm_fixture.py): jobs run, finish and can be cancelled."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_fixture import Slurm

pytestmark = pytest.mark.slurm


def test_the_node_is_idle_and_the_environment_points_at_it(slurm: Slurm) -> None:
    assert os.environ["SLURM_CONF"] == str(slurm.conf)
    out = slurm.run(["sinfo", "-h", "-o", "%P %N %c %m %T"]).stdout.split()
    assert out == [f"{slurm.partition}*", slurm.node, str(slurm.cpus), str(slurm.memory_mb), "idle"]


def test_a_batch_job_runs_and_completes(slurm: Slurm, tmp_path: Path) -> None:
    jobid = slurm.sbatch("--wrap", "echo hello from $SLURM_JOB_ID > result.txt", cwd=tmp_path)
    assert slurm.wait_job(jobid, timeout=60) == "COMPLETED"
    assert (tmp_path / "result.txt").read_text() == f"hello from {jobid}\n"
    record = slurm.job(jobid)
    assert record["JobState"] == "COMPLETED"
    assert record["ExitCode"] == "0:0"
    assert record["StdOut"] == str(tmp_path / f"slurm-{jobid}.out")
    assert Path(record["StdOut"]).exists()


def test_a_failing_job_ends_failed(slurm: Slurm, tmp_path: Path) -> None:
    jobid = slurm.sbatch("--wrap", "exit 3", cwd=tmp_path)
    assert slurm.wait_job(jobid, timeout=60) == "FAILED"
    assert slurm.job(jobid)["ExitCode"] == "3:0"


def test_a_cancelled_job_ends_cancelled(slurm: Slurm, tmp_path: Path) -> None:
    started = tmp_path / "started"
    jobid = slurm.sbatch("--wrap", f"touch {started}; sleep 300", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, f"job {jobid} never started: {slurm.job(jobid)}"
        time.sleep(0.2)
    assert slurm.job(jobid)["JobState"] == "RUNNING"
    slurm.run(["scancel", jobid])
    assert slurm.wait_job(jobid, timeout=30) == "CANCELLED"
    assert slurm.jobs() == []


def test_more_jobs_than_cores_run_at_once(slurm: Slurm, tmp_path: Path) -> None:
    # a driver job and its worker jobs must all run on the one small node
    n = slurm.cpus + 2
    ids = [slurm.sbatch("--wrap", f"touch started-{i}; sleep 300", cwd=tmp_path) for i in range(n)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("started-*"))) < n:
        states = [slurm.job(i)["JobState"] for i in ids]
        assert time.monotonic() < deadline, f"not all of {n} jobs started: {states}"
        time.sleep(0.2)
    slurm.cancel_all()
    assert {slurm.wait_job(i) for i in ids} == {"CANCELLED"}
