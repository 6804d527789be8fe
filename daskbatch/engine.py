"""The public entry points: :func:`plan`, :func:`run`, :func:`status`, :func:`open`.

A run is a plan that executes: :func:`plan` checks every argument (one frozen
:class:`~daskbatch.options.RunOptions`), probes the kernel and returns a
:class:`~daskbatch.Plan` whose :meth:`~daskbatch.Plan.execute` runs it without
probing again; :func:`run` is ``plan(...).execute()`` that probes only when it
creates a store (a store that exists has its blocks already). Executing compares
the store's fingerprint when the store exists, takes its writer lock, and hands over
to the run loop (:mod:`daskbatch.runloop`), which computes only the blocks whose
commit marker is missing. Each block task (:mod:`daskbatch.blocktask`) runs the
kernel and writes the block into its own Zarr chunks; only a small summary per
block comes back to the driver, so memory stays flat however many samples there are.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .autocluster import auto_probe, choose_cluster
from .cluster import start_executor
from .errors import DaskbatchError, StoreError
from .grow import added_rows, adopt_input, grow, same_input, short_blocks, undo_stopped_change
from .holder import LockLostError
from .kernel import Kernel
from .options import RunOptions, path_argument
from .plan import Plan
from .probe import measure
from .provenance import check_store, run_provenance
from .reduced import check_round_space
from .repair import damage_hint, repair
from .results import RunResult, StoreStatus, store_status
from .runloop import Runner, blocks_to_retry, make_run_plan, workers_before_start
from .space import Space
from .store import Store

__all__ = ["RunResult", "StoreStatus", "open", "plan", "run", "status"]


@dataclass(frozen=True)
class _Request:
    """A run asked for: the kernel, the space, the store and the checked options."""

    kernel: Kernel
    space: Space
    store: str | None
    options: RunOptions

    def check_store(self, lock: bool) -> Mapping[str, Any] | None:
        """What :meth:`execute` would refuse about an existing store (its info, None when
        there is none), checked without running or writing anything; with ``lock``, a
        store another run holds too."""
        if self.store is None or self.options.overwrite:
            return None
        st = Store(self.store)
        if not st.path.exists():
            return None
        if lock:
            st.lock().check_free()
        info = st.info()
        if info is None:
            return None
        options = _adopt_reductions(self.options, info, self.kernel)
        space = check_round_space(self.space, info, options.until)
        self._check(
            st,
            info,
            run_provenance(self.kernel, options.spec_file),
            announce=False,
            space=space,
            options=options,
        )
        return info

    def plan(self) -> Plan:
        """Probe the kernel and plan the blocks (an existing store's blocks are kept; one
        the run would refuse is refused here, and its committed blocks are not counted)."""
        options, space = self.options, self.space
        spec = options.cluster
        done = 0
        if self.store is not None:
            info = self.check_store(lock=False)
            if info is not None:
                done = int(np.count_nonzero(Store(self.store).done_mask()))
            # its blocks, also when it grows (new samples are cut into blocks of its shape)
            if info is not None and list(info["layout"]["batch_dims"]) == list(space.batch_dims):
                block = dict(zip(space.batch_dims, info["layout"]["block_shape"], strict=True))
                options = dataclasses.replace(options, chunk_size=block)
        if options.auto:
            seconds = auto_probe(self.kernel, space, options)
            options = choose_cluster(self.kernel, space, options, seconds, space.size)
            spec = options.cluster
        else:
            seconds = measure(spec, self.kernel, space, options.constants, options.timeout)
        workers = workers_before_start(spec)
        if workers is None:  # a scheduler address: ask it
            with start_executor(spec) as executor:
                workers = executor.n_workers
        made = dataclasses.replace(
            make_run_plan(self.kernel, space, options, workers, seconds), blocks_done=done
        )
        # executing runs on the cluster chosen here, with the planned blocks
        request = dataclasses.replace(self, options=dataclasses.replace(options, auto=False))
        return dataclasses.replace(made, request=request if self.store is not None else None)

    def execute(self, plan: Plan | None = None) -> RunResult:
        """Run; with ``plan`` (made by :meth:`plan`), cut a new store's blocks as planned."""
        assert self.store is not None
        t_start = time.perf_counter()
        kernel, space, options = self.kernel, self.space, self.options
        st = Store(self.store)
        st.check_writable()
        st.remove_leftovers()  # of a creation that was stopped
        undo_stopped_change(st)  # a growth stopped part way: the store as it was before it
        if st.is_foreign():
            raise StoreError(
                f"store={str(st.path)!r} is not empty and was not written by daskbatch; choose a new "
                "path (daskbatch never deletes data it did not write)"
            )
        if options.overwrite:
            st.check_keeps_foreign()  # before the probe: a user's files inside the store
        provenance = run_provenance(kernel, options.spec_file)
        done = self.finished(st, provenance)
        if done is not None:
            return done  # no probe, no lock

        created_dir = not st.path.exists()
        lock = st.lock().acquire()  # a second run on this store is refused here, naming the holder
        try:
            st.check_links()  # nothing is written through a link planted in the store
            # read again under the lock: a run that ended meanwhile has written its history
            info = None if options.overwrite else st.info()
            code_change, damaged, retry = None, [], []
            if info is not None:
                options = _adopt_reductions(options, info, kernel)
                space = check_round_space(space, info, options.until)
                space, code_change = self._check(
                    st, info, provenance, announce=False, space=space, options=options
                )
                # verify: rebuild damaged metadata first; recompute only blocks whose data is wrong
                if options.verify:
                    damaged = repair(st.path, outputs=kernel.outputs).blocks
                else:
                    damaged = st.ledger.verify(full=False)
                retry = blocks_to_retry(st) if options.retry_failed else []
                if added_rows(info, space) is not None:  # samples added: the store grows
                    info, _ = grow(st, info, space)
                elif same_input(info, space):  # a table's file changed, not its stored rows
                    info = adopt_input(st, info, space)
                # the stored last block of a store that grew: its new samples
                retry += [b for b in short_blocks(st) if b not in retry]
                info.update(provenance)
            runner = Runner(
                kernel=kernel,
                space=space,
                st=st,
                options=options,
                lock=lock,
                info=info,
                provenance=provenance,
                t_start=t_start,
                damaged=damaged,
                retry=retry,
                code_change=code_change,
                plan=plan if plan is not None and plan.batch_shape == space.batch_shape else None,
            )
            return runner.run()
        except LockLostError:
            created_dir = False  # the store is the run's that took the lock over now: untouched
            raise
        except DaskbatchError:
            # refused before any result (a kernel the cluster cannot load): a store this call
            # created and nothing committed to is not left behind
            if created_dir and st.info() is not None and not st.ledger.committed().any():
                lock.release()
                shutil.rmtree(st.path, ignore_errors=True)
            raise
        finally:
            lock.release()
            if created_dir and st.info() is None:  # stopped before the template: leave nothing
                shutil.rmtree(st.path, ignore_errors=True)

    def finished(
        self, st: Store | None = None, provenance: Mapping[str, Any] | None = None
    ) -> RunResult | None:
        """The store's result when it holds everything this run asks for already (nothing
        to compute: no probe, no lock), else None. A store this run would refuse raises
        as the run would. A job of a chain asks this before it starts a driver."""
        kernel, space, options = self.kernel, self.space, self.options
        st = st if st is not None else Store(self.store)
        if provenance is None:
            provenance = run_provenance(kernel, options.spec_file)
        info = None if options.overwrite else st.info()
        if info is None:
            return None
        options = _adopt_reductions(options, info, kernel)
        space = check_round_space(space, info, options.until)  # until=: rounds already grown
        space, _ = self._check(st, info, provenance, space=space, options=options)
        hint = None if options.verify else damage_hint(st.path)
        if hint is not None:  # damaged metadata: only a run with verify=True repairs it
            raise StoreError(hint)
        if options.retry_failed and blocks_to_retry(st):
            return None
        # with verify, damaged metadata is repaired first: nothing is read before
        state = None if options.verify else st.ledger.state()  # which are committed, and whole
        complete = state is not None and state[0].all() and not st.ledger.verify(full=False)
        complete = complete and not short_blocks(st, state) and added_rows(info, space) is None
        complete = complete and not same_input(info, space)  # its file's new state: recorded
        # until=: done once the last round's estimate was checked (converged, or max_n)
        complete = complete and (options.until is None or _rounds_ended(info, options.until))
        if not complete:
            return None
        done = store_status(st, info, cls=RunResult, cluster=options.cluster.description)
        assert isinstance(done, RunResult)
        return done

    def _check(
        self,
        st: Store,
        info: Mapping[str, Any],
        provenance: Mapping[str, Any],
        announce: bool = True,
        space: Space | None = None,
        options: RunOptions | None = None,
    ) -> tuple[Space, Any]:
        o, code = options or self.options, provenance["kernel_code"]
        return check_store(
            st,
            info,
            self.kernel,
            self.space if space is None else space,
            o.constants_json,
            o.chunk_size,
            code,
            o.kernel_changed,
            announce,
            reduce_spec=None if o.reductions is None else o.reductions.spec(),
        )


