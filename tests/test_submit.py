"""`daskbatch submit`: the driver of a run as a SLURM or PBS batch job.

The scripts and refusals are checked without a scheduler; the job script itself is
run with bash as a scheduler would; chains and cancelled drivers run on the real
one-node SLURM of the `slurm` fixture (tests/slurm_fixture.py).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.store import Store
from daskbatch.submit import Submission, node_local, prepare
from daskbatch.testing import blocks_done

SPEC = """\
kernel = "daskbatch.testing:slow_square"
store = "sweep.zarr"
chunk_size = {chunk}
workers = 2
{cluster}

[constants]
delay = {delay}

[space]
type = "grid"
axes = {{ x = {{ arange = [0, {n}, 1] }} }}
"""

TABLE = """\
[cluster]
kind = "{kind}"
cores = 2
memory = "4GB"
queue = "debug"
account = "proj"
walltime = "02:00:00"
prologue = ["module load python/3.12", "export OMP_NUM_THREADS=1"]
"""


@pytest.fixture(autouse=True)
def _jobqueue_config(monkeypatch):
    """Cores and memory per job in dask's config, as a cluster's jobqueue.yaml gives them
    (a spec saying only cluster = "slurm" takes them from there)."""
    import dask
    import dask_jobqueue  # noqa: F401  (its defaults join dask's config now, not inside the set below,
    # which would take them away again as it ends)

    for kind in ("SLURM", "PBS"):  # for a command run here and in a process of its own
        monkeypatch.setenv(f"DASK_JOBQUEUE__{kind}__CORES", "2")
        monkeypatch.setenv(f"DASK_JOBQUEUE__{kind}__MEMORY", "4GB")
    values = {
        f"jobqueue.{kind}.{key}": value
        for kind in ("slurm", "pbs")
        for key, value in (("cores", 2), ("memory", "4GB"))
    }
    with dask.config.set(values):
        yield


def _spec(folder: Path, cluster: str = 'cluster = "threads"', n: int = 12, chunk: int = 4, delay=0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "sweep.toml"
    p.write_text(SPEC.format(cluster=cluster, n=n, chunk=chunk, delay=delay))
    return p


def _fake(folder: Path, name: str, output: str) -> Path:
    """A stand-in for sbatch/qsub on PATH: logs its arguments, prints ``output`` + a count."""
    folder.mkdir(exist_ok=True)
    log = folder / f"{name}.calls"
    exe = folder / name
    exe.write_text(f'#!/bin/bash\necho "$@" >> {log}\nn=$(wc -l < {log})\necho "{output}"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return log


@pytest.fixture
def no_scheduler(tmp_path, monkeypatch) -> Path:
    """PATH with a fake sbatch and qsub that only record that they were called."""
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "sbatch", "${n}")
    _fake(bin_dir, "qsub", "${n}.pbs-server")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


# --------------------------------------------------------------------------- scripts


def test_dry_run_slurm_chain_prints_the_script_and_dependencies(tmp_path, cli, no_scheduler):
    spec = _spec(tmp_path / "a", TABLE.format(kind="slurm"))
    r = cli("submit", str(spec), "--dry-run", "--chain", "3", "--allow-local-store")
    assert r.returncode == 0, r.stderr
    store = tmp_path / "a" / "sweep.zarr"
    logs = f"{store}.logs"
    lines = r.stdout.splitlines()
    for line in (
        "#SBATCH --job-name=daskbatch-sweep",
        "#SBATCH --time=02:00:00",
        "#SBATCH --signal=B:TERM@120",
        f"#SBATCH --output={logs}/daskbatch-%j.out",
        f"#SBATCH --error={logs}/daskbatch-%j.out",
        "#SBATCH --cpus-per-task=1",  # the workers are jobs of their own: a small driver
        "#SBATCH --mem=2048M",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj",
    ):
        assert line in lines, (line, r.stdout)
    sbatch = [line for line in lines if line.startswith("#SBATCH")]
    body = [line for line in lines[: lines.index("")] if not line.startswith("#")]  # the script
    assert lines.index(sbatch[-1]) < lines.index("module load python/3.12")  # directives first
    assert body.index("module load python/3.12") < body.index("export OMP_NUM_THREADS=1")
    assert body[-1] == f"exec {Path(sys.executable).with_name('daskbatch')} run {spec} --no-progress"
    assert f"--complete {store} {spec}; then exit 0; fi" in r.stdout
    script = f"{logs}/daskbatch.slurm"
    assert lines[-3:] == [
        f"sbatch --parsable {script}",
        f"sbatch --parsable --dependency=afterany:<id of job 1> {script}",
        f"sbatch --parsable --dependency=afterany:<id of job 2> {script}",
    ]
    # nothing submitted, nothing written: the workers' script was only checked, as `plan` does
    calls = (no_scheduler / "sbatch.calls").read_text().splitlines()
    assert calls and all(c.startswith("--test-only ") for c in calls), calls
    assert not Path(logs).exists()


def test_dry_run_walltime_flag_wins_and_a_local_cluster_gets_the_cores(tmp_path, cli):
    spec = _spec(tmp_path / "a", 'cluster = "local"\nmemory_limit = "3GB"')
    r = cli("submit", str(spec), "--slurm", "--walltime", "1-00:00:30", "--dry-run", "--allow-local-store")
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --time=24:00:30" in r.stdout
    assert "#SBATCH --cpus-per-task=2" in r.stdout  # the work runs inside the driver's job
    assert "#SBATCH --mem=5723M" in r.stdout  # 2 workers of 3 GB, in MiB, rounded up
    assert "# would submit it with:" in r.stdout
    assert "--dependency" not in r.stdout and "--partition" not in r.stdout
    spec = _spec(tmp_path / "b", TABLE.format(kind="slurm"))
    r = cli("submit", str(spec), "--walltime", "00:20:00", "--dry-run", "--allow-local-store")
    assert "#SBATCH --time=00:20:00" in r.stdout.splitlines()
    assert "#SBATCH --signal=B:TERM@120" in r.stdout.splitlines()


def test_dry_run_pbs_matches_dask_jobqueue_and_qsub(tmp_path, cli):
    from dask_jobqueue.pbs import PBSJob

    spec = _spec(tmp_path / "a", TABLE.format(kind="pbs"))
    r = cli("submit", str(spec), "--dry-run", "--chain", "2", "--allow-local-store")
    assert r.returncode == 0, r.stderr
    theirs = PBSJob(
        scheduler="tcp://127.0.0.1:8786",
        name="x",
        cores=1,
        memory="2GB",
        walltime="02:00:00",
        queue="debug",
        account="proj",
    ).job_script()
    for line in ("#PBS -q debug", "#PBS -A proj", "#PBS -l walltime=02:00:00"):
        assert line in theirs.splitlines() and line in r.stdout.splitlines(), line
    select = re.compile(r"^#PBS -l select=1:ncpus=\d+:mem=\d+MB$", re.M)
    assert select.search(theirs) and select.search(r.stdout)
    logs = f"{tmp_path / 'a' / 'sweep.zarr'}.logs"
    assert "#PBS -j oe" in r.stdout and f"#PBS -o {logs}/" in r.stdout
    assert f'exec >{logs}/daskbatch-"${{PBS_JOBID}}".out 2>&1' in r.stdout
    assert r.stdout.splitlines()[-1] == f"qsub -W depend=afterany:<id of job 1> {logs}/daskbatch.pbs"
    assert "#PBS -N daskbatch-sweep" in r.stdout.splitlines()


def test_submit_chain_to_qsub(tmp_path, cli, no_scheduler):
    """Every job after the first depends on the id qsub gave the one before."""
    spec = _spec(tmp_path / "a", 'cluster = "pbs"')
    r = cli("submit", str(spec), "--walltime", "00:30:00", "--chain", "3", "--allow-local-store")
    assert r.returncode == 0, r.stderr
    calls = (no_scheduler / "qsub.calls").read_text().splitlines()
    store = tmp_path / "a" / "sweep.zarr"
    script = f"{store}.logs/daskbatch.pbs"
    assert calls == [
        script,
        f"-W depend=afterany:1.pbs-server {script}",
        f"-W depend=afterany:2.pbs-server {script}",
    ]
    assert Path(script).read_text().startswith("#!/bin/bash\n#PBS -N daskbatch-sweep\n")
    out = r.stdout
    assert "submitted job 1.pbs-server (PBS)" in out
    assert "then 2.pbs-server, 3.pbs-server" in out
    assert f"log:     {store}.logs/daskbatch-1.pbs-server.out" in out
    assert f"follow:  daskbatch status {store}" in out


def test_job_script_runs_the_driver_records_the_job_and_a_successor_ends_at_once(tmp_path):
    """The script as SLURM runs it (bash, SLURM_JOB_ID set): the store is made, the job id
    is in its history; the next job of the chain finds it complete and says so in one line."""
    spec = _spec(tmp_path / "a")
    sub = prepare(spec, scheduler="slurm", walltime="00:10:00", allow_local_store=True)
    script = tmp_path / "job.sh"
    script.write_text(sub.script())
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert db.status(sub.store).complete
    history = Store(sub.store).require_info()["history"]
    assert [h.get("job") for h in history] == ["4242"]
    shown = run_cli("status", str(sub.store))
    assert "jobs:     4242 (finished, 3 blocks)" in shown.stdout

    env["SLURM_JOB_ID"] = "4243"
    t0 = time.perf_counter()
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    said = [line for line in again.stdout.splitlines() if not line.startswith("daskbatch: job 4243 on ")]
    assert said == [f"daskbatch: store {str(sub.store)!r} is complete (3 blocks); job 4243 has nothing to do"]
    assert again.stderr == ""
    assert len(Store(sub.store).require_info()["history"]) == 1
    assert time.perf_counter() - t0 < 30


def test_a_job_of_a_chain_computes_what_a_grown_spec_adds_to_a_complete_store(tmp_path):
    """The job's first check compared the store with itself: after n was raised in the
    spec, every job said "complete ... nothing to do" and the new samples never came.
    It asks what the run would (grown designs, added files or rows, until rounds)."""
    folder = tmp_path / "g"
    folder.mkdir()
    spec = folder / "sweep.toml"
    text = (
        'kernel = "daskbatch.testing:affine"\nstore = "mc.zarr"\ncluster = "serial"\nchunk_size = 4\n'
        '[space]\ntype = "montecarlo"\nn = 12\nseed = 42\n[space.params.a]\ndist = "uniform"\n'
        "low = 0\nhigh = 1\n"
    )
    spec.write_text(text)
    sub = prepare(spec, scheduler="slurm", walltime="00:10:00", allow_local_store=True)
    script = tmp_path / "job.sh"
    script.write_text(sub.script())
    env = {**os.environ, "SLURM_JOB_ID": "51"}
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert db.status(sub.store).samples["ok"] == 12
    spec.write_text(text.replace("n = 12", "n = 20"))
    env["SLURM_JOB_ID"] = "52"
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" not in again.stdout
    assert "grows from 12 to 20 samples" in again.stderr
    st = db.status(sub.store)
    assert st.complete and st.samples["ok"] == 20
    # a job script of an older daskbatch (no spec): the driver decides
    old = subprocess.run([sys.executable, "-m", "daskbatch.submit", "--complete", str(sub.store)])
    assert old.returncode == 1


def test_a_killed_jobs_run_is_listed_as_killed_not_running_forever(tmp_path):
    """A driver job killed outright (SIGKILL, its node lost) writes no end to its history
    entry: status said "61 (running, 0 blocks)" ever after, beside the job that finished."""
    spec = _spec(tmp_path / "a", n=40, chunk=2, delay=0.15)
    sub = prepare(spec, scheduler="slurm", walltime="00:10:00", allow_local_store=True)
    script = tmp_path / "job.sh"
    script.write_text(sub.script())
    env = {**os.environ, "SLURM_JOB_ID": "61"}
    job = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while blocks_done(sub.store) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
        shown = run_cli("status", str(sub.store)).stdout
        assert "jobs:     61 (running now)" in shown, shown
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    shown = run_cli("status", str(sub.store)).stdout
    assert "jobs:     61 (stopped without finishing: killed?)" in shown, shown
    env["SLURM_JOB_ID"] = "62"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = run_cli("status", str(sub.store)).stdout
    assert re.search(
        r"jobs:     61 \(stopped without finishing: killed\?\), 62 \(finished, \d+ blocks\)", shown
    ), shown


def test_a_job_whose_lock_on_another_host_is_stale_is_listed_as_killed():
    """Its driver killed on a compute node left its lock document behind: the state line
    says it looks stopped, and the jobs line said it was running now."""
    from daskbatch.results import _job_text

    job = {"job": "61", "state": "running", "host": "n17", "pid": 4815}
    holder = {"host": "n17", "pid": 4815}
    assert _job_text(job, holder) == "61 (running now)"
    assert _job_text(job, {**holder, "stale": True}) == "61 (stopped without finishing: killed?)"
    assert _job_text(job, None) == "61 (stopped without finishing: killed?)"
    assert _job_text({**job, "state": "finished", "blocks_computed": 3}, None) == "61 (finished, 3 blocks)"


def test_a_submit_with_jobs_of_the_store_still_queued_follows_them(tmp_path, cli, no_scheduler):
    """squeue lists this store's jobs (those that run its script) still queued or running:
    the new chain's first job depends on the last of them; other jobs are no reason."""
    spec = _spec(tmp_path / "a", 'cluster = "threads"')
    script = tmp_path / "a" / "sweep.zarr.logs" / "daskbatch.slurm"
    (no_scheduler / "squeue").write_text(
        f'#!/bin/bash\necho "71|/elsewhere/other.zarr.logs/daskbatch.slurm"\necho "81|{script}"\n'
        f'echo "82|{script}"\necho "90|/bin/true"\n'
    )
    (no_scheduler / "squeue").chmod(0o755)
    r = cli("submit", str(spec), "--slurm", "--walltime", "01:00:00", "--allow-local-store")
    assert r.returncode == 0, r.stderr
    assert "after job 82: this store's jobs 81, 82 are queued or running" in r.stdout
    calls = (no_scheduler / "sbatch.calls").read_text().splitlines()
    assert calls == [f"--parsable --dependency=afterany:82 {script}"]
    r = cli("submit", str(spec), "--slurm", "--walltime", "01:00:00", "--allow-local-store", "--dry-run")
    assert r.stdout.splitlines()[-1] == f"sbatch --parsable --dependency=afterany:82 {script}"  # as it would


