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

Every array is chunked exactly like the blocks along the batch dims (and whole
along core dims), so no two tasks ever write the same chunk. A block's marker is
written after all of its data: a block without a marker is pending, whatever else
of it is on disk, and is simply written again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError, StoreExistsError
from .kernel import STATUS, Output
from .space import Param

__all__ = ["INTERNAL", "Layout", "Store"]

INTERNAL = "_daskbatch"
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
        return self.path.is_dir() and any(self.path.iterdir()) and not self.is_daskbatch()

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
                raise StoreError(f"store {str(self.path)!r} does not exist")
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
            shutil.rmtree(self.path)
        root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
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
                cached = {n: root[n] for n in names}
                for n in ("done", "counts", "errors", "seconds"):
                    cached[f"{INTERNAL}/{n}"] = root[f"{INTERNAL}/{n}"]
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
        """Write one block's data, then its marker. Returns its counts per status code."""
        arrays = self._arrays(layout)
        region = layout.block_slices(block)
        writes: list[tuple[zarr.Array, Any, Any]] = []
        for d, s in zip(layout.batch_dims, region, strict=True):
            if d not in layout.batch_coords:
                writes.append((arrays[d], s, np.arange(s.start, s.stop, dtype=np.int64)))
        for name, values in params.items():
            writes.append((arrays[name], region, values))
        for name, values in outputs.items():
            writes.append((arrays[name], region, values))
        writes.append((arrays["status"], region, status))
        counts = np.bincount(status.ravel(), minlength=len(STATUS)).astype(np.int64)
        writes.append((arrays[f"{INTERNAL}/counts"], block, counts))
        writes.append((arrays[f"{INTERNAL}/seconds"], block, seconds))
        doc = {"errors": errors, "n_errors": int(n_errors)} if n_errors else None
        writes.append((arrays[f"{INTERNAL}/errors"], block, json.dumps(doc) if doc else ""))
        _write_all(writes)
        # the commit marker, strictly after every other write of the block has returned
        arrays[f"{INTERNAL}/done"][block] = 1
        return counts

    # ----------------------------------------------------------------- reading

    def _internal(self, name: str) -> zarr.Array:
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        return root[f"{INTERNAL}/{name}"]

    def done_mask(self) -> np.ndarray:
        """One boolean per block: True where the block's commit marker exists."""
        return self._internal("done")[...] == 1

    def block_counts(self) -> np.ndarray:
        """Samples per status code, per block (zeros for pending blocks)."""
        return self._internal("counts")[...]

    def block_errors(self, blocks: list[tuple[int, ...]]) -> list[dict[str, Any]]:
        arr = self._internal("errors")
        out = []
        for b in blocks:
            text = str(arr[b])
            if text:
                out.append(json.loads(text))
        return out

    def block_seconds(self) -> np.ndarray:
        return self._internal("seconds")[...]

    def open_dataset(self):
        """Open as a lazy, dask-backed :class:`xarray.Dataset`."""
        import xarray as xr

        self.require_info()
        return xr.open_zarr(str(self.path), consolidated=True)
