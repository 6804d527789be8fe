"""The ``daskbatch`` commands that read a store: ``status``, ``summary``, ``failures``,
``compare``, ``report`` and ``export`` (their parsers are in :mod:`daskbatch.cliparser`)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DaskbatchError


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (a statistic of no value) as None."""
    import numpy as np

    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(doc: Any) -> str:
    """``doc`` as strict JSON (``null`` for NaN and infinities, which JSON has not)."""
    return json.dumps(_finite(doc), indent=2, allow_nan=False, default=str)


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


def _only_reduced(store: str) -> list[str]:
    """The outputs a store's run only reduced (declared ``Output(store=False)``)."""
    from .store import Store

    with contextlib.suppress(Exception):
        outputs = Store(store).require_info()["kernel"]["outputs"]
        return [k for k, o in outputs.items() if isinstance(o, dict) and o.get("store") is False]
    return []


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
    from .results import kernel_changes

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
        print(_json(doc))
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
    for ch in kernel_changes(info.get("history", [])):  # the statistics mix two codes
        parts = ", ".join(ch.get("parts", [])[:3]) or "source"
        print(
            f"code:     changed at {ch.get('start') or '?'} ({parts}): samples computed before it "
            "used the old code, and these statistics mix both"
        )
    reduced = _only_reduced(args.store)
    if reduced:
        print(
            f"only reduced (Output(store=False)): {', '.join(reduced)}; their reductions: "
            f"daskbatch status {shlex.quote(args.store)}"
        )
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
        if 0 in v.shape:  # a ragged output empty in every sample
            print("  no values: every sample's is empty (or no sample is ok)")
            continue
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
    if args.csv is not None and df.attrs.get("note"):  # on stderr: the CSV on stdout stays CSV
        print(f"daskbatch: note: {df.attrs['note']}", file=sys.stderr)
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
        print(_json({"a": args.a, "b": args.b, **df.attrs, "outputs": rows}))
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
        print(_json(doc))
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
