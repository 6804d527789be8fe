"""Checking and repairing a store: damaged metadata is rebuilt, damaged data recomputed.

A store keeps two things beside its Zarr metadata that let it be repaired:

* ``.daskbatch/provenance.json``: a copy of the provenance (the root attributes,
  ``attrs["daskbatch"]``), written when the store is created and at every change of
  it, after the root. Which of the two is right when they differ is decided by
  :func:`daskbatch.repaircheck.read_provenance` (the root when it is well-formed and
  they differ only in what a run changes, since a run may stop between the two writes;
  otherwise the one the rest of the store agrees with). A root ``zarr.json`` that
  cannot be read, holds a malformed provenance or one the store contradicts is rebuilt
  from the copy; a copy that is missing, damaged or differs is written again from the
  verified root.
* ``.daskbatch/template.json``: what the template wrote at creation: every array's
  ``zarr.json`` document, the size and CRC-32 of every chunk file the template wrote
  (grid axes, output core coordinates) and those coordinates' values. An array's
  ``zarr.json`` that is missing, garbled or differs from it is rebuilt from it (its
  chunk files are not touched); a damaged coordinate chunk is written again. A
  template that is missing, damaged, of another store or that contradicts the
  provenance is not used: the arrays are checked against what the provenance makes
  (as for a store made before the template was recorded), and a repair records the
  template again from the verified arrays.

:func:`check` reads a store and sorts what is wrong into metadata problems (each
naming its file and what a repair does about it) and damaged blocks (data proven
wrong: a chunk file that differs from its checksum under intact metadata, a status
that disagrees with its block's counts, a wrong sample coordinate), judged under the
provenance chosen first. :func:`repair` (``daskbatch resume --verify``,
``run(..., verify=True)``) first checks everything, stops naming the file when
something cannot be rebuilt (before changing anything), then rebuilds the metadata
and returns the damaged blocks, which the run recomputes. Committed blocks are never
made pending for damaged metadata. A store whose root and copy are both gone cannot
be repaired: :func:`check` says so, :func:`repair` refuses and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError, StoreWriteError
from .ledger import HIDDEN, INTERNAL, BlockProblem, _checksum, store_format
from .outputs import stored_specs
from .ragged import encoded_coords
from .raggedstore import uses_zarr_strings, widened, wider_shape
from .repaircheck import (
    _ATTR,
    PROVENANCE,
    TEMPLATE,
    TEMPLATE_FILE,
    MetadataProblem,
    _array_layout,
    gone_message,
    looks_like_store,
    read_provenance,
)
from .repaircheck import hidden as _hidden
from .repaircheck import read_json as _read_json
from .repaircheck import write_json as _write_json
from .storeview import StoreView, _forget_open, _quiet_consolidate

__all__ = ["MetadataProblem", "Report", "check", "provenance_copy", "repair", "save_provenance"]

# the fields of an array's metadata that must be the template's
_FIELDS = ("node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs")
_FIELDS_GENERATED = ("node_type", "shape", "data_type", "chunk_grid", "dimension_names")


@dataclass
class Report:
    """What :func:`check` found: metadata problems, damaged blocks, blocks checked."""

    metadata: list[MetadataProblem] = field(default_factory=list)
    blocks: list[BlockProblem] = field(default_factory=list)
    checked: int = 0
    #: False when the blocks could only be checked against their checksums (the
    #: metadata needed to decode them is damaged; a repair decodes them after it)
    decoded: bool = True
    #: why the store has no provenance left (root and copy both unusable): it cannot
    #: be repaired, and nothing else was checked
    gone: str | None = None

    @property
    def ok(self) -> bool:
        return not self.metadata and not self.blocks

    @property
    def fatal(self) -> list[MetadataProblem]:
        return [p for p in self.metadata if p.fix is None]


# ------------------------------------------------------------------ small file helpers


def provenance_copy(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The copy of the provenance in ``.daskbatch/provenance.json``, or None."""
    doc, _ = _read_json(_hidden(Path(path), PROVENANCE))
    info = doc.get(_ATTR) if isinstance(doc, dict) else None
    return info if isinstance(info, dict) and isinstance(info.get("layout"), dict) else None


