"""Table sources read where they are: Parquet, CSV and Zarr files, and folders or globs of them.

When a :class:`~daskbatch.Table` is made from a path, the driver reads the metadata
(schema, row count, row-group sizes) and streams the table once, in batches of
bounded size, to check its values (no NaN in numeric columns, no column mixing
numbers and text) and compute its content digest. For a CSV file the same pass
records the byte offset of every :data:`CSV_STEP`-th row, so that a block later
reads only its own bytes. No step ever holds the whole table in memory.

This module opens a path (:func:`open_source`, :func:`opened`) and reads the files of
a folder or a glob as one table (:class:`MultiSource`). The reader of each file kind
(:class:`ParquetSource`, :class:`CsvSource`, :class:`ZarrSource`) is in
:mod:`daskbatch.tablefiles`; the columns, the content digest (:class:`Digest`), the
scan and the :class:`Source` base in :mod:`daskbatch.tableread`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError
from .tablefiles import CSV_STEP, CsvSource, ParquetSource, ZarrSource
from .tableread import STRING, Column, Digest, ScanResult, Source, _Retry, checkpoint_rows, file_scan, scan

__all__ = [
    "CSV_STEP",
    "STRING",
    "Column",
    "CsvSource",
    "Digest",
    "MultiSource",
    "ParquetSource",
    "Source",
    "ZarrSource",
    "checkpoint_rows",
    "open_source",
    "scan",
]

_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)


# --------------------------------------------------------------------------- many files


class MultiSource(Source):
    """Files of one kind read as one table, in path order (a folder or a glob)."""

    def __init__(self, path: str, sources: Sequence[Source]) -> None:
        self.path = path
        self.sources = list(sources)
        self.kind = self.sources[0].kind
        kinds = {s.kind for s in self.sources}
        if len(kinds) > 1:
            raise SpaceError(
                f"Table: {path!r} holds files of kinds {sorted(kinds)}; the files of one table "
                "must all be CSV, all Parquet or all Zarr"
            )
        self.starts = np.concatenate([[0], np.cumsum([s.rows for s in self.sources], dtype=np.int64)])
        self.rows = int(self.starts[-1])
        if self.kind == "csv":
            self._unify_csv()
        self.columns = dict(self.sources[0].columns)
        first = self.sources[0]
        for s in self.sources[1:]:
            if list(s.columns) != list(first.columns):
                raise SpaceError(
                    f"Table: {s.path!r} has columns {list(s.columns)} and {first.path!r} "
                    f"{list(first.columns)}; the files of a table need the same columns"
                )
            for n, col in s.columns.items():
                if col != first.columns[n]:
                    raise SpaceError(
                        f"Table: column {n!r} is {col.type_name} {list(col.core_shape)} in "
                        f"{s.path!r} and {first.columns[n].type_name} {list(first.columns[n].core_shape)} "
                        f"in {first.path!r}; the files of a table need the same column types"
                    )

    def _unify_csv(self) -> None:
        import pyarrow as pa

        rank = {pa.bool_(): 0, pa.int64(): 1, pa.float64(): 2, pa.large_string(): 3}
        wide: dict[str, Any] = {}
        for s in self.sources:
            for n, t in s.types.items():  # type: ignore[attr-defined]
                if n not in wide or rank.get(t, 3) > rank.get(wide[n], 3):
                    wide[n] = t
        if any(t == pa.bool_() for t in wide.values()):  # bool and numbers: text
            for n, t in wide.items():
                if t == pa.bool_() and any(s.types.get(n) != t for s in self.sources):  # type: ignore[attr-defined]
                    wide[n] = pa.large_string()
        for s in self.sources:
            for n, t in wide.items():
                if s.types.get(n) != t:  # type: ignore[attr-defined]
                    s.widen(n, t)  # type: ignore[attr-defined]

    @property
    def where(self) -> str:
        return f"{self.path!r} ({len(self.sources)} files)"

    def files(self) -> list[tuple[str, int, int]]:
        return [f for s in self.sources for f in s.files()]

    def select(self, names: Sequence[str]) -> None:
        super().select(names)
        for s in self.sources:
            s.select(names)

    def check_types(self) -> None:
        for s in self.sources:
            check = getattr(s, "check_types", None)
            if check is not None:
                check()

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        for s, start in zip(self.sources, self.starts[:-1].tolist(), strict=True):
            if start >= stop:
                break
            try:
                yield from s.batches(stop=stop - start)
            except _Retry:
                if isinstance(s, CsvSource):  # one file's column got wider: every file's does
                    for other in self.sources:
                        for n, t in s.types.items():
                            if other.types.get(n) != t:  # type: ignore[attr-defined]
                                other.widen(n, t)  # type: ignore[attr-defined]
                    self.columns = dict(s.columns)
                raise

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for i, s in enumerate(self.sources):
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            if hi <= start or lo >= stop:
                continue
            parts.append(s.read(max(start, lo) - lo, min(stop, hi) - lo))
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.columns}


# --------------------------------------------------------------------------- opening


def _is_zarr(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or (p / "zarr.json").exists() or (p / ".zgroup").exists()


def _one(path: Path) -> Source:
    suffix = path.suffix.lower()
    if path.is_dir():
        if _is_zarr(path):
            return ZarrSource(str(path))
        raise SpaceError(f"Table: {str(path)!r} is a folder, not a Zarr store")  # pragma: no cover
    if suffix in _CSV:
        return CsvSource(str(path))
    if suffix in _PARQUET:
        return ParquetSource(str(path))
    raise SpaceError(
        f"Table: cannot read {str(path)!r}; give a .csv, .parquet or .zarr path (or a folder or glob of them)"
    )


def _has_magic(text: str) -> bool:
    return glob.has_magic(text) if hasattr(glob, "has_magic") else bool(re.search(r"[*?[]", text))


def table_paths(data: str | os.PathLike[str]) -> tuple[str, list[Path]]:
    """The absolute path (or pattern) of a table given by path, and its files in order.

    A file or a Zarr store is one path; a folder gives its CSV, Parquet and Zarr
    entries, a glob pattern what it matches, both sorted by path.
    """
    text = os.fspath(data)
    path = Path(text).expanduser()
    absolute = os.path.abspath(path)
    if path.exists():
        if path.is_dir() and not _is_zarr(path):
            found = sorted(
                p
                for p in Path(absolute).iterdir()
                if not p.name.startswith(".")
                and (p.suffix.lower() in (*_CSV, *_PARQUET) or (p.is_dir() and _is_zarr(p)))
            )
            if not found:
                raise SpaceError(
                    f"Table: folder {absolute!r} holds no .csv, .parquet or .zarr file; give a "
                    "folder of table files, a glob such as 'data/*.parquet', or a file"
                )
            return absolute, found
        return absolute, [Path(absolute)]
    if _has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(absolute, recursive="**" in text))
        found = [m for m in matches if m.is_file() or _is_zarr(m)]
        if not found:
            folder = _glob_folder(absolute)
            raise SpaceError(
                f"Table: {text!r} matches no file in {folder!r}; check the pattern and the folder"
            )
        return absolute, found
    raise SpaceError(f"Table: file {absolute!r} does not exist")


def _glob_folder(pattern: str) -> str:
    """The folder a glob pattern looks in: its leading part without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else os.getcwd()


