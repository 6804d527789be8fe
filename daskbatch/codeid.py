"""What a kernel's code is: the identity a store keeps and a rerun compares.

:func:`kernel_code` gives the kernel's identity *with its code*. A store keeps it,
and a run on a store with results compares it (see :mod:`daskbatch.provenance`): a
kernel whose code changed is refused (naming what changed, as a short diff) unless
the user says ``overwrite=True`` or ``kernel_changed="continue"``.

What counts as the kernel's code
--------------------------------
Compared after parsing, so comments, blank lines, spacing and docstrings never count:

* the source of the kernel function (its decorator line included) and of its
  ``setup=`` function;
* the source of every function and class it uses by name that is *the user's own
  code* (defined in a file outside the Python installation and its installed
  packages), followed further through what those use; functions it reaches through a
  closure too;
* the values of the constants it uses by name from those modules: numbers, strings,
  bytes, ``None``, tuples / lists / dicts / sets of those, and numpy arrays (hashed
  by dtype, shape and bytes);
* the whole source of a user module it uses as a module (``helpers.forward(x)``);
* which function or class of an installed package or of Python a name of those
  modules is bound to (``op = np.sin``, ``DT = np.float32``, ``from math import sin as
  op``): its top-level package and name (``numpy:sin``), also inside such constants
  and in the state of the user's objects; the function inside ``np.vectorize``.

Not counted: installed packages' code (numpy, scipy, a compiled model's wheel — their
versions can change without refusing a resume), data files the kernel reads at run
time, and module-level objects of other types (their type name is recorded). A record
without ``version`` (written before the bindings above counted) is compared without
them, over the parts it has (:func:`same_code`).
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import inspect
import json
import os
import sys
import sysconfig
import textwrap
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from .parsing import getsource, parse

__all__ = ["changed_parts", "code_changes", "installed_file", "kernel_code", "same_code", "users_source"]

_MAX_PARTS = 200
_MAX_TEXT = 20_000
_MAX_CONSTANT_ITEMS = 10_000
#: what :func:`kernel_code` records: 2 counts the installed functions and classes the
#: user's code names (:meth:`_Walker.reference`)
CODE_VERSION = 2


# --------------------------------------------------------------------------- code identity


def _installed_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {os.path.join(p, "lib") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    try:
        import site

        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except Exception:  # pragma: no cover - a Python without site's helpers
        pass
    return tuple(sorted({os.path.realpath(r) for r in roots if r}))


_ROOTS = _installed_roots()


def installed_file(file: str) -> bool:
    """Whether ``file`` belongs to the Python installation or an installed package."""
    real = os.path.realpath(file)
    return "site-packages" in real or any(real == r or real.startswith(r + os.sep) for r in _ROOTS)


def users_source(name: str | None, file: Any) -> bool:
    """Whether module ``name`` (its ``file``) is Python source of the user's own that may
    change while a process lives: a ``.py`` file of no installed package, not daskbatch
    (its cores included: they come with it), not the main script or notebook."""
    if not name or name in ("__main__", "__mp_main__") or name.split(".")[0] == "daskbatch":
        return False
    return isinstance(file, str) and file.endswith(".py") and not installed_file(file)


def _is_user_module(name: str | None, file: str | None) -> bool:
    """Code the user wrote (or a core that ships with daskbatch), not an installed package."""
    if not name or name in sys.builtin_module_names:
        return False
    if name == "__main__":  # the user's script or notebook
        return True
    if name == "daskbatch" or name.startswith("daskbatch."):
        # daskbatch's own machinery is not the kernel's code; the cores it ships are
        return name.startswith(("daskbatch.models", "daskbatch.testing"))
    if not file:
        return False
    return not installed_file(file)


# a pure function of the text: in a process that lives on, each source is parsed once
@functools.lru_cache(maxsize=1024)
def _normalized(source: str) -> tuple[str, str] | None:
    """(sha256, text) of source code with comments, spacing and docstrings removed."""
    try:
        tree = parse(textwrap.dedent(source))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    dumped = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dumped.encode()).hexdigest(), ast.unparse(tree)


def _code_object_digest(code: types.CodeType) -> str:
    """A fallback when no source can be found: the compiled code, without line numbers."""
    h = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        h.update(repr(c.co_varnames).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            else:
                h.update(repr(const).encode())

    feed(code)
    return h.hexdigest()


def _names_used(code: types.CodeType) -> list[str]:
    names: list[str] = []
    stack = [code]
    while stack:
        c = stack.pop()
        names.extend(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return list(dict.fromkeys(names))


def _array_digest(value: np.ndarray) -> str | None:
    if value.dtype.hasobject or value.size > 10**8:
        return None
    h = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
    h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _module_file(name: str | None) -> str | None:
    return getattr(sys.modules.get(name or ""), "__file__", None)


def _user_callable(value: Any) -> bool:
    mod = getattr(value, "__module__", None)
    return _is_user_module(mod, _module_file(mod))


def class_functions(cls: type) -> list[types.FunctionType]:
    """The functions a class defines itself: methods, static and class methods, and
    properties' getters."""
    found = []
    for member in vars(cls).values():
        f = member.__func__ if isinstance(member, staticmethod | classmethod) else member
        if isinstance(f, property):
            f = f.fget
        if isinstance(f, types.FunctionType):
            found.append(f)
    return found


