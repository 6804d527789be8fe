"""Batch-system clusters (daskbatch.hpc): options, job scripts, spec files, and real SLURM runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pytest

import daskbatch as db
from daskbatch.cluster import parse_cluster
from daskbatch.errors import ClusterError, SpecFileError
from daskbatch.hpc import JobQueue, for_kernel, job_script, lifetime
from daskbatch.specfile import load_spec
from daskbatch.testing import affine, assert_stores_identical, blocks_done, daskbatch_command, slow_square

# --------------------------------------------------------------------------- job scripts


def test_a_slurm_job_script_has_partition_account_walltime_prologue_processes_and_lifetime():
    jq = JobQueue(
        "slurm",
        queue="debug",
        account="proj42",
        cores=4,
        memory="16GB",
        walltime="01:00:00",
        prologue=["module load python", "source env/bin/activate"],
        jobs=2,
        local_directory="$TMPDIR",
        interface="lo",
    )
    script = job_script(jq)
    lines = script.splitlines()
    for directive in (
        "#SBATCH -p debug",
        "#SBATCH -A proj42",
        "#SBATCH -t 01:00:00",
        "#SBATCH --cpus-per-task=4",
    ):
        assert directive in lines, script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    # the prologue runs before the worker starts
    assert lines.index("module load python") < lines.index("source env/bin/activate") < lines.index(worker)
    # one single-threaded worker process per core (the kernel is not thread-safe)
    assert "--nworkers 4" in worker and "--nthreads 1" in worker
    # workers retire 6 minutes (± 90 s) before the job's hour is up
    assert "--lifetime 3240s --lifetime-stagger 90s" in worker
    assert "--local-directory $TMPDIR" in worker and "--interface lo" in worker
    assert worker.startswith(sys.executable)


def test_lifetime_keeps_a_margin_before_the_walltime():
    for walltime in (120, 600, 3600, 86400, 7 * 86400):
        life, stagger = lifetime(walltime)
        assert life - stagger > 0 and life + stagger < walltime
        assert walltime - (life + stagger) >= min(45, walltime / 4)


@pytest.mark.parametrize(
    "jq, expected",
    [
        (
            JobQueue("pbs", queue="workq", account="proj", cores=4, memory="16GB", walltime="1-00:00:00"),
            [
                "#PBS -q workq",
                "#PBS -A proj",
                "#PBS -l select=1:ncpus=4:mem=15GB",
                "#PBS -l walltime=24:00:00",
            ],
        ),
        (
            JobQueue(
                "pbs", cores=8, memory="32GB", walltime="00:30:00", extra={"resource_spec": "nodes=1:ppn=8"}
            ),
            ["#PBS -l nodes=1:ppn=8", "#PBS -l walltime=00:30:00"],
        ),
        (
            JobQueue("sge", queue="all.q", account="proj", cores=4, memory="16GB", walltime="02:00:00"),
            ["#$ -q all.q", "#$ -P proj", "#$ -l h_rt=02:00:00"],
        ),
        (
            JobQueue("lsf", queue="normal", account="proj", cores=4, memory="16GB", walltime="02:30:00"),
            ["#BSUB -q normal", '#BSUB -P "proj"', "#BSUB -n 4", "#BSUB -W 02:30"],
        ),
    ],
    ids=["pbs-select", "pbs-nodes-ppn", "sge", "lsf"],
)
def test_pbs_sge_and_lsf_scripts_are_what_qsub_and_bsub_expect(jq, expected):
    script = job_script(jq)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for line in expected:
        assert line in lines, script
    # every directive comes before the first command, as qsub and bsub read them
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    assert all(not line.startswith(("#PBS", "#$", "#BSUB")) for line in lines[first_command:])
    worker = next(line for line in lines[first_command:] if "distributed.cli.dask_worker" in line)
    assert f"--nworkers {jq.cores}" in worker and "--lifetime " in worker


def test_defaults_come_from_dask_jobqueue_config_with_daskbatch_defaults_on_top():
    site = {
        "jobqueue.slurm.queue": "site-partition",
        "jobqueue.slurm.cores": 8,
        "jobqueue.slurm.memory": "32GB",
        "jobqueue.slurm.walltime": "02:00:00",
        "jobqueue.slurm.job-script-prologue": ["module load site-python"],
    }
    with dask.config.set(site):
        jq = JobQueue("slurm", jobs=3)
        script = job_script(jq)
        assert jq.planned_workers() == 24  # 3 jobs × 8 single-threaded workers
    assert "#SBATCH -p site-partition" in script and "#SBATCH -t 02:00:00" in script
    assert "module load site-python" in script
    assert "--nworkers 8" in script and "--nthreads 1" in script
    assert "--lifetime 6480s --lifetime-stagger 180s" in script


def test_a_thread_safe_kernel_keeps_dask_jobqueues_split_of_processes_and_threads():
    jq = JobQueue("slurm", cores=16, memory="64GB", jobs=2)
    ready = for_kernel(parse_cluster(jq), slow_square)  # threadsafe=True
    assert ready.options.processes is None
    assert "--nworkers 4" in job_script(jq, threadsafe=True) and "--nthreads 4" in job_script(
        jq, threadsafe=True
    )
    assert ready.workers_before_start == 32
    plain = for_kernel(parse_cluster(jq), db.testing.fail_on_multiples)  # not thread-safe
    assert plain.options.processes == 16 and plain.workers_before_start == 32


def test_auto_chunking_plans_for_the_cluster_that_will_exist_and_submits_nothing():
    """jobs × processes workers (or adapt's max), not the one worker that is up first."""
    space = db.Grid(a=np.arange(1000.0))
    for jq, workers in (
        (JobQueue("slurm", cores=2, memory="1GB", jobs=3, walltime="00:10:00"), 6),
        (JobQueue("slurm", cores=2, memory="1GB", adapt={"min": 0, "max": 5}), 10),
    ):
        # without the floor that keeps the driver ahead of many workers (this run is
        # microseconds of work: the floor would rightly make it one or two blocks)
        with dask.config.set({"daskbatch.auto.driver-seconds-per-block": 0}):
            p = db.plan(affine, space, cluster=jq)
        assert p.n_workers == workers
        assert p.n_blocks >= workers
    spec = parse_cluster("slurm", 5)  # n_workers: worker processes, in whole jobs
    with dask.config.set({"jobqueue.slurm.cores": 2, "jobqueue.slurm.memory": "2GB"}):
        ready = for_kernel(spec, db.testing.fail_on_multiples)
        assert ready.options.jobs == 3 and ready.workers_before_start == 6
        assert ready.description == "slurm (3 jobs × 2 worker processes, SLURMCluster, walltime 00:30:00)"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: JobQueue("slurmm"), ["kind='slurmm'", "['slurm', 'pbs', 'sge', 'lsf']"]),
        (
            lambda: JobQueue("slurm", extra={"partition": "x"}),
            ["'partition'", "SLURMCluster", "job_extra_directives"],
        ),
        (lambda: JobQueue("slurm", extra={"queue": "x"}), ["extra={'queue'", "JobQueue(queue=...)"]),
        (lambda: JobQueue("slurm", walltime="1h"), ["walltime='1h'", "'HH:MM:SS'"]),
        (lambda: JobQueue("slurm", walltime="01:75:00"), ["walltime='01:75:00'", "'HH:MM:SS'"]),
        (lambda: JobQueue("slurm", memory="16"), ["memory='16'", "memory='16GB'"]),
        (lambda: JobQueue("slurm", memory=16), ["memory=16", "memory='16GB'"]),
        (lambda: JobQueue("slurm", jobs=2, adapt={"min": 0, "max": 4}), ["jobs=2", "adapt=", "use one"]),
        (lambda: JobQueue("slurm", cores=-4), ["cores=-4", ">= 1"]),
        (lambda: JobQueue("slurm", jobs=0), ["jobs=0", ">= 1"]),
        (lambda: JobQueue("slurm", adapt={"min": -1, "max": 2}), ["adapt['min']=-1", ">= 0"]),
        (lambda: JobQueue("slurm", adapt={"min": 3, "max": 2}), ["min is more than max"]),
        (lambda: JobQueue("slurm", adapt=5), ["adapt=5", "{'min': 0, 'max': 10}"]),
        (lambda: JobQueue("slurm", cores=2, processes=4), ["processes=4", "cores=2"]),
        (lambda: JobQueue("slurm", prologue=[1]), ["prologue=[1]", "module load"]),
        (lambda: parse_cluster(JobQueue("slurm", jobs=2), 4), ["n_workers=4", "jobs="]),
        (
            lambda: for_kernel(
                parse_cluster(JobQueue("slurm", cores=4, memory="4GB", processes=2)),
                db.testing.fail_on_multiples,
            ),
            ["processes=2", "not declared thread-safe", "processes=4"],
        ),
        (lambda: _without("pbs"), ["cluster='pbs' needs PBS's qsub on PATH", "cluster='local'"]),
        (lambda: _without("lsf"), ["cluster='lsf' needs LSF's bsub on PATH"]),
        (
            lambda: for_kernel(parse_cluster(JobQueue("slurm")), affine),
            ["needs cores per job", "jobqueue.yaml"],
        ),
    ],
)
def test_bad_options_are_one_line_naming_the_value_and_the_fix(make, words):
    with pytest.raises(ClusterError) as e:
        make()
    text = str(e.value)
    assert "\n" not in text
    for w in words:
        assert w in text, text


