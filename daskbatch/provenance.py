"""The store's info as data: what a run records, how a rerun is checked against it,
and how the kernel that wrote a store is found again.

* :func:`run_provenance` and :func:`new_info` build what a store records: the kernel
  and its code (:mod:`daskbatch.codeid`), the space, the constants, the layout, where
  the run was started from, and a fingerprint of what must match on a rerun.
* :func:`check_store` compares a rerun with a store: a different space, kernel
  signature, constants or chunking is refused (:class:`FingerprintMismatchError`
  naming what differs); changed kernel code is refused with a short diff
  (:class:`KernelChangedError`) unless the user asks to continue; a design given no
  seed continues with the store's.
* :func:`import_kernel` / :func:`kernel_from_info` are the one way to import a kernel
  from a ``module:function`` reference, from a spec file's folder, or from the file a
  store says the kernel came from.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import re
import sys
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .chunking import plan_block_shape
from .codeid import changed_parts, code_changes, installed_file, kernel_code, same_code
from .differences import _describe_difference, coordinate_differences
from .errors import FingerprintMismatchError, KernelChangedError, SpecFileError, StoreError
from .extension import added_rows, check_input, same_input, why_not
from .log import logger
from .space import order_difference

__all__ = [
    "changed_parts",
    "check_store",
    "code_changes",
    "import_kernel",
    "installed_file",
    "kernel_code",
    "kernel_from_info",
    "kernel_origin",
    "new_info",
    "now",
    "run_provenance",
    "space_fingerprint",
]


def kernel_origin(kernel: Any) -> str:
    """Where the kernel was defined: ``"module"``, ``"script"`` or ``"notebook"``."""
    if kernel.module != "__main__":
        return "module"
    file = kernel.source_file() or ""
    if "ipykernel" in sys.modules and (
        re.search(r"ipykernel_\d+", file) or not os.path.isfile(file) or file.startswith("<")
    ):
        return "notebook"
    if not os.path.isfile(file):
        return "notebook" if "IPython" in sys.modules else "script"
    return "script"


# --------------------------------------------------------------------------- importing


def add_import_path(directory: str | os.PathLike[str]) -> None:
    """Make modules in ``directory`` importable here and in worker processes started
    later, ahead of every other folder: in a process that runs two projects, the one
    whose kernel is imported last comes first (their ``kernel.py`` share a name, and
    worker processes import it by name)."""
    d = str(Path(directory).resolve())
    if not sys.path or sys.path[0] != d:
        while d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)
    # worker processes are spawned with this environment and must import the kernel too
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != d:
        os.environ["PYTHONPATH"] = os.pathsep.join([d, *(p for p in parts if p != d)])


def _module_root(module_name: str, file: str | None) -> Path | None:
    """The folder to put on ``sys.path`` so that ``module_name`` imports from ``file``."""
    if not file:
        return None
    path = Path(file)
    if not path.is_file():
        return None
    depth = module_name.count(".")
    root = path.parent
    if path.name == "__init__.py":
        depth += 1
    for _ in range(depth):
        root = root.parent
    return root


def import_kernel(
    ref: str,
    base_dir: str | os.PathLike[str] | None = None,
    file_hint: str | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
) -> Any:
    """Import a kernel from ``module:function`` or ``path/to/file.py:function``.

    ``base_dir`` (a spec file's folder) and the folder that makes ``file_hint`` (the
    file the kernel came from) importable are put on the import path first, for this
    process and for worker processes started after it.

    ``store``: the reference and folders come from that store's info (``resume``,
    ``validate``). Code inside the store is then never imported (a
    :class:`~daskbatch.errors.StoreError` names the file), and the file imported is
    logged before it runs.

    A module that cannot be imported (a syntax error, an exception while it runs) is
    a one-line :class:`~daskbatch.errors.SpecFileError` naming the file and line.
    """
    from .kernel import Kernel

    if not isinstance(ref, str) or ref.count(":") != 1:
        raise SpecFileError(
            f"kernel={ref!r} must be 'module:function' (e.g. 'daskbatch.models.dcsounding:schlumberger')"
            " or 'file.py:function'"
        )
    module_name, qualname = ref.split(":")
    guard = _StoreCode(store, ref) if store is not None else None
    if guard is not None:
        guard.refuse(base_dir, "the spec folder")
        guard.refuse(file_hint, "the kernel file")
    if base_dir is not None:
        add_import_path(base_dir)
    file: Path | None = None
    if module_name.endswith(".py") or module_name == "__main__":
        file = Path(file_hint or module_name)
        if base_dir is not None and not file.is_absolute():
            file = Path(base_dir) / file
        if guard is not None:
            guard.refuse(file, "the kernel file")
        if not file.is_file():
            raise SpecFileError(f"kernel={ref!r}: file {str(file)!r} does not exist")
        add_import_path(file.parent)
        module_name = file.stem
    else:
        root = _module_root(module_name, file_hint)
        if guard is not None:
            guard.refuse(root, "the kernel's import folder")
        if root is not None:  # the file the kernel came from comes first
            add_import_path(root)
    own = _own_file(module_name, base_dir, file_hint if file is None else str(file))
    if own is not None:  # a module of that name imported from elsewhere: this file, not that
        if guard is not None:
            guard.refuse(own, "the kernel file")
            logger.info(f"importing the kernel from {own} (recorded in the store)")
    elif guard is not None:
        guard.check_module(module_name)
    obj: Any = _import_module(ref, module_name, base_dir, own)
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise SpecFileError(f"kernel={ref!r}: {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Kernel):
        raise SpecFileError(
            f"kernel={ref!r} is not a daskbatch kernel; decorate it with @daskbatch.kernel(outputs=...)"
        )
    return obj


def _own_file(module_name: str, base_dir: str | os.PathLike[str] | None, file: str | None) -> Path | None:
    """The kernel's own file, when this process already holds a module of its name
    imported from another file (else None: the import finds the right one, or nothing).

    In one process (a notebook validating two stores, a program loading two spec files)
    two projects' ``kernel.py`` share a name: importing by name would return the first
    one's module. The file is the one the reference names (``file.py:f``), the one the
    store recorded, or the spec folder's ``<module>.py`` (or package). Only top-level
    modules: a dotted name is imported by name as before.
    """
    held = getattr(sys.modules.get(module_name), "__file__", None)
    if not held or "." in module_name:
        return None
    candidates = [Path(file)] if file else []
    if base_dir is not None:
        candidates += [Path(base_dir) / f"{module_name}.py", Path(base_dir) / module_name / "__init__.py"]
    own = next((c for c in candidates if c.is_file()), None)
    if own is None or own.resolve() == Path(held).resolve():
        return None
    return own


def _load_file(module_name: str, file: Path) -> Any:
    """Import ``file`` as the module ``module_name``, in place of the one held now."""
    import importlib.util

    folder = [str(file.parent)] if file.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(module_name, file, submodule_search_locations=folder)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ImportError(f"no loader for {str(file)!r}")
    module = importlib.util.module_from_spec(spec)
    old = sys.modules[module_name]  # held: _own_file only names a file then
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules[module_name] = old
        raise
    return module


def _import_module(
    ref: str, module_name: str, base_dir: str | os.PathLike[str] | None, file: Path | None = None
) -> Any:
    """Import ``module_name`` (from ``file`` if given); what keeps it from importing, as one line."""
    try:
        return importlib.import_module(module_name) if file is None else _load_file(module_name, file)
    except SyntaxError as e:
        file, line = e.filename, e.lineno
        if not file or str(file).startswith("<"):  # no file of its own (null bytes, exec)
            file, line = _failing_frame(e, module_name) or (file, line)
        raise SpecFileError(
            f"kernel={ref!r}: {file}, line {line}: syntax error ({e.msg}); fix the file"
        ) from None
    except ImportError as e:
        where = f" (looked in {str(base_dir)!r} too)" if base_dir is not None else ""
        raise SpecFileError(
            f"kernel={ref!r}: cannot import module {module_name!r} ({e}){where}; run from the folder "
            "that holds it, or add that folder to PYTHONPATH"
        ) from e
    except Exception as e:  # the module's own code raised while it was imported
        file, line = _failing_frame(e, module_name) or ("?", "?")
        text = str(e).splitlines()[0] if str(e) else ""
        raise SpecFileError(
            f"kernel={ref!r}: importing module {module_name!r} raised {type(e).__name__}"
            f"{': ' + text if text else ''} ({file}, line {line}); fix the module"
        ) from None


def _failing_frame(exc: BaseException, module_name: str) -> tuple[str, int] | None:
    """The file and line where importing ``module_name`` failed: the last frame of the
    traceback outside Python's import machinery, else the module's own file (at its
    first NUL byte, the one error Python names no line of)."""
    machinery = os.path.dirname(importlib.__file__)
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<")
        and f.filename != __file__
        and os.path.dirname(f.filename) != machinery
    ]
    if frames:
        return frames[-1].filename, frames[-1].lineno or 0
    files = [f for f in _module_files(module_name) if f.is_file()]
    if not files:
        return None
    try:
        data = files[-1].read_bytes()
    except OSError:
        return str(files[-1]), 1
    nul = data.find(b"\0")
    return str(files[-1]), (data.count(b"\n", 0, nul) + 1 if nul >= 0 else 1)


def _module_files(module_name: str) -> list[Path]:
    """The files (or namespace folders) importing ``module_name`` would run, found
    without running any: its packages' ``__init__.py`` and its own file. Modules
    already imported run nothing and are left out."""
    import importlib.machinery
    import importlib.util

    files: list[Path] = []
    path: Any = None
    parts = module_name.split(".")
    for k in range(len(parts)):
        name = ".".join(parts[: k + 1])
        module = sys.modules.get(name)
        if module is not None:
            path = getattr(module, "__path__", None)
            continue
        try:
            spec = (
                importlib.util.find_spec(name)
                if k == 0
                else importlib.machinery.PathFinder.find_spec(name, path)
            )
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            break
        if spec.origin and spec.has_location:
            files.append(Path(spec.origin))
        else:
            files.extend(Path(p) for p in spec.submodule_search_locations or ())
        path = spec.submodule_search_locations
    return files


class _StoreCode:
    """Keeps a store's own files from being imported as its kernel.

    A store's info says where its kernel came from; a crafted (or carelessly copied)
    store could point at a file inside itself, to be run by ``resume`` or
    ``validate``. Every path is compared resolved (symlinks followed).
    """

    def __init__(self, store: str | os.PathLike[str], ref: str) -> None:
        self.store = Path(store)
        self.root = self.store.resolve()  # once: the store's real path, links followed
        self.ref = ref

    def inside(self, path: str | os.PathLike[str]) -> bool:
        from .hints import inside_store

        return inside_store(path, self.root)

    def refuse(self, path: str | os.PathLike[str] | None, what: str) -> None:
        if path is None or path == "" or not self.inside(path):
            return
        raise StoreError(
            f"store {str(self.store)!r} records {what} {str(path)!r} (kernel={self.ref!r}), which is "
            "inside the store itself; daskbatch does not import code from a store: run the kernel "
            "from its own file with `daskbatch run SPEC` instead"
        )

    def check_module(self, module_name: str) -> None:
        """Refuse ``module_name`` if it would be imported from the store; else say
        which file is about to be imported."""
        files = _module_files(module_name)
        for f in files:
            self.refuse(f, "the kernel file")
        if files:
            logger.info(f"importing the kernel from {files[-1]} (recorded in the store)")


def kernel_from_info(info: Mapping[str, Any], store: str) -> Any:
    """Import the kernel that wrote a store, from where the store says it came from.

    A kernel defined in a notebook or in a script run as ``__main__`` cannot be
    imported again: the message says to rerun the cell or the script. Nothing inside
    the store itself is ever imported (see :func:`import_kernel`).
    """
    ref = info.get("kernel_ref") or info["kernel"]["identity"]
    if not isinstance(ref, str):
        raise StoreError(f"store {store!r}: the kernel reference {ref!r} recorded in it is not text")
    module_name = ref.split(":")[0]
    origin = info.get("kernel_origin")
    file = info.get("kernel_file")
    if module_name == "__main__":
        if origin == "notebook" or not (file and os.path.isfile(file)):
            raise SpecFileError(
                f"store {store!r} was written by kernel {ref.split(':')[-1]!r} defined in a notebook "
                "(or in code that has no file): run the notebook cell that called daskbatch.run "
                "again; it continues where it stopped"
            )
        from .hints import inside_store, resume_hint

        if inside_store(file, store):
            raise StoreError(
                f"store {store!r} records the script of its kernel {ref.split(':')[-1]!r} as "
                f"{file!r}, which is inside the store itself; daskbatch does not run code from a "
                "store: run the script that called daskbatch.run again"
            )
        raise SpecFileError(
            f"store {store!r} was written by kernel {ref.split(':')[-1]!r} defined in the script "
            f"{file!r}: run that script again ({resume_hint(info, store)}); it continues where it stopped"
        )
    return import_kernel(ref, info.get("spec_dir"), file_hint=file, store=store)


# --------------------------------------------------------------------------- the store's info


def now() -> str:
    """The time now, as the store's history records it (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


