"""Whole-chunk writes without a trip to zarr's event loop.

A block of a daskbatch store is one chunk of each of its arrays, so most of a block's
writes replace one whole chunk. zarr writes each through its asynchronous pipeline:
the codecs and the file write each hop to a thread of its own, about 0.5 ms of an
array's write of a few bytes (``Store.write_block`` of a small block on a RAM disk:
1.8 ms through zarr, 0.26 ms with this module; ``benchmarks/commit.py``).
:func:`write_chunk` encodes such a chunk in the calling thread with the array's own
codecs (their synchronous form, zarr's ``SupportsSyncCodec``) and puts the file in
place as zarr's local store does: written beside it, then renamed over it. The bytes
are the ones zarr writes (a test compares them, dtype by dtype, codec by codec, edge
chunks included).

Anything else is left to zarr (:func:`write_chunk` returns False): an array of
another store than a local folder, of zarr format 2, whose codecs are not all
synchronous (sharding), that skips empty chunks, of a dtype other than a number or a
boolean, a selection that is not exactly one chunk, or values of another dtype or
shape.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
import zlib
from typing import Any

import numpy as np

__all__ = ["write_chunk"]

#: dtype kinds written here: booleans, integers, floats, complex numbers
_KINDS = frozenset("biufc")


def _parts():
    """zarr's pieces this module uses, or None when this zarr has not all of them."""
    try:
        from zarr.abc.codec import SupportsSyncCodec
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.core.codec_pipeline import BatchedCodecPipeline, fill_value_or_default
        from zarr.core.metadata.v3 import ArrayV3Metadata
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - another zarr: every write goes through zarr
        return None
    return (
        SupportsSyncCodec,
        default_buffer_prototype,
        RegularChunkGrid,
        BatchedCodecPipeline,
        fill_value_or_default,
        ArrayV3Metadata,
        LocalStore,
    )


_PARTS = _parts()


def _chunk_of(
    shape: tuple[int, ...], chunks: tuple[int, ...], sel: Any
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(chunk coordinates, shape within the array)`` when ``sel`` (slices, the trailing
    ones implicit) covers exactly one chunk, else None."""
    if isinstance(sel, slice):
        sel = (sel,)
    if not isinstance(sel, tuple) or len(sel) > len(shape):
        return None
    sel = sel + (slice(None),) * (len(shape) - len(sel))
    coords, within = [], []
    for s, n, c in zip(sel, shape, chunks, strict=True):
        if not isinstance(s, slice) or s.step not in (None, 1):
            return None
        start, stop, _ = s.indices(n)
        if start % c or stop != min(start + c, n) or stop <= start:
            return None
        coords.append(start // c)
        within.append(stop - start)
    return tuple(coords), tuple(within)


@functools.cache
def _synchronous(codec_type: type, protocol: Any) -> bool:
    """Whether codecs of ``codec_type`` have a synchronous form: asked once per type (a
    runtime protocol check costs microseconds, on every write of every block)."""
    return issubclass(codec_type, protocol)


def encode_chunk(arr: Any, sel: Any, value: Any) -> tuple[str, bytes] | None:
    """``(file path, bytes)`` of the chunk of ``arr`` (a ``zarr.Array``) that writing
    ``value`` at ``sel`` gives, when this module can make it (see the module); None
    otherwise, also when the zarr installed has moved a part this module uses (zarr's
    own write is the reference: it then writes the chunk)."""
    if _PARTS is None:  # pragma: no cover
        return None
    try:
        return _encode(arr, sel, value)
    except (AttributeError, TypeError):
        return None


def _encode(arr: Any, sel: Any, value: Any) -> tuple[str, bytes] | None:
    sync_codec, prototype_of, regular, pipeline_type, fill_of, v3, local = _PARTS
    a = arr.async_array
    meta = a.metadata
    if not isinstance(meta, v3) or not isinstance(meta.chunk_grid, regular):
        return None
    pipe = a.codec_pipeline
    store = a.store_path.store
    if type(pipe) is not pipeline_type or type(store) is not local or store.read_only:
        return None
    if not a.config.write_empty_chunks:
        return None
    codecs = (*pipe.array_array_codecs, pipe.array_bytes_codec, *pipe.bytes_bytes_codecs)
    if not all(_synchronous(type(c), sync_codec) for c in codecs):
        return None
    where = _chunk_of(tuple(meta.shape), tuple(meta.chunk_grid.chunk_shape), sel)
    if where is None:
        return None
    coords, within = where
    prototype = prototype_of()
    spec = meta.get_chunk_spec(coords, a.config, prototype)
    dtype = spec.dtype.to_native_dtype()
    if not isinstance(dtype, np.dtype) or dtype.kind not in _KINDS or dtype.fields is not None:
        return None
    value = np.asarray(value)
    if value.dtype != dtype or value.shape != within:
        return None
    if within == tuple(spec.shape):
        chunk = np.ascontiguousarray(value)
    else:  # the last chunk along a dim: the part past the array's end holds the fill value
        chunk = np.full(spec.shape, fill_of(spec), dtype=dtype)
        chunk[tuple(slice(0, n) for n in within)] = value
    buf = prototype.nd_buffer.from_numpy_array(chunk)
    for codec in codecs:
        buf = codec._encode_sync(buf, spec)
        if buf is None:  # pragma: no cover - a codec that drops the chunk
            return None
        spec = codec.resolve_metadata(spec)
    path = os.path.join(str(store.root), a.store_path.path, meta.encode_chunk_key(coords))
    return path, buf.to_bytes()


def write_chunk(arr: Any, sel: Any, value: Any, sums: dict[str, tuple[int, int]] | None = None) -> bool:
    """Write ``value`` at ``sel`` of ``arr`` when that is one whole chunk this module can
    encode (see the module): the chunk file is written beside its place, then renamed
    into it (a reader sees the old chunk or the new one). False: nothing was written;
    write it through zarr.

    ``sums`` (when given) gets the file's size and CRC-32, computed from the bytes
    written, under its normalised path: the block's record needs them, and reading
    the file back would cost another open (a metadata round trip on a parallel
    filesystem)."""
    encoded = encode_chunk(arr, sel, value)
    if encoded is None:
        return False
    path, data = encoded
    tmp = f"{path}.{uuid.uuid4().hex}.partial"  # unique on any host sharing the folder
    try:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except FileNotFoundError:  # the chunk's folder is not there yet
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
        if sums is not None:
            sums[os.path.normpath(path)] = (len(data), zlib.crc32(data))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
