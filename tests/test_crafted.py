"""Stores and kernel modules that are not what they should be.

A store's info says where its kernel came from; a crafted store can point that at a
file inside itself. ``resume`` and ``validate`` refuse to import it (one line, exit
2), say which file they import when they do, and the commands that only read a
store never import a kernel at all. Output names that would break the store's
layout are refused where they are declared; a kernel module that cannot be imported
is one line naming its file and line, with nothing written.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import KernelSignatureError, OutputSpecError

KERNEL = """\
import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def twice(a):
    return 2.0 * a
"""

SPEC = """\
kernel = "{module}:twice"
store = "s.zarr"
cluster = "serial"
chunk_size = 4

[space]
type = "grid"
[space.axes]
a = {{linspace = [0, 9, 10]}}
"""


def _store(tmp_path: Path, cli) -> tuple[Path, Path]:
    """A finished store from a kernel in a file of the user's, and the marker path a
    payload would create."""
    module = f"usermod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(KERNEL)
    (tmp_path / "spec.toml").write_text(SPEC.format(module=module))
    res = cli("run", "spec.toml", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return tmp_path / "s.zarr", tmp_path / "PAYLOAD_RAN"


def _craft(store: Path, marker: Path, how: str) -> str:
    """Put a payload in ``store`` and point the store's info at it; returns its module name."""
    module = f"payload_{uuid.uuid4().hex[:8]}"
    hidden = store / ".daskbatch"
    payload = hidden / f"{module}.py"
    payload.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + textwrap.dedent(KERNEL))
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    info = doc["attributes"]["daskbatch"]
    if how == "kernel_file":  # a module whose recorded file is the payload
        info["kernel_ref"] = f"{module}:twice"
        info["kernel_file"] = str(payload)
    elif how == "file_ref":  # a file reference relative to the spec folder, the store
        info["kernel_ref"] = f".daskbatch/{module}.py:twice"
        info["spec_dir"] = str(store)
        info["kernel_file"] = None
    elif how == "spec_dir":  # the spec folder recorded inside the store
        info["kernel_ref"] = f"{module}:twice"
        info["spec_dir"] = str(hidden)
        info["kernel_file"] = None
    elif how == "symlink":  # a file outside the store that is a link into it
        link = store.parent / f"{module}.py"
        link.symlink_to(payload)
        info["kernel_ref"] = f"{module}:twice"
        info["kernel_file"] = str(link)
        info["spec_dir"] = str(store.parent / "nowhere")
    meta.write_text(json.dumps(doc))
    return module


