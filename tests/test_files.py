"""``Files``: one sample per file, in path order; the store knows which file each sample was."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

import daskbatch as db
from daskbatch import Files
from daskbatch.errors import SpaceError
from daskbatch.sources import STRING
from daskbatch.space import space_from_spec


@db.kernel(outputs={"first": db.Output(dtype="int64"), "length": db.Output(dtype="int64")})
def first_byte(path):
    """The first byte of each file and how many bytes it has (read by the kernel itself)."""
    data = Path(path).read_bytes()
    return {"first": data[0], "length": len(data)}


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, size in [("b.png", 5), ("a.png", 3), ("c.txt", 2), ("sub/d.png", 4), (".hidden.png", 1)]:
        (folder / name).write_bytes(bytes([len(name)]) * size)
    return folder


def test_files_from_a_folder_a_glob_and_a_list(tmp_path):
    folder = _folder(tmp_path)
    f = Files(folder)
    paths = f.block((slice(0, 3),))["path"]
    assert paths.dtype == STRING
    assert paths.tolist() == [str(folder / n) for n in ("a.png", "b.png", "c.txt")]  # sorted, absolute
    assert f.block((slice(0, 3),))["size"].tolist() == [3, 5, 2]
    assert f.block((slice(0, 1),))["size"].dtype == np.int64
    assert Files(folder, recursive=True).size == 4  # sub/d.png too; hidden files left out
    assert Files(str(folder / "*.png")).size == 2
    assert Files(str(folder / "**" / "*.png"), recursive=True).size == 3
    assert Files(str(folder / "**" / "*.png")).size == 3  # '**' looks in any folders, as Table's
    assert Files(str(folder / "**" / "*.png"), recursive=False).size == 1  # glob's one level
    listed = Files([folder / "b.png", str(folder / "a.png")])
    assert [Path(p).name for p in listed.block((slice(0, 2),))["path"].tolist()] == ["a.png", "b.png"]
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        assert Files("*.png").block((slice(0, 1),))["path"].tolist() == [str(folder / "a.png")]
    finally:
        os.chdir(cwd)


def test_a_run_over_files_keeps_which_file_each_sample_was(tmp_path):
    folder = _folder(tmp_path)
    store = tmp_path / "files.zarr"
    db.run(first_byte, Files(folder / "*.png"), store, cluster="serial", progress=False)
    ds = db.open(store)
    assert ds.path.values.tolist() == [str(folder / "a.png"), str(folder / "b.png")]
    assert {"path", "size"} <= set(ds.coords)  # the kernel takes path; size is a label
    assert ds.size.values.tolist() == [3, 5] and ds.length.values.tolist() == [3, 5]
    assert ds.first.values.tolist() == [5, 5]
    assert db.status(store).complete


def test_files_spec_references_the_files(tmp_path):
    folder = _folder(tmp_path)
    f = Files(folder / "*.png")
    spec = f.spec()
    assert spec["type"] == "files" and spec["rows"] == 2 and spec["path"] == str(folder / "*.png")
    again = space_from_spec(tomllib.loads(f.to_toml())["space"])
    assert again.spec() == spec
    # the digest covers the list, the sizes and the modification times
    st = (folder / "a.png").stat()
    os.utime(folder / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert Files(folder / "*.png").spec()["sha256"] != spec["sha256"]
    with pytest.raises(SpaceError, match=r"files '.*\*.png' changed since the run started"):
        space_from_spec(spec)


def test_extension_of_files(tmp_path):
    folder = _folder(tmp_path)
    old = Files(folder / "*.png").spec()
    (folder / "e.png").write_bytes(b"e")  # sorts last: an extension
    assert Files(folder / "*.png").extension_of(old) is None
    (folder / "0.png").write_bytes(b"0")  # sorts first: every row moves
    assert Files(folder / "*.png").extension_of(old) == (
        f"row 0 changed: path {str(folder / 'a.png')!r} -> {str(folder / '0.png')!r}"
    )
    (folder / "0.png").unlink()
    (folder / "b.png").write_bytes(b"longer now")
    assert Files(folder / "*.png").extension_of(old) == (
        f"row 1 changed: file {str(folder / 'b.png')!r} was modified (size or modification time)"
    )
    assert Files(folder / "a.png").extension_of(old) == "1 files, not more than the stored 2"
    assert (
        Files(folder / "*.png").extension_of({"type": "table"}) == "the store's space is a table, not Files"
    )


def test_bad_files_are_refused_before_any_store(tmp_path):
    folder = _folder(tmp_path)
    store = tmp_path / "never.zarr"
    (folder / "sub" / "empty").mkdir()
    cases = [
        (
            lambda: Files(str(folder / "*.jpg")),
            r"'.*\*.jpg' matches no file in '.*images'; check the pattern",
        ),
        (
            lambda: Files(str(folder / "**" / "*.jpg"), recursive=False),
            r"matches no file in '.*images'.*pass recursive=True",
        ),
        (lambda: Files(tmp_path / "nowhere"), r"'.*nowhere' does not exist; give a folder"),
        (lambda: Files([folder / "a.png", folder / "zz.png"]), r"'.*zz.png' in the list does not exist"),
        (lambda: Files([folder / "sub"]), r"'.*sub' in the list is a folder, not a file"),
        (lambda: Files([]), "the list of paths is empty"),
        (lambda: Files(folder / "sub" / "empty"), r"folder '.*empty' holds no file \(recursive=True"),
        (lambda: Files(folder, recursive="yes"), r"recursive='yes' must be True or False"),
        (lambda: Files(42), r"Files: 42 is not a path"),
    ]
    for make, words in cases:
        with pytest.raises(SpaceError, match=words):
            make()
    assert not store.exists()


def test_a_file_name_that_is_not_utf8_is_named_with_the_fix(tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "ok.dat").write_bytes(b"1")
    with open(os.fsencode(folder) + b"/caf\xe9.dat", "wb") as f:  # a Latin-1 name
        f.write(b"2")
    with pytest.raises(SpaceError, match=r"caf\\xe9.dat'? is not UTF-8 text.*rename it"):
        Files(str(folder / "*.dat"))
    assert Files(str(folder / "ok.dat")).size == 1


def test_a_rerun_after_files_were_removed_names_them_and_changes_nothing(tmp_path):
    from daskbatch.errors import FingerprintMismatchError

    folder = tmp_path / "runs"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.bin").write_bytes(b"x" * (i + 1))
    store = tmp_path / "s.zarr"
    db.run(first_byte, Files(str(folder / "*.bin")), store, cluster="serial", progress=False)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"}
    (folder / "f2.bin").unlink()
    with pytest.raises(
        FingerprintMismatchError,
        match=r"rows: 5 -> 4.*files the store holds results of are gone: .*f2.bin\. Pass",
    ):
        db.run(first_byte, Files(str(folder / "*.bin")), store, cluster="serial", progress=False)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"} == before


def test_a_glob_says_what_it_left_out_and_how_to_match_brackets(tmp_path, caplog):
    """A broken link was skipped without a word; `run[1]/*.bin` said only "matches no file"."""
    import glob
    import logging
    import os

    folder = tmp_path / "run[1]"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    os.symlink(tmp_path / "nowhere", folder / "b.bin")
    with pytest.raises(SpaceError, match=r"'\[\.\.\.\]' in a pattern is a set of characters: .*glob\.escape"):
        db.Files(str(folder / "*.bin"))
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        files = db.Files(glob.escape(str(folder)) + "/*.bin")
    assert files.size == 1 and "1 entries matching" in caplog.text and "b.bin" in caplog.text