def _without(kind: str) -> None:
    """for_kernel with the batch system's command not on PATH."""
    old = os.environ["PATH"]
    os.environ["PATH"] = os.path.dirname(sys.executable)
    try:
        for_kernel(parse_cluster(JobQueue(kind, cores=1, memory="1GB")), affine)
    finally:
        os.environ["PATH"] = old


def test_sbatch_missing_is_one_line_before_any_store_is_made(tmp_path):
    spec = _spec(tmp_path, "sq.zarr", cluster='[cluster]\nkind = "slurm"\ncores = 1\nmemory = "1GB"\n')
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    r = subprocess.run(
        daskbatch_command("run", str(spec)), capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "cluster='slurm' needs SLURM's sbatch on PATH, and it is not found; run on a login "
        "node of the SLURM cluster (or load its module), or use cluster='local'"
    ), r.stderr
    assert not (tmp_path / "sq.zarr").exists()


def test_import_daskbatch_does_not_import_dask_jobqueue():
    code = "import sys, daskbatch; daskbatch.JobQueue('slurm', jobs=2); print('dask_jobqueue' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False"], r.stderr


# --------------------------------------------------------------------------- spec files

KERNEL = textwrap.dedent(
    """
    import time
    import daskbatch as db

    @db.kernel(outputs={"y": db.Output()})
    def cube(x, delay=0.0):
        time.sleep(delay)
        return x ** 3 + 0.5
    """
)


