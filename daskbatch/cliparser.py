"""The ``daskbatch`` command's parser: one sub-command per builder, each calling its
command in :mod:`daskbatch.clirun` or :mod:`daskbatch.cliread`."""

from __future__ import annotations

import argparse

from .cliread import _cmd_compare, _cmd_export, _cmd_failures, _cmd_report, _cmd_status, _cmd_summary
from .clirun import _cmd_demo, _cmd_plan, _cmd_resume, _cmd_run, _cmd_submit, _cmd_validate


def _chunk_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a whole number") from None


def _rows_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0 (0 prints every row)")
    return value


def _cluster_opts(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """Where a command runs: --cluster, --workers, --no-progress, --verbose."""
    first = (
        "auto (default: local, or this process or fork when the work is less than starting a cluster), local"
        if default == "auto"
        else f"{default} (default), auto"
    )
    p.add_argument(
        "--cluster",
        help=f"{first}, fork, processes, threads, serial; slurm, pbs, sge or lsf (workers as batch jobs, "
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
    p.add_argument("--overwrite", action="store_true", help="plan as if an existing store were discarded")
    p.add_argument(
        "--kernel-changed",
        choices=["refuse", "continue"],
        default="refuse",
        help="the store holds results of other kernel code: refuse (default), or plan going on "
        "with the new code",
    )
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
        "--limit",
        type=_rows_limit,
        default=200,
        help="rows printed (default 200; 0 for all; --csv writes all)",
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


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``submit`` command."""
    p = sub.add_parser("submit", help="run a spec as a SLURM or PBS batch job (the driver), then log out")
    p.add_argument("spec", help="the TOML spec file")
    p.add_argument("--slurm", action="store_true", help="submit with sbatch (default: the spec's cluster)")
    p.add_argument("--pbs", action="store_true", help="submit with qsub (default: the spec's cluster)")
    p.add_argument(
        "--walltime", help="HH:MM:SS or D-HH:MM:SS for the driver job (default: walltime of [cluster])"
    )
    p.add_argument(
        "--chain", type=int, default=1, metavar="N", help="N jobs, each continuing after the one before"
    )
    p.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")
    p.add_argument(
        "--kernel-changed",
        choices=["refuse", "continue"],
        default="refuse",
        help="a store whose kernel code changed: refuse (default) or continue with the new code",
    )
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
