"""The ``daskbatch`` command: parse, call the API, print.

Exit codes: 0 success; 2 bad input (a one-line reason, no traceback); 130
interrupted (the store is resumable). A traceback means a bug in daskbatch.

The parser is in :mod:`daskbatch.cliparser` (importable from here as ``_parser``), the
commands that run a kernel in :mod:`daskbatch.clirun` and those that read a store in
:mod:`daskbatch.cliread`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .cliparser import _parser
from .clirun import _spec_with_flags, _test_store
from .errors import DaskbatchError
from .specfile import load_spec

__all__ = ["load_spec", "main"]


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
    if os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"):  # a batch job: daskbatch submit's?
        hint = f"the next job of its chain when one is queued (squeue, qstat; do not run both), else {hint}"
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
                args = _parser().parse_args(_test_flag_before_spec(sys.argv[1:] if argv is None else argv))
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


def _test_flag_before_spec(argv: Sequence[str]) -> list[str]:
    """``run --test sweep.toml``: ``--test`` with its default N, before the spec file (its
    optional N took the spec's name: ``invalid int value: 'sweep.toml'``)."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--test" and not out[i + 1].lstrip("-").isdigit() and not out[i + 1].startswith("-"):
            out[i] = "--test=100"
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
