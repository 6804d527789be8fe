"""Spec files: a sweep written as TOML, read into the arguments of :func:`daskbatch.run`.

The keys and their types are checked here; a mistake is one line naming the file,
the line and the key (see docs/spec-files.md).
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from .errors import DaskbatchError, SpecFileError

__all__ = ["import_kernel", "load_spec"]

_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "kernel": (str,),
    "store": (str,),
    "cluster": (str, dict),
    "workers": (int,),
    "chunk_size": (int, str, dict),
    "progress": (bool,),
    "constants": (dict,),
    "retries": (int,),
    "timeout": (int, float),
    "memory_limit": (int, str),
    "space": (dict,),
    "reduce": (str, list, dict),
    "reduce_dims": (str, list),
    "until": (dict,),
}

#: the statistics of ``[reduce]`` that take values: ``{quantiles = [0.1, 0.9]}``, and the
#: keys a table may have beside them: ``{exceedance = 150.0, above = false}``
_VALUED_STATS: dict[str, tuple[str, ...]] = {
    "quantiles": ("compression",),
    "histogram": (),
    "exceedance": ("above",),
}
#: the first field of each (``{quantiles = {q = [...], compression = 100}}``)
_FIRST_FIELD = {"quantiles": "q", "histogram": "bins", "exceedance": "threshold"}
_EXAMPLES = {
    "quantiles": "{quantiles = [0.1, 0.9], compression = 100}",
    "histogram": "{histogram = [0, 10, 20, 50]}",
    "exceedance": "{exceedance = 150.0, above = false}",
}
_FORMS = (
    "{quantiles = [0.1, 0.9]} (or with compression = 100 beside it), {histogram = [0, 1, 2]}, "
    "{exceedance = 150.0} (or with above = false beside it)"
)
#: names that are statistics of the Python API only, or asked with values in a spec
_SPEC_HINTS = {
    "median": "{quantiles = [0.5]}",
    "quantile": "{quantiles = [0.1, 0.5, 0.9]}",
    "quantiles": "{quantiles = [0.1, 0.5, 0.9]}",
    "histogram": "{histogram = [0, 10, 20, 50]}",
    "exceedance": "{exceedance = 150.0}",
}


def _aggregation(output: str) -> str:
    """Why ``aggregation`` is refused in a spec file, and what works."""
    return (
        "user-defined aggregations (daskbatch.Aggregation) are Python-only, since a spec file "
        f"cannot hold functions: use daskbatch.run(..., reduce={{{output!r}: daskbatch.Aggregation(...)}}) "
        f"in a script, or a statistic here: a name ('mean', 'std', 'sum', ...) or {_FORMS}"
    )


def _stat(value: Any, where: str, output: str | None = None) -> Any:
    """One statistic of ``reduce``: a name, or a table of a statistic with values
    (``{quantiles = [0.1, 0.9], compression = 100}``, ``{exceedance = 150.0, above = false}``,
    ``{exceedance = {threshold = 150.0, above = false}}``, ``{histogram = [0, 1, 2]}``)."""
    import dataclasses

    from .reductions import Exceedance, Histogram, Quantiles

    label = "reduce" if output is None else f"reduce.{output}"
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("aggregation", "aggregate"):
            raise SpecFileError(f"{where}: {label}: {_aggregation(output or '<output>')}")
        if low in _SPEC_HINTS:
            raise SpecFileError(
                f"{where}: {label}: unknown statistic {value!r}; in a spec file give "
                f"{_SPEC_HINTS[low]} (a table with its values)"
            )
        return value
    if isinstance(value, dict) and ("aggregation" in value or "Aggregation" in value):
        raise SpecFileError(f"{where}: {label}: {_aggregation(output or '<output>')}")
    named = [k for k in value if k in _VALUED_STATS] if isinstance(value, dict) else []
    if len(named) != 1:
        raise SpecFileError(
            f"{where}: {label}: {value!r} is not a statistic; use a name ('mean', 'std', "
            f"'sum', ...) or a table of one statistic with values: {_FORMS}"
        )
    (name,) = named
    make = {"quantiles": Quantiles, "histogram": Histogram, "exceedance": Exceedance}[name]
    fields = [f.name for f in dataclasses.fields(make)]
    arg = value[name]
    beside = {k: v for k, v in value.items() if k != name}
    allowed = _VALUED_STATS[name]
    unknown = sorted(set(beside) - set(allowed))
    if unknown:
        what = f"only {allowed[0]!r}" if allowed else "no other key"
        raise SpecFileError(
            f"{where}: {label}: unknown key {unknown[0]!r} beside {name}; {name} takes "
            f"{what} beside it, e.g. {_EXAMPLES[name]}"
        )
    if isinstance(arg, dict):
        if beside:
            raise SpecFileError(
                f"{where}: {label}: {name} is a table, so {sorted(beside)[0]!r} goes inside it, "
                f"e.g. {{{name} = {{{', '.join(f'{f} = ...' for f in fields)}}}}}"
            )
        bad = sorted(set(arg) - set(fields))
        if bad or _FIRST_FIELD[name] not in arg:
            raise SpecFileError(
                f"{where}: {label}: the {name} table takes the keys {fields} "
                f"({_FIRST_FIELD[name]!r} required), not {sorted(arg)}"
            )
        kwargs = dict(arg)
    else:
        kwargs = {_FIRST_FIELD[name]: arg, **beside}
    return make(**kwargs)


def _reduce(value: Any, path: Path, text: str) -> Any:
    """``reduce``: a statistic or a list of them for every output, or a ``[reduce]`` table
    of ``output = stat or [stats]`` (Python objects for :func:`daskbatch.run`)."""
    if isinstance(value, str):
        return _stat(value, _reduce_where(path, text))
    if isinstance(value, list):
        where = _reduce_where(path, text)
        try:
            return [_stat(v, where) for v in value]
        except SpecFileError:
            raise
        except (TypeError, ValueError, DaskbatchError) as e:
            raise SpecFileError(f"{where}: reduce: {_in_toml(str(e))}") from e
    out = {}
    for name, stats in value.items():
        where = _reduce_where(path, text, name)
        items = stats if isinstance(stats, list) else [stats]
        try:
            out[name] = [_stat(v, where, name) for v in items]
        except SpecFileError:
            raise
        except (TypeError, ValueError, DaskbatchError) as e:
            raise SpecFileError(f"{where}: reduce.{name}: {_in_toml(str(e))}") from e
    return out


def _reduce_where(path: Path, text: str, output: str | None = None) -> str:
    """The file and line of ``reduce`` (or of ``output``'s entry in its ``[reduce]`` table)."""
    start = _line_of(text, "reduce")
    table = start is not None and text.splitlines()[start - 1].lstrip().startswith("[")
    line = _line_of(text, f"reduce.{output}", start=start) if output and table else None
    line = line or start
    return f"{path}{f', line {line}' if line else ''}"


def _check_reductions(args: dict[str, Any], path: Path, text: str) -> None:
    """``reduce``, ``reduce_dims`` and ``[until]`` checked against the kernel's outputs
    and the space's dims now, so that a mistake names the file and the line; and every
    output declared ``Output(store=False)`` reduced."""
    from .designs import Design

    if "until" in args and not isinstance(args["space"], Design):
        raise SpecFileError(
            f"{_where(path, text, 'until')}: [until] needs a design whose n can grow (type = "
            "'montecarlo', 'latinhypercube' with strata = N given, 'sobol', 'halton', 'saltelli'); "
            f"this [space] is {type(args['space']).__name__}, of fixed size: remove [until] "
            "(reduce works without it)"
        )
    reductions = None
    if {"reduce", "reduce_dims", "until"} & set(args):
        reductions = _parse_reductions(args, path, text)
    reduced = set() if reductions is None else set(reductions.outputs)
    kernel = args["kernel"]
    for name, o in kernel.outputs.items():
        if not o.store and name not in reduced:
            what = f"output {name!r} of kernel {kernel.name!r} is declared Output(store=False)"
            if "reduce" in args:
                raise SpecFileError(
                    f"{_reduce_where(path, text)}: {what} (not stored) and reduce does not reduce it; "
                    f'add it, e.g. {name} = "mean" in [reduce] (or store it: Output() in the kernel)'
                )
            raise SpecFileError(
                f"{_where(path, text, 'kernel')}: {what} (not stored) and the spec has no reduce; add "
                f'a [reduce] table with {name} = "mean" (or reduce = "mean" for every output)'
            )


def _parse_reductions(args: dict[str, Any], path: Path, text: str) -> Any:
    """:func:`daskbatch.reductions.parse_reduce` of the spec's reductions, its errors
    naming the file and the line."""
    from .reductions import ReductionError, parse_reduce

    try:
        return parse_reduce(
            args.get("reduce"),
            args["kernel"].outputs,
            args["space"].batch_dims,
            dims=args.get("reduce_dims"),
            until=args.get("until"),
            dims_name="reduce_dims",
        )
    except ReductionError as e:
        msg = str(e)
        if msg.startswith("until"):
            where = _where(path, text, "until")
        elif msg.startswith("reduce_dims"):
            where = _where(path, text, "reduce_dims")
        else:
            named = re.search(r"output '([^']+)'|^reduce: '([^']+)' is not an output", msg)
            output = next((g for g in named.groups() if g), None) if named else None
            where = _reduce_where(path, text, output)
        raise SpecFileError(f"{where}: {_in_toml(msg)}") from e


#: the Python forms of the reductions' messages, and the spec file's (docs/spec-files.md)
_TOML_FORMS = (
    (r"Quantiles\(\[([^\]]*)\]\)", r"{quantiles = [\1]}"),
    (r"Quantiles\(q\)", "{quantiles = [...]}"),
    (r"Histogram\(np\.linspace\([^)]*\)\)", "{histogram = [0, 0.5, 1]}"),
    (r"Histogram\(bins\)", "{histogram = [edges]}"),
    (r"Exceedance\(threshold\)", "{exceedance = threshold}"),
    (r",? or Aggregation\(name, chunk, combine, finalize\)", ""),
)


def _in_toml(message: str) -> str:
    """A reductions' message as a spec file's user reads it: the fixes it offers in TOML
    (``{quantiles = [0.05, 0.5, 0.95]}``, not ``Quantiles([...])``)."""
    for python, toml in _TOML_FORMS:
        message = re.sub(python, toml, message)
    return message


def _until(value: dict[str, Any], path: Path, text: str, outputs: Any = ()) -> Any:
    """``[until]``: the fields of :class:`daskbatch.Converged` (``outputs``: the kernel's)."""
    import dataclasses

    from .reductions import Converged

    fields = [f.name for f in dataclasses.fields(Converged)]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SpecFileError(
            f"{_where(path, text, unknown[0])}: unknown key {unknown[0]!r} in [until]; the keys are {fields}"
        )
    if "output" not in value:
        names = sorted(outputs)
        raise SpecFileError(
            f'{_where(path, text, "until")}: [until] needs output = "<name>", the output whose '
            f'statistic is watched (e.g. output = "{names[0] if names else "response"}"); '
            f"the kernel's outputs are {names}"
        )
    try:
        return Converged(**value)
    except (TypeError, ValueError, DaskbatchError) as e:
        raise SpecFileError(f"{_where(path, text, 'until')}: [until] {e}") from e


def _line_of(text: str, key: str, start: int = 1) -> int | None:
    """Line number (1-based, from ``start`` on) where ``key`` is set or its table starts."""
    last = key.split(".")[-1]
    patterns = [rf"^\s*\[+\s*{re.escape(key)}\s*\]+", rf"^\s*{re.escape(last)}\s*="]
    lines = text.splitlines()
    for pat in patterns:
        for i in range(start, len(lines) + 1):
            if re.search(pat, lines[i - 1]):
                return i
    return None


def _where(path: Path, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"{path}{f', line {line}' if line else ''}"


def _cluster(value: Any, path: Path, text: str) -> Any:
    """``cluster``: a name or address as it is, or a ``[cluster]`` table (``kind`` and
    the fields of :class:`daskbatch.JobQueue`) as a JobQueue."""
    import dataclasses

    from .errors import ClusterError
    from .hpc import KINDS, JobQueue

    if isinstance(value, str):
        return value
    start = _line_of(text, "cluster")

    def where(key: str) -> str:
        line = _line_of(text, key, start=start) if start else None
        return f"{path}{f', line {line or start}' if line or start else ''}"

    fields = [f.name for f in dataclasses.fields(JobQueue) if f.name != "kind"]
    kind = value.get("kind")
    if not isinstance(kind, str):
        raise SpecFileError(
            f"{where('kind')}: the [cluster] table needs kind = one of {list(KINDS)} "
            f"(or 'local', 'auto', ..., a scheduler address), not {kind!r}"
        )
    unknown = sorted(set(value) - {"kind", *fields})
    if unknown:
        k = unknown[0]
        raise SpecFileError(
            f"{where(k)}: unknown key {k!r} in [cluster]; the keys are {['kind', *fields]} "
            "(other dask_jobqueue options go in [cluster.extra])"
        )
    options = {k: v for k, v in value.items() if k != "kind"}
    extra = options.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("log_directory"), str):
        # relative to the spec file's folder, as every path of a spec is (not the folder
        # daskbatch was started from: a submitted job's differs)
        logs = Path(extra["log_directory"]).expanduser()
        base = Path(os.path.abspath(path)).parent
        options["extra"] = {**extra, "log_directory": str(logs if logs.is_absolute() else base / logs)}
    if kind not in KINDS:
        if kind != "auto":
            from .executors import parse_cluster

            try:
                parse_cluster(kind)
            except ClusterError as e:
                raise SpecFileError(f"{where('kind')}: [cluster] {e}") from e
        if options:
            k = sorted(options)[0]
            raise SpecFileError(
                f"{where(k)}: cluster.{k} is an option of the batch systems {list(KINDS)}, "
                f"and kind = {kind!r}; remove it or use kind = 'slurm'"
            )
        return kind
    try:
        return JobQueue(kind, **options)
    except ClusterError as e:
        bad = re.search(r"extra=\{'(\w+)'|(\w+)(?:\['\w+'\])?=", str(e))
        key = (bad.group(1) or bad.group(2)) if bad else "kind"
        raise SpecFileError(f"{where(key)}: [cluster] {e}") from e


def import_kernel(ref: str, base_dir: Path | None = None, file_hint: str | None = None) -> Any:
    """Import ``module:function`` or ``path/to/file.py:function`` (see :mod:`daskbatch.provenance`)."""
    from .provenance import import_kernel as _import

    return _import(ref, base_dir, file_hint)


def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a TOML spec; returns the arguments of :func:`daskbatch.run`.

    Keys: ``kernel`` ('module:function'), ``store``, ``[space]``, and optionally
    ``cluster`` (a name, an address, or a ``[cluster]`` table: ``kind`` and the
    fields of :class:`daskbatch.JobQueue`, returned as one), ``workers``,
    ``chunk_size``, ``progress``, ``[constants]``, ``reduce`` (a statistic, or a
    ``[reduce]`` table of ``output = stat or [stats]``), ``reduce_dims`` and
    ``[until]`` (the fields of :class:`daskbatch.Converged`). Paths are relative to
    the spec file's folder.
    """
    from .space import space_from_spec

    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file():
        raise SpecFileError(
            f"{str(p)!r} is a store, not a spec file; `daskbatch resume {shlex.quote(str(p))}` "
            "continues it, `daskbatch status` shows it"
        )
    if p.is_dir():
        specs = sorted(q.name for q in p.glob("*.toml"))[:3]
        hint = f" (it holds {', '.join(specs)})" if specs else ""
        raise SpecFileError(f"spec file {str(p)!r} is a folder{hint}; give the path of a .toml spec file")
    if not p.is_file():
        raise SpecFileError(f"spec file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecFileError(f"{p}: not valid TOML: {e}") from e
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        k = unknown[0]
        raise SpecFileError(f"{_where(p, text, k)}: unknown key {k!r}; the keys are {sorted(_TOP_KEYS)}")
    for key in ("kernel", "store", "space"):
        if key not in doc:
            raise SpecFileError(f"{p}: missing key {key!r}")
    for key, value in doc.items():
        types = _TOP_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("table" if t is dict else t.__name__ for t in types)
            raise SpecFileError(
                f"{_where(p, text, key)}: {key} = {value!r} has the wrong type; expected {names}"
            )
    base = p.parent
    kernel = import_kernel(doc["kernel"], base)
    try:
        space = space_from_spec(doc["space"], base_dir=base)
    except DaskbatchError as e:
        table = str(e).split(":")[0]
        line = _line_of(text, table)
        bad = re.search(r"unknown key\(s\) \['([^']+)'", str(e))
        if bad and line:  # point at the offending key, not at its table
            line = _line_of(text, bad.group(1), start=line) or line
        raise SpecFileError(f"{p}{f', line {line}' if line else ''}: {e}") from e
    store = Path(doc["store"])
    args = {
        "kernel": kernel,
        "space": space,
        "store": store if store.is_absolute() else base / store,
        "cluster": _cluster(doc["cluster"], p, text) if "cluster" in doc else "auto",
        "n_workers": doc.get("workers"),
        "chunk_size": doc.get("chunk_size", "auto"),
        "progress": doc.get("progress", True),
        "constants": doc.get("constants"),
        "retries": doc.get("retries", 0),
        "timeout": doc.get("timeout"),
        "memory_limit": doc.get("memory_limit"),
        "spec_file": p,
        **({"reduce": _reduce(doc["reduce"], p, text)} if "reduce" in doc else {}),
        **({"reduce_dims": doc["reduce_dims"]} if "reduce_dims" in doc else {}),
        **({"until": _until(doc["until"], p, text, kernel.outputs)} if "until" in doc else {}),
    }
    _check_reductions(args, p, text)
    _check_options(args, p, text)
    return args


#: run()'s arguments whose checks name them as Python does, and their keys in a spec file
_OPTION_KEYS = {"n_workers": "workers", "chunk_size": "chunk_size", "retries": "retries",
                "timeout": "timeout", "memory_limit": "memory_limit", "cluster": "cluster"}  # fmt: skip


def _check_options(args: dict[str, Any], path: Path, text: str) -> None:
    """The checks run() makes of its plain options, at the spec file's line and in its
    words (``workers = 0``, not ``n_workers=0``; leave ``timeout`` out, not None)."""
    from .chunking import _check_int
    from .executors import parse_cluster
    from .options import check_plain_options, memory_limit_bytes

    a = args
    try:
        check_plain_options(
            a["chunk_size"], True, False, None, a["retries"], a["timeout"], False, False, "refuse", None
        )
        if isinstance(a["chunk_size"], int):
            _check_int("chunk_size", a["chunk_size"])
        memory_limit_bytes(a["memory_limit"])
        if isinstance(a["cluster"], str) and a["cluster"] not in ("auto", "serial"):  # serial: run warns
            parse_cluster(a["cluster"], a["n_workers"])
        elif a["n_workers"] is not None:
            parse_cluster("local", a["n_workers"])
    except DaskbatchError as e:
        text_of = str(e)
        name = next((k for k in _OPTION_KEYS if text_of.startswith(f"{k}=")), None)
        if name is None:
            raise
        key = _OPTION_KEYS[name]
        text_of = f"{key} = {text_of[len(name) + 1 :]}"
        for python, toml in (
            (", or None (no timeout)", " (leave it out: no timeout)"),
            ("None for", "leave it out for"),
        ):
            text_of = text_of.replace(python, toml)
        raise SpecFileError(f"{_where(path, text, key)}: {text_of}") from e
