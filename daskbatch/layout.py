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
from .outputs import TEXT_KINDS, check_name
from .ragged import bytes_dim, chunk_width, encode_text, length_attrs, length_name, padded_attrs
from .spacebase import Param

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
    #: text parameters and coordinates in Zarr's own string types, as stores made
    #: before text was stored as UTF-8 bytes keep them (what a repair rebuilds)
    legacy_text: bool = field(default=False, compare=False)
    #: the run's :class:`~daskbatch.reductions.Reductions` (None: nothing reduced): a
    #: block's partial states are computed from its outputs and committed with its record
    reductions: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # an output declared Output(store=False) is only reduced: it has no array
        if any(not getattr(o, "store", True) for o in self.outputs.values()):
            object.__setattr__(self, "outputs", {k: o for k, o in self.outputs.items() if o.store})

    @property
    def numblocks(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.batch_shape, self.block_shape, strict=True))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.numblocks)

    @property
    def padded(self) -> dict[str, bool]:
        """The arrays a block writes padded, with a ``<name>_length`` array beside them
        (see :mod:`daskbatch.ragged`): ragged and text outputs, text parameters; each
        name mapped to whether it is text (stored as UTF-8 bytes)."""
        out = {name: o.text for name, o in self.outputs.items() if o.variable}
        for p in self.params.values():
            if not p.is_axis and np.dtype(p.dtype).kind in TEXT_KINDS and not self.legacy_text:
                out[p.name] = True
        return out

    def text_coords(self) -> dict[str, np.ndarray]:
        """Coordinates written at creation whose values are text (grid axes, output
        coordinates): stored as UTF-8 bytes too."""
        if self.legacy_text:
            return {}
        coords = {d: c for d, c in self.batch_coords.items() if np.asarray(c).dtype.kind in TEXT_KINDS}
        for o in self.outputs.values():
            for d, c in o.coords.items():
                if np.asarray(c).dtype.kind in TEXT_KINDS:
                    coords.setdefault(d, np.asarray(c))
        return coords

    def block_slices(self, block: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(i * b, min((i + 1) * b, n))
            for i, b, n in zip(block, self.block_shape, self.batch_shape, strict=True)
        )

    def validate(self) -> None:
        """Reject names that would clash in the store or in xarray."""
        taken: dict[str, str] = {d: "batch dim" for d in self.batch_dims}
        core_sizes: dict[str, int | None] = {}

        def claim(name: str, what: str) -> None:
            if name in ("status", INTERNAL) or (name in taken and what != "axis"):
                other = "reserved by daskbatch" if name in ("status", INTERNAL) else taken[name]
                fix = ""
                if other in ("table label", "table column"):
                    fix = "; rename the column, or leave it out with columns=[...]"
                raise StoreError(f"{what} {name!r} clashes with a name already used ({other}){fix}")
            taken[name] = what

        def core(dim: str, size: int | None, owner: str) -> None:
            if dim in self.batch_dims:
                raise StoreError(f"{owner}: core dim {dim!r} is also a batch dim; rename it")
            if size is None:  # a ragged dim: its own output's (checked in _validate_padded)
                return
            if core_sizes.setdefault(dim, size) != size:
                raise StoreError(
                    f"{owner}: dim {dim!r} has size {size} here and {core_sizes[dim]} elsewhere; "
                    "give the dims different names"
                )

        for p in self.params.values():
            if not p.is_axis:
                claim(p.name, "table label" if p.label else "table column" if p.optional else "parameter")
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
        self._validate_padded(taken, core_sizes)

    def _validate_padded(self, taken: dict[str, str], core_sizes: dict[str, int | None]) -> None:
        """The names padded arrays add (``<name>_length``, text's ``<name>_bytes`` dim)
        must be free, and a ragged dim belongs to its output alone."""
        ragged_dims: dict[str, str] = {}
        for name, o in self.outputs.items():
            if o.ragged:
                ragged_dims.setdefault(o.dims[0], name)
        for d, name in ragged_dims.items():
            users = [f"parameter {p.name!r}" for p in self.params.values() if d in p.core_dims]
            users += [f"output {k!r}" for k, o in self.outputs.items() if k != name and d in o.dims]
            if users:
                raise StoreError(
                    f"output {name!r}: its ragged dim {d!r} (shape=(None,)) is also a dim of {users[0]}; "
                    f"a ragged dim's size is its own output's longest value: give {users[0]} another dim name"
                )
        dims = set(self.batch_dims) | set(core_sizes) | set(ragged_dims)
        added: dict[str, str] = {}
        text_coords = self.text_coords()
        owners = [(f"output {k!r}", k, o.text) for k, o in self.outputs.items() if o.variable]
        owners += [(f"parameter {k!r}", k, True) for k in self.padded if k not in self.outputs]
        owners += [(f"coordinate {d!r}", d, True) for d in text_coords]
        for owner, name, text in owners:
            kind = "its text as UTF-8 bytes" if text else "its values padded"
            for extra, what in [
                (length_name(name), "lengths"),
                *([(bytes_dim(name), "byte dim")] if text else []),
            ]:
                other = taken.get(extra) or ("a dim" if extra in dims else None) or added.get(extra)
                if other is not None:
                    raise StoreError(
                        f"{owner} is stored with {kind}, with its {what} under the name {extra!r}, "
                        f"which clashes with {other} {extra!r}; rename one of them"
                    )
                added[extra] = f"the {what} of {owner}"


