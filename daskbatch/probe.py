"""The probe: the first samples run once before a run starts.

It checks the kernel's outputs against their spec (a wrong shape or dtype fails
here, not in a worker hours later) and measures the seconds per sample that
``chunk_size="auto"`` sizes blocks by. It runs where a crash cannot take the driver
with it: in a child process, or on a worker of a running cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import config
from .chunking import plan_block_shape
from .cluster import ClusterSpec, prestart
from .codeid import modules_used
from .errors import KernelCodeError, sample_label
from .kernel import STATUS, BlockResult, Kernel
from .log import logger
from .space import Space

__all__ = ["measure", "probe"]


def _setting(name: str) -> float:
    return config.get(f"probe.{name}")  # type: ignore[call-overload]


def _first_samples(space: Space, n: int) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    """The first ``n`` samples (or so) of ``space``: their block shape and parameters."""
    shape = plan_block_shape(space.batch_dims, space.batch_shape, n, n_workers=1)
    params = {}
    for name, values in space.block(tuple(slice(0, b) for b in shape)).items():
        p = space.params[name]
        if p.is_axis:
            axis = [1] * len(space.batch_dims)
            axis[space.batch_dims.index(name)] = -1
            values = values.reshape(axis)
        params[name] = values
    return shape, params


def measure(
    spec: ClusterSpec,
    kernel: Kernel,
    space: Space,
    constants: Any,
    timeout: float | None,
    cost: bool = True,
    keep: list[Any] | None = None,
    budget: bool = False,
) -> float | None:
    """Probe the first samples (checking their outputs); return seconds per sample.

    The first probe takes ``daskbatch.probe.samples`` samples (16); on worker
    processes at most a twentieth of the run's. A vectorised core called on 16
    samples measures mostly its call overhead, so when that call was quick and
    ``cost`` is wanted (``chunk_size="auto"`` sizes blocks by it) a second probe
    gives the cost per sample. It never repeats a large
    part of the work: it takes at most ``daskbatch.probe.vector-samples`` samples
    (16,384), a twentieth of the run's, and as many as the first call says fit in
    about ``daskbatch.probe.seconds`` (0.5 s). None if the probe could not finish.
    ``keep`` (a list) gets ``(block shape, BlockResult)`` of the first probe, whose
    ok samples a run in this process keeps instead of computing them again.

    On worker processes (or with ``budget``: ``cluster="auto"``'s probe, before it
    knows where the run goes), a per-sample kernel's first probe starts no sample once
    its samples took ``daskbatch.probe.quick-seconds`` (after four): slow samples are
    measured well by a few, and the workers wait for the probe.
    """
    # the probe's samples are computed again by their block: on worker processes, which
    # isolate a sample that ends its process anyway, at most a twentieth of the run's;
    # in this process all of them, since a sample that ends its process would end this one
    n_first = min(int(_setting("samples")), space.size)
    if not spec.in_driver:
        n_first = max(1, min(n_first, math.ceil(space.size / 20)))
    shape, params = _first_samples(space, n_first)
    # a per-sample kernel's probe stops once its samples took about quick-seconds
    timed = kernel.per_sample and (budget or not spec.in_driver)
    stop = _setting("quick-seconds") if timed else None
    first = probe(spec, kernel, params, shape, constants, timeout, space, stop_after=stop)
    if first is None:
        return None
    refuse_broken_code(kernel, first, params)
    if keep is not None:  # the first samples' results, for a run in this process to keep
        keep.append((shape, first))
    n_first = max(1, int((first.status != STATUS["pending"]).sum()))
    quick = first.seconds < _setting("quick-seconds")
    if not quick and not kernel.per_sample and cost:
        # a slow first call may be the kernel's imports and set-up: once more, warm
        again = probe(spec, kernel, params, shape, constants, timeout, space)
        if again is not None and again.seconds < first.seconds:
            first = again
            quick = first.seconds < _setting("quick-seconds")
    seconds = first.seconds / n_first
    if cost and not kernel.per_sample and quick:
        # the first call's time over its samples overestimates the cost of one (it is
        # mostly call overhead), so this many samples take at most the time budget
        budget = _setting("seconds") / max(seconds, 1e-9)
        n = int(min(_setting("vector-samples"), space.size // 20, budget))
        if n > 4 * n_first:
            shape, params = _first_samples(space, n)
            second = probe(spec, kernel, params, shape, constants, timeout, space)
            if second is not None:
                seconds = second.seconds / math.prod(shape)
    return seconds


#: errors a kernel's code raises whatever its inputs: a name misspelled, a module or name
#: that cannot be imported (when every input the probe varied gives the same one)
CODE_ERRORS = frozenset({"NameError", "ImportError", "ModuleNotFoundError"})


def refuse_broken_code(kernel: Kernel, first: BlockResult, params: Mapping[str, Any]) -> None:
    """:class:`~daskbatch.errors.KernelCodeError` when every sample of the probe failed
    with one and the same such error (:data:`CODE_ERRORS`) while every parameter took
    more than one value among them: every other sample would fail the same way, and a
    run would spend its allocation recording it. Otherwise (another error, some samples
    ok, a parameter the probe's samples share: a grid's outer axis, whose other values
    may take another branch) the samples' failures are recorded, as always."""
    done = (first.status != STATUS["pending"]).reshape(-1)
    if int(done.sum()) < 2 or (first.status.reshape(-1)[done] == STATUS["ok"]).any():
        return
    kinds = {(kind, message) for _, _, kind, message, _ in first.failures.entries()}
    if len(first.failures) != int(done.sum()) or len(kinds) != 1 or next(iter(kinds))[0] not in CODE_ERRORS:
        return
    for values in params.values():  # per sample, or a grid's axis values in the block
        flat = np.asarray(values).reshape(-1)
        if len({str(v) for v in (flat[done] if flat.size == done.size else flat)}) < 2:
            return  # the probe did not vary it: another of its values may not fail
    records = first.records()
    r = records[0] if records else None
    kind, message = next(iter(kinds))
    where = f" at {r.where}" if r is not None and r.where else ""
    raise KernelCodeError(
        f"kernel {kernel.identity!r} raised {kind}: {message}{where} on every one of its first "
        f"{int(done.sum())} samples: a fault of its code, not of a sample's inputs. Fix it and run again "
        "(nothing was computed or written)"
    )


