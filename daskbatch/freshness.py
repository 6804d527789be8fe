"""Whether the code a kernel uses in this process is the code its files hold now.

Worker processes import a kernel's module, and the user's modules it uses, from their
files (processes forked from daskbatch's forkserver forget them first, see
:func:`daskbatch.hygiene.start_forkserver`; spawned and remote workers import them
anyway). This process keeps the code it imported. A file edited since, and not
reloaded here (``importlib.reload``, a notebook's autoreload), would run in the
workers while this process and its probe run the old code: a store with both kinds
of results. :func:`check_kernel` refuses such a run before anything is started or
written, naming the module and the way on.

What is compared: each function of the user's that the kernel's code reaches (as
:func:`daskbatch.codeid.kernel_code` follows it: functions it calls, modules it uses
as modules), its code in this process against the code its file's source compiles to
now (the whole file compiled, as an import does; modules another loader made, such as
pytest's assert rewriting, are left out). Comments, blank lines, docstrings and
moved lines do not count. Also compared: the module-level constants of those modules
that their file assigns once by a literal (a number, text, a tuple of those), against
their value here. Methods (of the user's classes the kernel uses) and nested
functions count like functions; a name the file defines more than once (``try``/
``except``, ``if``/``else``) matches any of its definitions. Not compared: other
values, and values bound by ``from helper import X``.

Also refused: a module of the user's that this process holds from one file while the
import path now leads to another of the same name (two projects' ``utils.py`` in one
notebook): the workers would import that one.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.machinery
import inspect
import os
import sys
import types
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from .codeid import class_functions, kernel_objects, users_source
from .errors import StaleModuleError
from .parsing import LOCK, parse

__all__ = ["StaleModuleError", "check_kernel", "check_worker_code", "code_digests", "first_digests"]


def _shape(code: types.CodeType) -> tuple[Any, ...]:
    """A code object without its line numbers and docstring: what it does."""
    consts = list(code.co_consts)
    if consts and isinstance(consts[0], str):  # the docstring's slot
        consts[0] = None
    return (
        code.co_code,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        tuple(_shape(c) if isinstance(c, types.CodeType) else _const(c) for c in consts),
    )


def _const(value: Any) -> tuple[str, Any]:
    """A code constant as the same text in every process (a frozenset's order follows
    the process's hash seed: ``x in {"a", "b"}``)."""
    if isinstance(value, frozenset):
        return "frozenset", tuple(sorted(repr(v) for v in value))
    return type(value).__name__, repr(value)


def _state(file: str) -> tuple[str, int, int] | None:
    """``(path, modification time, size)``: what the caches below key a file's contents
    by; None when it cannot be read."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return file, st.st_mtime_ns, st.st_size


#: the code of every function of a file as it is now, by (path, mtime, size)
_COMPILED: dict[tuple[str, int, int], dict[str, list[types.CodeType]] | None] = {}
_UNREADABLE: dict[str, list[types.CodeType]] = {}


def _file_functions(file: str) -> dict[str, list[types.CodeType]] | None:
    """The code of every function, method and nested function ``file`` defines now, by
    qualified name (``f``, ``Model.run``, ``make.<locals>.inner``; a name defined more
    than once, as in ``try``/``except`` or ``if``/``else``, has each), compiled whole as an
    import does (the compiler's choices depend on the module's imports); None if it no
    longer compiles; :data:`_UNREADABLE` if it cannot be read."""
    key = _state(file)
    if key is None:
        return _UNREADABLE
    if key not in _COMPILED:
        try:
            with open(file, "rb") as f:
                module = compile(f.read(), file, "exec", dont_inherit=True)
        except OSError:
            return _UNREADABLE
        except (SyntaxError, ValueError):
            _COMPILED[key] = None
        else:
            found: dict[str, list[types.CodeType]] = {}
            todo = [c for c in module.co_consts if isinstance(c, types.CodeType)]
            while todo:
                code = todo.pop()
                found.setdefault(code.co_qualname, []).append(code)
                todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            _COMPILED[key] = found
    return _COMPILED[key]


def _differs_from_file(func: types.FunctionType) -> bool:
    """Whether ``func``'s code is none of the code its file defines under its qualified
    name now."""
    code = func.__code__
    functions = _file_functions(code.co_filename)
    if functions is None:
        return True  # the file no longer compiles
    if functions is _UNREADABLE:
        return False  # the workers say so when they import it
    shape = _shape(code)
    return not any(_shape(c) == shape for c in functions.get(code.co_qualname, ()))


def _immutable(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return True
    return isinstance(value, tuple) and all(_immutable(v) for v in value)


#: the constants of a file as it is now (see :func:`_file_constants`), by (path, mtime, size)
_CONSTANTS: dict[tuple[str, int, int], dict[str, Any] | None] = {}


def _file_constants(file: str) -> dict[str, Any] | None:
    """The module-level constants ``file`` sets now: a number, text or tuple assigned
    by a literal and bound nowhere else at module level (an ``if``/``try`` block that
    sets it again from the environment makes it no constant), never declared ``global``
    in a function (state a module keeps on purpose); none in a module with a star
    import; None when the file cannot be read or parsed."""
    key = _state(file)
    if key is None:
        return None
    if key in _CONSTANTS:
        return _CONSTANTS[key]
    try:
        with open(file, encoding="utf-8") as f:
            tree = parse(f.read())
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    counts: dict[str, int] = {}
    literal: dict[str, Any] = {}
    for node in _module_level(tree):  # an `if`/`try` block may bind a name again (from the environment)
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            _CONSTANTS[key] = {}  # any name may come from elsewhere
            return {}
        bound: list[str] = []
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.append(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in node.items]
        for t in targets:
            bound += [
                n.id for n in (ast.walk(t) if isinstance(t, ast.AST) else ()) if isinstance(n, ast.Name)
            ]
        for name in bound:
            counts[name] = counts.get(name, 0) + 1
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and (not isinstance(node, ast.Assign) or len(node.targets) == 1):
                with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    literal[target.id] = ast.literal_eval(node.value)
    kept = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
    found = {
        name: value
        for name, value in literal.items()
        if counts.get(name) == 1 and name not in kept and _immutable(value)
    }
    _CONSTANTS[key] = found
    return found


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run at a module's top level: its body and what its ``if``,
    ``try``, ``with``, ``for`` and ``while`` blocks hold (not functions or classes)."""
    out: list[ast.stmt] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.stmt):
            out.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for name in ("body", "orelse", "finalbody", "handlers"):
            todo += [
                c for c in getattr(node, name, None) or [] if isinstance(c, ast.stmt | ast.excepthandler)
            ]
    return out


