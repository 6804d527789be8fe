"""TEM1D: transient electromagnetic 1-D forward modelling (a compiled Fortran core).

Needs the ``pytem1d`` package (``pip install 'daskbatch[tem]'``) and the GNU Fortran
runtime its library links to (Debian/Ubuntu: ``apt-get install libgfortran5``).
Importing this module checks both and says what to install if one is missing.

The Fortran library keeps global state, so the kernels are *not* declared
thread-safe: daskbatch never runs two of their calls at once in one process.

Kernels
-------
``tem1d``
    ``resistivity`` (per layer) and ``thickness`` (per layer but the last) or
    ``depth`` (top of each layer, the first 0) in; the response at the 71 gate times
    out (``response`` over ``time``). Options pass through as constants: ``tx_area``,
    ``tx_rx_separation``, ``tx_height``, ``rx_height``, ``response_type``.
``tem1d_two_layer``
    The same for grids of two-layer models: ``rho1``, ``rho2``, ``h1``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..kernel import Output, kernel

__all__ = ["GATE_TIMES", "forward", "tem1d", "tem1d_two_layer"]

_MISSING_PACKAGE = (
    "daskbatch.models.tem1d needs the pytem1d package: pip install 'daskbatch[tem]' (or pip install pytem1d)"
)
_MISSING_RUNTIME = (
    "daskbatch.models.tem1d needs the GNU Fortran runtime libgfortran.so.5, which the TEM1D "
    "library links to. Install it with: apt-get install libgfortran5 (Debian/Ubuntu, as root), "
    "dnf install libgfortran (Fedora/RHEL), or conda install libgfortran5"
)

try:
    import pytem1d  # noqa: F401
except ImportError as e:  # pragma: no cover - the extra is installed in tests
    raise ImportError(_MISSING_PACKAGE) from e
try:
    ctypes.CDLL("libgfortran.so.5")
except OSError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(_MISSING_RUNTIME) from e

#: The 71 gate times of TEM1D, in seconds: 1e-8 s to 0.1 s, 10 per decade.
GATE_TIMES = np.logspace(-8, -1, 71)

_OUTPUTS = {
    "response": Output(
        dims=("time",),
        shape=(GATE_TIMES.size,),
        coords={"time": GATE_TIMES},
        attrs={"long_name": "TEM1D response at the gate times", "units": "V/(A m^2)"},
    )
}


def _setup() -> Any:
    """Load the library once per worker process; returns pytem1d's run function."""
    from pytem1d import run_tem1d

    run_tem1d([100.0, 10.0], [0.0, 50.0])  # loads the shared library now, not mid-block
    return run_tem1d


def forward(
    resistivity: Any,
    thickness: Any = None,
    depth: Any = None,
    *,
    run: Any = None,
    tx_area: float = 314.16,
    tx_rx_separation: float = 0.0,
    tx_height: float = 1.0,
    rx_height: float = 1.0,
    response_type: str = "step",
) -> np.ndarray:
    """The response of one layered model at :data:`GATE_TIMES`.

    Give ``thickness`` (one per layer but the bottom half-space) or ``depth`` (the
    top of each layer, the first 0), not both.
    """
    if (thickness is None) == (depth is None):
        raise ValueError("give either thickness or depth, not both and not neither")
    rho = np.asarray(resistivity, dtype=np.float64)
    if depth is None:
        depth = np.concatenate([[0.0], np.cumsum(np.asarray(thickness, dtype=np.float64))])
    if run is None:
        from pytem1d import run_tem1d as run
    result = run(
        rho,
        np.asarray(depth, dtype=np.float64),
        tx_area=tx_area,
        tx_rx_separation=tx_rx_separation,
        tx_height=tx_height,
        rx_height=rx_height,
        response_type=response_type,
    )
    return np.asarray(result.responses, dtype=np.float64)


@kernel(outputs=_OUTPUTS, setup=_setup, name="tem1d")
def tem1d(
    resistivity,
    thickness=None,
    depth=None,
    state=None,
    tx_area=314.16,
    tx_rx_separation=0.0,
    tx_height=1.0,
    rx_height=1.0,
    response_type="step",
):
    """TEM1D response of one layered model (per sample, not thread-safe)."""
    return forward(
        resistivity,
        thickness,
        depth,
        run=state,
        tx_area=tx_area,
        tx_rx_separation=tx_rx_separation,
        tx_height=tx_height,
        rx_height=rx_height,
        response_type=response_type,
    )


@kernel(outputs=_OUTPUTS, setup=_setup, name="tem1d_two_layer")
def tem1d_two_layer(
    rho1,
    rho2,
    h1,
    state=None,
    tx_area=314.16,
    tx_rx_separation=0.0,
    tx_height=1.0,
    rx_height=1.0,
    response_type="step",
):
    """TEM1D response of a two-layer model ``rho1`` over ``rho2``, top layer ``h1`` thick."""
    return forward(
        [rho1, rho2],
        depth=[0.0, h1],
        run=state,
        tx_area=tx_area,
        tx_rx_separation=tx_rx_separation,
        tx_height=tx_height,
        rx_height=rx_height,
        response_type=response_type,
    )