def test_a_log_folder_another_user_made_is_refused_and_a_planted_script_replaced(tmp_path, cli, no_scheduler):
    """<store>.logs was taken as it was: made beforehand by another user (a shared project
    or scratch folder), its job script (a FIFO there) was read and replaced by theirs
    between daskbatch writing it and sbatch reading it, and the logs (with the
    dashboard's token) were written into their folder."""
    spec = _spec(tmp_path / "a", 'cluster = "threads"')
    logs = tmp_path / "a" / "sweep.zarr.logs"
    logs.mkdir(mode=0o777)
    logs.chmod(0o777)
    os.mkfifo(logs / "daskbatch.slurm")  # what the other user leaves for the script
    args = ["submit", str(spec), "--slurm", "--walltime", "01:00:00", "--allow-local-store"]
    if os.geteuid() == 0:  # a folder of another user's
        os.chown(logs, 65534, 65534)
        r = cli(*args)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert (
            f"the jobs' log folder {str(logs)!r} exists and is not a folder of yours (owned by uid 65534)"
            in r.stderr
        )
        assert not (no_scheduler / "sbatch.calls").exists()
        os.chown(logs, os.getuid(), os.getgid())
    r = cli(*args)  # a folder of this user's that others may write into: made 0700
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    script = logs / "daskbatch.slurm"
    assert script.is_file() and script.read_text().startswith("#!/bin/bash")  # the FIFO replaced


