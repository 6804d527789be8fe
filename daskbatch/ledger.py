"""The block ledger of a daskbatch store: which blocks are committed, and their records.

The **block ledger** (:class:`BlockLedger`, ``Store.ledger``) knows which blocks are
committed and holds one :class:`BlockRecord` per committed block: its samples per
status code, kernel seconds, first errors, and the size and CRC-32 of every chunk
file it wrote. Everything that reads per-block bookkeeping goes through it.

Store format 2 (every new store) keeps a block's record as one small JSON document,
``.daskbatch/blocks/<i.j>.json`` (the block index joined by dots), written to a
temporary file beside it and renamed into place: the rename is the commit, so a
record is either absent (the block is pending) or whole. Format 1 (stores written
before format 2) keeps the same bookkeeping in five Zarr arrays, ``_daskbatch/done``
(the commit marker), ``counts``, ``errors``, ``seconds`` and ``checksums``, one chunk
per block; it is still read and resumed, and a resumed format-1 store stays format 1.
The format is the ``format`` of the provenance (:func:`store_format`); a store of a
format this code does not know (a newer daskbatch wrote it) is refused by every
reader and writer.

A block is committed only after its data and status are on disk; a block without a
record is pending, whatever else of it is on disk. A record (or format-1 marker)
that cannot be read, or a chunk file behind it that is missing or has another size
than the one recorded, makes its block pending again; :meth:`BlockLedger.verify`
also compares every checksum.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .chunkwrite import write_chunk
from .errors import StoreError
from .kernel import STATUS

__all__ = [
    "BLOCKS",
    "HIDDEN",
    "INTERNAL",
    "Block",
    "BlockLedger",
    "BlockProblem",
    "BlockRecord",
    "store_format",
]

INTERNAL = "_daskbatch"  # format 1: the Zarr group of the per-block bookkeeping arrays
HIDDEN = ".daskbatch"  # records, lock and timeouts: plain files, invisible to Zarr and xarray
BLOCKS = "blocks"  # format 2: HIDDEN/BLOCKS/<i.j>.json, one record per committed block
_WRITE_EMPTY = {"write_empty_chunks": True}
_FORMAT = 2  # the newest store format this code reads and writes
_FORMATS = (1, 2)  # every store format this code reads and writes


@dataclass(frozen=True)
class BlockProblem:
    """A committed block that cannot be trusted; resume recomputes it."""

    block: tuple[int, ...]
    problem: str

    def __str__(self) -> str:
        return f"block {list(self.block)}: {self.problem}"


def _checksum(path: Path) -> tuple[int, int]:
    """Size and CRC-32 of a file, read in pieces (a chunk file is never held whole)."""
    size, crc = 0, 0
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            size += len(piece)
            crc = zlib.crc32(piece, crc)
    return size, crc


_Write = tuple[zarr.Array, Any, Any]  # an array, a selection, the values written there


async def _gather_writes(*rounds: Sequence[_Write]) -> None:
    """Each round's writes concurrently, a round only once the one before has returned."""
    import asyncio

    for writes in rounds:
        # every write returns before the first error is raised: none is left to land later
        done = await asyncio.gather(
            *(arr.async_array.setitem(sel, value) for arr, sel, value in writes), return_exceptions=True
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome


def settle_zarr_io(timeout: float = 10.0) -> None:
    """Wait (up to ``timeout`` seconds) until the tasks on zarr's I/O loop have ended.

    A zarr call that fails part way (one of its concurrent metadata writes hits a full
    disk) raises its first error while the others are still writing: a folder removed
    at that moment could be written into again, and the late write's error was printed
    at exit as "Future exception was never retrieved". Call this before removing
    what such a call wrote.
    """
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - a zarr without its sync helper: nothing runs aside
        return
    import asyncio

    async def _others() -> None:
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    sync(_others())


def _write_all(
    writes: Sequence[_Write], then: Sequence[_Write] = (), sums: dict[str, tuple[int, int]] | None = None
) -> None:
    """Write several regions, then (once all of those have returned) the regions
    ``then``. All have returned on exit.

    A region that is one whole chunk is written in this thread
    (:func:`daskbatch.chunkwrite.write_chunk`, which notes the file's size and CRC-32
    in ``sums``); the others concurrently on zarr's I/O loop, in one trip a round."""
    for ws in (writes, then):
        rest = [w for w in ws if not write_chunk(*w, sums=sums)]
        if not rest:
            continue
        try:
            from zarr.core.sync import sync
        except ImportError:  # pragma: no cover - a zarr without its sync helper: one at a time
            for arr, sel, value in rest:
                arr[sel] = value
            continue
        sync(_gather_writes(rest))


# ------------------------------------------------------------------ store format


def store_format(info: Mapping[str, Any], path: str | os.PathLike[str] = "") -> int:
    """The store format of a store's provenance ``info``.

    Raises :class:`StoreError` for a format this code does not read: a newer one
    (the message names it, the formats this daskbatch reads, and says to upgrade),
    or a value that is no format at all.
    """
    from ._version import __version__

    fmt = info.get("format")
    where = f"store {str(path)!r}" if str(path) else "the store"
    known = f"store formats {_FORMATS[0]} to {_FORMAT}"
    is_int = isinstance(fmt, int) and not isinstance(fmt, bool)
    if is_int and fmt in _FORMATS:
        return int(fmt)
    if is_int and fmt > _FORMAT:
        raise StoreError(
            f"{where} is in store format {fmt}, which is newer than this daskbatch ({__version__}) "
            f"knows: it reads {known}. Upgrade daskbatch (pip install --upgrade daskbatch) to read "
            "or resume this store"
        )
    raise StoreError(
        f"{where} has an unknown store format {fmt!r}; this daskbatch ({__version__}) reads {known}. "
        "If a newer daskbatch wrote it, upgrade daskbatch (pip install --upgrade daskbatch); "
        "otherwise its metadata is damaged"
    )


# ------------------------------------------------------------------ block records


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class BlockRecord:
    """The bookkeeping of one committed block.

    ``counts`` holds the block's samples per status code (indexed by the codes of
    :data:`~daskbatch.kernel.STATUS`), ``seconds`` the kernel time, ``errors`` the
    first errors (JSON-able dicts, as the kernel reported them), ``n_errors`` how
    many samples failed in all, ``checksums`` the size and CRC-32 of every chunk
    file the block wrote, by path relative to the store, and ``failures`` every
    sample that is not ok with its error type and message (the JSON form of a
    :class:`~daskbatch.records.FailureLog`; None in records written before
    daskbatch kept them, whose ``errors`` are all there is), and ``reductions`` the
    block's partial reduction states (see :mod:`daskbatch.reductions`; None when the
    run reduces nothing), and ``inputs`` the digest of the rows the block read from a
    table's file: ``{"rows": [first, stop], "sha256": {column: 32 hex digits}}``
    (None for other spaces), which a rerun on a changed file compares.
    """

    counts: tuple[int, ...]
    seconds: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    n_errors: int = 0
    checksums: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    failures: Mapping[str, Any] | None = None
    reductions: Mapping[str, Any] | None = None
    inputs: Mapping[str, Any] | None = None

    @classmethod
    def of(
        cls,
        status: np.ndarray,
        seconds: float,
        errors: list[dict[str, Any]],
        n_errors: int,
        checksums: Mapping[str, tuple[int, int]] | None = None,
        *,
        failures: Any = None,
        reductions: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> BlockRecord:
        """The record of a block whose samples have the status codes ``status``
        (``failures``: its :class:`~daskbatch.records.FailureLog`, or None)."""
        counts = np.bincount(np.asarray(status).ravel(), minlength=len(STATUS))
        return cls(
            counts=tuple(int(c) for c in counts),
            seconds=float(seconds),
            errors=list(errors) if n_errors else [],
            n_errors=int(n_errors),
            checksums=dict(checksums or {}),
            failures=failures.to_doc() if failures is not None and n_errors and len(failures) else None,
            reductions=reductions,
            inputs=inputs,
        )

    def counts_array(self) -> np.ndarray:
        """``counts`` as an int64 array."""
        return np.asarray(self.counts, dtype=np.int64)

    def errors_doc(self) -> dict[str, Any] | None:
        """``{"errors": [...], "n_errors": N}`` when samples failed, else None (with
        ``"failures"`` when the record keeps them)."""
        if not self.n_errors:
            return None
        doc: dict[str, Any] = {"errors": list(self.errors), "n_errors": self.n_errors}
        if self.failures is not None:
            doc["failures"] = self.failures
        return doc

    def to_doc(self, block: tuple[int, ...], store_id: str) -> dict[str, Any]:
        """The JSON document of this record in a format-2 store."""
        return {
            "block": [int(i) for i in block],
            "store_id": store_id,
            "counts": list(self.counts),
            "seconds": self.seconds,
            "n_errors": self.n_errors,
            "errors": list(self.errors),
            "checksums": {rel: [int(s), int(c)] for rel, (s, c) in self.checksums.items()},
            **({"failures": self.failures} if self.failures is not None else {}),
            **({"reductions": self.reductions} if self.reductions is not None else {}),
            **({"inputs": self.inputs} if self.inputs is not None else {}),
        }

    @classmethod
    def from_doc(cls, doc: Any, block: tuple[int, ...], store_id: str) -> BlockRecord:
        """Read a format-2 document; ``ValueError`` saying what is wrong with it."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("block") != [int(i) for i in block]:
            raise ValueError(f"it is the record of block {doc.get('block')!r}")
        if store_id and doc.get("store_id") != store_id:
            raise ValueError("it was written for another store (another store_id)")
        counts, seconds, errors = doc.get("counts"), doc.get("seconds"), doc.get("errors")
        n_errors, sums = doc.get("n_errors"), doc.get("checksums")
        if not isinstance(counts, list) or len(counts) != len(STATUS) or not all(map(_is_count, counts)):
            raise ValueError(f"its counts {counts!r} are not {len(STATUS)} counts")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"its seconds {seconds!r} are not a number")
        if not _is_count(n_errors) or not isinstance(errors, list):
            raise ValueError("its errors are not a list and a count")
        if not isinstance(sums, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(map(_is_count, v)) for v in sums.values()
        ):
            raise ValueError("its checksums are not {file: [bytes, CRC-32]}")
        return cls(
            counts=tuple(counts),
            seconds=float(seconds),
            errors=errors,
            n_errors=n_errors,
            checksums={str(rel): (v[0], v[1]) for rel, v in sums.items()},
            failures=doc["failures"] if isinstance(doc.get("failures"), dict) else None,
            reductions=doc["reductions"] if isinstance(doc.get("reductions"), dict) else None,
            inputs=doc["inputs"] if isinstance(doc.get("inputs"), dict) else None,
        )


Block = tuple[int, ...]


def _blocks_of(region: tuple[slice, ...]) -> Iterable[tuple[tuple[int, ...], Block]]:
    """(index within ``region``, block) for every block of a region of the block grid."""
    for idx in np.ndindex(*(s.stop - s.start for s in region)):
        yield idx, tuple(s.start + i for s, i in zip(region, idx, strict=True))


class BlockLedger:
    """Which blocks of a store are committed, and the record of each.

    Get one with ``Store(path).ledger``. Blocks are tuples of block indices (one per
    batch dim). A block is committed once :meth:`commit` has returned, and pending
    before (and after :meth:`forget`); a block whose record cannot be read is pending.
    :meth:`committed` and :meth:`records` read the ledger afresh on each call: a run
    may be committing blocks meanwhile.
    """

    format = 0

    def __init__(self, path: Path, info: Mapping[str, Any]) -> None:
        layout = info["layout"]
        self.path = Path(path)
        self.store_id = str(info.get("store_id", ""))
        self.batch_dims = tuple(layout["batch_dims"])
        self.batch_shape = tuple(int(n) for n in layout["batch_shape"])
        self.block_shape = tuple(int(b) for b in layout["block_shape"])
        self.numblocks = tuple(
            math.ceil(n / b) for n, b in zip(self.batch_shape, self.block_shape, strict=True)
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {str(self.path)!r}, format {self.format}>"

    # ------------------------------------------------------------ per format

    def commit(self, block: Block, record: BlockRecord) -> None:
        """Commit ``block`` with ``record``: call only once its data and status are on disk."""
        raise NotImplementedError

    def forget(self, blocks: Iterable[Block]) -> None:
        """Make blocks pending again (their data stays until it is written anew)."""
        raise NotImplementedError

    def committed(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """One boolean per block, True where it is committed.

        The whole block grid (shape ``numblocks``), or only ``region``, a tuple of
        slices (step 1) over the block grid.
        """
        raise NotImplementedError

    def record(self, block: Block) -> BlockRecord | None:
        """The record of ``block``, or None when it is pending (or its record unreadable)."""
        raise NotImplementedError

    def _scan(self) -> tuple[dict[Block, BlockRecord], list[BlockProblem]]:
        """Every committed block's record, and the blocks whose bookkeeping cannot be read."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    def is_committed(self, block: Block) -> bool:
        """Whether ``block`` is committed."""
        return self.record(block) is not None

    def records(self) -> dict[Block, BlockRecord]:
        """The record of every committed block, by block."""
        return self._scan()[0]

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """``(committed(), counts())`` from one read of the bookkeeping: which blocks
        are committed, and their samples per status code (zeros for the others)."""
        done = np.zeros(self.numblocks, dtype=bool)
        counts = np.zeros((*self.numblocks, len(STATUS)), dtype=np.int64)
        for b, rec in self.records().items():
            done[b] = True
            counts[b] = rec.counts_array()
        return done, counts

    def input_digests(self) -> list[tuple[int, int, dict[str, str] | None]]:
        """``(first row, stop, {column: digest})`` of every committed block along
        ``sample``, in row order: the digest of the rows it read from a table's file
        (None for a block whose record keeps none)."""
        out: list[tuple[int, int, dict[str, str] | None]] = []
        for b, rec in sorted(self.records().items()):
            (s, *_) = self._region(b)
            doc = rec.inputs or {}
            rows, sums = doc.get("rows"), doc.get("sha256")
            if isinstance(rows, list) and len(rows) == 2 and isinstance(sums, dict):
                out.append((int(rows[0]), int(rows[1]), {str(k): str(v) for k, v in sums.items()}))
            else:
                out.append((int(s.start), int(s.stop), None))
        return out

    def counts(self) -> np.ndarray:
        """Samples per status code, per block: shape ``numblocks + (len(STATUS),)``,
        zeros for blocks that are not committed."""
        return self.state()[1]

    def seconds(self) -> np.ndarray:
        """Kernel seconds per block; NaN for blocks that are not committed."""
        out = np.full(self.numblocks, np.nan)
        for b, rec in self.records().items():
            out[b] = rec.seconds
        return out

    def errors(self, blocks: Iterable[Block]) -> list[dict[str, Any]]:
        """``{"errors": [...], "n_errors": N}`` of each of ``blocks`` that is committed
        and had failed samples, in the order given."""
        out = []
        for b in blocks:
            rec = self.record(tuple(b))
            if rec is not None and rec.n_errors:
                out.append(rec.errors_doc())
        return out

    def verify(self, full: bool = True) -> list[BlockProblem]:
        """Check every committed block; return what is wrong, by block.

        Always: records (format 1: markers, checksums) that cannot be read, chunk
        files a record lists that are missing or whose size differs from the one
        recorded. With ``full=True`` also: every chunk's CRC-32 against the recorded
        one, that the block's ``status`` decodes and agrees with its counts, and that
        its sample coordinate holds its sample indices. Reads every chunk once.
        """
        records, problems = self._scan()
        flagged = {p.block for p in problems}
        root = None
        for b, rec in sorted(records.items()):
            if b in flagged:
                continue
            bad = self._check_files(rec, full)
            if bad is None and full:
                if root is None:
                    root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
                bad = self._decode_check(root, b, rec)
            if bad is not None:
                problems.append(BlockProblem(b, bad))
        return sorted(problems, key=lambda p: p.block)

    def _check_files(self, rec: BlockRecord, full: bool) -> str | None:
        if not rec.checksums:
            return "it is committed but records no checksums"
        for rel, (size, crc) in rec.checksums.items():
            f = self.path / rel
            try:
                actual = f.stat().st_size
            except FileNotFoundError:
                return f"chunk file {rel} is missing"
            if actual != size:
                return f"chunk file {rel} has {actual} bytes, {size} were written"
            if full and _checksum(f)[1] != crc:
                return f"chunk file {rel} does not match its checksum (garbage or overwritten)"
        return None

    def _region(self, block: Block) -> tuple[slice, ...]:
        return tuple(
            slice(i * s, min((i + 1) * s, n))
            for i, s, n in zip(block, self.block_shape, self.batch_shape, strict=True)
        )

    def _decode_check(self, root: zarr.Group, block: Block, rec: BlockRecord) -> str | None:
        region = self._region(block)
        try:
            status = root["status"][region]
        except Exception as e:
            return f"its status cannot be decoded ({type(e).__name__}: {e})"
        if not np.array_equal(np.bincount(status.ravel(), minlength=len(STATUS)), rec.counts_array()):
            return "its status array disagrees with its counts"
        for d, s, b in zip(self.batch_dims, region, self.block_shape, strict=True):
            arr = root[d]
            if arr.chunks != (b,) or arr.shape[0] == b:  # a coordinate written at creation
                continue
            try:
                values = arr[s]
            except Exception as e:
                return f"its {d!r} coordinate cannot be decoded ({type(e).__name__})"
            if not np.array_equal(values, np.arange(s.start, s.stop)):
                return f"its {d!r} coordinate holds wrong values"
        return None


class _Format2Ledger(BlockLedger):
    """The ledger of a format-2 store: one JSON record per committed block,
    ``.daskbatch/blocks/<i.j>.json``, written aside and renamed into place."""

    format = 2

    def __init__(self, path: Path, info: Mapping[str, Any]) -> None:
        super().__init__(path, info)
        self.dir = self.path / HIDDEN / BLOCKS

    def _file(self, block: Block) -> Path:
        return self.dir / (".".join(str(int(i)) for i in block) + ".json")

    def _read(self, block: Block) -> BlockRecord:
        """The record of ``block``: FileNotFoundError if it has none, ValueError if it
        cannot be read."""
        data = self._file(block).read_bytes()
        try:
            doc = json.loads(data)
        except ValueError:
            raise ValueError(f"not JSON ({len(data)} bytes: truncated or garbage)") from None
        return BlockRecord.from_doc(doc, block, self.store_id)

    def record(self, block: Block) -> BlockRecord | None:
        try:
            return self._read(tuple(block))
        except (OSError, ValueError):
            return None

    def _listed(self) -> list[Block]:
        """The blocks that have a record file (readable or not)."""
        try:
            names = [e.name for e in os.scandir(self.dir)]
        except FileNotFoundError:
            return []
        blocks = []
        for name in names:
            if not name.endswith(".json"):
                continue  # a temporary file of a commit in progress (or of a killed one)
            try:
                b = tuple(int(i) for i in name[: -len(".json")].split("."))
            except ValueError:
                continue
            inside = len(b) == len(self.numblocks)
            if inside and all(0 <= i < n for i, n in zip(b, self.numblocks, strict=True)):
                blocks.append(b)
        return sorted(blocks)

    def commit(self, block: Block, record: BlockRecord) -> None:
        target = self._file(block)
        data = json.dumps(record.to_doc(block, self.store_id), separators=(",", ":")).encode()
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            try:
                tmp.write_bytes(data)
            except FileNotFoundError:  # the folder went away (a copy without it): make it again
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
            os.replace(tmp, target)  # the commit
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def forget(self, blocks: Iterable[Block]) -> None:
        for b in blocks:
            self._file(tuple(b)).unlink(missing_ok=True)

    def committed(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        if region is None:
            out = np.zeros(self.numblocks, dtype=bool)
            for b in self._listed():
                out[b] = self.record(b) is not None
            return out
        out = np.zeros(tuple(s.stop - s.start for s in region), dtype=bool)
        for idx, b in _blocks_of(region):
            out[idx] = self.record(b) is not None
        return out

    def _scan(self) -> tuple[dict[Block, BlockRecord], list[BlockProblem]]:
        records: dict[Block, BlockRecord] = {}
        problems: list[BlockProblem] = []
        for b in self._listed():
            try:
                records[b] = self._read(b)
            except FileNotFoundError:
                continue  # forgotten meanwhile
            except (OSError, ValueError) as e:
                problems.append(BlockProblem(b, f"its record {self._file(b).name} cannot be read ({e})"))
        return records, problems