def _template(path: Path, info: Mapping[str, Any], generated: Mapping[str, Any] | None = None):
    """(the template, None) when ``.daskbatch/template.json`` is intact and this store's,
    else (None, what is wrong with it). With ``generated`` (every array's metadata as
    the provenance makes it) the template's arrays are checked against it too."""
    doc, why = _read_json(_hidden(path, TEMPLATE))
    if why is not None:
        return None, why
    arrays = doc.get("arrays") if isinstance(doc, dict) else None
    if not isinstance(arrays, dict) or not all(isinstance(a, dict) for a in arrays.values()):
        return None, "is not a template (no object of array metadata)"
    if doc.get("store_id") != info.get("store_id"):
        return None, f"was written for another store (store_id {_short(doc.get('store_id'))})"
    layout = info["layout"]
    if _array_layout(arrays.get("status")) != (layout["batch_shape"], layout["block_shape"]):
        return None, "its status array does not have the store's layout"
    chunks, coords = doc.get("chunks", {}), doc.get("coords", {})
    if not isinstance(chunks, dict) or not isinstance(coords, dict):
        return None, "its coordinate chunks are not recorded as objects"
    for name, ref in (generated or {}).items():
        bad = _differs(arrays.get(name), ref, _FIELDS_GENERATED)
        if bad is not None:
            return None, f"its metadata of {name!r} {bad.replace('the template', 'the provenance')}"
    return doc, None


def _arrays_on_disk(path: Path) -> dict[str, zarr.Array]:
    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    with warnings.catch_warnings():  # the listing meets .daskbatch/, which is not Zarr
        warnings.simplefilter("ignore")
        return {n: a for n, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}


def save_provenance(path: str | os.PathLike[str], *, template: bool = False) -> None:
    """Keep a copy of the store's provenance in ``.daskbatch/provenance.json``; with
    ``template=True`` (at creation) also record the template in ``.daskbatch/template.json``.

    Called by :meth:`~daskbatch.store.Store.create` and
    :meth:`~daskbatch.store.Store.update_info` once the root metadata is written.
    """
    path = Path(path)
    doc, _ = _read_json(path / "zarr.json")
    info = doc.get("attributes", {}).get(_ATTR) if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        return
    if template:
        _record_template(path, info)
    _write_json(_hidden(path, PROVENANCE), {_ATTR: info})


def _record_template(path: Path, info: Mapping[str, Any], names: set[str] | None = None) -> None:
    """Record every array's metadata, and the coordinates ``names`` (their chunk files'
    sizes and CRC-32, their values), in ``.daskbatch/template.json``. Without ``names``
    (at creation) the coordinates are the arrays that have chunk files."""
    arrays, chunks, coords = {}, {}, {}
    for name, arr in _arrays_on_disk(path).items():
        meta, _ = _read_json(path / name / "zarr.json")
        arrays[name] = meta
        files = sorted(p for p in (path / name / "c").rglob("*") if p.is_file())
        is_coord = name in names if names is not None else bool(files) and INTERNAL not in name
        if is_coord:  # a coordinate written by the template
            for f in files:
                chunks[f.relative_to(path).as_posix()] = list(_checksum(f))
            values = arr[...]
            coords[name] = {"dtype": values.dtype.str, "values": values.tolist()}
    groups = {INTERNAL: _read_json(path / INTERNAL / "zarr.json")[0]} if (path / INTERNAL).is_dir() else {}
    doc_t = {"store_id": info.get("store_id"), "arrays": arrays, "groups": groups}
    _write_json(_hidden(path, TEMPLATE), {**doc_t, "chunks": chunks, "coords": coords})


def _coordinate_names(path: Path, info: Mapping[str, Any]) -> set[str]:
    """The arrays the template writes values into: grid axes, output core coordinates."""
    dims = set(info["layout"]["batch_dims"])
    names = set(_batch_coords(info, path))
    for spec in info["kernel"]["outputs"].values():
        names.update(d for d in spec["dims"] if d not in dims and (path / d / "zarr.json").is_file())
    return names


# ------------------------------------------------------------------ what the metadata should be