def test_submit_on_a_store_that_is_complete_for_its_spec_submits_nothing(tmp_path, cli, no_scheduler):
    """A job was queued only to say "nothing to do" once it ran; with n raised it is."""
    spec = _spec(tmp_path / "a", 'cluster = "threads"')
    assert cli("run", str(spec), "--no-progress").returncode == 0
    args = ["submit", str(spec), "--slurm", "--walltime", "01:00:00", "--allow-local-store"]
    r = cli(*args)
    assert r.returncode == 0 and "holds every result sweep.toml asks for: nothing submitted" in r.stdout
    assert not (no_scheduler / "sbatch.calls").exists()
    spec.write_text(spec.read_text().replace("arange = [0, 12, 1]", "arange = [0, 16, 1]"))
    r = cli(*args)
    assert r.returncode == 2 and "only a store along the one dim 'sample' grows" in r.stderr, (
        r.stderr
    )  # a grid


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "cluster", "expected"),
    [
        (["--slurm", "--walltime", "90"], "", "--walltime '90' is not a walltime; write HH:MM:SS"),
        (["--slurm", "--walltime", "1:00"], "", "--walltime '1:00' is not a walltime"),
        (["--slurm", "--walltime", "00:61:00"], "", "--walltime '00:61:00' is not a walltime"),
        (["--slurm", "--walltime", "00:00:00"], "", "--walltime '00:00:00' is zero"),
        (["--slurm", "--chain", "0"], "", "--chain 0 is not a number of jobs; give 1 or more"),
        (["--slurm", "--chain", "-2"], "", "--chain -2 is not a number of jobs"),
        (
            ["--slurm", "--chain", "100000000"],
            "",
            "--chain 100,000,000 jobs are more than 1,000; give at most",
        ),
        (["--slurm", "--pbs"], "", "--slurm and --pbs both given"),
        ([], 'cluster = "threads"', "the spec's cluster is 'threads': say where the driver job goes with "),
        (["--pbs"], TABLE.format(kind="slurm"), "--pbs with a spec whose cluster is 'slurm'"),
        (["--slurm"], 'cluster = "threads"', "no walltime for the driver job: give --walltime HH:MM:SS"),
        ([], TABLE.format(kind="slurm").replace('"02:00:00"', '"2h"'), "walltime='2h' is not a walltime"),
        # SLURM reads a zero walltime as no limit: the workers retired at once, replaced forever
        ([], TABLE.format(kind="slurm").replace('"02:00:00"', '"00:00:00"'), "walltime='00:00:00' is zero"),
        (
            [],
            TABLE.format(kind="slurm").replace('"02:00:00"', '"0-00:00:00"'),
            "walltime='0-00:00:00' is zero",
        ),
        (
            [],
            TABLE.format(kind="slurm").replace('"02:00:00"', '"00:05"'),
            "walltime='00:05' is under a minute",
        ),
        (["--slurm", "--walltime", "00:00:30"], "", "--walltime '00:00:30' is under a minute"),
        (["--slurm", "--walltime", "1-25:00:00"], "", "--walltime '1-25:00:00' is not a walltime"),
        (["--slurm"], TABLE.format(kind="sge"), "daskbatch submit sends the driver to SLURM or PBS only"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_submitted(tmp_path, cli, no_scheduler, args, cluster, expected):
    spec = _spec(tmp_path / "a", cluster or 'cluster = "slurm"')
    if "--walltime" not in args and "walltime" not in cluster and "no walltime" not in expected:
        args = [*args, "--walltime", "01:00:00"]
    r = cli("submit", str(spec), *args, "--allow-local-store")
    assert r.returncode == 2, r.stdout
    assert len(r.stderr.splitlines()) == 1 and expected in r.stderr, r.stderr
    assert r.stdout == ""
    assert not list(no_scheduler.glob("*.calls"))
    assert not list(tmp_path.glob("a/*.logs"))


def test_a_store_the_job_would_refuse_is_refused_at_submit_and_kernel_changed_passes_on(
    tmp_path, cli, no_scheduler
):
    """A changed seed, an edited kernel, a store another run holds: said on the login
    node, with nothing submitted (the job failed in the queue with exit 2 before);
    --kernel-changed continue reaches the job's daskbatch run."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "kmod.py").write_text(
        "import daskbatch as db\n@db.kernel(outputs={'y': db.Output()})\ndef k(x):\n    return 2.0 * x\n"
    )
    spec = folder / "sweep.toml"
    spec.write_text(
        'kernel = "kmod:k"\nstore = "sweep.zarr"\ncluster = "local"\nchunk_size = 4\n'
        '[space]\ntype = "montecarlo"\nn = 12\nseed = 1\n[space.params.x]\ndist = "uniform"\nlow = 0\nhigh = 1\n'
    )
    args = ["--slurm", "--walltime", "01:00:00", "--allow-local-store", "--dry-run"]
    assert cli("run", str(spec), "--cluster", "serial", "--no-progress").returncode == 0
    assert cli("submit", str(spec), *args).returncode == 0  # the same run: nothing to refuse
    spec.write_text(spec.read_text().replace("seed = 1", "seed = 2"))
    r = cli("submit", str(spec), *args)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "seed" in r.stderr and r.stderr.rstrip().endswith("nothing was submitted")
    assert "Remove or rename the store to start again, or use a new store path" in r.stderr
    assert "overwrite" not in r.stderr  # submit has none: its refusal does not offer it
    spec.write_text(spec.read_text().replace("seed = 2", "seed = 1"))
    (folder / "kmod.py").write_text((folder / "kmod.py").read_text().replace("2.0 * x", "3.0 * x"))
    # (a process of its own: this one imported the kernel before the edit)
    r = run_cli("submit", str(spec), *args, cwd=folder)
    assert r.returncode == 2 and "--kernel-changed continue" in r.stderr, r.stderr
    assert "To discard those results and start again: remove or rename the store, then submit." in r.stderr
    assert "overwrite" not in r.stderr and "kernel_changed=" not in r.stderr  # no Python, no --overwrite
    r = run_cli("plan", str(spec), cwd=folder)  # plan takes the flags its refusal names
    assert r.returncode == 2 and "--kernel-changed continue" in r.stderr
    assert run_cli("plan", str(spec), "--kernel-changed", "continue", cwd=folder).returncode == 0
    assert run_cli("plan", str(spec), "--overwrite", cwd=folder).returncode == 0
    r = run_cli("submit", str(spec), *args, "--kernel-changed", "continue", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "run " + str(spec) + " --no-progress --kernel-changed continue" in r.stdout
    with Store(folder / "sweep.zarr").lock():  # a run holds the store
        r = run_cli("submit", str(spec), *args, "--kernel-changed", "continue", cwd=folder)
    assert r.returncode == 2 and "is being written by another run" in r.stderr, r.stderr
    assert not list(no_scheduler.glob("*.calls"))


def test_worker_jobs_slurm_would_refuse_are_refused_at_submit_as_by_plan(tmp_path, cli, monkeypatch):
    """The workers' job script goes through sbatch --test-only, with --dry-run too: before,
    only the driver job was submitted, and its run found the refusal after its wait."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = bin_dir / "sbatch.calls"
    (bin_dir / "sbatch").write_text(
        f'#!/bin/bash\necho "$@" >> {log}\nif [ "$1" = --test-only ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Requested node configuration is not available" >&2\n'
        "  exit 1\nfi\necho 1\n"
    )
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = _spec(tmp_path / "a", TABLE.format(kind="slurm"))
    for extra in ([], ["--dry-run"]):
        r = cli("submit", str(spec), "--allow-local-store", *extra)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert (
            "SLURM refuses the worker jobs" in r.stderr and "node configuration is not available" in r.stderr
        )
    assert all(c.startswith("--test-only ") for c in log.read_text().splitlines())  # none submitted
    assert not (tmp_path / "a" / "sweep.zarr.logs").exists()
    assert not (tmp_path / "a" / "sweep.zarr").exists()
    r = cli("plan", str(spec))  # the same refusal as plan's
    assert r.returncode == 2 and "SLURM refuses the worker jobs" in r.stderr


def test_threads_per_worker_for_a_kernel_not_thread_safe_are_refused_at_submit(tmp_path, cli, no_scheduler):
    """The driver job's run would refuse it after its wait in the queue (as `plan` does)."""
    folder = tmp_path / "a"
    folder.mkdir()
    spec = folder / "sweep.toml"
    spec.write_text(
        'kernel = "daskbatch.testing:fail_on_multiples"\nstore = "sweep.zarr"\n'
        + TABLE.format(kind="slurm")
        + 'processes = 1\n[space]\ntype = "grid"\naxes = { i = { arange = [0, 12, 1] } }\n'
    )
    for extra in ([], ["--dry-run"]):
        r = cli("submit", str(spec), "--allow-local-store", *extra)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert "JobQueue processes=1 with cores=2 runs 2 threads per worker, and kernel" in r.stderr
    assert not list(no_scheduler.glob("*.calls"))
    assert not (folder / "sweep.zarr.logs").exists()


def test_a_cluster_without_cores_per_job_is_refused_at_submit_not_in_the_queue(tmp_path, cli, monkeypatch):
    """The driver job would stop on it after its wait in the queue; --dry-run said nothing."""
    import dask

    monkeypatch.delenv("DASK_JOBQUEUE__SLURM__CORES")
    spec = _spec(tmp_path / "a", 'cluster = "slurm"')
    for extra in ([], ["--dry-run"]):
        with dask.config.set({"jobqueue.slurm.cores": None}):
            r = cli("submit", str(spec), "--walltime", "01:00:00", "--allow-local-store", *extra)
        assert r.returncode == 2 and r.stdout == ""
        assert "cluster='slurm' needs cores per job: JobQueue('slurm', cores=4" in r.stderr
    assert not (tmp_path / "a" / "sweep.zarr.logs").exists()


def test_store_on_node_local_storage_is_refused(tmp_path, cli, no_scheduler):
    spec = _spec(tmp_path / "a", 'cluster = "slurm"')
    r = cli("submit", str(spec), "--walltime", "01:00:00")
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1
    store = (tmp_path / "a" / "sweep.zarr").resolve()
    assert f"store {str(store)!r} is on node-local storage ({store} is under /tmp)" in r.stderr
    assert "the store must be on a filesystem every node sees" in r.stderr
    assert "--allow-local-store skips this check" in r.stderr
    assert not list(no_scheduler.glob("*.calls"))


def test_node_local_paths(monkeypatch):
    monkeypatch.setenv("TMPDIR", "/scratch/local/job1")
    assert (
        node_local("/scratch/local/job1/s.zarr") == "/scratch/local/job1/s.zarr is under /scratch/local/job1"
    )
    assert node_local("/var/tmp/s.zarr") == "/var/tmp/s.zarr is under /var/tmp"
    mounts = Path("/proc/mounts").read_text().split("\n")
    tmpfs = [line.split()[1] for line in mounts if " tmpfs " in line and line.split()[1] != "/dev/shm"]
    if tmpfs:  # any tmpfs, wherever it is mounted
        assert "tmpfs mounted at" in (node_local(f"{tmpfs[0]}/s.zarr") or "")
    # a disk that is neither a node-local folder nor a tmpfs passes (the project may be
    # checked out under /tmp, so take a path on the root filesystem instead)
    from daskbatch import submit

    shared = Path("/srv/daskbatch-shared/s.zarr")
    fstype = next((t for point, t in submit._mounts() if shared.is_relative_to(point)), "unknown")
    if fstype not in submit.LOCAL_FSTYPES:
        assert node_local(shared) is None


def test_sbatch_missing_says_where_to_run_it(tmp_path, cli, monkeypatch):
    spec = _spec(tmp_path / "a", 'cluster = "slurm"')
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    r = cli("submit", str(spec), "--walltime", "01:00:00", "--allow-local-store")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "daskbatch: error: daskbatch submit --slurm needs SLURM's sbatch on PATH: "
        "run it on the cluster's login node"
    )
    assert not (tmp_path / "a" / "sweep.zarr.logs").exists()
    r = cli("submit", str(spec), "--walltime", "01:00:00", "--allow-local-store", "--dry-run")
    assert r.returncode == 0 and "#SBATCH --time=01:00:00" in r.stdout  # a dry run needs no SLURM


def test_real_command_refuses_a_bad_walltime(tmp_path):
    spec = _spec(tmp_path / "a", 'cluster = "slurm"')
    r = run_cli("submit", str(spec), "--walltime", "12h", "--allow-local-store")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "daskbatch: error: --walltime '12h' is not a walltime; write HH:MM:SS (12:00:00) or "
        "D-HH:MM:SS (2-00:00:00)"
    ]