def open_source(data: str | os.PathLike[str]) -> Source:
    """The :class:`Source` of a table file, a Zarr store, a folder or a glob of them."""
    path, files = table_paths(data)
    if len(files) == 1 and str(files[0]) == path:
        return _one(files[0])
    return MultiSource(path, [_one(f) for f in files])


@dataclass
class Opened:
    """A source with its scan: what :func:`opened` keeps per file state and columns."""

    source: Source
    result: ScanResult
    key: tuple[Any, ...] = field(default=())


_OPENED: dict[tuple[Any, ...], Opened] = {}


def opened(data: str | os.PathLike[str], columns: Sequence[str] | None) -> Opened:
    """Open, select and scan a table source, once per file state (size, modification and
    change time) and columns."""
    import copy

    source = open_source(data)
    if columns is not None:
        source.select(list(columns))
    check = getattr(source, "check_types", None)
    if check is not None:
        check()
    read = _read_for_checks(source)
    # the change times too: a file rewritten with its old size and modification time differs
    changed = tuple(os.stat(f[0]).st_ctime_ns for f in source.files())
    key = (source.kind, source.path, tuple(source.files()), changed, tuple(source.columns), read is None)
    hit = _OPENED.get(key)
    if hit is not None:
        return replace(hit, source=copy.deepcopy(hit.source))
    result = scan(source) if read is None else file_scan(source, read)
    if len(_OPENED) > 32:
        _OPENED.pop(next(iter(_OPENED)))
    _OPENED[key] = Opened(copy.deepcopy(source), result, key)
    return Opened(source, result, key)


def _read_for_checks(source: Source) -> list[str] | None:
    """For a Parquet file over ``daskbatch.table.scan-up-to`` bytes of column data: the
    columns the driver still reads to check them (floats, for NaN and inf, and columns
    whose statistics do not count their missing values), the others being checked from
    the row groups' statistics. None: read the table whole (a smaller file, another
    kind, or a column with missing values, whose first row the whole scan names)."""
    from .config import get

    if not isinstance(source, ParquetSource):
        return None
    size, nulls = source.column_stats()
    if size <= get("table.scan-up-to") or any(nulls.values()):
        return None
    return [n for n, c in source.columns.items() if c.dtype.kind in "fc" or nulls[n] is None]


def read_whole(source: Source) -> dict[str, np.ndarray]:
    """Every row of ``source`` (a Product's table of configurations is read whole)."""
    return source.read(0, source.rows) if source.rows else {}
