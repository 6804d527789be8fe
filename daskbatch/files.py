"""One sample per file: :class:`Files`.

``Files("images/*.png")`` (a glob, a folder, one file or a list of paths) lists the
files once, in path order, and gives each sample two parameters: ``path`` (the
absolute path, text) and ``size`` (bytes, int64). The kernel opens the file itself;
nothing of its contents is copied into the store. The store always keeps ``path`` as
a coordinate along ``sample`` (which file each sample was), and ``size`` as one too
when the kernel does not take it. The space's spec records the digest of the sorted
``(path, size, mtime_ns)`` list, so a rerun on files that changed is told so.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError
from .sources import _glob_folder, _has_magic
from .spacebase import Param, Space
from .tableread import STRING, Column, Digest, checkpoint_rows

__all__ = ["Files"]

#: a list of paths longer than this is not written into the spec (only its digest)
MAX_LISTED = 10_000

_COLUMNS = {
    "path": Column("path", STRING),
    "size": Column("size", np.dtype(np.int64)),
    "mtime_ns": Column("mtime_ns", np.dtype(np.int64)),
}


def _listing(files: Any, recursive: bool) -> list[str]:
    """Every file ``files`` names, as absolute paths (not yet sorted)."""
    if isinstance(files, str | os.PathLike):
        text = os.fspath(files)
        if not text:
            raise SpaceError(
                "Files: the path is empty; give a folder, a file or a glob such as 'images/*.png'"
            )
        path = Path(text).expanduser()
        absolute = os.path.abspath(path)
        if path.is_dir():
            walk = Path(absolute).rglob("*") if recursive else Path(absolute).iterdir()
            found = [
                str(p)
                for p in walk
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(absolute).parts)
            ]
            if not found:
                deep = "" if recursive else " (recursive=True looks in its subfolders too)"
                raise SpaceError(f"Files: folder {absolute!r} holds no file{deep}")
            return found
        if path.is_file():
            return [absolute]
        if _has_magic(text):
            matched = glob.glob(absolute, recursive=recursive)
            found = [m for m in matched if os.path.isfile(m)]
            odd = [m for m in matched if not os.path.isfile(m) and not os.path.isdir(m)]
            if odd:  # a link to nothing, a FIFO, a socket: not a file to read
                from .log import logger

                logger.warning(
                    f"Files: {len(odd):,} entries matching {text!r} are neither files nor folders "
                    f"(a broken link, a FIFO) and are left out: {', '.join(odd[:3])}"
                    + (", ..." if len(odd) > 3 else "")
                )
            if not found:
                hint = (
                    "; with recursive=False '**' is one folder level: pass recursive=True for any folders"
                    if "**" in text and not recursive
                    else "; '[...]' in a pattern is a set of characters: for a folder named so, "
                    f"give {glob.escape(os.path.dirname(text))!r} + its pattern (glob.escape)"
                    if "[" in text
                    else ""
                )
                raise SpaceError(
                    f"Files: {text!r} matches no file in {_glob_folder(absolute)!r}; check the "
                    f"pattern and the folder{hint}"
                )
            return [os.path.abspath(m) for m in found]
        raise SpaceError(f"Files: {absolute!r} does not exist; give a folder, a file or a glob pattern")
    if isinstance(files, Sequence) and not isinstance(files, bytes):
        if not files:
            raise SpaceError("Files: the list of paths is empty; give at least one file")
        out = []
        for f in files:
            if not isinstance(f, str | os.PathLike):
                raise SpaceError(f"Files: {f!r} in the list is not a path; give paths as strings")
            p = os.path.abspath(Path(os.fspath(f)).expanduser())
            if not os.path.isfile(p):
                what = "is a folder, not a file" if os.path.isdir(p) else "does not exist"
                raise SpaceError(f"Files: {p!r} in the list {what}; give files only")
            out.append(p)
        return out
    raise SpaceError(
        f"Files: {files!r} is not a path; give a folder, a file, a glob such as 'images/*.png', "
        "or a list of paths"
    )


class Files(Space):
    """One sample per file, in path order.

    Parameters
    ----------
    files
        A glob pattern (``"images/*.png"``, ``"runs/**/*.npy"``), a folder (its
        files; hidden ones, whose name starts with ``.``, are left out), one file, or
        a list of paths.
    recursive
        A folder: its subfolders' files too. A glob: ``**`` matches any folders.
        Default (None): True for a glob with ``**`` (as :class:`Table` reads one),
        else False; ``recursive=False`` makes ``**`` one folder level, as
        :func:`glob.glob` does without ``recursive``.

    Notes
    -----
    Each sample has two parameters: ``path`` (absolute, text) and ``size`` (bytes,
    int64). The kernel need not take them: ``path`` is always kept in the store as
    a coordinate along ``sample``, and ``size`` too when the kernel does not take
    it. The files are listed (and their size and modification time read) when the
    space is made; a pattern that matches nothing is an error then.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.txt", "a.txt"):
    ...     _ = (folder / name).write_text("x" * 3)
    >>> f = Files(folder / "*.txt")
    >>> [pathlib.Path(p).name for p in f.block((slice(0, 2),))["path"].tolist()]
    ['a.txt', 'b.txt']
    >>> f.block((slice(0, 2),))["size"].tolist()
    [3, 3]
    """

    batch_dims = ("sample",)
    carries_rows = True

    def __init__(
        self,
        files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        recursive: bool | None = None,
    ) -> None:
        if recursive is None:
            recursive = isinstance(files, str | os.PathLike) and "**" in os.fspath(files)
        if not isinstance(recursive, bool):
            raise SpaceError(f"Files: recursive={recursive!r} must be True or False (or None: True for '**')")
        paths = sorted(set(_listing(files, recursive)))
        sizes, mtimes = np.empty(len(paths), np.int64), np.empty(len(paths), np.int64)
        for i, p in enumerate(paths):
            st = os.stat(p)
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        self.recursive = recursive
        if isinstance(files, str | os.PathLike):
            self.pattern: str | list[str] | None = os.path.abspath(Path(os.fspath(files)).expanduser())
        else:
            given = [os.path.abspath(Path(os.fspath(f)).expanduser()) for f in files]
            self.pattern = given if len(given) <= MAX_LISTED else None
        for p in paths:
            if not p.isprintable() and any("\udc80" <= c <= "\udcff" for c in p):
                raise SpaceError(
                    f"Files: the name of {os.fsencode(p)!r} is not UTF-8 text (its bytes are those of "
                    "another encoding, such as Latin-1); daskbatch keeps paths as UTF-8 text: rename it "
                    "(convmv -f latin1 -t utf8 --notest FILE) or leave it out of the pattern or list"
                )
        self.paths = np.asarray(paths, dtype=STRING)
        self.sizes = sizes
        self.mtimes = mtimes
        self.batch_shape = (len(paths),)
        self.params = {
            "path": Param("path", ("sample",), (), STRING, stored=True, label=True, optional=True),
            "size": Param("size", ("sample",), (), np.dtype(np.int64), stored=False, optional=True),
        }
        self._spec: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading

    def block(self, slices):
        (s,) = slices
        return {"path": self.paths[s], "size": self.sizes[s]}

    def to_dask(self, chunks):
        import dask.array as da

        (c,) = chunks
        return {
            "path": da.from_array(self.paths, chunks=(c,)),
            "size": da.from_array(self.sizes, chunks=(c,)),
        }

    def head(self, n: int) -> Files:
        return Files(self.paths[: max(1, n)].tolist())

    # ------------------------------------------------------------------ describing

    def _digests(self, rows: Sequence[int]) -> dict[int, Any]:
        import pyarrow as pa

        digest = Digest(_COLUMNS, rows)
        stop = max(rows)
        encoded = [str(p).encode("utf-8", "surrogateescape") for p in self.paths[:stop]]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        # from its buffers: pa.array() would import pandas (a third of a short job's time)
        paths = pa.LargeStringArray.from_buffers(
            len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))
        )
        batch = {
            "path": (paths, None),
            "size": (self.sizes[:stop], None),
            "mtime_ns": (self.mtimes[:stop], None),
        }
        digest.update(min(stop, self.size), batch)
        return digest.at

    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            rows = self.size
            marks = checkpoint_rows(rows)
            at = self._digests(marks)
            self._spec = {
                "type": "files",
                **({"path": self.pattern} if self.pattern is not None else {}),
                "recursive": self.recursive,
                "rows": rows,
                "columns": {"path": ["sample"], "size": ["sample"]},
                "dtypes": {"path": "str", "size": "int64"},
                "sha256": at[rows].sha256,
                "prefix": [[r, at[r].sha256[:16], str(self.paths[r - 1])] for r in marks[:-1]],
            }
        return dict(self._spec)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> Files:
        """The files a :meth:`spec` (or a spec file's ``[space]`` table: ``type = "files"``,
        ``path``, ``recursive``) names. With a ``sha256``, they must be unchanged."""
        path = spec.get("path")
        if path is None:
            raise SpaceError(
                "space.path: the Files space was made from a list of more than "
                f"{MAX_LISTED:,} paths, which the spec does not keep; make it again from its folder or glob"
            )
        recursive = spec.get("recursive")  # None (not given in a spec file): True for '**'

        def resolve(p: str) -> str:
            q = Path(p).expanduser()
            return str(Path(base_dir) / q) if base_dir is not None and not q.is_absolute() else str(q)

        if isinstance(path, str):
            files = cls(resolve(path), recursive=recursive)
        elif isinstance(path, list):
            files = cls([resolve(p) for p in path], recursive=recursive)
        else:
            raise SpaceError(f"space.path: {path!r} must be a folder, a glob pattern or a list of paths")
        expected = spec.get("sha256")
        if expected is not None and files.spec()["sha256"] != expected:
            reason = files.extension_of(spec) if files.size > int(spec.get("rows") or 0) else None
            raise SpaceError(
                f"space.path: the files {path!r} changed since the run started "
                f"({reason or 'their list, sizes or modification times differ'}); restore them, or "
                "start a new store"
            )
        return files

    def extension_of(self, old_spec: Mapping[str, Any]) -> str | None:
        """None when these files are the files ``old_spec`` lists with files added at
        the end (in path order), every old one unchanged (path, size, modification
        time); else a one-line reason naming the first difference."""
        old = dict(old_spec)
        if old.get("type") != "files":
            return f"the store's space is a {old.get('type')}, not Files"
        old_rows, rows = int(old.get("rows") or 0), self.size
        same = f"{rows:,} files, not more than the stored {old_rows:,}"
        if rows < old_rows:
            return same
        # as many files: still compared, to name the file that changed
        checkpoints = [(int(e[0]), str(e[1]), e[2] if len(e) > 2 else None) for e in old.get("prefix") or []]
        checkpoints = [c for c in checkpoints if c[0] < old_rows]
        checkpoints.append((old_rows, str(old.get("sha256")), None))
        at = self._digests([r for r, _, _ in checkpoints])
        if at[old_rows].sha256 == old.get("sha256"):
            return None if rows > old_rows else same
        prev = 0
        for r, digest, last in checkpoints:
            if at[r].sha256[: len(digest)] != digest:
                now = str(self.paths[r - 1])
                if r - prev == 1:
                    if last is not None and last != now:
                        return f"row {r - 1} changed: path {last!r} -> {now!r}"
                    return f"row {r - 1} changed: file {now!r} was modified (size or modification time)"
                where = f"a file among rows {prev}-{r - 1} changed, was added or removed"
                if last is not None and last != now:
                    return f"{where} (row {r - 1}: {last!r} -> {now!r})"
                return where
            prev = r
        return "the files differ"  # pragma: no cover - the last checkpoint is the digest