def _value_changed(module: types.ModuleType, file: str) -> tuple[str, Any, Any] | None:
    """``(name, value here, value in the file)`` of a constant of the file
    (:func:`_file_constants`) that the module holds with another value."""
    here = vars(module)
    for name, value in (_file_constants(file) or {}).items():
        if name not in here:
            continue
        if not _immutable(here[name]) or repr(here[name]) != repr(value):
            return name, here[name], value
    return None


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


def _reload_hint(kernel: Any, module: str) -> str:
    own = getattr(kernel, "module", None)
    hint = f"importlib.reload({module})"
    if own in ("__main__", "__mp_main__"):
        return hint + ", then run the cell or script that makes the kernel again"
    if own and own != module:
        hint += f", then importlib.reload({own})"
    return hint


def _reached(kernel: Any) -> tuple[list[types.FunctionType], list[types.ModuleType]]:
    """The functions (and methods) the kernel's code reaches, and the modules it uses
    as modules, every function and method of which counts."""
    functions, modules, submodules = kernel_objects(kernel)
    # a package's submodule counts when the code names it (pkg.physics.gain(a)), not
    # every module loaded from the package
    named = {n for f in functions for n in f.__code__.co_names}
    modules = modules + [m for m in submodules if m.__name__.rsplit(".", 1)[-1] in named]
    for mod in modules:  # a module used as a module: every function and method defined in it
        for v in list(vars(mod).values()):
            if getattr(v, "__module__", None) != mod.__name__:
                continue
            if callable(v) and not isinstance(v, type) and hasattr(v, "__wrapped__"):
                v = inspect.unwrap(v)  # functools.lru_cache, wraps: the function it wraps
            if isinstance(v, types.FunctionType):
                functions.append(v)
            elif isinstance(v, type):
                functions += class_functions(v)
    return functions, modules


#: the digest this process first took of each function (a reloaded module's are new ones)
_FIRST: weakref.WeakKeyDictionary[types.FunctionType, str] = weakref.WeakKeyDictionary()


def code_digests(kernel: Any, first: bool = False) -> dict[str, list[str]]:
    """The digests of the functions of the user's that ``kernel`` runs in this process,
    by ``module:qualname`` (several for one name: a module's lambdas, a name defined
    twice): each function's code as compiled (comments, docstrings and line numbers do
    not count) and the values its file's literal constants that it names have there
    (what an import of the file gives; a value a ``setup=`` or a first call sets at run
    time does not count). Two processes whose digests agree run the same code.

    With ``first``, each function's digest is the one this process first took of it
    (a worker keeps running the code it imported, whatever its file says later)."""
    functions, _ = _reached(kernel)
    digests: dict[str, set[str]] = {}
    for func in functions:
        code = func.__code__
        if not users_source(func.__module__, code.co_filename):
            continue
        digest = _FIRST.get(func) if first else None
        if digest is None:
            literal = _file_constants(code.co_filename) or {}
            values = sorted((n, repr(literal[n])) for n in set(code.co_names) if n in literal)
            digest = hashlib.sha256(repr((_shape(code), values)).encode()).hexdigest()[:32]
            if first:
                _FIRST[func] = digest
        digests.setdefault(f"{func.__module__}:{code.co_qualname}", set()).add(digest)
    return {k: sorted(v) for k, v in digests.items()}