def _generated(info: Mapping[str, Any], fmt: int, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every array's metadata as the template would write it now, from the provenance
    alone (for stores made before the template was recorded); {} when it cannot be made."""
    from .kernel import Output
    from .layout import Layout, write_template
    from .ledger_format1 import _create_format1
    from .space import space_from_spec

    try:
        space = space_from_spec(info["space_spec"])
        # labels (columns the kernel does not take) are stored; where the store has them
        on_disk = {n for n in space.params if path is not None and (path / n / "zarr.json").exists()}
        kept = on_disk | (_template_arrays(path) if path is not None else set())
        # an output that is only reduced has no array
        outputs = {k: Output.from_spec(o) for k, o in stored_specs(info["kernel"]["outputs"]).items()}
        layout = Layout(
            batch_dims=space.batch_dims,
            batch_shape=space.batch_shape,
            block_shape=tuple(info["layout"]["block_shape"]),
            # what the run kept: a column read from a file the kernel takes is referenced,
            # not stored; a column it does not take is a label, stored where the store has it
            params={n: p for n, p in space.params.items() if p.is_axis or p.stored or n in kept},
            outputs=outputs,
            batch_coords=space.batch_coords(),
            legacy_text=path is not None and uses_zarr_strings(path),  # text as the store keeps it
        )
        with tempfile.TemporaryDirectory() as tmp:
            root = zarr.open_group(tmp, mode="w", zarr_format=3)
            write_template(root, layout)
            if fmt == 1:
                _create_format1(root, layout.numblocks)
            return {n: _read_json(Path(tmp, n, "zarr.json"))[0] for n in _arrays_on_disk(Path(tmp))}
    except Exception:
        return {}


def _template_arrays(path: Path) -> set[str]:
    """The arrays the store's recorded template lists (none when it cannot be read)."""
    doc, _ = _read_json(_hidden(path, TEMPLATE))
    arrays = doc.get("arrays") if isinstance(doc, dict) else None
    return set(arrays) if isinstance(arrays, dict) else set()


def _batch_coords(info: Mapping[str, Any], path: Path | None = None) -> dict[str, np.ndarray]:
    from .space import space_from_spec

    try:
        coords = dict(space_from_spec(info["space_spec"]).batch_coords())
    except Exception:
        return {}
    if path is not None and uses_zarr_strings(path):  # a store of before text was UTF-8 bytes
        return coords
    return {k: v for name, values in coords.items() for k, v in encoded_coords(name, values).items()}


def _differs(doc: Any, ref: Mapping[str, Any], fields: tuple[str, ...]) -> str | None:
    """What of an array's metadata ``doc`` differs from ``ref`` (None: nothing)."""
    if not isinstance(doc, dict):
        return "is not a JSON object"
    for key in fields:
        if doc.get(key) != ref.get(key):
            if key == "shape" and wider_shape(doc, ref):  # a padded array block writers widened
                continue
            return f"has {key} {_short(doc.get(key))}, the template {_short(ref.get(key))}"
    attrs, want = doc.get("attributes"), ref.get("attributes")
    if isinstance(want, dict) and (
        not isinstance(attrs, dict) or any(attrs.get(k) != v for k, v in want.items())
    ):
        return "has attributes that differ from the template's"
    return None


def _short(value: Any, limit: int = 50) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Plan:
    """What a repair would write, found by :func:`_inspect` before anything is written."""

    path: Path
    info: dict[str, Any]
    root_doc: dict[str, Any] | None
    template: dict[str, Any] | None = None  # the template, when it is intact
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative file -> document
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # array -> values to write again
    consolidate: bool = False
    copy: bool = False  # .daskbatch/provenance.json to write again, from the root
    retemplate: bool = False  # .daskbatch/template.json to record again, from the arrays
    problems: list[MetadataProblem] = field(default_factory=list)
    gone: str | None = None  # the store has no provenance left
    provenance: list[MetadataProblem] = field(default_factory=list)  # of the root and the copy

    def add(self, file: str, problem: str, fix: str | None) -> None:
        self.problems.append(MetadataProblem(file, problem, fix))

    @property
    def damaged(self) -> list[MetadataProblem]:
        """The problems of the store's Zarr metadata (not of the repair copies)."""
        return [p for p in self.problems if not p.file.startswith(f"{HIDDEN}/")]

    @property
    def undecodable(self) -> list[MetadataProblem]:
        """The problems that keep the blocks from being decoded before a repair (not a
        damaged provenance in a root that is otherwise readable)."""
        return [p for p in self.damaged if p not in self.provenance or self.root_doc is None]


def _rebuilt_root(doc: dict[str, Any] | None, info: Mapping[str, Any]) -> dict[str, Any]:
    """The root document with ``info`` as its provenance (other attributes kept)."""
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    attrs = {k: v for k, v in attrs.items() if k != _ATTR} if isinstance(attrs, dict) else {}
    return {"zarr_format": 3, "node_type": "group", "attributes": {**attrs, _ATTR: dict(info)}}


def _inspect(path: Path, quick: bool = False, outputs: Mapping[str, Any] | None = None) -> _Plan:
    """Find every metadata problem of the store at ``path``, and how to repair it."""
    prov = read_provenance(path)
    if prov.info is None:
        if not path.exists():
            raise StoreError(f"store {str(path)!r} does not exist")
        if not looks_like_store(path):
            raise StoreError(f"{str(path)!r} is not a daskbatch store (no daskbatch metadata)")
        return _Plan(path, {}, None, gone=prov.gone)
    info = prov.info
    plan = _Plan(path, info, prov.root_doc, problems=list(prov.problems), provenance=list(prov.problems))
    if not prov.root_ok:
        plan.docs["zarr.json"] = _rebuilt_root(prov.root_doc, info)
        plan.consolidate = True
    plan.copy = not prov.copy_ok
    generated = None if quick else _generated(info, store_format(info, path), path)
    plan.template, why = _template(path, info, generated)
    if why is not None:
        plan.retemplate = True
        plan.add(TEMPLATE_FILE, why, "recorded again from the arrays, checked against the provenance")
    _inspect_arrays(plan, quick, generated)
    _inspect_coords(plan, outputs)
    return plan


def _inspect_arrays(plan: _Plan, quick: bool = False, generated: dict[str, Any] | None = None) -> None:
    path, info, template = plan.path, plan.info, plan.template
    fmt = store_format(info, path)
    consolidated = {}
    if plan.root_doc is not None:
        meta = (plan.root_doc.get("consolidated_metadata") or {}).get("metadata")
        consolidated = meta if isinstance(meta, dict) else {}
    if template is not None:
        refs, fields, source = template["arrays"], (*_FIELDS, "dimension_names"), f"{HIDDEN}/{TEMPLATE}"
        groups = dict(template.get("groups") or {})
    else:
        refs = dict(generated) if generated is not None else _generated(info, fmt, path)
        fields, source = _FIELDS_GENERATED, "the provenance"
        fields = fields[:1] if quick else fields  # a run without verify: only files that cannot be read
        groups = {INTERNAL: {"zarr_format": 3, "node_type": "group", "attributes": {}}} if fmt == 1 else {}
        for name, doc in consolidated.items():
            if name not in refs and isinstance(doc, dict) and doc.get("node_type") == "array":
                refs[name] = doc  # known only from the consolidated copy (e.g. output coordinates)
    for name, doc in groups.items():
        got, bad = _read_json(path / name / "zarr.json")
        if bad is not None or not isinstance(got, dict) or got.get("node_type") != "group":
            plan.add(f"{name}/zarr.json", bad or "is not a group's metadata", f"rebuilt from {source}")
            plan.docs[f"{name}/zarr.json"] = doc
    for name, ref in sorted(refs.items()):
        file = f"{name}/zarr.json"
        got, bad = _read_json(path / file)
        bad = bad or _differs(got, ref, fields)
        if bad is None:
            copy = consolidated.get(name)
            stale = isinstance(copy, dict) and copy != got and wider_shape(got, copy)
            if stale and {**copy, "shape": got["shape"]} == got:
                plan.consolidate = True  # only narrower than a padded array widened since: no damage
                continue
            if plan.root_doc is not None and consolidated.get(name) != got:
                plan.consolidate = True
                plan.add(
                    "zarr.json", f"its consolidated copy of {file} differs from {file}", "consolidated again"
                )
            continue
        doc, fix = ref, f"rebuilt from {source} (its chunk files are not touched)"
        if template is None:
            copy = consolidated.get(name)
            if isinstance(copy, dict) and _differs(copy, ref, fields) is None:
                doc, fix = (
                    copy,
                    ("rebuilt from the consolidated copy in zarr.json (its chunk files are not touched)"),
                )
            cannot = _undecodable(path, name, doc)
            if cannot:
                plan.add(file, bad, None)
                plan.add(file, f"a rebuilt {file} does not decode its chunks ({cannot})", None)
                continue
        plan.add(file, bad, fix)
        plan.docs[file] = widened(path, name, doc, [consolidated.get(name)])  # a padded array: as stored
        plan.consolidate = True


def _undecodable(path: Path, name: str, doc: Mapping[str, Any]) -> str | None:
    """Whether one chunk file of array ``name`` on disk decodes under metadata ``doc``."""
    files = sorted(p for p in (path / name / "c").rglob("*") if p.is_file()) if (path / name).is_dir() else []
    # chunk files only: not a write's temporary (``<key>.<id>.partial``) left by a kill
    files = [p for p in files if all(part.isdigit() for part in p.relative_to(path / name / "c").parts)]
    if not files:
        return None
    first = files[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp, name, *first.relative_to(path / name).parts)
            target.parent.mkdir(parents=True)
            target.write_bytes(first.read_bytes())
            Path(tmp, name, "zarr.json").write_text(json.dumps(doc))
            arr = zarr.open_array(str(Path(tmp, name)), mode="r")
            index = [int(i) for i in first.relative_to(path / name / "c").parts]
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, arr.chunks, strict=True))
            arr[region]
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _inspect_coords(plan: _Plan, outputs: Mapping[str, Any] | None = None) -> None:
    """The coordinates the template wrote (grid axes, output core coordinates)."""
    path, info = plan.path, plan.info
    dims, template = list(info["layout"]["batch_dims"]), plan.template

    def kind(name: str) -> str:
        return f"the grid axis {name!r}" if name in dims else f"the output coordinate {name!r}"

    if template is not None:
        sums = template.get("chunks") or {}
        for name, spec in sorted((template.get("coords") or {}).items()):
            try:
                values = np.asarray(spec["values"], dtype=np.dtype(spec["dtype"]))
            except (KeyError, TypeError, ValueError):
                continue
            for rel, (size, crc) in sorted(sums.items()):
                if rel.split("/c/")[0] != name:
                    continue
                f = path / rel
                if not f.is_file():
                    bad = "is missing"
                elif _checksum(f) != (size, crc):
                    bad = "does not match the checksum recorded at creation"
                else:
                    continue
                plan.add(rel, bad, f"rewrote {kind(name)} from {HIDDEN}/{TEMPLATE}")
                plan.coords[name] = values
        return
    for name, values in sorted(_batch_coords(info, path).items()):
        rel = f"{name}/c/" + "/".join("0" * max(1, values.ndim))
        written = (path / rel).is_file() or not values.size  # text of empty strings has no chunk
        if f"{name}/zarr.json" in plan.docs:
            bad = None if written else "is missing"
        else:
            try:  # the array alone: the root's zarr.json may be the damaged file
                got = np.asarray(zarr.open_array(str(path / name), mode="r")[...])
                same = got.shape == values.shape and bool(np.all(got == values))
                bad = None if same and written else "differs from the provenance's axis"
            except Exception as e:
                bad = f"cannot be read ({type(e).__name__})"
        if bad is not None:
            plan.add(rel, bad, f"rewrote {kind(name)} from the provenance (its space)")
            plan.coords[name] = np.asarray(values)
    _inspect_output_coords(plan, dims, outputs)


