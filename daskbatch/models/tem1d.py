"""TEM1D: transient electromagnetic 1-D forward modelling (a compiled Fortran core).

Needs the ``pytem1d`` package (``pip install 'daskbatch[tem]'``) and the GNU Fortran
runtime its library links to (Debian/Ubuntu: ``apt-get install libgfortran5``).
Importing this module checks both and says what to install if one is missing.

The Fortran library keeps global state, so the kernels are *not* declared
thread-safe: daskbatch never runs two of their calls at once in one process. It also
keeps, from its first call, the Hankel filter of that call's loop geometry only, so a
process that mixes central-loop and offset-loop models through ``pytem1d.run_tem1d``
gets wrong numbers; :class:`Library`, which the kernels use, loads one copy of the
library per geometry and is also 10-15% faster per model than ``run_tem1d``.

Kernels
-------
``tem1d``
    ``resistivity`` (per layer) and ``thickness`` (per layer but the last) or
    ``depth`` (top of each layer, the first 0) in; the response at the 71 gate times
    out (``response`` over ``time``). Options pass through as constants, or vary per
    sample as parameters: ``tx_area``, ``tx_rx_separation``, ``tx_height``,
    ``rx_height``, ``response_type``.
``tem1d_two_layer``
    The same for grids of two-layer models: ``rho1``, ``rho2``, ``h1``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import platform
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..kernel import Output, kernel

__all__ = [
    "CENTRAL_LOOP_SEPARATION",
    "GATE_TIMES",
    "Library",
    "forward",
    "library",
    "tem1d",
    "tem1d_two_layer",
]

_MISSING_PACKAGE = (
    "daskbatch.models.tem1d needs the pytem1d package: pip install 'daskbatch[tem]' (or pip install pytem1d)"
)
_MISSING_RUNTIME = (
    "daskbatch.models.tem1d needs the GNU Fortran runtime libgfortran.so.5, which the TEM1D "
    "library links to. Install it with: apt-get install libgfortran5 (Debian/Ubuntu, as root), "
    "dnf install libgfortran (Fedora/RHEL), or conda install libgfortran5"
)

# found, not imported: importing pytem1d imports matplotlib (0.4-0.6 s and ~28 MB per
# process), and the kernels only need its compiled library
_SPEC = importlib.util.find_spec("pytem1d")
if _SPEC is None or not _SPEC.submodule_search_locations:  # pragma: no cover - installed in tests
    raise ImportError(_MISSING_PACKAGE)
_PACKAGE_DIR = Path(next(iter(_SPEC.submodule_search_locations)))
_LIBRARY_NAMES = {"Linux": "libtem1d.so", "Darwin": "libtem1d.dylib", "Windows": "libtem1d.dll"}

#: Array length of the Fortran routine's arguments (``N_ARR`` in ``ARRAYSDIMBL.INC``).
N_ARR = 512
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


_RESPONSE_TYPES = ("step", "impulse", "convolved")
_DEFAULTS: dict[str, Any] = {
    "tx_area": 314.16,
    "tx_rx_separation": 0.0,
    "tx_height": 1.0,
    "rx_height": 1.0,
    "response_type": "step",
}
_OPTION_NAMES = tuple(_DEFAULTS)


@functools.lru_cache(maxsize=64)
def _instrument(
    tx_area: float, tx_rx_separation: float, tx_height: float, rx_height: float, response_type: str
) -> tuple[tuple[float | int, ...], int]:
    """The Fortran call's instrument and response arguments, checked as pytem1d checks them.

    Once per distinct set of options (cached): the per-model work is only the model.
    """
    if response_type not in _RESPONSE_TYPES:
        raise ValueError(f"response_type={response_type!r} is not one of {list(_RESPONSE_TYPES)}")
    if response_type == "convolved":
        raise ValueError(
            "response_type='convolved' needs a waveform, which these kernels do not take; "
            "use 'step' or 'impulse', or call pytem1d.run_tem1d with waveform="
        )
    if not (tx_area > 0 and math.isfinite(tx_area)):
        raise ValueError(f"tx_area={tx_area!r}: the transmitter loop's area must be positive and finite (m²)")
    if not (tx_rx_separation >= 0 and math.isfinite(tx_rx_separation)):
        raise ValueError(
            f"tx_rx_separation={tx_rx_separation!r}: the TX-RX separation must be >= 0 and finite (m)"
        )
    for name, value in (("tx_height", tx_height), ("rx_height", rx_height)):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: heights must be finite (m)")
    # the Fortran arguments TXAREA, RTXRX, IZEROPOS, ISHTX1, ISHTX2, ISHRX1, ISHRX2,
    # HTX1, HTX2, HRX1, HRX2, with pytem1d's defaults for the ones not offered here:
    # not zero-coupled, polarity +1 for the first TX and RX, no second TX or RX
    scalars = (tx_area, tx_rx_separation, 0, 1, 0, 1, 0, tx_height, 0.0, rx_height, 0.0)
    return scalars, _RESPONSE_TYPES.index(response_type)


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None


def _check_model(rho: np.ndarray, depth: np.ndarray, max_layers: int) -> None:
    """pytem1d's checks of a layered model, with the offending value in the message."""
    n = rho.shape[0] if rho.ndim == 1 else -1
    if rho.ndim != 1 or n < 1:
        raise ValueError(f"resistivity must be a 1-D array of at least one layer, got shape {rho.shape}")
    if n > max_layers:
        raise ValueError(f"resistivity has {n} layers; TEM1D takes at most {max_layers}")
    if depth.shape != rho.shape:
        raise ValueError(
            f"depth has shape {depth.shape} but resistivity {rho.shape}: give the top of every layer "
            "(the first 0), or thickness with one value fewer than resistivity"
        )
    for i, r in enumerate(rho.tolist()):
        if not (r > 0 and math.isfinite(r)):
            raise ValueError(f"resistivity[{i}] = {r!r}: resistivities must be positive and finite")
    d = depth.tolist()
    if d[0] != 0:
        raise ValueError(f"depth[0] = {d[0]!r}: the first layer starts at the surface, depth 0")
    for i in range(1, n):
        if not (d[i] > d[i - 1] and math.isfinite(d[i])):
            raise ValueError(
                f"depth[{i}] = {d[i]!r} after depth[{i - 1}] = {d[i - 1]!r}: depths must be finite and "
                "monotonically increasing (every thickness > 0)"
            )


