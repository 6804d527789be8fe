"""What a run and a store report: :class:`StoreStatus` and :class:`RunResult`.

Both are computed from the store's block ledger (committed blocks and their counts)
and its info (history, kernel, how to resume), never from what a run remembers, so
``daskbatch status`` in another shell and the value :func:`daskbatch.run` returns
agree.
"""

from __future__ import annotations

import html
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import config
from .hints import resume_hint
from .kernel import STATUS
from .progress import format_eta
from .store import Store

__all__ = ["RunResult", "StoreStatus", "resume_hint", "store_status"]


def _shown_errors() -> int:
    """How many errors a status shows (``daskbatch.shown-errors`` in dask's config)."""
    return int(config.get("shown-errors"))


def _counts_dict(counts: np.ndarray) -> dict[str, int]:
    return {name: int(counts[code]) for name, code in STATUS.items()}


@dataclass
class StoreStatus:
    """Totals of a store: samples and blocks done, failed and pending.

    ``samples["pending"]`` counts the samples of blocks without a commit marker.
    """

    store: str
    samples: dict[str, int]
    n_samples: int
    blocks_done: int
    blocks_total: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] | None = None
    kernel: str = ""
    running: dict[str, Any] | None = None  # who holds the store's lock now (host, pid, start)
    #: how to continue: a command to run, or what to rerun (a notebook cell, a script)
    resume_hint: str = ""
    #: runs that went on with changed kernel code (``kernel_changed="continue"``)
    kernel_changes: list[dict[str, Any]] = field(default_factory=list)
    #: the batch jobs that ran it (``daskbatch submit``): job id, state, blocks computed
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reductions(self) -> Any:
        """The store's reductions (``run(..., reduce=...)``) merged from its committed
        blocks, as an :class:`xarray.Dataset` labelled like the outputs (None when it
        reduces nothing)."""
        from .reduced import reductions_dataset

        st = Store(self.store)
        return reductions_dataset(st, st.require_info())

    @property
    def complete(self) -> bool:
        return self.blocks_done == self.blocks_total

    @property
    def n_failed(self) -> int:
        return self.n_samples - self.samples["ok"] - self.samples["pending"]

    def _state(self) -> str:
        if self.running:
            h = self.running
            age = h.get("heartbeat_age")
            beat = f", heartbeat {age:.0f} s ago" if isinstance(age, int | float) else ""
            if h.get("stale"):  # another host's lock whose lease ran out
                return (
                    f"looks stopped: the run on host {h.get('host')} (pid {h.get('pid')}, since "
                    f"{h.get('start')}{beat}) has not renewed its lock within its lease of "
                    f"{h.get('lease_seconds') or 0:g} s; the next run takes the lock over; "
                    f"{self._resume_text()}"
                )
            text = f"running now (host {h.get('host')}, pid {h.get('pid')}, since {h.get('start')}{beat})"
            prog = h.get("progress") or {}
            if prog.get("rate"):
                text += (
                    f"; {prog['rate']:,.0f} samples/s, ETA {format_eta(prog.get('eta_seconds'))} "
                    f"(as of {prog.get('updated', '?')})"
                )
            return text
        if self.complete:
            return "complete"
        run = self.last_run or {}
        if run.get("state") == "running":
            return f"stopped without finishing (killed?); {self._resume_text()}"
        if run.get("state") == "stopped" and run.get("reason"):  # "stopped by SIGTERM", "interrupted"
            return f"{run['reason']}; {self._resume_text()}"
        return f"incomplete; {self._resume_text()}"

    def _resume_text(self) -> str:
        hint = self.resume_hint or f"daskbatch resume {shlex.quote(self.store)}"
        return f"resume with: {hint}" if hint.startswith(("daskbatch ", "python ", "cd ")) else hint

    def _lines(self) -> list[str]:
        s = self.samples
        pct = 100.0 * (self.n_samples - s["pending"]) / self.n_samples if self.n_samples else 100.0
        lines = [
            f"store:    {self.store}",
            f"kernel:   {self.kernel}",
            f"state:    {self._state()}",
            f"samples:  {self.n_samples:,} total: {s['ok']:,} ok, {s['failed']:,} failed, "
            f"{s['timeout']:,} timed out, {s['crashed']:,} crashed, {s['pending']:,} pending "
            f"({pct:.1f}% done)",
            f"blocks:   {self.blocks_done:,} of {self.blocks_total:,} done",
        ]
        for ch in self.kernel_changes:
            lines.insert(
                2,
                f"code:     went on with changed kernel code at {ch.get('start', '?')} "
                f"({str(ch.get('from'))[:12]} -> {str(ch.get('to'))[:12]}: "
                f"{', '.join(ch.get('parts', [])[:3]) or 'source'}); blocks before it used the old code",
            )
        if self.jobs:
            lines.append(f"jobs:     {', '.join(_job_text(j, self.running) for j in self.jobs)}")
        lines += _reduced_lines(self.store)  # merged from the blocks committed now
        if self.errors:
            lines += _error_lines(self.errors[: _shown_errors()])
        if self.n_failed:
            lines.append(
                f"failures: each with its inputs and message: daskbatch failures {shlex.quote(self.store)}"
            )
        return lines

    def __str__(self) -> str:
        return "\n".join(self._lines())

    _caption = "daskbatch store"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython shows the text, not the dataclass's fields."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        """A table in a notebook: one row per line of the text, a progress bar in the
        blocks row, and the failures as the Python call that lists them."""
        rows = []
        for key, values in _rows(self._lines()):
            if key == "failures":
                values = [f"each with its inputs and message: daskbatch.failures({self.store!r})"]
            cell = "<br>".join(html.escape(v) for v in values)
            if key == "blocks" and self.blocks_total:
                cell += (
                    f" <progress value='{self.blocks_done}' max='{self.blocks_total}' "
                    "style='vertical-align:middle'></progress>"
                )
            rows.append(
                f"<tr><th style='text-align:left;vertical-align:top'>{html.escape(key)}</th>"
                f"<td style='text-align:left'>{cell}</td></tr>"
            )
        return f"<table><caption>{self._caption}</caption>{''.join(rows)}</table>"


def _rows(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``key: value`` lines as (key, [value, indented lines that follow])."""
    rows: list[tuple[str, list[str]]] = []
    for line in lines:
        m = re.match(r"([a-z][a-z ()]*):(?: +(.*))?$", line)
        if m:
            rows.append((m.group(1), [m.group(2)] if m.group(2) else []))
        elif rows:
            rows[-1][1].append(line.strip())
        else:
            rows.append(("", [line]))
    return rows


