"""A kernel over a space as a lazy :class:`xarray.Dataset`, without a store: :func:`apply`.

:func:`apply` builds a dask graph and returns at once; nothing runs until the
dataset (or part of it) is computed. The graph has two layers of one task per block,
then a small task per variable and block that picks the variable out:

1. the block's parameters, drawn by ``Space.block`` (what a block task of
   :func:`daskbatch.run` calls): a design computes them from the sample index, a grid
   from its axes, a table read from files reads its rows (once, every column); a
   table held in memory and a list of files (``Space.carries_rows``) carry the
   block's rows themselves, as a run's tasks do. Nothing else of the space travels.
   (``Space.to_dask`` is not used: it makes a task per parameter and block, and its
   names do not tell two spaces apart, so two of its arrays computed together can
   swap values.)
2. the kernel on the block (``Kernel.run_block``, with the block's parameters as a
   run passes them): a sample that raises gets its output's fill value and status
   ``failed``, the block's other samples are kept; outputs are cast to their
   declared dtypes. The same values, bit for bit, as a run's store.
3. each output, ``status`` and each parameter the store would keep, as a dask array
   chunked like the blocks along the batch dims (whole along core dims).

The parameters' keys depend only on the space's content and the blocks (its
:meth:`~daskbatch.Space.spec` and chunks), so two datasets of one space share them
(``xarray.merge`` of two kernels' outputs compares nothing); the kernel's keys are
new on every call.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .blocktask import Opaque, kernel_inputs, run_params
from .errors import DaskbatchError
from .kernel import STATUS, Kernel
from .log import logger
from .outputs import TEXT_DTYPE, TEXT_KINDS
from .ragged import decode_text
from .spacebase import Param, Space

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["AUTO_WORKERS", "SHOWN_FAILED_BLOCKS", "apply", "apply_block_shape"]

#: ``chunk_size="auto"`` cuts blocks as :func:`daskbatch.run` would for this many
#: workers without a probe: at least 4 blocks per worker, at most 100,000 samples and
#: 8 MiB of parameters and outputs per block (see
#: :func:`~daskbatch.chunking.auto_samples_per_block`), on any machine and cluster
AUTO_WORKERS = 8
#: blocks with failed samples whose first error is logged, per dataset and process
SHOWN_FAILED_BLOCKS = 3


def apply(
    kernel: Kernel,
    space: Space,
    *,
    chunk_size: int | str | Mapping[str, int] = "auto",
    constants: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``kernel`` over every sample of ``space``, as a lazy :class:`xarray.Dataset`.

    Returns at once: every data variable is a dask array, one chunk per block along
    the batch dims, and nothing runs until it is computed (``.compute()``,
    ``.values``, a plot, ``to_zarr``), on whatever dask scheduler is active: the
    threads of this process by default, or a :class:`distributed.Client`'s cluster.
    The dataset has the variables, dims, coordinates and dtypes that
    :func:`daskbatch.open` gives for a store that :func:`daskbatch.run` filled with
    the same kernel and space: the outputs, ``status`` (1 ok, 2 failed) and the
    parameters a store keeps, and its values are the same, bit for bit. A sample
    that raises gets its output's fill value and status 2; the other samples are
    unaffected. The first error of a few blocks with failures is logged (the
    ``daskbatch`` logger, where the block ran); a run keeps every failure's message
    and traceback. A kernel whose values do not fit its outputs' declarations
    (shape, dtype) fails its samples so, with the reason logged, where a run's probe
    refuses it before starting.

    Use ``apply`` to explore: a cheap kernel, a space that computes in seconds or
    minutes, an answer small enough to hold (``ds.response.mean("sample")``), or a
    result composed with other xarray and dask code. Use :func:`daskbatch.run` for
    anything long or costly: it commits each block to a store as it finishes, so an
    interrupted run resumes where it stopped, it shows progress, keeps every
    failure's message, traceback and inputs, retries and times out samples
    (``retries``, ``timeout``), and isolates samples that crash their process. An
    interrupted ``compute()`` of ``apply`` keeps nothing.

    Parameters
    ----------
    kernel
        A function decorated with :func:`daskbatch.kernel`.
    space
        A :class:`~daskbatch.Grid`, :class:`~daskbatch.Table`,
        :class:`~daskbatch.Files`, a design, a :class:`~daskbatch.Product`.
    chunk_size
        Samples per block (one task, one chunk): an int, a dict of block sizes per
        batch dim, or ``"auto"``: without running the kernel (it runs only when
        computed), blocks as :func:`daskbatch.run` would cut them for
        :data:`AUTO_WORKERS` workers with no measured cost, the same on every machine
        and cluster (at least 32 blocks, at most 100,000 samples and 8 MiB of
        parameters and outputs per block).
    constants
        Keyword arguments passed unchanged to every kernel call (as for
        :func:`daskbatch.run`, values a store could record).

    Returns
    -------
    xarray.Dataset
        Lazy: batch dims with their coordinates (grid axes, or ``sample`` indices),
        each output with its core dims and coordinates, ``status`` (int8), the
        parameters as variables (a table's labels as coordinates). Outputs declared
        ``Output(store=False)`` are variables too: nothing is stored here.

    Raises
    ------
    DaskbatchError
        The errors :func:`daskbatch.run` raises for the same kernel, space,
        ``chunk_size`` and ``constants``; and for a ragged output
        (``shape=(None,)``), whose width is known only once every sample is computed.

    Notes
    -----
    The block of a kernel not declared ``threadsafe`` runs one at a time per
    process, whatever the scheduler: on the default threaded scheduler, blocks of
    such a kernel do not run in parallel; a ``distributed`` cluster of processes
    runs one per process. Each block's parameters are drawn by the task that uses
    them, so a space of any size costs no memory until computed (a table held in
    memory, or a list of files, is cut into its blocks' rows at once, as a run does).

    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     if x < 0:
    ...         raise ValueError("negative")
    ...     return x * x
    >>> ds = db.apply(square, db.Grid(x=[-1.0, 2.0, 3.0]), chunk_size=2)
    >>> ds.y.chunks
    ((2, 1),)
    >>> ds.y.values.tolist(), ds.status.values.tolist()  # doctest: +SKIP
    ([nan, 4.0, 9.0], [2, 1, 1])
    >>> float(ds.y.where(ds.status == 1).mean())
    6.5
    """
    constants = _checked(kernel, space, chunk_size, constants)
    chunks = _chunks(tuple(space.batch_shape), apply_block_shape(kernel, space, chunk_size))
    return _dataset(kernel, space, chunks, constants)