def _inspect_output_coords(plan: _Plan, dims: list[str], outputs: Mapping[str, Any] | None) -> None:
    """Output coordinates of a store made before its template was recorded: checked
    against the kernel's ``Output(coords=...)`` when it is given (a run has it)."""
    path = plan.path
    for name, spec in sorted(plan.info["kernel"].get("outputs", {}).items()):
        for d in spec.get("dims", []):
            if d in dims or d in plan.coords or not (path / d / "zarr.json").exists():
                continue
            # its one chunk (text: UTF-8 bytes, 2-D)
            rel = next((f"{d}/c/{k}" for k in ("0", "0/0") if (path / d / "c" / k).is_file()), f"{d}/c/0")
            out = (outputs or {}).get(name)
            want = None if out is None else (out.coords or {}).get(d)
            written = {} if want is None else encoded_coords(d, np.asarray(want))
            want = written.get(d)
            if want is None:
                if not (path / rel).is_file():
                    fix = None if outputs is not None else "rewritten from the kernel's Output(coords=...)"
                    plan.add(rel, "is missing", fix)
                continue
            try:
                got = zarr.open_array(str(path / d), mode="r")[...]
                same = (path / rel).is_file() and got.shape == want.shape and bool(np.all(got == want))
            except Exception:
                same = False
            if not same:
                plan.add(rel, "is missing or differs", f"rewrote the output coordinate {d!r} from the kernel")
                plan.coords.update(written)