@dataclass
class RunResult(StoreStatus):
    """What :func:`run` returns: the store's totals plus what this call did."""

    blocks_computed: int = 0
    samples_computed: int = 0
    wall_seconds: float = 0.0
    cluster: str = ""
    dashboard: str | None = None

    _caption = "daskbatch run"
    _repr_pretty_ = StoreStatus._repr_pretty_  # before the __repr__ the dataclass makes

    @property
    def samples_per_second(self) -> float:
        return self.samples_computed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def _lines(self) -> list[str]:
        lines = super()._lines()
        if self.blocks_computed:
            lines.insert(
                3,
                f"this run: {self.samples_computed:,} samples in {self.blocks_computed:,} blocks, "
                f"{self.wall_seconds:.2f} s, {self.samples_per_second:,.0f} samples/s on "
                f"{self.cluster}",
            )
        else:
            lines.insert(3, "this run: nothing to compute, every block was already done")
        return lines

    def open(self):
        """The results as a lazy :class:`xarray.Dataset` (see :func:`daskbatch.open`)."""
        return Store(self.store).open_dataset()


def _name_inputs(store: Store, info: Mapping[str, Any], errors: list[dict[str, Any]]) -> None:
    """Add to each error of a table's or files' sample the input that names it (its
    file, or an id column) as ``error["input"]``: ``{"path": "/data/a_017.png"}``."""
    from .sampleinputs import sample_inputs

    if not errors or len(info["layout"]["batch_shape"]) != 1:
        return
    indices = [int(e["index"]) for e in errors if isinstance(e.get("index"), int)]
    found = sample_inputs(store, info, indices)
    if found is None:
        return
    name, values = found
    for e in errors:
        if e.get("index") in values:
            e["input"] = {name: values[e["index"]]}


