"""Chained stages: a space read from another store, and pipelines of runs.

:class:`FromStore` is a space whose samples are another store's samples: its batch
dims, shape and coordinates are the upstream store's, and its parameters are the
upstream's outputs (or stored parameters, status, batch dims) chosen by
``variables``. Each block reads only its own region of the upstream arrays, in the
worker; the driver reads metadata and the upstream's block records. The upstream
must be complete. Its identity (store id, fingerprint, kernel code, a digest of its
committed blocks' checksums) and a readable summary of it (kernel, space type,
seed, shape, constants) are in the space's spec, hence in the downstream store's
fingerprint: a downstream store is refused once its upstream changed, with the
change named (e.g. ``seed 1 -> 2``).

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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .callbacks import Callback, RunEnd, RunStart
from .errors import DaskbatchError, FingerprintMismatchError, KernelSignatureError, SpaceError, StoreError
from .kernel import STATUS, Kernel
from .log import logger
from .space import _FROMSTORE_SPEC
from .spacebase import Param, Space

__all__ = ["FromStore", "Pipeline", "PipelineError", "Stage", "upstream_change"]

#: the keys of a FromStore's spec (what ``space_from_spec`` accepts for ``type = "fromstore"``)
SPEC_KEYS = frozenset(_FROMSTORE_SPEC)

#: constants longer than this (as JSON) are summarised by their digest in the spec
_CONSTANTS_INLINE = 400

# the upstream arrays a process opened, per store path and store id
_OPENED: dict[tuple[str, str], dict[str, Any]] = {}
_OPENED_LOCK = threading.Lock()


class PipelineError(DaskbatchError):
    """A pipeline or one of its stages is not valid (nothing was run)."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _is_index(arr: Any) -> bool:
    """Whether the upstream array of a batch dim is a sample index written block by
    block (int64, fill value -1), not a coordinate written at creation (grid axis)."""
    try:
        return np.dtype(arr.dtype) == np.int64 and int(arr.fill_value) == -1
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- FromStore