HOWS = ["kernel_file", "file_ref", "spec_dir", "symlink"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("command", ["resume", "validate"])
def test_resume_and_validate_refuse_a_kernel_file_inside_the_store(tmp_path, cli, how, command):
    store, marker = _store(tmp_path, cli)
    _craft(store, marker, how)
    res = cli(command, str(store), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert not marker.exists()
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("daskbatch: error: store "), res.stderr
    assert "inside the store itself" in lines[0] and "does not import code from a store" in lines[0]


def test_the_real_resume_refuses_the_store_and_a_link_to_it(tmp_path, cli):
    store, marker = _store(tmp_path, cli)
    _craft(store, marker, "kernel_file")
    os.symlink(store, tmp_path / "link.zarr")  # the same store under another name
    for target in (store, tmp_path / "link.zarr"):
        res = run_cli("resume", str(target), "--no-progress", cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "inside the store itself" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_resume_and_validate_say_which_file_they_import(tmp_path, cli):
    store, _ = _store(tmp_path, cli)
    module = json.loads((store / "zarr.json").read_text())["attributes"]["daskbatch"]["kernel_ref"]
    file = (tmp_path / (module.split(":")[0] + ".py")).resolve()
    res = run_cli("validate", str(store), "--n", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"daskbatch: importing the kernel from {file} (recorded in the store)" in res.stderr
    res = run_cli("resume", str(store), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"daskbatch: importing the kernel from {file} (recorded in the store)" in res.stderr


@pytest.mark.parametrize("how", HOWS)
def test_reading_commands_never_import_the_kernel(tmp_path, cli, how):
    store, marker = _store(tmp_path, cli)
    module = _craft(store, marker, how)
    for args in (
        ("status", str(store)),
        ("status", str(store), "--json"),
        ("summary", str(store)),
        ("export", str(store), "-o", str(tmp_path / "rows.csv")),
        ("report", str(store), "-o", str(tmp_path / "report.html")),
    ):
        res = cli(*args, cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr)
        assert not marker.exists(), args
    assert (tmp_path / "rows.csv").read_text().count("\n") == 11
    ds = db.open(store)
    assert ds.y.values.tolist() == (2.0 * np.linspace(0, 9, 10)).tolist()
    assert db.status(store).samples["ok"] == 10
    assert not marker.exists()
    # what status shows as the way to continue names no file of the store to run
    assert f"{module}.py" not in cli("status", str(store), cwd=tmp_path).stdout


def test_the_real_status_does_not_import_the_payload(tmp_path, cli):
    store, marker = _store(tmp_path, cli)
    _craft(store, marker, "kernel_file")
    for command in ("status", "summary"):
        res = run_cli(command, str(store), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    assert not marker.exists()


def test_a_script_kernel_recorded_inside_the_store_is_not_suggested(tmp_path, cli):
    store, marker = _store(tmp_path, cli)
    payload = store / ".daskbatch" / "script.py"
    payload.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    info = doc["attributes"]["daskbatch"]
    info["kernel"]["identity"] = "__main__:twice"
    info["kernel_ref"] = None
    info.update(kernel_origin="script", kernel_file=str(payload), argv=[str(payload)], cwd=str(tmp_path))
    meta.write_text(json.dumps(doc))
    # the kernel's identity is fixed at creation: a crafted store changes the copy too
    (store / ".daskbatch" / "provenance.json").write_text(json.dumps({"daskbatch": info}))
    res = cli("status", str(store), cwd=tmp_path)
    assert res.returncode == 0 and "script.py" not in res.stdout + res.stderr
    hint = db.status(store).resume_hint
    assert hint == "run the script that called daskbatch.run again", hint
    res = cli("resume", str(store), cwd=tmp_path)
    assert res.returncode == 2 and "inside the store itself" in res.stderr, res.stderr
    assert "python " not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()


# --------------------------------------------------------------------------- output names


@pytest.mark.parametrize(
    ("dims", "coords", "match"),
    [
        (("a/b",), None, r"dims=\('a/b',\)"),
        (("../../escape",), {"../../escape": [1.0, 2.0]}, r"'\.\./\.\./escape'"),
        (("status",), {"status": [1.0, 2.0]}, r"'status' .*reserved"),
        (("sample",), None, r"'sample' .*reserved"),
        (("",), None, r"dims=\('',\)"),
    ],
)
def test_bad_output_dim_names_are_refused_where_declared(dims, coords, match):
    with pytest.raises(OutputSpecError, match=match) as info:
        db.Output(dims=dims, shape=(2,), coords=coords)
    assert "\n" not in str(info.value) and "identifier" in str(info.value)


@pytest.mark.parametrize("name", ["status", "sample", "_daskbatch"])
def test_reserved_output_names_are_refused_where_declared(tmp_path, name):
    with pytest.raises(KernelSignatureError, match=rf"output name '{name}' is reserved") as info:
        db.kernel(lambda x: x, outputs={name: db.Output()}, name="ident")
    assert "\n" not in str(info.value)


def test_output_names_are_checked_again_when_the_store_is_made(tmp_path):
    """An Output whose dims were changed after it was checked (unpickled from an old
    version, say) is still refused before anything is written."""
    out = db.Output(dims=("t",), shape=(2,))
    object.__setattr__(out, "dims", ("a/b",))
    k = db.kernel(lambda x: np.ones(2) * x, outputs={"y": out}, name="ident")
    with pytest.raises(OutputSpecError, match=r"output 'y': dim 'a/b' is not a valid name"):
        db.run(k, db.Grid(x=[1.0, 2.0]), tmp_path / "s.zarr", cluster="serial", progress=False)
    assert not (tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------- kernel modules that do not import


@pytest.mark.parametrize(
    ("source", "line", "what"),
    [
        ("import daskbatch as db\n\nx = 1\x00\n", 3, "null bytes"),
        ("import daskbatch as db\n\nx = (\n", 3, "syntax error"),
        ("import daskbatch as db\n\n\nundefined_name\n", 4, "NameError"),
        ("import daskbatch as db\n\nexec('y = (')\n", 3, "syntax error"),
    ],
)
def test_a_kernel_module_that_does_not_import_is_one_line_with_its_file_and_line(
    tmp_path, source, line, what
):
    (tmp_path / "broken.py").write_bytes(source.encode())
    (tmp_path / "spec.toml").write_text(SPEC.format(module="broken"))
    res = run_cli("run", "spec.toml", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskbatch: error: kernel='broken:twice'"), res.stderr
    assert f"{tmp_path / 'broken.py'}, line {line}" in lines[0] and what in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["broken.py", "spec.toml"]


@pytest.mark.parametrize("ref", ["{module}:twice", "{module}.py:twice"])
def test_two_projects_kernel_modules_of_one_name_each_run_their_own_file_in_one_process(tmp_path, cli, ref):
    """A notebook or program that runs, resumes or validates two projects' stores: each
    project's ``kernel.py`` is its own, although Python holds the first one's module under
    the same name."""
    module = f"kernel_{uuid.uuid4().hex[:8]}"
    factors = {"a": 2.0, "b": 3.0}
    for name, factor in factors.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{module}.py").write_text(KERNEL.replace("2.0 * a", f"{factor} * a"))
        spec = SPEC.replace('"{module}:twice"', '"' + ref + '"').format(module=module)
        (folder / "spec.toml").write_text(spec)
    for _ in range(2):  # each project's store, then each again: the other's module is held each time
        for name, factor in factors.items():
            res = cli("run", "spec.toml", "--no-progress", cwd=tmp_path / name)
            assert res.returncode == 0, res.stderr
            ds = db.open(tmp_path / name / "s.zarr")
            assert np.array_equal(ds["y"].values, factor * ds["a"].values), name
    for name in factors:
        res = cli("validate", str(tmp_path / name / "s.zarr"), "--n", "3", cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"importing the kernel from {tmp_path / name / (module + '.py')}" in res.stderr, res.stderr


def test_two_projects_helpers_of_one_name_in_one_process_are_refused_not_mixed(tmp_path, cli):
    """Both projects' kernels import a helper module of the same name: Python holds the
    first project's, and workers would import the second's (first on the import path).
    The second run is refused, naming both files, before anything is written."""
    helper, kmod = f"utils_{uuid.uuid4().hex[:8]}", f"kernel_{uuid.uuid4().hex[:8]}"
    for name, factor in (("a", 2.0), ("b", 3.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{helper}.py").write_text(f"def scale(a):\n    return {factor} * a\n")
        (folder / f"{kmod}.py").write_text(
            f"import daskbatch as db\nfrom {helper} import scale\n\n"
            "@db.kernel(outputs={'y': db.Output()})\ndef twice(a):\n    return scale(a)\n"
        )
        (folder / "spec.toml").write_text(SPEC.format(module=kmod))
    res = cli("run", "spec.toml", "--no-progress", cwd=tmp_path / "a")
    assert res.returncode == 0, res.stderr
    res = cli("run", "spec.toml", "--no-progress", cwd=tmp_path / "b")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"module {helper!r} of this process is {tmp_path / 'a' / (helper + '.py')}" in line, line
    assert f"the import path now leads to {tmp_path / 'b' / (helper + '.py')}" in line, line
    assert not (tmp_path / "b" / "s.zarr").exists()