def check_existing_store(arguments: Mapping[str, Any], lock: bool = True) -> bool:
    """What :func:`run` with these arguments would refuse about its store, checked
    without running or writing anything (``daskbatch submit``, on the login node): a
    store another run holds (unless not ``lock``), or one whose kernel, space, constants
    or reductions differ (the difference named). A store that does not exist yet passes.
    Returns whether the store holds every result the run asks for already."""
    st = Store(arguments["store"])
    if not st.path.exists() or arguments.get("overwrite"):
        return False
    request = _run_request(arguments)
    request.check_store(lock=lock)
    return request.finished() is not None


def _adopt_reductions(options: RunOptions, info: Mapping[str, Any], kernel: Kernel) -> RunOptions:
    """A rerun without ``reduce=`` of a store that reduces goes on with the store's
    reductions (as ``daskbatch resume`` does), rather than being refused."""
    if options.reductions is not None or info.get("reduce") is None or options.overwrite:
        return options
    from .reduced import reductions_of

    return dataclasses.replace(options, reductions=reductions_of(info, kernel.outputs))


def _rounds_ended(info: Mapping[str, Any], until: Any) -> bool:
    """Whether a ``until=`` store's last round was checked and settles ``until``: it
    converged under this very rule, or it stopped at a ``max_n`` the rule does not raise."""
    from .reduced import max_n_of

    state = info.get("until") or {}
    rounds = state.get("rounds") or [{}]
    n = int(info["layout"]["batch_shape"][0])
    if rounds[-1].get("n") != n:
        return False
    if state.get("state") in ("converged", "no_values"):
        return state.get("rule") == until.spec()  # another rule (a tighter rtol): check again
    if state.get("state") == "max_n":
        return max_n_of(until, int(state.get("first_n", n))) <= n
    return False


