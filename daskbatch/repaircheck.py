"""Which provenance of a store is right, and whether its repair copies are intact.

A store's provenance (its root ``zarr.json``'s ``attributes["daskbatch"]``) is kept
twice: in the root and in ``.daskbatch/provenance.json``. Both are written at creation
and at every change of the provenance, the root first, then the copy (see
:meth:`~daskbatch.store.Store.update_info` and :func:`daskbatch.repair.save_provenance`).
So the two are equal, except after a run stopped between the two writes: then the root
holds the newer provenance, and the two differ only in what a run changes (history,
options, the kernel's code and where it came from). The fields fixed when the store
was made (:data:`IDENTITY`: store id, kernel outputs, space, constants, layout,
fingerprint, format) never legitimately differ.

:func:`read_provenance` decides which one is right, without changing anything:

* the root, when it is well-formed (:func:`malformed`: the type and shape of every
  field a reader uses) and the copy is equal, missing, unreadable or malformed, or
  differs from it only in what a run changes (the root is the newer);
* the copy, when the root cannot be read, holds no provenance or a malformed one;
* when both are well-formed and differ in a fixed field, the one the rest of the store
  agrees with: its fingerprint recomputes from its kernel, space, constants and layout;
  its store id is the template's (``.daskbatch/template.json``) and the block records';
  its layout is the ``status`` array's shape and chunks. A tie is not decided: it is a
  problem that cannot be repaired automatically (readers use the root meanwhile).

A root that is not the right provenance is rebuilt from the copy by a repair; a copy
that is not is written again from the (verified) root. Nothing here ever makes a block
pending: blocks are judged on their data, under the provenance chosen here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ledger import BLOCKS, HIDDEN, store_format

__all__ = [
    "IDENTITY",
    "MetadataProblem",
    "Provenance",
    "change_message",
    "interrupted_change",
    "malformed",
    "read_provenance",
]

PROVENANCE = "provenance.json"
TEMPLATE = "template.json"
_ATTR = "daskbatch"
COPY = f"{HIDDEN}/{PROVENANCE}"
TEMPLATE_FILE = f"{HIDDEN}/{TEMPLATE}"
#: the fields of the provenance fixed when the store was made
IDENTITY = (
    "store_id",
    "kernel",
    "space",
    "space_spec",
    "seed",
    "constants",
    "layout",
    "fingerprint",
    "format",
)


@dataclass(frozen=True)
class MetadataProblem:
    """A metadata file (or a template chunk) that is damaged; ``fix`` is what a repair
    does about it, None when it cannot be rebuilt."""

    file: str
    problem: str
    fix: str | None

    def __str__(self) -> str:
        what = f"repair: {self.fix}" if self.fix else "cannot be rebuilt automatically"
        return f"{self.file}: {self.problem}; {what}"


# ------------------------------------------------------------------ small file helpers


def hidden(path: Path, name: str) -> Path:
    return Path(path) / HIDDEN / name


def write_json(target: Path, doc: Any) -> None:
    """Write ``doc`` to ``target`` aside and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:  # a full disk: no half-written file left beside it
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> tuple[Any, str | None]:
    """(document, None), or (None, why it cannot be read)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "is missing"
    except OSError as e:
        return None, f"cannot be read ({e})"
    try:
        return json.loads(data), None
    except ValueError:
        return None, f"is not JSON ({len(data)} bytes: truncated or garbage)"


# ------------------------------------------------------------------ a change of the provenance under way

#: the record of a change of a store's fixed provenance under way (a growth: its arrays'
#: lengths, the root's provenance, the copy, the template; see daskbatch.grow)
CHANGE = "changing.json"
#: the stores this process is changing now (their record is not a stopped change)
CHANGING: set[str] = set()


def interrupted_change(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of a change of the store at ``path`` that was stopped part way (its
    process was killed or failed), or None. A change under way in this process is not
    one."""
    if str(path) in CHANGING:
        return None
    doc, why = read_json(hidden(Path(path), CHANGE))
    if why == "is missing":
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("from"), dict) else {"what": "a change"}


def change_message(path: str | os.PathLike[str], change: Mapping[str, Any]) -> str:
    """What a reader of a store with a stopped change is told."""
    from shlex import quote

    if not isinstance(change.get("from"), dict):
        return (
            f"store {str(path)!r}: {hidden(Path(path), CHANGE)} records a change of the store "
            "that was stopped part way, but cannot be read; remove that file, then check the "
            f"store with daskbatch resume {quote(str(path))} --verify"
        )
    return (
        f"store {str(path)!r}: {change.get('what', 'a change')} was stopped part way (its run "
        "was stopped or killed; or a run is making it right now: try again in a moment). The "
        f"next run of this store (the run again, or daskbatch resume {quote(str(path))}) undoes "
        "it and goes on; nothing computed is lost"
    )


# ------------------------------------------------------------------ what a provenance must hold


def _ints(value: Any, n: int | None = None, least: int = 1) -> bool:
    return (
        isinstance(value, list)
        and (n is None or len(value) == n)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in value)
    )


