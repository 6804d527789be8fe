"""The ``daskbatch`` command: parse, call the API, print.

Exit codes: 0 success; 2 bad input (a one-line reason, no traceback); 130
interrupted (the store is resumable). A traceback means a bug in daskbatch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import DaskbatchError
from .specfile import load_spec

__all__ = ["load_spec", "main"]


def _chunk_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a whole number") from None


def _test_store(store: Path) -> Path:
    name = store.name
    stem = name[: -len(".zarr")] if name.endswith(".zarr") else name
    return store.with_name(f"{stem}.test.zarr")


def _spec_with_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The spec file's run arguments, with the command-line flags that override them."""
    kwargs = load_spec(args.spec)
    flags = {
        "store": Path(args.store) if args.store else None,
        "cluster": args.cluster,
        "n_workers": args.workers,
        "chunk_size": args.chunk_size,
        "memory_limit": args.memory_limit,
    }
    kwargs.update({k: v for k, v in flags.items() if v})
    return kwargs


def _cmd_run(args: argparse.Namespace) -> int:
    specs = list(args.spec) if isinstance(args.spec, list) else [args.spec]
    if len(specs) == 1:
        args.spec = specs[0]
        return _run_one(args)
    from .errors import DaskbatchError

    for flag in ("store", "test"):
        if getattr(args, flag):
            raise DaskbatchError(
                f"--{flag} applies to one spec file; {len(specs)} were given (stages, run in order): "
                "set store in each spec file instead"
            )
    for k, spec in enumerate(specs, 1):  # each read when its turn comes: it may read the one before
        print(f"daskbatch: stage {k} of {len(specs)}: {spec}", flush=True)
        args.spec = spec
        _run_one(args)
    return 0


def _run_one(args: argparse.Namespace) -> int:
    from .engine import run

    kwargs = _spec_with_flags(args)
    if args.no_progress:
        kwargs["progress"] = False
    if args.retries is not None:
        kwargs["retries"] = args.retries
    if args.timeout is not None:
        kwargs["timeout"] = args.timeout
    kwargs["verify"] = args.verify
    kwargs["retry_failed"] = args.retry_failed
    kwargs["kernel_changed"] = args.kernel_changed
    if args.test:
        kwargs["space"] = kwargs["space"].head(args.test)
        kwargs["store"] = _test_store(Path(kwargs["store"]))
        kwargs["overwrite"] = True
        print(f"daskbatch: test run of the first {kwargs['space'].size:,} samples")
    else:
        kwargs["overwrite"] = args.overwrite
    result = run(**kwargs)
    print(result)
    return 0


def _kernel_and_space_from_store(store: str) -> tuple[Any, Any, Any]:
    from .validation import load_run

    return load_run(store)


def _resume_cluster(options: dict[str, Any]) -> str:
    """The cluster of the run that made the store; a Client cannot be had again: auto."""
    cluster = options.get("cluster")
    return cluster if isinstance(cluster, str) and cluster != "client" else "auto"


def _cmd_resume(args: argparse.Namespace) -> int:
    from .engine import run

    kernel, space, info = _kernel_and_space_from_store(args.store)
    options = info.get("options") or {}
    result = run(
        kernel,
        space,
        args.store,
        cluster=args.cluster or _resume_cluster(options),
        n_workers=args.workers if args.workers is not None or args.cluster else options.get("workers"),
        progress=not args.no_progress,
        constants=info.get("constants") or None,
        retries=args.retries if args.retries is not None else options.get("retries", 0),
        timeout=args.timeout if args.timeout is not None else options.get("timeout"),
        retry_failed=args.retry_failed,
        verify=args.verify,
        kernel_changed=args.kernel_changed,
        spec_file=info.get("spec_file"),
        overwrite=args.overwrite,
        **_stored_reductions(info),
    )
    print(result)
    return 0


def _stored_reductions(info: dict[str, Any]) -> dict[str, Any]:
    """What the store's run reduced and its stopping rule, as run()'s arguments."""
    out: dict[str, Any] = {}
    if info.get("reduce") is not None:
        from .reduced import reductions_of

        out["reduce"] = reductions_of(info)
    until = info.get("until")
    if isinstance(until, dict) and isinstance(until.get("rule"), dict):
        from .reductions import Converged

        out["until"] = Converged.from_spec(until["rule"])
    return out


