"""A store's reductions: the committed blocks' partial states, merged, and the rounds of
a run that stops when its estimate has converged (``run(..., until=...)``).

A block's partial reduction states are part of its record (:mod:`daskbatch.ledger`),
written with its commit. Merging reads the records of the committed blocks only, in
block order, so a resumed run, a run killed anywhere, and one whose blocks finished
in another order all give the same bits. The stopping rule reads the merged state at
fixed sample counts (the design's first ``n``, then doubled), so the same seed stops
at the same ``n`` on any scheduler or worker count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import DaskbatchError, StoreError

__all__ = ["check_round_space", "merged_reductions", "reductions_dataset", "reductions_of"]


def reductions_of(info: Mapping[str, Any], outputs: Mapping[str, Any] | None = None) -> Any:
    """The :class:`~daskbatch.reductions.Reductions` a store's run reduces (None: none).

    ``outputs``: the kernel's outputs (default: as the store records them)."""
    spec = info.get("reduce")
    if spec is None:
        return None
    from .outputs import Output
    from .reductions import Reductions

    if outputs is None:
        outputs = {k: Output.from_spec(o) for k, o in info["kernel"]["outputs"].items()}
    try:
        return Reductions.from_spec(spec, outputs, tuple(info["layout"]["batch_dims"]))
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"the store's reductions cannot be read back ({e})") from None


def merged_reductions(st: Any, info: Mapping[str, Any], reductions: Any = None) -> Any:
    """The partial states of ``st``'s committed blocks, merged in block order."""
    reductions = reductions if reductions is not None else reductions_of(info)
    if reductions is None:
        return None
    records = st.ledger.records()
    docs = [(b, rec.reductions) for b, rec in sorted(records.items()) if rec.reductions is not None]
    return reductions.merge(docs, tuple(info["layout"]["batch_shape"]))


def reductions_dataset(st: Any, info: Mapping[str, Any], reductions: Any = None) -> Any:
    """The merged reductions of ``st`` as an :class:`xarray.Dataset`, labelled like the
    outputs (the kept batch dims' coordinates, the outputs' core coordinates); None
    when the store reduces nothing."""
    from .warmup import imports_done

    reductions = reductions if reductions is not None else reductions_of(info)
    if reductions is None:
        return None
    merged = merged_reductions(st, info, reductions)
    imports_done(60.0)  # xarray imported in the background: its end, failed or not, first
    return reductions.to_dataset(merged, coords=_coords(st, info, reductions))


def _coords(st: Any, info: Mapping[str, Any], reductions: Any) -> dict[str, Any]:
    import numpy as np
    import zarr

    coords: dict[str, Any] = {}
    root = zarr.open_group(str(st.path), mode="r")
    names = set(reductions.kept_dims)
    for o in info["kernel"]["outputs"].values():
        names.update(o["dims"])
    for name in sorted(names):
        if name in root and isinstance(root[name], zarr.Array) and root[name].ndim == 1:
            values = np.asarray(root[name][...])
            if values.dtype == np.uint8:  # text coordinates are stored as UTF-8 bytes
                continue
            coords[name] = values
    return coords


def check_round_space(space: Any, info: Mapping[str, Any] | None, until: Any) -> Any:
    """The design a ``until=`` run goes on with: a store that grew in earlier rounds
    holds more samples than the design's first ``n``, and keeps them."""
    if info is None or until is None:
        return space
    stored = int(info["layout"]["batch_shape"][0])
    size = int(space.size)
    if stored <= size:
        return space
    first = int((info.get("until") or {}).get("first_n", size))
    grown = space.resized(stored)
    if first != size or grown.size != stored:
        raise DaskbatchError(
            f"the store holds {stored:,} samples, grown by until= from a first round of {first:,}; "
            f"the design now asks {size:,} to start with. Give the design the size the store "
            "started with, or overwrite=True to start again"
        )
    return grown


def max_n_of(until: Any, first: int) -> int:
    """The most samples a ``until=`` run draws: the rule's ``max_n``, or 1024 × the first n."""
    return int(until.max_n) if until.max_n is not None else 1024 * int(first)


def status_lines(st: Any, info: Mapping[str, Any]) -> list[str]:
    """What ``daskbatch status`` shows of a store's reductions, merged from the blocks
    committed now: each reduced value (or its range), and the ``until=`` estimate."""
    import numpy as np

    try:
        reductions, merged, ds = _merged_now(st, info)
    except Exception as e:  # a status never fails on this
        return [f"reduced:  cannot be read now ({type(e).__name__}: {e})"]
    lines = [f"reduced:  over {int(merged.n):,} ok samples of the committed blocks"]
    for name, var in ds.data_vars.items():
        values = np.asarray(var.values)
        if name.endswith("_count") and values.size and (values == merged.n).all():
            continue  # every ok sample counted: the header says how many
        if values.size == 1:
            text = _number(values.item())
        elif values.size <= 4:
            text = "[" + ", ".join(_number(x) for x in values.ravel().tolist()) + "]"
        else:
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
            span = f"from {_number(finite.min())} to {_number(finite.max())}" if finite.size else "no values"
            text = f"{' × '.join(f'{d}={n}' for d, n in var.sizes.items())}, {span}"
        lines.append(f"  {name}: {text}")
    try:
        until = _until_now(st, info, reductions, merged)
    except Exception as e:
        return [*lines, f"until:    cannot be read now ({type(e).__name__}: {e})"]
    if until is not None:
        state, rule, now = until
        rounds = state.get("rounds") or []
        where = {
            "converged": "converged",
            "max_n": "stopped at max_n, not converged",
            "no_values": "stopped: no ok value to estimate from",
        }.get(str(state.get("state")), f"round {len(rounds) + 1}")
        lines.append(f"until:    {rule.describe(now)} ({where})")
    return lines


