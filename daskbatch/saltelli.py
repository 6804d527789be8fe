"""The design of variance-based sensitivity analysis: :class:`Saltelli`.

The design is Saltelli's scheme on scrambled Sobol points, in the row order
``SALib.sample.sobol.sample`` gives, so ``SALib.analyze.sobol.analyze`` reads the
outputs as they are stored. For base point ``j`` (a Sobol point in ``2 d``
dimensions, ``d`` the number of uniforms the parameters take; ``A`` its first ``d``
coordinates and ``B`` its last ``d``) the design's rows are

* ``A_j``,
* ``AB_j^(i)`` for each parameter ``i``: ``A_j`` with parameter ``i``'s columns taken from ``B_j``,
* ``BA_j^(i)`` for each parameter ``i`` (second order only): ``B_j`` with parameter
  ``i``'s columns taken from ``A_j``,
* ``B_j``,

so ``n`` base points make ``n (D + 2)`` samples (``n (2 D + 2)`` with second order),
``D`` the number of parameters. A parameter with several values (``size=``, a
multivariate normal) is one group: its values move together. Every sample is a
function of the seed and its index alone, so a block is drawn on its own, and
raising ``n`` (to another power of 2) only adds samples at the end: the store grows.

:func:`~daskbatch.sensitivity.sobol_indices` reads the indices back from a store of such a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .designs import Design, sobol_points, to_open_unit
from .errors import SpaceError

__all__ = ["Saltelli"]

#: dimensions of scipy's Sobol direction numbers
_SOBOL_MAX_DIM = 21201
#: base points a scrambled Sobol sequence has (scipy's 30 bits)
_SOBOL_MAX_N = 2**30


def _powers_around(n: int) -> str:
    lower = 1 << max(1, int(n).bit_length() - 1)
    return f"n={lower:,} or n={2 * lower:,}"


class Saltelli(Design):
    """Saltelli's design for Sobol sensitivity indices: ``n`` base points, ``n (D + 2)`` samples.

    The samples are in the row order of ``SALib.sample.sobol.sample`` (base point by
    base point: ``A``, ``AB`` per parameter, [``BA`` per parameter], ``B``), drawn
    from scrambled Sobol points in ``2 d`` dimensions and mapped through each
    parameter's inverse CDF. Read the indices back with :func:`sobol_indices`.

    Parameters
    ----------
    dists
        ``{name: distribution}``: daskbatch distributions or frozen ``scipy.stats``
        ones. A parameter with several values (``size=``) is one group: it gets one
        index.
    n
        Number of base points, a power of 2 (at least 2). The design has
        ``n * (D + 2)`` samples, ``D = len(dists)`` (``n * (2 D + 2)`` with
        ``second_order``). Raising ``n`` later (e.g. doubling it) keeps every
        sample computed: the store grows.
    seed
        Non-negative integer. ``None`` draws one at random; it is recorded in the
        store, so the run can still be reproduced.
    second_order
        Add the ``BA`` rows that second-order indices need.

    Examples
    --------
    >>> from daskbatch import Uniform
    >>> s = Saltelli({"x": Uniform(0, 1), "y": Uniform(0, 1), "z": Uniform(0, 1)}, n=1024, seed=1)
    >>> s.size, s.n
    (5120, 1024)
    >>> x = s.block((slice(0, 5),))["x"]  # A, AB^(x), AB^(y), AB^(z), B of base point 0
    >>> bool(x[0] == x[2] == x[3]) and bool(x[1] == x[4])
    True
    """

    kind = "saltelli"

    def __init__(
        self, dists: Mapping[str, Any], n: int, seed: int | None = None, *, second_order: bool = False
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise SpaceError(
                f"Saltelli: n={n!r} must be a whole number of base points, a power of 2 such as 1024"
            )
        if n < 2:
            raise SpaceError(
                f"Saltelli: n={n!r} base points are too few; use a power of 2 of at least 2, e.g. n=1024"
            )
        if n & (n - 1):
            raise SpaceError(
                f"Saltelli: n={n:,} is not a power of 2; the Sobol points it is drawn from are "
                f"balanced only at powers of 2: use {_powers_around(n)}"
            )
        if n > _SOBOL_MAX_N:
            raise SpaceError(f"Saltelli: n={n:,} is more than the 2**30 base points the Sobol sequence has")
        if not isinstance(second_order, bool):
            raise SpaceError(f"Saltelli: second_order={second_order!r} must be True or False")
        super().__init__(dists, n, seed)
        fixed = [name for name, d in self.dists.items() if d.n_uniforms == 0]
        if fixed:
            raise SpaceError(
                f"Saltelli: parameter {fixed[0]!r} is a constant and has no sensitivity; pass it to "
                f"run(..., constants={{{fixed[0]!r}: ...}}) instead"
            )
        if 2 * self.dimension > _SOBOL_MAX_DIM:
            raise SpaceError(
                f"Saltelli: the parameters take {self.dimension:,} uniforms; the Sobol points "
                f"(2 per uniform) have at most {_SOBOL_MAX_DIM:,} dimensions"
            )
        self.second_order = second_order
        #: rows per base point: A, AB^(1..D), [BA^(1..D)], B
        self.rows = (2 if second_order else 1) * len(self.dists) + 2
        self.batch_shape = (self.n * self.rows,)

    @property
    def parameters(self) -> list[str]:
        """The parameter names, in the order of the ``AB`` rows."""
        return list(self.dists)

    def _options(self) -> dict[str, Any]:
        return {"second_order": True} if self.second_order else {}

    def _points(self, start: int, stop: int) -> np.ndarray:
        """Points of samples ``[start, stop)`` in the unit cube, shape ``(stop - start, d)``."""
        if stop <= start:
            return np.empty((0, self.dimension))
        R, d = self.rows, self.dimension
        j0, j1 = start // R, (stop - 1) // R + 1
        base = sobol_points(self._seed, 2 * d, j0, j1)
        a, b = base[:, :d], base[:, d:]
        out = np.empty((j1 - j0, R, d))
        out[:, 0] = a
        out[:, R - 1] = b
        for i, cols in enumerate(self._columns.values()):
            out[:, 1 + i] = a
            out[:, 1 + i, cols] = b[:, cols]
            if self.second_order:
                k = 1 + len(self.dists) + i
                out[:, k] = b
                out[:, k, cols] = a[:, cols]
        return out.reshape(-1, d)[start - j0 * R : stop - j0 * R]

    def _uniforms(self, name: str, start: int, stop: int) -> np.ndarray:
        return to_open_unit(self._points(start, stop)[:, self._columns[name]])

    def block(self, slices):
        (s,) = slices
        u = to_open_unit(self._points(s.start, s.stop))  # once for every parameter
        return {name: d.ppf(u[:, self._columns[name]]) for name, d in self.dists.items()}

    def head(self, n: int) -> Saltelli:
        """The design's first base points, as many as ``n`` samples hold rounded down to a
        power of 2 (at least 2): a smoke run of the design's own first samples."""
        base = max(2, -(-int(n) // self.rows))
        base = min(self.n, 1 << (base.bit_length() - 1))
        return Saltelli(self.dists, n=base, seed=self._seed, second_order=self.second_order)

    def resized(self, n: int) -> Saltelli:
        """The design with as many base points as ``n`` *samples* hold, rounded down to a
        power of 2 (at least 2): how ``until=`` doubles it, keeping it balanced."""
        base = max(2, int(n) // self.rows)
        other = Saltelli(
            self.dists, n=1 << (base.bit_length() - 1), seed=self._seed, second_order=self.second_order
        )
        other._seed_given = self._seed_given
        return other