def _strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _layout_problem(layout: Any) -> str | None:
    if not isinstance(layout, dict):
        return "layout is not an object"
    dims = layout.get("batch_dims")
    if not _strs(dims) or not dims:
        return "layout.batch_dims is not a list of names"
    n = len(dims)
    for key in ("batch_shape", "block_shape", "numblocks"):
        if not _ints(layout.get(key), n):
            return f"layout.{key} is not {n} positive integers"
    shape, block = layout["batch_shape"], layout["block_shape"]
    if any(b > s for b, s in zip(block, shape, strict=True)):
        return "layout.block_shape is larger than layout.batch_shape"
    if [math.ceil(s / b) for s, b in zip(shape, block, strict=True)] != layout["numblocks"]:
        return "layout.numblocks does not follow from batch_shape and block_shape"
    return None


def _kernel_problem(kernel: Any) -> str | None:
    if not isinstance(kernel, dict) or not isinstance(kernel.get("identity"), str):
        return "kernel is not an object with an identity"
    outputs = kernel.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return "kernel.outputs is not an object of outputs"
    for name, o in outputs.items():
        ok = (
            isinstance(o, dict)
            and _strs(o.get("dims"))
            and (_ints(o.get("shape"), len(o.get("dims") or []), least=0) or o.get("shape") == [None])
            and isinstance(o.get("dtype"), str)
        )
        if not ok:
            return f"kernel.outputs[{name!r}] is not an output (dims, shape, dtype)"
    return None


_OPTIONAL = {
    "kernel_file": str,
    "spec_file": str,
    "spec_dir": str,
    "kernel_ref": str,
    "kernel_origin": str,
    "cwd": str,
    "kernel_source_sha256": str,
    "version": str,
    "kernel_code": dict,
    "options": dict,
}


def malformed(info: Any) -> str | None:
    """What makes ``info`` no provenance a reader can use (None: it is well-formed).

    Checks the type and shape of every field the readers and writers use; the format
    is :func:`~daskbatch.ledger.store_format`'s business.
    """
    if not isinstance(info, dict):
        return f"it is not an object but {type(info).__name__}"
    if not isinstance(info.get("store_id"), str) or not info["store_id"]:
        return f"store_id {info.get('store_id')!r} is not a store id"
    for check in (_layout_problem(info.get("layout")), _kernel_problem(info.get("kernel"))):
        if check:
            return check
    for key in ("space", "space_spec"):
        if not isinstance(info.get(key), dict) or not isinstance(info[key].get("type"), str):
            return f"{key} is not a space description"
    if not isinstance(info.get("fingerprint"), str):
        return "fingerprint is not a string"
    seed = info.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return f"seed {seed!r} is not an integer"
    if "format" not in info:
        return "format is missing"
    history = info.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "history is not a list of objects"
    for key, kind in _OPTIONAL.items():
        if info.get(key) is not None and not isinstance(info[key], kind):
            return f"{key} is not a {kind.__name__}"
    if "argv" in info and info["argv"] is not None and not _strs(info["argv"]):
        return "argv is not a list of strings"
    return None


def fingerprint_agrees(info: Mapping[str, Any]) -> bool:
    """Whether ``info``'s fingerprint recomputes from its kernel, space, constants and layout."""
    try:
        fields = {k: info[k] for k in ("kernel", "space", "constants", "layout")}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    except (KeyError, TypeError, ValueError):
        return False
    return digest == info.get("fingerprint")


# ------------------------------------------------------------------ the right provenance


@dataclass
class Provenance:
    """What :func:`read_provenance` found: the right provenance and what is wrong."""

    #: the provenance to use, None when the store has none that can be trusted
    info: dict[str, Any] | None
    #: the root document, when it is a JSON object (its consolidated copy is used)
    root_doc: dict[str, Any] | None
    #: whether the root's attributes["daskbatch"] is ``info``
    root_ok: bool
    #: whether the copy in .daskbatch/provenance.json is ``info``
    copy_ok: bool
    problems: list[MetadataProblem] = field(default_factory=list)
    #: why the store has no provenance (both the root and the copy are unusable)
    gone: str | None = None


def _root_info(path: Path) -> tuple[dict[str, Any] | None, Any, str | None]:
    """(root document, its attributes['daskbatch'], why it is no provenance)."""
    doc, why = read_json(path / "zarr.json")
    if why is not None:
        return None, None, why
    if not isinstance(doc, dict):
        return None, None, "is not a JSON object"
    attrs = doc.get("attributes")
    info = attrs.get(_ATTR) if isinstance(attrs, dict) else None
    if info is None:
        return doc, None, "holds no daskbatch provenance (attributes['daskbatch'])"
    bad = malformed(info)
    return doc, info, None if bad is None else f"holds a damaged daskbatch provenance ({bad})"


def _copy_info(path: Path) -> tuple[Any, str | None]:
    doc, why = read_json(hidden(path, PROVENANCE))
    if why is not None:
        return None, why
    info = doc.get(_ATTR) if isinstance(doc, dict) else None
    if info is None:
        return None, "holds no provenance"
    bad = malformed(info)
    return info, None if bad is None else f"holds a damaged provenance ({bad})"


