"""The local cluster is private to its user: another user of the machine cannot connect.

A run on ``cluster="local"`` is started in a thread of this process; while its first
block is being taken in, a process of another user (``nobody``) tries to connect to
the run's scheduler, workers and nannies on 127.0.0.1 and to run code there, and
this process tries too, without the run's credentials. Only the run's own
credentials get in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.request
from typing import Any

import numpy as np
import pytest

import daskbatch as db
from daskbatch.callbacks import BlockEnd, RunStart
from daskbatch.cluster import local_security
from daskbatch.testing import slow_square

NOBODY = 65534

#: run as ``nobody``: try to connect to every address (argv: JSON list of host:port,
#: the scheduler's first, then its published address) and to run code in the workers
ATTACK = textwrap.dedent(
    """
    import asyncio, json, os, socket, ssl, sys

    from distributed import Client
    from distributed.core import rpc

    hostports, published = json.loads(sys.argv[1]), sys.argv[2]
    no_cert = ssl.create_default_context()
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE

    async def client(address):
        try:
            async with Client(address, timeout=5, asynchronous=True) as c:
                uids = await c.run(os.getuid)
                return f"connected: ran code as uids {sorted(set(uids.values()))}"
        except Exception as e:
            return f"refused: {type(e).__name__}"

    async def ask(address, **kwargs):
        r = rpc(address, timeout=5, connection_args=kwargs)
        try:
            return f"connected: {(await r.identity())['type']}"
        except Exception as e:
            return f"refused: {type(e).__name__}"
        finally:
            await r.close_rpc()

    async def main():
        names, tries = [], []
        for address in dict.fromkeys([published, "tcp://" + hostports[0]]):
            names.append("Client " + address)
            tries.append(client(address))
        for hp in hostports:
            names += ["tcp://" + hp, "tls://" + hp + " (no certificate)"]
            tries += [ask("tcp://" + hp), ask("tls://" + hp, ssl_context=no_cert)]
        return dict(zip(names, await asyncio.gather(*tries)))

    host, port = hostports[0].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()  # the port is reachable
    print(json.dumps({"uid": os.getuid(), **asyncio.run(main())}))
    """
)

#: the same without distributed (when ``nobody`` cannot read the environment): a plain
#: TCP connection to each address; a dask server sends its handshake at once
RAW_ATTACK = textwrap.dedent(
    """
    import json, os, socket, sys

    out = {"uid": os.getuid()}
    for hp in json.loads(sys.argv[1]):
        host, port = hp.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.settimeout(3)
            try:
                data = s.recv(1024)
            except (TimeoutError, OSError) as e:
                data = b""
            out["tcp://" + hp] = f"connected: {len(data)} bytes of handshake" if data else "refused: no reply"
    print(json.dumps(out))
    """
)


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a process as a second user (nobody)")
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("needs setpriv or runuser, to run a process as a second user (nobody)")


def _nobody_command(hostports: list[str], published: str) -> list[str]:
    """The attack as ``nobody``: with distributed when nobody can import it, else raw."""
    env = _nobody_env()
    for python in (sys.executable, shutil.which("python3")):
        if python is None:
            continue
        ok = subprocess.run(
            [*_as_nobody(), python, "-c", "import distributed"], env=env, cwd="/", capture_output=True
        )
        if ok.returncode == 0:
            return [*_as_nobody(), python, "-c", ATTACK, json.dumps(hostports), published]
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([*_as_nobody(), python, "-I", "-c", ""], cwd="/").returncode == 0:
            return [*_as_nobody(), python, "-I", "-c", RAW_ATTACK, json.dumps(hostports)]
    pytest.skip("the user nobody can run no Python here")


def _nobody_env() -> dict[str, str]:
    return {**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


class HoldFirstBlock(db.Callback):
    """Keeps hold of the run's client, and holds the run at its first block until released."""

    def __init__(self) -> None:
        self.client: Any = None
        self.dashboard: str | None = None
        self.started = threading.Event()
        self.release = threading.Event()

    def on_run_start(self, event: RunStart) -> None:
        from distributed import default_client

        self.client, self.dashboard = default_client(), event.dashboard

    def on_block_end(self, event: BlockEnd) -> None:
        self.started.set()
        self.release.wait(120)


