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

These metadata files are written as one step (:func:`_changing`): a growth stopped
part way is undone by the next run (:func:`undo_stopped_change`), never left half made.

Only spaces with one batch dim ``sample`` grow (tables, files and designs); a grid
whose axes changed is a different space.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .errors import StoreError
from .extension import added_rows, extension_reason, same_input
from .log import logger

__all__ = [
    "added_rows",
    "adopt_input",
    "extension_reason",
    "grow",
    "same_input",
    "short_blocks",
    "undo_stopped_change",
]


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
    # every array along `sample` gets the new length (metadata only, never a chunk)
    lengths: dict[str, list[int]] = {}
    for meta_file in sorted(st.path.glob("*/zarr.json")):
        doc, why = read_json(meta_file)
        if why is not None or not isinstance(doc, dict) or doc.get("node_type") != "array":
            continue
        dims = doc.get("dimension_names") or []
        shape = doc.get("shape") or []
        if dims and dims[0] == "sample" and shape and int(shape[0]) < new_n:
            lengths[meta_file.parent.name] = list(shape)
    new = copy.deepcopy(dict(info))
    block = int(new["layout"]["block_shape"][0])
    new["layout"]["batch_shape"] = [new_n]
    new["layout"]["numblocks"] = [math.ceil(new_n / block)]
    new["space"] = space_fingerprint(space)
    new["space_spec"] = space.spec()
    new["fingerprint"] = _digest({k: new[k] for k in ("kernel", "space", "constants", "layout")})
    new.setdefault("grown", []).append({"time": now(), "samples": [old_n, new_n]})
    with _changing(st, info, f"a growth from {old_n:,} to {new_n:,} samples", lengths):
        for name, shape in lengths.items():
            meta_file = st.path / name / "zarr.json"
            doc, _ = read_json(meta_file)
            doc["shape"] = [new_n, *shape[1:]]
            write_json(meta_file, doc)
        st.update_info(new)
        _record_template(st.path, new, _coordinate_names(st.path, new))
    _forget_open(st.path)
    added = new_n - old_n
    done = np.asarray(st.done_mask()).reshape(-1)
    pending = sum(
        min(old_n, (b + 1) * block) - b * block for b in range(math.ceil(old_n / block)) if not done[b]
    )
    also = f", and the {pending:,} stored ones not done yet" if pending else ""
    logger.info(
        f"the store grows from {old_n:,} to {new_n:,} samples (the stored ones are kept as they are, "
        f"in blocks of {block:,} as it was made); computing the {added:,} new "
        f"{'one' if added == 1 else 'ones'}{also}"
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
    with _changing(st, info, "recording the new state of its table's file", {}):
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


# --------------------------------------------------------------------------- stopped changes


@contextmanager
def _changing(
    st: Any, info: Mapping[str, Any], what: str, lengths: Mapping[str, list[int]]
) -> Iterator[None]:
    """Change the store's fixed provenance (and its arrays' lengths) as one step: a
    record of the change and of what it changes is written first and removed once every
    file is written. A change stopped part way (a kill, a full disk) leaves the record,
    and the next run, or ``daskbatch resume``, undoes it (:func:`undo_stopped_change`):
    the root's provenance, its copy and the template no longer disagree with no way to
    tell which is right, and no block is lost."""
    from .repaircheck import CHANGE, CHANGING, hidden, write_json

    record = hidden(st.path, CHANGE)
    with _disk_errors(st, what, "before it began: nothing was changed"):
        write_json(record, {"what": what, "from": dict(info), "lengths": dict(lengths)})
    CHANGING.add(str(st.path))
    try:
        with _disk_errors(st, what, "part way; the next run undoes what was written"):
            yield
    finally:
        CHANGING.discard(str(st.path))
    record.unlink()


@contextmanager
def _disk_errors(st: Any, what: str, when: str) -> Iterator[None]:
    """An operating system error (a full disk, a quota) while writing ``what`` as one
    :class:`~daskbatch.errors.StoreWriteError` line."""
    from .errors import StoreWriteError

    try:
        yield
    except (OSError, StoreWriteError) as e:
        cause = e if isinstance(e, OSError) else e.__cause__  # a provenance write's own error
        failure = cause if isinstance(cause, OSError) else OSError(e.errno, str(e))
        raise StoreWriteError.of(
            failure,
            f"store {str(st.path)!r}: {what}",
            f"It stopped {when}. Every computed block is kept: make room (or fix the cause) and run "
            "the same command again",
        ) from e


def undo_stopped_change(st: Any) -> None:
    """Undo a change of the store's provenance that was stopped part way, if there is
    one: its arrays get their lengths back and the provenance, its copy and the template
    are written again as they were before it. Takes the store's lock (refused, naming
    the holder, while a run holds it)."""
    from .repair import _coordinate_names, _forget_open, _record_template
    from .repaircheck import (
        CHANGE,
        CHANGING,
        change_message,
        hidden,
        interrupted_change,
        read_json,
        write_json,
    )

    if interrupted_change(st.path) is None:
        return
    with st.lock():
        change = interrupted_change(st.path)  # read again under the lock
        if change is None:
            return
        if not isinstance(change.get("from"), dict):  # a record that cannot be read
            raise StoreError(change_message(st.path, change))
        before = change["from"]
        what = f"undoing {change.get('what', 'a change')}"
        CHANGING.add(str(st.path))
        try:
            with _disk_errors(st, what, "part way; the next run undoes it again"):
                for name, shape in (change.get("lengths") or {}).items():
                    meta_file = st.path / name / "zarr.json"
                    doc, why = read_json(meta_file)
                    if why is None and isinstance(doc, dict) and doc.get("shape") != shape:
                        doc["shape"] = list(shape)
                        write_json(meta_file, doc)
                st.update_info(before)
                _record_template(st.path, before, _coordinate_names(st.path, before))
        finally:
            CHANGING.discard(str(st.path))
        hidden(st.path, CHANGE).unlink()
        _forget_open(st.path)
    logger.warning(
        f"store {str(st.path)!r}: {change.get('what', 'a change')} had been stopped part way; "
        "undone (the store is as it was before it, every computed block kept)"
    )