#: the arguments of :func:`run` and :func:`plan`, documented once for both
_RUN_PARAMETERS = """\
    Parameters
    ----------
    kernel
        A function decorated with :func:`daskbatch.kernel`.
    space
        A :class:`~daskbatch.Grid`, :class:`~daskbatch.Table`, :class:`~daskbatch.Files`,
        a design (:class:`~daskbatch.MonteCarlo`, :class:`~daskbatch.LatinHypercube`,
        :class:`~daskbatch.Sobol`, :class:`~daskbatch.Halton`,
        :class:`~daskbatch.Saltelli`), a :class:`~daskbatch.Product`, or a
        :class:`~daskbatch.FromStore` (another store's outputs).
    store
        Directory of the Zarr store (created if missing).
    cluster
        ``"auto"`` (default: ``"local"``; this process when the probe predicts less
        work than starting worker processes costs; ``"fork"`` for a short run; it says
        which), ``"local"`` (a LocalCluster, one single-threaded process per core),
        ``"fork"`` (processes forked from this one, Linux), ``"processes"``,
        ``"threads"``, ``"serial"``; ``"slurm"``, ``"pbs"``, ``"sge"``, ``"lsf"`` or a
        :class:`~daskbatch.JobQueue` (workers as batch jobs through dask-jobqueue, from
        a login node; see the clusters page); a scheduler address, a running
        ``distributed`` deploy ``Cluster``, or a :class:`distributed.Client`.
    n_workers
        Workers for ``"local"``, ``"processes"``, ``"threads"`` (default: the cores);
        for a job-queue cluster, worker processes, rounded up to whole jobs. Ignored,
        with a warning, above 1 with ``"serial"``; refused with a running scheduler or
        ``Client``.
    chunk_size
        Samples per block: ``"auto"``, an int, or a dict of block sizes per batch dim.
    progress
        Show a progress bar.
    overwrite
        Discard an existing daskbatch store at ``store`` and start again.
    constants
        Keyword arguments passed unchanged to every kernel call.
    retries
        Call a sample (or a vectorised block) that raised up to this many more times
        before marking it failed (transient errors: a licence server, a file system).
    timeout
        Seconds a sample may run (per-sample kernels) or a block call may run
        (vectorised kernels). A sample past it is marked ``timeout`` and the sweep
        goes on. On worker processes (``"local"``, ``"processes"``, a cluster) the
        process running it is ended, which stops native code too; it is restarted
        and the block resumes without that sample. On ``"serial"`` and ``"threads"``
        only Python code can be stopped.
    retry_failed
        Also recompute the samples of committed blocks that failed, timed out or
        crashed (only those; the others keep their values).
    verify
        Before computing, check every committed block's chunks against their
        checksums and recompute those that differ (without it: cheap checks only).
    memory_limit
        Memory per worker, in bytes or as text (``"4GiB"``); default: the machine's
        shared by the workers. ``chunk_size="auto"`` keeps a task within half of it.
    kernel_changed
        What to do when the store holds results of *other code* of this kernel (its
        source, or the functions and constants of the user's own code it uses; see
        :mod:`daskbatch.codeid` for what counts): ``"refuse"`` (default) raises
        :class:`~daskbatch.errors.KernelChangedError` with a short diff;
        ``"continue"`` keeps the results and goes on with the new code, recorded in
        the store's history with both code hashes. ``overwrite=True`` starts again.
    spec_file
        The spec file this run was described in (the CLI passes it), recorded so
        that ``daskbatch resume`` imports the kernel from its folder.
    callbacks
        :class:`~daskbatch.Callback` objects told when the run starts, as each block
        is committed, and when it ends (see :mod:`daskbatch.callbacks`).
    reduce
        What to reduce while the run goes, without needing every sample's value:
        a statistic for every output (``"sum"``) or ``{output: stat or [stats]}``
        with stats ``"count"``, ``"sum"``, ``"mean"``, ``"var"``, ``"std"``,
        ``"min"``, ``"max"``, :class:`~daskbatch.Quantiles`,
        :class:`~daskbatch.Histogram`, :class:`~daskbatch.Exceedance` or an
        :class:`~daskbatch.Aggregation` of your own. Each block's partial state is
        committed with the block, so a resumed run merges every block exactly once.
        Only ok samples count. Outputs declared ``Output(store=False)`` are only
        reduced. Results: :attr:`RunResult.reductions` and :func:`daskbatch.open`.
    reduce_dims
        The batch dims reduced over (default: all); the others are kept, e.g. a
        grid's axis.
    until
        A :class:`~daskbatch.Converged` rule: the design's ``n`` is the first round;
        while the estimate has not converged, ``n`` doubles (the store grows, the
        samples computed stay) up to the rule's ``max_n``. The same seed stops at
        the same ``n`` on any cluster, and a stopped run resumes to the same answer.

"""


