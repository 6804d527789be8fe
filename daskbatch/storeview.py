"""A daskbatch store as a reader opens it: :class:`StoreView`, which
:class:`daskbatch.store.Store` extends with creating the store and writing its blocks.

What a process opened of a store (its arrays, its ledger, its ``status`` array) is
kept per process and store, so that a worker opens each once; :func:`_forget_open`
drops it once a repair has rebuilt the store's metadata. A reader sees ``status``
through the ledger (:class:`_CommittedStatus`): a sample is shown as done only once
its block is committed.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError, StoreNotFoundError
from .ledger import HIDDEN, BlockLedger, _Format2Ledger, store_format
from .ledger_format1 import _Format1Ledger
from .lock import StoreLock, _alive_here
from .raggedstore import decode_dataset
from .repaircheck import change_message, gone_message, interrupted_change, looks_like_store, read_provenance

__all__ = ["StoreView"]

# Arrays opened per process and store, so that a worker opens each array once.
_OPEN: dict[tuple[str, str, tuple[int, ...]], dict[str, zarr.Array]] = {}
_OPEN_LOCK = threading.Lock()


# Zarr warns when a listing of a store's root meets `.daskbatch/`, which is not Zarr. It
# lists the root in its own thread, which a `catch_warnings` of this thread does not
# cover once an interrupt has ended it: this one warning is never shown.
warnings.filterwarnings("ignore", message=r"Object at \.daskbatch is not recognized")
# A store read several blocks per chunk (open_dataset(blocks_per_chunk=)) reads a text grid
# axis, stored as one chunk, in pieces: right, and no reason to warn.
warnings.filterwarnings("ignore", message="The specified chunks separate the stored chunks")


def row_bytes(root: zarr.Group, names: Any, dim: str) -> int:
    """The bytes of one index along batch dim ``dim`` of the widest of arrays ``names`` of
    ``root`` that lie along it first (from their metadata: nothing is read)."""
    along = [root[n] for n in names if tuple(root[n].metadata.dimension_names or ())[:1] == (dim,)]
    return max(1, *((a.dtype.itemsize or 8) * math.prod(a.shape[1:]) for a in along))


def _quiet_consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        # consolidated metadata is not in the v3 spec yet; xarray still reads it first
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


# Ledgers per process, store path, creation and shape: a worker opens each store's once
# (a store that grew, here or in another process, has another shape: its ledger is new).
_LEDGERS: dict[tuple[str, str, tuple[int, ...]], BlockLedger] = {}


def _ledger_for(path: Path, info: Mapping[str, Any]) -> BlockLedger:
    """The ledger of the store at ``path`` whose provenance is ``info``."""
    fmt = store_format(info, path)
    key = (str(path), str(info.get("store_id", "")), _shape_of(info))
    with _OPEN_LOCK:
        ledger = _LEDGERS.get(key)
        if ledger is None or ledger.format != fmt:
            ledger = _LEDGERS[key] = (_Format1Ledger if fmt == 1 else _Format2Ledger)(path, info)
        return ledger


def _shape_of(info: Mapping[str, Any]) -> tuple[int, ...]:
    layout = info.get("layout")
    shape = layout.get("batch_shape") if isinstance(layout, Mapping) else None
    return tuple(int(n) for n in shape) if isinstance(shape, list | tuple) else ()


# The status array a reader opened, per process, store and shape.
_STATUS: dict[tuple[str, str, tuple[int, ...]], zarr.Array] = {}


def _status_array(path: str, store_id: str, shape: tuple[int, ...]) -> zarr.Array:
    key = (path, store_id, tuple(shape))
    with _OPEN_LOCK:
        got = _STATUS.get(key)
        if got is None:
            got = _STATUS[key] = zarr.open_group(path, mode="r", use_consolidated=False)["status"]
        return got


class _CommittedStatus:
    """``status`` as a reader sees it: 0 (pending) wherever the block is not committed.

    A lazily indexed array for ``dask.array.from_array``: each read of a region first
    asks the ledger which blocks it covers are committed (one small file per block in
    format 2, one byte per block in format 1), then reads the region of ``status``,
    and returns the status of the committed blocks and 0 elsewhere. A block is
    committed after everything else of it is on disk, so a sample shown as done has
    its outputs and parameters on disk, final. Holds no data: the memory of a read is
    that of the region.
    """

    def __init__(self, path: str, store_id: str, batch_shape, block_shape) -> None:
        self.path = path
        self.store_id = store_id
        self.shape = tuple(int(n) for n in batch_shape)
        self.block_shape = tuple(int(b) for b in block_shape)
        self.dtype = np.dtype("int8")
        self.ndim = len(self.shape)

    def _ledger(self) -> BlockLedger:
        ledger = _LEDGERS.get((self.path, self.store_id, self.shape))
        return ledger if ledger is not None else StoreView(self.path).ledger

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        region, local = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):  # read the span it covers, then step through it
                covered = range(*k.indices(n))
                if not covered:
                    region.append(slice(0, 0))
                    local.append(slice(None))
                    continue
                lo = min(covered[0], covered[-1])
                region.append(slice(lo, max(covered[0], covered[-1]) + 1))
                local.append(slice(covered[0] - lo, None, covered.step))
            else:
                i = int(k) + (n if int(k) < 0 else 0)
                region.append(slice(i, i + 1))
                local.append(0)
        committed = self._committed(region)  # the ledger first, then the data
        status = _status_array(self.path, self.store_id, self.shape)
        values = np.where(committed, status[tuple(region)], 0).astype(self.dtype)
        return values[tuple(local)]

    def _committed(self, region: list[slice]) -> np.ndarray:
        """True for every sample of ``region`` whose block is committed."""
        blocks = tuple(
            slice(r.start // b, max(r.start // b, -(-r.stop // b)))
            for r, b in zip(region, self.block_shape, strict=True)
        )
        marks = self._ledger().committed(blocks)
        for axis, (r, s, b) in enumerate(zip(region, blocks, self.block_shape, strict=True)):
            first = r.start - s.start * b
            marks = np.repeat(marks, b, axis=axis)
            marks = marks[(slice(None),) * axis + (slice(first, first + r.stop - r.start),)]
        return marks


def _forget_open(path: Path) -> None:
    """Drop what this process opened of the store before its metadata was rebuilt."""
    with _OPEN_LOCK:
        for cache in (_OPEN, _LEDGERS, _STATUS):
            for key in [k for k in cache if k[0] == str(path)]:
                del cache[key]


#: the longest name (a path's part) Linux filesystems accept, in bytes
_NAME_MAX = 255


class StoreView:
    """A daskbatch store on the local filesystem, as a reader sees it: its provenance,
    its ledger, and its data as a :class:`xarray.Dataset` of the committed blocks.

    Parameters
    ----------
    path
        A directory path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path).strip():
            raise StoreError(f"store={path!r} must be a directory path such as 'results.zarr'")
        if "\0" in str(path):
            raise StoreError(f"store={str(path)!r} contains a null byte; give a path without one")
        try:
            self.path = Path(path).expanduser().absolute()
        except RuntimeError:  # ~user with no such user (or no home directory)
            raise StoreError(
                f"store={str(path)!r}: {str(path).split('/')[0]!r} names no user with a home directory; "
                "give the path in full"
            ) from None
        longest = max((len(part.encode()) for part in self.path.parts), default=0)
        if longest > _NAME_MAX:
            raise StoreError(
                f"store={str(path)!r}: a name in the path has {longest} bytes, more than the "
                f"{_NAME_MAX} a file name may have; give a shorter name"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # ----------------------------------------------------------------- checks

    def is_daskbatch(self) -> bool:
        return self.info() is not None

    def is_foreign(self) -> bool:
        """True if the path holds files that are not a daskbatch store."""
        if not self.path.is_dir() or self.is_daskbatch():
            return False
        return any(child.name != HIDDEN for child in self.path.iterdir())

    def foreign_entries(self) -> list[str]:
        """The entries at the top of a daskbatch store that daskbatch did not write (a
        user's notes or figures put inside it), which replacing the store would delete.
        daskbatch writes ``zarr.json``, ``.daskbatch`` (``_daskbatch`` in format 1) and
        Zarr arrays: folders with a ``zarr.json`` or a ``c`` folder of chunks (a damaged
        array's metadata does not make it foreign)."""
        if not self.path.is_dir():
            return []
        found = []
        for child in self.path.iterdir():
            if child.name in ("zarr.json", HIDDEN, "_daskbatch"):
                continue
            if child.name.startswith("zarr.") and child.name.endswith((".partial", ".tmp")):
                continue  # a write of the root metadata stopped part way (zarr's or a repair's)
            is_array = child.is_dir() and not child.is_symlink()
            if is_array and ((child / "zarr.json").is_file() or (child / "c").is_dir()):
                continue
            found.append(child.name)
        return sorted(found)

    def info(self, *, check_format: bool = True) -> dict[str, Any] | None:
        """The store's provenance (``attrs["daskbatch"]``), or None if it has none.

        The root's provenance, or its copy in ``.daskbatch/provenance.json`` when the
        root's cannot be read, is malformed or contradicted by the rest of the store
        (:func:`daskbatch.repaircheck.read_provenance` decides; ``resume --verify``
        rebuilds the root then). None when neither is usable.

        Raises :class:`StoreError` when the provenance names a store format this code
        does not read (a newer daskbatch wrote the store), unless ``check_format`` is
        False: so every reader and writer refuses such a store before touching it.
        """
        if not self.path.is_dir():
            return None
        change = interrupted_change(self.path)
        if change is not None:  # half grown: neither provenance describes the arrays
            raise StoreError(change_message(self.path, change))
        return read_provenance(self.path, check_format).info

    def require_info(self) -> dict[str, Any]:
        """The store's provenance; StoreError if there is no daskbatch store here, one
        whose provenance is gone, or one of a store format this code does not read."""
        info = self.info()
        if info is None:
            if not self.path.exists():
                raise StoreNotFoundError(f"store {str(self.path)!r} does not exist{self._queued()}")
            gone = read_provenance(self.path).gone if self.path.is_dir() else None
            if gone is not None and looks_like_store(self.path):
                raise StoreError(gone_message(self.path, gone))
            hidden = self.path / HIDDEN
            holder = self.lock().holder() if hidden.is_dir() else None
            if holder is not None and not holder.get("stale") and _alive_here(holder):
                raise StoreError(
                    f"store {str(self.path)!r} is being created by a run (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {holder.get('start')}); try again in a moment"
                )
            if hidden.is_dir() and all(p.name == HIDDEN for p in self.path.iterdir()):
                raise StoreError(
                    f"store {str(self.path)!r} holds no results: the run that was to create it stopped "
                    "before it wrote any (killed while it probed the kernel?). Run the same command "
                    "again (daskbatch run SPEC, or the same daskbatch.run call): it starts the store"
                )
            raise StoreError(f"{str(self.path)!r} is not a daskbatch store (no daskbatch metadata)")
        return info

    def _queued(self) -> str:
        """`` yet: ...`` when ``daskbatch submit`` queued a job for this store (its
        script is beside it), else nothing."""
        logs = self.path.with_name(self.path.name + ".logs")
        for system, command in (("slurm", "squeue -u $USER"), ("pbs", "qstat -u $USER")):
            if (logs / f"daskbatch.{system}").is_file():
                return (
                    f" yet: the job daskbatch submit queued makes it when it starts ({command} "
                    f"shows it; its log goes to {logs})"
                )
        return ""

    @property
    def format(self) -> int:
        """The store format (1 or 2) of this store."""
        return store_format(self.require_info(), self.path)

    @property
    def ledger(self) -> BlockLedger:
        """The store's :class:`BlockLedger`: which blocks are committed, and their records."""
        return _ledger_for(self.path, self.require_info())

    # ----------------------------------------------------------------- reading

    # The block bookkeeping as the engine reads it today; each is one call of the ledger.

    def done_mask(self) -> np.ndarray:
        """One boolean per block, True where it is committed: ``ledger.committed()``."""
        return self.ledger.committed()

    def is_done(self, block: tuple[int, ...]) -> bool:
        """Whether one block is committed: ``ledger.is_committed(block)``."""
        return self.ledger.is_committed(tuple(block))

    def block_counts(self) -> np.ndarray:
        """Samples per status code, per block (zeros for pending blocks): ``ledger.counts()``."""
        return self.ledger.counts()

    def block_errors(self, blocks: list[tuple[int, ...]]) -> list[dict[str, Any]]:
        """The errors of those ``blocks`` that failed somewhere: ``ledger.errors(blocks)``."""
        return self.ledger.errors(blocks)

    def block_seconds(self) -> np.ndarray:
        """Kernel seconds per block (NaN for pending blocks): ``ledger.seconds()``."""
        return self.ledger.seconds()

    def lock(self) -> StoreLock:
        """The store's writer lock (see :class:`~daskbatch.lock.StoreLock`): who holds it,
        or (for a :class:`~daskbatch.store.Store`) taking it."""
        return StoreLock(self.path / HIDDEN / "lock")

    def open_dataset(self, blocks_per_chunk: int = 1):
        """Open as a lazy, dask-backed :class:`xarray.Dataset` of the committed blocks (a
        dask chunk per block; with ``blocks_per_chunk``, that many blocks along the first
        batch dim per chunk: fewer tasks to reduce a store of many small blocks).

        The variables are the store's arrays, but ``status`` reads 0 (pending) for
        every sample of a block that is not committed, whatever is on disk: a sample
        shown as done belongs to a committed block, whose outputs and parameters are
        final. Each chunk of ``status`` asks the ledger about its blocks first, then
        reads the status values (the ledger is not read when the store is opened).
        Outputs and parameters are not masked: select them with ``status``.
        """
        import uuid

        import dask.array as da
        import xarray as xr

        info = self.require_info()
        _ledger_for(self.path, info)  # found once, before any chunk of status is read
        layout = info["layout"]
        chunks: Any = {}  # the zarr chunks (one per block), or more blocks per dask chunk
        if blocks_per_chunk > 1:
            first, size = layout["batch_dims"][0], int(layout["batch_shape"][0])
            chunks = {first: min(size, int(layout["block_shape"][0]) * int(blocks_per_chunk))}
        try:
            try:
                ds = xr.open_zarr(str(self.path), consolidated=True, chunks=chunks)
            except ValueError:  # a run is rewriting the root metadata now: read every array's own
                with warnings.catch_warnings():
                    # the listing meets .daskbatch/ (plain files), which is not Zarr, as intended
                    warnings.filterwarnings("ignore", message=".*not recognized as a component")
                    ds = xr.open_zarr(str(self.path), consolidated=False, chunks=chunks)
        except Exception as e:
            raise StoreError(
                f"store {str(self.path)!r}: its metadata cannot be read ({type(e).__name__}: {e}); "
                f"daskbatch status {str(self.path)!r} --verify names the damaged file, and "
                f"daskbatch resume {str(self.path)!r} --verify repairs it"
            ) from None
        source = _CommittedStatus(
            str(self.path), str(info.get("store_id", "")), layout["batch_shape"], layout["block_shape"]
        )
        status = da.from_array(
            source,
            chunks=ds["status"].data.chunks,
            name=f"daskbatch-committed-status-{uuid.uuid4().hex}",
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * source.ndim, dtype=source.dtype),
        )
        ds["status"] = ds["status"].copy(data=status)
        ds = decode_dataset(ds)  # text (stored as UTF-8 bytes) as strings
        if info.get("reduce") is not None:  # run(..., reduce=...): merged from the committed blocks
            from .reduced import reductions_dataset

            try:
                reduced = reductions_dataset(self, info)
            except Exception as e:  # a user's Aggregation not importable here: the outputs still open
                warnings.warn(
                    f"store {str(self.path)!r}: its reductions cannot be read here ({e}); the "
                    "Dataset holds the stored outputs without them",
                    stacklevel=2,
                )
                return ds
            ds = ds.assign({k: v for k, v in reduced.data_vars.items()})
            ds = ds.assign_coords({k: v for k, v in reduced.coords.items() if k not in ds.coords})
        return ds