class FromStore(Space):
    """A space whose samples are another (complete) store's samples.

    Parameters
    ----------
    store
        The upstream store's path. It must be complete: no pending sample.
    variables
        What the kernel gets, per sample: a list of the upstream's variable names
        (each passed under its own name), or ``{kernel_argument: upstream_variable}``.
        Variables are the upstream's outputs, its stored parameters (and labels),
        its ``status`` (1 ok, 2 failed, 3 timeout, 4 crashed; pass it under another
        name) and its batch dims (a grid axis: its values; ``sample``: the sample
        index). Default: every output of the upstream. Text and ragged outputs
        cannot be passed on.
    copy
        Also store the values read from the upstream in the new store (by default
        they are referenced: the new store's spec names the upstream store, its
        identity and the variables).

    Notes
    -----
    The batch dims, shape and coordinates (grid axes) are the upstream's. Each
    block reads only its region of the upstream arrays, in the worker. Upstream
    samples that are not ok pass on the values stored for them (NaN for floats).

    The spec names the upstream (path, store id, fingerprint, kernel code, a digest
    of its committed blocks) and summarises it (kernel, space type, seed, shape,
    constants): a store computed from it is refused once the upstream changed, with
    the change named.

    Examples
    --------
    >>> import daskbatch as db, tempfile, os
    >>> @db.kernel(outputs={"y": db.Output()})
    ... def square(x):
    ...     return x * x
    >>> up = os.path.join(tempfile.mkdtemp(), "up.zarr")
    >>> _ = db.run(square, db.Grid(x=[1.0, 2.0, 3.0]), up, cluster="serial", progress=False)
    >>> space = FromStore(up, variables={"z": "y"})
    >>> space.batch_dims, space.batch_shape
    (('x',), (3,))
    >>> space.block((slice(0, 2),))["z"].tolist()
    [1.0, 4.0]
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        variables: Sequence[str] | Mapping[str, str] | None = None,
        *,
        copy: bool = False,
    ) -> None:
        from .store import Store

        if not isinstance(store, str | os.PathLike) or not str(store).strip():
            raise SpaceError(f"FromStore: store={store!r} must be the path of a daskbatch store")
        if not isinstance(copy, bool):
            raise SpaceError(f"FromStore: copy={copy!r} must be True (store the values too) or False")
        st = Store(store)
        self.path = str(st.path)
        self.copy = copy
        if not st.path.exists():
            raise SpaceError(
                f"FromStore: store {self.path!r} does not exist; run the stage that writes it first"
            )
        try:
            info = st.require_info()
        except StoreError as e:
            raise SpaceError(f"FromStore: {e}") from None
        self._info_summary(info)
        self._check_complete(st, info)
        self._find_variables(info)
        self.variables = self._resolve(variables)
        self._make_params()
        self._limit: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ reading the upstream

    def _info_summary(self, info: Mapping[str, Any]) -> None:
        layout = info["layout"]
        self.store_id = str(info.get("store_id", ""))
        self.batch_dims = tuple(str(d) for d in layout["batch_dims"])
        self.batch_shape = tuple(int(n) for n in layout["batch_shape"])
        self._upstream_shape = self.batch_shape
        self._outputs = list((info.get("kernel") or {}).get("outputs") or {})
        space_spec = info.get("space_spec") or {}
        summary: dict[str, Any] = {"type": space_spec.get("type"), "shape": list(self.batch_shape)}
        if info.get("seed") is not None:
            summary["seed"] = info["seed"]
        constants = info.get("constants") or {}
        text = json.dumps(constants, sort_keys=True, default=str)
        self._spec_upstream: dict[str, Any] = {
            "upstream_kernel": (info.get("kernel") or {}).get("identity", ""),
            "upstream_space": summary,
            "upstream_constants": (
                constants if len(text) <= _CONSTANTS_INLINE else {"sha256": _digest(constants)}
            ),
        }
        code = (info.get("kernel_code") or {}).get("sha256") or info.get("kernel_source_sha256")
        self._identity = {
            "store_id": self.store_id,
            "fingerprint": str(info.get("fingerprint", ""))[:16],
            "code": str(code or "")[:16],
        }

    def _check_complete(self, st: Any, info: Mapping[str, Any]) -> None:
        """Refuse an upstream with pending samples; note its failed ones and its content."""
        from .results import resume_hint

        records = st.ledger.records()
        counts = np.zeros(len(STATUS), dtype=np.int64)
        h = hashlib.sha256()
        for block in sorted(records):
            rec = records[block]
            counts += rec.counts_array()
            h.update(json.dumps([list(block), list(rec.counts), sorted(rec.checksums.items())]).encode())
        n = math.prod(self.batch_shape)
        pending = n - int(counts.sum()) + int(counts[STATUS["pending"]])
        if pending:
            numblocks = math.prod(int(b) for b in info["layout"]["numblocks"])
            holder = st.lock().holder()
            running = " (a run is writing it now)" if holder else ""
            raise SpaceError(
                f"FromStore: store {self.path!r} is not complete{running}: {pending:,} of {n:,} samples "
                f"are pending ({len(records):,} of {numblocks:,} blocks done); finish it first "
                f"({resume_hint(info, self.path)})"
            )
        #: upstream samples that are not ok (failed, timeout, crashed): their stored values pass on
        self.upstream_failed = int(n - counts[STATUS["ok"]])
        self._identity["content"] = h.hexdigest()[:16]

    def _find_variables(self, info: Mapping[str, Any]) -> None:
        """What of the upstream can be passed on: ``{name: (kind, ...)}``."""
        import zarr

        from .ragged import padded_meta

        root = zarr.open_group(self.path, mode="r")
        nd = len(self.batch_dims)
        found: dict[str, tuple[Any, ...]] = {}
        coords: dict[str, np.ndarray] = {}
        arrays = dict(root.arrays())
        for name, arr in arrays.items():
            dims = tuple(arr.metadata.dimension_names or ())
            attrs = arr.attrs.asdict()
            if name in self.batch_dims or dims[:nd] != self.batch_dims or name.startswith("_daskbatch"):
                continue
            if isinstance(attrs.get("daskbatch"), Mapping) and "length_of" in attrs["daskbatch"]:
                continue  # the lengths of a padded array
            if padded_meta(attrs) is not None:
                kind = "text" if padded_meta(attrs).get("encoding") else "ragged"  # type: ignore[union-attr]
                found[name] = ("unusable", f"is {kind} (only numbers and booleans of a fixed shape pass on)")
                continue
            dtype = np.dtype(arr.dtype)
            if dtype.kind not in "biuf":
                found[name] = ("unusable", f"has values of type {dtype} (only numbers and booleans pass on)")
                continue
            kind = "status" if name == "status" else "array"
            found[name] = (kind, dims[nd:], tuple(int(s) for s in arr.shape[nd:]), dtype)
        axis_dims = [d for d in self.batch_dims if d in arrays and not _is_index(arrays[d])]
        if axis_dims:
            from .store import Store

            ds = Store(self.path).open_dataset()
            for d in axis_dims:
                coords[d] = np.asarray(ds[d].values)
        for d in self.batch_dims:
            if d in coords:
                found[d] = ("axis", coords[d].dtype)
            else:
                found[d] = ("index", np.dtype(np.int64))
        # shown in this order: outputs, other arrays (parameters, labels), batch dims, status
        outputs = [o for o in self._outputs if o in found]
        others = sorted(n for n in found if n not in outputs and n not in self.batch_dims and n != "status")
        order = [*outputs, *others, *self.batch_dims, *(["status"] if "status" in found else [])]
        self._available = {n: found[n] for n in order}
        self._coords = coords

    def _resolve(self, variables: Any) -> dict[str, str]:
        """``{kernel argument: upstream variable}``, checked."""
        usable = [n for n, v in self._available.items() if v[0] != "unusable"]
        if variables is None:
            outputs = [o for o in self._outputs if self._available.get(o, ("",))[0] == "array"]
            if not outputs:
                raise SpaceError(
                    f"FromStore: store {self.path!r} has no output that can pass on; name the "
                    f"variables to pass, e.g. variables={usable[:3]!r}"
                )
            return {o: o for o in outputs}
        if isinstance(variables, Mapping):
            mapping = dict(variables)
        elif isinstance(variables, Sequence) and not isinstance(variables, str):
            mapping = {v: v for v in variables}
            if len(mapping) != len(variables):
                raise SpaceError(f"FromStore: variables={list(variables)!r} names a variable twice")
        else:
            raise SpaceError(
                f"FromStore: variables={variables!r} must be a list of the store's variables, "
                "or a dict {kernel_argument: variable}"
            )
        if not mapping:
            raise SpaceError(f"FromStore: variables is empty; pass at least one of {usable}")
        for arg, var in mapping.items():
            if not isinstance(arg, str) or not arg.isidentifier():
                raise SpaceError(
                    f"FromStore: variables: {arg!r} must be a valid Python identifier (it is passed "
                    "to the kernel as a keyword argument)"
                )
            if not isinstance(var, str) or var not in self._available:
                raise SpaceError(
                    f"FromStore: variables: {var!r} is not a variable of store {self.path!r}; "
                    f"its variables are {usable}"
                )
            kind = self._available[var]
            if kind[0] == "unusable":
                raise SpaceError(f"FromStore: variables: {var!r} of store {self.path!r} {kind[1]}")
            if arg == "status":
                raise SpaceError(
                    f"FromStore: variables: 'status' is the new store's own; pass {var!r} under another "
                    f"name, e.g. variables={{'upstream_status': {var!r}}}"
                )
            if arg in self.batch_dims and arg != var:
                raise SpaceError(
                    f"FromStore: variables: {arg!r} is a batch dim of the store; pass {var!r} under "
                    "another name"
                )
        return mapping

    def _make_params(self) -> None:
        self.params = {}
        for arg, var in self.variables.items():
            kind = self._available[var]
            if kind[0] in ("array", "status"):
                _, core_dims, core_shape, dtype = kind
                dims = (*self.batch_dims, *core_dims)
                self.params[arg] = Param(arg, dims, core_shape, dtype, stored=self.copy)
            elif arg == var:  # a batch dim under its own name: broadcast along its dim
                self.params[arg] = Param(arg, (arg,), (), kind[1], is_axis=True)
            else:  # a batch dim under another name: a value per sample
                self.params[arg] = Param(arg, self.batch_dims, (), kind[1], stored=self.copy)

    def _arrays(self) -> dict[str, Any]:
        """The upstream arrays this space reads, opened once per process."""
        import zarr

        key = (self.path, self.store_id)
        with _OPENED_LOCK:
            got = _OPENED.get(key)
            if got is None:
                root = zarr.open_group(self.path, mode="r")
                now = (root.attrs.get("daskbatch") or {}).get("store_id")
                if now != self.store_id:
                    raise SpaceError(
                        f"FromStore: store {self.path!r} was written again after this space was made "
                        f"(store id {self.store_id} -> {now}); make the space again"
                    )
                names = {v for v in self.variables.values() if self._available[v][0] in ("array", "status")}
                got = _OPENED[key] = {n: root[n] for n in names}
            return got

    # ------------------------------------------------------------------ the Space API

    @property
    def upstream(self) -> str:
        """The upstream store's path."""
        return self.path

    def batch_coords(self) -> dict[str, np.ndarray]:
        return {d: c[: self.batch_shape[self.batch_dims.index(d)]] for d, c in self._coords.items()}

    def _dim_values(self, var: str, s: slice) -> np.ndarray:
        if var in self._coords:
            return self._coords[var][s]
        return np.arange(s.start, s.stop, dtype=np.int64)

    def block(self, slices):
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, self.batch_shape, strict=True))
        shape = tuple(s.stop - s.start for s in region)
        arrays = None
        out: dict[str, np.ndarray] = {}
        for arg, var in self.variables.items():
            kind = self._available[var][0]
            if kind in ("array", "status"):
                arrays = arrays if arrays is not None else self._arrays()
                out[arg] = np.asarray(arrays[var][region])
                continue
            i = self.batch_dims.index(var)
            values = self._dim_values(var, region[i])
            if arg == var:
                out[arg] = values
            else:
                along = [1] * len(shape)
                along[i] = -1
                out[arg] = np.ascontiguousarray(np.broadcast_to(values.reshape(along), shape))
        return out

    def to_dask(self, chunks):
        import dask.array as da
        from dask.base import tokenize

        out = {}
        for arg, var in self.variables.items():
            p = self.params[arg]
            kind = self._available[var][0]
            name = f"daskbatch-fromstore-{tokenize(self.path, self.store_id, arg, var, chunks)}"
            if kind in ("array", "status"):
                arr = self._arrays()[var]
                if self._limit is None:
                    out[arg] = da.from_array(arr, chunks=(*chunks, *p.core_shape), name=name)
                else:  # the first samples of the store, still read lazily
                    region = tuple(slice(0, n) for n in self.batch_shape)
                    whole = da.from_array(arr, chunks=arr.chunks, name=f"{name}-whole")
                    out[arg] = whole[region].rechunk((*chunks, *p.core_shape))
            elif arg == var:
                i = self.batch_dims.index(var)
                values = self._dim_values(var, slice(0, self.batch_shape[i]))
                out[arg] = da.from_array(values, chunks=(chunks[i],), name=name)
            else:

                def gen(block_info=None, _arg=arg):
                    loc = block_info[None]["array-location"]
                    return self.block(tuple(slice(a, b) for a, b in loc))[_arg]

                out[arg] = da.map_blocks(gen, chunks=chunks, dtype=p.dtype, name=name)
        return out

    def head(self, n: int) -> FromStore:
        # keep trailing dims whole where possible, cut the leading ones (as Grid.head)
        shape: list[int] = []
        budget = max(1, n)
        for size in reversed(self.batch_shape):
            k = max(1, min(size, budget))
            shape.append(k)
            budget = max(1, budget // k)
        return self._limited(tuple(reversed(shape)))

    def _limited(self, shape: tuple[int, ...]) -> FromStore:
        import copy as _copy

        if len(shape) != len(self.batch_shape) or any(
            not 1 <= s <= n for s, n in zip(shape, self._upstream_shape, strict=True)
        ):
            raise SpaceError(
                f"FromStore: shape={list(shape)} must have a size from 1 to the store's "
                f"{list(self._upstream_shape)} per batch dim"
            )
        other = _copy.copy(self)
        other.__dict__.pop("_daskbatch_extension", None)
        other.batch_shape = tuple(shape)
        other._limit = None if tuple(shape) == self._upstream_shape else tuple(shape)
        return other

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "fromstore",
            "path": self.path,
            "variables": dict(self.variables),
            "copy": self.copy,
        }
        if self._limit is not None:
            out["shape"] = list(self._limit)
        out.update(json.loads(json.dumps(self._spec_upstream, default=str)))
        out["upstream_store"] = dict(self._identity)
        return out

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> FromStore:
        """The space a :meth:`spec` (or a spec file's ``[space]`` table: ``type =
        "fromstore"``, ``path``, optionally ``variables`` and ``copy``) describes. A
        ``path`` relative to ``base_dir`` (a spec file's folder) is read from there."""
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise SpaceError("space.path: a fromstore space needs path = 'upstream.zarr'")
        p = Path(path).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir) / p
        variables = spec.get("variables")
        space = cls(p, variables, copy=spec.get("copy", False))
        if spec.get("shape") is not None:
            space = space._limited(tuple(int(s) for s in spec["shape"]))
        return space

    def extension_of(self, old_spec: Mapping[str, Any]) -> str | None:
        change = upstream_change(old_spec, self.spec())
        if change:
            return f"the upstream store {self.path!r} changed: {change}"
        return "a FromStore cannot be extended with new samples"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_daskbatch_extension", None)
        return state

    def __repr__(self) -> str:
        shape = ", ".join(f"{d}: {n}" for d, n in zip(self.batch_dims, self.batch_shape, strict=True))
        names = ", ".join(a if a == v else f"{a}={v}" for a, v in self.variables.items())
        return f"<FromStore {self.path!r} ({shape}) {self.size:,} samples; params: {names}>"


