"""Chained stages: pipelines of runs, each stage reading the previous stage's store.

:class:`Pipeline` runs :class:`Stage` objects in order with :func:`daskbatch.run`.
A stage without a space reads the previous stage's store (a :class:`FromStore` of
the kernel's arguments that are variables of that store). Each stage is resumable:
running the pipeline again returns at once for the stages that are complete and
continues the one that stopped.

Upstream samples that failed (or timed out, or crashed) pass on the values their
store holds (the output's fill value: NaN for floats). A stage that must tell them
apart asks for the upstream ``status`` under another name, e.g.
``variables={"y": "y", "upstream_status": "status"}`` (1 is ok), and raises or
skips as it sees fit.

:class:`FromStore`, the space read from another store, is in :mod:`daskbatch.fromstore`
and importable from here too.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .callbacks import Callback, RunEnd, RunStart
from .errors import DaskbatchError, FingerprintMismatchError, KernelSignatureError, SpaceError
from .freshness import StaleModuleError, check_kernel
from .fromstore import SPEC_KEYS as SPEC_KEYS
from .fromstore import FromStore, upstream_change
from .kernel import Kernel
from .log import logger
from .spacebase import Space

__all__ = ["FromStore", "Pipeline", "PipelineError", "Stage", "upstream_change"]


class PipelineError(DaskbatchError):
    """A pipeline or one of its stages is not valid (nothing was run)."""


# --------------------------------------------------------------------------- stages


def _run_options() -> set[str]:
    from .engine import run

    return {n for n in inspect.signature(run).parameters if n not in ("kernel", "space", "store")}


def _check_options(options: Mapping[str, Any], where: str) -> None:
    known = _run_options()
    unknown = sorted(set(options) - known)
    if unknown:
        raise PipelineError(
            f"{where}: unknown option(s) {unknown}; give options of daskbatch.run: {sorted(known)}"
        )


class Stage:
    """One run of a :class:`Pipeline`: a kernel, its store, and its space.

    Parameters
    ----------
    kernel
        A function decorated with :func:`daskbatch.kernel`.
    store
        The stage's store (each stage has its own).
    space
        The stage's space. None (not for the first stage): the previous stage's
        store, as a :class:`FromStore` of ``variables``.
    variables
        With ``space=None``: what the kernel takes from the previous stage's store
        (a list of its variables, or ``{kernel_argument: variable}``). Default: the
        kernel's arguments that are variables of that store (outputs, stored
        parameters, ``status``, batch dims) and not constants.
    copy
        With ``space=None``: also store the values read from the previous stage.
    **run_options
        Options of :func:`daskbatch.run` for this stage (``constants``,
        ``chunk_size``, ``overwrite``...); they take precedence over those given to
        :meth:`Pipeline.run`.

    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def affine(a, b=0.0, scale=1.0):
    ...     return scale * a + b
    >>> db.Stage(affine, "first.zarr", space=db.Grid(a=[1.0, 2.0]), constants={"b": 1.0})
    Stage(affine -> 'first.zarr', Grid, constants)
    """

    def __init__(
        self,
        kernel: Kernel,
        store: str | os.PathLike[str],
        space: Space | None = None,
        *,
        variables: Sequence[str] | Mapping[str, str] | None = None,
        copy: bool = False,
        **run_options: Any,
    ) -> None:
        if not isinstance(kernel, Kernel):
            raise PipelineError(
                f"Stage: kernel={kernel!r} is not a daskbatch kernel; decorate the function with "
                "@daskbatch.kernel(outputs={...})"
            )
        if not isinstance(store, str | os.PathLike) or not str(store).strip():
            raise PipelineError(f"Stage: store={store!r} must be a directory path such as 'stage1.zarr'")
        if space is not None and not isinstance(space, Space):
            raise PipelineError(
                f"Stage: space={space!r} is not a parameter space; give a daskbatch space, or None "
                "to read the previous stage's store"
            )
        if space is not None and (variables is not None or copy):
            raise PipelineError(
                "Stage: variables= and copy= are for a stage that reads the previous stage's store "
                "(space=None); with a space of its own, leave them out"
            )
        if not isinstance(copy, bool):
            raise PipelineError(f"Stage: copy={copy!r} must be True or False")
        _check_options(run_options, "Stage")
        self.kernel = kernel
        self.store = os.fspath(store)
        self.space = space
        self.variables = variables
        self.copy = copy
        self.run_options = dict(run_options)

    def __repr__(self) -> str:
        what = "reads the previous store" if self.space is None else type(self.space).__name__
        opts = "".join(f", {k}" for k in self.run_options)
        return f"Stage({self.kernel.name} -> {self.store!r}, {what}{opts})"


class _Available:
    """The variables a stage's store will have, known before it runs."""

    def __init__(self, stage: Stage, before: _Available | None, fromstore: dict[str, str] | None) -> None:
        from .blocktask import run_params

        self.store = stage.store
        self.kinds: dict[str, str] = {}  # name -> "output", "parameter", "dim", "status", or why unusable
        self.outputs: list[str] = []
        for name, o in stage.kernel.outputs.items():
            if not getattr(o, "store", True):
                continue
            if o.variable:
                self.kinds[name] = "is text or ragged (only numbers of a fixed shape pass on)"
            else:
                self.kinds[name] = "output"
                self.outputs.append(name)
        if stage.space is not None:
            self.batch_dims = tuple(stage.space.batch_dims)
            for name, p in run_params(stage.space.params, stage.kernel).items():
                if not p.is_axis:
                    text = np.dtype(p.dtype).kind not in "biuf"
                    self.kinds.setdefault(name, "is text (only numbers pass on)" if text else "parameter")
        else:
            assert before is not None and fromstore is not None
            self.batch_dims = before.batch_dims
            if stage.copy:
                for arg, var in fromstore.items():
                    if var not in self.batch_dims or arg != var:
                        self.kinds.setdefault(arg, "parameter")
        for d in self.batch_dims:
            self.kinds.setdefault(d, "dim")
        self.kinds["status"] = "status"

    @property
    def usable(self) -> list[str]:
        return [n for n, k in self.kinds.items() if k in ("output", "parameter", "dim", "status")]