def _compressors(dtype: Any) -> Any:
    """Blosc with LZ4 and byte shuffling for numbers (text, as UTF-8 bytes, takes Zarr's
    default, Zstandard: see :func:`write_template`).

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
    template = _Template(root, layout)
    template.batch_coords()
    template.params()
    template.outputs()
    template.status()


class _Template:
    """The arrays of ``layout`` made in ``root``, part by part (:func:`write_template`)."""

    def __init__(self, root: zarr.Group, layout: Layout) -> None:
        self.root = root
        self.layout = layout
        self.bshape = layout.block_shape
        self.per_block = math.prod(layout.block_shape)

    def array(self, name, shape, chunks, dtype, fill, dims, attrs=None, compressors=None):
        return self.root.create_array(
            name=name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
            attributes=dict(attrs or {}),
            compressors=_compressors(dtype) if compressors is None else compressors,
        )

    def padded(self, name, shape, chunks, dtype, fill, dims, attrs=None, text=False, length_chunks=None):
        """A padded array ``name`` (its last dim the values' width, 0 for now) and its
        length array; text as UTF-8 bytes, compressed with Zstandard."""
        a = self.array(
            name,
            shape,
            chunks,
            "uint8" if text else dtype,
            0 if text else fill,
            dims,
            {**dict(attrs or {}), **padded_attrs(name, text)},
            "auto" if text else None,
        )
        n = self.array(length_name(name), shape[:-1], length_chunks or chunks[:-1], "int64", 0, dims[:-1])
        n.attrs.update(length_attrs(name, text))
        return a, n

    def text_coord(self, d, values):
        """A coordinate of text written now: its UTF-8 bytes and their lengths."""
        data, lengths = encode_text(values)
        shape = data.shape
        a, n = self.padded(d, shape, (shape[0], max(1, shape[1])), None, 0, (d, bytes_dim(d)), text=True)
        a[...] = data
        n[...] = lengths

    @staticmethod
    def text_width(values_per_block):
        return chunk_width(values_per_block, 1)

    def batch_coords(self) -> None:
        """The batch dims' coordinates: grid axes written now, sample indices later."""
        layout = self.layout
        for d, n, b in zip(layout.batch_dims, layout.batch_shape, self.bshape, strict=True):
            coord = layout.batch_coords.get(d)
            if coord is None:  # a sample index, written block by block
                self.array(d, (n,), (b,), "int64", -1, (d,))
            elif coord.dtype.kind in TEXT_KINDS and not layout.legacy_text:
                self.text_coord(d, coord)
            else:
                a = self.array(
                    d, (n,), (n,), str if coord.dtype.kind in TEXT_KINDS else coord.dtype, None, (d,)
                )
                a[:] = coord

    def params(self) -> None:
        """The parameters' arrays (not the grid axes: they are coordinates)."""
        layout, bshape = self.layout, self.bshape
        for p in layout.params.values():
            if p.is_axis:
                continue
            # a table's label (a column the kernel does not take): a coordinate in xarray
            label = {"coordinates": p.name} if getattr(p, "label", False) else None
            if p.name in layout.padded:  # text, as UTF-8 bytes padded to the longest so far
                c = self.text_width(self.per_block * math.prod(p.core_shape))
                shape = (*layout.batch_shape, *p.core_shape, 0)
                dims = (*p.dims, bytes_dim(p.name))
                self.padded(p.name, shape, (*bshape, *p.core_shape, c), None, 0, dims, label, text=True)
                continue
            text = p.dtype.kind in TEXT_KINDS  # a store of Zarr strings (legacy_text)
            fill = np.nan if p.dtype.kind == "f" else ("" if text else 0)
            self.array(
                p.name,
                layout.batch_shape + p.core_shape,
                bshape + p.core_shape,
                str if text else p.dtype,
                fill,
                p.dims,
                label,
            )

    def outputs(self) -> None:
        """The outputs' arrays and their core coordinates."""
        layout, bshape = self.layout, self.bshape
        for name, o in layout.outputs.items():
            if o.text:
                shape, dims = (*layout.batch_shape, 0), (*layout.batch_dims, bytes_dim(name))
                self.padded(
                    name, shape, (*bshape, self.text_width(self.per_block)), None, 0, dims, o.attrs, text=True
                )
            elif o.ragged:
                c = chunk_width(self.per_block, o.dtype.itemsize)
                dims = (*layout.batch_dims, *o.dims)
                self.padded(name, (*layout.batch_shape, 0), (*bshape, c), o.dtype, o.fill, dims, o.attrs)
            else:
                self.array(
                    name,
                    layout.batch_shape + o.shape,
                    bshape + o.shape,
                    o.dtype,
                    o.fill,
                    layout.batch_dims + o.dims,
                    o.attrs,
                )
            for d, values in o.coords.items():
                if d in self.root:
                    continue
                if values.dtype.kind in TEXT_KINDS and not layout.legacy_text:
                    self.text_coord(d, values)
                else:
                    a = self.array(d, values.shape, values.shape, values.dtype, None, (d,))
                    a[:] = values

    def status(self) -> None:
        """The per-sample status, every sample pending."""
        layout = self.layout
        codes = sorted(STATUS.items(), key=lambda kv: kv[1])
        self.array(
            "status",
            layout.batch_shape,
            self.bshape,
            "int8",
            STATUS["pending"],
            layout.batch_dims,
            {
                "long_name": "per-sample status",
                "flag_values": [v for _, v in codes],
                "flag_meanings": " ".join(k for k, _ in codes),
            },
        )
