"""The Zarr layout of a daskbatch store.

::

    store.zarr/                      Zarr v3 group; attrs["daskbatch"] = provenance
      <batch dim coords>             sample (written by blocks) or grid axes (at creation)
      <output core dim coords>       e.g. ab2, time (at creation)
      <parameters>                   (batch dims..., core dims...)
      <outputs>                      (batch dims..., output dims...)
      status                         (batch dims...) int8, codes in STATUS
      _daskbatch/done                one uint8 per block: the commit marker
      _daskbatch/counts              per block: samples per status code
      _daskbatch/errors              per block: JSON list of the first errors
      _daskbatch/seconds             per block: kernel seconds
      _daskbatch/checksums           per block: size and CRC-32 of every chunk file it wrote
      .daskbatch/lock                not Zarr: who is writing the store now (host, pid, start)
      .daskbatch/timeouts/           not Zarr: samples a timeout stopped, per block

Every array is chunked exactly like the blocks along the batch dims (and whole
along core dims), so no two tasks ever write the same chunk, and every chunk of a
block is written even when it holds only fill values. A block is written in order:
its sample coordinate, parameters and outputs; then its status and bookkeeping;
then its checksums; last its marker. A block without a marker is pending, whatever
else of it is on disk, and is simply written again. So ``status`` read directly
never shows a sample as done before its outputs are on disk, and
``Store.open_dataset`` shows it as done only once its block has a marker. A marker
that cannot be read, or a chunk file behind a marker that is missing or has another
size than the one recorded, makes its block pending again; ``verify`` also compares
every checksum.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError, StoreExistsError, StoreLockedError, StoreNotFoundError, StoreWriteError
from .kernel import STATUS, Output
from .space import Param

__all__ = ["INTERNAL", "BlockProblem", "Layout", "Store", "StoreLock"]

INTERNAL = "_daskbatch"
HIDDEN = ".daskbatch"  # lock and timeout records: plain files, invisible to Zarr and xarray
_INTERNAL_ARRAYS = ("done", "counts", "errors", "seconds", "checksums")
_WRITE_EMPTY = {"write_empty_chunks": True}
_ATTR = "daskbatch"
_FORMAT = 1


@dataclass(frozen=True)
class Layout:
    """Everything about the arrays of a store that a block writer needs."""

    batch_dims: tuple[str, ...]
    batch_shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    params: Mapping[str, Param]
    outputs: Mapping[str, Output]
    batch_coords: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    store_id: str = ""

    @property
    def numblocks(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.batch_shape, self.block_shape, strict=True))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.numblocks)

    def block_slices(self, block: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(i * b, min((i + 1) * b, n))
            for i, b, n in zip(block, self.block_shape, self.batch_shape, strict=True)
        )

    def validate(self) -> None:
        """Reject names that would clash in the store or in xarray."""
        taken: dict[str, str] = {d: "batch dim" for d in self.batch_dims}
        core_sizes: dict[str, int] = {}

        def claim(name: str, what: str) -> None:
            if name in ("status", INTERNAL) or (name in taken and what != "axis"):
                other = "reserved by daskbatch" if name in ("status", INTERNAL) else taken[name]
                raise StoreError(f"{what} {name!r} clashes with a name already used ({other})")
            taken[name] = what

        def core(dim: str, size: int, owner: str) -> None:
            if dim in self.batch_dims:
                raise StoreError(f"{owner}: core dim {dim!r} is also a batch dim; rename it")
            if core_sizes.setdefault(dim, size) != size:
                raise StoreError(
                    f"{owner}: dim {dim!r} has size {size} here and {core_sizes[dim]} elsewhere; "
                    "give the dims different names"
                )

        for p in self.params.values():
            if not p.is_axis:
                claim(p.name, "parameter")
            for d, s in zip(p.core_dims, p.core_shape, strict=True):
                core(d, s, f"parameter {p.name!r}")
        for name, o in self.outputs.items():
            claim(name, "output")
            for d, s in zip(o.dims, o.shape, strict=True):
                core(d, s, f"output {name!r}")
        for name, o in self.outputs.items():
            for d in o.coords:
                if d in taken:
                    raise StoreError(f"output {name!r}: coordinate {d!r} clashes with {taken[d]}")


# Arrays opened per process and store, so that a worker opens each array once.
_OPEN: dict[tuple[str, str], dict[str, zarr.Array]] = {}
_OPEN_LOCK = threading.Lock()


def _quiet_consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        # consolidated metadata is not in the v3 spec yet; xarray still reads it first
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


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


_LOCK_SIZE = 2048


class StoreLock:
    """One writer at a time: an advisory ``flock`` on ``.daskbatch/lock`` in the store.

    The operating system releases the lock when its process ends, however it ends,
    so a lock left by a killed run is free again and is taken over; the file keeps
    the last holder's host, pid and start time, which name the holder when a second
    run is refused (or the run whose lock was taken over). On filesystems without
    ``flock`` the holder's pid is checked instead when it ran on this host.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._doc: dict[str, Any] = {}
        self.previous: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, or None; never takes it."""
        if not self.path.exists():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            got = _try_flock(fd, shared=True)
            if got:
                _unlock(fd)
            doc = _read_holder(self.path)
            if got is False:
                return doc or {"host": "?", "pid": "?", "start": "?"}
            if got is None and doc and _alive_here(doc):
                return doc
            return None
        finally:
            os.close(fd)

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        got = _try_flock(fd)
        doc = _read_holder(self.path)
        if got is False or (got is None and doc and _alive_here(doc)):
            os.close(fd)
            who = doc or {}
            raise StoreLockedError(
                f"store {str(self.path.parent.parent)!r} is being written by another run: host "
                f"{who.get('host', '?')}, pid {who.get('pid', '?')}, started {who.get('start', '?')}. "
                f"Wait for it to finish (`daskbatch status {shlex.quote(str(self.path.parent.parent))}` "
                "shows its progress), or stop "
                "that run; a lock left by a run that was killed is taken over automatically"
            )
        self.previous = doc or None  # a holder that is gone: its lock is stale
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300],
        }
        self._fd = fd
        self._doc = me
        os.ftruncate(fd, 0)
        self._write()
        os.fsync(fd)
        return self

    def _write(self) -> None:
        # one fixed-size write: a reader never sees a half-replaced document
        text = json.dumps(self._doc)
        os.pwrite(self._fd, text.ljust(max(_LOCK_SIZE, len(text))).encode(), 0)

    def update(self, **progress: Any) -> None:
        """Publish the run's progress (done, rate, ETA, ...) for ``daskbatch status``."""
        if self._fd is None:
            return
        self._doc["progress"] = {**progress, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):  # a full disk must not stop the run here
            self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a full disk: the lock still goes with the fd
            os.ftruncate(self._fd, 0)
        _unlock(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int, shared: bool = False) -> bool | None:
    """True: locked; False: someone else holds it; None: this filesystem has no flock."""
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _unlock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text().strip() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _alive_here(doc: Mapping[str, Any]) -> bool:
    """Whether the holder's process still runs (only knowable on its own host)."""
    if doc.get("host") != socket.gethostname():
        return True  # another host: assume it runs
    try:
        os.kill(int(doc["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _read_blocks(arr: zarr.Array, fill: Any) -> np.ndarray:
    """Read a per-block bookkeeping array; a chunk that cannot be decoded reads as ``fill``."""
    try:
        return arr[...]
    except Exception:
        out = np.full(arr.shape, fill, dtype=arr.dtype)
        nb = arr.shape[: len(arr.shape) - (1 if arr.ndim > 1 and arr.chunks[-1] > 1 else 0)]
        for b in np.ndindex(nb):
            with contextlib.suppress(Exception):
                out[b] = arr[b]
        return out


def _compressors(dtype: Any) -> Any:
    """Blosc with LZ4 and byte shuffling for numbers, Zarr's default for strings.

    Compressing is most of the cost of writing a block of a cheap kernel: Zarr's
    default (Zstandard) encodes about 600 MB/s here, Blosc-LZ4 with shuffling about
    3 GB/s, and it compresses float64 results slightly better and a sample index
    20x better. Every Zarr reader decodes it.
    """
    if dtype is str or np.dtype(dtype).kind in "USO":
        return "auto"
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5),)


async def _gather_writes(writes: list[tuple[zarr.Array, Any, Any]]) -> None:
    import asyncio

    await asyncio.gather(*(arr.async_array.setitem(sel, value) for arr, sel, value in writes))


def _write_all(writes: list[tuple[zarr.Array, Any, Any]]) -> None:
    """Write several regions concurrently on zarr's I/O loop (all have returned on exit)."""
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - a zarr without its sync helper: one at a time
        for arr, sel, value in writes:
            arr[sel] = value
        return
    sync(_gather_writes(writes))


# Arrays a reader opened, per process and store: status and the commit markers.
_READ: dict[tuple[str, str], tuple[zarr.Array, zarr.Array]] = {}


def _read_arrays(path: str, store_id: str) -> tuple[zarr.Array, zarr.Array]:
    key = (path, store_id)
    with _OPEN_LOCK:
        got = _READ.get(key)
        if got is None:
            root = zarr.open_group(path, mode="r", use_consolidated=False)
            got = _READ[key] = (root["status"], root[f"{INTERNAL}/done"])
        return got


class _CommittedStatus:
    """``status`` as a reader sees it: 0 (pending) wherever the block has no commit marker.

    A lazily indexed array for ``dask.array.from_array``: each read of a region first
    reads the markers of the blocks it covers (one byte each), then the region of
    ``status``, and returns the status of the committed blocks and 0 elsewhere. A
    marker is written after everything else of its block, so a sample shown as done
    has its outputs, parameters and bookkeeping on disk, final. Holds no data: the
    memory of a read is that of the region.
    """

    def __init__(self, path: str, store_id: str, batch_shape, block_shape) -> None:
        self.path = path
        self.store_id = store_id
        self.shape = tuple(int(n) for n in batch_shape)
        self.block_shape = tuple(int(b) for b in block_shape)
        self.dtype = np.dtype("int8")
        self.ndim = len(self.shape)

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
        status, done = _read_arrays(self.path, self.store_id)
        committed = self._committed(done, region)  # the markers first, then the data
        values = np.where(committed, status[tuple(region)], 0).astype(self.dtype)
        return values[tuple(local)]

    def _committed(self, done: zarr.Array, region: list[slice]) -> np.ndarray:
        """True for every sample of ``region`` whose block's marker reads 1."""
        blocks = tuple(
            slice(r.start // b, max(r.start // b, -(-r.stop // b)))
            for r, b in zip(region, self.block_shape, strict=True)
        )
        try:
            marks = np.asarray(done[blocks]) == 1
        except Exception:  # a damaged marker counts as none, the others as they read
            marks = np.zeros(tuple(s.stop - s.start for s in blocks), dtype=bool)
            for idx in np.ndindex(marks.shape):
                with contextlib.suppress(Exception):
                    marks[idx] = done[tuple(s.start + i for s, i in zip(blocks, idx, strict=True))] == 1
        for axis, (r, s, b) in enumerate(zip(region, blocks, self.block_shape, strict=True)):
            first = r.start - s.start * b
            marks = np.repeat(marks, b, axis=axis)
            marks = marks[(slice(None),) * axis + (slice(first, first + r.stop - r.start),)]
        return marks


class Store:
    """A daskbatch Zarr store on the local filesystem.

    Parameters
    ----------
    path
        A directory path; it is created if missing (its parent must exist).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path).strip():
            raise StoreError(f"store={path!r} must be a directory path such as 'results.zarr'")
        self.path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ----------------------------------------------------------------- checks

    def check_writable(self) -> None:
        """Raise :class:`StoreError` if a store cannot be created or written here."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise StoreError(f"store={str(p)!r} is a file; give a directory path such as 'results.zarr'")
        parent = p.parent
        if not parent.is_dir():
            raise StoreError(
                f"store={str(p)!r}: the parent directory {str(parent)!r} does not exist; create it "
                "first or choose another path"
            )
        target = p if p.exists() else parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise StoreError(f"store={str(p)!r}: {str(target)!r} is not writable; choose another path")

    def is_daskbatch(self) -> bool:
        return self.info() is not None

    def is_foreign(self) -> bool:
        """True if the path holds files that are not a daskbatch store."""
        if not self.path.is_dir() or self.is_daskbatch():
            return False
        return any(child.name != HIDDEN for child in self.path.iterdir())

    def info(self) -> dict[str, Any] | None:
        """The store's provenance (``attrs["daskbatch"]``), or None if it has none."""
        meta = self.path / "zarr.json"
        if not meta.is_file():
            return None
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        info = doc.get("attributes", {}).get(_ATTR)
        return info if isinstance(info, dict) else None

    def require_info(self) -> dict[str, Any]:
        info = self.info()
        if info is None:
            if not self.path.exists():
                raise StoreNotFoundError(f"store {str(self.path)!r} does not exist")
            raise StoreError(f"{str(self.path)!r} is not a daskbatch store (no daskbatch metadata)")
        return info

    # ----------------------------------------------------------------- creation

    def create(self, layout: Layout, info: Mapping[str, Any], *, overwrite: bool = False) -> None:
        """Write the template: every array with its metadata, no data but coordinates."""
        if self.path.exists():
            if self.is_foreign():
                raise StoreExistsError(
                    f"store={str(self.path)!r} is not empty and was not written by daskbatch; "
                    "daskbatch never deletes data it did not write. Choose a new path"
                )
            if self.is_daskbatch() and not overwrite:
                raise StoreExistsError(f"store {str(self.path)!r} exists; pass overwrite=True")
            for child in self.path.iterdir():  # everything but the lock this run holds
                if child.name == HIDDEN:
                    shutil.rmtree(child / "timeouts", ignore_errors=True)
                elif child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        bshape = layout.block_shape

        def array(name, shape, chunks, dtype, fill, dims, attrs=None):
            return root.create_array(
                name=name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                dimension_names=dims,
                attributes=dict(attrs or {}),
                compressors=_compressors(dtype),
            )

        for d, n, b in zip(layout.batch_dims, layout.batch_shape, bshape, strict=True):
            coord = layout.batch_coords.get(d)
            if coord is None:  # a sample index, written block by block
                array(d, (n,), (b,), "int64", -1, (d,))
            else:
                a = array(d, (n,), (n,), coord.dtype if coord.dtype.kind != "U" else str, None, (d,))
                a[:] = coord
        for p in layout.params.values():
            if p.is_axis:
                continue
            dtype = str if p.dtype.kind == "U" else p.dtype
            fill = "" if p.dtype.kind == "U" else (np.nan if p.dtype.kind == "f" else 0)
            array(
                p.name,
                layout.batch_shape + p.core_shape,
                bshape + p.core_shape,
                dtype,
                fill,
                p.dims,
            )
        for name, o in layout.outputs.items():
            array(
                name,
                layout.batch_shape + o.shape,
                bshape + o.shape,
                o.dtype,
                o.fill,
                layout.batch_dims + o.dims,
                o.attrs,
            )
            for d, values in o.coords.items():
                if d not in root:
                    a = array(d, values.shape, values.shape, values.dtype, None, (d,))
                    a[:] = values
        codes = sorted(STATUS.items(), key=lambda kv: kv[1])
        array(
            "status",
            layout.batch_shape,
            bshape,
            "int8",
            STATUS["pending"],
            layout.batch_dims,
            {
                "long_name": "per-sample status",
                "flag_values": [v for _, v in codes],
                "flag_meanings": " ".join(k for k, _ in codes),
            },
        )
        internal = root.create_group(INTERNAL)
        nb = layout.numblocks
        ones = (1,) * len(nb)
        internal.create_array(name="done", shape=nb, chunks=ones, dtype="uint8", fill_value=0)
        internal.create_array(
            name="counts",
            shape=(*nb, len(STATUS)),
            chunks=(*ones, len(STATUS)),
            dtype="int64",
            fill_value=0,
        )
        internal.create_array(name="errors", shape=nb, chunks=ones, dtype=str, fill_value="")
        internal.create_array(name="seconds", shape=nb, chunks=ones, dtype="float64", fill_value=np.nan)
        internal.create_array(name="checksums", shape=nb, chunks=ones, dtype=str, fill_value="")
        root.attrs[_ATTR] = dict(info)
        _quiet_consolidate(self.path)

    def update_info(self, info: Mapping[str, Any]) -> None:
        """Replace the provenance; only the driver calls this, never a task."""
        root = zarr.open_group(str(self.path), mode="r+")
        root.attrs[_ATTR] = dict(info)
        _quiet_consolidate(self.path)

    # ----------------------------------------------------------------- blocks

    def _arrays(self, layout: Layout) -> dict[str, zarr.Array]:
        key = (str(self.path), layout.store_id)
        with _OPEN_LOCK:
            cached = _OPEN.get(key)
            if cached is None:
                root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
                names = [p.name for p in layout.params.values() if not p.is_axis]
                names += [*list(layout.outputs), "status"]
                names += [d for d in layout.batch_dims if d not in layout.batch_coords]
                cached = {n: root[n].with_config(_WRITE_EMPTY) for n in names}
                for n in _INTERNAL_ARRAYS:
                    cached[f"{INTERNAL}/{n}"] = root[f"{INTERNAL}/{n}"].with_config(_WRITE_EMPTY)
                _OPEN[key] = cached
            return cached

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
    ) -> np.ndarray:
        """Write one block, in three steps, then its marker. Returns its counts per status code.

        1. the sample coordinate, the parameters and the outputs (concurrently);
        2. once those have returned: ``status``, ``counts``, ``seconds`` and ``errors``
           (concurrently), so that a reader of ``status`` alone (``xarray.open_zarr``)
           never sees a sample as done before its outputs are on disk;
        3. the size and CRC-32 of every chunk file written, in ``checksums``;

        and last the commit marker ``done``.
        """
        arrays = self._arrays(layout)
        region = layout.block_slices(block)
        data: list[tuple[zarr.Array, Any, Any]] = []
        for d, s in zip(layout.batch_dims, region, strict=True):
            if d not in layout.batch_coords:
                data.append((arrays[d], s, np.arange(s.start, s.stop, dtype=np.int64)))
        for name, values in params.items():
            data.append((arrays[name], region, values))
        for name, values in outputs.items():
            data.append((arrays[name], region, values))
        counts = np.bincount(status.ravel(), minlength=len(STATUS)).astype(np.int64)
        doc = {"errors": errors, "n_errors": int(n_errors)} if n_errors else None
        states: list[tuple[zarr.Array, Any, Any]] = [
            (arrays["status"], region, status),
            (arrays[f"{INTERNAL}/counts"], block, counts),
            (arrays[f"{INTERNAL}/seconds"], block, seconds),
            (arrays[f"{INTERNAL}/errors"], block, json.dumps(doc) if doc else ""),
        ]
        try:
            _write_all(data)
            # status only after the data it describes has returned
            _write_all(states)
            sums = {rel: _checksum(self.path / rel) for rel in self._chunk_files(layout, block, arrays)}
            arrays[f"{INTERNAL}/checksums"][block] = json.dumps(sums)
            # the commit marker, strictly after every other write of the block has returned
            arrays[f"{INTERNAL}/done"][block] = 1
        except OSError as e:
            what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else str(e)
            raise StoreWriteError(
                f"writing block {list(block)} to {str(self.path)!r} failed: {what}. Blocks "
                "committed before are kept and this one is not counted as done; make room "
                "(or fix the cause) and run the same command again to finish",
                e.errno,
            ) from e
        return counts

    def _chunk_files(self, layout: Layout, block: tuple[int, ...], arrays=None) -> list[str]:
        """Paths (relative to the store) of the chunk files block ``block`` writes.

        The sample-index coordinate is left out: it is checked by value instead.
        """
        arrays = arrays if arrays is not None else self._arrays(layout)
        names = [p.name for p in layout.params.values() if not p.is_axis]
        names += [*list(layout.outputs), "status"]
        files = []
        for name in names:
            arr = arrays[name]
            coords = tuple(block) + (0,) * (arr.ndim - len(block))
            files.append(f"{name}/{arr.metadata.encode_chunk_key(coords)}")
        for name in ("counts", "errors", "seconds"):
            arr = arrays[f"{INTERNAL}/{name}"]
            coords = tuple(block) + (0,) * (arr.ndim - len(block))
            files.append(f"{INTERNAL}/{name}/{arr.metadata.encode_chunk_key(coords)}")
        return files

    def read_block(self, layout: Layout, block: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A committed block's outputs and status, as stored."""
        arrays = self._arrays(layout)
        region = layout.block_slices(block)
        return {k: arrays[k][region] for k in layout.outputs}, arrays["status"][region]

    def unmark(self, blocks: list[tuple[int, ...]]) -> None:
        """Make blocks pending again (their data stays until it is written anew)."""
        if not blocks:
            return
        root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        done = root[f"{INTERNAL}/done"].with_config(_WRITE_EMPTY)
        for b in blocks:
            done[b] = 0

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

    def lock(self) -> StoreLock:
        """The store's writer lock (see :class:`StoreLock`)."""
        return StoreLock(self.path / HIDDEN / "lock")

    # ----------------------------------------------------------------- reading

    def _internal(self, name: str) -> zarr.Array:
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        return root[f"{INTERNAL}/{name}"]

    def done_mask(self) -> np.ndarray:
        """One boolean per block: True where the block's commit marker exists and reads 1.

        A marker chunk that cannot be decoded (a truncated file) counts as not done.
        """
        return _read_blocks(self._internal("done"), 0) == 1

    def is_done(self, block: tuple[int, ...]) -> bool:
        """Whether one block's commit marker reads 1 (an unreadable one does not)."""
        try:
            return bool(self._internal("done")[block] == 1)
        except Exception:
            return False

    def verify(self, full: bool = True) -> list[BlockProblem]:
        """Check every block that has a commit marker; return what is wrong.

        Always: markers that cannot be read, chunk files behind a marker that are
        missing or whose size differs from the one recorded when the block was
        written. With ``full=True`` also: every chunk's CRC-32 against the recorded
        one, that every chunk decodes, and that the per-block counts agree with the
        ``status`` array. Reads every chunk once: use it after a crash of the disk,
        a copy, or when results look wrong.
        """
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        done_arr = root[f"{INTERNAL}/done"]
        sums_arr = root[f"{INTERNAL}/checksums"]
        problems: list[BlockProblem] = []
        try:  # one read of each bookkeeping array; block by block only if one is damaged
            done = done_arr[...]
            unreadable = np.zeros(done.shape, dtype=bool)
        except Exception:
            done = np.zeros(done_arr.shape, dtype=done_arr.dtype)
            unreadable = np.zeros(done.shape, dtype=bool)
            for b in np.ndindex(done.shape):
                try:
                    done[b] = done_arr[b]
                except Exception:
                    unreadable[b] = True
        for b in (tuple(int(i) for i in idx) for idx in np.argwhere(unreadable)):
            problems.append(BlockProblem(b, "its commit marker cannot be read (a damaged file)"))
        committed = [tuple(int(i) for i in b) for b in np.argwhere(done == 1)]
        all_sums = _read_blocks(sums_arr, "") if committed else None
        for b in committed:
            try:
                sums = json.loads(str(all_sums[b]) or "{}")
            except ValueError:
                problems.append(BlockProblem(b, "its checksums cannot be read"))
                continue
            if not sums:
                problems.append(BlockProblem(b, "it has a commit marker but no checksums"))
                continue
            bad = None
            for rel, (size, crc) in sums.items():
                f = self.path / rel
                try:
                    actual = f.stat().st_size
                except FileNotFoundError:
                    bad = f"chunk file {rel} is missing"
                    break
                if actual != size:
                    bad = f"chunk file {rel} has {actual} bytes, {size} were written"
                    break
                if full and _checksum(f)[1] != crc:
                    bad = f"chunk file {rel} does not match its checksum (garbage or overwritten)"
                    break
            if bad is None and full:
                bad = self._decode_check(root, b)
            if bad is not None:
                problems.append(BlockProblem(b, bad))
        return sorted(problems, key=lambda p: p.block)

    def _decode_check(self, root, block: tuple[int, ...]) -> str | None:
        info = self.require_info()
        layout = info["layout"]
        bshape, shape = layout["block_shape"], layout["batch_shape"]
        region = tuple(
            slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(block, bshape, shape, strict=True)
        )
        try:
            status = root["status"][region]
            counts = root[f"{INTERNAL}/counts"][block]
        except Exception as e:
            return f"its status cannot be decoded ({type(e).__name__}: {e})"
        if not np.array_equal(np.bincount(status.ravel(), minlength=len(STATUS)), counts):
            return "its status array disagrees with its counts"
        for d, s, b in zip(layout["batch_dims"], region, bshape, strict=True):
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

    def block_counts(self) -> np.ndarray:
        """Samples per status code, per block (zeros for pending blocks)."""
        return _read_blocks(self._internal("counts"), 0)

    def block_errors(self, blocks: list[tuple[int, ...]]) -> list[dict[str, Any]]:
        arr = self._internal("errors")
        out = []
        for b in blocks:
            try:
                text = str(arr[b])
                if text:
                    out.append(json.loads(text))
            except Exception:  # a damaged chunk: verify reports it
                continue
        return out

    def block_seconds(self) -> np.ndarray:
        return _read_blocks(self._internal("seconds"), np.nan)

    def open_dataset(self):
        """Open as a lazy, dask-backed :class:`xarray.Dataset` of the committed blocks.

        The variables are the store's arrays, but ``status`` reads 0 (pending) for
        every sample of a block without a commit marker, whatever is on disk: a
        sample shown as done belongs to a committed block, whose outputs and
        parameters are final. Each chunk of ``status`` reads its blocks' markers
        first, then the status values (no marker is read when the store is opened).
        Outputs and parameters are not masked: select them with ``status``.
        """
        import uuid

        import dask.array as da
        import xarray as xr

        info = self.require_info()
        try:
            ds = xr.open_zarr(str(self.path), consolidated=True)
        except ValueError:  # a run is rewriting the root metadata now: read every array's own
            with warnings.catch_warnings():
                # the listing meets .daskbatch/ (plain files), which is not Zarr, as intended
                warnings.filterwarnings("ignore", message=".*not recognized as a component")
                ds = xr.open_zarr(str(self.path), consolidated=False)
        layout = info["layout"]
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
        return ds
