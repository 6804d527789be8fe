"""A space read from another store: :class:`FromStore`.

:class:`FromStore` is a space whose samples are another store's samples: its batch
dims, shape and coordinates are the upstream store's, and its parameters are the
upstream's outputs (or stored parameters, status, batch dims) chosen by
``variables``. Each block reads only its own region of the upstream arrays, in the
worker; the driver reads metadata and the upstream's block records. The upstream
must be complete. Its identity (store id, fingerprint, kernel code, a digest of its
committed blocks' checksums) and a readable summary of it (kernel, space type,
seed, shape, constants) are in the space's spec, hence in the downstream store's
fingerprint: a downstream store is refused once its upstream changed, with the
change named (e.g. ``seed 1 -> 2``, :func:`upstream_change`).

Upstream samples that failed (or timed out, or crashed) pass on the values their
store holds (the output's fill value: NaN for floats). A stage that must tell them
apart asks for the upstream ``status`` under another name, e.g.
``variables={"y": "y", "upstream_status": "status"}`` (1 is ok), and raises or
skips as it sees fit.

:mod:`daskbatch.pipeline` (chained stages) is the import point for these names too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError, StoreError
from .kernel import STATUS
from .spacebase import Param, Space

__all__ = ["SPEC_KEYS", "FromStore", "upstream_change"]

#: the keys of a FromStore's spec (what ``space_from_spec`` accepts for ``type = "fromstore"``)
SPEC_KEYS = frozenset(
    {
        "type",
        "path",
        "variables",
        "copy",
        "shape",
        "upstream_kernel",
        "upstream_space",
        "upstream_constants",
        "upstream_store",
    }
)

#: constants longer than this (as JSON) are summarised by their digest in the spec
_CONSTANTS_INLINE = 400

# the upstream arrays a process opened, per store path and store id
_OPENED: dict[tuple[str, str], dict[str, Any]] = {}
_OPENED_LOCK = threading.Lock()


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
    >>> space = db.FromStore(up, variables={"z": "y"})  # the kernel argument z reads y
    >>> space.batch_dims, space.batch_shape
    (('x',), (3,))
    >>> @db.kernel(outputs={"w": db.Output()})
    ... def plus_one(z):
    ...     return z + 1
    >>> down = os.path.join(os.path.dirname(up), "down.zarr")
    >>> _ = db.run(plus_one, space, down, cluster="serial", progress=False)
    >>> db.open(down).w.values.tolist()
    [2.0, 5.0, 10.0]
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        variables: Sequence[str] | Mapping[str, str] | None = None,
        *,
        copy: bool = False,
    ) -> None:
        from .storeview import StoreView

        if not isinstance(store, str | os.PathLike) or not str(store).strip():
            raise SpaceError(f"FromStore: store={store!r} must be the path of a daskbatch store")
        if not isinstance(copy, bool):
            raise SpaceError(f"FromStore: copy={copy!r} must be True (store the values too) or False")
        st = StoreView(store)
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
        from .hints import resume_hint

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
            from .storeview import StoreView

            ds = StoreView(self.path).open_dataset()
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
