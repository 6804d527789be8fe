"""Ragged and text arrays in the store: widening them, repairing them, reading them.

The layout is :mod:`daskbatch.ragged`'s (padded values and ``<name>_length``, text as
UTF-8 bytes). Here is what the store does with it: :func:`metadata_lock`, the lock a
block writer takes to widen a padded array (:func:`grow_width`) and the driver to
consolidate the metadata; :func:`stale_chunks`, the chunks a block's earlier attempt
left past its values; what a repair needs (:func:`uses_zarr_strings`,
:func:`wider_shape`, :func:`widened`); and reading (:func:`read_decoded`,
:func:`compare_sample`, :func:`decode_dataset`, which turns the stored text back into
strings for :func:`daskbatch.open`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import TEXT_DTYPE, Output
from .ragged import ATTR, HIDDEN, METADATA_LOCK, RaggedBlock, decode_text, length_name, padded_meta

__all__ = [
    "compare_sample",
    "decode_dataset",
    "grow_width",
    "metadata_lock",
    "read_decoded",
    "stale_chunks",
    "uses_zarr_strings",
    "widened",
    "wider_shape",
]

# --------------------------------------------------------------------------- the store: widening arrays


@contextlib.contextmanager
def metadata_lock(store: Path) -> Iterator[None]:
    """Hold the store's metadata lock (``.daskbatch/metadata.lock``, an exclusive
    ``flock``): taken by a block writer to widen a padded array and by the driver to
    rewrite and consolidate the root metadata, so that neither undoes the other.

    Opened without following a link (a link there is refused). On a filesystem
    without ``flock``, POSIX record locks (``lockf``) are used; without those too,
    no lock is taken.
    """
    import fcntl

    from .errors import StoreError
    from .fstools import link_message

    hidden = Path(store) / HIDDEN
    try:
        dfd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        hidden.mkdir(exist_ok=True)
        dfd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(link_message(Path(store), hidden)) from None
        raise
    try:
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(METADATA_LOCK, flags, 0o644, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(link_message(Path(store), hidden / METADATA_LOCK)) from None
            raise
    finally:
        os.close(dfd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            with contextlib.suppress(OSError):
                fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_doc(path: Path) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def _replace_doc(store: Path, target: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to a temporary file in ``.daskbatch/`` and rename it onto ``target``."""
    tmp = Path(store) / HIDDEN / f"meta-{os.getpid()}-{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def grow_width(store: Path, name: str, need: int) -> int:
    """Make padded array ``name`` at least ``need`` wide; return its width.

    Under :func:`metadata_lock`: reads ``<name>/zarr.json`` again and, if its last
    size is still smaller, writes it with ``need`` (aside, then renamed); never
    narrower. The root's consolidated copy of the array (what ``xarray.open_zarr``
    and :func:`daskbatch.open` read) is brought to at least that width too, also when
    another writer widened the array itself, so that a block committed after this
    call is wholly visible to every reader.
    """
    store = Path(store)
    with metadata_lock(store):
        file = store / name / "zarr.json"
        doc = _read_doc(file)
        shape = list(doc["shape"])
        if int(shape[-1]) < need:
            shape[-1] = int(need)
            _replace_doc(store, file, {**doc, "shape": shape})
        width = int(shape[-1])
        root_file = store / "zarr.json"
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            root = _read_doc(root_file)
            entries = root["consolidated_metadata"]["metadata"]
            entry = entries.get(name)
            if isinstance(entry, dict) and int(entry["shape"][-1]) < width:
                entries[name] = {**entry, "shape": [*entry["shape"][:-1], width]}
                _replace_doc(store, root_file, root)
        return width


def stale_chunks(store: Path, name: str, chunk_key: str, keep: int) -> list[Path]:
    """The chunk files of one block's row of padded array ``name`` past its first
    ``keep`` columns of chunks (``chunk_key``: the key of the row's first chunk, e.g.
    ``c/3/0``); written by an earlier attempt at the block with longer values."""
    folder = store / name / Path(chunk_key).parent
    found = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.isdigit() and int(e.name) >= keep and e.is_file(follow_symlinks=False):
                    found.append(Path(e.path))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


# --------------------------------------------------------------------------- repairs


def uses_zarr_strings(store: Path) -> bool:
    """Whether a store keeps text in Zarr's own string data types (``string``,
    fixed-width UTF-32): a store made before text was stored as UTF-8 bytes. Its
    text parameters and coordinates keep that form when it is resumed or repaired.

    Looks at the top-level arrays' metadata, in their files and in the root's
    consolidated copy (either may be damaged)."""
    docs: list[Any] = []
    with contextlib.suppress(Exception):
        meta = _read_doc(Path(store) / "zarr.json")["consolidated_metadata"]["metadata"]
        docs += [d for k, d in meta.items() if "/" not in k]
    with contextlib.suppress(OSError):
        for entry in os.scandir(store):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                with contextlib.suppress(Exception):
                    docs.append(_read_doc(Path(entry.path) / "zarr.json"))
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("node_type") == "array":
            dtype = doc.get("data_type")
            if dtype == "string" or isinstance(dtype, Mapping):  # vlen-utf8, fixed_length_utf32
                return True
    return False


def wider_shape(doc: Any, ref: Any) -> bool:
    """Whether array metadata ``doc`` has the shape of ``ref`` (the template's, or the
    consolidated copy), but wider along the last dim, of a padded array: what block
    writers do to it, no damage."""
    if not isinstance(doc, Mapping) or not isinstance(ref, Mapping):
        return False
    if padded_meta(ref.get("attributes")) is None and padded_meta(doc.get("attributes")) is None:
        return False
    a, b = doc.get("shape"), ref.get("shape")
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a):
        return False
    last = isinstance(a[-1], int) and isinstance(b[-1], int) and a[-1] >= b[-1]
    return a[:-1] == b[:-1] and last


