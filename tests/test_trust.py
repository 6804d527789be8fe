"""Reruns you can trust: edited kernels, resume from any folder, seedless designs.

Each test works as a user does: a kernel in a file of their own, edited between two
runs; the real CLI in a subprocess, run from another folder with no PYTHONPATH.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import KernelChangedError
from daskbatch.store import Store
from daskbatch.testing import damage_chunk

KERNEL = '''\
import numpy as np
import daskbatch as db

SCALE = 1.0


def helper(a):
    return a * SCALE


@db.kernel(outputs={"g": db.Output()})
def sphere(a, b):
    """Gravity of a buried sphere (not really)."""
    return helper(a) + b
'''

SPEC = """\
kernel = "gravity:sphere"
store = "my store.zarr"
cluster = "serial"
chunk_size = 10

[space]
type = "grid"
[space.axes]
a = {linspace = [0, 9, 10]}
b = [1.0, 2.0, 3.0]
"""


def _env() -> dict[str, str]:
    """The environment of a user's shell: nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("daskbatch")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=_env())


@pytest.fixture
def project(tmp_path) -> Path:
    d = tmp_path / "my project"
    d.mkdir()
    (d / "gravity.py").write_text(KERNEL)
    (d / "spec.toml").write_text(SPEC)
    return d


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    # an edit of the same size within the same second would reuse the old bytecode
    shutil.rmtree(path.parent / "__pycache__", ignore_errors=True)