def _dataset(
    kernel: Kernel, space: Space, chunks: tuple[tuple[int, ...], ...], constants: dict[str, Any]
) -> xr.Dataset:
    """The lazy dataset of :func:`apply`, its arguments checked and its blocks cut."""
    import xarray as xr

    space_token = _space_token(space, chunks)
    params = _parameters(space, chunks, f"daskbatch-block-params-{space_token}")
    # the kernel's keys are new on every call: two kernels of one name (a notebook cell
    # run again) never share them
    token = uuid.uuid4().hex
    kept = run_params(space.params, kernel)
    batch = _Batch(tuple(space.batch_dims), tuple(space.batch_shape), dict(space.batch_coords()))
    blocks = _kernel_blocks(params, _Context(kernel, constants, kept, batch, token))

    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for name, o in kernel.outputs.items():
        var_dims, dtype = (*batch.batch_dims, *o.dims), TEXT_DTYPE if o.text else o.dtype
        var = _pick_variable(
            blocks, ("outputs", name), var_dims, o.shape, dtype, f"daskbatch-output-{name}-{token}"
        )
        data_vars[name] = xr.Variable(var_dims, var, dict(o.attrs))
        for d, values in o.coords.items():
            coords.setdefault(d, xr.Variable((d,), _text_as_strings(values)))
    status = _pick_variable(
        blocks, ("status",), batch.batch_dims, (), np.dtype(np.int8), f"daskbatch-status-{token}"
    )
    data_vars["status"] = xr.Variable(batch.batch_dims, status, _status_attrs())
    for name, p in kept.items():
        if p.is_axis:
            continue
        if name in data_vars or name in coords:
            raise DaskbatchError(f"parameter {name!r} has the name of an output or a coordinate; rename one")
        # the values of the space's parameter, whatever the kernel: named by the space
        key_name = f"daskbatch-param-{name}-{space_token}"
        var = _pick_variable(params, ("values", name), p.dims, p.core_shape, _param_dtype(p), key_name)
        (coords if p.label else data_vars)[name] = xr.Variable(p.dims, var)
    coords.update(_batch_coords(batch))
    return xr.Dataset(data_vars, coords)