class Pipeline:
    """Stages run in order, each with :func:`daskbatch.run`, each resumable.

    Parameters
    ----------
    stages
        The :class:`Stage` objects, first to last. The first has a space; a stage
        without one reads the previous stage's store (:class:`FromStore`). Every
        stage has its own store.

    Notes
    -----
    :meth:`run` checks every stage before running any (kernel arguments against
    the previous store's variables and the constants, store paths, and every
    stage's options as :func:`daskbatch.run` checks them: ``reduce=`` and
    ``reduce_dims=`` of a stage that reads the previous store against that store's
    batch dims, ``until=`` refused there since its size cannot grow), then runs them
    in order; a refusal creates no store. Running the pipeline again skips the complete stages (a
    complete store returns at once) and continues the stage that stopped. A stage
    whose store was computed from another version of the previous stage's store
    (its seed, kernel, constants or results changed; it was written again) is
    refused with the difference named: give that stage ``overwrite=True`` to
    compute it again from the new upstream.

    One progress display: a line ``stage k of n: kernel -> store`` before each
    stage's progress bar (labelled ``stage k/n``), and a line for each stage that
    was complete already.

    Examples
    --------
    Two stages: the first computes ``y = a + 1`` for each row of a table, the second
    ``y = 10 * a`` with ``a`` read from the first stage's ``y``.

    >>> import os, tempfile
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def affine(a, b=0.0, scale=1.0):
    ...     return scale * a + b
    >>> folder = tempfile.mkdtemp()
    >>> pipeline = db.Pipeline([
    ...     db.Stage(affine, os.path.join(folder, "one.zarr"), space=db.Table({"a": [1.0, 2.0]}),
    ...              constants={"b": 1.0}),
    ...     db.Stage(affine, os.path.join(folder, "two.zarr"), variables={"a": "y"},
    ...              constants={"scale": 10.0}),
    ... ])
    >>> results = pipeline.run(cluster="serial", progress=False)  # one RunResult per stage
    >>> db.open(results[-1].store).y.values.tolist()
    [20.0, 30.0]
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        if isinstance(stages, Stage):
            raise PipelineError("Pipeline: stages must be a list of stages, e.g. Pipeline([stage1, stage2])")
        if not isinstance(stages, Sequence) or isinstance(stages, str):
            raise PipelineError(f"Pipeline: stages={stages!r} must be a list of Stage objects")
        if not stages:
            raise PipelineError("Pipeline: stages is empty; give at least one Stage(kernel, store, space)")
        for k, stage in enumerate(stages, 1):
            if not isinstance(stage, Stage):
                raise PipelineError(
                    f"Pipeline: stage {k} is {stage!r}, not a Stage; make it with "
                    "daskbatch.Stage(kernel, store, space=None, **options)"
                )
        if stages[0].space is None:
            raise PipelineError(
                f"Pipeline: stage 1 ({stages[0].kernel.name} -> {stages[0].store!r}) has no space and "
                "no stage before it to read; give it one, e.g. Stage(kernel, store, space=db.MonteCarlo(...))"
            )
        seen: dict[str, int] = {}
        for k, stage in enumerate(stages, 1):
            where = os.path.realpath(os.path.abspath(os.path.expanduser(stage.store)))
            if where in seen:
                raise PipelineError(
                    f"Pipeline: stages {seen[where]} and {k} both write store {stage.store!r}; "
                    "give every stage a store of its own"
                )
            seen[where] = k
        self.stages = list(stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(repr(s) for s in self.stages) + "])"

    # ------------------------------------------------------------------ checking

    def _plan(self, common: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, str] | None]]:
        """Per stage: its options (common ones, then its own) and, for a stage that
        reads the previous store, ``{kernel argument: variable}``. Raises
        :class:`PipelineError` for the first stage that cannot run."""
        out: list[tuple[dict[str, Any], dict[str, str] | None]] = []
        before: _Available | None = None
        n = len(self.stages)
        for k, stage in enumerate(self.stages, 1):
            options = {**common, **stage.run_options}
            constants = options.get("constants") or {}
            if not isinstance(constants, Mapping):
                raise PipelineError(f"Pipeline: stage {k}: constants={constants!r} must be a dict")
            where = f"Pipeline: stage {k} of {n} ({stage.kernel.name} -> {stage.store!r})"
            try:  # its code is what its files hold (daskbatch.freshness), before any stage runs
                check_kernel(stage.kernel)
            except StaleModuleError as e:
                raise PipelineError(f"{where}: {e}") from None
            mapping = None
            if stage.space is None:
                assert before is not None
                mapping = _variables_for(stage, before, constants, where, k)
                _check_without_space(stage.kernel, options, before.batch_dims, where, k)
            else:
                try:
                    stage.kernel.check_arguments(stage.space.params, constants)
                except KernelSignatureError as e:
                    raise PipelineError(f"{where}: {e}") from None
                _check_with_space(stage.kernel, stage.space, options, where, k)
            out.append((options, mapping))
            before = _Available(stage, before, mapping)
        return out

    # ------------------------------------------------------------------ running

    def run(self, **options: Any) -> list[Any]:
        """Run every stage in order; return their :class:`~daskbatch.RunResult` objects.

        ``options`` are options of :func:`daskbatch.run` for every stage (a stage's
        own options take precedence). Every stage is checked before any runs,
        its options included.

        Raises
        ------
        PipelineError
            A stage that cannot run (one line naming the stage, the option, the value
            and what would work); nothing was computed, no store created.
        """
        from .engine import run
        from .store import Store

        _check_options(options, "Pipeline.run")
        plans = self._plan(options)
        results = []
        n = len(self.stages)
        for k, (stage, (stage_options, mapping)) in enumerate(zip(self.stages, plans, strict=True), 1):
            opts = dict(stage_options)
            show = opts.pop("progress", True)
            if not isinstance(show, bool):
                raise PipelineError(f"Pipeline: stage {k}: progress={show!r} must be True or False")
            label = f"stage {k} of {n}: {stage.kernel.name} -> {stage.store}"
            space = stage.space
            if space is None:
                prev = self.stages[k - 2].store
                try:
                    space = FromStore(prev, mapping, copy=stage.copy)
                except SpaceError as e:
                    raise PipelineError(
                        f"Pipeline: stage {k} of {n} reads stage {k - 1}'s store: {e}"
                    ) from None
            if isinstance(space, FromStore):
                if not opts.get("overwrite", False):
                    _refuse_stale(Store(stage.store), space, k)
                if space.upstream_failed and show:
                    logger.info(
                        f"stage {k} of {n}: {space.upstream_failed:,} sample(s) of {space.path} are not "
                        "ok; the values stored for them (NaN for floats) are passed on"
                    )
            bar = _StageProgress(label, f"stage {k}/{n}", show)
            callbacks = [*(opts.pop("callbacks", None) or ()), bar]
            try:
                result = run(stage.kernel, space, stage.store, progress=False, callbacks=callbacks, **opts)
            except BaseException as e:
                e.add_note(f"(in {label})")
                raise
            if show and not bar.started:
                logger.info(f"{label}: complete ({result.n_samples:,} samples), nothing to compute")
            results.append(result)
        return results

    def status(self) -> list[Any]:
        """Each stage's :class:`~daskbatch.StoreStatus`, None for a store not made yet."""
        from .engine import status
        from .store import Store

        return [status(s.store) if Store(s.store).info() is not None else None for s in self.stages]


