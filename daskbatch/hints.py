"""How a user continues a store, and what belongs to a store: texts and checks that
reports, refusals and a stage's upstream check share (no store is opened here)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["inside_store", "resume_hint"]


def resume_hint(info: Mapping[str, Any], store: str) -> str:
    """How a user continues this store: a command that works, or what to rerun."""
    identity = info.get("kernel", {}).get("identity", "")
    if identity.startswith("__main__:"):
        file = info.get("kernel_file")
        if info.get("kernel_origin") == "notebook" or not file or not os.path.isfile(file):
            return "run the notebook cell that called daskbatch.run again"
        if inside_store(file, store):  # never a command that runs a store's own file
            return "run the script that called daskbatch.run again"
        argv = list(info.get("argv") or [])
        if argv and os.path.realpath(argv[0]) == os.path.realpath(file):
            command = "python " + " ".join(shlex.quote(a) for a in argv)
        else:
            command = f"python {shlex.quote(file)}"
        cwd = info.get("cwd")
        return f"cd {shlex.quote(cwd)} && {command}" if cwd else command
    return f"daskbatch resume {shlex.quote(store)}"


def inside_store(path: str | os.PathLike[str], store: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is inside ``store`` (both resolved, symlinks followed): a file
    the store itself holds, which daskbatch never imports, runs or suggests running."""
    try:
        return Path(path).resolve().is_relative_to(Path(store).resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return True
