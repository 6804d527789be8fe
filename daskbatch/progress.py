"""One progress display for every scheduler.

The engine calls :meth:`Progress.update` as each block finishes, in whatever order
the scheduler delivers them. The display shows samples done / total, percent, rate,
ETA and the failures so far:

- in a terminal, a tqdm bar redrawn on one line;
- in Jupyter, tqdm's widget bar when ipywidgets is installed (``pip install
  'daskbatch[notebook]'``), and the same text bar as in a terminal without it (never
  tqdm's "IProgress not found" warning);
- anywhere else (a cluster job's log file), a plain line every ``interval`` seconds
  and one at the end, never a carriage return.

:func:`show_dashboard` prints the Dask dashboard's address, as a link in a notebook.

Rate and ETA come from a moving window over the last blocks (:class:`RateWindow`),
so they follow the run's current speed rather than its start (a resumed run, a
slow first block with imports, a cluster that grew).
"""

from __future__ import annotations

import collections
import datetime as _dt
import html
import os
import sys
import time
from typing import Any, TextIO

from . import config

__all__ = ["Progress", "RateWindow", "format_eta", "show_dashboard"]


class RateWindow:
    """Samples per second over the last ``seconds`` of a run (at least two updates).

    Examples
    --------
    >>> w = RateWindow(seconds=60)
    >>> w.add(0.0, 0); w.add(10.0, 500); w.add(20.0, 1500)
    >>> w.rate()
    75.0
    >>> w.eta(remaining=1500)
    20.0
    """

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._points: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, done: int) -> None:
        self._points.append((t, done))
        while len(self._points) > 2 and t - self._points[1][0] >= self.seconds:
            self._points.popleft()

    def rate(self) -> float | None:
        if len(self._points) < 2:
            return None
        (t0, n0), (t1, n1) = self._points[0], self._points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: int) -> float | None:
        r = self.rate()
        return remaining / r if r else None


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` style, or ``?`` when unknown.

    >>> format_eta(3723.4), format_eta(None)
    ('1:02:03', '?')
    """
    if seconds is None:
        return "?"
    return str(_dt.timedelta(seconds=round(seconds)))


def _columns(file: TextIO) -> int:
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 0


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _widget_tqdm() -> Any:
    """tqdm's notebook bar (an ipywidgets progress bar), or None without ipywidgets."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm import notebook
    except Exception:  # not installed, or an ipywidgets that does not import
        return None
    return notebook.tqdm if getattr(notebook, "IProgress", None) is not None else None


def show_dashboard(link: str) -> None:
    """Print ``daskbatch: Dask dashboard at LINK`` on standard output; in a notebook
    show it as a link that opens the dashboard in a new tab.

    Examples
    --------
    >>> show_dashboard("http://127.0.0.1:8787/status")
    daskbatch: Dask dashboard at http://127.0.0.1:8787/status
    """
    text = f"daskbatch: Dask dashboard at {link}"
    if _in_notebook():
        from IPython.display import display

        url = html.escape(link, quote=True)
        anchor = f'<a href="{url}" target="_blank" rel="noopener">{html.escape(link)}</a>'
        display({"text/html": f"daskbatch: Dask dashboard at {anchor}", "text/plain": text}, raw=True)
    else:
        print(text, flush=True)


class Progress:
    """Samples done / total with rate, ETA and failures.

    Parameters
    ----------
    total
        Samples in the whole space.
    initial
        Samples already done (a resumed run).
    failed
        Samples already failed.
    enabled
        False draws nothing (the figures are still kept, for the store's status).
    file
        Where to draw (standard error by default).
    interval
        Seconds between plain lines when ``file`` is not a terminal (default: the
        ``daskbatch.progress.interval`` setting, 30, see :mod:`daskbatch.config`; the
        ``DASKBATCH_PROGRESS_INTERVAL`` environment variable still sets it too).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        failed: int = 0,
        enabled: bool = True,
        file: TextIO | None = None,
        desc: str = "daskbatch",
        interval: float | None = None,
    ) -> None:
        self.total = total
        self.initial = initial
        self.done = initial
        self.failed = failed
        self.desc = desc
        self.file = file or sys.stderr
        self.window = RateWindow()
        self.t0 = time.monotonic()
        self.window.add(self.t0, initial)
        if interval is None:
            interval = config.get("progress.interval")
        self.interval = interval
        self._last_line = self.t0
        self._bar: Any = None
        self._plain = False
        if not enabled:
            return
        isatty = getattr(self.file, "isatty", lambda: False)()
        notebook = file is None and _in_notebook()
        widget = _widget_tqdm() if notebook else None
        if widget is not None:
            self._bar = widget(
                total=total,
                initial=initial,
                unit="sample",
                unit_scale=total >= 10_000,  # 12.3k/100k; small counts as they are
                desc=desc,
                smoothing=0.1,
                mininterval=0.5,
            )
            self._bar.set_postfix(failed=failed, refresh=False)
        elif isatty or notebook:
            # tqdm.std, not tqdm.auto: in a notebook without ipywidgets the text bar,
            # redrawn in the cell's output, rather than a warning
            from tqdm.std import tqdm

            # a terminal that reports no size (a bare pty, `script`) would get no bar at all
            width = _columns(self.file)
            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="sample",
                unit_scale=total >= 10_000,  # 12.3k/100k; small counts as they are
                desc=desc,
                file=self.file,
                smoothing=0.1,
                dynamic_ncols=bool(width),
                ncols=None if width else 100,
                nrows=None if width else 24,
                mininterval=0.5,
            )
            self._bar.set_postfix(failed=failed, refresh=False)
        else:
            self._plain = True

    # ------------------------------------------------------------------ figures

    @property
    def rate(self) -> float | None:
        """Samples per second over the last minute of the run."""
        return self.window.rate()

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate."""
        return self.window.eta(self.total - self.done)

    def line(self) -> str:
        """The plain progress line, e.g. for a log file."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate
        return (
            f"{self.desc}: {self.done:,} / {self.total:,} samples ({pct:.1f}%), "
            f"{'?' if rate is None else f'{rate:,.0f}'} samples/s, ETA {format_eta(self.eta)}, "
            f"{self.failed:,} failed"
        )

    # ------------------------------------------------------------------ updates

    def update(self, samples: int, failed: int = 0) -> None:
        self.done += samples
        self.failed += failed
        now = time.monotonic()
        self.window.add(now, self.done)
        if self._bar is not None:
            if failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(samples)
        elif self._plain and now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=self.file, flush=True)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._plain:
            self._plain = False
            if self.done > self.initial:
                print(self.line(), file=self.file, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