#: what a space's spec records about its input that its contents digest covers: where
#: it is, its size and modification time, and the digests that locate a changed row
_INPUT_KEYS = ("size", "mtime_ns", "files", "column_sha256", "prefix")


def space_fingerprint(space: Any) -> dict[str, Any]:
    """What of a space must match on a rerun (a table is identified by its contents)."""

    def strip(spec: Any) -> Any:
        if not isinstance(spec, dict):
            return spec
        out = {k: v for k, v in spec.items() if k not in _INPUT_KEYS}
        for part in ("outer", "inner"):
            if part in out:
                out[part] = strip(out[part])
        return out

    spec = strip(dict(space.spec()))
    spec.pop("path", None)
    return spec


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_provenance(kernel: Any, spec_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What a run records about its kernel's code and how to run it again.

    Recorded on every run (a rerun with ``kernel_changed="continue"`` records the new
    code): the code identity, where the kernel was defined, and either the spec file
    it was described in (``daskbatch resume`` imports the kernel from its folder) or
    the folder and command line the run was started with.
    """
    provenance = {
        "kernel_code": kernel_code(kernel),
        "kernel_origin": kernel_origin(kernel),
        "kernel_file": kernel.source_file(),
        "kernel_source_sha256": kernel.source_hash(),
    }
    if spec_file is not None:
        provenance["spec_file"] = str(Path(spec_file).resolve())
        provenance["spec_dir"] = str(Path(spec_file).resolve().parent)
        provenance["kernel_ref"] = _spec_kernel_ref(spec_file) or kernel.identity
    else:
        # how to run it again: the script and the folder it ran from (a relative store path)
        provenance["cwd"] = os.getcwd()
        provenance["argv"] = [str(a) for a in sys.argv[:50]]
    return provenance


def new_info(
    kernel: Any,
    space: Any,
    constants_json: Any,
    block_shape: tuple[int, ...],
    numblocks: tuple[int, ...],
    provenance: Mapping[str, Any],
    constants: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The info of a new store: provenance, layout, an empty history and the fingerprint
    (:meth:`~daskbatch.store.Store.create` adds the store format). ``constants``, as the
    run passes them, are also recorded with their types (``constants_typed``)."""
    info = {
        "version": __version__,
        "store_id": uuid.uuid4().hex,
        "kernel": kernel.spec(),
        **provenance,
        "space": space_fingerprint(space),
        "space_spec": space.spec(),
        "seed": space.seed,
        "constants": constants_json,
        "layout": {
            "batch_dims": list(space.batch_dims),
            "batch_shape": list(space.batch_shape),
            "block_shape": list(block_shape),
            "numblocks": list(numblocks),
        },
        "fingerprint": "",
        "history": [],
    }
    info["fingerprint"] = _digest({k: info[k] for k in ("kernel", "space", "constants", "layout")})
    if constants is not None:  # as passed, for `daskbatch resume` and `validate` (not fingerprinted)
        from .constants import typed_constants

        info["constants_typed"] = typed_constants(dict(constants))
    return info


def check_store(
    store: Any,
    info: Mapping[str, Any],
    kernel: Any,
    space: Any,
    constants_json: Any,
    chunk_size: Any,
    code: Mapping[str, Any],
    kernel_changed: str,
    announce: bool = True,
    reduce_spec: Any = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Refuse a store written by a different run; return the space to run (a seedless
    design takes the store's seed) and the change of the kernel's code, if any.
    ``reduce_spec``: what the run reduces (a store's partial states are of what it
    reduced; another reduction cannot reuse them)."""
    space = _adopt_seed(space, info, announce)
    space = _adopt_scan(space, info)
    _check_fingerprint(store, info, kernel, space, constants_json, chunk_size, reduce_spec)
    return space, _check_kernel_code(store, info, kernel, code, kernel_changed)


def _spec_kernel_ref(spec_file: str | os.PathLike[str]) -> str | None:
    """The ``kernel`` a spec file names (how ``daskbatch resume`` imports it again)."""
    import tomllib

    try:
        ref = tomllib.loads(Path(spec_file).read_text()).get("kernel")
    except (OSError, ValueError):
        return None
    return ref if isinstance(ref, str) else None


def _adopt_scan(space: Any, info: Mapping[str, Any]) -> Any:
    """A table digested block by block, on a store made from one read whole: read whole
    too (the store's blocks keep no digests; its table is known by its contents)."""
    old = info.get("space_spec")
    whole = getattr(space, "read_whole", None)
    if whole is None or not isinstance(old, Mapping) or old.get("type") != "table":
        return space
    if old.get("digest") == "blocks" or space.spec().get("digest") != "blocks":
        return space
    return whole()


def _adopt_seed(space: Any, info: Mapping[str, Any], announce: bool) -> Any:
    """A design given no seed continues with the seed its store was started with."""
    stored = info.get("seed")
    if space.seed_given or stored is None or stored == space.seed:
        return space
    other = space.with_seed(int(stored))
    if space_fingerprint(other) != info.get("space") and added_rows(info, other) is None:
        return space  # something else differs too (not only n raised): the fingerprint check names it
    if announce:
        logger.info(f"no seed given; continuing with the seed this store was started with ({stored})")
    return other


def _check_fingerprint(
    st: Any, info: Mapping[str, Any], kernel: Any, space: Any, constants_json, chunk_size, reduce_spec=None
) -> None:
    stored_layout = info["layout"]

    now = {"kernel": kernel.spec(), "space": space_fingerprint(space), "constants": constants_json}
    if reduce_spec is not None or info.get("reduce") is not None:
        now["reduce"] = reduce_spec
    if now["space"] != info.get("space"):
        check_input(st, info, space)  # a table digested by blocks: compared with the store's
    if added_rows(info, space) is not None:
        del now["space"]  # samples added at the end, the stored ones unchanged: the store grows
    elif same_input(info, space):
        del now["space"]  # its file changed, not the rows the store holds: the run goes on
    # compared as their JSON: NaN equals NaN there, as it does in the store (not in Python)
    diffs = [
        _describe_difference(k, info.get(k), v) for k, v in now.items() if _json(info.get(k)) != _json(v)
    ]
    order = order_difference(info.get("space"), space_fingerprint(space))
    if order is not None:  # the fingerprint compares them as unordered tables
        diffs.append(order)
    diffs += coordinate_differences(st.path, kernel.outputs)  # not in the fingerprint: the arrays
    reason = why_not(info, space) if "space" in now and info.get("space") != now["space"] else None
    if reason is not None and int(space.size) > int(stored_layout["batch_shape"][0]):
        diffs.append(f"and the new samples cannot be added to the stored ones: {reason}")
    elif (
        reason is not None
        and "not more than the stored" not in reason
        and "does not add samples" not in reason
    ):
        diffs.append(f"where: {reason}")
    if "space" in now and info.get("space") != now["space"]:
        gone = _files_gone(st, space)
        if gone:
            more = f" and {len(gone) - 3:,} more" if len(gone) > 3 else ""
            diffs.append(f"files the store holds results of are gone: {', '.join(gone[:3])}{more}")
    if chunk_size != "auto":
        # a store that grows keeps its blocks: chunk_size as it was cut for the samples the
        # store was made with (a chunk_size above them was cut down to them then)
        grown = info.get("grown")
        made = [grown[0]["samples"][0]] if isinstance(grown, list) and grown else stored_layout["batch_shape"]
        shape = space.batch_shape if "space" in now and not grown else tuple(made)
        bs = plan_block_shape(space.batch_dims, shape, chunk_size, n_workers=1)
        if list(bs) != stored_layout["block_shape"]:
            diffs.append(f"chunking (block shape {stored_layout['block_shape']} -> {list(bs)})")
    if diffs:
        raise FingerprintMismatchError(
            f"store {str(st.path)!r} was written by a different run; what differs: "
            + ", ".join(diffs)
            + ". Pass overwrite=True (--overwrite) to discard it and start again, or use a new store path"
        )


def _files_gone(st: Any, space: Any) -> list[str]:
    """The files of a :class:`~daskbatch.files.Files` store (its ``path`` coordinate) that
    ``space`` no longer lists: removed or renamed since the store was made."""
    paths = getattr(space, "paths", None)
    if paths is None or not getattr(space, "carries_rows", False):
        return []
    try:
        import zarr

        from .ragged import decode_text

        arr = zarr.open_array(str(st.path), path="path", mode="r")
        meta = (arr.attrs.get("daskbatch") or {}) if isinstance(arr.attrs.get("daskbatch"), dict) else {}
        if arr.shape[0] > 1_000_000:
            return []
        data = np.asarray(arr[:])
        if meta.get("encoding"):
            data = decode_text(
                data, np.asarray(zarr.open_array(str(st.path), path=meta["length"], mode="r")[:])
            )
        now = set(str(p) for p in paths.tolist())
        return [str(p) for p in data.tolist() if str(p) not in now]
    except Exception:  # the refusal stands without the names
        return []


def _check_kernel_code(
    st: Any, info: Mapping[str, Any], kernel: Any, code: Mapping[str, Any], kernel_changed: str
) -> dict[str, Any] | None:
    """None when the kernel's code is the store's; else the change, or a refusal naming it.

    A store with no committed block takes the new code silently: nothing would mix.
    """
    old = info.get("kernel_code")
    if old is None:  # written before the code was recorded: only a hash of the raw source
        raw = info.get("kernel_source_sha256")
        if raw is None or raw == kernel.source_hash():
            return None
        old = {"sha256": raw, "parts": {}}
        lines = ["  (this store recorded only a hash of the kernel's source: no diff to show)"]
    elif same_code(old, code):
        return None
    else:
        lines = code_changes(old, code)
    done = st.ledger.committed()
    change = {
        "from": old.get("sha256"),
        "to": code["sha256"],
        "parts": changed_parts(old, code),
    }
    if not done.any():
        change["results"] = False
        return change
    if kernel_changed == "continue":
        change["results"] = True
        return change
    raise KernelChangedError(
        f"store {str(st.path)!r} holds results of other code of kernel {kernel.identity!r} "
        f"({int(done.sum()):,} of {done.size:,} blocks done). What changed:\n"
        + "\n".join(lines)
        + "\nTo discard those results and start again: overwrite=True (--overwrite). To keep them "
        "and go on with the new code: kernel_changed='continue' (--kernel-changed continue); "
        "the store's history records it"
    )
