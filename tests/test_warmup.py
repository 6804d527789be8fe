"""What the driver imports while a run's workers compute, and forks made meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux only")


def _python(tmp_path, code: str) -> subprocess.CompletedProcess:
    path = tmp_path / "main.py"
    path.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_a_fork_during_a_background_import_waits_for_it_and_the_child_imports_freely(tmp_path):
    """Without the fork handler the child inherits the module's import lock held by a
    thread it does not have, and its own import of that module waits forever."""
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(0.8)\nVALUE = 42\n")
    r = _python(
        tmp_path,
        """
        import json, os, sys, time
        from daskbatch.lock import threads_besides_heartbeats
        from daskbatch.warmup import import_in_background, imports_done

        t0 = time.monotonic()
        thread = import_in_background(["slowmod"])
        assert thread is not None and import_in_background(["slowmod"]) is None  # one at a time
        time.sleep(0.2)  # the thread is inside slowmod's import now
        assert threads_besides_heartbeats() == 1  # a run may fork: the fork waits for it
        pid = os.fork()
        if pid == 0:
            import slowmod  # would hang without the handler
            os._exit(0 if slowmod.VALUE == 42 else 3)
        waited = time.monotonic() - t0
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"waited": waited, "status": status, "done": imports_done(0),
                          "again": import_in_background(["slowmod"]) is None}))
        """,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == 0 and out["done"] and out["again"]
    assert out["waited"] >= 0.75  # the fork came after the import's end


def test_an_import_that_fails_is_left_to_the_code_that_needs_it(tmp_path):
    (tmp_path / "badmod.py").write_text("raise RuntimeError('no')\n")
    r = _python(
        tmp_path,
        """
        import sys
        from daskbatch.warmup import import_in_background, imports_done

        import_in_background(["badmod", "json"]).join(30)
        assert imports_done(0) and "badmod" not in sys.modules
        try:
            import badmod
        except RuntimeError as e:
            print("raised", e)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "raised no"


def test_a_run_reducing_on_forked_workers_has_xarray_ready_when_it_returns(tmp_path):
    """A run of about 2 s imports xarray while its workers compute; a short one imports
    nothing, and the next run forks as it would have."""
    r = _python(
        tmp_path,
        """
        import json, sys
        import numpy as np
        import daskbatch as db
        from daskbatch.testing import slow_square
        from daskbatch.warmup import imports_done

        if __name__ == "__main__":
            space = db.Grid(x=np.arange(400.0))
            short = db.run(slow_square, space, "short.zarr", cluster="fork", progress=False,
                           reduce={"y": "sum"})
            after_short = "xarray" in sys.modules
            res = db.run(slow_square, space, "long.zarr", cluster="fork", progress=False,
                         constants={"delay": 0.01}, reduce={"y": "sum"})
            nxt = db.run(slow_square, space, "next.zarr", cluster="auto", n_workers=2, progress=False,
                         constants={"delay": 0.002})
            imports_done(30)
            print(json.dumps({"after_short": after_short, "ready": "xarray" in sys.modules,
                              "next": nxt.cluster,
                              "total": float(res.reductions["y_sum"]),
                              "want": float((np.arange(400.0) ** 2).sum())}))
        """,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["after_short"] is False  # under a second of work: no import
    assert out["ready"] is True and out["total"] == out["want"]
    assert out["next"].startswith("fork"), out


def test_a_result_read_while_a_background_import_fails_names_the_import_error(tmp_path):
    """A thread importing a module while another one's import of it fails gets the
    half-made module: the result waits for the background import to end first."""
    r = _python(
        tmp_path,
        """
        import importlib.abc, sys, time
        import numpy as np
        import daskbatch as db
        from daskbatch.testing import slow_square
        from daskbatch.warmup import import_in_background

        class Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "xarray.core.dataset":
                    time.sleep(0.5)
                    raise ImportError("xarray is broken here")
                return None

        if __name__ == "__main__":
            res = db.run(slow_square, db.Grid(x=np.arange(40.0)), "a.zarr", cluster="serial",
                         progress=False, reduce={"y": "sum"})
            assert "xarray" not in sys.modules
            sys.meta_path.insert(0, Broken())
            import_in_background(["xarray"])
            time.sleep(0.1)  # inside xarray's import, before it fails
            try:
                res.reductions
            except Exception as e:
                print(type(e).__name__, e)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "ImportError xarray is broken here", r.stdout
