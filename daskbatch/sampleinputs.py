"""The input that names a failed sample in a status: its file, or an id column.

``daskbatch status`` and a run's result list their first errors as
``capture_A_0061.npy (sample 61): ValueError: ...``, not only by index. Read with zarr
alone (no xarray: a status at the end of every run), for the few errors shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .failures import _decode_text, _padded, _rebuilt_space, escaped

if TYPE_CHECKING:
    from .store import Store

__all__ = ["sample_inputs"]


#: words in a column's name that make it the one naming a sample: a file first, then an id
_FILE_WORDS = ("file", "path")
_ID_WORDS = ("name", "id", "label", "key")


def _text_columns(st: Store, spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The text columns of a table or files space along its one batch dim, in order,
    each with its array in the store (None for a column the store does not keep)."""
    import zarr

    columns = spec.get("columns") if isinstance(spec.get("columns"), Mapping) else {}
    dtypes = spec.get("dtypes") if isinstance(spec.get("dtypes"), Mapping) else {}
    out = []
    for name, dims in columns.items():
        if not isinstance(dims, list) or len(dims) != 1:
            continue
        try:
            arr = zarr.open_array(str(st.path), path=str(name), mode="r")
        except Exception:  # not kept by the store: read from the input, when it is text
            if dtypes.get(name) == "str":
                out.append((str(name), None))
            continue
        meta = _padded(arr.attrs)
        if (meta and meta.get("encoding")) or arr.dtype.kind in "TUSO":
            out.append((str(name), arr))
    return out


def _identity_column(columns: list[tuple[str, Any]]) -> tuple[str, Any] | None:
    """The column that names a sample to a user: a file's path (whether or not the
    store keeps it), else a kept text column named like an id, else any kept one (a
    label); a text parameter the store does not keep (a DNA sequence) never."""
    for words, kept_only in ((_FILE_WORDS, False), (_ID_WORDS, True), ((), True)):
        for name, arr in columns:
            if (arr is not None or not kept_only) and (not words or any(w in name.lower() for w in words)):
                return name, arr
    return None


def sample_inputs(
    st: Store, info: Mapping[str, Any], indices: Sequence[int]
) -> tuple[str, dict[int, str]] | None:
    """The input that names each of a few samples of a table or files space (their
    file, or an id column), for a status's error lines: ``(column, {index: value})``,
    or None when the space has no such column or it cannot be read.

    Reads the store's arrays (zarr only: no xarray) or, for a column the store does
    not keep, the rows of the input; meant for a handful of samples.
    """
    spec = info.get("space_spec") or info.get("space")
    if not isinstance(spec, Mapping) or spec.get("type") not in ("table", "files") or not indices:
        return None
    try:
        found = _identity_column(_text_columns(st, spec))
        if found is None:
            return None
        name, arr = found
        values: dict[int, str] = {}
        if arr is not None:
            import zarr

            meta = _padded(arr.attrs)
            lengths = zarr.open_array(str(st.path), path=meta["length"], mode="r") if meta else None
            wanted = sorted(set(indices))
            # one read of the rows they span when that is short (a status's few errors), else each
            lo, hi = (wanted[0], wanted[-1] + 1) if wanted[-1] - wanted[0] < 4096 else (None, None)
            spans = [(lo, hi)] if lo is not None else [(i, i + 1) for i in wanted]
            for a, b in spans:
                data = np.asarray(arr[a:b])
                if lengths is not None:
                    data = _decode_text(data, np.asarray(lengths[a:b]))
                for i in wanted:
                    if a <= i < b:
                        values[i] = escaped(str(data[i - a]))
        else:
            space, _ = _rebuilt_space(info, set())
            if space is None:
                return None
            for i in sorted(set(indices)):
                values[i] = escaped(str(np.asarray(space.block((slice(i, i + 1),))[name])[0]))
        return name, values
    except Exception:  # a status never fails for want of a name: it shows the index
        return None