def _variables_for(
    stage: Stage, before: _Available, constants: Mapping[str, Any], where: str, k: int
) -> dict[str, str]:
    """``{kernel argument: variable}`` a stage takes from the previous store, checked."""
    shown = before.usable
    prev = f"stage {k - 1}'s store {before.store!r}"
    if stage.variables is not None:
        if isinstance(stage.variables, Mapping):
            mapping = dict(stage.variables)
        elif isinstance(stage.variables, Sequence) and not isinstance(stage.variables, str):
            mapping = {v: v for v in stage.variables}
        else:
            raise PipelineError(
                f"{where}: variables={stage.variables!r} must be a list of {prev}'s variables or a "
                "dict {kernel_argument: variable}"
            )
        for arg, var in mapping.items():
            kind = before.kinds.get(var) if isinstance(var, str) else None
            if kind is None:
                raise PipelineError(
                    f"{where}: variables: {var!r} is not a variable of {prev}; its variables are {shown}"
                )
            if kind not in ("output", "parameter", "dim", "status"):
                raise PipelineError(f"{where}: variables: {var!r} of {prev} {kind}")
            if arg in before.batch_dims and arg != var:
                raise PipelineError(
                    f"{where}: variables: {arg!r} is a batch dim of {prev}; pass {var!r} under another name"
                )
            if arg == "status":
                raise PipelineError(
                    f"{where}: variables: 'status' is the new store's own; pass {var!r} under another "
                    f"name, e.g. variables={{'upstream_status': {var!r}}}"
                )
            if not isinstance(arg, str) or not stage.kernel.accepts(arg):
                raise PipelineError(
                    f"{where}: variables: kernel {stage.kernel.name!r} has no argument {arg!r}; "
                    f"its arguments are {sorted(set(stage.kernel._args) - {'state'})}"
                )
    elif stage.kernel._varkw:
        mapping = {o: o for o in before.outputs}
    else:
        mapping = {
            a: a
            for a in stage.kernel._args
            if a != "state" and a not in constants and before.kinds.get(a) in ("output", "parameter", "dim")
        }
    given = set(mapping) | set(constants)
    missing = [
        a for a, p in stage.kernel._args.items() if p.default is p.empty and a != "state" and a not in given
    ]
    if missing:
        raise PipelineError(
            f"{where}: kernel argument(s) {missing} are neither variables of {prev} (its variables: "
            f"{shown}) nor constants; rename them, or map them with Stage(..., variables="
            f"{{{missing[0]!r}: {(before.outputs or shown)[0]!r}}})"
        )
    if not mapping:
        raise PipelineError(
            f"{where}: kernel {stage.kernel.name!r} takes none of the variables of {prev} ({shown}); "
            "name what it takes with Stage(..., variables={argument: variable})"
        )
    return mapping