def test_submission_defaults():
    sub = Submission("slurm", Path("/p/s.zarr.toml"), Path("/p/s.zarr"), walltime=3600)
    assert sub.logs == Path("/p/s.zarr.logs") and sub.signal_lead == 120
    assert Submission("slurm", Path("/s"), Path("/s.zarr"), walltime=60).signal_lead == 10
    long = Path("/p/a sweep of soundings.zarr")
    assert Submission("pbs", long, long, walltime=60).name == "daskbatch-a_swe"  # what every PBS takes
    assert Submission("slurm", long, long, walltime=60).name == "daskbatch-a_sweep_of_soundings"


# --------------------------------------------------------------------------- real SLURM


def _submitted(r: subprocess.CompletedProcess) -> list[str]:
    """The job ids `daskbatch submit` printed."""
    assert r.returncode == 0, r.stdout + r.stderr
    first = re.search(r"submitted job (\S+) \(SLURM\)", r.stdout)
    then = re.search(r"then (.+), each after", r.stdout)
    assert first, r.stdout
    return [first[1], *(then[1].split(", ") if then else [])]


def _reference(tmp_path: Path, n: int, chunk: int) -> Path:
    """The same sweep run at once, without the kernel's sleep (the values do not depend on it)."""
    spec = _spec(tmp_path / "reference", n=n, chunk=chunk)
    r = run_cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    return spec.parent / "sweep.zarr"