def _with_parameters(func: Any) -> Any:
    """Put :data:`_RUN_PARAMETERS` where ``func``'s docstring says ``{parameters}``."""
    if func.__doc__:  # None under python -OO
        func.__doc__ = func.__doc__.replace("    {parameters}\n", _RUN_PARAMETERS)
    return func


@_with_parameters
def run(
    kernel: Kernel,
    space: Space,
    store: str | os.PathLike[str],
    *,
    cluster: Any = "auto",
    n_workers: int | None = None,
    chunk_size: int | str | Mapping[str, int] = "auto",
    progress: bool = True,
    overwrite: bool = False,
    constants: Mapping[str, Any] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    retry_failed: bool = False,
    verify: bool = False,
    memory_limit: int | str | None = None,
    kernel_changed: str = "refuse",
    spec_file: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Any] | None = None,
    reduce: Any = None,
    reduce_dims: str | Sequence[str] | None = None,
    until: Any = None,
) -> RunResult:
    """Run ``kernel`` over every sample of ``space``, streaming results into ``store``.

    The same call again continues where it stopped (committed blocks are skipped).
    ``run(...)`` is ``plan(...).execute()``, probing only when it creates the store.

    {parameters}
    Returns
    -------
    RunResult
        Totals (ok, failed, pending), the first errors, wall time and samples/s;
        ``result.reductions`` with ``reduce=``.

    Raises
    ------
    DaskbatchError
        Before anything is created or started, for a bad argument: one line naming it,
        its value and what would work (its subclasses say more: ``SpaceError``,
        ``KernelSignatureError``, ``OutputSpecError``, ``ClusterError``...).
    FingerprintMismatchError, KernelChangedError
        The store holds results of another run (kernel, space, seed, constants,
        chunking, reductions) or of other code of this kernel; the message names what
        differs.
    StoreError
        The store cannot be written (not daskbatch's, a full disk, damaged metadata:
        ``verify=True`` repairs it), or another run holds its lock.
    KeyboardInterrupt
        Ctrl-C or SIGTERM: the blocks committed so far are kept; the same call resumes.

    See Also
    --------
    plan : what this call would do, without doing it.
    status, open : the store's totals, and its results as an xarray Dataset.
    apply : the same computation as a lazy Dataset, without a store.
    daskbatch.failures : every failed sample with its inputs and message.

    Examples
    --------
    >>> import daskbatch as db, tempfile, os
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> path = os.path.join(tempfile.mkdtemp(), "sq.zarr")
    >>> res = db.run(square, db.Grid(x=[1.0, 2.0, 3.0]), path, cluster="serial", progress=False)
    >>> db.open(path).y.values.tolist()
    [1.0, 4.0, 9.0]
    """
    return _run_request(locals()).execute()