def _spec(
    tmp_path: Path, store: str, cluster: str = "", n: int = 12, chunk: int = 2, delay: float = 0.0
) -> Path:
    (tmp_path / "kern.py").write_text(KERNEL)
    spec = tmp_path / f"{store}.toml"
    top, tables = (cluster, "") if not cluster.lstrip().startswith("[") else ("", cluster)
    spec.write_text(
        f'{top}kernel = "kern.py:cube"\nstore = "{store}"\nchunk_size = {chunk}\n'
        f'[space]\ntype = "grid"\naxes = {{ x = {{ linspace = [0, 1, {n}] }} }}\n'
        f"[constants]\ndelay = {delay}\n{tables}"
    )
    return spec


def test_a_cluster_table_becomes_a_jobqueue(tmp_path):
    spec = _spec(
        tmp_path,
        "t.zarr",
        cluster=textwrap.dedent(
            """
            [cluster]
            kind = "slurm"
            queue = "normal"
            account = "proj"
            cores = 4
            memory = "16GB"
            processes = 4
            walltime = "01:00:00"
            adapt = {min = 0, max = 10}
            prologue = ["module load python"]
            interface = "ib0"
            local_directory = "$TMPDIR"
            [cluster.extra]
            job_extra_directives = ["--qos=long"]
            """
        ),
    )
    assert load_spec(spec)["cluster"] == JobQueue(
        "slurm",
        queue="normal",
        account="proj",
        cores=4,
        memory="16GB",
        processes=4,
        walltime="01:00:00",
        adapt={"min": 0, "max": 10},
        prologue=("module load python",),
        interface="ib0",
        local_directory="$TMPDIR",
        extra={"job_extra_directives": ["--qos=long"]},
    )
    assert load_spec(_spec(tmp_path, "s.zarr", cluster='cluster = "slurm"\n'))["cluster"] == "slurm"
    assert load_spec(_spec(tmp_path, "l.zarr", cluster='[cluster]\nkind = "local"\n'))["cluster"] == "local"