# ------------------------------------------------------------------ check and repair


def _blocks(path: Path, full: bool, decode: bool) -> tuple[list[BlockProblem], int]:
    """The committed blocks whose data is wrong, and how many blocks were checked.
    Without ``decode`` only the chunk files are compared with their checksums."""
    ledger = StoreView(path).ledger
    if decode:
        problems = ledger.verify(full)
        return problems, len(ledger.records()) if full else 0
    records, problems = ledger._scan()
    for b, rec in sorted(records.items()):
        bad = ledger._check_files(rec, full)
        if bad is not None:
            problems.append(BlockProblem(b, bad))
    return sorted(problems, key=lambda p: p.block), len(records)


def _opens(path: Path) -> MetadataProblem | None:
    """Open the store as ``daskbatch.open`` does (its coordinates are read; data chunks
    are the blocks' checks' business)."""
    try:
        ds = StoreView(path).open_dataset()
        for name in ds.coords:
            ds[name].load()
    except Exception as e:
        if _block_coordinate_damaged(path):
            return None  # a block's chunk of the sample index: its block's check finds it
        cause = e.__cause__ or e.__context__ or e
        return MetadataProblem("zarr.json", f"daskbatch.open fails ({type(cause).__name__}: {cause})", None)
    return None


def _block_coordinate_damaged(path: Path) -> bool:
    """Whether a chunk of an index coordinate that each block writes (``sample``; not a
    grid axis, written at creation) cannot be decoded: xarray reads it to open the store."""
    try:
        layout = StoreView(path).require_info()["layout"]
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        for d, b in zip(layout["batch_dims"], layout["block_shape"], strict=True):
            arr = root[d]
            if arr.chunks != (b,) or arr.shape[0] == b:  # one chunk, written at creation
                continue
            for start in range(0, arr.shape[0], b):
                try:
                    arr[start : start + b]
                except Exception:
                    return True
    except Exception:
        return False
    return False