def _forget_half(store: Path) -> None:
    st = Store(store)
    done = st.done_mask()
    blocks = [tuple(int(i) for i in b) for b in np.argwhere(done)]
    st.unmark(blocks[: len(blocks) // 2])


# --------------------------------------------------------------------------- edited kernels, CLI


def test_cli_edited_kernel_is_refused_with_a_diff_and_can_continue(project):
    store = project / "my store.zarr"
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr
    _forget_half(store)  # a run that stopped half-way

    _edit(project / "gravity.py", "return a * SCALE", "return a * SCALE * 100.0")
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "-    return a * SCALE" in r.stderr and "+    return a * SCALE * 100.0" in r.stderr
    assert "--kernel-changed continue" in r.stderr and "--overwrite" in r.stderr
    assert Store(store).done_mask().sum() == 2  # nothing was touched

    r = _cli("run", "spec.toml", "--no-progress", "--kernel-changed", "continue", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "code changed" in r.stderr
    info = Store(store).info()
    change = info["history"][-1]["kernel_changed"]
    assert change["from"] != change["to"] and "gravity:helper" in change["parts"]
    assert info["kernel_code"]["sha256"] == change["to"]
    s = _cli("status", str(store), cwd=project.parent)
    assert "went on with changed kernel code" in s.stdout, s.stdout
    # the next run with the same (new) code is not refused again
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr


def test_cli_finished_store_edited_kernel_is_refused(project):
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr
    _edit(project / "gravity.py", "SCALE = 1.0", "SCALE = 2.0")  # a constant the kernel uses
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 2
    assert "gravity:SCALE" in r.stderr and "nothing to compute" not in r.stdout
    r = _cli("run", "spec.toml", "--no-progress", "--overwrite", cwd=project)
    assert r.returncode == 0, r.stderr
    g = xr.open_zarr(project / "my store.zarr").g.values
    assert g[1, 0] == pytest.approx(2.0 * 1 + 1.0)


@pytest.mark.parametrize(
    "old,new",
    [
        ("    return helper(a) + b\n", "    # add the two\n    return helper(a)   +   b  # sum\n"),
        ('    """Gravity of a buried sphere (not really)."""\n', '    """Another docstring."""\n'),
        ("import numpy as np\n", "import numpy as np\n\n\n# a note on the model\n"),
    ],
    ids=["comments-and-spacing", "docstring", "blank-lines"],
)
def test_cosmetic_edits_are_not_changes(project, old, new):
    assert _cli("run", "spec.toml", "--no-progress", cwd=project).returncode == 0
    _forget_half(project / "my store.zarr")
    _edit(project / "gravity.py", old, new)
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "code changed" not in r.stderr


# --------------------------------------------------------------------------- edited kernels, Python


def _import_fresh(folder: Path, name: str):
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def test_python_edited_kernel_body_is_refused(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "kmod_edit.py").write_text(
        "import daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return a * 1.0\n"
    )
    mod = _import_fresh(folder, "kmod_edit")
    space = db.Grid(a=np.arange(20.0))
    store = tmp_path / "s.zarr"
    db.run(mod.k, space, store, cluster="serial", chunk_size=5, progress=False)
    _forget_half(store)
    (folder / "kmod_edit.py").write_text(
        "import daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return a * 100.0\n"
    )
    mod = _import_fresh(folder, "kmod_edit")
    with pytest.raises(KernelChangedError, match=r"a \* 100\.0") as e:
        db.run(mod.k, space, store, cluster="serial", chunk_size=5, progress=False)
    assert "kernel_changed='continue'" in str(e.value)
    with pytest.raises(db.DaskbatchError, match="kernel_changed='maybe'"):
        db.run(mod.k, space, store, cluster="serial", kernel_changed="maybe", progress=False)
    res = db.run(mod.k, space, store, cluster="serial", progress=False, kernel_changed="continue")
    assert res.complete and res.kernel_changes and "went on with changed kernel code" in str(res)
    y = db.open(store).y.values
    assert set(np.round(y[1:] / space.axes["a"][1:])) == {1.0, 100.0}  # knowingly mixed, and recorded
    page = Path(db.report(store, tmp_path / "r.html")).read_text()
    assert "kernel code changed" in page
    shown = _cli("summary", str(store), cwd=tmp_path).stdout  # its statistics mix both codes: said
    assert re.search(
        r"^code:     changed at \S+ \(kmod_edit:k\): samples computed before it used the old", shown, re.M
    )
    # overwrite starts again with the new code only
    db.run(mod.k, space, store, cluster="serial", progress=False, overwrite=True)
    np.testing.assert_array_equal(db.open(store).y.values, 100.0 * np.arange(20.0))
    assert not db.status(store).kernel_changes


def test_store_with_no_results_takes_new_code(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "kmod_empty.py").write_text(
        "import daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return a\n"
    )
    mod = _import_fresh(folder, "kmod_empty")
    store = tmp_path / "s.zarr"
    space = db.Grid(a=np.arange(4.0))
    db.run(mod.k, space, store, cluster="serial", chunk_size=2, progress=False)
    st = Store(store)
    st.unmark([(0,), (1,)])
    (folder / "kmod_empty.py").write_text(
        "import daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return a + 1\n"
    )
    mod = _import_fresh(folder, "kmod_empty")
    db.run(mod.k, space, store, cluster="serial", progress=False)  # nothing would mix: no refusal
    np.testing.assert_array_equal(db.open(store).y.values, np.arange(4.0) + 1)


def test_kernel_code_covers_helpers_constants_and_closures():
    from daskbatch.provenance import kernel_code

    ns: dict = {"__name__": "__main__"}  # as in a notebook
    src = textwrap.dedent(
        """
        import numpy as np
        import daskbatch as db
        TABLE = np.arange(3.0)
        def inner(x):
            return x + TABLE[0]
        @db.kernel(outputs={"y": db.Output()})
        def k(a):
            return inner(a) * np.pi
        """
    )
    exec(compile(src, "<cell>", "exec"), ns)
    parts = kernel_code(ns["k"])["parts"]
    assert any(p.endswith(":inner") for p in parts), parts
    assert any(p.endswith(":TABLE") for p in parts), parts
    assert not any("numpy" in p or p.endswith(":np") for p in parts), parts  # packages are not code
    before = kernel_code(ns["k"])["sha256"]
    ns["TABLE"] = np.arange(3.0) + 1
    assert kernel_code(ns["k"])["sha256"] != before


_LIBRARY_NAMES = {  # a module-level name of the user's code bound to something installed
    "op = math.sin": "op = math.cos",
    "op = np.sin": "op = np.cos",
    "from numpy import sin as op": "from numpy import cos as op",
    "op = DT = np.float32": "op = DT = np.float16",
    "op = C(np.sin)": "op = C(np.cos)",
    "op = np.vectorize(lambda x: x * 2)": "op = np.vectorize(lambda x: x * 3)",
    "op = {'f': math.sin}.get('f')": "op = {'f': math.cos}.get('f')",
    "TABLE = {'f': np.sin}\nop = lambda x: TABLE['f'](x)": "TABLE = {'f': np.cos}\nop = lambda x: TABLE['f'](x)",
}


@pytest.mark.parametrize("before", list(_LIBRARY_NAMES))
def test_a_name_bound_to_another_installed_function_is_a_code_change(before):
    """Before, only the user's own functions, classes and plain constants counted: a
    rerun after op = math.sin -> math.cos mixed sines and cosines in one store."""
    from daskbatch.provenance import kernel_code

    def code(binding: str) -> dict:
        ns: dict = {"__name__": "__main__"}  # as in a notebook
        src = textwrap.dedent(
            """
            import math
            import numpy as np
            import daskbatch as db
            class C:
                def __init__(self, f):
                    self.f = f
                def __call__(self, x):
                    return self.f(x)
            BINDING
            @db.kernel(outputs={"y": db.Output()})
            def k(a):
                return float(op(a))
            """
        ).replace("BINDING", binding)
        exec(compile(src, "<cell>", "exec"), ns)
        return kernel_code(ns["k"])

    a, b = code(before), code(_LIBRARY_NAMES[before])
    assert a["sha256"] != b["sha256"], a["parts"]
    assert a["sha256"] == code(before)["sha256"]  # the same binding: the same code


def test_installed_names_count_and_a_record_from_before_compares_without_them(tmp_path):
    """A kernel_code record without "version" (written before references counted) is
    compared without them: an upgrade of daskbatch does not refuse its stores."""
    from daskbatch.codeid import _digest_of, same_code
    from daskbatch.provenance import kernel_code

    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "kmod_lib.py").write_text(
        "import math\nimport daskbatch as db\nop = math.sin\nBOX = [math.sin]\n\n"
        "@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return op(a) + BOX[0](a)\n"
    )
    mod = _import_fresh(folder, "kmod_lib")
    now = kernel_code(mod.k)
    assert now["parts"]["kmod_lib:op"]["text"] == "math:sin"
    # what the release before recorded: no reference, BOX an object it could not pin down
    parts = {k: v for k, v in now["parts"].items() if v["kind"] != "reference"}
    parts["kmod_lib:BOX"] = {"kind": "object", "sha256": "", "text": "<list>"}
    old = {"sha256": _digest_of(parts), "parts": parts}
    assert same_code(old, now)
    assert not same_code({**old, "sha256": "0" * 64}, now)
    space = db.Grid(a=np.arange(20.0))
    store = tmp_path / "s.zarr"
    db.run(mod.k, space, store, cluster="serial", chunk_size=5, progress=False)
    _forget_half(store)
    (folder / "kmod_lib.py").write_text(
        (folder / "kmod_lib.py").read_text().replace("op = math.sin", "op = math.cos")
    )
    mod = _import_fresh(folder, "kmod_lib")
    with pytest.raises(KernelChangedError, match=r"kmod_lib:op:\n    -math:sin\n    \+math:cos"):
        db.run(mod.k, space, store, cluster="serial", chunk_size=5, progress=False)


# --------------------------------------------------------------------------- resume and validate


def test_resume_and_validate_from_anywhere_without_pythonpath(project, tmp_path):
    store = project / "my store.zarr"
    r = _cli("run", "spec.toml", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr
    _forget_half(store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = _cli("status", str(store), cwd=elsewhere)
    m = re.search(r"resume with: (.+)$", s.stdout, re.M)
    assert m, s.stdout
    command = m.group(1)
    assert command == f"daskbatch resume {shlex.quote(str(store))}"
    # the suggested command, copied as a user would, run from two folders
    for cwd in (elsewhere, project):
        r = subprocess.run(
            command.replace(
                "daskbatch ", shlex.quote(str(Path(sys.executable).with_name("daskbatch"))) + " ", 1
            ),
            shell=True,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(),
        )
        assert r.returncode == 0, r.stderr
        assert "30 ok" in r.stdout
        _forget_half(store)
    v = _cli("validate", str(store), "--n", "5", cwd=elsewhere)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "OK" in v.stdout


def test_status_verify_repair_command_runs(project, tmp_path):
    store = project / "my store.zarr"
    assert _cli("run", "spec.toml", "--no-progress", cwd=project).returncode == 0
    damage_chunk(store, "g", (0, 0), how="zeros")  # damaged data
    s = _cli("status", str(store), "--verify", cwd=tmp_path)
    assert s.returncode == 1
    m = re.search(r"recompute them with: (.+)$", s.stdout, re.M)
    assert m, s.stdout
    exe = shlex.quote(str(Path(sys.executable).with_name("daskbatch")))
    r = subprocess.run(
        m.group(1).replace("daskbatch ", exe + " ", 1),
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr
    assert _cli("status", str(store), "--verify", cwd=tmp_path).returncode == 0
    # the same repair from a spec: `run --verify`
    damage_chunk(store, "g", (0, 0), how="zeros")
    r = _cli("run", "spec.toml", "--verify", "--no-progress", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "recomputing damaged blocks" in r.stderr
    assert _cli("status", str(store), "--verify", cwd=tmp_path).returncode == 0


def test_script_kernel_status_says_rerun_the_script(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import numpy as np
            import daskbatch as db

            @db.kernel(outputs={"y": db.Output()})
            def k(a):
                return a * 2.0

            if __name__ == "__main__":
                db.run(k, db.Grid(a=np.arange(6.0)), sys.argv[1], cluster="serial", chunk_size=2,
                       progress=False)
            """
        )
    )
    store = tmp_path / "s.zarr"
    r = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    Store(store).unmark([(0,)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = _cli("status", str(store), cwd=elsewhere)
    m = re.search(r"resume with: (.+)$", s.stdout, re.M)
    assert m, s.stdout
    command = m.group(1)
    assert command.startswith(f"cd {shlex.quote(os.getcwd())} && python ") and str(script) in command
    r = _cli("resume", str(store), cwd=elsewhere)
    assert r.returncode == 2 and "run that script again" in r.stderr and command in r.stderr
    v = _cli("validate", str(store), cwd=elsewhere)  # not advice to resume: what would make it work
    assert (
        v.returncode == 2
        and "validate imports the kernel again" in v.stderr
        and "move the kernel into a module" in v.stderr
    )
    # the suggested command works, from another folder too
    command = command.replace("python ", shlex.quote(sys.executable) + " ", 1)
    r = subprocess.run(command, shell=True, cwd=elsewhere, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert db.status(store).complete


def test_notebook_kernel_says_run_the_cell_again(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    store = tmp_path / "nb.zarr"
    cell = textwrap.dedent(
        f"""
        import numpy as np
        import daskbatch as db

        @db.kernel(outputs={{"y": db.Output()}})
        def k(a):
            return a * 3.0

        res = db.run(k, db.Grid(a=np.arange(6.0)), {str(store)!r}, cluster="serial", chunk_size=2,
                     progress=False)
        """
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    Store(store).unmark([(1,)])
    s = _cli("status", str(store), cwd=tmp_path)
    assert "run the notebook cell that called daskbatch.run again" in s.stdout, s.stdout
    assert "daskbatch resume" not in s.stdout
    r = _cli("resume", str(store), cwd=tmp_path)
    assert r.returncode == 2 and "notebook cell" in r.stderr and "Traceback" not in r.stderr
    v = _cli("validate", str(store), cwd=tmp_path)  # what would make it work, not how to resume
    assert (
        v.returncode == 2 and "defined in the notebook that ran it" in v.stderr and "a .py file" in v.stderr
    )


# --------------------------------------------------------------------------- seeds


def test_seedless_montecarlo_resumes_with_the_recorded_seed(tmp_path, capfd):
    from daskbatch.testing import affine

    store = tmp_path / "mc.zarr"
    dists = {"a": db.Normal(0, 1)}
    first = db.MonteCarlo(dists, n=40)
    db.run(affine, first, store, cluster="serial", chunk_size=10, progress=False)
    seed = Store(store).info()["seed"]
    assert seed == first.seed
    full = db.open(store).y.values.copy()
    Store(store).unmark([(1,), (3,)])
    capfd.readouterr()
    again = db.MonteCarlo(dists, n=40)  # the same call: a new random seed
    assert again.seed != seed
    res = db.run(affine, again, store, cluster="serial", progress=False)
    assert res.complete and res.blocks_computed == 2
    assert f"continuing with the seed this store was started with ({seed})" in capfd.readouterr().err
    np.testing.assert_array_equal(db.open(store).y.values, full)
    # a seed given explicitly that differs is still refused
    with pytest.raises(db.errors.FingerprintMismatchError, match="seed"):
        db.run(affine, db.MonteCarlo(dists, n=40, seed=seed + 1), store, cluster="serial", progress=False)


def test_seedless_spec_file_resumes(tmp_path):
    spec = tmp_path / "mc.toml"
    spec.write_text(
        textwrap.dedent(
            """
            kernel = "daskbatch.testing:affine"
            store = "mc.zarr"
            cluster = "serial"
            chunk_size = 10
            [space]
            type = "montecarlo"
            n = 30
            [space.params.a]
            dist = "uniform"
            low = 0
            high = 1
            """
        )
    )
    assert run_cli("run", str(spec), "--no-progress").returncode == 0
    Store(tmp_path / "mc.zarr").unmark([(0,)])
    r = run_cli("run", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "continuing with the seed" in r.stderr
    info = json.loads(run_cli("status", str(tmp_path / "mc.zarr"), "--json").stdout)
    assert info["complete"]


# --------------------------------------------------------------------------- the store's info under the lock


def test_info_is_read_again_under_the_lock(tmp_path, monkeypatch):
    """A run that ended between another run's first look and its lock keeps its history."""
    from daskbatch.store import StoreLock
    from daskbatch.testing import affine

    store = tmp_path / "s.zarr"
    space = db.Grid(a=np.arange(8.0))
    db.run(affine, space, store, cluster="serial", chunk_size=2, progress=False)
    Store(store).unmark([(2,), (3,)])
    acquire = StoreLock.acquire

    def other_run_finishes_first(self):
        st = Store(store)
        info = st.info()
        info["history"].append({"start": "then", "state": "finished", "pid": 12345, "host": "elsewhere"})
        st.update_info(info)
        return acquire(self)

    monkeypatch.setattr(StoreLock, "acquire", other_run_finishes_first)
    db.run(affine, space, store, cluster="serial", progress=False)
    history = Store(store).info()["history"]
    assert [h.get("pid") for h in history].count(12345) == 1
    assert history[-1]["state"] == "finished" and history[-1]["pid"] == os.getpid()


# --------------------------------------------------------------------------- what the code identity covers

_CASES = {
    "default-argument": (
        {
            "kmod.py": "import daskbatch as db\nSCALE = 1.0\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a, scale=SCALE):\n    return a * scale\n"
        },
        ("kmod.py", "SCALE = 1.0", "SCALE = 100.0"),
    ),
    "lru-cached-helper": (
        {
            "kmod.py": "import functools\nimport daskbatch as db\n\n@functools.lru_cache\ndef g(a):\n    return a * 1.0\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return g(float(a))\n"
        },
        ("kmod.py", "return a * 1.0", "return a * 100.0"),
    ),
    "package-submodule": (
        {
            "mypkg/__init__.py": "",
            "mypkg/sub.py": "def g(a):\n    return a * 1.0\n",
            "kmod.py": "import mypkg.sub\nimport daskbatch as db\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return mypkg.sub.g(a)\n",
        },
        ("mypkg/sub.py", "return a * 1.0", "return a * 100.0"),
    ),
    "base-class-in-another-file": (
        {
            "helpers.py": "class Base:\n    def compute(self, a):\n        return a * 1.0\n",
            "kmod.py": "from helpers import Base\nimport daskbatch as db\n\nclass Model(Base):\n    pass\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return Model().compute(a)\n",
        },
        ("helpers.py", "return a * 1.0", "return a * 100.0"),
    ),
    "array-in-a-dict": (
        {
            "kmod.py": "import numpy as np\nimport daskbatch as db\nCOEF = {'s': np.array([1.0])}\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return a * COEF['s'][0]\n"
        },
        ("kmod.py", "np.array([1.0])", "np.array([100.0])"),
    ),
    "partial-helper": (
        {
            "kmod.py": "import functools\nimport daskbatch as db\n\ndef h(a, scale):\n    return a * scale\n\ng = functools.partial(h, scale=1.0)\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return g(a)\n"
        },
        ("kmod.py", "scale=1.0)", "scale=100.0)"),
    ),
    "dispatch-table": (
        {
            "kmod.py": "import daskbatch as db\n\ndef g(a):\n    return a * 1.0\n\nOPS = {'g': g}\n\n@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return OPS['g'](a)\n"
        },
        ("kmod.py", "return a * 1.0", "return a * 100.0"),
    ),
    "callable-object-kernel": (
        {
            "kmod.py": "import daskbatch as db\n\nclass Fwd:\n    def __init__(self):\n        self.scale = 1.0\n\n    def __call__(self, a):\n        return a * self.scale\n\nk = db.kernel(outputs={'y': db.Output()}, name='fwd')(Fwd())\n"
        },
        ("kmod.py", "self.scale = 1.0", "self.scale = 100.0"),
    ),
    "partial-kernel": (
        {
            "kmod.py": "import functools\nimport daskbatch as db\n\ndef h(a, scale):\n    return a * scale\n\nk = db.kernel(outputs={'y': db.Output()})(functools.partial(h, scale=1.0))\n"
        },
        ("kmod.py", "scale=1.0)", "scale=100.0)"),
    ),
}

_PROBE_CODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import kmod
from daskbatch.provenance import kernel_code
print(json.dumps([kmod.k.identity, kernel_code(kmod.k)["sha256"]]))
"""


@pytest.mark.parametrize("case", sorted(_CASES))
def test_code_identity_sees_edits_users_make(tmp_path, case):
    """Each edit changes the code identity; an unedited kernel keeps it in a new process."""
    files, (name, old, new) = _CASES[case]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    def identity() -> tuple[str, str]:
        r = subprocess.run(
            [sys.executable, "-B", "-c", _PROBE_CODE, str(tmp_path)],
            capture_output=True,
            text=True,
            env=_env(),
        )
        assert r.returncode == 0, r.stderr
        ident, sha = json.loads(r.stdout)
        return ident, sha

    first, again = identity(), identity()
    assert first == again  # stable across processes: no memory address in it
    assert "0x" not in first[0]
    _edit(tmp_path / name, old, new)
    assert identity()[1] != first[1]


def test_resume_overwrite_and_damaged_reads_are_one_line(project, tmp_path):
    store = project / "my store.zarr"
    assert _cli("run", "spec.toml", "--no-progress", cwd=project).returncode == 0
    _edit(project / "gravity.py", "return a * SCALE", "return a * SCALE * 100.0")
    r = _cli("resume", str(store), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = _cli("resume", str(store), "--no-progress", "--overwrite", cwd=tmp_path)  # as the refusal says
    assert r.returncode == 0, r.stderr
    assert xr.open_zarr(store).g.values[1, 0] == pytest.approx(100.0 + 1.0)
    damage_chunk(store, "g", (0, 0), keep=10)
    for command in (["summary", str(store)], ["export", str(store), "-o", str(tmp_path / "o.csv")]):
        r = _cli(*command, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and "--verify" in r.stderr, r.stderr


def test_python_run_interrupted_says_how_far_in_one_line(tmp_path):
    """In a script or notebook, Ctrl-C leaves a resumable store and one line saying so."""
    script = tmp_path / "interrupt.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, threading
            import numpy as np
            import daskbatch as db
            from daskbatch.testing import slow_square

            if __name__ == "__main__":
                threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                try:
                    db.run(slow_square, db.Grid(x=np.arange(400.0)), {str(tmp_path / "s.zarr")!r},
                           cluster="serial", chunk_size=10, progress=False, constants={{"delay": 0.02}})
                except KeyboardInterrupt:
                    pass
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"daskbatch: interrupted; \d+ of 40 blocks done and kept\. Run the same call again to continue",
        lines[0],
    )
    assert not db.status(tmp_path / "s.zarr").complete


def test_a_missing_store_is_store_not_found_and_file_not_found(tmp_path):
    from daskbatch.errors import StoreNotFoundError

    with pytest.raises(StoreNotFoundError, match="does not exist"):
        db.status(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError):
        db.status(tmp_path / "nope.zarr")
    r = _cli("resume", str(tmp_path / "nope.zarr"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_code_edited_on_disk_and_not_reloaded_is_refused_until_reloaded(tmp_path):
    """Workers import the kernel's modules from their files; this process keeps what it
    imported. Code the kernel uses that its file no longer holds is refused before
    anything starts, naming the function or constant and the reload; after the reload
    the run goes on. Edits that change nothing the kernel runs go on."""
    folder = tmp_path / "proj"
    (folder / "fresh_pkg").mkdir(parents=True)
    (folder / "fresh_pkg" / "__init__.py").write_text("")
    (folder / "fresh_pkg" / "physics.py").write_text("def gain(a):\n    return 2.0 * a\n")
    (folder / "fresh_pkg" / "plotting.py").write_text("def plot():\n    return 1\n")
    (folder / "fresh_helper.py").write_text("OFFSET = 1.0\n\ndef scale(a):\n    return 3.0 * a\n")
    (folder / "fresh_kmod.py").write_text(
        "import daskbatch as db\nimport fresh_helper\nimport fresh_pkg.physics\nimport fresh_pkg.plotting\n"
        "from fresh_helper import scale\n\n"
        "@db.kernel(outputs={'y': db.Output()})\n"
        "def k(a):\n    return fresh_pkg.physics.gain(scale(a)) + fresh_helper.OFFSET\n"
    )
    helper = _import_fresh(folder, "fresh_helper")
    mod = _import_fresh(folder, "fresh_kmod")
    space = db.Grid(a=np.arange(6.0))
    run = lambda name: db.run(mod.k, space, tmp_path / name, cluster="serial", progress=False)  # noqa: E731
    stale = db.errors.StaleModuleError

    def edit(path, old, new):
        path.write_text(path.read_text().replace(old, new))

    run("first.zarr")
    # nothing the kernel runs changed: a touch, a comment, a module it does not use
    os.utime(folder / "fresh_helper.py", (1, 1))
    edit(folder / "fresh_kmod.py", "def k(a):", "# a comment\ndef k(a):  # and another")
    edit(folder / "fresh_pkg" / "plotting.py", "return 1", "return 2")
    run("unchanged.zarr")

    edit(folder / "fresh_helper.py", "3.0 * a", "5.0 * a")  # a function it calls
    with pytest.raises(stale) as e:
        run("stale.zarr")
    msg = str(e.value)
    assert f"fresh_helper.scale in this process is not the code of {folder / 'fresh_helper.py'} now" in msg, (
        msg
    )
    assert "importlib.reload(fresh_helper), then importlib.reload(fresh_kmod)" in msg, msg
    assert not (tmp_path / "stale.zarr").exists()
    with pytest.raises(stale):  # plan refuses as run does
        db.plan(mod.k, space, cluster="serial")
    _import_fresh(folder, "fresh_helper")  # reloaded: fresh_kmod still holds the old scale
    with pytest.raises(stale, match="fresh_helper.scale in this process"):
        run("stale.zarr")
    mod = _import_fresh(folder, "fresh_kmod")
    run("reloaded.zarr")
    np.testing.assert_array_equal(db.open(tmp_path / "reloaded.zarr").y.values, 10.0 * np.arange(6.0) + 1.0)

    edit(folder / "fresh_helper.py", "OFFSET = 1.0", "OFFSET = 4.0")  # a constant it uses
    with pytest.raises(stale, match=r"fresh_helper.OFFSET is 1.0 in this process but .* now sets it to 4.0"):
        run("stale.zarr")
    _import_fresh(folder, "fresh_helper")
    helper.OFFSET = 9.0  # set here at run time: the workers would read the file's 4.0
    with pytest.raises(stale, match=r"fresh_helper.OFFSET is 9.0 in this process"):
        run("stale.zarr")
    helper.OFFSET = 4.0

    edit(folder / "fresh_pkg" / "physics.py", "2.0 * a", "2.5 * a")  # a package's submodule it uses
    with pytest.raises(stale, match=r"fresh_pkg.physics.gain in this process"):
        run("stale.zarr")


def test_methods_and_nested_functions_count_and_code_defined_twice_or_lambdas_are_no_false_alarm(tmp_path):
    """A method of the user's class, or a function a factory makes, edited on disk and not
    reloaded is refused like a function; a helper module that defines a name in both
    branches of a try/except (an optional accelerator) or holds several lambdas runs."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "meth_model.py").write_text(
        "class Base:\n    def gain(self):\n        return 2.0\n\n"
        "class Model(Base):\n    def __init__(self, k):\n        self.k = k\n\n"
        "    def run(self, a):\n        return super().gain() * self.k * a\n\n"
        "    @property\n    def half(self):\n        return self.k / 2\n\n"
        "def make(scale):\n    def inner(a):\n        return scale * a\n    return inner\n"
    )
    (folder / "meth_util.py").write_text(
        "try:\n    from not_installed_accelerator import jit\n\n    def fast(a):\n        return jit(a)\n"
        "except ImportError:\n\n    def fast(a):\n        return a + 1.0\n\n"
        "double = lambda a: 2.0 * a  # noqa: E731\ntriple = lambda a: 3.0 * a  # noqa: E731\n"
    )
    (folder / "meth_kmod.py").write_text(
        "import daskbatch as db\nimport meth_util\nfrom meth_model import Model, make\n\n"
        "MODEL = Model(3.0)\nTIMES = make(10.0)\n\n"
        "@db.kernel(outputs={'y': db.Output()})\n"
        "def k(a):\n    return MODEL.run(meth_util.fast(meth_util.double(a))) + TIMES(a) + MODEL.half\n"
    )
    _import_fresh(folder, "meth_util")
    _import_fresh(folder, "meth_model")
    mod = _import_fresh(folder, "meth_kmod")
    space = db.Grid(a=np.arange(4.0))
    run = lambda name: db.run(mod.k, space, tmp_path / name, cluster="serial", progress=False)  # noqa: E731
    run("first.zarr")  # nothing edited: no false alarm from the lambdas or the second fast()
    a = np.arange(4.0)
    np.testing.assert_array_equal(
        db.open(tmp_path / "first.zarr").y.values, 6.0 * (2.0 * a + 1.0) + 10.0 * a + 1.5
    )
    model = folder / "meth_model.py"
    original = model.read_text()
    for old, new, name in (
        ("return super().gain() * self.k * a", "return super().gain() * self.k * a * 2", "Model.run"),
        ("return 2.0\n", "return 2.5\n", "Base.gain"),
        ("return self.k / 2", "return self.k / 4", "Model.half"),
        ("return scale * a", "return scale * a + 1", "make.<locals>.inner"),
    ):
        model.write_text(original.replace(old, new))
        with pytest.raises(
            db.errors.StaleModuleError, match=rf"meth_model\.{re.escape(name)} in this process"
        ):
            run("stale.zarr")
        assert not (tmp_path / "stale.zarr").exists()
    model.write_text(original)
    run("again.zarr")


def test_a_setup_edited_and_reloaded_makes_its_own_state_in_a_process_that_lives_on(tmp_path):
    """setup() runs once per process and its state is kept: a setup edited and reloaded
    (a notebook) is the new code, with a state of its own, not the old one's."""
    folder = tmp_path / "proj"
    folder.mkdir()
    source = (
        "import daskbatch as db\n\ndef load():\n    return {'offset': 100.0}\n\n"
        "@db.kernel(outputs={'y': db.Output()}, setup=load)\ndef k(a, state):\n    return a + state['offset']\n"
    )
    (folder / "setup_kmod.py").write_text(source)
    mod = _import_fresh(folder, "setup_kmod")
    space = db.Grid(a=np.arange(4.0))
    db.run(mod.k, space, tmp_path / "a.zarr", cluster="serial", progress=False)
    (folder / "setup_kmod.py").write_text(source.replace("100.0", "7.0"))
    mod = _import_fresh(folder, "setup_kmod")
    db.run(mod.k, space, tmp_path / "b.zarr", cluster="serial", progress=False)
    np.testing.assert_array_equal(db.open(tmp_path / "a.zarr").y.values, np.arange(4.0) + 100.0)
    np.testing.assert_array_equal(db.open(tmp_path / "b.zarr").y.values, np.arange(4.0) + 7.0)


@pytest.mark.parametrize("cluster", ["processes", "local"])
def test_a_kernel_file_edited_while_the_run_goes_on_stops_it_before_a_worker_computes(tmp_path, cluster):
    """Worker processes import the kernel's modules from their files when they start:
    one that starts after an edit (a job-queue worker job replacing another, a restarted
    worker) would put results of the new code beside the run's. The run stops before
    that worker computes anything; the committed blocks are the run's code's."""
    folder = tmp_path / "proj"
    folder.mkdir()
    source = (
        "import numpy as np\nimport daskbatch as db\nimport edit_helper\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False)\n"
        "def k(a):\n    return edit_helper.scale(a)\n"
    )
    (folder / "edit_kmod.py").write_text(source)
    (folder / "edit_helper.py").write_text("def scale(a):\n    return 2.0 * a\n")
    mod = _import_fresh(folder, "edit_kmod")
    _import_fresh(folder, "edit_helper")
    store = tmp_path / "s.zarr"

    class EditWhileRunning(db.Callback):
        def on_run_start(self, event):  # after every check, before any worker imports it
            (folder / "edit_helper.py").write_text("def scale(a):\n    return 3.0 * a\n")

    sys.path.insert(0, str(folder))  # where the workers import the modules from
    try:
        with pytest.raises(
            db.errors.StaleModuleError,
            match=r"has edit_helper\.scale as its file was when it imported it, and it is not the code this run",
        ):
            db.run(
                mod.k,
                db.Grid(a=np.arange(40.0)),
                store,
                cluster=cluster,
                n_workers=2,
                chunk_size=10,
                progress=False,
                callbacks=[EditWhileRunning()],
            )
    finally:
        sys.path.remove(str(folder))
    if store.exists():  # blocks committed before the worker's first block: the run's code's
        ds = db.open(store)
        done = ds.status.values == 1
        np.testing.assert_array_equal(ds.y.values[done], 2.0 * ds.a.values[done])  # none of 3.0 * a
        assert db.status(store).last_run["state"] == "stopped"
    # (a new store with nothing committed is not left behind)


_UNEDITED = {
    # a submodule the kernel imports on its first call (the probe, on a worker)
    "lazy_pkg/__init__.py": "def base(a):\n    return a\n",
    "lazy_pkg/extra.py": "def f(a):\n    return a * 1.0\n",
    "lazy_kmod.py": (
        "import daskbatch as db\nimport lazy_pkg\n\n@db.kernel(outputs={'y': db.Output()}, per_sample=False)\n"
        "def k(a):\n    from lazy_pkg import extra\n    return extra.f(lazy_pkg.base(a))\n"
    ),
    # a setup= that sets a helper module's option
    "solver.py": "BACKEND = 'numpy'\n\ndef solve(a):\n    return a * (1.0 if BACKEND == 'numpy' else 1.0)\n",
    "setup_kmod.py": (
        "import daskbatch as db\nimport solver\n\ndef setup():\n    solver.BACKEND = 'threaded'\n    return {}\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False, setup=setup)\n"
        "def k(a, state):\n    return solver.solve(a)\n"
    ),
    # a default the environment overrides (the local cluster's workers get OMP_NUM_THREADS=1)
    "env_kmod.py": (
        "import os\nimport daskbatch as db\n\nN_THREADS = 4\nif 'OMP_NUM_THREADS' in os.environ:\n"
        "    N_THREADS = int(os.environ['OMP_NUM_THREADS'])\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False)\ndef k(a):\n    return a * N_THREADS / N_THREADS\n"
    ),
    # a set of lambdas (iterated in another order in each process)
    "set_kmod.py": (
        "import daskbatch as db\nCHECKS = {lambda a: (a >= 0).all(), lambda a: (a < 1e9).all(), lambda a: a.ndim == 1}\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False)\n"
        "def k(a):\n    assert all(c(a) for c in CHECKS)\n    return a\n"
    ),
}


@pytest.mark.parametrize("cluster", ["local", "processes"])
def test_worker_code_checks_raise_no_false_alarm_on_unedited_code(tmp_path, cluster, monkeypatch):
    """The check of a worker's code against the driver's must not stop a run whose
    files nobody edited: a module the kernel imports on its first call, a setup= that
    sets a module's value, a constant the environment overrides, a set of lambdas."""
    folder = tmp_path / "proj"
    for name, text in _UNEDITED.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tops = {n.split("/")[0].removesuffix(".py") for n in _UNEDITED}
    for name in [n for n in sys.modules if n.split(".")[0] in tops]:  # another case's project
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(folder))
    for module in ("lazy_kmod", "setup_kmod", "env_kmod", "set_kmod"):
        mod = _import_fresh(folder, module)
        store = tmp_path / f"{module}.zarr"
        res = db.run(
            mod.k,
            db.Grid(a=np.arange(40.0)),
            store,
            cluster=cluster,
            n_workers=2,
            chunk_size=10,
            progress=False,
        )
        assert res.samples["ok"] == 40, module
    # the driver's own check: a default its environment overrides is no edited constant
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    mod = _import_fresh(folder, "env_kmod")
    assert mod.N_THREADS == 2
    db.run(mod.k, db.Grid(a=np.arange(4.0)), tmp_path / "env2.zarr", cluster="serial", progress=False)


def test_a_setup_that_sets_a_module_value_does_not_stop_the_next_kernel_on_the_same_client(
    tmp_path, monkeypatch
):
    """On a cluster that outlives runs, one kernel's setup= sets a helper module's value;
    the next kernel using that helper on the same workers is no edited code."""
    from distributed import Client, LocalCluster

    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "solver2.py").write_text(_UNEDITED["solver.py"])
    (folder / "two_kmod.py").write_text(
        "import daskbatch as db\nimport solver2\n\ndef setup():\n    solver2.BACKEND = 'threaded'\n    return {}\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False, setup=setup)\n"
        "def ka(a, state):\n    return solver2.solve(a)\n\n"
        "@db.kernel(outputs={'y': db.Output()}, per_sample=False)\ndef kb(a):\n    return solver2.solve(a)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    mod = _import_fresh(folder, "two_kmod")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        for name in ("ka", "kb"):
            res = db.run(
                getattr(mod, name),
                db.Grid(a=np.arange(20.0)),
                tmp_path / f"{name}.zarr",
                cluster=client,
                chunk_size=5,
                progress=False,
            )
            assert res.samples["ok"] == 20, name


def test_threads_taking_code_digests_at_once_do_not_break_the_parser(tmp_path):
    """CPython 3.11 before 3.11.9 fails a parse that another thread's parse interleaves
    (gh-106905): the driver takes the code's digests while it computes blocks in a
    thread, and a worker checks a block's code while its other thread imports numpy.ma
    (a parse of text signatures). Garbage collections that switch threads make the
    interleaving likely; a third thread parses without daskbatch's lock."""
    import ast
    import contextlib
    import gc
    import threading
    import time

    from daskbatch import codeid, freshness

    folder = tmp_path / "pkg"
    folder.mkdir()
    body = "\n".join(f"    def m{i}(self, a):\n        return a + {i}\n" for i in range(40))
    (folder / "kmod_threads.py").write_text(
        "import daskbatch as db\n\n"
        f"class Model:\n{body}\n"
        "    def __call__(self, a):\n        return self.m1(a)\n\n"
        "k = db.kernel(Model(), outputs={'y': db.Output()})\n"
    )
    kernel = _import_fresh(folder, "kmod_threads").k
    failures: list[BaseException] = []

    source = (folder / "kmod_threads.py").read_text()

    def take(depth: int = 0) -> None:
        if depth < 30:  # threads at different depths, as the driver's are
            return take(depth + 1)
        end = time.monotonic() + 1.5
        while time.monotonic() < end and not failures:
            try:
                freshness.code_digests(kernel)
                codeid.kernel_code(kernel)
            except BaseException as e:  # reported below
                failures.append(e)

    def foreign() -> None:
        """Parses daskbatch does not own (traceback's markers, a text signature), now and
        then: a few get into daskbatch's, which are tried again."""
        end = time.monotonic() + 1.5
        while time.monotonic() < end and not failures:
            with contextlib.suppress(SystemError):  # its own failures are not ours
                ast.parse(source)
            time.sleep(0.01)

    def switch(phase: str, info: dict) -> None:
        if phase == "start":
            time.sleep(0)

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50)
    gc.callbacks.append(switch)
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=take, args=(d,)) for d in (0, 20)]
        threads.append(threading.Thread(target=foreign))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.callbacks.remove(switch)
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
    assert failures == []


def test_a_workers_code_check_before_each_block_reads_no_source(tmp_path, monkeypatch):
    """The check finds what the kernel reaches from the objects themselves: a class's
    source (a parse of its whole file each time) was read before every block."""
    from daskbatch import codeid, freshness, parsing

    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "kmod_nosource.py").write_text(
        "import numpy as np\nimport daskbatch as db\n\nTABLE = np.arange(10.0)\n\n"
        "class Model:\n    def __call__(self, a):\n        return a * TABLE[1]\n\n"
        "k = db.kernel(Model(), outputs={'y': db.Output()})\n"
    )
    kernel = _import_fresh(folder, "kmod_nosource").k
    expected = freshness.code_digests(kernel)
    assert any(key.endswith(":Model.__call__") for key in expected)

    def refused(*args, **kwargs):
        raise AssertionError("read a source")

    for name in ("getsource", "parse"):
        monkeypatch.setattr(parsing, name, refused)
        monkeypatch.setattr(codeid, name, refused, raising=False)
    for _ in range(3):  # as before each block (a file's literals are read once per version)
        freshness.check_worker_code(kernel, expected)
        assert freshness.first_digests(kernel) == expected


def test_a_parse_another_thread_got_into_is_tried_again(monkeypatch):
    from daskbatch import parsing

    calls = []
    real = parsing.ast.parse

    def flaky(source):
        calls.append(source)
        if len(calls) < 3:
            raise SystemError("AST constructor recursion depth mismatch (before=102, after=201)")
        return real(source)

    monkeypatch.setattr(parsing.ast, "parse", flaky)
    assert isinstance(parsing.parse("x = 1"), parsing.ast.Module) and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(parsing.ast, "parse", lambda s: (_ for _ in ()).throw(SystemError("another")))
    with pytest.raises(SystemError, match="another"):
        parsing.parse("x = 1")


def test_output_coordinates_edited_since_the_store_was_made_are_refused(tmp_path):
    """coords={"t": TC} with the module constant TC edited: the store keeps the old
    coordinate (written when it was made), and a rerun labelled new samples with it."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    source = (
        "import numpy as np\nimport daskbatch as db\nTC = np.arange(5.0)\n\n"
        "@db.kernel(outputs={'curve': db.Output(dims=('t',), shape=(5,), coords={'t': TC})})\n"
        "def k(a):\n    return a * np.ones(5)\n"
    )
    (folder / "kmod_coords.py").write_text(source)
    mod = _import_fresh(folder, "kmod_coords")
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=20, seed=1)
    store = tmp_path / "s.zarr"
    db.run(mod.k, space, store, cluster="serial", chunk_size=5, progress=False)
    _forget_half(store)
    assert db.run(mod.k, space, store, cluster="serial", progress=False).complete  # unchanged: resumes
    _forget_half(store)
    (folder / "kmod_coords.py").write_text(source.replace("TC = np.arange(5.0)", "TC = np.arange(5.0) * 2"))
    mod = _import_fresh(folder, "kmod_coords")
    with pytest.raises(
        db.DaskbatchError,
        match=r"output 'curve' coordinate 't' \(\[0\., 1\., 2\., 3\., 4\.\] -> \[0\., 2\., 4\., 6\., 8\.\]\)",
    ):
        db.run(mod.k, space, store, cluster="serial", progress=False, kernel_changed="continue")
    np.testing.assert_array_equal(db.open(store).t.values, np.arange(5.0))


@pytest.mark.parametrize(
    "binding",
    [
        "def f(x):\n    return x * 2.0\nop = np.vectorize(f)",  # the user's f, now followed inside
        "def f(x):\n    return x * 2.0\nOPS = {'s': np.sin, 'f': f}\nop = lambda x: OPS['f'](x)",
    ],
)
def test_a_record_from_before_compares_over_the_parts_it_has(binding):
    """What this release follows further (a user's function inside np.vectorize, or in a
    dict beside an installed one) is new to a record without version: an unchanged kernel
    is not refused for it."""
    from daskbatch.codeid import _digest_of, same_code
    from daskbatch.provenance import kernel_code

    ns: dict = {"__name__": "__main__"}
    src = (
        "import numpy as np\nimport daskbatch as db\n" + binding + "\n"
        "@db.kernel(outputs={'y': db.Output()})\ndef k(a):\n    return float(op(a))\n"
    )
    exec(compile(src, "<cell>", "exec"), ns)
    now = kernel_code(ns["k"])
    assert "__main__:f" in now["parts"]  # followed now
    parts = {k: v for k, v in now["parts"].items() if k == "__main__:k" or k == "__main__:OPS"}
    if "__main__:OPS" in parts:  # it could not pin the dict down, holding np.sin
        parts["__main__:OPS"] = {"kind": "object", "sha256": "", "text": "<dict>"}
    old = {"sha256": _digest_of(parts), "parts": parts}
    assert same_code(old, now)
    assert not same_code({**old, "parts": {**parts, "__main__:gone": {"sha256": "1"}}}, now)


def test_references_never_take_the_place_of_the_codes_own_parts():
    """A record keeps 200 parts: the names bound to installed functions come after the
    code's own, so a large code base's record keeps the parts it had before."""
    from daskbatch.provenance import kernel_code

    helpers = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(205))
    calls = " + ".join(f"f{i}(a)" for i in range(205))
    src = (
        "import math\nimport daskbatch as db\nop = math.sin\n"
        + helpers
        + f"@db.kernel(outputs={{'y': db.Output()}})\ndef k(a):\n    return op(a) + {calls}\n"
    )
    ns: dict = {"__name__": "__main__"}
    exec(compile(src, "<cell>", "exec"), ns)
    parts = kernel_code(ns["k"])["parts"]
    assert len(parts) == 200 and not any(p["kind"] == "reference" for p in parts.values())


def test_output_coordinates_with_nan_or_text_rerun_unchanged(tmp_path):
    """An unchanged rerun was refused when a coordinate held NaN (NaN != NaN); text is
    compared as text."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "kmod_nan.py").write_text(
        "import numpy as np\nimport daskbatch as db\n\n"
        "@db.kernel(outputs={'c': db.Output(dims=('g',), shape=(3,), coords={'g': np.array([1.0, np.nan, 3.0])}),"
        " 'd': db.Output(dims=('band',), shape=(2,), coords={'band': ['low', 'hïgh']})})\n"
        "def k(a):\n    return {'c': a * np.ones(3), 'd': a * np.ones(2)}\n"
    )
    mod = _import_fresh(folder, "kmod_nan")
    space = db.Grid(a=np.arange(8.0))
    store = tmp_path / "s.zarr"
    db.run(mod.k, space, store, cluster="serial", chunk_size=2, progress=False)
    _forget_half(store)
    assert db.run(mod.k, space, store, cluster="serial", progress=False).complete
    (folder / "kmod_nan.py").write_text((folder / "kmod_nan.py").read_text().replace("'hïgh'", "'high'"))
    mod = _import_fresh(folder, "kmod_nan")
    _forget_half(store)
    with pytest.raises(
        db.DaskbatchError, match=r"output 'd' coordinate 'band' \(\['low', 'hïgh'\] -> \['low', 'high'\]\)"
    ):
        db.run(mod.k, space, store, cluster="serial", progress=False)