def _votes(path: Path) -> tuple[list[Any], list[Any]]:
    """What the rest of the store says the store id and the (shape, block shape) are."""
    ids: list[Any] = []
    layouts: list[Any] = []
    template, _ = read_json(hidden(path, TEMPLATE))
    if isinstance(template, dict):
        ids.append(template.get("store_id"))
        status = (
            (template.get("arrays") or {}).get("status") if isinstance(template.get("arrays"), dict) else None
        )
        layouts.append(_array_layout(status))
    records = path / HIDDEN / BLOCKS
    if records.is_dir():
        for f in sorted(records.glob("*.json"))[:3]:
            doc, _ = read_json(f)
            if isinstance(doc, dict):
                ids.append(doc.get("store_id"))
    status, _ = read_json(path / "status" / "zarr.json")
    layouts.append(_array_layout(status))
    return ids, [v for v in layouts if v is not None]


def _array_layout(doc: Any) -> tuple[Any, Any] | None:
    try:
        return list(doc["shape"]), list(doc["chunk_grid"]["configuration"]["chunk_shape"])
    except (KeyError, TypeError):
        return None


def _evidence(info: Mapping[str, Any], ids: list[Any], layouts: list[Any]) -> int:
    """How much of the rest of the store agrees with ``info``."""
    layout = info["layout"]
    n = 2 if fingerprint_agrees(info) else 0
    n += sum(1 for i in ids if i == info["store_id"])
    n += sum(1 for lay in layouts if lay == (layout["batch_shape"], layout["block_shape"]))
    return n


def read_provenance(path: str | os.PathLike[str], check_format: bool = True) -> Provenance:
    """The store's right provenance (see the module docstring), and what is wrong with
    the root's and the copy's. Changes nothing.

    With ``check_format``, a store format this code does not read, in the root or the
    chosen provenance, raises :class:`~daskbatch.errors.StoreError` (a store of a newer
    format is never read nor repaired).
    """
    path = Path(path)
    root_doc, root, root_why = _root_info(path)
    if check_format and isinstance(root, dict) and "format" in root:
        store_format(root, path)
    copy, copy_why = _copy_info(path)
    if root_why is None and copy_why is None and root != copy:
        differ = [k for k in IDENTITY if root.get(k) != copy.get(k)]
        if differ:
            return _arbitrate(path, root_doc, root, copy, differ)
    if root_why is None:
        prov = Provenance(root, root_doc, True, copy_why is None and copy == root)
        if not prov.copy_ok:
            why = copy_why or "differs from the root's in what a run changes (a run stopped between the two)"
            prov.problems.append(MetadataProblem(COPY, why, "rewritten from zarr.json"))
    elif copy_why is None:
        prov = Provenance(copy, root_doc, False, True)
        prov.problems.append(MetadataProblem("zarr.json", root_why, f"rebuilt from {COPY}"))
    else:
        gone = f"zarr.json {root_why} and {COPY} {copy_why}"
        return Provenance(None, root_doc, False, False, gone=gone)
    if check_format:
        store_format(prov.info or {}, path)
    return prov


def _arbitrate(
    path: Path, root_doc: dict[str, Any] | None, root: dict[str, Any], copy: dict[str, Any], differ: list[str]
) -> Provenance:
    """The root and the copy are both well-formed and differ in a field fixed at creation."""
    ids, layouts = _votes(path)
    by_root, by_copy = _evidence(root, ids, layouts), _evidence(copy, ids, layouts)
    what = ", ".join(differ)
    if by_copy > by_root:
        prov = Provenance(copy, root_doc, False, True)
        problem = (
            f"its daskbatch provenance differs from {COPY} in {what}, and the rest of the store "
            "agrees with the copy"
        )
        prov.problems.append(MetadataProblem("zarr.json", problem, f"rebuilt from {COPY}"))
    elif by_root > by_copy:
        prov = Provenance(root, root_doc, True, False)
        problem = (
            f"differs from the root's provenance in {what}, and the rest of the store agrees with the root"
        )
        prov.problems.append(MetadataProblem(COPY, problem, "rewritten from zarr.json"))
    else:
        prov = Provenance(root, root_doc, True, False)
        problem = (
            f"its daskbatch provenance and {COPY} differ in {what}, and nothing else in the store tells "
            "which is right"
        )
        prov.problems.append(MetadataProblem("zarr.json", problem, None))
    store_format(prov.info or {}, path)
    return prov


def looks_like_store(path: Path) -> bool:
    """Whether a folder without provenance is recognisably a daskbatch store."""
    return (path / HIDDEN).is_dir() and (
        (path / HIDDEN / BLOCKS).is_dir() or hidden(path, TEMPLATE).is_file() or (path / "status").is_dir()
    )


def gone_message(path: Path, gone: str) -> str:
    """The one line that says a store's provenance is gone."""
    return (
        f"store {str(path)!r}: its provenance is gone ({gone}), so it cannot be repaired; nothing "
        "was changed. Restore zarr.json from a copy of the store, or start again with overwrite=True "
        "(--overwrite)"
    )
