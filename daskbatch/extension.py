"""Whether a space extends a store's space: the same samples, more of them at the end.

A rerun with such a space grows the store (:mod:`daskbatch.grow`); any other change
is refused, and :func:`why_not` says what changed (:mod:`daskbatch.provenance`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["added_rows", "check_input", "extension_reason", "same_input", "why_not"]


def extension_reason(space: Any, old_spec: Any, store: Any = None, store_id: str | None = None) -> str | None:
    """None when ``space`` extends the space ``old_spec`` describes; else why not.

    Asked once per space and stored space (a table's answer may read its rows). A
    table digested block by block (``"digest": "blocks"``) is compared through the
    committed blocks of ``store``: the first ask names it (:func:`check_input`), and
    the answer is kept for that store only (``store_id``: the same space may be run
    on another store, whose committed blocks are others).
    """
    memo = space.__dict__.setdefault("_daskbatch_extension", {})
    key = json.dumps(old_spec, sort_keys=True, default=str)
    if _by_blocks(old_spec):
        key += f"\0{store_id}"
    if key not in memo:
        check = getattr(space, "extension_of", None)
        if check is None or not isinstance(old_spec, Mapping):
            memo[key] = f"a {type(space).__name__} cannot be extended"
        elif _by_blocks(old_spec) and store is not None:
            memo[key] = check(old_spec, blocks=store.ledger.input_digests())
        else:
            memo[key] = check(old_spec)
    return memo[key]


def _by_blocks(spec: Any) -> bool:
    return isinstance(spec, Mapping) and spec.get("digest") == "blocks"


def check_input(store: Any, info: Mapping[str, Any], space: Any) -> None:
    """Compare a table digested block by block with the store's committed blocks, once,
    before :func:`added_rows`, :func:`same_input` or :func:`why_not` ask (they do not
    see the store)."""
    old = info.get("space_spec")
    if _by_blocks(old) and _one_dim(info, space):
        extension_reason(space, old, store, info.get("store_id"))


def _one_dim(info: Mapping[str, Any], space: Any) -> bool:
    layout = info.get("layout", {})
    return list(layout.get("batch_dims", [])) == ["sample"] and tuple(space.batch_dims) == ("sample",)


def same_input(info: Mapping[str, Any], space: Any) -> bool:
    """Whether ``space`` is a table digested block by block whose file changed (size or
    modification time: its fingerprint differs) but whose rows did not: as many, and
    those of every committed block unchanged. The run goes on and records the file's
    new state (:func:`daskbatch.grow.adopt_input`)."""
    old = info.get("space_spec")
    if not _by_blocks(old) or not _one_dim(info, space):
        return False
    if int(space.size) != int(info["layout"]["batch_shape"][0]):
        return False
    if space.spec().get("sha256") == old.get("sha256"):  # type: ignore[union-attr]
        return False  # the same file state: nothing to compare
    return extension_reason(space, old, store_id=info.get("store_id")) is None


def added_rows(info: Mapping[str, Any], space: Any) -> tuple[int, int] | None:
    """``(stored samples, samples now)`` when ``space`` is the store's space with samples
    added at the end; None when it is the same size, smaller, or something else."""
    layout = info.get("layout", {})
    if not _one_dim(info, space):
        return None
    old_n, new_n = int(layout["batch_shape"][0]), int(space.size)
    if new_n <= old_n:
        return None
    if extension_reason(space, info.get("space_spec"), store_id=info.get("store_id")) is not None:
        return None
    return old_n, new_n


def why_not(info: Mapping[str, Any], space: Any) -> str | None:
    """For a refusal: why a space with at least the store's samples is no extension of
    it, naming the first row or file that changed where it can (None when it has fewer
    samples)."""
    layout = info.get("layout", {})
    if not _one_dim(info, space):
        dims = list(layout.get("batch_dims", []))
        if int(space.size) > math.prod(int(n) for n in layout.get("batch_shape", [0])) and dims != ["sample"]:
            return (
                f"only a store along the one dim 'sample' grows (a design, a table, files); "
                f"this one's samples lie along {dims}"
            )
        return None
    if int(space.size) < int(layout["batch_shape"][0]):
        return None
    return extension_reason(space, info.get("space_spec"), store_id=info.get("store_id"))