def _refuse_until(until: Any, where: str, k: int) -> None:
    """``until=`` on a stage that reads another store: refused (its n cannot grow)."""
    if until is not None:
        raise PipelineError(
            f"{where}: until={until!r} needs a design whose n can grow (MonteCarlo, LatinHypercube "
            f"with strata= given, Sobol, Halton, Saltelli), and this stage reads stage {k - 1}'s "
            "store (a FromStore, of fixed size); leave until= out of this stage (reduce= works "
            "without it), or give it to a stage with such a design"
        )


def _check_with_space(kernel: Kernel, space: Space, options: Mapping[str, Any], where: str, k: int) -> None:
    """A stage's options checked as :func:`daskbatch.run` checks them (nothing runs)."""
    from .options import RunOptions

    if isinstance(space, FromStore):
        _refuse_until(options.get("until"), where, k)
    try:
        RunOptions.from_arguments(kernel, space, **options)
    except DaskbatchError as e:
        raise PipelineError(f"{where}: {e}") from None


def _check_without_space(
    kernel: Kernel, options: Mapping[str, Any], batch_dims: Sequence[str], where: str, k: int
) -> None:
    """The options of a stage that reads the previous store, checked as far as they can be
    before that store exists: as :meth:`RunOptions.from_arguments` checks them, with the
    previous stage's batch dims for ``reduce=`` and ``reduce_dims=``."""
    from . import options as opt
    from .reductions import parse_reduce

    _refuse_until(options.get("until"), where, k)
    try:
        opt.check_plain_options(
            options.get("chunk_size", "auto"),
            options.get("progress", True),
            options.get("overwrite", False),
            options.get("constants"),
            options.get("retries", 0),
            options.get("timeout"),
            options.get("retry_failed", False),
            options.get("verify", False),
            options.get("kernel_changed", "refuse"),
            options.get("callbacks"),
        )
        opt.jsonable(dict(options.get("constants") or {}), "constants")
        opt.memory_limit_bytes(options.get("memory_limit"))
        opt.cluster_of(options.get("cluster", "auto"), options.get("n_workers"), kernel)
    except DaskbatchError as e:
        raise PipelineError(f"{where}: {e}") from None
    reduce, dims = options.get("reduce"), options.get("reduce_dims")
    try:
        reductions = parse_reduce(
            reduce, kernel.outputs, tuple(batch_dims), dims=dims, dims_name="reduce_dims"
        )
    except DaskbatchError as e:
        raise PipelineError(f"{where}: {e}") from None
    try:
        opt.check_unreduced(kernel, reductions)
    except DaskbatchError as e:
        raise PipelineError(f"{where}: {e}") from None


