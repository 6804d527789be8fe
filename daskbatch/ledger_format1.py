"""The block ledger of a format-1 store (stores written before format 2).

A format-1 store keeps its per-block bookkeeping in the Zarr group ``_daskbatch``:
five arrays, ``done`` (the commit marker), ``counts``, ``errors``, ``seconds`` and
``checksums``, one chunk per block. Such stores are still read, verified and
resumed, and a resumed format-1 store stays format 1; new stores are format 2
(:mod:`daskbatch.ledger`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .kernel import STATUS
from .ledger import (
    _WRITE_EMPTY,
    INTERNAL,
    Block,
    BlockLedger,
    BlockProblem,
    BlockRecord,
    _blocks_of,
    _checksum,
    _write_all,
)

__all__: list[str] = []

_INTERNAL_ARRAYS = ("done", "counts", "errors", "seconds", "checksums")


def _read_blocks(arr: zarr.Array, fill: Any) -> np.ndarray:
    """Read a per-block bookkeeping array; a chunk that cannot be decoded reads as ``fill``."""
    try:
        return arr[...]
    except Exception:
        out = np.full(arr.shape, fill, dtype=arr.dtype)
        nb = arr.shape[: len(arr.shape) - (1 if arr.ndim > 1 and arr.chunks[-1] > 1 else 0)]
        for b in np.ndindex(nb):
            with contextlib.suppress(Exception):
                out[b] = arr[b]
        return out


def _read_region(arr: zarr.Array, region: tuple[slice, ...], fill: Any) -> np.ndarray:
    """A region of a per-block array; a chunk that cannot be decoded reads as ``fill``."""
    try:
        return np.asarray(arr[region])
    except Exception:
        out = np.full(tuple(s.stop - s.start for s in region), fill, dtype=arr.dtype)
        for idx, b in _blocks_of(region):
            with contextlib.suppress(Exception):
                out[idx] = arr[b]
        return out


class _Format1Ledger(BlockLedger):
    """The ledger of a format-1 store: the Zarr arrays ``_daskbatch/{done, counts,
    errors, seconds, checksums}``, one chunk per block; ``done`` is the commit marker.

    A commit writes ``counts``, ``seconds`` and ``errors`` (concurrently), then the
    checksums of the block's chunk files (these three included), then the marker.
    """

    format = 1

    def __init__(self, path: Path, info: Mapping[str, Any]) -> None:
        super().__init__(path, info)
        self._read: dict[str, zarr.Array] = {}
        self._write: dict[str, zarr.Array] = {}

    def _arrays(self, write: bool = False) -> dict[str, zarr.Array]:
        cache = self._write if write else self._read
        if not cache:
            try:
                root = zarr.open_group(str(self.path), mode="r+" if write else "r", use_consolidated=False)
                opened = {n: root[f"{INTERNAL}/{n}"] for n in _INTERNAL_ARRAYS}
            except (KeyError, OSError, ValueError, TypeError) as e:
                raise StoreError(
                    f"store {str(self.path)!r}: the metadata of its block ledger ({INTERNAL}/) cannot be "
                    f"read ({type(e).__name__}: {e}); daskbatch status {str(self.path)!r} --verify names "
                    f"the file, and daskbatch resume {str(self.path)!r} --verify rebuilds it"
                ) from None
            cache.update({n: a.with_config(_WRITE_EMPTY) for n, a in opened.items()} if write else opened)
        return cache

    def _file(self, name: str, block: Block) -> str:
        arr = self._arrays()[name]
        coords = tuple(block) + (0,) * (arr.ndim - len(block))
        return f"{INTERNAL}/{name}/{arr.metadata.encode_chunk_key(coords)}"

    def commit(self, block: Block, record: BlockRecord) -> None:
        arrays = self._arrays(write=True)
        doc = record.errors_doc()
        _write_all(
            [
                (arrays["counts"], block, record.counts_array()),
                (arrays["seconds"], block, record.seconds),
                (arrays["errors"], block, json.dumps(doc) if doc else ""),
            ]
        )
        sums = dict(record.checksums)
        for name in ("counts", "errors", "seconds"):
            rel = self._file(name, block)
            sums[rel] = _checksum(self.path / rel)
        arrays["checksums"][block] = json.dumps(sums)
        # the commit marker, strictly after every other write of the block has returned
        arrays["done"][block] = 1

    def forget(self, blocks: Iterable[Block]) -> None:
        done = self._arrays(write=True)["done"]
        for b in blocks:
            done[tuple(b)] = 0

    def committed(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        done = self._arrays()["done"]
        region = region if region is not None else tuple(slice(0, n) for n in self.numblocks)
        return _read_region(done, region, 0) == 1

    def is_committed(self, block: Block) -> bool:
        try:
            return bool(self._arrays()["done"][tuple(block)] == 1)
        except Exception:  # a damaged marker: no marker
            return False

    def _one(self, name: str, block: Block, fill: Any) -> Any:
        try:
            return self._arrays()[name][block]
        except Exception:  # a damaged chunk: verify reports what matters
            return fill

    def record(self, block: Block) -> BlockRecord | None:
        block = tuple(block)
        if not self.is_committed(block):
            return None
        return self._record(
            self._one("counts", block, np.zeros(len(STATUS), dtype=np.int64)),
            self._one("seconds", block, np.nan),
            self._one("errors", block, ""),
            self._one("checksums", block, ""),
        )[0]

    @staticmethod
    def _record(counts: Any, seconds: Any, errors: Any, sums: Any) -> tuple[BlockRecord, str | None]:
        """A record from the values of one block's cells, and what in them is unreadable."""
        try:
            doc = json.loads(str(errors)) if str(errors) else None
        except ValueError:
            doc = None
        doc = doc if isinstance(doc, dict) else None
        problem = None
        try:
            parsed = json.loads(str(sums) or "{}")
            checksums = {str(k): (int(v[0]), int(v[1])) for k, v in parsed.items()}
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            checksums, problem = {}, "its checksums cannot be read"
        rec = BlockRecord(
            counts=tuple(int(c) for c in np.asarray(counts).ravel()),
            seconds=float(seconds),
            errors=list(doc.get("errors", [])) if doc else [],
            n_errors=int(doc.get("n_errors", 0)) if doc else 0,
            checksums=checksums,
            failures=doc["failures"] if doc and isinstance(doc.get("failures"), dict) else None,
        )
        return rec, problem

    def _scan(self) -> tuple[dict[Block, BlockRecord], list[BlockProblem]]:
        arrays = self._arrays()
        done_arr = arrays["done"]
        problems: list[BlockProblem] = []
        try:  # one read of each bookkeeping array; block by block only if one is damaged
            done = done_arr[...]
        except Exception:
            done = np.zeros(done_arr.shape, dtype=done_arr.dtype)
            for b in np.ndindex(done.shape):
                try:
                    done[b] = done_arr[b]
                except Exception:
                    problems.append(BlockProblem(b, "its commit marker cannot be read (a damaged file)"))
        committed = [tuple(int(i) for i in b) for b in np.argwhere(done == 1)]
        if not committed:
            return {}, problems
        counts = _read_blocks(arrays["counts"], 0)
        seconds = _read_blocks(arrays["seconds"], np.nan)
        errors = _read_blocks(arrays["errors"], "")
        sums = _read_blocks(arrays["checksums"], "")
        records = {}
        for b in committed:
            records[b], problem = self._record(counts[b], seconds[b], errors[b], sums[b])
            if problem:
                problems.append(BlockProblem(b, problem))
        return records, problems

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        done = self.committed()
        return done, _read_blocks(self._arrays()["counts"], 0) * done[..., None]

    def seconds(self) -> np.ndarray:
        return np.where(self.committed(), _read_blocks(self._arrays()["seconds"], np.nan), np.nan)


def _create_format1(root: zarr.Group, numblocks: tuple[int, ...]) -> None:
    """Make the empty bookkeeping arrays of a new format-1 store with ``numblocks`` blocks."""
    internal = root.create_group(INTERNAL)
    nb = numblocks
    ones = (1,) * len(nb)
    internal.create_array(name="done", shape=nb, chunks=ones, dtype="uint8", fill_value=0)
    internal.create_array(
        name="counts",
        shape=(*nb, len(STATUS)),
        chunks=(*ones, len(STATUS)),
        dtype="int64",
        fill_value=0,
    )
    internal.create_array(name="errors", shape=nb, chunks=ones, dtype=str, fill_value="")
    internal.create_array(name="seconds", shape=nb, chunks=ones, dtype="float64", fill_value=np.nan)
    internal.create_array(name="checksums", shape=nb, chunks=ones, dtype=str, fill_value="")