def _log(slurm, job: str) -> str:
    path = Path(slurm.job(job)["StdOut"])
    return path.read_text() if path.exists() else f"(no log at {path})"


@pytest.mark.slurm
def test_chain_of_one_minute_jobs_finishes_a_longer_sweep(slurm, tmp_path):
    """120 samples of 1 s on 2 threads: about 60 s of work plus starts and stops, more than
    one job of a 1-minute walltime gets done (SLURM warns each driver 10-40 s before its
    end); the chain finishes it, a job that finds it complete ends at once."""
    from daskbatch.testing import assert_stores_identical

    n, chunk = 120, 2
    spec = _spec(tmp_path / "chain", n=n, chunk=chunk, delay=1.0)
    store = spec.parent / "sweep.zarr"
    r = run_cli(
        "submit",
        str(spec),
        "--slurm",
        "--walltime",
        "00:01:00",
        "--chain",
        "4",
        "--allow-local-store",
        cwd=spec.parent,
    )
    jobs = _submitted(r)
    assert len(jobs) == 4
    assert f"log:     {store}.logs/daskbatch-{jobs[0]}.out" in r.stdout
    assert slurm.job(jobs[1])["Dependency"].startswith(f"afterany:{jobs[0]}")
    states = [slurm.wait_job(job, timeout=150) for job in jobs]
    logs = "\n".join(f"--- job {j} ({s}):\n{_log(slurm, j)}" for j, s in zip(jobs, states, strict=True))
    st = db.status(store)
    assert st.complete, logs
    assert st.samples["ok"] == n and sum(st.samples.values()) == n, st.samples  # none counted twice
    assert_stores_identical(store, _reference(tmp_path, n, chunk))
    ran = [h["job"] for h in Store(store).require_info()["history"]]
    assert len(ran) > 1 and ran == jobs[: len(ran)], (ran, logs)
    # the first job was warned (SIGTERM) before its walltime and stopped in order
    assert "interrupted by SIGTERM; " in _log(slurm, jobs[0]) and states[0] == "FAILED", logs
    # its next step is the chain's next job, not a driver on the login node beside it
    assert "Continue with: the next job of its chain when one is queued (squeue" in _log(slurm, jobs[0])
    assert f"{ran[0]} (stopped by SIGTERM, " in run_cli("status", str(store)).stdout
    for job in jobs[len(ran) :]:  # the jobs after the one that finished: nothing to do
        assert f"is complete ({n // chunk} blocks); job {job} has nothing to do" in _log(slurm, job), logs