def probe(
    spec: ClusterSpec,
    kernel: Kernel,
    params: Any,
    shape: tuple[int, ...],
    constants: Any,
    timeout: float | None,
    space: Space | None = None,
    stop_after: float | None = None,
) -> BlockResult | None:
    """Run the first samples once, before anything starts: outputs that break their spec
    raise here. Returns None when the probe could not finish (see below). With
    ``stop_after``, a per-sample kernel's probe may leave the last samples pending
    (:meth:`~daskbatch.kernel.Kernel.run_block`).

    The probe runs in a child process, so that a sample that ends its process (a
    segfault in a compiled core, ``os._exit``, a Fortran ``STOP``) or hangs past
    ``timeout`` cannot take this process with it. With worker processes the child is
    forked from daskbatch's forkserver, and the run then goes on without the probe's
    figures and isolates that sample like any other. With ``"serial"`` and
    ``"threads"`` the child is a fork of this process (from the forkserver when this
    process runs other threads and has one already; without one, as in a notebook that
    has not run on worker processes yet, the probe runs here: starting a forkserver would
    cost about a second per run), and a sample that ends its process stops the run
    with :class:`~daskbatch.cluster.KernelCrashError` naming it: the run would run it
    in this process. A kernel that cannot be pickled is probed here then.

    With a cluster that is already running (a ``Client``), or the local cluster the
    run has just started (``spec.client`` set), the probe is a task on one of its
    workers instead: they have the kernel's module loaded already (a fresh
    process would import it again: a second or more for cores that import plotting
    libraries), and a worker that dies is restarted by its nanny.
    """
    if sys.platform == "win32":
        return kernel.probe(params, shape, constants, timeout=timeout, stop_after=stop_after)
    if spec.client is not None and (spec.probe_on_worker or spec.starts_cluster):
        # a cluster already running, or the one this run has just started
        ship = not spec.imports_like_driver  # daskbatch's own workers import what this process does
        res = _probe_on_worker(spec.client, kernel, params, shape, constants, timeout, ship, stop_after)
        if res is not False:
            return res
    import multiprocessing

    import cloudpickle

    from .lock import threads_besides_heartbeats

    in_driver = spec.in_driver
    args = (kernel, dict(params), shape, dict(constants), timeout, stop_after)
    alone = threads_besides_heartbeats() == 1  # a store lock's heartbeat waits for a fork
    if in_driver and not (alone or _forkserver_running()):
        # a driver with other threads (a notebook) that has no forkserver yet: starting
        # one would cost about a second per run; the run computes in this process anyway
        return kernel.probe(params, shape, constants, timeout=timeout)
    if (in_driver or spec.forks_driver) and sys.platform.startswith("linux") and alone:
        # a fork of this process: quick, and the kernel need not be picklable. Only
        # with no other thread running, which a fork could catch holding a lock.
        ctx = multiprocessing.get_context("fork")
        payload: Any = args
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            with contextlib.suppress(Exception):
                stream.flush()
    else:
        try:
            payload = cloudpickle.dumps(args)
        except Exception:
            if in_driver:  # a kernel or constants that cannot leave this process
                return kernel.probe(params, shape, constants, timeout=timeout)
            raise
        modules = [kernel.module, *modules_used(kernel)]
        prestart(ClusterSpec("processes", None) if in_driver or spec.forks_driver else spec, modules)
        ctx = multiprocessing.get_context("forkserver")
    got = _run_child(ctx, payload, shape, timeout, spec, in_driver, space)
    if got is None:
        return None
    kind, value = got
    if kind == "unloadable":
        if in_driver:  # the run computes in this process anyway
            return kernel.probe(params, shape, constants, timeout=timeout)
        logger.warning(
            f"a fresh process could not load the kernel to probe it ({value}); going on without the probe"
        )
        return None
    if kind == "error":
        raise value
    return value