@pytest.mark.parametrize(
    "table, line, words",
    [
        ('kind = "slurm"\nwalltime = "1h"\n', 11, ["walltime='1h'", "'HH:MM:SS'"]),
        ('kind = "slurm"\nmemory = "16"\n', 11, ["memory='16'", "'16GB'"]),
        ('kind = "slurm"\npartition = "x"\n', 11, ["unknown key 'partition' in [cluster]", "'queue'"]),
        ('kind = "slurmm"\n', 10, ["cluster='slurmm' is not valid", "'slurm', 'pbs', 'sge' or 'lsf'"]),
        ('kind = "local"\ncores = 4\n', 11, ["cluster.cores", "kind = 'local'"]),
        ('queue = "x"\n', 9, ["needs kind = one of"]),
        ('kind = "slurm"\njobs = 2\nadapt = {min = 0, max = 3}\n', 11, ["jobs=2", "use one"]),
        ('kind = "slurm"\n[cluster.extra]\nbogus = 1\n', 12, ["'bogus'", "SLURMCluster"]),
    ],
)
def test_a_bad_cluster_table_names_the_file_the_line_and_the_key(tmp_path, table, line, words):
    spec = _spec(tmp_path, "t.zarr", cluster="[cluster]\n" + table)
    with pytest.raises(SpecFileError) as e:
        load_spec(spec)
    text = str(e.value)
    assert text.startswith(f"{spec}, line {line}: ") and "\n" not in text, text
    for w in words:
        assert w in text, text


# --------------------------------------------------------------------------- any deploy Cluster


def test_a_running_distributed_cluster_object_is_used_and_left_running(tmp_path):
    from distributed import LocalCluster

    space = db.Grid(a=np.arange(20.0))
    ref = db.run(affine, space, tmp_path / "ref.zarr", cluster="serial", chunk_size=4, progress=False)
    assert ref.complete
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        spec = parse_cluster(lc)
        assert spec.name == "deploy" and spec.label == lc.scheduler_address
        assert spec.workers_before_start == 2
        with pytest.raises(ClusterError, match="n_workers cannot be used with a running LocalCluster"):
            parse_cluster(lc, 3)
        r = db.run(affine, space, tmp_path / "on.zarr", cluster=lc, chunk_size=4, progress=False)
        assert r.complete
        assert lc.status.name == "running"
    assert_stores_identical(tmp_path / "ref.zarr", tmp_path / "on.zarr")


# --------------------------------------------------------------------------- a real SLURM


SLURM_TABLE = textwrap.dedent(
    """
    [cluster]
    kind = "slurm"
    queue = "debug"
    cores = 1
    memory = "1GB"
    processes = 1
    {jobs}
    walltime = "00:10:00"
    [cluster.extra]
    log_directory = "{logs}"
    """
)