@pytest.fixture
def running(store):
    """A real run on the local cluster (2 workers), held at its first block."""
    hold = HoldFirstBlock()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = db.run(
                slow_square,
                db.Grid(x=np.arange(16.0)),
                store,
                cluster="local",
                n_workers=2,
                chunk_size=2,
                constants={"delay": 0.05},
                progress=False,
                callbacks=[hold],
            )
        except BaseException as e:
            outcome["error"] = e
        finally:
            hold.started.set()

    thread = threading.Thread(target=work, name="run")
    thread.start()
    try:
        assert hold.started.wait(120), "the run did not finish a block in 2 minutes"
        assert "error" not in outcome, outcome.get("error")
        yield hold
    finally:
        hold.release.set()
        thread.join(120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].samples_computed == 16


def _hostport(address: str) -> str:
    return address.split("://", 1)[1]


@pytest.mark.slow
def test_another_user_cannot_connect_to_the_run_local_cluster(running):
    from distributed import Client

    run_client = running.client
    address = run_client.scheduler.address
    workers = run_client.scheduler_info()["workers"]
    servers = [address, *workers, *(w["nanny"] for w in workers.values() if w.get("nanny"))]
    hostports = [_hostport(a) for a in servers]
    assert len(hostports) >= 3 and all(hp.startswith("127.0.0.1:") for hp in hostports)
    assert running.dashboard is not None and running.dashboard.startswith("http://127.0.0.1:")

    # another user of the machine, meanwhile
    attack = subprocess.Popen(
        _nobody_command(hostports, address),
        env=_nobody_env(),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # this user, without the run's credentials: plain TCP, and TLS with other credentials
    with pytest.raises(OSError):
        Client("tcp://" + hostports[0], timeout=5)
    with pytest.raises(OSError):
        Client(address, security=local_security(), timeout=5)
    out, err = attack.communicate(timeout=120)
    assert attack.returncode == 0, err
    tries = json.loads(out)
    assert tries.pop("uid") == NOBODY
    assert len(tries) >= len(hostports)
    let_in = {what: said for what, said in tries.items() if not said.startswith("refused")}
    assert not let_in, f"a process of user nobody got in: {let_in}"

    # nor does its dashboard show them anything outside the path made for the run
    m = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/([\w-]+)/status", running.dashboard)
    assert m, running.dashboard
    base = m.group(1)
    paths = [
        "/status",
        "/info/main/workers.html",
        "/individual-plots.json",
        "/",
        "/health",
        "/guessed/status",
    ]
    pages = [base + p for p in paths]
    fetch = (
        "import json, sys, urllib.error, urllib.request\n"
        "out = {}\n"
        "for url in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        out[url] = urllib.request.urlopen(url, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out[url] = e.code\n"
        "print(json.dumps(out))\n"
    )
    seen = subprocess.run(
        [*_as_nobody(), sys.executable, "-I", "-c", fetch, json.dumps(pages)],
        env=_nobody_env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout) == dict.fromkeys(pages, 403)
    with urllib.request.urlopen(running.dashboard, timeout=30) as page:  # the link does open
        assert page.status == 200

    # the run's own credentials do get in, on that very port, and run code in its workers
    with Client(address, security=run_client.security, timeout=10) as mine:
        assert mine.run(os.getuid) == dict.fromkeys(workers, os.getuid())


def test_local_security_requires_tls_with_fresh_credentials():
    first, second = local_security(), local_security()
    assert first.require_encryption and second.require_encryption
    assert first.tls_ca_file != second.tls_ca_file  # a new certificate for each cluster
    assert first.get_connection_args("client")["ssl_context"] is not None


def test_the_servers_of_a_run_never_use_a_scratch_folder_someone_else_made(tmp_path):
    """distributed puts its scratch folder (dask's temporary-directory, by default
    /tmp/dask-scratch-space, which it takes whoever made it) first on sys.path, in the
    driver and in every worker: a module another user planted there (gilknocker.py,
    which each server tries to import) ran as this user. A run's cluster now has a
    folder made for it (mode 0700), removed when it stops."""
    import dask

    shared = tmp_path / "shared"  # a temporary-directory another user could write into
    planted = shared / "dask-scratch-space"
    planted.mkdir(parents=True)
    marker = tmp_path / "ran-as-me"
    (planted / "gilknocker.py").write_text(f"open({str(marker)!r}, 'a').write('x')\nraise ImportError\n")
    seen: list[str] = []

    class Watch:
        def on_block_end(self, event: BlockEnd) -> None:
            seen.extend(p for p in sys.path if p.startswith(str(shared)))

    with dask.config.set({"temporary-directory": str(shared)}):
        res = db.run(
            slow_square,
            db.Grid(x=np.arange(4.0)),
            tmp_path / "s.zarr",
            cluster="local",
            n_workers=1,
            chunk_size=2,
            progress=False,
            callbacks=[Watch()],
        )
    assert res.complete
    assert not marker.exists(), "a planted module ran in the run's processes"
    assert seen and all(p.startswith(str(shared / "daskbatch-scratch-")) for p in seen), seen
    assert not any(p.startswith(str(shared)) for p in sys.path)  # taken off again
    assert sorted(os.listdir(shared)) == ["dask-scratch-space"]  # and removed


def test_a_private_scratch_folder_is_made_where_configured_and_stale_ones_go(tmp_path, monkeypatch):
    """Under dask's temporary-directory (made if missing, relative to the working folder);
    this user's folders of runs killed outright (their process gone) are removed as a new
    one is made, those of a live process kept."""
    import dask

    from daskbatch.scratch import private_scratch, users_temporary_directory

    monkeypatch.chdir(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "rel" / "deeper" / f"daskbatch-scratch-{int(dead.stdout)}-abcd1234"
    (stale / "dask-scratch-space" / "worker-x").mkdir(parents=True)
    live = tmp_path / "rel" / "deeper" / f"daskbatch-scratch-{os.getpid()}-live0000"
    live.mkdir()
    with dask.config.set({"temporary-directory": "rel/deeper"}), private_scratch() as path:
        assert os.path.dirname(path) == str(tmp_path / "rel" / "deeper")
        assert oct(os.stat(path).st_mode & 0o777) == "0o700"
        assert dask.config.get("temporary-directory") == path
        assert users_temporary_directory() == "rel/deeper"  # as configured, for job scripts
    assert not os.path.exists(path) and not stale.exists() and live.exists()


def test_a_worker_jobs_scratch_folder_is_its_own_and_only_it_is_removed(tmp_path):
    """The job script's lines, in bash: after the user's prologue (which may point
    DASK_TEMPORARY_DIRECTORY at a folder of theirs, shared by jobs), a folder of the job's
    own under it, removed when the job ends; the user's folder stays. A TMPDIR that does
    not exist on the node falls back to /tmp, never to dask's shared folder."""
    import daskbatch.hpc as hpc

    shared = tmp_path / "shared-dask"
    (shared / "other-job").mkdir(parents=True)
    jq = db.JobQueue(
        "slurm",
        cores=1,
        memory="1GB",
        walltime="01:00:00",
        prologue=(f"export DASK_TEMPORARY_DIRECTORY={shared}",),
    )
    script = hpc.job_script(jq)
    lines = script.splitlines()
    start = lines.index(f"export DASK_TEMPORARY_DIRECTORY={shared}")
    end = next(i for i, line in enumerate(lines) if line.startswith("trap "))
    body = "\n".join(lines[start : end + 1]) + '\necho "$DASK_TEMPORARY_DIRECTORY"\n'
    r = subprocess.run(["bash", "-c", body], capture_output=True, text=True)
    made = r.stdout.strip()
    assert r.returncode == 0 and made.startswith(f"{shared}/daskbatch-scratch-"), r
    assert not os.path.exists(made) and (shared / "other-job").is_dir()  # only its own removed
    body = "\n".join(lines[start + 1 : end + 1]) + '\necho "$DASK_TEMPORARY_DIRECTORY"\n'
    env = {k: v for k, v in os.environ.items() if k != "DASK_TEMPORARY_DIRECTORY"}
    (tmp_path / "a-file").write_text("")  # a TMPDIR that cannot hold a folder
    env["TMPDIR"] = str(tmp_path / "a-file" / "x")
    r = subprocess.run(["bash", "-c", body], capture_output=True, text=True, env=env)
    made = r.stdout.strip()
    assert r.returncode == 0 and made.startswith("/tmp/daskbatch-scratch-"), r
    assert not os.path.exists(made)