def widened(store: Path, name: str, doc: Mapping[str, Any], others: Sequence[Any] = ()) -> dict[str, Any]:
    """Metadata ``doc`` of padded array ``name``, rebuilt by a repair, made as wide as
    what is stored needs: the widest of ``doc``, ``others`` (e.g. the consolidated
    copy) and the longest length in its length array (or, when that cannot be read,
    the columns of chunks on disk). Any other array's ``doc`` is returned as it is."""
    meta = padded_meta(doc.get("attributes"))
    shape = doc.get("shape")
    if meta is None or not isinstance(shape, list) or not shape:
        return dict(doc)
    width = int(shape[-1])
    for other in others:
        with contextlib.suppress(Exception):
            if len(other["shape"]) == len(shape):
                width = max(width, int(other["shape"][-1]))
    try:
        import zarr

        lengths = zarr.open_array(str(Path(store) / meta["length"]), mode="r")[...]
        width = max(width, int(np.max(lengths, initial=0)))
    except Exception:
        chunk = doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [1])[-1]
        cols = [
            int(p.name) for p in (Path(store) / name / "c").rglob("*") if p.is_file() and p.name.isdigit()
        ]
        if cols and len(shape) > 1:
            width = max(width, (max(cols) + 1) * int(chunk))
    return {**doc, "shape": [*shape[:-1], width]}


# --------------------------------------------------------------------------- reading


def read_decoded(root: Any, name: str, selection: Any) -> np.ndarray:
    """Array ``name`` of a store's Zarr group ``root`` at ``selection`` (along its
    first dims): text decoded to strings; any other array as stored."""
    arr = root[name]
    meta = padded_meta(dict(arr.attrs))
    if meta is None or meta.get("encoding") != "utf-8":
        return np.asarray(arr[selection])
    return decode_text(arr[selection], root[meta["length"]][selection])


def compare_sample(
    out: Output, new: RaggedBlock, root: Any, name: str, selection: Any
) -> tuple[tuple[str, str] | None, np.ndarray, np.ndarray]:
    """One recomputed sample of ragged or text output ``name`` against the store.

    Returns ``(None, recomputed, stored)`` as float arrays to compare within a
    tolerance (numbers of the same length; text that is equal gives empty arrays), or
    ``((stored, recomputed), ...)``, a short text of each, when they differ in a way
    no tolerance covers (another length, other text).
    """
    stored = RaggedBlock.from_padded(out, root[name][selection], root[length_name(name)][selection])
    a, b = stored[0], new[0]
    if out.text:
        old_text, new_text = bytes(a).decode(errors="replace"), bytes(b).decode(errors="replace")
        if old_text == new_text:
            return None, np.zeros(0), np.zeros(0)
        return (repr(old_text), repr(new_text)), np.zeros(0), np.zeros(0)
    if a.shape != b.shape:
        return (f"{a.shape[0]} values", f"{b.shape[0]} values"), np.zeros(0), np.zeros(0)
    return None, np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)


def _decode_blocks(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return decode_text(data, lengths[..., 0])


def decode_dataset(ds: Any) -> Any:
    """A store's Dataset (as ``xarray.open_zarr`` reads it) with its text decoded.

    Every text array (padded UTF-8 bytes, :func:`~daskbatch.ragged.padded_attrs` with
    ``encoding``) becomes a variable of strings (numpy ``StringDType``) without its
    bytes dim, and its length variable is dropped: text parameters and outputs lazily,
    block by block; text coordinates (grid axes, output coordinates) at once, as the
    index of their dim. Ragged numeric outputs are left as they are (padded with their
    fill, beside their ``<name>_length`` variable). Stores without such arrays (those
    made before, whose text is Zarr's own string type) are returned unchanged.
    """
    import dask.array as da
    import xarray as xr

    order = list(ds.data_vars)
    for name in list(ds.variables):
        if name not in ds.variables:
            continue
        var = ds[name].variable
        meta = padded_meta(var.attrs)
        if meta is None or meta.get("encoding") != "utf-8" or meta["length"] not in ds.variables:
            continue
        lengths = ds[meta["length"]].variable
        dims = var.dims[:-1]
        attrs = {k: v for k, v in var.attrs.items() if k != ATTR}
        coord = name in ds.coords or name in ds.dims
        if name in ds.dims or not isinstance(var.data, da.Array):  # an index: its values now
            values = decode_text(np.asarray(var.values), np.asarray(lengths.values))
        else:
            data = var.data.rechunk({var.ndim - 1: -1})
            count = lengths.data if isinstance(lengths.data, da.Array) else da.from_array(lengths.values)
            count = count.rechunk(data.chunks[:-1])[..., None]
            values = da.map_blocks(
                _decode_blocks,
                data,
                count,
                drop_axis=var.ndim - 1,
                dtype=TEXT_DTYPE,
                meta=np.empty((0,) * len(dims), dtype=TEXT_DTYPE),
            )
        ds = ds.drop_vars([name, meta["length"]])
        decoded = xr.Variable(dims, values, attrs)
        if coord:
            ds = ds.assign_coords({name: decoded})
        else:
            ds[name] = decoded
    return ds[[k for k in order if k in ds.data_vars]]  # in the store's order
