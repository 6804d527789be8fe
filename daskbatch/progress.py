"""One progress display for every scheduler.

The engine calls :meth:`Progress.update` as each block finishes, in whatever order
the scheduler delivers them; the bar shows samples done / total, rate, ETA and the
failures so far. tqdm draws it: one redrawn line in a terminal, a widget in Jupyter.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress"]


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
        False draws nothing.
    file
        Where to draw (standard error by default).
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
    ) -> None:
        self.total = total
        self.done = initial
        self.failed = failed
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="sample",
                unit_scale=True,
                desc=desc,
                file=file or sys.stderr,
                smoothing=0.1,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            self._bar.set_postfix(failed=failed, refresh=False)

    def update(self, samples: int, failed: int = 0) -> None:
        self.done += samples
        self.failed += failed
        if self._bar is not None:
            if failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(samples)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