def _run_request(arguments: Mapping[str, Any]) -> _Request:
    """The request of :func:`run`, from its arguments (its ``locals()``): every option
    checked first, then the store path."""
    kernel, space = arguments["kernel"], arguments["space"]
    given = {k: v for k, v in arguments.items() if k not in ("kernel", "space", "store")}
    store = path_argument(arguments["store"], "store", "results.zarr")
    options = RunOptions.from_arguments(kernel, space, **given, store=store)
    return _Request(kernel, space, store, options)


@_with_parameters
def plan(
    kernel: Kernel,
    space: Space,
    store: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Plan:
    """What :func:`run` would do with these arguments, without doing it yet.

    Takes the arguments of :func:`run`. Runs the first samples once, as :func:`run`
    does on a new store, to measure the time per sample and check the outputs, then
    returns the :class:`~daskbatch.plan.Plan` that :func:`run` would follow: batch
    dims and sizes, blocks and samples per block, bytes per sample in and out,
    memory per task and per worker, time per block and in total, and the cluster.
    Starts no cluster (a scheduler address is asked for its workers) and writes
    nothing; with the path of an existing store, its blocks are the plan's. Given a
    store path, ``plan(...).execute()`` runs it, with no second probe.

    {parameters}
    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> p = db.plan(square, db.Grid(x=range(1000)), cluster="threads", n_workers=2, chunk_size=100)
    >>> p.n_blocks, p.samples_per_block, p.bytes_out_per_sample
    (10, 100, 8)
    """
    path = None if store is None else path_argument(store, "store", "results.zarr")
    checked = RunOptions.from_arguments(kernel, space, **options, store=path)
    return _Request(kernel, space, path, checked).plan()


def status(store: str | os.PathLike[str]) -> StoreStatus:
    """Totals of samples and blocks done, failed and pending in ``store``.

    Examples
    --------
    >>> import daskbatch as db, tempfile, os
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def double(x):
    ...     return 2 * x
    >>> path = os.path.join(tempfile.mkdtemp(), "d.zarr")
    >>> _ = db.run(double, db.Grid(x=[1.0, 2.0]), path, cluster="serial", progress=False)
    >>> db.status(path).samples["ok"]
    2
    """
    st = Store(store)
    return store_status(st, st.require_info())


def open(store: str | os.PathLike[str]):
    """Open a store as a lazy, dask-backed :class:`xarray.Dataset`.

    Batch dims carry their coordinates (``sample`` indices, or the grid axes);
    the variables are the parameters, the outputs, and ``status`` (0 pending,
    1 ok, 2 failed, 3 timeout, 4 crashed). Only committed blocks count as done:
    ``status`` is 0 for every sample of a block without its commit marker (being
    written now, or left by a run that stopped), as :func:`status` counts them, so a
    sample shown as done has its outputs on disk. Everything stays lazy; the markers
    are read with the chunks of ``status``. ``xarray.open_zarr(store)`` opens the
    same arrays with ``status`` as it is on disk (see docs/store-format.md).
    """
    return Store(store).open_dataset()
