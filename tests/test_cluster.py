"""Executor types by name with capability flags, process hygiene, settings, logging."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import pytest

from daskbatch import cluster, config, executors, hygiene
from daskbatch.cluster import (
    ClusterSpec,
    Executor,
    check_can_spawn,
    executor_names,
    get_executor,
    parse_cluster,
    register_executor,
    start_executor,
)
from daskbatch.errors import ClusterError
from daskbatch.progress import Progress

FLAGS = (
    "in_driver",
    "separate_processes",
    "workers_known_before_start",
    "probe_on_worker",
    "can_end_worker",
    "needs_main_guard",
    "starts_cluster",
    "imports_like_driver",
    "forks_driver",
)

#: the flags of each built-in executor type, in the order of FLAGS
EXPECTED = {
    "serial": (True, False, True, False, False, False, False, True, False),
    "threads": (True, False, True, False, False, False, False, True, False),
    "processes": (False, True, True, False, True, True, False, True, False),
    "local": (False, True, True, False, True, True, True, True, False),
    "fork": (False, True, True, False, True, False, False, True, True),
    "address": (False, True, False, False, True, False, False, False, False),
    "client": (False, True, True, True, True, False, False, False, False),
}


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python, with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test, so that its registrations do not stay."""
    monkeypatch.setattr(executors, "_EXECUTORS", dict(executors._EXECUTORS))


# --------------------------------------------------------------------------- the registry


def test_every_built_in_name_is_registered_in_order():
    assert executor_names() == (
        *("serial", "threads", "processes", "local", "fork", "address", "client"),
        *("slurm", "pbs", "sge", "lsf", "deploy"),
    )
    assert executor_names(by_name_only=True) == ("serial", "threads", "processes", "local", "fork")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_flags_of_each_executor_type(name):
    entry = get_executor(name)
    assert tuple(getattr(entry, f) for f in FLAGS) == EXPECTED[name]
    spec = (
        parse_cluster("tcp://127.0.0.1:8786")
        if name == "address"
        else ClusterSpec(name, None, client=object())
        if name == "client"
        else parse_cluster(name, 1 if name == "serial" else 2)
    )
    assert spec.name == name and spec.kind == name and spec.executor is entry
    assert tuple(getattr(spec, f) for f in FLAGS) == EXPECTED[name]


@pytest.mark.parametrize("where", ["gc callback", "weakref callback", "__del__"])
def test_a_signal_that_lands_where_python_drops_exceptions_still_stops(where):
    """Python drops an exception raised in code the garbage collector runs (distributed
    registers a gc callback; any library may have weakref callbacks or ``__del__``):
    a signal handled there comes again, and stops the run after it."""
    import gc
    import weakref

    from daskbatch.errors import Stopped

    sent: list[bool] = []

    def interrupt(*_):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)  # handled at the next instruction: in here
            time.sleep(0.01)

    class Cycle:
        def __del__(self):
            if where == "__del__":
                interrupt()

    def gc_callback(phase, info):
        if phase == "start":
            interrupt()

    garbage = Cycle()
    garbage.me = garbage  # freed by the collector only
    keep = weakref.ref(garbage, interrupt if where == "weakref callback" else None)
    del garbage
    with pytest.raises(Stopped), cluster.signals_stop(signal.SIGUSR1) as received:
        if where == "gc callback":
            gc.callbacks.append(gc_callback)
        try:
            gc.collect()
            assert sent and not received  # not yet: raised in there, it was lost
            time.sleep(2)  # the signal again
        finally:
            if where == "gc callback":
                gc.callbacks.remove(gc_callback)
    assert received == [signal.SIGUSR1] and keep() is None


def test_a_timeout_never_ends_the_driver():
    for name in executor_names():
        entry = get_executor(name)
        assert not (entry.in_driver and (entry.can_end_worker or entry.separate_processes)), name