def _daskbatch(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        daskbatch_command(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


@pytest.mark.slurm
@pytest.mark.parametrize("jobs", ["jobs = 2", "adapt = {min = 0, max = 2}"])
def test_a_sweep_on_slurm_equals_the_same_sweep_in_one_process(slurm, tmp_path, jobs):
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = _spec(tmp_path, "slurm.zarr", cluster=SLURM_TABLE.format(logs=logs, jobs=jobs), n=24, chunk=3)
    ref = _spec(tmp_path, "ref.zarr", n=24, chunk=3)
    try:
        r = subprocess.run(
            daskbatch_command("run", str(spec)), cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{slurm.logs()}"
    finally:
        slurm.cancel_all()
    s = subprocess.run(
        daskbatch_command("run", str(ref), "--cluster", "serial"), cwd=tmp_path, capture_output=True
    )
    assert s.returncode == 0, s.stderr
    assert_stores_identical(tmp_path / "ref.zarr", tmp_path / "slurm.zarr")
    # the workers were SLURM jobs, and they spoke TLS with the run's temporary credentials
    outputs = [p.read_text() for p in sorted(logs.glob("dask-worker-*.err"))]
    # two jobs asked for (the plan line below says so); on a busy machine the run may end
    # while the second still waits in the queue (cancelled then, it writes no log); adaptive: as needed
    assert 1 <= len(outputs) <= 2, outputs
    started = [m.group(1) for o in outputs for m in re.finditer(r"Start worker at: +(\w+)://", o)]
    assert started and set(started) == {"tls"}, outputs  # a job may end before its worker starts
    how = "2 jobs" if jobs.startswith("jobs") else "0-2 jobs (adaptive)"
    assert f"slurm ({how} × 1 worker process, SLURMCluster, walltime 00:10:00)" in r.stdout + r.stderr


@pytest.mark.slurm
def test_a_worker_job_cancelled_mid_run_loses_nothing_and_counts_nothing_twice(slurm, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    n, chunk = 40, 2  # 20 blocks of 2 × 0.5 s: about 10 s on two workers, longer on one
    spec = _spec(
        tmp_path,
        "slurm.zarr",
        cluster=SLURM_TABLE.format(logs=logs, jobs="jobs = 2"),
        n=n,
        chunk=chunk,
        delay=0.5,
    )
    ref = _spec(tmp_path, "ref.zarr", n=n, chunk=chunk)
    # a lost job is replaced 2 s after its worker left (distributed's default: 15 s)
    env = {**os.environ, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s"}
    proc = _daskbatch(["run", str(spec)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 180

        def both_working() -> bool:  # both workers joined, and blocks are being committed
            joined = sum("Registered to:" in p.read_text() for p in logs.glob("*.err"))
            store = tmp_path / "slurm.zarr"
            return joined == 2 and store.exists() and blocks_done(store) >= 3

        while not both_working():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, slurm.logs()
            time.sleep(0.2)
        jobs = slurm.jobs()
        assert len(jobs) == 2, jobs
        slurm.run(["scancel", jobs[0]])
        assert blocks_done(tmp_path / "slurm.zarr") < n // chunk  # cancelled mid-run
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{out}\n{err}\n{slurm.logs()}"
        assert slurm.job(jobs[0])["JobState"] == "CANCELLED"
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm.cancel_all()
    s = subprocess.run(
        daskbatch_command("run", str(ref), "--cluster", "serial"), cwd=tmp_path, capture_output=True
    )
    assert s.returncode == 0, s.stderr
    assert_stores_identical(tmp_path / "ref.zarr", tmp_path / "slurm.zarr")
    status = db.status(tmp_path / "slurm.zarr")
    assert status.complete and status.samples["ok"] == n and sum(status.samples.values()) == n
    # the cancelled job was replaced by a third one, whose worker joined the run
    outputs = [p.read_text() for p in sorted(logs.glob("dask-worker-*.err"))]
    assert len(outputs) == 3, outputs
    assert sum("Registered to:" in o for o in outputs) == 3, outputs


@pytest.mark.slurm
def test_the_dashboard_link_of_a_jobqueue_cluster_is_where_it_listens(slurm, tmp_path):
    """The scheduler listens for its workers on the node's address, its dashboard on
    127.0.0.1 only: the printed link must be the one that answers."""
    import urllib.error
    import urllib.request

    from daskbatch.cluster import start_executor
    from daskbatch.executors import parse_cluster

    jq = db.JobQueue(
        "slurm",
        cores=1,
        memory="1GB",
        processes=1,
        adapt={"min": 0, "max": 1},
        walltime="00:05:00",
        # the user's own scheduler options keep the dashboard's guard
        extra={"log_directory": str(tmp_path), "scheduler_options": {"dashboard_address": "127.0.0.1:0"}},
    )
    with start_executor(parse_cluster(jq, None)) as ex:
        link = ex.dashboard_link
        prefix = ex._cluster.scheduler.extensions["daskbatch-dashguard"].prefix  # from the start
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/[\w-]{32}/status", link or "") and prefix in link, link
        with urllib.request.urlopen(link, timeout=10) as page:
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:  # the login node's other users
            urllib.request.urlopen(link.replace(prefix, ""), timeout=10)
        assert e.value.code == 403
    slurm.cancel_all()


# --------------------------------------------------------------------------- leaving before the walltime

MARKED = textwrap.dedent(
    """
    import os
    import time
    import uuid
    import daskbatch as db

    @db.kernel(outputs={"y": db.Output()})
    def marked(x, delay=0.0, folder=""):
        # a file when a call starts and one when it ends: a call killed half-way leaves only the first
        tag = os.path.join(folder, f"{float(x)!r}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        open(tag + ".start", "w").close()
        time.sleep(delay)
        open(tag + ".done", "w").close()
        return x ** 3 + 0.5
    """
)


def _marked_spec(tmp_path: Path, store: str, n: int, chunk: int, delay: float, cluster: str = "") -> Path:
    (tmp_path / "marked.py").write_text(MARKED)
    folder = tmp_path / f"{store}.calls"
    folder.mkdir()
    spec = tmp_path / f"{store}.toml"
    spec.write_text(
        f'kernel = "marked.py:marked"\nstore = "{store}"\nchunk_size = {chunk}\n'
        f'[space]\ntype = "grid"\naxes = {{ x = {{ linspace = [0, 1, {n}] }} }}\n'
        f'[constants]\ndelay = {delay}\nfolder = "{folder}"\n{cluster}'
    )
    return spec


def _calls(folder: Path) -> tuple[dict[str, int], set[str]]:
    """Finished kernel calls per sample, and the calls that started but never finished."""
    started = {p.name.removesuffix(".start") for p in folder.glob("*.start")}
    done = {p.name.removesuffix(".done") for p in folder.glob("*.done")}
    per_sample: dict[str, int] = {}
    for tag in done:
        x = tag.split("-")[0]
        per_sample[x] = per_sample.get(x, 0) + 1
    return per_sample, started - done


def test_a_block_starts_only_if_it_can_finish_before_the_deadline(monkeypatch):
    from daskbatch.blocktask import DEADLINE_ENV, should_leave, worker_deadline

    now = time.time()
    # a 20 s block needs 20 × 1.25 + 10 = 35 s left
    assert not should_leave(now, now + 36, 20.0)
    assert should_leave(now, now + 34, 20.0)
    assert should_leave(now, now - 5, 1.0)  # past the deadline
    assert not should_leave(now, None, 20.0) and not should_leave(now, now + 1, None)

    class Worker:  # what a worker without --lifetime looks like
        lifetime = None

    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    assert worker_deadline(Worker()) is None  # a local cluster: never leaves
    monkeypatch.setenv(DEADLINE_ENV, str(now + 100))
    assert worker_deadline(Worker()) == pytest.approx(now + 100)
    Worker.lifetime = 30.0  # its --lifetime comes first: counted from its process's start
    import psutil

    assert worker_deadline(Worker()) == pytest.approx(psutil.Process().create_time() + 30.0)
    monkeypatch.setenv(DEADLINE_ENV, "not a time")
    assert worker_deadline(Worker()) == pytest.approx(psutil.Process().create_time() + 30.0)


def test_the_job_script_tells_the_workers_when_the_job_ends():
    script = job_script(
        JobQueue("slurm", cores=1, memory="1GB", walltime="00:02:00", prologue=["module load x"])
    )
    lines = script.splitlines()
    line = "export DASKBATCH_WORKER_DEADLINE=${SLURM_JOB_END_TIME:-$(( $(date +%s) + 120 ))}"
    assert line in lines and lines.index(line) < lines.index("module load x"), script
    # the shell computes it as the job starts
    r = subprocess.run(
        ["bash", "-c", f"{line}; echo $DASKBATCH_WORKER_DEADLINE"], capture_output=True, text=True
    )
    assert abs(int(r.stdout) - (time.time() + 120)) < 5
    pbs = job_script(JobQueue("pbs", cores=1, memory="1GB", walltime="01:00:00"))
    assert "export DASKBATCH_WORKER_DEADLINE=$(( $(date +%s) + 3600 ))" in pbs.splitlines(), pbs


def test_a_worker_near_its_deadline_retires_and_its_block_runs_elsewhere(tmp_path, monkeypatch):
    """Two worker processes on one scheduler; one's job "ends" in 8 s, and a block takes
    about 2 s (the probe's estimate; 2 × 1.25 + 10 s > 8 s): it starts no block, retires,
    and its process exits; the other computes every block, each sample exactly once."""
    from distributed import LocalCluster

    n, chunk, delay = 12, 4, 0.5
    _marked_spec(tmp_path, "on.zarr", n, chunk, delay)
    ref = _marked_spec(tmp_path, "ref.zarr", n, chunk, 0.0)
    monkeypatch.syspath_prepend(str(tmp_path))
    import marked

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    space = db.Grid(x=np.linspace(0, 1, n))
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as lc:
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", lc.scheduler_address, "--nthreads", "1"]
        leaving = subprocess.Popen(
            [*cmd, "--name", "leaving"],
            env={**env, "DASKBATCH_WORKER_DEADLINE": str(time.time() + 8)},
            stderr=subprocess.PIPE,
            text=True,
        )
        staying = subprocess.Popen([*cmd, "--name", "staying"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            with lc.get_client() as client:
                client.wait_for_workers(2, timeout=60)
            folder = tmp_path / "on.zarr.calls"
            r = db.run(
                marked.marked,
                space,
                tmp_path / "on.zarr",
                cluster=lc,
                chunk_size=chunk,
                constants={"delay": delay, "folder": str(folder)},
                progress=False,
            )
            assert r.complete and r.samples["ok"] == n
            # the leaving worker's process ended by itself, gracefully
            err = leaving.communicate(timeout=30)[1]
            assert leaving.returncode == 0, err
            assert "left before this worker must leave" in err and "no new block starts here" in err, err
        finally:
            for p in (leaving, staying):
                if p.poll() is None:
                    p.terminate()
                    p.communicate(timeout=30)
    per_sample, unfinished = _calls(folder)
    assert not unfinished
    # every sample computed once by its block (the probe's first sample may count twice)
    assert len(per_sample) == n and sorted(per_sample.values())[:-1] == [1] * (n - 1), per_sample
    s = subprocess.run(
        daskbatch_command("run", str(ref), "--cluster", "serial"), cwd=tmp_path, capture_output=True
    )
    assert s.returncode == 0, s.stderr
    assert_stores_identical(tmp_path / "ref.zarr", tmp_path / "on.zarr")


@pytest.mark.slurm
def test_workers_leave_before_their_walltime_and_no_block_is_killed_half_way(slurm, tmp_path):
    """Jobs of 2 minutes (workers retire by --lifetime at 45-75 s), blocks of about 20 s:
    a worker starts no block it could not finish, retires, its job ends by itself, and
    the jobs that replace it finish the sweep; no kernel call is killed half-way."""
    logs = tmp_path / "logs"
    logs.mkdir()
    n, chunk, delay = 24, 4, 5.0  # 6 blocks of 4 × 5 s; two workers cannot finish them in one job
    table = textwrap.dedent(
        f"""
        [cluster]
        kind = "slurm"
        queue = "debug"
        cores = 1
        memory = "1GB"
        processes = 1
        jobs = 2
        walltime = "00:02:00"
        [cluster.extra]
        log_directory = "{logs}"
        """
    )
    spec = _marked_spec(tmp_path, "slurm.zarr", n, chunk, delay, cluster=table)
    ref = _marked_spec(tmp_path, "ref.zarr", n, chunk, 0.0)
    env = {
        **os.environ,
        "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s",
        "DASK_DASKBATCH__PROBE__SAMPLES": "1",  # the probe: one sample of 5 s
    }
    try:
        r = subprocess.run(
            daskbatch_command("run", str(spec)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{slurm.logs()}"
        jobs = {p.name for p in logs.glob("dask-worker-*.err")}
        states = {j: slurm.job(j.removeprefix("dask-worker-").removesuffix(".err"))["JobState"] for j in jobs}
    finally:
        slurm.cancel_all()
    outputs = {p.name: p.read_text() for p in sorted(logs.glob("dask-worker-*.err"))}
    # the first jobs' workers retired before their block would have run past their time ...
    retired = [name for name, o in outputs.items() if "no new block starts here" in o]
    assert retired, outputs
    # ... and jobs replaced them; none was ended by its walltime
    assert len(outputs) >= 3, outputs
    assert "TIMEOUT" not in states.values(), states
    per_sample, unfinished = _calls(tmp_path / "slurm.zarr.calls")
    assert not unfinished, (unfinished, outputs)  # no kernel call killed half-way
    assert len(per_sample) == n and sorted(per_sample.values())[:-1] == [1] * (n - 1), per_sample
    s = subprocess.run(
        daskbatch_command("run", str(ref), "--cluster", "serial"), cwd=tmp_path, capture_output=True
    )
    assert s.returncode == 0, s.stderr
    assert_stores_identical(tmp_path / "ref.zarr", tmp_path / "slurm.zarr")
    status = db.status(tmp_path / "slurm.zarr")
    assert status.complete and status.samples["ok"] == n and sum(status.samples.values()) == n


def test_a_plan_for_a_job_queue_cluster_takes_the_memory_of_its_jobs(monkeypatch):
    from daskbatch import jobchecks
    from daskbatch.testing import affine

    # its partition "q" is no real one: the test SLURM, when it runs beside, refuses it
    monkeypatch.setattr(jobchecks, "slurm_accepts", lambda script: None)

    jq = db.JobQueue("slurm", memory="64GB", cores=16, processes=16, jobs=4, walltime="01:00:00", queue="q")
    assert jq.worker_memory == 64 * 10**9 // 16
    p = db.plan(affine, db.Grid(a=range(1000)), cluster=jq)
    assert "limit 3.7 GiB per worker" in str(p), str(p)  # 64 GB / 16, not this machine's memory / 64


def test_plan_makes_no_log_folder(tmp_path, monkeypatch, cli):
    """dask-jobqueue makes a job's log_directory when its script is only written (for
    `plan`, or the checks before a run): an empty logs/ folder was left behind."""
    from daskbatch import jobchecks

    monkeypatch.setattr(jobchecks, "slurm_accepts", lambda script: None)  # no SLURM needed
    logs = tmp_path / "logs" / "deeper"
    spec = _spec(tmp_path, "p.zarr", cluster=SLURM_TABLE.format(logs=logs, jobs="jobs = 1"))
    r = cli("plan", str(spec))
    assert r.returncode == 0, r.stderr
    assert "slurm (1 job × 1 worker process," in r.stdout
    assert not (tmp_path / "logs").exists() and not (tmp_path / "p.zarr").exists()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mine.txt").write_text("kept")
    assert cli("plan", str(spec)).returncode == 0
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["mine.txt"]  # only what it made goes


@pytest.mark.slurm
def test_worker_jobs_slurm_refuses_are_one_line_before_any_store_is_made(slurm, tmp_path):
    """More memory per job than a node has: sbatch --test-only says so before anything
    starts (submitted for real, the jobs failed in the cluster's loop and the run waited
    for a worker that never came, until its walltime)."""
    table = SLURM_TABLE.format(logs=tmp_path, jobs="jobs = 1").replace('memory = "1GB"', 'memory = "4000GB"')
    spec = _spec(tmp_path, "big.zarr", cluster=table)
    r = subprocess.run(
        daskbatch_command("run", str(spec)), capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster='slurm': SLURM refuses the worker jobs (" in lines[0], r.stderr
    assert "Requested node configuration is not available" in lines[0]
    assert "nothing was started or written" in lines[0]
    assert not (tmp_path / "big.zarr").exists() and slurm.jobs() == []


@pytest.mark.slurm
def test_worker_jobs_refused_at_submission_stop_the_run_instead_of_waiting_forever(slurm, tmp_path):
    """A policy sbatch --test-only does not check (a QOS limit): every real submission
    fails; the run stops with one line instead of waiting for a worker forever."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--test-only" ]; then exec {real} "$@"; fi\n'
        'echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2\n'
        "exit 1\n"
    )
    (bin_dir / "sbatch").chmod(0o755)
    spec = _spec(tmp_path, "qos.zarr", cluster=SLURM_TABLE.format(logs=tmp_path, jobs="jobs = 1"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(
        daskbatch_command("run", str(spec)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("daskbatch: error: cluster='slurm': the batch system refused every worker job"), (
        r.stderr
    )
    assert "the blocks committed so far are kept" in last
    assert slurm.jobs() == []


@pytest.mark.slurm
def test_a_stopped_slurm_run_of_a_spec_resumes_as_its_message_says(slurm, tmp_path):
    """The stop's message says `daskbatch resume STORE`: that command takes the spec's
    [cluster] table (it asked for cores per job before), and finishes the store."""
    import signal

    spec = _spec(
        tmp_path,
        "stop.zarr",
        cluster=SLURM_TABLE.format(logs=tmp_path, jobs="jobs = 1"),
        n=16,
        chunk=2,
        delay=0.3,
    )
    store = tmp_path / "stop.zarr"
    proc = _daskbatch(["run", str(spec), "--no-progress"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not (store.exists() and blocks_done(store) >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, slurm.logs()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert f"Continue with: daskbatch resume {store}" in err, err
        r = subprocess.run(
            daskbatch_command("resume", str(store), "--no-progress"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{slurm.logs()}"
        assert "slurm (1 job × 1 worker process" in r.stdout + r.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm.cancel_all()
    ref = _spec(tmp_path, "ref.zarr", n=16, chunk=2)
    s = subprocess.run(
        daskbatch_command("run", str(ref), "--cluster", "serial"), cwd=tmp_path, capture_output=True
    )
    assert s.returncode == 0, s.stderr
    assert_stores_identical(tmp_path / "ref.zarr", store)


def test_a_relative_log_directory_is_the_spec_folders(tmp_path, monkeypatch):
    """[cluster.extra] log_directory = "logs", as the docs show it: made relative to the
    folder daskbatch was started from (a submitted job's is the submit's), not the spec's."""
    from daskbatch.specfile import load_spec

    (tmp_path / "proj").mkdir()
    spec = _spec(tmp_path / "proj", "p.zarr", cluster=SLURM_TABLE.format(logs="logs", jobs="jobs = 1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    jq = load_spec(spec)["cluster"]
    assert jq.extra["log_directory"] == str(tmp_path / "proj" / "logs")
