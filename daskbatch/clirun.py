"""The ``daskbatch`` commands that run a kernel: ``run``, ``resume``, ``plan``,
``validate``, ``demo`` and ``submit`` (their parsers are in :mod:`daskbatch.cliparser`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .specfile import load_spec


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
    kwargs.update({k: v for k, v in flags.items() if v is not None and v != ""})  # 0: checked by run
    return kwargs


def _cmd_run(args: argparse.Namespace) -> int:
    specs = list(args.spec) if isinstance(args.spec, list) else [args.spec]
    if len(specs) == 1:
        args.spec = specs[0]
        return _run_one(args)
    from .errors import DaskbatchError

    instead = {"store": "set store in each spec file instead", "test": "run each stage on its own"}
    for flag in ("store", "test"):
        if getattr(args, flag):
            raise DaskbatchError(
                f"--{flag} applies to one spec file; {len(specs)} were given (stages, run in order): "
                + instead[flag]
            )
    for k, spec in enumerate(specs, 1):  # each read when its turn comes: it may read the one before
        print(f"daskbatch: stage {k} of {len(specs)}: {spec}", flush=True)
        args.spec = spec
        code = _run_one(args)
        if code:  # a stage none of whose samples is ok leaves the next nothing to read
            return code
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
    return _no_sample_ok(result)


def _no_sample_ok(result: Any) -> int:
    """1, with one line, when a run's store has samples done and none of them ok (a model
    that fails every sample: a script or a job chain should know); else 0."""
    done = result.n_samples - result.samples["pending"]
    if done == 0 or result.samples["ok"] > 0:
        return 0
    where = shlex.quote(str(result.store))
    print(
        f"daskbatch: no sample succeeded ({done:,} done, none ok: each failed, timed out or crashed); "
        f"daskbatch failures {where} lists them with their messages",
        file=sys.stderr,
    )
    return 1


def _kernel_and_space_from_store(store: str) -> tuple[Any, Any, Any]:
    from .validation import load_run

    return load_run(store)


def _resume_cluster(cluster: Any, info: dict[str, Any]) -> Any:
    """The cluster a resume runs on: ``cluster`` (``--cluster``), else the one of the
    run that made the store (a Client cannot be had again: auto). A batch system's
    name (``slurm``, ``pbs``...) takes the ``[cluster]`` table of the store's spec file
    when it has one of that kind: its cores, memory, walltime and jobs."""
    if cluster is None:
        cluster = (info.get("options") or {}).get("cluster")
        if not isinstance(cluster, str) or cluster == "client":
            return "auto"
    from .hpc import KINDS

    spec_file = info.get("spec_file")
    if cluster not in KINDS or not spec_file or not os.path.isfile(spec_file):
        return cluster
    import tomllib

    from .specfile import _cluster

    text = Path(spec_file).read_text()
    try:
        table = tomllib.loads(text).get("cluster")
    except tomllib.TOMLDecodeError:
        return cluster  # the spec's own errors are for `daskbatch run`
    if isinstance(table, dict) and table.get("kind") == cluster:
        return _cluster(table, Path(spec_file), text)
    return cluster


def _cmd_resume(args: argparse.Namespace) -> int:
    from .constants import recorded_constants
    from .engine import run
    from .grow import undo_stopped_change
    from .store import Store

    if Path(args.store).is_file():  # a spec file, say: never a store
        from .errors import DaskbatchError

        hint = f"; `daskbatch run {shlex.quote(args.store)}` runs it" if args.store.endswith(".toml") else ""
        raise DaskbatchError(f"daskbatch resume takes a store (a folder); {args.store!r} is a file{hint}")
    undo_stopped_change(Store(args.store))  # before the provenance it resumes is read
    kernel, space, info = _kernel_and_space_from_store(args.store)
    options = info.get("options") or {}
    cluster = _resume_cluster(args.cluster, info)
    result = run(
        kernel,
        space,
        args.store,
        cluster=cluster,
        n_workers=args.workers
        if args.workers is not None or args.cluster or not isinstance(cluster, str)
        else options.get("workers"),
        progress=not args.no_progress,
        constants=recorded_constants(info) or None,
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
    return _no_sample_ok(result)


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
    kwargs["overwrite"] = args.overwrite or kwargs.get("overwrite", False)
    if args.kernel_changed != "refuse":
        kwargs["kernel_changed"] = args.kernel_changed
    print(plan(**kwargs))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validation import validate

    report = validate(
        args.store, args.n, rtol=args.rtol, atol=args.atol, seed=args.seed, raise_on_failure=False
    )
    print(report)
    return 0 if report.ok else 1


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
        kernel_changed=args.kernel_changed,
    )
    if sub.complete and not args.dry_run:
        print(
            f"daskbatch: store {str(sub.store)!r} holds every result {sub.spec.name} asks for: nothing "
            "submitted (raise n or add inputs in the spec to compute more)"
        )
        return 0
    print(sub.dry_run() if args.dry_run else report(sub, submit(sub)))
    return 0
