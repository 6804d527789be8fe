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
        from daskbatch.warmup import import_in_background, imports_done

        t0 = time.monotonic()
        thread = import_in_background(["slowmod"])
        assert thread is not None and import_in_background(["slowmod"]) is None  # one at a time
        time.sleep(0.2)  # the thread is inside slowmod's import now
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
    r = _python(
        tmp_path,
        """
        import json, sys
        import numpy as np
        import daskbatch as db
        from daskbatch.testing import affine
        from daskbatch.warmup import imports_done

        if __name__ == "__main__":
            space = db.Grid(a=np.arange(400.0), b=[1.0, 2.0])
            before = "xarray" in sys.modules
            plain = db.run(affine, space, "a.zarr", cluster="fork", chunk_size=50, progress=False)
            after_plain = "xarray" in sys.modules
            res = db.run(affine, space, "b.zarr", cluster="fork", chunk_size=50, progress=False,
                         reduce={"y": "sum"})
            imports_done(30)
            ready = "xarray" in sys.modules
            total = float(res.reductions["y_sum"])
            print(json.dumps({"before": before, "after_plain": after_plain, "ready": ready,
                              "total": total, "want": float(db.open("a.zarr").y.sum())}))
        """,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["before"] is False and out["after_plain"] is False
    assert out["ready"] is True and out["total"] == out["want"]