class _Walker:
    def __init__(self, sources: bool = True) -> None:
        #: whether to take each part's source (a record's); without, only what is reached
        self.sources = sources
        self.parts: dict[str, dict[str, Any]] = {}
        #: names bound to installed functions and classes (:meth:`reference`), added to
        #: ``parts`` after the walk: they never take the place of the code's own parts
        self.bindings: dict[str, dict[str, Any]] = {}
        self.seen: set[int] = set()
        #: what was followed: the user's functions, modules used as modules, and the
        #: submodules of such a package (which the code may or may not use)
        self.functions: list[types.FunctionType] = []
        self.modules: list[types.ModuleType] = []
        self.submodules: list[types.ModuleType] = []

    def add(self, label: str, part: dict[str, Any]) -> None:
        if len(self.parts) < _MAX_PARTS:
            self.parts[label] = part

    def source_part(self, obj: Any, kind: str) -> dict[str, Any]:
        if not self.sources:
            return {"kind": kind}
        try:
            src = getsource(obj)
        except (OSError, TypeError):
            src = None
        norm = _normalized(src) if src is not None else None
        if norm is None:
            code = getattr(obj, "__code__", None)
            if code is None:
                return {"kind": kind, "sha256": "", "text": "(source not available)"}
            return {"kind": kind, "sha256": _code_object_digest(code), "text": "(source not available)"}
        sha, text = norm
        return {"kind": kind, "sha256": sha, "text": text[:_MAX_TEXT]}

    def function(self, func: Any, label: str | None = None) -> None:
        func = inspect.unwrap(func)
        if id(func) in self.seen or not isinstance(func, types.FunctionType):
            return
        self.seen.add(id(func))
        self.functions.append(func)
        label = label or f"{func.__module__}:{func.__qualname__}"
        self.add(label, self.source_part(func, "function"))
        self.references(func.__code__, func.__globals__, func.__module__)
        user = _user_callable(func)
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self.value(f"{label}.<closure {name}>", value, from_user_module=True)
        # default values are evaluated once, when the function is defined: they are
        # not in its source (``def k(a, scale=SCALE)``)
        defaults = list(func.__defaults__ or ()) + list((func.__kwdefaults__ or {}).values())
        if defaults:
            self.value(f"{label}.<defaults>", tuple(defaults), from_user_module=user)

    def klass(self, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        self.add(f"{cls.__module__}:{cls.__qualname__}", self.source_part(cls, "class"))
        for f in class_functions(cls):
            self.seen.add(id(f))
            self.functions.append(f)
            self.references(f.__code__, f.__globals__, f.__module__)
        for base in cls.__mro__[1:]:  # what it inherits from the user's own classes
            if base is not object and _user_callable(base):
                self.klass(base)

    def module(self, mod: types.ModuleType, in_package: bool = False) -> None:
        if id(mod) in self.seen:
            return
        self.seen.add(id(mod))
        (self.submodules if in_package else self.modules).append(mod)
        try:
            src = getsource(mod) if self.sources else None
        except (OSError, TypeError):
            src = None
        norm = _normalized(src) if src is not None else None
        if norm is not None:
            self.add(
                f"{mod.__name__} (module)", {"kind": "module", "sha256": norm[0], "text": norm[1][:_MAX_TEXT]}
            )
        # a package: the submodules loaded from it (``mypkg.sub.g(a)`` reaches them
        # through attributes, which the names a function uses do not show)
        if hasattr(mod, "__path__"):
            prefix = mod.__name__ + "."
            for name in sorted(n for n in list(sys.modules) if n.startswith(prefix)):
                sub = sys.modules.get(name)
                if isinstance(sub, types.ModuleType) and _is_user_module(
                    name, getattr(sub, "__file__", None)
                ):
                    self.module(sub, in_package=True)

    def references(self, code: types.CodeType, namespace: Mapping[str, Any], module: str | None) -> None:
        user = _is_user_module(module, _module_file(module))
        for name in _names_used(code):
            if name not in namespace:
                continue  # an attribute name, a builtin, or a name bound at run time
            self.value(f"{module}:{name}", namespace[name], from_user_module=user)

    def value(self, label: str, value: Any, from_user_module: bool) -> None:
        from .kernel import Kernel

        if isinstance(value, Kernel):
            self.function(value.func)
            return
        wrapped = getattr(value, "__wrapped__", None)  # functools.lru_cache, wraps, ...
        if wrapped is not None and callable(value) and not isinstance(value, type):
            value = inspect.unwrap(value)
        if isinstance(value, types.FunctionType):
            if _user_callable(value):
                self.function(value)
            elif from_user_module:
                self.reference(label, value)
        elif isinstance(value, types.MethodType):
            self.value(label, value.__func__, from_user_module)
        elif isinstance(value, type):
            if _user_callable(value):
                self.klass(value)
            elif from_user_module:
                self.reference(label, value)
        elif isinstance(value, np.vectorize):  # the user's function inside
            self.value(label + ".pyfunc", value.pyfunc, from_user_module)
        elif isinstance(value, types.ModuleType):
            if _is_user_module(value.__name__, getattr(value, "__file__", None)):
                self.module(value)
        elif isinstance(value, functools.partial):
            self.value(label + ".func", value.func, from_user_module)
            self.constant(label + ".arguments", (value.args, value.keywords))
        elif from_user_module and _user_callable(type(value)):  # an instance of the user's class
            self.klass(type(value))
            if hasattr(value, "__dict__"):
                self.constant(label + ".state", dict(vars(value)))
        elif from_user_module and not callable(value):
            self.constant(label, value)
        elif from_user_module:  # a builtin function or a ufunc (op = np.sin)
            self.reference(label, value)

    def reference(self, label: str, value: Any) -> None:
        """A name of the user's code bound to a function or class of an installed package
        or of Python: which one it is counts (``op = np.sin`` → ``np.cos`` is a change),
        not its code."""
        name = _library_name(value)
        if name is not None and self.sources:
            self.bindings[label] = {"kind": "reference", "sha256": _sha(name), "text": name}

    def constant(self, label: str, value: Any) -> None:
        digest = self.digest(value)
        if not self.sources:  # only the functions it reaches count, which digest followed
            return
        if digest is None:
            self.add(label, {"kind": "object", "sha256": "", "text": f"<{type(value).__name__}>"})
            return
        text = repr(value)
        if len(text) > 200:
            text = text[:197] + "..."
        self.add(label, {"kind": "constant", "sha256": digest, "text": text})

    def digest(self, value: Any) -> str | None:
        """A digest of a plain value (functions of the user's inside it are followed and
        named), or None for objects whose value cannot be pinned down."""
        count = [0]

        def plain(v: Any) -> Any:
            count[0] += 1
            if count[0] > _MAX_CONSTANT_ITEMS:
                raise ValueError
            if v is None or isinstance(v, bool | int | float | complex | str | bytes):
                return [type(v).__name__, repr(v)]
            if isinstance(v, np.ndarray):
                if not self.sources:  # only what is reached counts: no need to hash it
                    return ["ndarray"]
                d = _array_digest(v)
                if d is None:
                    raise ValueError
                return ["ndarray", d]
            if isinstance(v, np.generic):
                return [v.dtype.str, repr(v)]
            if isinstance(v, list | tuple):
                return [type(v).__name__, [plain(x) for x in v]]
            if isinstance(v, set | frozenset):
                return [type(v).__name__, sorted(json.dumps(plain(x)) for x in v)]
            if isinstance(v, Mapping) and type(v) is dict:
                return ["dict", [[plain(k), plain(x)] for k, x in v.items()]]
            if (
                callable(v)
                and not isinstance(v, type)
                and (isinstance(inspect.unwrap(v), types.FunctionType) or isinstance(v, functools.partial))
            ):
                self.value("", v, True)  # a dispatch table of functions: follow them
                target = inspect.unwrap(v.func if isinstance(v, functools.partial) else v)
                return ["function", f"{target.__module__}:{target.__qualname__}"]
            if isinstance(v, type):
                if _user_callable(v):
                    self.klass(v)
                return ["class", f"{v.__module__}:{v.__qualname__}"]
            if callable(v) and (name := _library_name(v)) is not None:
                return ["reference", name]  # a builtin function or a ufunc
            raise ValueError

        try:
            walked = plain(value)
            return hashlib.sha256(json.dumps(walked).encode()).hexdigest() if self.sources else ""
        except (ValueError, TypeError, RecursionError):
            return None


def kernel_code(kernel: Any) -> dict[str, Any]:
    """The kernel's code as the store records it: a digest and the parts it covers.

    ``parts`` maps a label (``module:name``) to its kind, digest and normalised
    text (source without comments and docstrings, or a constant's repr), which is
    what a refusal shows as a diff. See the module docstring for what counts.
    """
    w = _walk(kernel)
    for label, part in w.bindings.items():
        if label not in w.parts:
            w.add(label, part)
    return {"sha256": _digest_of(w.parts), "parts": w.parts, "version": CODE_VERSION}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _library_name(value: Any) -> str | None:
    """``package:name`` of a function or class not of the user's code (``numpy:sin``); the
    top-level package only, so that a module moved inside a package does not count."""
    name = getattr(value, "__name__", None)
    module = getattr(value, "__module__", None) or type(value).__module__
    if not isinstance(name, str) or not isinstance(module, str):
        return None
    return f"{module.split('.')[0]}:{name}"


def _digest_of(parts: Mapping[str, Any]) -> str:
    return _sha(json.dumps({k: v["sha256"] for k, v in parts.items()}, sort_keys=True))


def same_code(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two :func:`kernel_code` records are the same code. A record of a release
    before references to installed functions counted (no ``version``) is compared over
    the parts it has, and without the values it could not pin down then."""
    if old.get("sha256") == new.get("sha256"):
        return True
    if old.get("version", 1) >= CODE_VERSION:
        return False
    # the parts the old record has, as it had them: what this release follows further
    # (references, a user's function inside np.vectorize or beside one in a dict) is new
    # to it; a value it could not pin down ("") still is not compared
    before, now = old.get("parts", {}), new.get("parts", {})
    if any(k not in now for k in before):
        return False
    then = {k: ({"sha256": ""} if v.get("sha256") == "" else now[k]) for k, v in before.items()}
    return old.get("sha256") == _digest_of(then)


def _walk(kernel: Any, sources: bool = True) -> _Walker:
    w = _Walker(sources)
    func = inspect.unwrap(kernel.func)
    if isinstance(func, types.FunctionType):
        w.function(func, label=f"{kernel.module}:{kernel.qualname}")
    elif isinstance(func, functools.partial):
        w.value(f"{kernel.module}:{kernel.qualname}", func, True)
    else:  # a callable object: its class, and its state
        w.klass(type(func))
        w.constant(f"{kernel.module}:{kernel.qualname}.state", dict(getattr(func, "__dict__", {})))
    if kernel.setup is not None:
        w.function(kernel.setup)
    return w


def kernel_objects(
    kernel: Any,
) -> tuple[list[types.FunctionType], list[types.ModuleType], list[types.ModuleType]]:
    """What :func:`kernel_code` follows: the functions, the modules used as modules,
    and the loaded submodules of such packages (found without reading any source: a
    worker's code check asks for them before each block)."""
    w = _walk(kernel, sources=False)
    return w.functions, w.modules, w.submodules


def changed_parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Labels of the parts that differ between two :func:`kernel_code` records."""
    a, b = old.get("parts", {}), new.get("parts", {})
    return sorted(
        k for k in set(a) | set(b) if (a.get(k) or {}).get("sha256") != (b.get(k) or {}).get("sha256")
    )


def code_changes(old: Mapping[str, Any], new: Mapping[str, Any], max_lines: int = 12) -> list[str]:
    """Lines that say how two :func:`kernel_code` records differ: a short diff per part."""
    old_parts, new_parts = old.get("parts", {}), new.get("parts", {})
    lines: list[str] = []
    for label in sorted(set(old_parts) | set(new_parts)):
        a, b = old_parts.get(label), new_parts.get(label)
        if a is not None and b is not None and a.get("sha256") == b.get("sha256"):
            continue
        if a is None:
            lines.append(f"  {label}: new ({b['kind']})")
            continue
        if b is None:
            lines.append(f"  {label}: no longer used")
            continue
        lines.append(f"  {label}:")
        diff = difflib.unified_diff(a.get("text", "").splitlines(), b.get("text", "").splitlines(), n=0)
        body = [d for d in diff if not d.startswith(("---", "+++", "@@"))]
        lines += [f"    {d}" for d in body[:max_lines]]
        if len(body) > max_lines:
            lines.append(f"    ... and {len(body) - max_lines} more changed lines")
    return lines


def modules_used(kernel: Any) -> list[str]:
    """The installed modules a kernel's function (and its ``setup=``) uses by name.

    A module it names (``np``), or the module a function or class it names comes from
    (``run_tem1d`` → ``pytem1d.core``), found in its globals and closure; the user's
    own modules and ``__main__`` are left out. Worker processes forked from a server
    that has imported these start without importing them again (see
    :func:`daskbatch.hygiene.start_forkserver`).
    """
    found: list[str] = []
    for func in (getattr(kernel, "func", None), getattr(kernel, "setup", None)):
        func = inspect.unwrap(func) if callable(func) else None
        code = getattr(func, "__code__", None)
        if code is None:
            continue
        values = [func.__globals__.get(n) for n in _names_used(code)]
        values += [c.cell_contents for c in func.__closure__ or () if _cell_set(c)]
        for value in values:
            is_module = isinstance(value, types.ModuleType)
            name = value.__name__ if is_module else getattr(value, "__module__", None)
            if not isinstance(name, str) or name in ("__main__", "__mp_main__", "builtins"):
                continue
            module = sys.modules.get(name)
            file = getattr(module, "__file__", None)
            if module is not None and file and installed_file(file):
                found.append(name)
    return list(dict.fromkeys(found))


def _cell_set(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True
