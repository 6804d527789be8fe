"""Whether the user's modules this process holds are still the files on disk.

Worker processes import a kernel's module, and the user's modules it uses, from their
files (processes forked from daskbatch's forkserver forget them first, see
:func:`daskbatch.hygiene.start_forkserver`; spawned and remote workers import them
anyway). This process keeps the code it imported. A file edited since, and not
reloaded here (``importlib.reload``, a notebook's autoreload), would then run in the
workers while this process, its probe and the store's record of the kernel's code have
the old one: a store with both kinds of results. :func:`check_kernel` refuses such a
run before anything is started or written, naming the module and the way on.

Each module's file is noted (size, modification time, digest) when daskbatch first
sees it: when a kernel is made (while its module is being imported) and when a run
starts. A reload makes a new module spec, which is noted again.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import inspect
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from .codeid import _names_used, installed_file
from .errors import StaleModuleError

__all__ = ["StaleModuleError", "check_kernel", "note_kernel"]


@dataclass(frozen=True)
class _Noted:
    spec: Any  # the module's spec when noted: a reload makes a new one
    file: str
    mtime_ns: int
    size: int
    sha256: str


_NOTED: dict[str, _Noted] = {}
_USERS: dict[str, bool] = {}  # a file: whether it is the user's own (not installed)


def _digest(file: str) -> str:
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _users_file(module: Any) -> str | None:
    """The module's source file if it is the user's own Python code, else None."""
    name = getattr(module, "__name__", "")
    if name in ("__main__", "__mp_main__") or name == "daskbatch" or str(name).startswith("daskbatch."):
        return None
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    own = _USERS.get(file)
    if own is None:
        own = _USERS[file] = not installed_file(file)
    return file if own else None


def _names_in(values: Any) -> list[str]:
    """The user's modules that ``values`` are, or that their functions and classes come from."""
    out: list[str] = []
    for value in values:
        try:
            is_module = isinstance(value, types.ModuleType)
            name = value.__name__ if is_module else getattr(value, "__module__", None)
        except Exception:  # an object whose attributes raise
            continue
        if isinstance(name, str) and _users_file(sys.modules.get(name)):
            out.append(name)
    return out


def _reached(kernel: Any) -> list[str]:
    """The kernel's module, its ``setup``'s, and the user's modules they reach through
    their globals (a module imported, or a function or class taken from one). The
    kernel's own globals are walked even when its module's name now holds another
    module (another project's of the same name)."""
    funcs = [getattr(kernel, "func", None), getattr(kernel, "setup", None)]
    start = [getattr(kernel, "module", None), getattr(funcs[1], "__module__", None)]
    todo = [n for n in dict.fromkeys(start) if n and _users_file(sys.modules.get(n))]
    for func in funcs:  # what the functions name (a notebook's namespace holds much more)
        func = inspect.unwrap(func) if callable(func) else None
        glob, code = getattr(func, "__globals__", None), getattr(func, "__code__", None)
        if isinstance(glob, dict) and code is not None:
            todo += _names_in([glob[n] for n in _names_used(code) if n in glob])
    seen = set(todo)
    while todo:
        module = sys.modules.get(todo.pop())
        for name in _names_in(list(vars(module).values()) if module is not None else ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return sorted(seen)


def _import_path_elsewhere(name: str) -> tuple[str, str] | None:
    """``(held file, file the import path leads to)`` when module ``name``'s top-level
    package, as this process holds it, is not the one a worker would import by name
    (another project's module of the same name first on the import path)."""
    top = name.split(".")[0]
    held = getattr(sys.modules.get(top), "__file__", None)
    if not isinstance(held, str):
        return None
    try:
        spec = importlib.machinery.PathFinder.find_spec(top)
    except (ImportError, ValueError):
        return None
    found = spec.origin if spec is not None and spec.has_location else None
    if found is None or os.path.realpath(found) == os.path.realpath(held):
        return None
    return held, found


def _note(name: str) -> None:
    module = sys.modules.get(name)
    file = _users_file(module)
    spec = getattr(module, "__spec__", None)
    old = _NOTED.get(name)
    if file is None or (old is not None and old.spec is spec and old.file == file):
        return
    try:
        st = os.stat(file)
        _NOTED[name] = _Noted(spec, file, st.st_mtime_ns, st.st_size, _digest(file))
    except OSError:  # gone or unreadable: nothing to compare with later
        _NOTED.pop(name, None)


def note_kernel(kernel: Any) -> None:
    """Note the files of the user's modules ``kernel`` uses, as they are now (when the
    kernel is made, and when a run starts, for modules not noted yet or reloaded)."""
    for name in _reached(kernel):
        _note(name)


def _changed(name: str) -> str | None:
    """The file of module ``name`` if it changed since it was noted and was not reloaded."""
    noted = _NOTED.get(name)
    module = sys.modules.get(name)
    if noted is None or module is None or getattr(module, "__spec__", None) is not noted.spec:
        return None
    try:
        st = os.stat(noted.file)
        if (st.st_mtime_ns, st.st_size) == (noted.mtime_ns, noted.size):
            return None
        return None if _digest(noted.file) == noted.sha256 else noted.file
    except OSError:
        return None  # a file that is gone: the workers say so when they import it


def check_kernel(kernel: Any) -> None:
    """Refuse a run whose kernel uses a module of the user's that changed on disk since
    this process imported it, and was not reloaded; note the modules seen first now."""
    names = _reached(kernel)
    stale = [(n, f) for n in names if (f := _changed(n)) is not None]
    if stale:
        name, file = stale[0]
        own = getattr(kernel, "module", None)
        what = "the kernel's module" if name == own else "module"
        others = f" (and {', '.join(repr(n) for n, _ in stale[1:])})" if len(stale) > 1 else ""
        reload = f"importlib.reload({name})" + (f", then importlib.reload({own})" if name != own else "")
        raise StaleModuleError(
            f"kernel {getattr(kernel, 'name', '?')!r}: {what} {name!r}{others} changed on disk "
            f"({file}) since this process imported it, and was not reloaded: worker processes "
            "would run the file as it is now while this process runs the code it imported. "
            f"Reload it ({reload}; in a notebook, %autoreload 2 does it) or start Python again, "
            "then run again; nothing was started or written"
        )
    for n in names:
        elsewhere = _import_path_elsewhere(n)
        if elsewhere is not None:
            held, found = elsewhere
            raise StaleModuleError(
                f"kernel {getattr(kernel, 'name', '?')!r}: module {n.split('.')[0]!r} of this process "
                f"is {held}, but the import path now leads to {found} (another module of the same "
                "name, imported in this process for another project): worker processes would "
                "import that one. Run each project in a Python process of its own, or give the "
                "modules names of their own; nothing was started or written"
            )
    for n in names:
        _note(n)
