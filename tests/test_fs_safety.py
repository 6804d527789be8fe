"""The store on disk against a hostile or broken filesystem: planted symbolic links,
a run killed while it creates its store, a lock on a filesystem without ``flock``,
a lock file that is a folder, a full disk, a path under /proc, stale temporaries.

Runs use the real ``daskbatch`` command in a subprocess where a user would, on the
serial scheduler and stores of a few samples.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import StoreError
from daskbatch.lock import StoreLock
from daskbatch.testing import affine, assert_stores_identical, daskbatch_command, run_killed

# the test hook of daskbatch.fstools: the run pauses at a named point of the store's creation
PAUSE_ENV = "DASKBATCH_TEST_PAUSE"

SPEC = """\
kernel = "daskbatch.testing:affine"
store = "{store}"
cluster = "serial"
chunk_size = 4

[constants]
b = 0.5

[space]
type = "grid"
axes = {{ a = {{ arange = [0, 10, 1] }} }}
"""


def _spec(folder: Path, store: str = "out.zarr") -> Path:
    spec = folder / "sweep.toml"
    spec.write_text(SPEC.format(store=store))
    return spec


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The store an uninterrupted run of SPEC makes."""
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    db.run(
        affine,
        db.Grid(a=np.arange(0, 10, 1)),
        path,
        constants={"b": 0.5},
        cluster="serial",
        chunk_size=4,
        progress=False,
    )
    return path


@pytest.fixture
def made(tmp_path, reference) -> Path:
    """A complete store of SPEC in ``tmp_path/out.zarr`` (a copy of the reference)."""
    _spec(tmp_path)
    store = tmp_path / "out.zarr"
    shutil.copytree(reference, store)
    return store


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", "sweep.toml", "--no-progress", *args, cwd=folder, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("daskbatch: error: "), r.stderr
    return lines[0]