@pytest.mark.slurm
def test_a_submit_while_the_stores_job_runs_queues_after_it(slurm, tmp_path):
    """A user adding jobs to a chain whose job runs (or waits in the queue): the store's
    lock refused it ("being written by another run"), or, with the jobs only queued, the
    new chain ran beside the old one, each of its jobs refused at once while the other
    held the store. The new jobs now start after the last queued one."""
    from daskbatch.testing import blocks_done

    n, chunk = 24, 2
    spec = _spec(tmp_path / "more", n=n, chunk=chunk, delay=1.0)
    store = spec.parent / "sweep.zarr"
    args = ["submit", str(spec), "--slurm", "--walltime", "00:05:00", "--allow-local-store"]
    [first] = _submitted(run_cli(*args, cwd=spec.parent))
    deadline = time.monotonic() + 60
    while blocks_done(store) < 1:
        assert time.monotonic() < deadline, _log(slurm, first)
        time.sleep(0.2)
    r = run_cli(*args, "--chain", "2", cwd=spec.parent)
    jobs = _submitted(r)
    assert f"after job {first}: this store's jobs {first} are queued or running" in r.stdout
    assert slurm.job(jobs[0])["Dependency"].startswith(f"afterany:{first}")
    assert slurm.job(jobs[1])["Dependency"].startswith(f"afterany:{jobs[0]}")
    for job in (first, *jobs):
        assert slurm.wait_job(job, timeout=120) == "COMPLETED", _log(slurm, job)
    st = db.status(store)
    assert st.complete and st.samples["ok"] == n
    assert [h["job"] for h in Store(store).require_info()["history"]] == [first]
    assert "has nothing to do" in _log(slurm, jobs[0])