def apply_block_shape(
    kernel: Kernel, space: Space, chunk_size: int | str | Mapping[str, int] = "auto"
) -> tuple[int, ...]:
    """The block shape :func:`apply` cuts ``space`` into, along its batch dims.

    An int or a dict as :func:`daskbatch.run` takes them; ``"auto"`` as a run would
    choose for :data:`AUTO_WORKERS` workers and an unknown cost per sample (no probe):
    the same on every machine and cluster.

    Examples
    --------
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def f(a, b):
    ...     return a * b
    >>> apply_block_shape(f, db.Grid(a=range(100), b=range(30)), 300)
    (10, 30)
    >>> apply_block_shape(f, db.Grid(a=range(100), b=range(30)))
    (2, 30)
    """
    from .chunking import auto_samples_per_block, block_shape_for_samples, plan_block_shape

    dims, shape = tuple(space.batch_dims), tuple(space.batch_shape)
    if isinstance(chunk_size, str) and chunk_size == "auto":
        b_in = sum(math.prod(p.core_shape) * p.dtype.itemsize for p in space.params.values())
        b_out = sum(o.size * o.dtype.itemsize for o in kernel.outputs.values())
        samples = auto_samples_per_block(
            math.prod(shape), n_workers=AUTO_WORKERS, bytes_per_sample=b_in + b_out
        )
        return block_shape_for_samples(samples, shape)
    return plan_block_shape(dims, shape, chunk_size, n_workers=1)


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Batch:
    """The batch dims, as error records name a sample (``sample_label``)."""

    batch_dims: tuple[str, ...]
    batch_shape: tuple[int, ...]
    batch_coords: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class _Context:
    """What every kernel task of one :func:`apply` shares."""

    kernel: Kernel
    constants: Mapping[str, Any]
    #: the parameters a run's store keeps (its ``Layout.params``): grid axes, labels
    params: Mapping[str, Param]
    batch: _Batch
    token: str


def _checked(kernel: Any, space: Any, chunk_size: Any, constants: Mapping[str, Any] | None) -> dict[str, Any]:
    """The constants, once the arguments passed what :func:`daskbatch.run` checks of
    them, in its order and with its messages; a ragged output is refused."""
    from .options import _check_chunking, _check_kernel_and_space, _check_size, jsonable

    _check_kernel_and_space(kernel, space)
    _check_chunking(chunk_size, True, False, constants)  # progress, overwrite: run's defaults
    constants = dict(constants or {})
    jsonable(constants, "constants")
    kernel.check_arguments(space.params, constants)
    _check_size(kernel, space, chunk_size, None)
    for name, o in kernel.outputs.items():
        if o.ragged:
            raise DaskbatchError(
                f"output {name!r} is ragged (shape=(None,)): its width is known only once every sample "
                "is computed, so apply cannot make it a lazy array; use daskbatch.run (its store keeps "
                "ragged outputs)"
            )
    return constants


