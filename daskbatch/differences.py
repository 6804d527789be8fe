"""What differs between a store's record and a run that does not match it, in words: the
dotted paths to the values that differ (``space (params.rate.high: 10 -> 20)``), and a
store's reductions against a run's, per output."""

from __future__ import annotations

import json
from typing import Any

__all__: list[str] = []


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _describe_reduce(stored: Any, now: Any) -> str:
    """What differs between two reductions, per output and in words."""

    def stat(s: Any) -> str:
        if not isinstance(s, dict):
            return str(s)
        kind = s.get("stat")
        args = ", ".join(f"{k}={v}" for k, v in s.items() if k != "stat")
        return f"{kind}({args})"

    def outputs(spec: Any) -> dict[str, str]:
        if not isinstance(spec, dict):
            return {}
        return {k: "[" + ", ".join(stat(s) for s in v) + "]" for k, v in (spec.get("outputs") or {}).items()}

    if stored is None or now is None:
        what = {True: "nothing", False: "reduced"}
        return f"reduce ({what[stored is None]} -> {what[now is None]})"
    old, new = outputs(stored), outputs(now)
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [f"{k}: {old.get(k, 'not reduced')} -> {new.get(k, 'not reduced')}" for k in names]
    if stored.get("dims") != now.get("dims"):
        parts.append(f"reduce_dims: {stored.get('dims')} -> {now.get('dims')}")
    return (
        f"reduce ({'; '.join(parts[:4])}; the committed blocks hold the states of what the store reduces "
        "(an until= adds the statistic its rule reads): run without reduce= and until= to go on with it)"
    )


def _describe_difference(name: str, stored: Any, now: Any) -> str:
    if name == "reduce":
        return _describe_reduce(stored, now)
    if isinstance(stored, dict) and isinstance(now, dict):
        parts = _leaf_differences(stored, now, "")
        more = f"; and {len(parts) - 4} more" if len(parts) > 4 else ""
        return f"{name} ({'; '.join(parts[:4])}{more})"
    return f"{name} ({_short(stored)} -> {_short(now)})"


def _leaf_differences(stored: Any, now: Any, path: str) -> list[str]:
    """Where two records differ, as dotted paths to the values that differ (a table's
    second parameter's bound, not the first 60 characters of both tables)."""
    if isinstance(stored, dict) and isinstance(now, dict):
        out: list[str] = []
        for k in sorted(set(stored) | set(now), key=str):
            at = f"{path}.{k}" if path else str(k)
            if k not in stored:
                out.append(f"{at} added ({_short(now[k])})")
            elif k not in now:
                out.append(f"{at} removed (was {_short(stored[k])})")
            elif _json(stored[k]) != _json(now[k]):
                out.extend(_leaf_differences(stored[k], now[k], at))
        return out
    if isinstance(stored, list) and isinstance(now, list) and len(stored) == len(now) and len(stored) > 1:
        out = []
        for i, (a, b) in enumerate(zip(stored, now, strict=True)):
            if _json(a) != _json(b):
                out.extend(_leaf_differences(a, b, f"{path}[{i}]"))
        return out
    return [f"{path}: {_short(stored)} -> {_short(now)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def coordinate_differences(path: Any, outputs: Any) -> list[str]:
    """The output coordinates a store holds (written when it was made) that differ from
    the kernel's ``Output(coords=...)`` now (``coords={"t": T}`` with ``T`` edited): the
    store's samples would be labelled with the old values. Text is compared as text
    (stored as UTF-8 bytes, or in Zarr's own string type by older stores), NaN equals
    NaN. A coordinate that cannot be read is the repair's business, not a difference."""
    import numpy as np
    import zarr

    from .raggedstore import read_decoded

    diffs, seen = [], set()
    try:
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception:
        return []
    for name, out in outputs.items():
        for dim, values in (getattr(out, "coords", None) or {}).items():
            if dim in seen:
                continue
            seen.add(dim)
            try:
                if root[dim].nchunks_initialized < root[dim].nchunks:
                    continue  # a chunk missing reads as fill values: damage, which --verify repairs
                got, want = np.asarray(read_decoded(root, dim, slice(None))), np.asarray(values)
            except Exception:
                continue
            if not _same_values(got, want):
                diffs.append(f"output {name!r} coordinate {dim!r} ({_few(got)} -> {_few(want)})")
    return diffs


def _same_values(got: Any, want: Any) -> bool:
    import numpy as np

    if got.shape != want.shape:
        return False
    if got.dtype.kind in "USO" or want.dtype.kind in "USO":  # text
        return [str(x) for x in got.ravel()] == [str(x) for x in want.ravel()]
    try:
        return bool(np.array_equal(got, want, equal_nan=True))
    except TypeError:  # a dtype without NaN
        return bool(np.array_equal(got, want))


def _few(values: Any) -> str:
    import numpy as np

    flat = np.asarray(values).ravel()
    text = np.array2string(flat[:5], separator=", ", threshold=5)
    return text[:-1] + ", ...]" if flat.size > 5 else text