#: TEM1D treats a loop as central (a J1 Hankel filter) below this TX-RX separation, in m.
CENTRAL_LOOP_SEPARATION = 0.01

#: For each geometry (True: central loop), models whose responses are known, at a few
#: gates: ``run_tem1d`` of pytem1d 0.1.2, each computed in a fresh process. They check a
#: library copy when it loads (see :class:`Library`).
_KNOWN: dict[bool, list[tuple[dict[str, Any], dict[int, float]]]] = {
    True: [
        (
            {},
            {
                0: 1.339528354850284e-10,
                20: 1.904467567494448e-12,
                40: 4.6508559743485086e-14,
                60: 2.8752899293469144e-18,
                70: 2.0845965611568606e-20,
            },
        ),
        (
            {"response_type": "impulse", "tx_area": 1000.0, "rx_height": 2.0},
            {
                0: 0.0002722923418909306,
                20: 1.7546019056483177e-06,
                40: 5.322095714412991e-10,
                60: 7.334664113333529e-16,
                70: 2.882611137211346e-19,
            },
        ),
    ],
    False: [
        (
            {"tx_rx_separation": 40.0},
            {
                0: -1.5365616272984132e-12,
                20: 4.407451889019962e-13,
                40: 4.066642432250522e-14,
                60: 2.8732310074268644e-18,
                70: 2.07454757987295e-20,
            },
        ),
        (
            {"tx_rx_separation": 10.0, "response_type": "impulse", "tx_height": 5.0},
            {
                0: 0.0006533236657146261,
                20: 1.4692768134601093e-06,
                40: 4.991626717597168e-10,
                60: 7.312261602603953e-16,
                70: 2.848065408425162e-19,
            },
        ),
    ],
}
_KNOWN_MODEL = (np.array([300.0, 20.0, 1000.0]), np.array([0.0, 25.0, 90.0]))
#: A build of the library for another platform or compiler may differ in the last bits.
_KNOWN_RTOL = 1e-9

_swap_lock = threading.Lock()


_shared_geometry: list[bool] = []  # the geometry given to pytem1d's own library, if ever


def _private_copy(central: bool) -> ctypes.CDLL:
    """A copy of pytem1d's shared library with its own Fortran state (its own SAVE data).

    The copy is a file in a temporary folder (``TMPDIR``), or in ``~/.cache/daskbatch``
    if that folder does not allow loading libraries (``noexec``). If neither works,
    pytem1d's own library is used for the first geometry this process asks for, and
    asking for the other one raises instead of giving wrong numbers.
    """
    src = _PACKAGE_DIR / "lib" / _LIBRARY_NAMES.get(platform.system(), "libtem1d.so")
    problems = []
    for parent in (None, Path.home() / ".cache" / "daskbatch"):
        try:
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="daskbatch-tem1d-", dir=parent) as tmp:
                # a different file is a different library to the dynamic loader: its
                # static data are its own; the file can go once it is mapped
                dst = Path(tmp) / src.name
                shutil.copyfile(src, dst)
                lib = ctypes.CDLL(str(dst))
        except OSError as e:
            problems.append(str(e))
            continue
        lib.tem1d_.restype = None
        return lib
    if not _shared_geometry:
        _shared_geometry.append(central)
    if _shared_geometry[0] == central:
        from pytem1d import core

        return core.load_library()
    kinds = {True: "central-loop", False: "offset-loop"}
    raise RuntimeError(
        f"this process computed {kinds[not central]} models with TEM1D, after which the library "
        f"gives wrong {kinds[central]} responses, and daskbatch could not load a second copy of "
        f"it ({'; '.join(problems)}). Set TMPDIR to a folder that allows loading libraries, or "
        "run the two geometries in separate runs"
    )