def _cmd_plan(args: argparse.Namespace) -> int:
    from .engine import plan

    kwargs = _spec_with_flags(args)
    for key in ("progress", "retries", "spec_file"):  # not planning matters
        kwargs.pop(key, None)
    print(plan(**kwargs))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validation import validate

    report = validate(
        args.store, args.n, rtol=args.rtol, atol=args.atol, seed=args.seed, raise_on_failure=False
    )
    print(report)
    return 0 if report.ok else 1


def _reading(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A store that cannot be read (a damaged chunk): one line naming the way to find it."""
    from .errors import StoreError

    @functools.wraps(command)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (DaskbatchError, BrokenPipeError):  # a closed stdout: main() handles it
            raise
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            raise StoreError(
                f"reading store {args.store!r} failed ({type(e).__name__}: {e}); a file of it may be "
                f"damaged: daskbatch status {shlex.quote(args.store)} --verify lists damaged blocks "
                "and how to recompute them"
            ) from None

    return guarded


def _num(x: float) -> str:
    """Four significant digits; a number below a million in plain digits (10004, not 1e+04).

    >>> _num(10004.4), _num(0.000123456), _num(2.5e9), _num(float("nan"))
    ('10004', '0.0001235', '2.5e+09', '')
    """
    if x != x:
        return ""
    if 1000 <= abs(x) < 1e6:
        return f"{x:.0f}"
    return f"{x:.4g}"


@_reading
def _cmd_summary(args: argparse.Namespace) -> int:
    import numpy as np

    from .analysis import SUMMARY_QUANTILES, _open, _scalar_rows, status_counts, summarize

    ds, info = _open(args.store)
    summary = summarize(ds, quantiles=SUMMARY_QUANTILES)
    table = _scalar_rows(ds, info, summary)
    counts = status_counts(summary)
    total = sum(counts.values())
    outputs = [k for k in summary.data_vars if k not in {f"n_{c}" for c in counts}]
    done = total - counts["pending"]
    not_ok = done - counts["ok"]
    rate = counts["ok"] / done if done else 0.0
    if args.json:
        doc = {
            "store": args.store,
            "samples": counts,
            "success_rate": rate if done else None,
            "outputs": {
                k: {str(s): summary[k].sel(stat=s).values.tolist() for s in summary.stat.values}
                for k in outputs
            },
            "scalars": {
                k: {c: (None if isinstance(v, float) and v != v else v) for c, v in row.items()}
                for k, row in table.to_dict(orient="index").items()
            },
        }
        for k in outputs:
            if "units" in summary[k].attrs:
                doc["outputs"][k]["units"] = str(summary[k].attrs["units"])
        print(json.dumps(doc, indent=2))
        return 0
    print(f"store:    {args.store}")
    print(
        f"samples:  {total:,} ({counts['ok']:,} ok, {counts['failed']:,} failed, "
        f"{counts['timeout']:,} timed out, {counts['crashed']:,} crashed, {counts['pending']:,} pending)"
    )
    line = f"success rate {rate:.2%} of those run ({counts['ok']:,} ok of {done:,})"
    if not_ok:
        line += f"; the {not_ok:,} not ok with their inputs: daskbatch failures {shlex.quote(args.store)}"
    print(line)
    if len(table):
        header = ["output", "units", "count", "mean ± sd", "min", "p10", "p50", "p90", "max", "outliers"]
        rows = [header]
        for k, r in table.iterrows():
            rows.append(
                [
                    str(k),
                    r["units"],
                    f"{int(r['count']):,}",
                    f"{_num(r['mean'])} ± {_num(r['sd'])}" if r["count"] else "",
                    *(_num(r[c]) for c in ("min", "p10", "p50", "p90", "max")),
                    f"{int(r['outliers']):,} ({r['outliers %']:.1f}%)",
                ]
            )
        widths = [max(len(row[j]) for row in rows) for j in range(len(header))]
        print()
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
            print("  ".join(cells).rstrip())
    for k in outputs:
        v = summary[k]
        if k in table.index:
            continue
        # a curve: the range of its median and band over the core dims
        core = ", ".join(f"{d} ({v.sizes[d]})" for d in v.dims if d != "stat")
        units = f" [{v.attrs['units']}]" if "units" in v.attrs else ""
        print(f"\n{k}{units} over {core}:")
        for s in ("p10", "p50", "p90"):
            band = v.sel(stat=s).values
            if np.isfinite(band).any():
                print(f"  {s:22s}from {np.nanmin(band):.4g} to {np.nanmax(band):.4g}")
            else:
                print(f"  {s:22s}no ok sample")
    if len(table):
        print(
            "\nsd: sample standard deviation (ddof=1); outliers: ok samples outside "
            "p25 - 1.5 IQR .. p75 + 1.5 IQR (daskbatch.outliers lists them)"
        )
    return 0


@_reading
def _cmd_failures(args: argparse.Namespace) -> int:
    import shutil

    from .failures import failures, format_table

    df = failures(args.store, status=args.status)
    if args.csv == "-":
        df.to_csv(sys.stdout, index=False)
        return 0
    if args.csv is not None:
        target = Path(args.csv)
        if not target.parent.is_dir():
            raise DaskbatchError(f"--csv {args.csv!r}: the folder {str(target.parent)!r} does not exist")
        df.to_csv(target, index=False)
        print(f"wrote {len(df):,} failure(s) of {df.attrs['n_samples']:,} samples to {args.csv}")
        return 0
    width = shutil.get_terminal_size((120, 24)).columns
    print(format_table(df, width=max(60, width), limit=args.limit or None))
    return 0


def _pct(x: float) -> str:
    return "" if x != x else f"{x:+.2f}%"


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analysis import compare

    try:
        df = compare(args.a, args.b, rtol=args.rtol, atol=args.atol)
    except (DaskbatchError, BrokenPipeError):
        raise
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise DaskbatchError(
            f"reading store {args.a!r} or {args.b!r} failed ({type(e).__name__}: {e}); a file of it may "
            "be damaged: daskbatch status STORE --verify lists damaged blocks"
        ) from None
    if args.json:
        rows = {
            k: {c: (None if isinstance(v, float) and v != v else v) for c, v in row.items()}
            for k, row in df.to_dict(orient="index").items()
        }
        print(json.dumps({"a": args.a, "b": args.b, **df.attrs, "outputs": rows}, indent=2, default=str))
        return 0
    same = df.attrs["same_parameters"]
    print(f"a: {args.a}\nb: {args.b}")
    print(
        "parameters: the same in both: samples compared one by one "
        f"(differing beyond atol {args.atol:g} + rtol {args.rtol:g} * |b|)"
        if same
        else "parameters: not the same: the distributions are compared (Kolmogorov-Smirnov)"
    )
    header = ["output", "mean a", "mean b", "change", "p50 a", "p50 b", "change", "KS p-value"]
    header += ["differing"] if same else []
    rows = [header]
    for k, r in df.iterrows():
        row = [str(k), _num(r["mean a"]), _num(r["mean b"]), _pct(r["mean change %"])]
        row += [_num(r["p50 a"]), _num(r["p50 b"]), _pct(r["p50 change %"]), _num(r["ks p-value"])]
        if same:
            row.append(f"{int(r['samples differing']):,}")
        rows.append(row)
    widths = [max(len(row[j]) for row in rows) for j in range(len(header))]
    print()
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
    print("\nchange: 100 (b - a) / |a|; KS p-value: a small value says the distributions differ")
    return 0


@_reading
def _cmd_report(args: argparse.Namespace) -> int:
    from .reports import report

    print(f"wrote {report(args.store, args.output)}")
    return 0


@_reading
def _cmd_export(args: argparse.Namespace) -> int:
    from .analysis import export

    rows = export(args.store, args.output, args.format, curves=args.curves)
    print(f"wrote {rows:,} rows to {args.output}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .engine import status

    report = None
    if args.verify:  # first: a store whose metadata is damaged may not even count its blocks
        from .repair import check

        report = check(args.store, full=True)
    try:
        st = status(args.store)
    except DaskbatchError:
        if report is None or not report.metadata:
            raise
        st = None
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        if report is None or not report.metadata:
            raise DaskbatchError(
                f"reading store {args.store!r} failed ({type(e).__name__}: {e}); a file of it may be "
                f"damaged: daskbatch status {shlex.quote(args.store)} --verify names it"
            ) from None
        st = None
        print(f"store:    {args.store} (its status cannot be read: {type(e).__name__}: {e})")
    if args.json:
        doc: dict[str, Any] = {"store": args.store}
        if st is not None:
            doc.update(
                {
                    "samples": st.samples,
                    "n_samples": st.n_samples,
                    "blocks_done": st.blocks_done,
                    "blocks_total": st.blocks_total,
                    "complete": st.complete,
                    "errors": st.errors,
                    "last_run": st.last_run,
                    "running": st.running,
                    "resume": st.resume_hint,
                    "kernel_changes": st.kernel_changes,
                }
            )
            from .reduced import status_doc
            from .store import Store

            with contextlib.suppress(Exception):  # reductions and the until= estimate, if any
                store = Store(args.store)
                doc.update(status_doc(store, store.require_info()))
        if report is not None:
            doc["damaged"] = [{"block": list(d.block), "problem": d.problem} for d in report.blocks]
            doc["metadata"] = [
                {"file": p.file, "problem": p.problem, "repair": p.fix} for p in report.metadata
            ]
            doc["repair"] = _repair_command(args.store, st) if not report.ok else None
        print(json.dumps(doc, indent=2))
    else:
        if st is not None:
            print(st)
        if report is not None:
            _print_verify(report, args.store, st)
    return 1 if report is not None and not report.ok else 0


def _repair_command(store: str, st: Any) -> str:
    """The command that repairs a store (``resume --verify``, or the script's own run)."""
    hint = st.resume_hint if st is not None else f"daskbatch resume {shlex.quote(store)}"
    if hint.startswith("daskbatch resume "):
        return f"{hint} --verify"
    return f"call daskbatch.run(..., verify=True) again ({hint})"


def _print_verify(report: Any, store: str, st: Any) -> None:
    """What ``status --verify`` found: metadata problems apart from damaged blocks."""
    if report.gone is not None:  # nothing else could be checked
        print(
            f"cannot repair: the store's provenance is gone ({report.gone}); restore zarr.json "
            "from a copy of the store, or start again with --overwrite"
        )
        return
    if report.metadata:
        print(f"verify:   {len(report.metadata)} metadata problem(s) (committed results are kept):")
        for p in report.metadata:
            print(f"  {p}")
    if report.blocks:
        print(f"verify:   {len(report.blocks)} damaged block(s) (their data is wrong; recomputed):")
        for d in report.blocks:
            print(f"  {d}")
    elif report.metadata and not report.decoded:
        print(
            f"verify:   {report.checked:,} committed block(s) checked against their checksums only; "
            "they are decoded once the metadata is repaired"
        )
    else:
        print(f"verify:   every committed block matches its checksums ({report.checked:,} checked)")
    if report.fatal:
        print(
            "cannot repair: " + ", ".join(p.file for p in report.fatal) + " cannot be rebuilt; "
            "restore it from a copy of the store, or start again with --overwrite"
        )
    elif report.metadata:
        print(f"repair with: {_repair_command(store, st)}")
    elif report.blocks:
        print(f"recompute them with: {_repair_command(store, st)}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import LogNormal, MonteCarlo, Normal, run
    from .models.dcsounding import schlumberger

    space = MonteCarlo(
        {
            "resistivity": LogNormal(2.0, 0.5, base=10, size=3, dim="layer"),
            "thickness": Normal([10.0, 30.0], [3.0, 8.0], dim="interface"),
        },
        n=args.n,
        seed=42,
    )
    print(
        f"daskbatch demo: Schlumberger DC soundings of {args.n:,} random three-layer earths\n"
        f"  kernel: daskbatch.models.dcsounding:schlumberger (numpy, per sample)\n"
        f"  space:  {space}\n"
        f"  store:  {Path(args.store).absolute()}"
    )
    result = run(
        schlumberger,
        space,
        args.store,
        cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.no_progress,
    )
    print(result)
    from .engine import open as open_store

    ds = open_store(args.store)
    ok = ds.rhoa.where(ds.status == 1)
    q = ok.quantile([0.1, 0.5, 0.9], dim="sample", skipna=True).compute()
    picks = [0, 10, 20, 30]
    print("\napparent resistivity (ohm m), p10 / median / p90 over the ok samples:")
    for i in picks:
        vals = q.isel(ab2=i).values
        print(f"  AB/2 = {float(ds.ab2[i]):7.1f} m: {vals[0]:8.1f} / {vals[1]:8.1f} / {vals[2]:8.1f}")
    print(
        "\nopen the results with:\n"
        f"  import daskbatch; ds = daskbatch.open({str(args.store)!r})\n"
        f"status from another shell: daskbatch status {shlex.quote(str(args.store))}"
    )
    return 0


def _cluster_opts(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """Where a command runs: --cluster, --workers, --no-progress, --verbose."""
    first = (
        "auto (default: local, or this process when the work is less than starting a cluster), local"
        if default == "auto"
        else f"{default} (default), auto"
    )
    p.add_argument(
        "--cluster",
        help=f"{first}, processes, threads, serial; slurm, pbs, sge or lsf (workers as batch jobs, "
        "with the spec's [cluster] table or dask-jobqueue's config); or a scheduler address",
    )
    p.add_argument("--workers", type=int, help="number of workers (default: the cores available)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.add_argument(
        "--verbose", action="store_true", help="show distributed's log (worker deaths, restarts, ...)"
    )


def _fault_opts(p: argparse.ArgumentParser) -> None:
    """How failing and slow samples are handled: --retries, --timeout."""
    p.add_argument("--retries", type=int, help="retry a failing sample this many times (default 0)")
    p.add_argument("--timeout", type=float, help="seconds a sample may run (a block, for vectorised kernels)")


def _rerun_opts(p: argparse.ArgumentParser) -> None:
    """What a run into an existing store recomputes: --retry-failed, --verify, --kernel-changed."""
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also recompute the samples that failed, timed out or crashed",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every chunk's checksum first; recompute damaged blocks",
    )
    p.add_argument(
        "--kernel-changed",
        choices=["refuse", "continue"],
        default="refuse",
        help="the store holds results of other kernel code: refuse (default), or continue "
        "with the new code (recorded in the store's history)",
    )


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``run`` command."""
    p = sub.add_parser("run", help="run a sweep described by a TOML spec file")
    p.add_argument(
        "spec",
        nargs="+",
        help="the TOML spec file; several: stages run in order, each reading the stores before "
        "it (a space of type 'fromstore')",
    )
    p.add_argument("--store", help="store path (overrides the spec)")
    p.add_argument("--chunk-size", type=_chunk_size, help="samples per block, or 'auto'")
    p.add_argument(
        "--test",
        type=int,
        nargs="?",
        const=100,
        metavar="N",
        help="run only the first N samples (default 100) into STORE.test.zarr",
    )
    p.add_argument("--overwrite", action="store_true", help="discard an existing store first")
    p.add_argument("--memory-limit", help="memory per worker, e.g. 4GiB (default: the machine's, shared)")
    _cluster_opts(p)
    _fault_opts(p)
    _rerun_opts(p)
    p.set_defaults(func=_cmd_run)


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``plan`` command."""
    p = sub.add_parser("plan", help="show what `run` would do: blocks, memory, time, cluster")
    p.add_argument("spec", help="the TOML spec file")
    p.add_argument("--store", help="store path (overrides the spec)")
    p.add_argument("--chunk-size", type=_chunk_size, help="samples per block, or 'auto'")
    p.add_argument("--memory-limit", help="memory per worker, e.g. 4GiB")
    _cluster_opts(p)
    p.set_defaults(func=_cmd_plan)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``status`` command."""
    p = sub.add_parser("status", help="show samples and blocks done, failed and pending")
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every committed chunk and check it against its checksum (exit 1 if damaged)",
    )
    p.set_defaults(func=_cmd_status)


def _add_resume(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``resume`` command."""
    p = sub.add_parser("resume", help="continue a stopped run; the kernel is re-imported")
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument(
        "--overwrite", action="store_true", help="discard the results and start the same run again"
    )
    _cluster_opts(p)
    _fault_opts(p)
    _rerun_opts(p)
    p.set_defaults(func=_cmd_resume)


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``validate`` command."""
    p = sub.add_parser(
        "validate", help="recompute random samples one by one here and compare them with the store"
    )
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument("--n", type=int, default=100, help="samples to recompute (default 100)")
    p.add_argument("--rtol", type=float, default=1e-10, help="relative tolerance (default 1e-10)")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    p.add_argument("--seed", type=int, default=0, help="which random samples (default 0)")
    p.set_defaults(func=_cmd_validate)


def _add_results(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that read a store's results: ``summary``, ``export``, ``failures``,
    ``report`` and ``compare``."""
    p = sub.add_parser("summary", help="totals, success rate and statistics of every output")
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("export", help="parameters, status and outputs, one row per sample, to CSV or Parquet")
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument("-o", "--output", required=True, help="file to write (.csv or .parquet)")
    p.add_argument("--format", choices=["csv", "parquet"], help="default: from the file's suffix")
    p.add_argument(
        "--curves",
        choices=["none", "wide", "long"],
        default="none",
        help="outputs with core dims: left out (default), a column per index, or a row per index",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "failures", help="every sample that failed, timed out or crashed, with its inputs and message"
    )
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument(
        "--csv",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write every failure (with its parameters and traceback) as CSV to PATH, or to "
        "standard output without PATH",
    )
    p.add_argument(
        "--status",
        action="append",
        choices=["failed", "timeout", "crashed"],
        help="only samples with this status (may be given more than once; default: all three)",
    )
    p.add_argument(
        "--limit", type=int, default=200, help="rows printed (default 200; 0 for all; --csv writes all)"
    )
    p.set_defaults(func=_cmd_failures)

    p = sub.add_parser("report", help="a self-contained HTML report with plots")
    p.add_argument("store", help="the store (a folder written by daskbatch run)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "compare", help="two runs with the same outputs: change of the mean and median, KS test, samples"
    )
    p.add_argument("a", help="the first store")
    p.add_argument("b", help="the second store")
    p.add_argument("--rtol", type=float, default=1e-10, help="relative tolerance (default 1e-10)")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_compare)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``demo`` command."""
    p = sub.add_parser("demo", help="a real sweep of the built-in DC sounding model")
    p.add_argument("--n", type=int, default=100_000, help="number of samples (default 100000)")
    p.add_argument("--store", default="daskbatch-demo.zarr", help="store path")
    _cluster_opts(p, default="local")
    p.set_defaults(func=_cmd_demo, cluster="local")


def _cmd_submit(args: argparse.Namespace) -> int:
    from .errors import ClusterError
    from .submit import prepare, report, submit

    if args.slurm and args.pbs:
        raise ClusterError("--slurm and --pbs both given; the driver job goes to one of them")
    sub = prepare(
        args.spec,
        scheduler="slurm" if args.slurm else "pbs" if args.pbs else None,
        walltime=args.walltime,
        chain=args.chain,
        allow_local_store=args.allow_local_store,
    )
    print(sub.dry_run() if args.dry_run else report(sub, submit(sub)))
    return 0


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``submit`` command."""
    p = sub.add_parser("submit", help="run a spec as a SLURM or PBS batch job (the driver), then log out")
    p.add_argument("spec", help="the TOML spec file")
    p.add_argument("--slurm", action="store_true", help="submit with sbatch (default: the spec's cluster)")
    p.add_argument("--pbs", action="store_true", help="submit with qsub (default: the spec's cluster)")
    p.add_argument("--walltime", help="HH:MM:SS for the driver job (default: walltime of [cluster])")
    p.add_argument(
        "--chain", type=int, default=1, metavar="N", help="N jobs, each continuing after the one before"
    )
    p.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")
    p.add_argument(
        "--allow-local-store",
        action="store_true",
        help="allow a store on node-local storage (/tmp, ...): for a one-node test only",
    )
    p.set_defaults(func=_cmd_submit)


def _parser() -> argparse.ArgumentParser:
    """The ``daskbatch`` command's parser: one sub-command per builder above, in this order."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="daskbatch",
        description="Run a numerical core over many parameter sets with Dask, into a Zarr store.",
    )
    parser.add_argument("--version", action="version", version=f"daskbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_plan, _add_status, _add_resume, _add_validate, _add_results, _add_demo):
        add(sub)
    _add_submit(sub)
    return parser


def _store_of(args: argparse.Namespace | None) -> str | None:
    """The store a command writes (run, resume, demo), or None."""
    command = getattr(args, "command", None)
    if command in ("resume", "demo"):
        return str(args.store)
    if command != "run":
        return None
    try:  # the spec was read once already: its kernel's module is imported
        store = Path(_spec_with_flags(args)["store"])
    except Exception:
        return None
    return str(_test_store(store) if args.test else store)


def _how_far(store: str) -> str:
    """How far a stopped run got: 37 of 120 blocks done and how to continue, or nothing."""
    from .engine import status

    try:
        st = status(store)
    except Exception:  # no store yet (stopped before it was created), or not readable
        return "nothing was written"
    if st.complete:
        return f"all {st.blocks_total:,} blocks done (the store is complete)"
    hint = getattr(st, "resume_hint", "") or f"daskbatch resume {shlex.quote(store)}"
    return f"{st.blocks_done:,} of {st.blocks_total:,} blocks done. Continue with: {hint}"


def _interrupted(args: argparse.Namespace | None, exc: KeyboardInterrupt) -> int:
    """Say in one line how far the command got; the exit code is 128 + the signal."""
    signum = getattr(exc, "signum", signal.SIGINT)
    text = "daskbatch: interrupted"
    if signum != signal.SIGINT:
        text += f" by {signal.Signals(signum).name}"
    store = _store_of(args)
    if store is not None:
        text += f"; {_how_far(store)}"
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)
    return 128 + signum


def _stdout_closed() -> int:
    """The reader of standard output went away (``daskbatch status STORE | head -1``).

    Stop quietly, as a program that SIGPIPE ends would (exit 141); standard output
    is pointed at /dev/null so that Python's last flush of it does not fail again.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskbatch`` command; returns its exit code.

    SIGINT (Ctrl-C) and SIGTERM stop a command in order: a run records why it
    stopped in the store's history and shuts its cluster down, then one line says
    how far it got and how to continue; exit 130 and 143. Signals that come while it
    stops are ignored. A standard output closed early (``| head``) ends the command
    quietly, exit 141.
    """
    import warnings

    import dask

    from .cluster import signals_stop

    # statistics over samples with no value (NaN, empty groups) are NaN by design: numpy's
    # warning about them, raised in dask's worker threads, is not for the user
    warnings.filterwarnings(
        "ignore", message="(invalid value|divide by zero|Mean of empty)", category=RuntimeWarning
    )

    args = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(signals_stop(signal.SIGINT, signal.SIGTERM, keep=True))
        # the command says how far an interrupted run got (run() says it in Python)
        stack.enter_context(dask.config.set({"daskbatch.cli": True}))
        try:
            try:
                args = _parser().parse_args(argv)
                if getattr(args, "verbose", False):  # distributed's logs reach the terminal
                    stack.enter_context(dask.config.set({"daskbatch.verbose": True}))
                code = int(args.func(args) or 0)
            except DaskbatchError as e:
                print(f"daskbatch: error: {e}", file=sys.stderr)
                code = 2
            sys.stdout.flush()  # a closed pipe shows here, not at exit
        except KeyboardInterrupt as e:  # daskbatch.errors.Stopped, from signals_stop
            code = _interrupted(args, e)
        except BrokenPipeError:
            code = _stdout_closed()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