def check(store: str | os.PathLike[str], full: bool = True) -> Report:
    """What is wrong with a store, without changing anything.

    Metadata problems (the root's provenance and its copy, the template, root and
    array ``zarr.json`` files, the consolidated copy, the template's coordinate chunks)
    each name their file and what :func:`repair` does about it; damaged blocks are
    those whose data is proven wrong, under the provenance found right first. With
    ``full`` every chunk's CRC-32 is compared and the store is opened as
    ``daskbatch.open`` does. A store whose provenance is gone (its root and the copy
    both unusable) gives a report whose ``gone`` says so. Raises :class:`StoreError`
    when there is no store, or the folder is no daskbatch store.
    """
    path = Path(store).expanduser().absolute()
    plan = _inspect(path)
    if plan.gone is not None:
        problem = MetadataProblem("zarr.json", f"the store's provenance is gone ({plan.gone})", None)
        return Report(metadata=[problem], decoded=False, gone=plan.gone)
    report = Report(metadata=list(plan.problems))
    report.decoded = not plan.undecodable
    if report.decoded and full:
        problem = _opens(path)
        if problem is not None:
            report.metadata.append(problem)
            report.decoded = False
    if not any(p.file.startswith(f"{INTERNAL}/") for p in plan.problems):
        with contextlib.suppress(Exception):  # a format-1 ledger under a damaged root: after the repair
            report.blocks, report.checked = _blocks(path, full, decode=report.decoded)
    return report