def _pending(store: Path) -> None:
    """Forget every committed block, so that a run writes every chunk again."""
    for f in (store / ".daskbatch" / "blocks").iterdir():
        f.unlink()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".creating-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------- symbolic links


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(made, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    _pending(made)
    lock = made / ".daskbatch" / "lock"
    lock.unlink()
    lock.symlink_to(target)
    line = _one_line_error(_run(tmp_path))
    assert str(lock) in line and "symbolic link" in line
    assert target.read_text() == "precious"


def test_a_hidden_folder_planted_as_a_link_is_refused_even_by_overwrite(made, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _pending(made)
    shutil.move(made / ".daskbatch", elsewhere)
    (elsewhere / "timeouts").mkdir()
    (elsewhere / "timeouts" / "keep.json").write_text("{}")
    (made / ".daskbatch").symlink_to(elsewhere)
    for args in ((), ("--overwrite",)):
        line = _one_line_error(_run(tmp_path, *args))
        assert str(made / ".daskbatch") in line and "symbolic link" in line
    assert (elsewhere / "timeouts" / "keep.json").read_text() == "{}"
    assert list((elsewhere / "blocks").iterdir()) == []  # no block was written through it


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_chunk_folder_planted_as_a_link_is_refused_before_anything_is_written(
    made, tmp_path, reference, overwrite
):
    args = ["--overwrite"] if overwrite else []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    _pending(made)
    shutil.rmtree(made / "y" / "c")
    (made / "y" / "c").symlink_to(elsewhere)
    line = _one_line_error(_run(tmp_path, *args))
    assert str(made / "y" / "c") in line and "symbolic link" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]
    assert (made / "y" / "c").is_symlink() and (made / "zarr.json").is_file()
    # the store path itself may be a link the user made: it is followed, and stays a link
    (made / "y" / "c").unlink()
    real = tmp_path / "disk" / "real.zarr"
    real.parent.mkdir()
    made.rename(real)
    made.symlink_to(real)
    r = _run(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert made.is_symlink() and made.resolve() == real
    assert_stores_identical(real, reference)
    assert _leftovers(real.parent) == [] and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- killed while creating


def _killed_at(folder: Path, point: str, signum: int = signal.SIGKILL, *args: str):
    flag = folder / f"paused-{point}"
    flag.unlink(missing_ok=True)
    k = run_killed(
        daskbatch_command("run", "sweep.toml", "--no-progress", *args),
        until=flag.exists,
        signum=signum,
        cwd=folder,
        env={**os.environ, PAUSE_ENV: f"{point}:{flag}"},
        wait=60,
    )
    assert k.caught and k.signalled, (k.returncode, k.stderr)
    return k


@pytest.mark.parametrize("point", ["create-written", "create-swapped"])
@pytest.mark.parametrize("again", [(), ("--overwrite",)], ids=["run", "overwrite"])
def test_a_run_killed_while_it_creates_its_store_leaves_nothing_in_the_way(tmp_path, reference, point, again):
    _spec(tmp_path)
    store = tmp_path / "out.zarr"
    k = _killed_at(tmp_path, point)
    assert k.returncode == -signal.SIGKILL
    if point == "create-written":  # the template was whole aside: the store is not there yet
        assert sorted(p.name for p in store.iterdir()) == [".daskbatch"]
    else:  # swapped in: a complete store with no block done
        assert db.status(store).blocks_done == 0
    r = _run(tmp_path, *again)
    assert r.returncode == 0, r.stderr
    assert_stores_identical(store, reference, provenance=True)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("point", ["create-written", "create-swapped"])
def test_an_overwrite_killed_while_it_creates_leaves_the_old_store_or_the_new_one(
    made, tmp_path, reference, point
):
    before = db.status(made).blocks_done
    _killed_at(tmp_path, point, signal.SIGKILL, "--overwrite")
    done = db.status(made).blocks_done  # a whole store either way
    assert done == (before if point == "create-written" else 0)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert_stores_identical(made, reference, provenance=True)
    assert _leftovers(tmp_path) == []


def test_sigterm_while_the_store_is_created_is_an_orderly_stop_with_nothing_left(tmp_path, reference):
    _spec(tmp_path)
    store = tmp_path / "out.zarr"
    k = _killed_at(tmp_path, "create-written", signal.SIGTERM)
    assert k.returncode == 143 and len(k.lines) == 1 and "interrupted by SIGTERM" in k.lines[0], k.stderr
    assert not store.exists() and _leftovers(tmp_path) == []
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert_stores_identical(store, reference, provenance=True)


def test_the_disk_full_while_the_store_is_created_leaves_the_folder_usable(tmp_path, reference):
    """A real tmpfs with room for the lock but not for the template (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=12", "tmpfs", str(mnt)], check=True)
    try:
        _spec(mnt)
        (mnt / "out.zarr").mkdir()  # a folder the user made for it
        line = _one_line_error(_run(mnt))
        assert "the disk is full" in line or "No space left" in line, line
        assert sorted(p.name for p in (mnt / "out.zarr").iterdir()) == [".daskbatch"]
        assert _leftovers(mnt) == []
        subprocess.run(["mount", "-o", "remount,nr_inodes=4096", str(mnt)], check=True)
        r = _run(mnt)
        assert r.returncode == 0, r.stderr
        assert_stores_identical(mnt / "out.zarr", reference, provenance=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --------------------------------------------------------------------------- the lock


def _lock_doc(store: Path, pid: int, start: str) -> Path:
    lock = store / ".daskbatch" / "lock"
    lock.parent.mkdir(parents=True)
    doc = {"host": socket.gethostname(), "pid": pid, "start": start, "command": "daskbatch run"}
    lock.write_text(json.dumps(doc))
    return lock


def test_without_flock_a_live_holder_is_named_with_the_file_to_delete(tmp_path, cli, monkeypatch):
    monkeypatch.setattr("daskbatch.lock._try_flock", lambda fd, shared=False: None)
    _spec(tmp_path)
    store = tmp_path / "out.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        lock = _lock_doc(store, holder.pid, now)
        r = cli("run", "sweep.toml", "--no-progress", cwd=tmp_path)
        line = _one_line_error(r)
        assert f"pid {holder.pid}" in line and socket.gethostname() in line
        assert "taken over automatically" not in line
        assert f"delete the lock file {str(lock)!r}" in line
        # the same pid, but a process that started after the lock was taken: not the holder
        lock.write_text(json.dumps({**json.loads(lock.read_text()), "start": "2001-01-01T00:00:00+0000"}))
        r = cli("run", "sweep.toml", "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        # a holder that has ended: taken over
        holder.kill()
        holder.wait()
        _pending(store)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "start": now}))
        r = cli("run", "sweep.toml", "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert db.status(store).complete
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_that_is_a_folder_is_one_line(tmp_path):
    _spec(tmp_path)
    lock = tmp_path / "out.zarr" / ".daskbatch" / "lock"
    lock.mkdir(parents=True)
    line = _one_line_error(_run(tmp_path))
    assert str(lock) in line and "is a directory" in line
    assert lock.is_dir()


def test_a_full_disk_when_the_lock_is_taken_is_one_line_and_leaves_nothing(tmp_path, cli, monkeypatch):
    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(StoreLock, "_write", full)
    _spec(tmp_path)
    r = cli("run", "sweep.toml", "--no-progress", cwd=tmp_path)
    line = _one_line_error(r)
    assert "the disk is full" in line and str(tmp_path / "out.zarr") in line
    assert not (tmp_path / "out.zarr").exists()


def test_a_store_under_proc_is_one_line_and_nothing_is_made(tmp_path):
    _spec(tmp_path, "/proc/daskbatch-test.zarr")
    line = _one_line_error(_run(tmp_path))
    assert "/proc/daskbatch-test.zarr" in line
    assert not Path("/proc/daskbatch-test.zarr").exists()


# --------------------------------------------------------------------------- exports


@pytest.mark.parametrize(
    "command, name", [("export", "out.csv"), pytest.param("report", "out.html", marks=pytest.mark.slow)]
)
def test_a_stale_partial_file_is_replaced_never_written_through(made, tmp_path, command, name):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    partial = tmp_path / f"{name}.partial"
    partial.symlink_to(target)
    r = run_cli(command, str(made), "-o", str(tmp_path / name), timeout=120)
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "precious"
    out = tmp_path / name
    assert out.is_file() and not out.is_symlink() and "precious" not in out.read_text()
    assert not os.path.lexists(partial)


@pytest.mark.slow
@pytest.mark.parametrize("command, name", [("report", "out.html")])
def test_a_failed_report_leaves_no_partial_file(made, tmp_path, command, name):
    (tmp_path / name).mkdir()  # the rename into place fails
    (tmp_path / name / "x").write_text("x")
    r = run_cli(command, str(made), "-o", str(tmp_path / name), timeout=120)
    assert r.returncode != 0
    assert not os.path.lexists(tmp_path / f"{name}.partial")
    assert (tmp_path / name / "x").read_text() == "x"


def test_where_the_filesystem_cannot_swap_two_paths_two_renames_make_the_store(
    made, tmp_path, reference, monkeypatch
):
    monkeypatch.setattr("daskbatch.fstools._exchange", lambda a, b: False)  # as on macOS
    space = db.Grid(a=np.arange(0, 10, 1))
    args = dict(constants={"b": 0.5}, cluster="serial", chunk_size=4, progress=False)
    res = db.run(affine, space, made, overwrite=True, **args)
    assert res.complete and res.blocks_computed == 3
    assert_stores_identical(made, reference, provenance=True)
    assert _leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.zarr"
    db.run(affine, space, fresh, **args)
    assert_stores_identical(fresh, reference, provenance=True)


def test_a_store_path_linked_to_a_folder_that_does_not_exist_is_one_line(tmp_path):
    for target in (tmp_path / "target.zarr", tmp_path / "nowhere" / "out.zarr"):
        link = tmp_path / f"link-{target.parent.name}.zarr"
        link.symlink_to(target)
        with pytest.raises(
            StoreError, match=rf"is a symbolic link to '{target}', which does not exist; make that folder"
        ):
            db.run(affine, db.Grid(a=[1.0]), link, cluster="serial", progress=False)
        assert not target.exists() and link.is_symlink()
    (tmp_path / "target.zarr").mkdir()  # made as the message says: the run goes on through the link
    db.run(
        affine, db.Grid(a=[1.0]), tmp_path / f"link-{tmp_path.name}.zarr", cluster="serial", progress=False
    )
    assert (tmp_path / "target.zarr" / "zarr.json").is_file()


def test_a_check_that_the_store_is_free_does_not_say_the_filesystem_has_no_locks(tmp_path):
    """What `daskbatch submit` says when a run holds the store, on a filesystem with flock."""
    path = tmp_path / "s.zarr" / ".daskbatch" / "lock"
    lock = StoreLock(path).acquire()
    try:
        with pytest.raises(StoreError, match="is being written by another run") as e:
            StoreLock(path).check_free()
        assert "no file locks" not in str(e.value) and "taken over automatically" in str(e.value)
        assert sorted(p.name for p in path.parent.iterdir()) == ["lock"]  # its probe file is gone
    finally:
        lock.release()


def test_a_store_whose_creating_run_was_killed_says_to_run_again(tmp_path, cli):
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_doc(store, dead.pid, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for command in ("status", "resume"):
        r = cli(command, str(store))
        assert r.returncode == 2 and "holds no results: the run that was to create it stopped" in r.stderr
    lock = StoreLock(store / ".daskbatch" / "lock")
    (store / ".daskbatch" / "lock").write_text("")
    lock.acquire()  # a run that lives, creating it
    try:
        assert "is being created by a run" in cli("status", str(store)).stderr
    finally:
        lock.release()
    db.run(affine, db.Grid(a=[1.0, 2.0]), store, cluster="serial", progress=False)  # the same command again
    assert db.status(store).complete


def test_overwrite_refuses_a_store_holding_files_daskbatch_did_not_write(tmp_path):
    """A user's notes or figures put inside a store were deleted with it by overwrite,
    silently: daskbatch never deletes data it did not write. A damaged array (its
    zarr.json gone) is still daskbatch's, and overwrite replaces it."""
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=20, seed=1)
    store = tmp_path / "s.zarr"

    def run():
        return db.run(affine, space, store, cluster="serial", chunk_size=5, progress=False, overwrite=True)

    run()
    (store / "notes.txt").write_text("my analysis")
    (store / "figures").mkdir()
    (store / "figures" / "fig1.png").write_bytes(b"png")
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    with pytest.raises(
        db.DaskbatchError, match=r"holds files daskbatch did not write \('figures', 'notes.txt'\)"
    ):
        run()
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before  # nothing touched
    (store / "notes.txt").unlink()
    shutil.rmtree(store / "figures")
    (store / "y" / "zarr.json").unlink()  # damaged: still daskbatch's
    (store / "zarr.0123abcd.partial").write_text("{")  # zarr's write of the root, stopped part way
    (store / "zarr.json.4242.tmp").write_text("{")  # a repair's, stopped part way
    assert run().complete
    assert (store / "y" / "zarr.json").is_file()