@pytest.mark.slurm
def test_cancelled_driver_job_leaves_a_store_that_a_new_job_finishes(slurm, tmp_path):
    from daskbatch.testing import assert_stores_identical, blocks_done

    n, chunk = 40, 2
    # a % in the folder: sbatch expands %-patterns in the log path (%j: the job id)
    spec = _spec(tmp_path / "cancel%jx", n=n, chunk=chunk, delay=1.0)
    store = spec.parent / "sweep.zarr"
    args = ["submit", str(spec), "--slurm", "--walltime", "00:05:00", "--allow-local-store"]
    [job] = _submitted(run_cli(*args, cwd=spec.parent))
    deadline = time.monotonic() + 60
    while blocks_done(store) < 3:
        assert time.monotonic() < deadline, _log(slurm, job)
        time.sleep(0.2)
    slurm.run(["scancel", job])
    assert slurm.wait_job(job, timeout=30) == "CANCELLED"
    shown = run_cli("status", str(store))
    assert shown.returncode == 0, shown.stderr
    state = next(line for line in shown.stdout.splitlines() if line.startswith("state:"))
    assert re.search(r"stopped by SIGTERM|stopped without finishing \(killed\?\)", state), shown.stdout
    assert f"resume with: daskbatch resume {store}" in state
    assert f"jobs:     {job} (" in shown.stdout
    assert 3 <= db.status(store).blocks_done < n // chunk

    [again] = _submitted(run_cli(*args, cwd=spec.parent))
    assert slurm.wait_job(again, timeout=90) == "COMPLETED", _log(slurm, again)
    assert f"daskbatch: job {again} on " in (Path(f"{store}.logs") / f"daskbatch-{again}.out").read_text()
    st = db.status(store)
    assert st.complete and st.samples["ok"] == n and sum(st.samples.values()) == n
    assert_stores_identical(store, _reference(tmp_path, n, chunk))
    assert [h["job"] for h in Store(store).require_info()["history"]] == [job, again]


def test_status_before_the_job_starts_and_while_it_creates_the_store_says_so(tmp_path, cli):
    """`submit` prints `follow: daskbatch status STORE`: before the job starts, and in
    its first seconds, status said the store does not exist or is not a daskbatch store."""
    store = tmp_path / "sweep.zarr"
    (tmp_path / "sweep.zarr.logs").mkdir()
    (tmp_path / "sweep.zarr.logs" / "daskbatch.slurm").write_text("#!/bin/bash\n")
    r = cli("status", str(store))
    assert r.returncode == 2 and "does not exist yet: the job daskbatch submit queued makes it" in r.stderr
    assert "squeue -u $USER" in r.stderr
    with Store(store).lock():  # a run that has taken the lock and not yet written the template
        r = cli("status", str(store))
    assert r.returncode == 2 and f"store {str(store)!r} is being created by a run (host " in r.stderr, (
        r.stderr
    )
    assert "try again in a moment" in r.stderr