def repair(
    store: str | os.PathLike[str], full: bool = True, outputs: Mapping[str, Any] | None = None
) -> Report:
    """Rebuild a store's damaged metadata, and return its damaged blocks.

    Everything is checked first: when a problem cannot be repaired (or the store's
    provenance is gone), raises :class:`StoreError` naming its file, and nothing is
    changed. Otherwise the root metadata is rebuilt from ``.daskbatch/provenance.json``
    when the copy is the right provenance, each array's from the template (or what the
    provenance makes, when the template is damaged; its chunk files are not touched),
    damaged template coordinates are written again, the metadata is consolidated
    again, the copy is written again from the root and a damaged template recorded
    again; then the blocks are verified (``full``: every checksum, and decoded) under
    the repaired metadata. The report's ``metadata`` lists what was repaired; its
    ``blocks`` are to be recomputed. ``outputs`` (the kernel's outputs) rebuild the
    output coordinates of a store whose template is not there.
    """
    from .log import logger

    path = Path(store).expanduser().absolute()
    plan = _inspect(path, outputs=outputs if outputs is not None else {})
    if plan.gone is not None:
        raise StoreError(gone_message(path, plan.gone))
    fatal = [p for p in plan.problems if p.fix is None]
    if fatal:
        raise StoreError(_refusal(path, fatal))
    try:
        _write_repairs(path, plan)
    except OSError as e:  # a full disk: what was written is undone by running the repair again
        raise StoreWriteError.of(
            e,
            f"repairing the metadata of store {str(path)!r}",
            "No committed block was touched; make room (or fix the cause) and run the same command again",
        ) from e
    if plan.problems:
        logger.warning("repaired the store's metadata: " + "; ".join(str(p) for p in plan.problems))
    report = Report(metadata=list(plan.problems))
    if full:
        problem = _opens(path)
        if problem is not None:
            raise StoreError(_refusal(path, [problem]))
    report.blocks, report.checked = _blocks(path, full, decode=True)
    return report


def _write_repairs(path: Path, plan: Any) -> None:
    """Write what :func:`repair` planned: metadata documents, coordinates, the
    consolidated copy, the provenance's copy and the template."""
    for rel, doc in sorted(plan.docs.items(), key=lambda kv: kv[0] != "zarr.json"):
        _write_json(path / rel, doc)
    for name, values in plan.coords.items():
        zarr.open_array(str(path / name), mode="r+")[...] = values
    if plan.consolidate or plan.coords:
        _quiet_consolidate(path)
    if plan.problems:
        _forget_open(path)
        save_provenance(path)  # the copy, from the root (verified or rebuilt above)
        if plan.retemplate:
            _record_template(path, plan.info, _coordinate_names(path, plan.info))


def _refusal(path: Path, problems: list[MetadataProblem]) -> str:
    listed = "; ".join(f"{p.file}: {p.problem}" for p in problems)
    return (
        f"store {str(path)!r} cannot be repaired automatically: {listed}. Nothing was changed; "
        "restore that file from a copy of the store, or start again with overwrite=True (--overwrite)"
    )


def damage_hint(store: str | os.PathLike[str]) -> str | None:
    """A one-line refusal for a run without verify on a store whose metadata is damaged
    (a few small files read; None when the metadata is intact)."""
    path = Path(store).expanduser().absolute()
    try:
        plan = _inspect(path, quick=True)
    except StoreError as e:
        return str(e)
    if plan.gone is not None:
        return gone_message(path, plan.gone)
    damaged = plan.damaged  # a damaged repair copy alone does not stop a run: verify rewrites it
    if not damaged:
        return None
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    return (
        f"store {str(path)!r}: {damaged[0]}{more}. Repair it with: daskbatch resume "
        f"{str(path)!r} --verify (or daskbatch.run(..., verify=True))"
    )