def _run_child(
    ctx: Any,
    payload: Any,
    shape: tuple[int, ...],
    timeout: float | None,
    spec: ClusterSpec,
    in_driver: bool,
    space: Space | None = None,
) -> tuple[str, Any] | None:
    """Start the probe's child and wait for its answer; None when it could not finish.

    A sample that ends the child stops the run when the run would compute in this
    process (``in_driver``): it would end this one too.
    """
    import cloudpickle

    from .kernel import TIMEOUT_EXIT_CODE

    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_probe_child, args=(payload, send), daemon=True, name="daskbatch-probe")
    with _without_main_module():  # a forked child must not run the user's script again
        child.start()
    send.close()
    n = math.prod(shape)
    limit = None if timeout is None else 5.0 + timeout * n
    deadline = None if limit is None else time.monotonic() + limit
    running = None  # the position of the sample the child is running
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not receive.poll(wait):
                child.kill()
                logger.warning(f"the probe of the first samples ran past {limit:g} s; going on without it")
                return None
            kind, value = cloudpickle.loads(receive.recv_bytes())
            if kind != "sample":
                break
            running = value
    except (EOFError, OSError):
        child.join()
        who = f"one of the first {n} samples"
        if running is not None:  # the probe's samples are the first block at the origin
            pos = np.unravel_index(running, shape)
            if space is None:
                who = "sample " + ", ".join(str(int(i)) for i in pos)
            else:
                who = sample_label(space, int(np.ravel_multi_index(pos, space.batch_shape)))
        code = child.exitcode
        if code == TIMEOUT_EXIT_CODE and timeout is not None:
            logger.warning(f"probe {who} ran past the timeout of {timeout:g} s; going on without the probe")
            return None
        how = _describe_exit(code)
        if in_driver:
            from .cluster import KernelCrashError

            raise KernelCrashError(
                f"{who} ended the process that ran it ({how}) when the first {n} samples were "
                f"tried in a separate process; with cluster={spec.name!r} it would end this one. "
                "Fix the kernel, or use cluster='local', which isolates such a sample and marks "
                "it crashed"
            ) from None
        logger.warning(f"probe {who} ended the process that ran it ({how}); going on without the probe")
        return None
    finally:
        receive.close()
        if sys.exc_info()[0] is not None and child.is_alive():  # stopped (SIGTERM, Ctrl-C): no wait
            child.kill()
        child.join(timeout=5)
    return kind, value


def _forkserver_running() -> bool:
    """Whether this process has a multiprocessing forkserver already (daskbatch's, say)."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None) is not None


def _describe_exit(code: int | None) -> str:
    """What a process's exit code says about how it ended."""
    import signal

    if code is None:
        return "it is still running"
    if code < 0:
        name = {signal.SIGSEGV: "a segfault", signal.SIGABRT: "an abort", signal.SIGKILL: "SIGKILL"}
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by {sig.name}" + (f": {name[sig]}" if sig in name else "")
    return f"exit code {code}: os._exit or exit() called by the kernel or its native code"