def _imported_here(func_key: str) -> bool:
    """Whether the module of a :func:`code_digests` key was imported from its file in
    this process (code sent by value, as the driver's, is not)."""
    module = sys.modules.get(func_key.split(":", 1)[0])
    return isinstance(getattr(module, "__file__", None), str)


def first_digests(kernel: Any) -> dict[str, list[str]]:
    """:func:`code_digests` of ``kernel`` as this process first had each function."""
    return code_digests(kernel, first=True)


def check_worker_code(kernel: Any, expected: Mapping[str, Sequence[str]]) -> None:
    """In a worker process: refuse to compute when code of the user's that this process
    imported from its files for ``kernel`` is not the code the run started with
    (``expected``: :func:`code_digests` in the driver). A file edited while a run goes
    on, imported by a worker that started later (a job-queue worker job replacing one,
    a restarted worker), would put results of the new code beside those of the old.
    Only what the driver has too is compared (a module the kernel imports on its first
    call is not in the driver's)."""
    # numpy.ma's import parses text signatures (distributed imports it when a worker
    # first sends an array): done here, under the lock, not beside this check's parses
    with LOCK:
        import numpy.ma  # noqa: F401
    found = first_digests(kernel)
    differs = next(
        (
            f
            for f, ds in sorted(found.items())
            if f in expected and _imported_here(f) and not set(ds) <= set(expected[f])
        ),
        None,
    )
    if differs is not None:
        import socket

        raise StaleModuleError(
            f"kernel {getattr(kernel, 'name', '?')!r}: a worker process (host {socket.gethostname()}, "
            f"pid {os.getpid()}) has {differs.replace(':', '.')} as its file was when it imported "
            "it, and it is not the code this run started with: the run stops here, before that "
            "worker computed anything; the blocks committed so far hold results of the run's "
            "code and are kept. Either the file was edited while the run went on (undo the "
            "edit and run the same command again, or go on with the edited code: "
            "kernel_changed='continue', --kernel-changed continue), or the worker belongs to a "
            "cluster you started, which imported the file before it was edited (client.restart() "
            "makes its workers import it again)"
        )


def check_kernel(kernel: Any) -> None:
    """Refuse a run whose kernel uses code of the user's that its files no longer hold
    (edited and not reloaded), or a module the import path now finds elsewhere."""
    functions, modules = _reached(kernel)
    names: dict[str, str] = {}  # the user's modules reached: name -> file
    for func in functions:
        file = func.__code__.co_filename
        if not users_source(func.__module__, file):
            continue  # installed, daskbatch's, or a notebook's or script's (it travels by value)
        names.setdefault(func.__module__, file)
        # only code Python's own loader compiled can be compiled again alike (pytest,
        # for one, rewrites the asserts of the test modules it imports)
        plain = isinstance(func.__globals__.get("__loader__"), importlib.machinery.SourceFileLoader)
        if plain and _differs_from_file(func):
            raise StaleModuleError(
                f"kernel {getattr(kernel, 'name', '?')!r}: {func.__module__}.{func.__qualname__} in "
                f"this process is not the code of {file} now (the module was edited since this "
                "process imported it, and not reloaded): worker processes would run the file as "
                f"it is now. Reload it ({_reload_hint(kernel, func.__module__)}; in a notebook, "
                "%autoreload 2 does it) or start Python again, then run again; nothing was "
                "started or written"
            )
    names.update(
        {m.__name__: m.__file__ for m in modules if users_source(m.__name__, getattr(m, "__file__", None))}
    )
    for name, file in names.items():
        module = sys.modules.get(name)
        changed = _value_changed(module, file) if module is not None and module.__file__ == file else None
        if changed is not None:
            const, here, there = changed
            raise StaleModuleError(
                f"kernel {getattr(kernel, 'name', '?')!r}: {name}.{const} is {here!r} in this process "
                f"but {file} now sets it to {there!r} (the file was edited since this process "
                "imported it and not reloaded, or the value was changed here): worker processes "
                "would use the file's. Reload the module "
                f"({_reload_hint(kernel, name)}; in a notebook, %autoreload 2 does it), or set the "
                "value in the file, or pass it as one of the run's constants=; nothing was started "
                "or written"
            )
    for name in names:
        elsewhere = _import_path_elsewhere(name)
        if elsewhere is not None:
            held, found = elsewhere
            raise StaleModuleError(
                f"kernel {getattr(kernel, 'name', '?')!r}: module {name.split('.')[0]!r} of this "
                f"process is {held}, but the import path now leads to {found} (another module of "
                "the same name, imported in this process for another project): worker processes "
                "would import that one. Run each project in a Python process of its own, or give "
                "the modules names of their own; nothing was started or written"
            )
