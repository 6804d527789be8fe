"""1-D DC resistivity sounding: Schlumberger apparent resistivity over layered earth.

The apparent resistivity at half-spacing ``s = AB/2`` is the Hankel transform of
the resistivity transform ``T(lambda)``; it is evaluated with the 7-point digital
linear filter of Guptasarma (1982, Geophysical Prospecting 30, 501-514, table A1),
``rho_a(s) = sum_k f_k T(10**(a_k) / s)``, and ``T`` by the Pekeris recursion from
the bottom half-space up. Pure numpy, no compiled library.

Two kernels wrap the same core: :data:`schlumberger` is called once per sample (the
shape of most forward models), :data:`schlumberger_block` once per block (vectorised).
"""

from __future__ import annotations

import numpy as np

from ..kernel import Output, kernel

__all__ = ["AB2", "apparent_resistivity", "schlumberger", "schlumberger_block"]

#: Half current-electrode spacings AB/2 in metres: 1 m to 1 km, 10 per decade.
AB2 = np.logspace(0, 3, 31)

# Guptasarma (1982), 7-point filter for the Schlumberger array.
_WEIGHTS = np.array([0.1732, 0.2945, 2.147, -2.1733, 0.6646, -0.1215, 0.0155])
_ABSCISSAE = -0.17445 + 0.27117 * np.arange(7)


def apparent_resistivity(resistivity: np.ndarray, thickness: np.ndarray, ab2: np.ndarray = AB2) -> np.ndarray:
    """Schlumberger apparent resistivity of a layered earth.

    Parameters
    ----------
    resistivity
        Layer resistivities in ohm-m, shape ``(..., n_layers)``; the last layer is
        the half-space.
    thickness
        Layer thicknesses in m, shape ``(..., n_layers - 1)``.
    ab2
        Half-spacings AB/2 in m, shape ``(n_spacings,)``.

    Returns
    -------
    numpy.ndarray
        Apparent resistivity in ohm-m, shape ``(..., n_spacings)``.

    Examples
    --------
    >>> bool(np.allclose(apparent_resistivity([100.0], []), 100.0))
    True
    """
    rho = np.asarray(resistivity, dtype=np.float64)
    h = np.asarray(thickness, dtype=np.float64)
    if rho.shape[-1] < 1 or h.shape[-1] != rho.shape[-1] - 1:
        raise ValueError(
            f"thickness must have one value fewer than resistivity, got {h.shape[-1]} "
            f"thicknesses for {rho.shape[-1]} layers"
        )
    if np.any(rho <= 0) or np.any(h <= 0):
        raise ValueError("resistivities and thicknesses must be positive")
    s = np.asarray(ab2, dtype=np.float64)
    lam = 10.0**_ABSCISSAE / s[:, None]  # (n_spacings, 7)
    batch = rho.shape[:-1]
    t = np.broadcast_to(rho[..., -1, None, None], (*batch, *lam.shape)).copy()
    for i in range(rho.shape[-1] - 2, -1, -1):
        th = np.tanh(lam * h[..., i, None, None])
        r = rho[..., i, None, None]
        t = (t + r * th) / (1.0 + t * th / r)
    return t @ _WEIGHTS


_OUT = {
    "rhoa": Output(
        dims=("ab2",),
        shape=(AB2.size,),
        coords={"ab2": AB2},
        attrs={"units": "ohm m", "long_name": "Schlumberger apparent resistivity"},
    )
}


@kernel(outputs=_OUT, threadsafe=True)
def schlumberger(resistivity, thickness):
    """Apparent resistivity curve of one layered model (per sample)."""
    return apparent_resistivity(resistivity, thickness)


@kernel(outputs=_OUT, per_sample=False, threadsafe=True)
def schlumberger_block(resistivity, thickness):
    """Apparent resistivity curves of a block of layered models (vectorised)."""
    return apparent_resistivity(resistivity, thickness)
