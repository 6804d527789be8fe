"""Whether a space extends a store's space: the same samples, more of them at the end.

A rerun with such a space grows the store (:mod:`daskbatch.grow`); any other change
is refused, and :func:`why_not` says what changed (:mod:`daskbatch.provenance`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["added_rows", "extension_reason", "why_not"]


def extension_reason(space: Any, old_spec: Any) -> str | None:
    """None when ``space`` extends the space ``old_spec`` describes; else why not.

    Asked once per space and stored space (a table's answer may read its rows).
    """
    memo = space.__dict__.setdefault("_daskbatch_extension", {})
    key = json.dumps(old_spec, sort_keys=True, default=str)
    if key not in memo:
        check = getattr(space, "extension_of", None)
        if check is None or not isinstance(old_spec, Mapping):
            memo[key] = f"a {type(space).__name__} cannot be extended"
        else:
            memo[key] = check(old_spec)
    return memo[key]


def added_rows(info: Mapping[str, Any], space: Any) -> tuple[int, int] | None:
    """``(stored samples, samples now)`` when ``space`` is the store's space with samples
    added at the end; None when it is the same size, smaller, or something else."""
    layout = info.get("layout", {})
    if list(layout.get("batch_dims", [])) != ["sample"] or tuple(space.batch_dims) != ("sample",):
        return None
    old_n, new_n = int(layout["batch_shape"][0]), int(space.size)
    if new_n <= old_n:
        return None
    if extension_reason(space, info.get("space_spec")) is not None:
        return None
    return old_n, new_n


def why_not(info: Mapping[str, Any], space: Any) -> str | None:
    """For a refusal: why a space with at least the store's samples is no extension of
    it, naming the first row or file that changed where it can (None when it has fewer
    samples)."""
    layout = info.get("layout", {})
    if list(layout.get("batch_dims", [])) != ["sample"] or tuple(space.batch_dims) != ("sample",):
        return None
    if int(space.size) < int(layout["batch_shape"][0]):
        return None
    return extension_reason(space, info.get("space_spec"))
