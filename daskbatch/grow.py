"""Growing stores: rows added to a table, or a design's ``n`` raised.

A rerun whose space is the store's space with samples added at the end (every
stored sample unchanged, as :meth:`~daskbatch.spacebase.Space.extension_of` says)
is not refused: the store grows and only the new samples are computed.

* Every array along ``sample`` gets the new length; only metadata is written
  (each array's ``zarr.json``, aside and renamed into place), no chunk is touched.
* The provenance gets the new layout and fingerprint, and a ``grown`` entry.
* The blocks keep their boundaries. The last stored block, if it was short, is
  completed: its stored samples are read back and kept bit for bit, only its new
  samples are computed, and it is committed again (see
  :func:`daskbatch.blocktask.block_task`). The new blocks are computed as usual.

Only spaces with one batch dim ``sample`` grow (tables, files and designs); a grid
whose axes changed is a different space.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from .errors import StoreError
from .extension import added_rows, extension_reason, same_input
from .log import logger

__all__ = ["added_rows", "adopt_input", "extension_reason", "grow", "same_input", "short_blocks"]


def grow(st: Any, info: Mapping[str, Any], space: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Grow the store to ``space`` (an extension of its space; the caller holds the lock).

    Returns the new info and the blocks to complete (the stored last block when it
    was short, else none: :func:`short_blocks`).
    """
    from .ledger import store_format
    from .provenance import _digest, now, space_fingerprint
    from .repair import _coordinate_names, _forget_open, _record_template
    from .repaircheck import read_json, write_json

    rows = added_rows(info, space)
    assert rows is not None
    old_n, new_n = rows
    if store_format(info, st.path) == 1:
        raise StoreError(
            f"store {str(st.path)!r} is of format 1, which cannot grow; make a new store for "
            f"the {new_n:,} samples (overwrite=True, or another path)"
        )
    # 1. every array along `sample`: the new length (metadata only, never a chunk)
    for meta_file in sorted(st.path.glob("*/zarr.json")):
        doc, why = read_json(meta_file)
        if why is not None or not isinstance(doc, dict) or doc.get("node_type") != "array":
            continue
        dims = doc.get("dimension_names") or []
        shape = doc.get("shape") or []
        if dims and dims[0] == "sample" and shape and int(shape[0]) < new_n:
            doc["shape"] = [new_n, *shape[1:]]
            write_json(meta_file, doc)
    # 2. the provenance: layout, space, fingerprint
    new = copy.deepcopy(dict(info))
    block = int(new["layout"]["block_shape"][0])
    new["layout"]["batch_shape"] = [new_n]
    new["layout"]["numblocks"] = [math.ceil(new_n / block)]
    new["space"] = space_fingerprint(space)
    new["space_spec"] = space.spec()
    new["fingerprint"] = _digest({k: new[k] for k in ("kernel", "space", "constants", "layout")})
    new.setdefault("grown", []).append({"time": now(), "samples": [old_n, new_n]})
    st.update_info(new)
    _record_template(st.path, new, _coordinate_names(st.path, new))
    _forget_open(st.path)
    logger.info(
        f"the store grows from {old_n:,} to {new_n:,} samples (the stored ones are kept as "
        f"they are); computing the {new_n - old_n:,} new ones"
    )
    return new, short_blocks(st)


def adopt_input(st: Any, info: Mapping[str, Any], space: Any) -> dict[str, Any]:
    """Record the new state of a table's file whose stored rows are unchanged
    (:func:`~daskbatch.extension.same_input`; the caller holds the lock): the provenance
    gets the table's new spec and fingerprint, and an ``inputs`` entry saying so."""
    from .provenance import _digest, now, space_fingerprint

    new = copy.deepcopy(dict(info))
    was = dict(info.get("space_spec") or {})
    spec = space.spec()
    new["space"] = space_fingerprint(space)
    new["space_spec"] = spec
    new["fingerprint"] = _digest({k: new[k] for k in ("kernel", "space", "constants", "layout")})
    entry = {"time": now(), "was": {k: was.get(k) for k in ("size", "mtime_ns")}}
    entry["now"] = {k: spec.get(k) for k in ("size", "mtime_ns")}
    new.setdefault("inputs", []).append(entry)
    st.update_info(new)
    logger.info(
        f"the table's file {spec.get('path')!r} changed (size or modification time) but not the "
        "rows this store holds results of: going on"
    )
    return new


def short_blocks(st: Any, state: tuple[Any, Any] | None = None) -> list[tuple[int, ...]]:
    """Committed blocks whose record covers fewer samples than the block has: the
    last block of a store that grew, until its new samples are computed (also after
    a run that grew the store was stopped before). ``state``: the ledger's
    ``state()`` if the caller has read it already."""
    import numpy as np

    ledger = st.ledger
    done, counts = ledger.state() if state is None else state
    if not done.any():
        return []
    sizes = np.ones(ledger.numblocks, dtype=np.int64)
    for axis, (n, b) in enumerate(zip(ledger.batch_shape, ledger.block_shape, strict=True)):
        along = np.minimum(b, n - b * np.arange(ledger.numblocks[axis]))
        shape = [1] * len(ledger.numblocks)
        shape[axis] = -1
        sizes = sizes * along.reshape(shape)
    short = done & (counts.sum(axis=-1) < sizes)
    return [tuple(int(i) for i in idx) for idx in np.argwhere(short)]