def _refuse_stale(st: Any, space: FromStore, k: int) -> None:
    """Refuse a stage's store computed from another version of the previous store."""
    info = st.info() if st.path.is_dir() else None
    old = (info or {}).get("space_spec")
    if not isinstance(old, Mapping) or old.get("type") != "fromstore":
        return  # a new store, or another space: daskbatch.run decides
    change = upstream_change(old, space.spec())
    if change:
        raise FingerprintMismatchError(
            f"store {str(st.path)!r} (stage {k}) was computed from another version of the store "
            f"it reads, {space.path!r}: {change}. To compute stage {k} again from it, give that stage "
            "overwrite=True (Stage(..., overwrite=True)), or use a new store path"
        )


class _StageProgress(Callback):
    """The progress of one stage: a line naming it, then a bar labelled ``stage k/n``."""

    def __init__(self, label: str, desc: str, enabled: bool) -> None:
        self.label, self.desc, self.enabled = label, desc, enabled
        self.started = False
        self.bar: Any = None

    def on_run_start(self, event: RunStart) -> None:
        from .progress import Progress

        self.started = True
        if self.enabled:
            done = event.samples_done
            more = f", {done:,} done already: continuing" if done else ""
            logger.info(f"{self.label} ({event.n_samples:,} samples{more})")
        self.bar = Progress(
            event.n_samples,
            initial=event.samples_done,
            failed=event.samples_failed,
            enabled=self.enabled and event.blocks_pending > 0,
            desc=self.desc,
        )

    def on_block_end(self, event) -> None:
        if self.bar is not None:
            self.bar.update(event.n_samples, event.n_not_ok)

    def on_run_end(self, event: RunEnd) -> None:
        if self.bar is not None:
            self.bar.close()