def _parameters(space: Space, chunks: tuple[tuple[int, ...], ...], name: str) -> Any:
    """Each block's parameters (``{"region", "values"}``), one task per block, as a
    dask array of objects chunked like the blocks."""
    import dask.array as da

    meta = np.empty((0,) * len(chunks), dtype=object)
    if getattr(space, "carries_rows", False):
        return _carried_rows(space, chunks, name, meta)
    return da.map_blocks(_draw_block, chunks=chunks, dtype=object, meta=meta, name=name, space=Opaque(space))


def _kernel_blocks(params: Any, ctx: _Context) -> Any:
    """The kernel on each block of ``params``, one task per block: ``{"outputs", "status"}``."""
    import dask.array as da

    dims = ctx.batch.batch_dims
    label = re.sub(r"\W", "_", ctx.kernel.name) or "kernel"
    return da.blockwise(
        _kernel_block,
        dims,
        params,
        dims,
        context=Opaque(ctx),
        name=f"daskbatch-kernel-{label}-{ctx.token}",
        dtype=object,
        meta=np.empty((0,) * len(dims), dtype=object),
        concatenate=False,
    )


def _pick_variable(
    source: Any, key: tuple[str, ...], var_dims: tuple[str, ...], core: tuple[int, ...], dtype: Any, name: str
) -> Any:
    """The variable at ``key`` of each block's record in ``source``, as a dask array
    (the record's batch dims, then core dims of sizes ``core``, whole)."""
    import dask.array as da

    nd = source.ndim
    return da.blockwise(
        _pick,
        var_dims,
        source,
        var_dims[:nd],
        key=Opaque(key),
        as_dtype=dtype,
        dtype=dtype,
        name=name,
        new_axes=dict(zip(var_dims[nd:], core, strict=True)),
        meta=np.empty((0,) * len(var_dims), dtype=dtype),
        concatenate=False,
    )


def _batch_coords(batch: _Batch) -> dict[str, Any]:
    """The batch dims' coordinates: a grid's axes, else the sample index."""
    import pandas as pd
    import xarray as xr

    coords: dict[str, Any] = {}
    for d, n in zip(batch.batch_dims, batch.batch_shape, strict=True):
        values = batch.batch_coords.get(d)
        if values is None:
            # the int64 index daskbatch.open reads, held as (start, stop) by pandas,
            # whatever the number of samples
            coords[d] = pd.RangeIndex(n, name=d)
        else:
            coords[d] = xr.Variable((d,), _text_as_strings(values))
    return coords