def _error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """A status's error lines: each sample named by its input when it has one (its file,
    relative to the folder they share), then its index, then the error."""
    from .failures import _common_folder

    given = [e.get("input") for e in errors]
    named = [next(iter(g.values())) for g in given if isinstance(g, dict) and g]
    folder = _common_folder(named) if len(named) == len(errors) else None
    head = "errors (first ones):" + ("" if folder is None else f" files in {folder}")
    lines = [head]
    for e in errors:
        who = e["sample"]
        given = e.get("input")
        if isinstance(given, dict) and given:
            value = str(next(iter(given.values())))
            if folder is not None:
                value = os.path.relpath(value, folder)
            who = f"{value if len(value) <= 80 else value[:77] + '...'} ({who})"
        lines.append(f"  {who}: {e['error']}")
    return lines


def kernel_changes(history: Sequence[Any]) -> list[dict[str, Any]]:
    """The runs of a store's ``history`` that went on with changed kernel code
    (``kernel_changed="continue"``): their start, and the change (from, to, parts)."""
    return [
        {"start": h.get("start"), **h["kernel_changed"]}
        for h in history
        if isinstance(h, dict) and isinstance(h.get("kernel_changed"), dict)
    ]


def _job_text(job: Mapping[str, Any], running: Mapping[str, Any] | None) -> str:
    """A batch job's run as ``status`` lists it: a run recorded as running that does not
    hold the store's lock now was killed (SIGKILL, a node lost): it wrote no count."""
    if job.get("state") == "running":
        live = running is not None and not running.get("stale")  # a lease not renewed: stopped
        live = live and all(running.get(k) == job.get(k) for k in ("host", "pid"))
        return f"{job['job']} ({'running now' if live else 'stopped without finishing: killed?'})"
    return f"{job['job']} ({job.get('reason') or job.get('state')}, {job.get('blocks_computed', 0):,} blocks)"


def store_status(
    store: Store, info: Mapping[str, Any], cls: type[StoreStatus] = StoreStatus, **extra: Any
) -> StoreStatus:
    """The totals of ``store`` as ``cls``, from its committed blocks only."""
    ledger = store.ledger
    done, counts = ledger.state()  # one read of the bookkeeping; a pending block's counts: zeros
    n_samples = int(math.prod(info["layout"]["batch_shape"]))
    totals = counts.reshape(-1, len(STATUS)).sum(axis=0)
    samples = _counts_dict(totals)
    samples["pending"] = n_samples - int(totals.sum()) + int(totals[STATUS["pending"]])
    failing = [
        tuple(int(i) for i in idx)
        for idx in np.argwhere(done & (counts[..., STATUS["ok"]] < counts.sum(axis=-1)))
    ][: _shown_errors()]
    errors = [e for doc in ledger.errors(failing) for e in doc["errors"]][: _shown_errors()]
    _name_inputs(store, info, errors)
    # the provenance is verified when read (daskbatch.repaircheck); a hand-made info may not be
    history = info.get("history") if isinstance(info.get("history"), list) else []
    history = [h for h in history if isinstance(h, dict)]
    return cls(
        store=str(store.path),
        samples=samples,
        n_samples=n_samples,
        blocks_done=int(done.sum()),
        blocks_total=int(done.size),
        errors=errors[: _shown_errors()],
        last_run=history[-1] if history else None,
        kernel=info.get("kernel", {}).get("identity", ""),
        running=None if cls is RunResult else store.lock().holder(),
        resume_hint=resume_hint(info, str(store.path)),
        kernel_changes=kernel_changes(history),
        jobs=[h for h in history if h.get("job")],
        **extra,
    )


def _reduced_lines(path: str) -> list[str]:
    """What the store reduces, one line each, and the ``until=`` estimate (none: [])"""
    st = Store(path)
    info = st.info()
    if info is None or info.get("reduce") is None:
        return []
    from .reduced import status_lines

    return status_lines(st, info)