def _number(x: Any) -> str:
    """A value as the status shows it: an integer whole (a count, an exact sum), a float
    to 6 significant digits."""
    import numpy as np

    if isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_):
        return f"{int(x)}"
    if isinstance(x, float | np.floating):
        return f"{float(x):.6g}"
    return str(x)


def _merged_now(st: Any, info: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """The store's reductions, their state merged from the blocks committed now, and
    that state as a Dataset (without coordinates)."""
    reductions = reductions_of(info)
    merged = merged_reductions(st, info, reductions)
    return reductions, merged, reductions.to_dataset(merged)


def _until_now(st: Any, info: Mapping[str, Any], reductions: Any, merged: Any) -> Any:
    """``(state, rule, estimate)`` of the store's ``until=`` rule now; None without one."""
    state = info.get("until")
    if not (isinstance(state, dict) and isinstance(state.get("rule"), dict)):
        return None
    from .reductions import Converged

    rule = Converged.from_spec(state["rule"])
    return state, rule, estimate(rule, st, info, reductions, merged)


def estimate(rule: Any, st: Any, info: Mapping[str, Any], reductions: Any = None, merged: Any = None) -> Any:
    """The ``until=`` rule's :class:`~daskbatch.reductions.Estimate` from the committed
    blocks (``merged``: their state, when read already; a ``"sobol"`` rule: from the
    stored output of a Saltelli design)."""
    if rule.stat == "sobol":
        return _sobol_estimate(rule, st)
    reductions = reductions if reductions is not None else reductions_of(info)
    return rule.check(reductions, merged if merged is not None else merged_reductions(st, info, reductions))


def _sobol_estimate(rule: Any, st: Any) -> Any:
    import warnings

    import numpy as np

    from .reductions import Estimate
    from .sobolindices import indices_of

    with warnings.catch_warnings():  # base points with a failed sample are left out, as said
        warnings.simplefilter("ignore")
        # what sobol_indices(store, output, conf_level=...) gives (100 resamples, seed 0)
        ds = indices_of(st.open_dataset(), str(st.path), rule.output, rule.confidence, 100, 0)
    value = ds["ST"].values
    error = np.fmax(ds["S1_conf"].values, ds["ST_conf"].values)
    tol = (rule.atol or 0.0) + (rule.rtol or 0.0) * np.abs(value)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(error == 0, 0.0, error / tol)
    ratio = ratio[np.isfinite(value)]  # an element with no variance has no indices
    worst = float(np.nanmax(ratio)) if ratio.size else float("inf")
    per_point = int(st.require_info()["layout"]["batch_shape"][0]) // max(1, int(ds.attrs["n"]))
    n = int(ds.attrs["n_used"]) * per_point  # samples of the base points used
    return Estimate(value=value, error=error, n=n, met=bool(worst <= 1 and n >= rule.min_n), ratio=worst)


def status_doc(st: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    """What ``daskbatch status --json`` shows of a store's reductions: each result's values
    (merged from the blocks committed now, NaN as None), and the ``until=`` rule, its
    rounds and its current estimate; {} when the store reduces nothing."""
    import numpy as np

    if info.get("reduce") is None:
        return {}
    doc: dict[str, Any] = {}
    try:
        reductions, merged, ds = _merged_now(st, info)
        doc["reductions"] = {
            "n": int(merged.n),
            "values": {k: _plain(np.asarray(v.values)) for k, v in ds.data_vars.items()},
            "dims": {k: list(v.dims) for k, v in ds.data_vars.items()},
        }
    except Exception as e:
        doc["reductions"] = {"error": f"{type(e).__name__}: {e}"}
        return doc
    state = info.get("until")
    if isinstance(state, dict) and isinstance(state.get("rule"), dict):
        out = {k: state.get(k) for k in ("rule", "first_n", "rounds", "state")}
        try:
            _, _, now = _until_now(st, info, reductions, merged)
            out["now"] = {
                "value": _plain(now.value),
                "error": _plain(now.error),
                "n": int(now.n),
                "met": bool(now.met),
            }
        except Exception as e:
            out["now"] = {"error": f"{type(e).__name__}: {e}"}
        doc["until"] = out
    return doc


def _plain(values: Any) -> Any:
    """Numbers as JSON: NaN and infinities as None."""
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind in "fc":
        obj = np.where(np.isfinite(arr), arr, np.nan).astype(float)
        listed = obj.tolist()
        if isinstance(listed, float):
            return None if listed != listed else listed
        return _none_for_nan(listed)
    return arr.tolist()


def _none_for_nan(x: Any) -> Any:
    if isinstance(x, list):
        return [_none_for_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x
