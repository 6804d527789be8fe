"""A daskbatch store on disk: :class:`Store` creates it, writes and reads its blocks.

::

    store.zarr/                      Zarr v3 group; attrs["daskbatch"] = provenance
      <batch dim coords>             sample (written by blocks) or grid axes (at creation)
      <output core dim coords>       e.g. ab2, time (at creation)
      <parameters>                   (batch dims..., core dims...)
      <outputs>                      (batch dims..., output dims...)
      status                         (batch dims...) int8, codes in STATUS
      .daskbatch/blocks/<i.j>.json   not Zarr: the record of committed block (i, j) (format 2)
      .daskbatch/lock                not Zarr: who is writing the store now (host, pid, start)
      .daskbatch/timeouts/           not Zarr: samples a timeout stopped, per block

The arrays and their template are in :mod:`daskbatch.layout`, the block ledger (which
blocks are committed, their records, the store formats) in :mod:`daskbatch.ledger`
(format 2) and :mod:`daskbatch.ledger_format1`, the writer lock in
:mod:`daskbatch.lock`, and what a reader of the store opens (its provenance, its
ledger, the Dataset of its committed blocks) in :mod:`daskbatch.storeview`, whose
:class:`~daskbatch.storeview.StoreView` :class:`Store` extends; their public names
are importable from here too.

Every array is chunked exactly like the blocks along the batch dims, so no two
tasks ever write the same chunk, and every chunk of a block is written even when it
holds only fill values. A block is written in order: its sample coordinate,
parameters and outputs; then its status; then its record (which holds the checksums
of the chunk files written before), committed to the ledger. A block without a
record is pending, whatever else of it is on disk, and is simply written again. So
``status`` read directly never shows a sample as done before its outputs are on
disk, and ``Store.open_dataset`` shows it as done only once its block is committed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .clusterbase import _signals_deferred
from .errors import DaskbatchError, StoreError, StoreExistsError, StoreWriteError
from .fstools import build_aside, first_link, link_message, put_in_place, remove_stale, test_pause
from .layout import Layout, write_template
from .ledger import (
    _WRITE_EMPTY,
    BLOCKS,
    HIDDEN,
    INTERNAL,
    BlockLedger,
    BlockProblem,
    BlockRecord,
    _checksum,
    _write_all,
    settle_zarr_io,
    store_format,
)
from .ledger_format1 import _create_format1
from .lock import StoreLock
from .ragged import RaggedBlock, encode_text, length_name
from .raggedstore import grow_width, metadata_lock, stale_chunks
from .repair import check, save_provenance
from .storeview import _LEDGERS, _OPEN, _OPEN_LOCK, StoreView, _quiet_consolidate

# Names defined here before they moved to the modules above; still importable from here.
from .errors import StoreLockedError as StoreLockedError  # isort: skip
from .kernel import STATUS as STATUS  # isort: skip
from .kernel import Output as Output  # isort: skip
from .layout import _compressors as _compressors  # isort: skip
from .ledger import _FORMAT as _FORMAT  # isort: skip
from .ledger import _FORMATS as _FORMATS  # isort: skip
from .ledger import Block as Block  # isort: skip
from .ledger import _blocks_of as _blocks_of  # isort: skip
from .ledger import _gather_writes as _gather_writes  # isort: skip
from .ledger import _is_count as _is_count  # isort: skip
from .ledger import _Format2Ledger as _Format2Ledger  # isort: skip
from .ledger_format1 import _INTERNAL_ARRAYS as _INTERNAL_ARRAYS  # isort: skip
from .ledger_format1 import _read_blocks as _read_blocks  # isort: skip
from .ledger_format1 import _read_region as _read_region  # isort: skip
from .ledger_format1 import _Format1Ledger as _Format1Ledger  # isort: skip
from .lock import _LOCK_SIZE as _LOCK_SIZE  # isort: skip
from .lock import _alive_here as _alive_here  # isort: skip
from .lock import _try_flock as _try_flock  # isort: skip
from .lock import _unlock as _unlock  # isort: skip
from .spacebase import Param as Param  # isort: skip
from .storeview import _STATUS as _STATUS  # isort: skip
from .storeview import _CommittedStatus as _CommittedStatus  # isort: skip
from .storeview import _ledger_for as _ledger_for  # isort: skip
from .storeview import _status_array as _status_array  # isort: skip
from .storeview import _NAME_MAX as _NAME_MAX  # isort: skip

__all__ = [
    "INTERNAL",
    "BlockLedger",
    "BlockProblem",
    "BlockRecord",
    "Layout",
    "Store",
    "StoreLock",
    "store_format",
]

_ATTR = "daskbatch"
_TEXT = Output(dtype="str")  # how a text parameter is stored: as a text output is
_NEW_STORE_FORMAT = 2  # the format of the stores ``Store.create`` makes (1 only to make old stores)


def _write_new(path: Path, layout: Layout, info: Mapping[str, Any]) -> None:
    """Write a new store's template into the empty folder ``path``.

    :meth:`Store.create` calls this on the temporary folder it then renames into
    place: everything a new store holds, ``.daskbatch/`` included, is written here.
    """
    try:
        root = zarr.open_group(str(path), mode="a", zarr_format=3)
        write_template(root, layout)
        fmt = _NEW_STORE_FORMAT
        if fmt == 1:
            _create_format1(root, layout.numblocks)
        else:
            (path / HIDDEN / BLOCKS).mkdir(parents=True, exist_ok=True)
        root.attrs[_ATTR] = {**info, "format": fmt}
        _quiet_consolidate(path)
        save_provenance(path, template=True)  # .daskbatch/: what a repair rebuilds from
    except BaseException:
        settle_zarr_io()  # zarr's writes still in flight end before the folder is removed
        raise


def _padded(layout: Layout, arrays: Mapping[str, zarr.Array]) -> set[str]:
    """The arrays of ``layout`` a block writes padded, with their lengths: those of
    :attr:`Layout.padded` that the store has so (a store made before text was stored
    as UTF-8 bytes keeps its text parameters as Zarr strings)."""
    return {n for n in layout.padded if length_name(n) in arrays}


class Store(StoreView):
    """A daskbatch Zarr store on the local filesystem.

    Parameters
    ----------
    path
        A directory path; it is created if missing (its parent must exist).
    """

    # ----------------------------------------------------------------- checks

    def check_writable(self) -> None:
        """Raise :class:`StoreError` if a store cannot be created or written here."""
        p = self.path
        try:
            exists = p.exists()
        except OSError as e:  # a path the system refuses to look up
            raise StoreError(f"store={str(p)!r}: {e.strerror}; choose another path") from None
        if exists and not p.is_dir():
            raise StoreError(f"store={str(p)!r} is a file; give a directory path such as 'results.zarr'")
        if not exists and os.path.islink(p):
            target = os.path.join(os.path.dirname(p), os.readlink(p))
            raise StoreError(
                f"store={str(p)!r} is a symbolic link to {os.path.normpath(target)!r}, which does not exist; "
                "make that folder (mkdir -p), or give another path"
            )
        parent = p.parent
        if not parent.is_dir():
            raise StoreError(
                f"store={str(p)!r}: the parent directory {str(parent)!r} does not exist; create it "
                "first or choose another path"
            )
        target = p if p.exists() else parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise StoreError(f"store={str(p)!r}: {str(target)!r} is not writable; choose another path")

    # ----------------------------------------------------------------- creation

    def create(self, layout: Layout, info: Mapping[str, Any], *, overwrite: bool = False) -> None:
        """Write the template: every array with its metadata, no data but coordinates.

        The store is made in the current store format (2): ``info["format"]`` is set to
        it, whatever ``info`` says. A store of a format this code does not read is
        never overwritten.

        Atomic: the template is written whole into ``.<name>.creating-<pid>`` next to
        the store (:func:`_write_new`), then swapped with the store path in one rename,
        carrying over the writer lock this run holds; the old contents (only the lock, or
        the store an overwrite replaces) are removed after. A creation stopped at any
        moment leaves the path as it was or the complete new store, never part of one.
        The store path may be a link the user made to a folder: the folder it points to
        is replaced, the link stays. Its folder must be writable.
        """
        if self.path.exists():
            self._clear(overwrite)
        real = self.path.resolve()
        if not os.access(real.parent, os.W_OK | os.X_OK):
            raise StoreError(
                f"store={str(self.path)!r}: its folder {str(real.parent)!r} is not writable; a new "
                "store is made next to its path and renamed into place. Choose a writable folder"
            )
        remove_stale(real)
        try:
            with build_aside(real) as tmp:
                _write_new(tmp, layout, info)
                test_pause("create-written")
                put_in_place(tmp, real, keep=f"{HIDDEN}/lock", pause=lambda: test_pause("create-swapped"))
        except OSError as e:
            if isinstance(e, DaskbatchError):
                raise
            raise StoreWriteError.of(
                e,
                f"creating store {str(self.path)!r}",
                "Nothing of it was kept; make room (or fix the cause) and run the same command again",
            ) from e

    def _clear(self, overwrite: bool) -> None:
        """Check that an existing path may be replaced by a new store.

        Raises :class:`StoreExistsError` for a folder that is not a daskbatch store, and
        for a store when ``overwrite`` is False; :class:`StoreError` when a symbolic link
        is below the path (daskbatch never makes one). Deletes nothing: :meth:`create`
        swaps the new store in and then removes the old contents, never through a link
        and never outside the path.
        """
        if not self.path.is_dir():
            raise StoreExistsError(
                f"store={str(self.path)!r} is a file; give a directory path such as 'results.zarr'"
            )
        if self.is_foreign():
            raise StoreExistsError(
                f"store={str(self.path)!r} is not empty and was not written by daskbatch; "
                "daskbatch never deletes data it did not write. Choose a new path"
            )
        if self.is_daskbatch() and not overwrite:
            raise StoreExistsError(f"store {str(self.path)!r} exists; pass overwrite=True")
        self.check_keeps_foreign()
        self.check_links()

    def check_keeps_foreign(self) -> None:
        """:class:`StoreExistsError` naming the files daskbatch did not write inside this
        store (:meth:`foreign_entries`): replacing the store (overwrite) would delete them."""
        names = self.foreign_entries() if self.is_daskbatch() else []
        if names:
            shown = ", ".join(repr(n) for n in names[:5]) + (
                f" and {len(names) - 5} more" if len(names) > 5 else ""
            )
            raise StoreExistsError(
                f"store {str(self.path)!r} holds files daskbatch did not write ({shown}); overwrite "
                "would delete them with the store (daskbatch never deletes data it did not write). Move "
                "them out of the store, then run again"
            )

    def check_links(self) -> None:
        """Before a run writes: refuse a symbolic link below the store, remove leftovers.

        daskbatch makes no link in a store, so one there was planted: writing or
        deleting through it would reach outside the store. :class:`StoreError` names
        it. The store path itself may be a link (to a folder), and is followed. Also
        :meth:`remove_leftovers`. Reads every folder of the store once.
        """
        if not self.path.is_dir():
            return
        link = first_link(self.path)
        if link is not None:
            raise StoreError(link_message(self.path, link))
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the temporaries that stopped creations of this store left next to it
        (``.<name>.creating-<pid>``) whose process has ended."""
        with contextlib.suppress(OSError):
            remove_stale(self.path.resolve())

    def update_info(self, info: Mapping[str, Any]) -> None:
        """Replace the provenance; only the driver calls this, never a task.

        The store format is kept as it is on disk (the layout of the bookkeeping
        decides it, not ``info``); a store of a format this code does not read is
        refused.
        """
        current = self.info(check_format=False)
        fmt = store_format(current if current is not None else info, self.path)
        # a Ctrl-C (or SIGTERM) waits the few milliseconds of this write: one that ended
        # it part way left Zarr consolidating in its own thread, out of the warning filter
        # below (its "consolidated metadata is not in the spec" warning was printed), and
        # the repair copy behind the root
        try:
            with _signals_deferred():
                # under the metadata lock: a block writer widening a padded array meanwhile
                # (daskbatch.raggedstore.grow_width) is neither undone nor missed by the consolidation
                with metadata_lock(self.path):
                    root = zarr.open_group(str(self.path), mode="r+")
                    root.attrs[_ATTR] = {**info, "format": fmt}
                    _quiet_consolidate(self.path)
                save_provenance(self.path)  # the copy of the provenance a repair rebuilds zarr.json from
        except OSError as e:
            raise StoreWriteError.of(
                e,
                f"writing the provenance of store {str(self.path)!r}",
                "Every committed block is kept; make room (or fix the cause) and run the same command again",
            ) from e

    # ----------------------------------------------------------------- blocks

    def _arrays(self, layout: Layout) -> dict[str, zarr.Array]:
        """The arrays a block writes (sample coordinate, parameters, outputs, status)."""
        # the shape too: a store that grew (rows added) is opened anew, also by a worker
        # of a cluster that outlives runs
        key = (str(self.path), layout.store_id, tuple(layout.batch_shape))
        with _OPEN_LOCK:
            cached = _OPEN.get(key)
            if cached is None:
                root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
                names = [p.name for p in layout.params.values() if not p.is_axis]
                names += [*list(layout.outputs), "status"]
                names += [d for d in layout.batch_dims if d not in layout.batch_coords]
                # the lengths of padded arrays (none in a store that keeps text as Zarr strings)
                names += [length_name(n) for n in layout.padded if length_name(n) in root]
                cached = {n: root[n].with_config(_WRITE_EMPTY) for n in names}
                _OPEN[key] = cached
            return cached

    def _writer_ledger(self, layout: Layout) -> BlockLedger:
        """The ledger a block writer commits to (found once per process and store)."""
        ledger = _LEDGERS.get((str(self.path), layout.store_id, tuple(layout.batch_shape)))
        return ledger if ledger is not None else self.ledger

    def write_block(
        self,
        layout: Layout,
        block: tuple[int, ...],
        params: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        status: np.ndarray,
        errors: list[dict[str, Any]],
        n_errors: int,
        seconds: float,
        failures: Any = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Write one block, in three steps, and commit it. Returns its counts per status code.

        ``failures`` (a :class:`~daskbatch.records.FailureLog`) is every sample of the
        block that is not ok, kept in its record beside the first ``errors``. With
        ``layout.reductions``, the block's partial reduction states (computed from all
        of ``outputs``, those declared ``Output(store=False)`` included) go into its
        record too, and so does ``inputs`` (the digest of the rows it read from a
        table's file; see :class:`~daskbatch.ledger.BlockRecord`).

        1. the sample coordinate, the parameters and the outputs (concurrently);
        2. once those have returned: ``status``, so that a reader of ``status`` alone
           (``xarray.open_zarr``) never sees a sample as done before its outputs are
           on disk;
        3. the block's record (counts, seconds, errors, and the size and CRC-32 of
           every chunk file written in steps 1 and 2), committed to the ledger: in
           format 2 one file renamed into place, in format 1 the bookkeeping arrays
           and last the marker ``done``.
        """
        arrays = self._arrays(layout)
        ledger = self._writer_ledger(layout)
        region = layout.block_slices(block)
        data: list[tuple[zarr.Array, Any, Any]] = []
        for d, s in zip(layout.batch_dims, region, strict=True):
            if d not in layout.batch_coords:
                data.append((arrays[d], s, np.arange(s.start, s.stop, dtype=np.int64)))
        padded = _padded(layout, arrays)
        columns: dict[str, int] = {}  # padded arrays: the columns of chunks the block writes
        try:
            stored = {k: v for k, v in outputs.items() if k in layout.outputs}  # not the only-reduced
            for name, values in (*params.items(), *stored.items()):
                if name not in padded:
                    data.append((arrays[name], region, values))
                    continue
                if not isinstance(values, RaggedBlock):  # text parameters: their UTF-8 bytes
                    values = RaggedBlock.from_padded(_TEXT, *encode_text(values))
                data += self._padded_writes(arrays, name, block, region, values, columns)
            # status only after the data it describes has returned (in the same trip)
            written: dict[str, tuple[int, int]] = {}  # size and CRC-32 of the files written here
            _write_all(data, then=[(arrays["status"], region, status)], sums=written)
            files = self._chunk_files(layout, block, arrays, columns)
            sums = {}
            for rel in files:
                known = written.get(os.path.normpath(self.path / rel))
                sums[rel] = known if known is not None else _checksum(self.path / rel)
            # the block's partial reductions ride its commit: a resumed run merges each once
            partial = _partial(layout, block, outputs, status, region)
            record = BlockRecord.of(
                status, seconds, errors, n_errors, sums, failures=failures, reductions=partial, inputs=inputs
            )
            # the commit, strictly after every other write of the block has returned
            ledger.commit(tuple(block), record)
        except OSError as e:
            raise StoreWriteError.of(
                e,
                f"writing block {list(block)} to {str(self.path)!r}",
                "Blocks committed before are kept and this one is not counted as done; make room "
                "(or fix the cause) and run the same command again to finish",
            ) from e
        return record.counts_array()

    def _padded_writes(
        self,
        arrays: dict[str, zarr.Array],
        name: str,
        block: tuple[int, ...],
        region: tuple[slice, ...],
        values: RaggedBlock,
        columns: dict[str, int],
    ) -> list[tuple[zarr.Array, Any, Any]]:
        """The writes of a padded array's block (and of its lengths): whole chunks up to
        the block's longest value, the array widened first if it is too narrow (see
        :func:`daskbatch.raggedstore.grow_width`). Chunks of the block's row past them, left
        by an earlier attempt with longer values, are removed. Notes in ``columns`` the
        columns of chunks written."""
        need = values.width
        arr = arrays[name]
        if arr.shape[-1] < need:
            grow_width(self.path, name, need)
            arr = zarr.open_array(str(self.path), path=name, mode="r+").with_config(_WRITE_EMPTY)
            with _OPEN_LOCK:
                arrays[name] = arr  # the cached array: later blocks of this process see the width
        chunk = arr.chunks[-1]
        ncols = -(-need // chunk)
        written = min(ncols * chunk, arr.shape[-1])  # whole chunks, none of them read first
        first = arr.metadata.encode_chunk_key((*block, *(0,) * (arr.ndim - len(block))))
        for stale in stale_chunks(self.path, name, first, ncols):
            stale.unlink(missing_ok=True)
        columns[name] = ncols
        core = (slice(None),) * (arr.ndim - len(region) - 1)
        writes = [(arrays[length_name(name)], region, values.lengths)]
        if written:
            writes.append((arr, (*region, *core, slice(0, written)), values.padded(written)))
        return writes

    def _chunk_files(
        self, layout: Layout, block: tuple[int, ...], arrays=None, columns: Mapping[str, int] | None = None
    ) -> list[str]:
        """Paths (relative to the store) of the data and status chunk files block ``block`` writes.

        The sample-index coordinate is left out: it is checked by value instead. A
        padded array's are its ``columns[name]`` first chunks of the block's row (when
        not given: those on disk) and the block's chunk of its lengths.
        """
        arrays = arrays if arrays is not None else self._arrays(layout)
        names = [p.name for p in layout.params.values() if not p.is_axis]
        names += [*list(layout.outputs), "status"]
        padded = _padded(layout, arrays)
        files = []
        for name in names:
            arr = arrays[name]
            coords = tuple(block) + (0,) * (arr.ndim - len(block))
            if name not in padded:
                files.append(f"{name}/{arr.metadata.encode_chunk_key(coords)}")
                continue
            ncols = (columns or {}).get(name)
            if ncols is None:  # the columns on disk
                ncols = 0
                while (self.path / name / arr.metadata.encode_chunk_key((*coords[:-1], ncols))).is_file():
                    ncols += 1
            files += [f"{name}/{arr.metadata.encode_chunk_key((*coords[:-1], c))}" for c in range(ncols)]
            lengths = arrays[length_name(name)]
            files.append(f"{length_name(name)}/{lengths.metadata.encode_chunk_key(coords[:-1])}")
        return files

    def read_block(self, layout: Layout, block: tuple[int, ...]) -> tuple[dict[str, Any], np.ndarray]:
        """A committed block's outputs and status, as stored (a ragged or text output as a
        :class:`~daskbatch.ragged.RaggedBlock`: its values trimmed by their lengths)."""
        arrays = self._arrays(layout)
        region = layout.block_slices(block)
        outputs: dict[str, Any] = {}
        for k, o in layout.outputs.items():
            if not o.variable:
                outputs[k] = arrays[k][region]
                continue
            # the array as it is now: another process may have widened it
            arr = zarr.open_array(str(self.path), path=k, mode="r")
            outputs[k] = RaggedBlock.from_padded(o, arr[region], arrays[length_name(k)][region])
        return outputs, arrays["status"][region]

    def unmark(self, blocks: list[tuple[int, ...]]) -> None:
        """Make blocks pending again: ``ledger.forget(blocks)``."""
        if blocks:
            self.ledger.forget(blocks)

    # ----------------------------------------------------------------- timeouts

    def _timeouts_path(self, block: tuple[int, ...]) -> Path:
        return self.path / HIDDEN / "timeouts" / (".".join(str(i) for i in block) + ".json")

    def record_timeout(self, block: tuple[int, ...], positions: list[int], seconds: float) -> None:
        """Remember that a timeout stopped these samples (flat positions in the block).

        Called by a worker just before it ends its own process, so it is written and
        flushed to disk at once; the next attempt at the block skips these samples.
        """
        path = self._timeouts_path(block)
        path.parent.mkdir(parents=True, exist_ok=True)
        known = self.timeouts(block)
        for pos in positions:
            known[int(pos)] = float(seconds)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({str(k): v for k, v in known.items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def timeouts(self, block: tuple[int, ...]) -> dict[int, float]:
        """Flat positions in ``block`` a timeout stopped, with the timeout in seconds."""
        try:
            doc = json.loads(self._timeouts_path(block).read_text())
            return {int(k): float(v) for k, v in doc.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def clear_timeouts(self, block: tuple[int, ...]) -> None:
        self._timeouts_path(block).unlink(missing_ok=True)

    def timeouts_recorded_since(self, t: float) -> bool:
        """Whether a timeout was recorded at or after ``t`` (``time.time()``)."""
        d = self.path / HIDDEN / "timeouts"
        if not d.is_dir():
            return False
        for f in d.glob("*.json"):
            with contextlib.suppress(OSError):
                if f.stat().st_mtime >= t:
                    return True
        return False

    # ----------------------------------------------------------------- locking

    # ----------------------------------------------------------------- checking

    def verify(self, full: bool = True) -> list[BlockProblem]:
        """The committed blocks whose data is proven wrong (see :func:`daskbatch.repair.check`).

        Damaged metadata is not a damaged block: :func:`daskbatch.repair.check` reports
        it apart, and :func:`daskbatch.repair.repair` rebuilds it.
        """
        return check(self.path, full).blocks


def _partial(layout: Layout, block: tuple[int, ...], outputs: Any, status: np.ndarray, region: Any) -> Any:
    """The block's partial reduction states (None: the run reduces nothing); a statistic
    that fails says so, naming the block (the block is not committed)."""
    if layout.reductions is None:
        return None
    try:
        return layout.reductions.partial(outputs, status, region)
    except Exception as e:
        from .reductions import ReductionError

        raise ReductionError(
            f"reduce: reducing block {list(block)} failed ({type(e).__name__}: {' '.join(str(e).split())}); "
            "the blocks committed before are kept: fix the statistic (an Aggregation's chunk) and run "
            "again to go on"
        ) from e
