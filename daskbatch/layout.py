"""The arrays of a daskbatch store: their :class:`Layout`, and the template that makes them.

Every array is chunked exactly like the blocks along the batch dims (and whole
along core dims), so no two tasks ever write the same chunk. The template holds
every array with its metadata and no data but the coordinates known at creation
(grid axes, output core coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .kernel import STATUS, Output
from .ledger import INTERNAL
from .outputs import check_name
from .space import Param

__all__ = ["Layout", "write_template"]


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
                check_name(d, f"parameter {p.name!r}: dim")
                core(d, s, f"parameter {p.name!r}")
        for name, o in self.outputs.items():
            check_name(name, "output")
            claim(name, "output")
            for d, s in zip(o.dims, o.shape, strict=True):
                check_name(d, f"output {name!r}: dim")
                core(d, s, f"output {name!r}")
        # a core dim named like a parameter or an output: xarray takes that variable for
        # the dim's coordinate, and it is not one, so it would vanish from the dataset
        owners = [(f"parameter {p.name!r}", p.core_dims) for p in self.params.values()]
        owners += [(f"output {name!r}", o.dims) for name, o in self.outputs.items()]
        for owner, dims in owners:
            for d in dims:
                if taken.get(d) in ("parameter", "output"):
                    raise StoreError(
                        f"{owner}: core dim {d!r} is also the name of {taken[d]} {d!r}; "
                        f"give the dim another name, e.g. '{d}_dim'"
                    )
        for name, o in self.outputs.items():
            for d in o.coords:
                if d in taken:
                    raise StoreError(f"output {name!r}: coordinate {d!r} clashes with {taken[d]}")


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


def write_template(root: zarr.Group, layout: Layout) -> None:
    """Create every array of ``layout`` in ``root``: coordinates, parameters, outputs, status.

    Batch coordinates given in the layout (grid axes) and output core coordinates
    are written now; a sample index coordinate is written block by block.
    """
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