def test_a_fresh_import_of_cluster_registers_every_executor_type():
    r = _run("import daskbatch.cluster as c; print(','.join(c.executor_names()))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["serial,threads,processes,local,fork,address,client,slurm,pbs,sge,lsf,deploy"]


def test_executors_does_not_import_cluster():
    """The registry is the lower layer: :mod:`daskbatch.cluster` imports it, never
    the other way round (no import cycle)."""
    import ast

    for module in (executors, hygiene):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(f"{node.module or ''}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not {n for n in imported if n.lstrip(".").split(".")[-1] == "cluster"}, module.__name__


def test_workers_before_start_and_descriptions():
    assert parse_cluster("serial", 3).workers_before_start == 1
    assert parse_cluster("threads", 3).workers_before_start == 3
    assert parse_cluster("processes").workers_before_start == cluster.default_workers()
    assert parse_cluster("local", 2).description == "local (2 worker processes, LocalCluster, 1 thread each)"
    assert parse_cluster("processes", 3).description == "processes (3 processes)"
    assert parse_cluster("serial").description == "serial (one thread, in this process)"
    address = parse_cluster("127.0.0.1:8786")
    assert address.workers_before_start is None
    assert address.description == "scheduler at tcp://127.0.0.1:8786"


def test_label_is_the_address_of_a_running_scheduler_else_the_name():
    assert parse_cluster("127.0.0.1:8786").label == "tcp://127.0.0.1:8786"
    assert parse_cluster("tls://sched:8786").label == "tls://sched:8786"
    assert parse_cluster("local", 2).label == "local"
    assert parse_cluster("serial").label == "serial"


def test_kind_is_a_read_only_alias_of_the_name():
    spec = parse_cluster("threads", 2)
    with pytest.raises(AttributeError):
        spec.kind = "serial"  # type: ignore[misc]
    assert spec.kind == "threads"


def test_an_unknown_name_names_the_bad_value_and_the_known_names():
    with pytest.raises(ClusterError) as e:
        parse_cluster("gpu")
    assert str(e.value) == (
        "cluster='gpu' is not valid; use one of ['serial', 'threads', 'processes', 'local', 'fork', 'auto'], "
        "a scheduler address such as 'tcp://127.0.0.1:8786', a distributed.Client, "
        "'slurm', 'pbs', 'sge' or 'lsf' (or a daskbatch.JobQueue), "
        "or a running distributed Cluster (dask_jobqueue.SLURMCluster, ...)"
    )
    with pytest.raises(ClusterError, match=r"cluster=3 is not valid; use one of \['serial'"):
        parse_cluster(3)
    for make in (lambda: ClusterSpec("gpu", None), lambda: get_executor("gpu")):
        with pytest.raises(ClusterError) as e:
            make()
        assert "'gpu'" in str(e.value)
        assert all(repr(n) in str(e.value) for n in EXPECTED), str(e.value)


def test_n_workers_with_a_running_cluster_is_refused():
    with pytest.raises(ClusterError, match="a running scheduler; start that many workers"):
        parse_cluster("tcp://127.0.0.1:8786", 2)
    with pytest.raises(ClusterError, match="n_workers=0 must be a positive integer"):
        parse_cluster("local", 0)


def _twice():
    import daskbatch as db

    @db.kernel(outputs={"y": db.Output()})
    def twice(x):
        return 2 * x

    return twice


def test_n_workers_above_one_with_serial_is_said_to_be_ignored(tmp_path, caplog):
    """cluster='serial' computes in one thread: four workers asked for are not silently one
    (not refused: a script looping over schedulers keeps its n_workers, and a resume replays
    the options its store recorded)."""
    assert parse_cluster("serial", 1).description == "serial (one thread, in this process)"
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        result = db_run_serial(tmp_path / "s.zarr", n_workers=4)
    warned = [r.getMessage() for r in caplog.records if "is ignored with cluster='serial'" in r.getMessage()]
    assert len(warned) == 1 and "n_workers=4" in warned[0] and "cluster='threads'" in warned[0], warned
    assert result.samples["ok"] == 2


def db_run_serial(store, **kw):
    import daskbatch as db

    return db.run(_twice(), db.Grid(x=[1.0, 2.0]), store, cluster="serial", progress=False, **kw)


def test_a_tls_scheduler_without_credentials_names_the_config_keys():
    """A user's own tls:// address is used as given, with dask's TLS config: none set
    is one line naming the keys, not distributed's TypeError."""
    spec = parse_cluster("tls://127.0.0.1:9")
    assert spec.address == "tls://127.0.0.1:9"
    with pytest.raises(ClusterError) as e, start_executor(spec):
        pass
    text = str(e.value)
    assert "\n" not in text and "'tls://127.0.0.1:9'" in text
    assert "distributed.comm.tls.ca-file" in text and "distributed.comm.tls.client.cert" in text
    # and the Client that failed to connect is not left as dask's default (every later
    # dask compute in this process would wait on it)
    from distributed.client import _get_global_client

    assert dask.config.get("scheduler", None) != "dask.distributed" and _get_global_client() is None


@pytest.mark.slow
def test_the_local_cluster_speaks_tls_on_127_0_0_1_with_its_dashboard_on_http():
    """Only its own processes, holding the cluster's credentials, get in (see
    test_security.py for another user's attempts); its dashboard lives under a path made
    for the run, which the printed link has, and outside it serves nothing but /health."""
    import http.client
    import urllib.error

    from distributed import Client
    from distributed.scheduler import DEFAULT_EXTENSIONS

    with start_executor(parse_cluster("local", 1)) as ex:
        address = ex.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert ex.client.security.require_encryption
        link = ex.dashboard_link or ""
        m = re.fullmatch(r"(http://127\.0\.0\.1:(\d+))/([\w-]{32})/status", link)
        assert m, link
        base, port, token = m.groups()
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        ex.client.wait_for_workers(1, timeout=60)
        assert all(w.startswith("tls://127.0.0.1:") for w in ex.client.scheduler_info()["workers"])
        # the gate was put in place as the scheduler was made, before its event loop could
        # answer anyone; distributed's own extensions kept
        extensions = ex._cluster.scheduler.extensions
        assert extensions["daskbatch-dashguard"].prefix == f"/{token}"
        assert set(DEFAULT_EXTENSIONS) <= set(extensions)

        def code(path: str, method: str = "GET", **headers: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
            try:
                conn.request(method, path, headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()

        assert code(f"/{token}/health") == 200 and code("/health") == 403
        # distributed's package files, which its info pages ask for outside the path
        assert code("/statics/css/sortable.min.css") == 200 and code("/statics/../status") == 403
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        for path in ("/status", "/info/main/workers.html", "/individual-plots.json", "/", f"/{wrong}/status",
                     f"/{token[:-1]}/status", f"/x/{token}/status", f"/status?token={token}"):  # fmt: skip
            assert code(path) == 403, path
        assert code("/status", method="HEAD") == 403
        # the bokeh page's websocket, outside the path
        ws = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        assert code("/status/ws", **ws, **{"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) == 403
        # the link, its pages and what tools add to it (JupyterLab's dask extension)
        with urllib.request.urlopen(link, timeout=30) as page:
            assert page.status == 200 and b"Dask" in page.read()
        for path in ("/info/main/workers.html", "/individual-plots.json", "/individual-task-stream"):
            assert code(f"/{token}{path}") == 200, path
        assert code(f"/{token}/status/ws", **ws, **{"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) == 101
        # the path alone goes to its status page, still under it
        for path, where in ((f"/{token}", f"{token}/status"), (f"/{token}/", "status")):
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
            conn.request("GET", path)
            answer = conn.getresponse()
            assert (answer.status, answer.getheader("Location")) == (302, where), path
            conn.close()
        # and no proxy to other hosts and ports, even under the path
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/{token}/proxy/22/127.0.0.1/", timeout=10)
        assert e.value.code == 404


def test_a_registered_executor_type_is_one_registration(registry, tmp_path):
    """A new name: parsed, flagged, described, started and computing real blocks; a
    name standing for another one (as "auto" will) is one registration too."""
    started = []

    @contextmanager
    def start_two_threads(spec, memory_limit):
        started.append((spec.name, memory_limit))
        yield Executor(spec)

    register_executor(
        "two-threads",
        start_two_threads,
        in_driver=True,
        separate_processes=False,
        workers_known_before_start=True,
        dask_scheduler="threads",
        count_workers=lambda spec: 2,
    )
    register_executor("pick", resolve=lambda n_workers: "two-threads" if n_workers else "serial")
    spec = parse_cluster("two-threads")
    assert spec.in_driver and not spec.can_end_worker and spec.workers_before_start == 2
    assert spec.description == "two-threads (2 workers)" and spec.label == "two-threads"
    with pytest.raises(ClusterError, match=r"use one of \[.*'two-threads', 'pick', 'auto'\]"):
        parse_cluster("nope")
    assert parse_cluster("pick", 4).name == "two-threads"
    assert parse_cluster("pick").name == "serial"

    done = []
    tasks = [dask.delayed(np.square)(np.arange(i, i + 3)) for i in range(5)]
    with start_executor(spec, memory_limit=123) as ex:
        assert ex.n_workers == 2
        assert ex.compute(tasks, done.append) == []
    assert started == [("two-threads", 123)]
    assert sorted(int(d.sum()) for d in done) == sorted(
        int((np.arange(i, i + 3) ** 2).sum()) for i in range(5)
    )


def test_registration_is_checked(registry):
    @contextmanager
    def start(spec, memory_limit):
        yield Executor(spec)

    with pytest.raises(ValueError, match="already registered"):
        register_executor("local", start)
    with pytest.raises(ValueError, match="in_driver"):
        register_executor("odd", start, in_driver=True)  # separate_processes defaults to True
    with pytest.raises(ValueError, match="needs start="):
        register_executor("nothing")
    register_executor("selfish", resolve=lambda n: "selfish")
    with pytest.raises(ClusterError, match="stands for itself"):
        parse_cluster("selfish")
    replaced = register_executor("local", start, replace=True, starts_cluster=True)
    assert get_executor("local") is replaced
    assert replaced.can_end_worker  # the default: separate_processes


@pytest.mark.parametrize(("name", "refused"), [("processes", True), ("local", True), ("threads", False)])
def test_only_types_that_spawn_processes_need_a_main_file(name, refused):
    """Code fed on standard input has no file that spawned processes could re-run."""
    script = f"from daskbatch.cluster import check_can_spawn, parse_cluster\ncheck_can_spawn(parse_cluster({name!r}))\n"
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    if refused:
        assert r.returncode == 1 and f"cluster={name!r} starts worker processes" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
    check_can_spawn(parse_cluster(name))  # pytest's __main__ is a file


@pytest.mark.parametrize("name", ["local", "processes"])
def test_a_script_calling_run_at_top_level_is_refused_before_anything_starts(tmp_path, name):
    """Spawned workers would run the script's top level again (225 lines of their
    tracebacks, or a pool that broke as if a sample had crashed it): refused first."""
    (tmp_path / "k.py").write_text(
        "import daskbatch as db\n@db.kernel(outputs={'y': db.Output()})\ndef sq(x):\n    return x * x\n"
    )
    (tmp_path / "top.py").write_text(
        "import numpy as np\nimport daskbatch as db\nfrom k import sq\nprint('TOP LEVEL')\n"
        "def main():\n"
        f"    db.run(sq, db.Grid(x=np.arange(8.0)), 's.zarr', cluster={name!r}, progress=False)\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "top.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "TOP LEVEL\n", (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"daskbatch.errors.ClusterError: cluster={name!r} starts worker processes")
    assert 'under `if __name__ == "__main__":`' in last and "cluster='auto'" in last
    assert "Nanny" not in r.stderr and "died" not in r.stderr
    assert not (tmp_path / "s.zarr").exists()
    # under the guard the same call runs
    (tmp_path / "top.py").write_text(
        (tmp_path / "top.py").read_text().replace("main()\n", "if __name__ == '__main__':\n    main()\n")
    )
    r = subprocess.run([sys.executable, "top.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # (each worker prints the top level's line again)
    import daskbatch as db

    assert db.status(tmp_path / "s.zarr").samples["ok"] == 8


def test_a_threads_executor_computes_real_blocks(tmp_path):
    import zarr

    store = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    arr = store.create_array("y", shape=(12,), chunks=(4,), dtype="f8")

    def block(i):
        arr[4 * i : 4 * i + 4] = np.arange(4 * i, 4 * i + 4) * 2.0
        return i

    done = []
    with start_executor(parse_cluster("threads", 2)) as ex:
        assert ex.client is None and ex.n_workers == 2
        ex.compute([dask.delayed(block)(i) for i in range(3)], done.append)
    assert sorted(done) == [0, 1, 2]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "t.zarr"))["y"][:], np.arange(12) * 2.0)


# --------------------------------------------------------------------------- process hygiene


def test_the_old_names_still_come_from_cluster():
    assert cluster.limit_malloc_arenas is hygiene.limit_malloc_arenas
    assert cluster.release_freed_memory is hygiene.release_freed_memory
    for name in executors.__all__:
        assert getattr(cluster, name) is getattr(executors, name), name
        assert name in cluster.__all__, name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forkserver's environment")
def test_forkserver_children_start_with_the_configured_malloc_arenas(tmp_path):
    """From ``daskbatch.malloc-arenas`` (here its environment variable); the driver's own
    environment is left as it was."""
    script = tmp_path / "arenas.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os
            from daskbatch import hygiene

            def report(conn):
                conn.send(os.environ.get("MALLOC_ARENA_MAX"))

            if __name__ == "__main__":
                hygiene.start_forkserver()
                ctx = multiprocessing.get_context("forkserver")
                receive, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=report, args=(send,))
                p.start()
                print(receive.recv(), os.environ.get("MALLOC_ARENA_MAX"))
                p.join()
            """
        )
    )
    for value, expected in (("3", "3"), ("0", "None")):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        r = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "DASK_DASKBATCH__MALLOC_ARENAS": value},
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [expected, "None"], r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forkserver")
def test_a_crashed_forkserver_child_leaves_no_tracked_blosc_lock(tmp_path):
    """A forkserver child that used Blosc and then died by a signal: its Blosc lock was
    a named semaphore the shared resource tracker followed, and the tracker printed
    "leaked semaphore objects" at exit. Now each forked process has an anonymous lock
    of its own (daskbatch.hygiene.own_blosc_lock), and the run ends quietly."""
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, signal
            import numcodecs.blosc
            import numpy as np
            from daskbatch import hygiene

            def crash(conn):
                numcodecs.blosc.Blosc().encode(np.arange(1000.0))  # makes or takes the lock
                lock = numcodecs.blosc.get_mutex()
                conn.send((lock._semlock.name, os.getpid()))
                os.kill(os.getpid(), signal.SIGSEGV)

            if __name__ == "__main__":
                hygiene.start_forkserver(["numcodecs.blosc"])
                ctx = multiprocessing.get_context("forkserver")
                receive, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=crash, args=(send,))
                p.start()
                name, pid = receive.recv()
                p.join()
                print(name, p.exitcode == -signal.SIGSEGV)
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "True"], r.stdout  # anonymous: nothing to track
    assert "leaked semaphore" not in r.stderr and r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_pool_worker_ends_when_its_driver_is_killed(tmp_path):
    """A process that called :func:`die_with_parent` goes when its driver is SIGKILLed
    (without it, the processes scheduler's idle workers outlived a killed driver)."""
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multiprocessing, os, time
            from daskbatch import hygiene

            def child():
                hygiene.die_with_parent()
                open({str(pid_file)!r} + ".tmp", "w").write(str(os.getpid()))
                os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
                time.sleep(120)

            if __name__ == "__main__":
                multiprocessing.get_context("spawn").Process(target=child).start()
                time.sleep(120)
            """
        )
    )
    driver = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.time() + 60
        while not pid_file.exists():
            assert time.time() < deadline and driver.poll() is None, "the child did not start"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # alive
    finally:
        driver.kill()
        driver.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed driver")


# --------------------------------------------------------------------------- settings

SETTINGS = {
    "progress.interval": 30.0,
    "malloc-arenas": 1,
    "probe.samples": 16,
    "probe.vector-samples": 16384,
    "probe.quick-seconds": 0.05,
    "probe.seconds": 0.5,
    "publish-interval": 2.0,
    "auto.start-seconds": 1.25,
    "auto.fork-start-seconds": 0.1,
    "auto.fork-up-to-seconds": 60.0,
    "auto.driver-seconds-per-block": 0.005,
    "connect-timeout": 10.0,
    "lease.seconds": 60.0,
    "shown-errors": 5,
    "table.scan-up-to": 64 << 20,
    "verbose": False,
    "cli": False,
}


def test_the_defaults_are_in_dasks_config():
    for key, value in SETTINGS.items():
        assert dask.config.get(f"daskbatch.{key}") == value, key
        got = config.get(key)
        assert got == value and type(got) is type(value), key
        assert config.get(f"daskbatch.{key}") == value
    assert set(config.TYPES) == set(SETTINGS)


def test_the_defaults_file_ships_with_the_package():
    shipped = importlib.resources.files("daskbatch").joinpath("daskbatch.yaml")
    assert shipped.is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"daskbatch.yaml"' in pyproject


def test_dask_config_set_is_seen_when_read():
    with dask.config.set({"daskbatch.probe.samples": 32, "daskbatch.progress.interval": 1}):
        assert config.get("probe.samples") == 32
        assert config.get("progress.interval") == 1.0
        assert Progress(10, enabled=False).interval == 1.0
    assert config.get("probe.samples") == 16
    assert Progress(10, enabled=False).interval == 30.0
    with dask.config.set({"daskbatch.cli": True}):  # what the command line sets
        assert config.get("cli") is True
        assert dask.config.get("daskbatch.cli", False) is True


def test_environment_variables_are_seen():
    """dask's own ``DASK_DASKBATCH__...`` names; the older DASKBATCH_PROGRESS_INTERVAL
    still counts, below everything set in dask's config."""
    r = _run(
        """
        import dask
        from daskbatch import config
        from daskbatch.progress import Progress
        print(config.get("probe.samples"), config.get("probe.quick-seconds"), config.get("verbose"),
              config.get("progress.interval"), Progress(1, enabled=False).interval)
        with dask.config.set({"daskbatch.progress.interval": 7}):
            print(config.get("progress.interval"))
        """,
        env={
            "DASK_DASKBATCH__PROBE__SAMPLES": "64",
            "DASK_DASKBATCH__PROBE__QUICK_SECONDS": "0.2",
            "DASK_DASKBATCH__VERBOSE": "True",
            "DASKBATCH_PROGRESS_INTERVAL": "0.3",
        },
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["64", "0.2", "True", "0.3", "0.3", "7.0"]
    r = _run(
        "from daskbatch import config; print(config.get('progress.interval'))",
        env={"DASK_DASKBATCH__PROGRESS__INTERVAL": "5", "DASKBATCH_PROGRESS_INTERVAL": "0.3"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["5.0"]


def test_a_bad_value_or_key_names_itself():
    with dask.config.set({"daskbatch.probe.samples": "many"}), pytest.raises(config.ConfigError) as e:
        config.get("probe.samples")
    assert "daskbatch.probe.samples='many' is not an integer" in str(e.value)
    assert "DASK_DASKBATCH__PROBE__SAMPLES" in str(e.value)
    with dask.config.set({"daskbatch.probe.samples": 2.5}), pytest.raises(config.ConfigError):
        config.get("probe.samples")
    with (
        dask.config.set({"daskbatch.verbose": "maybe"}),
        pytest.raises(config.ConfigError, match="true or false"),
    ):
        config.get("verbose")
    with pytest.raises(KeyError, match="probe.samples"):
        config.get("probe.sample")
    # out of range: named with its least value, its default and a variable a shell can set
    for key, value, words in [
        ("probe.samples", 0, r"probe.samples=0 must be a finite number >= 1 \(the default is 16\)"),
        ("shown-errors", -1, r"shown-errors=-1 must be a finite number >= 0.*DASK_DASKBATCH__SHOWN_ERRORS\)"),
        ("connect-timeout", 0, r"connect-timeout=0 must be a finite number > 0"),
        ("publish-interval", float("nan"), r"publish-interval=nan must be a finite number > 0"),
    ]:
        with dask.config.set({f"daskbatch.{key}": value}), pytest.raises(config.ConfigError, match=words):
            config.get(key)
    with dask.config.set({"daskbatch.progress.interval": 0}):  # a line at every update
        assert config.get("progress.interval") == 0.0


# --------------------------------------------------------------------------- logging


def test_log_lines_show_on_stderr_as_daskbatch_lines_by_default():
    r = _run(
        """
        import logging
        from daskbatch.log import logger
        logger.info("took over the lock")
        logging.getLogger("daskbatch.probe").warning("probe ended its process")
        logger.debug("not shown")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "daskbatch: took over the lock\ndaskbatch: probe ended its process\n"
    assert r.stdout == ""


def test_importing_daskbatch_sets_up_the_logger_for_its_modules():
    r = _run(
        """
        import logging
        import daskbatch
        logging.getLogger("daskbatch.engine").info("from a module of the package")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "daskbatch: from a module of the package\n"


def test_the_users_level_silences_them():
    r = _run(
        """
        import logging
        import daskbatch
        logging.getLogger("daskbatch").setLevel(logging.WARNING)
        from daskbatch.log import logger
        logger.info("quiet")
        logger.warning("loud")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "daskbatch: loud\n"


def test_a_level_set_before_import_is_kept():
    r = _run(
        """
        import logging
        logging.getLogger("daskbatch").setLevel(logging.ERROR)
        from daskbatch.log import logger
        logger.warning("quiet")
        print(logger.level)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.split() == [str(logging.ERROR)]


def test_logging_the_user_configured_shows_each_line_once_their_way(tmp_path):
    """basicConfig on the terminal: their format, no second line; a handler of their own
    on the daskbatch logger: only theirs; a log file of theirs: the file and stderr."""
    r = _run(
        """
        import logging
        logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
        from daskbatch.log import logger
        logger.info("once")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "INFO daskbatch once\n"
    r = _run(
        """
        import logging, sys
        from daskbatch.log import logger
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("mine: %(message)s"))
        logger.addHandler(handler)
        logger.info("theirs")
        """
    )
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("mine: theirs\n", "")
    log = tmp_path / "run.log"
    r = _run(
        f"""
        import logging
        logging.basicConfig(filename={str(log)!r}, format="%(name)s %(message)s")
        from daskbatch.log import logger
        logger.info("both")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "daskbatch: both\n"
    assert log.read_text() == "daskbatch both\n"


def test_log_lines_reach_stderr_and_the_users_capture_in_process(capfd, caplog):
    from daskbatch.log import logger

    caplog.set_level(logging.INFO, logger="daskbatch")
    logger.info("seen twice")
    assert capfd.readouterr().err == "daskbatch: seen twice\n"
    assert [r.getMessage() for r in caplog.records] == ["seen twice"]


_PROJECT_KERNEL = """\
import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def scaled(a):
    return FACTOR * a + OFFSET
"""

_SAME_PROCESS = """\
import importlib
import pathlib
import sys

import numpy as np

import daskbatch as db
from daskbatch.cli import main

import kernel  # beside this script, as beside a notebook: the forkserver preloads it

here = pathlib.Path(__file__).parent
grid = db.Grid(a=np.linspace(0.0, 9.0, 10))


def check(store, factor, offset=0.0):
    ds = db.open(store)
    print(store.name, bool(np.array_equal(ds["y"].values, factor * ds["a"].values + offset)))


def run(name):
    db.run(kernel.scaled, grid, here / name, cluster="local", n_workers=1, chunk_size=4, progress=False)


def edit(module, old, new):
    file = here / f"{module.__name__}.py"
    file.write_text(file.read_text().replace(old, new))
    importlib.reload(module)  # as a notebook's autoreload does


if __name__ == "__main__":
    run("first.zarr")
    check(here / "first.zarr", 2.0)
    edit(kernel, "OFFSET = 0.0", "OFFSET = 1.0")  # the kernel's own module
    run("edited.zarr")
    check(here / "edited.zarr", 2.0, 1.0)
    import helper

    edit(helper, "FACTOR = 2.0", "FACTOR = 5.0")  # a module the kernel imports
    run("helper.zarr")
    check(here / "helper.zarr", 5.0, 1.0)
    # another project's kernel.py, run from its spec file in this process
    other = pathlib.Path(sys.argv[1])
    assert main(["run", str(other / "spec.toml"), "--no-progress"]) == 0
    check(other / "other.zarr", 3.0)
"""


def test_workers_run_the_kernel_as_it_is_now_after_an_edit_and_reload_or_another_projects_module(tmp_path):
    """The forkserver lives as long as the driver and preloads the kernel's module (and
    what it imports): the processes forked from it import the user's own modules again,
    so a kernel or a helper module edited and reloaded, or another project's module of
    the same name, is what the workers run (before: the first version, silently, while
    the store recorded the new one)."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    (mine / "helper.py").write_text("FACTOR = 2.0\n")
    (mine / "kernel.py").write_text(
        "import helper\n\nOFFSET = 0.0\n" + _PROJECT_KERNEL.replace("FACTOR *", "helper.FACTOR *")
    )
    other.mkdir()  # its own kernel.py, without a helper
    (other / "kernel.py").write_text("FACTOR = 3.0\nOFFSET = 0.0\n" + _PROJECT_KERNEL)
    (other / "spec.toml").write_text(
        'kernel = "kernel:scaled"\nstore = "other.zarr"\ncluster = "local"\nworkers = 1\nchunk_size = 4\n'
        '[space]\ntype = "grid"\n[space.axes]\na = {linspace = [0, 9, 10]}\n'
    )
    (mine / "script.py").write_text(_SAME_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(mine / "script.py"), str(other)],
        cwd=mine,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checks = [line for line in done.stdout.splitlines() if line.split()[-1:] in (["True"], ["False"])]
    assert checks == ["first.zarr True", "edited.zarr True", "helper.zarr True", "other.zarr True"], (
        done.stdout
    )


def test_the_forkserver_forgets_only_the_users_own_python_modules(tmp_path, monkeypatch):
    """What processes forked from the forkserver import again: the user's Python modules
    (a package and its modules too), never daskbatch's (its cores included), installed
    ones, or compiled extension modules."""
    import importlib

    pkg = tmp_path / "userpkg_fs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kern.py").write_text("X = 1\n")
    (tmp_path / "userhelper_fs.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("userpkg_fs.kern", "userhelper_fs"):
        importlib.import_module(name)
    try:
        users = hygiene.users_modules()
        assert {"userpkg_fs", "userpkg_fs.kern", "userhelper_fs"} <= set(users)
        assert not [n for n in users if n.split(".")[0] in ("daskbatch", "numpy", "distributed", "zarr")]
        assert not [n for n in users if not sys.modules[n].__file__.endswith(".py")]
        hygiene.forget_modules(["userpkg_fs", "userpkg_fs.kern", "userhelper_fs"])
        assert not {"userpkg_fs", "userpkg_fs.kern", "userhelper_fs"} & set(sys.modules)
    finally:
        for name in ("userpkg_fs", "userpkg_fs.kern", "userhelper_fs"):
            sys.modules.pop(name, None)


def test_a_dashboard_the_guard_cannot_reach_keeps_a_plain_link():
    """A scheduler without a dashboard (or a distributed that makes its server later
    than the guard expects) gets the plain link, not a path nothing serves."""
    from types import SimpleNamespace

    from daskbatch.dashguard import link, scheduler_options

    make = scheduler_options()["extensions"]["daskbatch-dashguard"]
    scheduler = SimpleNamespace(http_server=None, extensions={})
    scheduler.extensions["daskbatch-dashguard"] = make(scheduler)
    assert link(scheduler, 8787) == "http://127.0.0.1:8787/status"