@contextlib.contextmanager
def _without_main_module():
    """While inside, processes started by multiprocessing do not import the main script.

    A spawned or forkserver child runs the script that started this process again
    (under ``__mp_main__``) so that objects defined there unpickle; the probe's
    payload is pickled by value and needs nothing from it, and a script that calls
    ``daskbatch.run`` without an ``if __name__ == "__main__":`` guard would start its
    whole work again in the child.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original


def _probe_on_worker(
    client: Any,
    kernel: Kernel,
    params: Any,
    shape: tuple[int, ...],
    constants: Any,
    timeout: float | None,
    ship: bool = True,
    stop_after: float | None = None,
) -> BlockResult | bool | None:
    """The probe as a task pinned to one worker of a running cluster.

    Pinned, so that a probe that ends its worker (a crash, or a sample past the
    timeout) is not tried again on the next worker: the driver sees the worker leave
    and goes on without the probe. None then; ``False`` when there is no worker.
    """
    from .cluster import kernel_shipped

    workers = sorted(client.nthreads())
    if not workers:
        return False
    n = math.prod(shape)
    addr = workers[0]
    where = f"cluster at {client.scheduler.address}"
    shipped = kernel_shipped(client, kernel, where) if ship else contextlib.nullcontext()
    with shipped:  # by value if the workers cannot import it
        fut = client.submit(
            _probe_task,
            kernel,
            dict(params),
            shape,
            dict(constants),
            timeout,
            stop_after,
            key=f"daskbatch-probe-{uuid.uuid4().hex}",
            pure=False,
            workers=[addr],
            allow_other_workers=False,
        )
    limit = None if timeout is None else 5.0 + timeout * n
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while True:
            try:
                kind, value = fut.result(timeout=0.2)
                break
            except TimeoutError:
                pass
            if addr not in client.nthreads():
                logger.warning(
                    f"the probe of the first {n} samples ended the worker that ran it "
                    "(a crash, or a sample past the timeout); going on without it"
                )
                return None
            if deadline is not None and time.monotonic() > deadline:
                logger.warning(
                    f"the probe of the first {n} samples ran past {limit:g} s; going on without it"
                )
                return None
    finally:
        fut.cancel()
    if kind == "error":
        raise value
    return value


def _probe_task(kernel: Kernel, params, shape, constants, timeout, stop_after=None) -> tuple[str, Any]:
    from .freshness import first_digests

    first_digests(
        kernel
    )  # the code this worker imported, as its files were then (checked at its first block)
    try:  # a sample past the timeout ends this worker process; its nanny starts another
        return "ok", kernel.probe(
            params, shape, constants, timeout=timeout, kill_on_timeout=True, stop_after=stop_after
        )
    except Exception as e:
        return "error", e


def _probe_child(payload: Any, send) -> None:
    """The probe, in its own process: before each sample, its position goes to the
    parent (which names the sample that ends the process); then the result or the
    error. ``payload`` is the arguments, pickled unless this process is a fork."""
    import functools
    import pickle
    import signal

    import cloudpickle

    from .hygiene import die_with_parent

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
        die_with_parent()  # a driver killed meanwhile (SIGKILL) leaves no probe running on
        if isinstance(payload, bytes):
            try:
                payload = cloudpickle.loads(payload)
            except Exception as e:  # e.g. a kernel module on the driver's sys.path only
                send.send_bytes(pickle.dumps(("unloadable", f"{type(e).__name__}: {e}")))
                return
        kernel, params, shape, constants, timeout, stop_after = payload
        starts: list[float] = []
        if kernel.per_sample:  # the probe runs its samples in order, each once
            func, calls = kernel.func, iter(range(math.prod(shape)))

            @functools.wraps(func)
            def announced(*args, **kwargs):
                send.send_bytes(pickle.dumps(("sample", next(calls, None))))
                starts.append(time.perf_counter())
                return func(*args, **kwargs)

            kernel.func = announced
        try:  # a sample past the timeout ends this process, which is all the parent needs to know
            result = kernel.probe(
                params, shape, constants, timeout=timeout, kill_on_timeout=True, stop_after=stop_after
            )
            if len(starts) >= 3:
                # the first call pays for imports and loading libraries: the cost of a
                # sample is the typical time between the starts of the later ones
                between = sorted(b - a for a, b in itertools.pairwise(starts[1:]))
                result.seconds = between[len(between) // 2] * len(starts)
            message: tuple[str, Any] = ("ok", result)
        except Exception as e:
            message = ("error", e)
        send.send_bytes(cloudpickle.dumps(message))
        send.close()
    finally:  # never back into a forked parent's code, nor waiting for threads left behind
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)