def _chunks(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    from .chunking import chunks_from_block_shape

    return chunks_from_block_shape(shape, block_shape)


def _space_token(space: Space, chunks: tuple[tuple[int, ...], ...]) -> str:
    """A name for the parameters of ``space`` cut into ``chunks``: its content (its
    spec, which a store's fingerprint uses too), or, for a space without one, new."""
    try:
        spec = json.dumps(space.spec(), sort_keys=True, default=str)
    except Exception:  # a space of the user's own without a spec
        return uuid.uuid4().hex
    text = f"{type(space).__module__}.{type(space).__qualname__}|{spec}|{chunks}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _regions(chunks: tuple[tuple[int, ...], ...]):
    """Every block's index and its (start, stop) along each batch dim."""
    import itertools

    edges = [np.concatenate([[0], np.cumsum(c)]).tolist() for c in chunks]
    for block in itertools.product(*(range(len(c)) for c in chunks)):
        yield block, tuple((e[i], e[i + 1]) for e, i in zip(edges, block, strict=True))


def _carried_rows(space: Space, chunks, name: str, meta: np.ndarray):
    """The parameters of a space whose tasks carry their rows (a table held in memory,
    a list of files): each block's rows, taken now, are the block's key in the graph."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dsk = {}
    for block, region in _regions(chunks):
        values = space.block(tuple(slice(a, b) for a, b in region))
        dsk[(name, *block)] = Opaque({"region": region, "values": values})
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, meta=meta)


def _draw_block(block_info: Any = None, space: Opaque | None = None) -> Opaque:
    """One block's parameters, drawn from the space (as a run's block task draws them)."""
    assert space is not None and block_info is not None
    region = tuple(tuple(int(x) for x in loc) for loc in block_info[None]["array-location"])
    values = space.value.block(tuple(slice(a, b) for a, b in region))
    return Opaque({"region": region, "values": values})


#: per dataset (its token), the blocks with failures logged in this process
_SHOWN: dict[str, int] = {}
_SHOWN_LOCK = threading.Lock()


def _kernel_block(params: Opaque, context: Opaque) -> Opaque:
    """Run the kernel on one block, as a run's block task does; keep outputs and status."""
    ctx: _Context = context.value
    region = tuple(slice(a, b) for a, b in params.value["region"])
    values = params.value["values"]
    batch_shape = tuple(s.stop - s.start for s in region)
    kernel_params, _ = kernel_inputs(values, ctx.params, ctx.batch.batch_dims)
    res = ctx.kernel.run_block(kernel_params, batch_shape, ctx.constants, space=ctx.batch, region=region)
    status = np.asarray(res.status, dtype=np.int8).reshape(batch_shape)
    if res.errors:
        _log_failures(ctx, region, int(np.count_nonzero(status != STATUS["ok"])), res.errors[0])
    outputs = {}
    for name, o in ctx.kernel.outputs.items():
        v = res.outputs[name]
        if o.text:  # a RaggedBlock of UTF-8 bytes: the strings, as daskbatch.open decodes them
            v = decode_text(v.padded(), v.lengths)
        outputs[name] = v
    return Opaque({"outputs": outputs, "status": status})


def _log_failures(ctx: _Context, region: tuple[slice, ...], n_failed: int, first: Mapping[str, Any]) -> None:
    with _SHOWN_LOCK:
        shown = _SHOWN.get(ctx.token, 0)
        if shown > SHOWN_FAILED_BLOCKS:
            return
        _SHOWN[ctx.token] = shown + 1
    if shown == SHOWN_FAILED_BLOCKS:
        logger.warning(
            f"apply({ctx.kernel.name}): more blocks have failed samples (not shown); their status "
            "is 2 (failed). daskbatch.run keeps every failure's message"
        )
        return
    where = ", ".join(f"{d} {s.start}:{s.stop}" for d, s in zip(ctx.batch.batch_dims, region, strict=True))
    size = math.prod(s.stop - s.start for s in region)
    logger.warning(
        f"apply({ctx.kernel.name}): {n_failed} of {size} samples failed in the block {where}; "
        f"first: {first.get('sample')}: {first.get('error')}"
    )


def _pick(record: Opaque, key: Opaque | None = None, as_dtype: Any = None) -> np.ndarray:
    """One variable of a block's record (``key``: the path to it), in its dtype."""
    assert key is not None
    value = record.value
    for k in key.value:
        value = value[k]
    return np.asarray(value).astype(as_dtype, copy=False)


# --------------------------------------------------------------------------- the variables


def _param_dtype(p: Param) -> np.dtype:
    """A parameter's dtype as :func:`daskbatch.open` reads it (text as strings)."""
    return TEXT_DTYPE if np.dtype(p.dtype).kind in TEXT_KINDS else np.dtype(p.dtype)


def _text_as_strings(values: Any) -> np.ndarray:
    """A coordinate's values as :func:`daskbatch.open` reads them (text as strings)."""
    arr = np.asarray(values)
    return arr.astype(TEXT_DTYPE) if arr.dtype.kind in TEXT_KINDS else arr


def _status_attrs() -> dict[str, Any]:
    """The attributes of a store's ``status`` (see :func:`daskbatch.layout.write_template`)."""
    codes = sorted(STATUS.items(), key=lambda kv: kv[1])
    return {
        "long_name": "per-sample status",
        "flag_values": [v for _, v in codes],
        "flag_meanings": " ".join(k for k, _ in codes),
    }