def upstream_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """What differs between the upstream two FromStore specs were made from, in words
    (``"seed 1 -> 2; it was written again"``); None when it is the same upstream.

    Examples
    --------
    >>> old = {"upstream_space": {"type": "montecarlo", "seed": 1, "shape": [10]},
    ...        "upstream_store": {"store_id": "a", "content": "x"}}
    >>> new = {"upstream_space": {"type": "montecarlo", "seed": 2, "shape": [10]},
    ...        "upstream_store": {"store_id": "b", "content": "y"}}
    >>> upstream_change(old, new)
    'seed 1 -> 2; it was written again (a new store)'
    >>> upstream_change(old, old) is None
    True
    """

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    parts: list[str] = []
    if old.get("path") is not None and new.get("path") is not None and old["path"] != new["path"]:
        parts.append(f"path {old['path']!r} -> {new['path']!r}")
    was, now = dict(old.get("upstream_space") or {}), dict(new.get("upstream_space") or {})
    for key, what in (("type", "space"), ("seed", "seed"), ("shape", "shape")):
        if was.get(key) != now.get(key):
            parts.append(f"{what} {short(was.get(key))} -> {short(now.get(key))}")
    if old.get("upstream_kernel") != new.get("upstream_kernel"):
        parts.append(f"kernel {old.get('upstream_kernel')!r} -> {new.get('upstream_kernel')!r}")
    c_old, c_new = old.get("upstream_constants"), new.get("upstream_constants")
    if c_old != c_new:
        if isinstance(c_old, Mapping) and isinstance(c_new, Mapping):
            keys = sorted(k for k in set(c_old) | set(c_new) if c_old.get(k) != c_new.get(k))
            parts.append(
                "constants "
                + ", ".join(f"{k}: {short(c_old.get(k))} -> {short(c_new.get(k))}" for k in keys[:4])
            )
        else:
            parts.append("constants changed")
    i_old, i_new = dict(old.get("upstream_store") or {}), dict(new.get("upstream_store") or {})
    if i_old.get("code") != i_new.get("code"):
        parts.append("the kernel's code changed")
    if i_old.get("fingerprint") != i_new.get("fingerprint") and not parts:
        parts.append("its space, kernel, constants or blocks changed")
    if i_old.get("store_id") != i_new.get("store_id"):
        parts.append("it was written again (a new store)")
    elif i_old.get("content") != i_new.get("content"):
        parts.append(
            "its results changed since (samples computed again: retry_failed, "
            "kernel_changed='continue', a repair, or samples added)"
        )
    return "; ".join(parts) or None


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
    >>> from daskbatch.testing import affine
    >>> Stage(affine, "first.zarr", space=db.Grid(a=[1.0, 2.0]), constants={"b": 1.0})
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
    the previous store's variables and the constants, options, store paths), then
    runs them in order. Running the pipeline again skips the complete stages (a
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
    >>> import daskbatch as db, tempfile, os
    >>> from daskbatch.testing import affine
    >>> folder = tempfile.mkdtemp()
    >>> p = Pipeline([
    ...     Stage(affine, os.path.join(folder, "one.zarr"), space=db.Table({"a": [1.0, 2.0]}),
    ...           constants={"b": 1.0}),
    ...     Stage(affine, os.path.join(folder, "two.zarr"), variables={"a": "y"},
    ...           constants={"scale": 10.0}),
    ... ])
    >>> results = p.run(cluster="serial", progress=False)
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
            mapping = None
            if stage.space is None:
                assert before is not None
                mapping = _variables_for(stage, before, constants, where, k)
            else:
                try:
                    stage.kernel.check_arguments(stage.space.params, constants)
                except KernelSignatureError as e:
                    raise PipelineError(f"{where}: {e}") from None
            out.append((options, mapping))
            before = _Available(stage, before, mapping)
        return out

    # ------------------------------------------------------------------ running

    def run(self, **options: Any) -> list[Any]:
        """Run every stage in order; return their :class:`~daskbatch.RunResult` objects.

        ``options`` are options of :func:`daskbatch.run` for every stage (a stage's
        own options take precedence). Every stage is checked before any runs.
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
