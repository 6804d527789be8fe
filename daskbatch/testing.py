"""Kernels and helpers for testing daskbatch and code built on it.

The kernels live in the package (not in a test folder) so that worker processes of
any scheduler, and remote workers, can import them by name.

The helpers are for tests of your own kernels and sweeps too:

- :func:`assert_stores_identical`: two stores hold the same results, bit for bit;
- :func:`damage_chunk`: truncate, garble or delete one chunk file of a store;
- :func:`run_killed` and :func:`run_killed_and_resumed`: run a command (the
  ``daskbatch`` CLI, :func:`daskbatch_command`, or a script) in a subprocess, kill it
  at some moment, then resume it;
- :func:`blocks_done`: how many blocks of a store are committed, for waiting on a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .kernel import Output, kernel

__all__ = [
    "Killed",
    "KilledAndResumed",
    "affine",
    "assert_stores_identical",
    "blocks_done",
    "concurrency_probe",
    "crash_on",
    "curve",
    "damage_chunk",
    "daskbatch_command",
    "fail_on_multiples",
    "flaky",
    "hang_on",
    "kill_worker_once",
    "misbehave",
    "noise",
    "run_killed",
    "run_killed_and_resumed",
    "slow_square",
    "tagged",
    "vector_affine",
    "vector_hang",
    "wrong_shape",
]


@kernel(outputs={"y": Output()}, threadsafe=True)
def affine(a, b=0.0, scale=1.0):
    """``y = scale * a + b`` per sample."""
    return scale * a + b


@kernel(outputs={"y": Output()}, per_sample=False, threadsafe=True)
def vector_affine(a, b=0.0, scale=1.0):
    """``y = scale * a + b`` on a whole block; raises if any ``a`` is negative."""
    a = np.asarray(a)
    if np.any(a < 0):
        raise ValueError("negative a in block")
    return scale * a + b


@kernel(
    outputs={
        "curve": Output(dims=("t",), shape=(5,), coords={"t": np.linspace(0.0, 1.0, 5)}),
        "total": Output(),
        "npos": Output(dtype="int64"),
    }
)
def curve(x, w):
    """Several outputs, one with a core dim; ``w`` is a vector parameter."""
    t = np.linspace(0.0, 1.0, 5)
    c = x * np.exp(-t) + np.sum(w) * t
    return {"curve": c, "total": float(c.sum()), "npos": int(np.sum(np.asarray(w) > 0))}


@kernel(outputs={"y": Output()})
def fail_on_multiples(i, k=7):
    """Raises for every ``i`` that is a non-zero multiple of ``k``; else returns ``i``."""
    if int(i) % k == 0 and int(i) != 0:
        raise RuntimeError(f"boom at i={int(i)}")
    return float(i)


@kernel(outputs={"y": Output(dims=("t",), shape=(3,))})
def wrong_shape(x):
    """Declares 3 values per sample but returns 4 for x >= 0.5."""
    return np.zeros(4 if x >= 0.5 else 3)


_active = 0
_active_lock = threading.Lock()


@kernel(outputs={"overlap": Output(dtype="int64"), "pid": Output(dtype="int64")})
def concurrency_probe(x, sleep=0.002):
    """Reports how many calls ran at once in this process (1 if never overlapped).

    Not declared thread-safe, so daskbatch must never run two calls at once in one
    process: ``overlap`` stays 1 on every scheduler.
    """
    global _active
    with _active_lock:
        _active += 1
        seen = _active
    time.sleep(sleep)
    with _active_lock:
        _active -= 1
    return {"overlap": seen, "pid": os.getpid()}


@kernel(outputs={"y": Output()}, threadsafe=True)
def slow_square(x, delay=0.0):
    """``x**2`` after sleeping ``delay`` seconds: a sweep slow enough to interrupt."""
    time.sleep(delay)
    return x * x


# --------------------------------------------------------------------------- faults
# Kernels that do real damage to the process that runs them, for reliability tests.


@kernel(outputs={"y": Output()})
def kill_worker_once(i, flag="", at=0):
    """``y = 2 i``; at sample ``i == at``, if there is no file at ``flag``, creates it
    and SIGKILLs its own process: one worker death in the middle of a run."""
    if flag and int(i) == at and not os.path.exists(flag):
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def crash_on(i, bad=(), how="segfault"):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` crash the process every
    time: a segmentation fault (reading address 0), ``os.abort()`` (``how="abort"``,
    SIGABRT, as a failed assertion in C) or ``os._exit(3)``."""
    if int(i) in set(bad):
        if how == "segfault":
            ctypes.string_at(0)
        if how == "abort":
            os.abort()
        os._exit(3)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def hang_on(i, bad=(), how="sleep", delay=0.0):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` never return: ``sleep``
    blocks in C like native code does (an exception cannot stop it), ``spin`` loops in
    Python. The others sleep ``delay`` seconds."""
    if int(i) in set(bad):
        if how == "sleep":
            time.sleep(10**6)
        while True:
            pass
    time.sleep(delay)
    return 2.0 * float(i)


@kernel(outputs={"y": Output()})
def flaky(i, folder="", times=1):
    """``y = 2 i`` after failing ``times`` times per sample (attempts counted in files
    under ``folder``): a transient error, like a licence server that is busy."""
    marker = Path(folder) / f"{int(i)}.attempts"
    seen = int(marker.read_text()) if marker.exists() else 0
    if seen < times:
        marker.write_text(str(seen + 1))
        raise ConnectionError(f"transient failure {seen + 1} of sample {int(i)}")
    return 2.0 * float(i)


@kernel(outputs={"v": Output(dims=("k",), shape=(2048,))}, threadsafe=True)
def noise(x, delay=0.0):
    """2,048 pseudo-random floats per sample, seeded by ``x``: incompressible output,
    so that writing a block takes a while; ``delay`` seconds of sleep per sample."""
    time.sleep(delay)
    return np.random.default_rng(int(abs(x) * 1e6)).random(2048)


@kernel(outputs={"y": Output()}, per_sample=False)
def vector_hang(i, bad=()):
    """``y = 2 i`` on a whole block, but a block that holds any ``i`` in ``bad`` blocks
    in C forever: a vectorised core that hangs."""
    i = np.asarray(i)
    if np.isin(i, list(bad)).any():
        time.sleep(10**6)
    return 2.0 * i


@kernel(outputs={"y": Output()}, threadsafe=True)
def tagged(kind, x):
    """``y = len(kind) + x``: a string parameter (a Choice of labels) and a number."""
    return float(len(str(kind))) + float(x)


def _forever() -> None:
    while True:
        time.sleep(0.05)


@kernel(outputs={"y": Output()})
def misbehave(i, bad=(), how="exit", code=3, mib=0):
    """``y = 2 i``, but the samples whose ``i`` is in ``bad`` misbehave every time:
    ``exit`` calls ``sys.exit(code)``, ``interrupt`` raises ``KeyboardInterrupt``,
    ``os_exit`` calls ``os._exit(code)``, ``abort`` calls ``os.abort()``, ``thread``
    starts a non-daemon thread that never ends (and returns normally), ``memory``
    touches ``mib`` MiB and holds them for two seconds."""
    if int(i) in set(bad):
        if how == "exit":
            sys.exit(code)
        if how == "interrupt":
            raise KeyboardInterrupt
        if how == "os_exit":
            os._exit(code)
        if how == "abort":
            os.abort()
        if how == "thread":
            threading.Thread(target=_forever, name=f"left-behind-{int(i)}").start()
        if how == "memory":
            block = np.ones(int(mib) * 2**20 // 8)
            time.sleep(2.0)
            return float(block[0])
    return 2.0 * float(i)


@kernel(outputs={"y": Output()}, per_sample=False, threadsafe=True)
def logged_sizes(a, log=""):
    """``y = a`` on a whole block; appends the number of samples of each call to ``log``."""
    a = np.asarray(a)
    if log:
        with open(log, "a") as f:
            f.write(f"{a.size}\n")
    return a * 1.0


# --------------------------------------------------------------------------- helpers for tests
# What tests of daskbatch (and of a user's own kernels) need again and again: comparing
# two stores, damaging one, killing a run and resuming it.


def _top_arrays(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The store's data arrays: every top-level Zarr array (outputs, parameters,
    coordinates, ``status``), not daskbatch's own bookkeeping (names starting ``_``)."""
    import zarr

    root = zarr.open_group(str(store), mode="r", use_consolidated=False)
    with warnings.catch_warnings():  # zarr names the store's non-Zarr folder (.daskbatch)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        members = list(root.members())
    return {name: node for name, node in members if isinstance(node, zarr.Array) and not name.startswith("_")}


def _same_bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per element: True where ``x`` and ``y`` hold the same bits (strings: equal)."""
    if x.dtype.kind in "OTUS" or x.dtype.hasobject:
        return np.asarray(x == y, dtype=bool).reshape(x.shape)
    item = x.dtype.itemsize
    xb = np.ascontiguousarray(x).view(np.uint8).reshape((*x.shape, item))
    yb = np.ascontiguousarray(y).view(np.uint8).reshape((*y.shape, item))
    return (xb == yb).all(axis=-1)


def _first_difference(name: str, x: np.ndarray, y: np.ndarray) -> str | None:
    if x.shape != y.shape:
        return f"{name!r}: shape {x.shape} != {y.shape}"
    if x.dtype != y.dtype:
        return f"{name!r}: dtype {x.dtype} != {y.dtype}"
    same = _same_bits(x, y)
    if same.all():
        return None
    where = tuple(int(i) for i in np.argwhere(~same)[0])
    n = int((~same).sum())
    return f"{name!r}: {n} of {same.size} values differ, first at {where}: {x[where]!r} != {y[where]!r}"


#: Provenance that decides what a store computes: compared with ``provenance=True``.
_PROVENANCE_KEYS = ("kernel", "space", "seed", "constants", "layout")


def assert_stores_identical(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    blocks: bool = True,
    provenance: bool = False,
) -> None:
    """Raise :class:`AssertionError` unless stores ``a`` and ``b`` hold the same results.

    Compared:

    - the same data arrays (every top-level Zarr array: outputs, parameters,
      coordinates and ``status`` as written on disk), with the same shape, dtype, dims,
      fill value and attributes, and every value **bit for bit** (``-0.0`` differs
      from ``0.0``, NaNs of other bits differ);
    - the status of every sample as :func:`daskbatch.open` shows it (committed blocks
      only), and the counts per status that :func:`daskbatch.status` reports;
    - with ``blocks=True`` (the default), the same chunking and the same committed
      blocks. Pass ``blocks=False`` to compare two runs of one sweep made with other
      ``chunk_size`` values;
    - with ``provenance=True``, the stored description of what was computed (kernel
      and its code, space, seed, constants, layout). Times, hosts, pids, paths and the
      run history are never compared.

    Only daskbatch's public store API and the Zarr arrays are read, not its internal
    bookkeeping. The message names every difference, with the first differing value
    of each array.

    Examples
    --------
    >>> import numpy as np, tempfile, daskbatch as db
    >>> from daskbatch.testing import affine, assert_stores_identical
    >>> d = tempfile.mkdtemp()
    >>> for name in ("a.zarr", "b.zarr"):
    ...     _ = db.run(affine, db.Grid(a=np.arange(6.0)), f"{d}/{name}", cluster="serial",
    ...                chunk_size=2, progress=False)
    >>> assert_stores_identical(f"{d}/a.zarr", f"{d}/b.zarr")
    """
    from .store import Store

    problems: list[str] = []
    arrays_a, arrays_b = _top_arrays(a), _top_arrays(b)
    if sorted(arrays_a) != sorted(arrays_b):
        problems.append(f"arrays differ: {sorted(arrays_a)} != {sorted(arrays_b)}")
    for name in sorted(set(arrays_a) & set(arrays_b)):
        x, y = arrays_a[name], arrays_b[name]
        meta = {
            "dims": (x.metadata.dimension_names, y.metadata.dimension_names),
            "attributes": (x.attrs.asdict(), y.attrs.asdict()),
            "fill value": (repr(x.fill_value), repr(y.fill_value)),
        }
        if blocks:
            meta["chunks"] = (x.chunks, y.chunks)
        for what, (u, v) in meta.items():
            if u != v:
                problems.append(f"{name!r}: {what} {u!r} != {v!r}")
        values = []
        for which, arr in (("a", x), ("b", y)):
            try:
                values.append(np.asarray(arr[...]))
            except Exception as e:  # a damaged chunk: a difference, named
                problems.append(f"{name!r}: cannot be read in {which} ({type(e).__name__}: {e})")
        diff = _first_difference(name, *values) if len(values) == 2 else None
        if diff:
            problems.append(diff)
    if blocks:
        done_a, done_b = Store(a).done_mask(), Store(b).done_mask()
        if done_a.shape != done_b.shape:
            problems.append(f"blocks: {done_a.shape} != {done_b.shape}")
        elif not np.array_equal(done_a, done_b):
            only_a = [tuple(int(i) for i in ix) for ix in np.argwhere(done_a & ~done_b)]
            only_b = [tuple(int(i) for i in ix) for ix in np.argwhere(done_b & ~done_a)]
            problems.append(f"committed blocks differ: only in a {only_a[:10]}, only in b {only_b[:10]}")
    from . import open as open_store
    from . import status

    counts_a, counts_b = status(a).samples, status(b).samples
    if counts_a != counts_b:
        problems.append(f"sample counts (daskbatch.status) differ: {counts_a} != {counts_b}")
    try:
        diff = _first_difference(
            "status (committed)",
            np.asarray(open_store(a)["status"].values),
            np.asarray(open_store(b)["status"].values),
        )
    except Exception as e:  # a damaged status chunk or record
        diff = f"status (committed): cannot be read ({type(e).__name__}: {e})"
    if diff:
        problems.append(diff)
    if provenance:
        info_a, info_b = Store(a).require_info(), Store(b).require_info()
        for key in _PROVENANCE_KEYS:
            if info_a.get(key) != info_b.get(key):
                problems.append(f"provenance {key!r}: {info_a.get(key)!r} != {info_b.get(key)!r}")
        code_a = (info_a.get("kernel_code") or {}).get("sha256")
        code_b = (info_b.get("kernel_code") or {}).get("sha256")
        if code_a != code_b:
            problems.append(f"provenance: kernel code {code_a} != {code_b}")
    if problems:
        raise AssertionError(f"stores {str(a)!r} and {str(b)!r} differ:\n  " + "\n  ".join(problems))


def damage_chunk(
    store: str | os.PathLike[str],
    array: str,
    block: int | Sequence[int] = 0,
    *,
    how: str = "truncate",
    keep: int | None = None,
    seed: int = 0,
) -> Path:
    """Damage the chunk file that holds ``block`` of ``array`` in a store; return its path.

    Every array of a store is chunked like the blocks along the batch dims (and whole
    along its other dims), so ``block`` (an int for a one-dim space, else one index per
    batch dim) is the chunk's index along the leading dims. ``array`` is a path in the
    Zarr group (``"y"``, ``"status"``).

    ``how``:

    - ``"truncate"``: keep the first ``keep`` bytes (Python slice rules: ``-1`` drops
      the last byte; default: half the file);
    - ``"garbage"``: random bytes of the same size (from ``seed``);
    - ``"zeros"``: zero bytes of the same size;
    - ``"delete"``: remove the file.

    Examples
    --------
    >>> import numpy as np, tempfile, daskbatch as db
    >>> from daskbatch.testing import affine, damage_chunk
    >>> store = tempfile.mkdtemp() + "/s.zarr"
    >>> _ = db.run(affine, db.Grid(a=np.arange(6.0)), store, cluster="serial", chunk_size=2,
    ...            progress=False)
    >>> path = damage_chunk(store, "y", block=1, how="garbage")
    >>> path.relative_to(store).as_posix()
    'y/c/1'
    """
    import zarr

    node = zarr.open_group(str(store), mode="r", use_consolidated=False)[array]
    if not isinstance(node, zarr.Array):
        raise ValueError(f"damage_chunk: {array!r} is a group, not an array")
    index = (int(block),) if isinstance(block, int | np.integer) else tuple(int(i) for i in block)
    if len(index) > node.ndim:
        raise ValueError(f"damage_chunk: block {index} has more indices than {array!r} has dims")
    coords = index + (0,) * (node.ndim - len(index))
    path = Path(store, *array.split("/"), *node.metadata.encode_chunk_key(coords).split("/"))
    if not path.is_file():
        raise FileNotFoundError(f"damage_chunk: {array!r} has no chunk file for block {index} ({path})")
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2 if keep is None else keep])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(seed).bytes(len(data)))
    elif how == "zeros":
        path.write_bytes(b"\0" * len(data))
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(f"damage_chunk: how={how!r} must be 'truncate', 'garbage', 'zeros' or 'delete'")
    return path


def blocks_done(store: str | os.PathLike[str]) -> int:
    """How many blocks of ``store`` are committed now; 0 while it does not exist yet or
    cannot be read (being created). Takes no lock, so it can poll a running store.

    Examples
    --------
    >>> from daskbatch.testing import blocks_done
    >>> blocks_done("/nonexistent/store.zarr")
    0
    """
    from .store import Store

    try:
        return int(Store(store).done_mask().sum())
    except Exception:
        return 0


def daskbatch_command(*args: str) -> list[str]:
    """The command line of the ``daskbatch`` command of this Python, with ``args``.

    The ``daskbatch`` script next to this interpreter when it is installed, else
    ``python -m daskbatch.cli``.

    Examples
    --------
    >>> daskbatch_command("status", "s.zarr")[-2:]
    ['status', 's.zarr']
    """
    exe = Path(sys.executable).with_name("daskbatch")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "daskbatch.cli"]
    return [*base, *args]


@dataclass(frozen=True)
class Killed:
    """How a command that :func:`run_killed` signalled ended."""

    #: its exit code (``-9`` when SIGKILL ended it; 130 for daskbatch's own Ctrl-C exit)
    returncode: int
    stdout: str
    stderr: str
    #: whether ``until()`` became true before the wait ran out (True without ``until``)
    caught: bool
    #: whether the command was still running when the signal was sent
    signalled: bool
    #: whether processes of its process group (workers) outlived it (then SIGKILLed)
    outlived: bool
    #: seconds from the start to the signal
    seconds: float

    @property
    def lines(self) -> list[str]:
        """The non-blank lines of its stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass(frozen=True)
class KilledAndResumed:
    """What :func:`run_killed_and_resumed` did: the kills, then the resumed command."""

    killed: list[Killed]
    resumed: subprocess.CompletedProcess


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux; True where unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return True
    return bool(int(caught.split()[1], 16) & (1 << (int(signum) - 1)))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_killed(
    command: Sequence[str],
    *,
    until: Callable[[], bool] | None = None,
    delay: float = 0.0,
    signum: int = signal.SIGKILL,
    group: bool = True,
    ready_signal: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    wait: float = 60.0,
    poll: float = 0.01,
    timeout: float = 90.0,
    group_timeout: float = 10.0,
) -> Killed:
    """Start ``command`` in a subprocess, send it ``signum`` at some moment, and wait
    for it to end.

    The command runs in a session (process group) of its own. The moment is:
    once it catches ``ready_signal`` (when given; e.g. ``signal.SIGTERM``, which the
    ``daskbatch`` command catches once its imports are done), then once ``until()``
    returns true (polled every ``poll`` seconds, for up to ``wait`` seconds, or until
    the command ends by itself), then ``delay`` seconds later. The signal goes to the
    whole group (``group=True``, as a terminal's Ctrl-C or a batch system's kill) or to
    the command's process alone (``group=False``: its worker processes must then
    follow on their own). Once the command has ended, any process left in its group
    after ``group_timeout`` seconds is killed and reported in ``outlived``.

    Output is collected in files, so a talkative command cannot block on a full pipe.
    Raises :class:`AssertionError` if the command has not ended ``timeout`` seconds
    after the signal (it is then killed).

    Examples
    --------
    >>> import signal, sys
    >>> from daskbatch.testing import run_killed
    >>> k = run_killed([sys.executable, "-c", "import time; time.sleep(60)"], delay=0.2)
    >>> k.returncode == -signal.SIGKILL, k.signalled
    (True, True)
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
        try:
            if ready_signal is not None:
                deadline = time.monotonic() + wait
                while proc.poll() is None and not _catches(proc.pid, ready_signal):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(poll)
            caught = True
            if until is not None:
                deadline = time.monotonic() + wait
                caught = bool(until())
                while not caught and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(poll)
                    caught = bool(until())
            if delay > 0:
                time.sleep(delay)
            seconds = time.monotonic() - t0
            signalled = proc.poll() is None
            try:
                if group:
                    os.killpg(proc.pid, signum)
                else:
                    os.kill(proc.pid, signum)
            except ProcessLookupError:
                signalled = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{command[0]} did not end within {timeout:g} s of signal {signal.Signals(signum).name}"
                ) from None
            deadline = time.monotonic() + group_timeout
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            outlived = _group_alive(proc.pid)
        finally:
            if proc.poll() is None or _group_alive(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return Killed(proc.returncode, stdout, stderr, caught, signalled, outlived, seconds)


def run_killed_and_resumed(
    command: Sequence[str],
    resume: Sequence[str] | None = None,
    *,
    times: int = 1,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    **kill: Any,
) -> KilledAndResumed:
    """Run ``command`` and kill it (:func:`run_killed`, with the ``kill`` options),
    ``times`` times over, then run ``resume`` (by default ``command`` again) to its end.

    Returns the kills and the resumed command's
    :class:`~subprocess.CompletedProcess` (text output). Compare the store with an
    uninterrupted run's with :func:`assert_stores_identical`.

    Examples
    --------
    A sweep killed once three blocks are committed, then resumed::

        r = run_killed_and_resumed(
            daskbatch_command("run", "sweep.toml", "--no-progress"),
            daskbatch_command("resume", "sweep.zarr", "--no-progress"),
            until=lambda: blocks_done("sweep.zarr") >= 3,
        )
        assert r.resumed.returncode == 0, r.resumed.stderr
        assert_stores_identical("sweep.zarr", "reference.zarr")
    """
    killed = [run_killed(command, cwd=cwd, env=env, **kill) for _ in range(int(times))]
    resumed = subprocess.run(
        list(resume if resume is not None else command),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return KilledAndResumed(killed, resumed)