def _run_tem1d_on(lib: ctypes.CDLL, rho: Any, depth: Any, **options: Any) -> np.ndarray:
    """``pytem1d.run_tem1d`` itself (its checks and its argument mapping), calling ``lib``."""
    from pytem1d import core, run_tem1d

    if lib.tem1d_.argtypes is None:
        core._setup_tem1d_interface(lib)
    with _swap_lock:
        before, core._lib = core._lib, lib
        try:
            return np.asarray(run_tem1d(rho, depth, **options).responses, dtype=np.float64)
        finally:
            core._lib = before


class Library:
    """The TEM1D Fortran routine, called directly, giving ``run_tem1d``'s numbers.

    Two things differ from calling ``pytem1d.run_tem1d``:

    - **Right answers whatever ran before.** TEM1D computes its Hankel filters on its
      first call and keeps only the one that call used (J1 for a central loop, J0 for
      an offset loop; the other lives on the stack). A process whose first call had one
      geometry gets wrong responses for the other: a central-loop response after an
      offset-loop call is off by a factor of ~250, an offset-loop one after a central
      call by ~11. Here each geometry gets its own copy of the library, loaded on first
      use, so every response equals the one a fresh process computes.
    - **Faster.** ``run_tem1d`` builds four dataclasses, checks them with numpy and
      allocates a fresh 2 MiB derivative buffer on every call: 10-15% of a
      three-layer model's time. Here the same Fortran call reuses its buffers (each
      input buffer is zeroed and refilled, as pytem1d's fresh ones are).

    When a copy is loaded it computes two models whose responses are known (from
    ``run_tem1d`` of pytem1d 0.1.2); if the installed pytem1d's library gives other
    numbers this way (its routine takes other arguments), the copy is used through
    ``run_tem1d`` instead, after a warning: slower, never a wrong number. pytem1d
    itself (and the matplotlib it imports) is only imported then.

    One instance per thread (see :func:`library`): the buffers are its own. The
    kernels still never run two calls at once in one process.
    """

    def __init__(self) -> None:
        n, d = N_ARR, ctypes.c_double
        self.max_layers = n
        self._copies: dict[bool, ctypes.CDLL] = {}  # central loop? -> library copy
        self._direct: dict[bool, bool] = {}  # central loop? -> called here (else run_tem1d)
        self._rho, self._depth = (d * n)(), (d * n)()
        self._chaip, self._tauip, self._powip = (d * n)(), (d * n)(), (d * n)()
        self._xpoly, self._ypoly, self._filt = (d * n)(), (d * n)(), (d * 16)()
        self._twave, self._awave = (d * n)(), (d * n)()
        self._times, self._resp = (d * n)(), (d * n)()
        self._drespout = ((d * n) * n)()  # derivatives: never asked for, never read
        self._zeroed = [
            (a, ctypes.sizeof(a))
            for a in (
                self._rho,
                self._depth,
                self._chaip,
                self._tauip,
                self._powip,
                self._xpoly,
                self._ypoly,
                self._filt,
                self._twave,
                self._awave,
                self._times,
                self._resp,
            )
        ]

    def _copy_for(self, central: bool) -> ctypes.CDLL:
        lib = self._copies.get(central)
        if lib is None:
            lib = self._copies[central] = _private_copy(central)
            # the copy's first calls: its filter is set for this geometry from now on
            direct = True
            for kw, known in _KNOWN[central]:
                options = tuple(kw.get(k, _DEFAULTS[k]) for k in _OPTION_NAMES)
                got = self._call(lib, *_KNOWN_MODEL, _instrument(*options))
                gates = list(known)
                if got.shape != GATE_TIMES.shape or not np.allclose(
                    got[gates], list(known.values()), rtol=_KNOWN_RTOL, atol=0
                ):
                    direct = False
            if not direct:
                import warnings

                from pytem1d import __version__ as version

                warnings.warn(
                    f"pytem1d {version} calls TEM1D differently from what daskbatch expects; "
                    "using pytem1d.run_tem1d (10-15% slower per model)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._direct[central] = direct
        return lib

    @property
    def direct(self) -> dict[bool, bool]:
        """For each geometry loaded so far (True: central loop), whether it is called directly."""
        return dict(self._direct)

    def response(
        self,
        resistivity: Any,
        depth: Any,
        *,
        tx_area: float = 314.16,
        tx_rx_separation: float = 0.0,
        tx_height: float = 1.0,
        rx_height: float = 1.0,
        response_type: str = "step",
    ) -> np.ndarray:
        """The response at the gate times of one model given by its layer tops ``depth``."""
        rho = np.ascontiguousarray(resistivity, dtype=np.float64)
        top = np.ascontiguousarray(depth, dtype=np.float64)
        options = (
            _number("tx_area", tx_area),
            _number("tx_rx_separation", tx_rx_separation),
            _number("tx_height", tx_height),
            _number("rx_height", rx_height),
            str(response_type),
        )
        instrument = _instrument(*options)  # checks the options (once per distinct set)
        _check_model(rho, top, self.max_layers)
        central = options[1] < CENTRAL_LOOP_SEPARATION
        lib = self._copy_for(central)
        if self._direct[central]:
            return self._call(lib, rho, top, instrument)
        return _run_tem1d_on(lib, rho, top, **dict(zip(_OPTION_NAMES, options, strict=True)))

    def _call(
        self, lib: ctypes.CDLL, rho: np.ndarray, top: np.ndarray, instrument: tuple[tuple, int]
    ) -> np.ndarray:
        """The Fortran call, as ``pytem1d.core.call_tem1d`` makes it (``instrument``: see
        :func:`_instrument`)."""
        scalars, iresptype = instrument
        for buf, size in self._zeroed:
            ctypes.memset(buf, 0, size)
        nlay = rho.shape[0]
        ctypes.memmove(self._rho, rho.ctypes.data, 8 * nlay)
        ctypes.memmove(self._depth, top.ctypes.data, 8 * nlay)
        i32, f64, ref = ctypes.c_int32, ctypes.c_double, ctypes.byref
        (area, sep, zero, stx1, stx2, srx1, srx2, htx1, htx2, hrx1, hrx2) = scalars
        ntout = i32(0)
        lib.tem1d_(
            ref(i32(0)),  # IMLM: few-layer model
            ref(i32(nlay)),
            ref(self._rho),
            ref(self._depth),
            ref(i32(0)),  # IMODIP: no IP
            ref(self._chaip),
            ref(self._tauip),
            ref(self._powip),
            ref(f64(area)),
            ref(f64(sep)),
            ref(i32(zero)),
            ref(i32(stx1)),
            ref(i32(stx2)),
            ref(i32(srx1)),
            ref(i32(srx2)),
            ref(f64(htx1)),
            ref(f64(htx2)),
            ref(f64(hrx1)),
            ref(f64(hrx2)),
            ref(i32(0)),  # NPOLY: circular loop
            ref(self._xpoly),
            ref(self._ypoly),
            ref(f64(0.0)),
            ref(f64(0.0)),
            ref(i32(iresptype)),
            ref(i32(0)),  # IDERIV: no derivatives
            ref(i32(0)),  # IREP: no repetition
            ref(i32(0)),  # IWCONV: no waveform convolution
            ref(i32(0)),  # NFILT: no filters
            ref(f64(0.0)),
            ref(self._filt),
            ref(i32(0)),  # NWAVE
            ref(self._twave),
            ref(self._awave),
            ref(ntout),
            ref(self._times),
            ref(self._resp),
            ref(self._drespout),
        )
        if ntout.value <= 0:
            raise RuntimeError("TEM1D returned no data points")
        return np.frombuffer(self._resp, dtype=np.float64, count=ntout.value).copy()


_per_thread = threading.local()


def library() -> Library:
    """This thread's :class:`Library` (created on first use; its library copies load lazily)."""
    lib = getattr(_per_thread, "library", None)
    if lib is None:
        lib = _per_thread.library = Library()
    return lib


def _setup() -> Library:
    """Once per worker process: the buffers; each geometry's library copy loads on first use."""
    return library()


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
    top of each layer, the first 0), not both. ``run`` is what computes it: a
    :class:`Library` (the default: this thread's, see :func:`library`) or
    ``pytem1d.run_tem1d``. They give the same numbers as long as ``run_tem1d`` is
    called with one loop geometry per process (see :class:`Library`).
    """
    if (thickness is None) == (depth is None):
        raise ValueError("give either thickness or depth, not both and not neither")
    rho = np.asarray(resistivity, dtype=np.float64)
    if depth is None:
        depth = np.concatenate([[0.0], np.cumsum(np.asarray(thickness, dtype=np.float64))])
    if run is None:
        run = library()
    options = {
        "tx_area": tx_area,
        "tx_rx_separation": tx_rx_separation,
        "tx_height": tx_height,
        "rx_height": rx_height,
        "response_type": response_type,
    }
    if isinstance(run, Library):
        return run.response(rho, depth, **options)
    result = run(rho, np.asarray(depth, dtype=np.float64), **options)
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
