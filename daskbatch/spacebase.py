"""What every parameter space is: its parameters (:class:`Param`) and the :class:`Space` base.

A space knows its *batch dims* (``sample`` for a Monte Carlo design or a table, one
dim per axis for a grid), the parameters and their core dims, and how to produce the
parameter values of any block of samples on its own. :meth:`Space.to_dask` turns it
into lazy dask arrays chunked along the batch dims; nothing is materialised until a
block is computed, so a space of 10^9 samples costs no memory up front. The spaces
themselves are in :mod:`daskbatch.space` (grids and products), :mod:`daskbatch.tables`
and :mod:`daskbatch.designs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SpaceError

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["Param", "Space"]


@dataclass(frozen=True)
class Param:
    """One parameter: its dims (batch dims it varies along, then core dims) and dtype."""

    name: str
    dims: tuple[str, ...]
    core_shape: tuple[int, ...]
    dtype: np.dtype
    is_axis: bool = False  # a grid axis: stored as the coordinate of its own dim
    #: the store keeps its values (False: a column read from an input file, referenced)
    stored: bool = True
    #: kept in the store as a coordinate along the batch dims (a label), not a variable
    label: bool = False
    #: a table's column: one the kernel does not take is a label instead of an error
    optional: bool = False

    @property
    def core_dims(self) -> tuple[str, ...]:
        return self.dims[len(self.dims) - len(self.core_shape) :]


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise SpaceError(
            f"{kind}: parameter name {name!r} must be a valid Python identifier "
            "(it is passed to the kernel as a keyword argument)"
        )
    return name


class Space:
    """Base class of parameter spaces. Use :class:`Grid`, :class:`Table` or :class:`MonteCarlo`."""

    batch_dims: tuple[str, ...]
    batch_shape: tuple[int, ...]
    params: dict[str, Param]
    #: a block task carries the block's values, computed in the driver, instead of the
    #: space (a table held in memory, a list of files): see ``blocktask.build_tasks``
    carries_rows: bool = False

    @property
    def size(self) -> int:
        """Total number of samples."""
        return math.prod(self.batch_shape)

    @property
    def seed(self) -> int | None:
        return None

    @property
    def seed_given(self) -> bool:
        """False for a design whose seed was picked at random (``seed=None``)."""
        return True

    def with_seed(self, seed: int) -> Space:
        """The same space drawn with another seed (a space without randomness: itself)."""
        return self

    def batch_coords(self) -> dict[str, np.ndarray]:
        """Coordinate values of batch dims that have labels (grid axes)."""
        return {}

    def to_dask(self, chunks: tuple[tuple[int, ...], ...]) -> dict[str, da.Array]:
        """Lazy parameter arrays, chunked along the batch dims as ``chunks`` says."""
        raise NotImplementedError

    def block(self, slices: tuple[slice, ...]) -> dict[str, np.ndarray]:
        """The parameter values of one block (a slice per batch dim), computed eagerly."""
        raise NotImplementedError

    def head(self, n: int) -> Space:
        """A small space made of this space's first samples, for a smoke run."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """A JSON-able description, stored in the store and used for fingerprints."""
        raise NotImplementedError

    def extension_of(self, old_spec: Mapping[str, Any]) -> str | None:
        """None when this space is the space ``old_spec`` describes (a :meth:`spec`)
        with samples added at the end and every old sample unchanged; otherwise a
        one-line reason naming the difference. This space cannot be extended."""
        return f"a {type(self).__name__} cannot be extended with new samples"

    def to_toml(self) -> str:
        """The ``[space]`` table of a spec file for ``daskbatch run`` that makes this space.

        Examples
        --------
        >>> from daskbatch import Grid
        >>> print(Grid(x=[1, 2]).to_toml())
        [space]
        type = "grid"
        <BLANKLINE>
        [space.axes]
        x = [
            1,
            2,
        ]
        <BLANKLINE>
        """
        import tomli_w

        def check(spec: Mapping[str, Any], where: str) -> None:
            if spec.get("type") == "table" and "path" not in spec:
                raise SpaceError(
                    f"{where}: a Table made in memory has no file to name in a spec file; "
                    "save it (CSV, Parquet or Zarr) and make the Table from that path"
                )
            for part in ("outer", "inner"):
                if isinstance(spec.get(part), Mapping):
                    check(spec[part], f"{where}.{part}")

        spec = self.spec()
        check(spec, "space")
        return tomli_w.dumps({"space": spec})

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}: {n}" for d, n in zip(self.batch_dims, self.batch_shape, strict=True))
        params = ", ".join(self.params)
        return f"<{type(self).__name__} ({dims}) {self.size:,} samples; params: {params}>"
