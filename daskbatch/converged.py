"""The stopping rule of ``until=``: :class:`Converged` and its :class:`Estimate`.

:meth:`Converged.check` reads the merged partial states of the reductions
(:class:`~daskbatch.reducestates.Merged`) and gives the statistic's value, its error at a
confidence level, the count, and whether the tolerance is met.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from .reducestates import Merged, _Plan
from .reducestats import Exceedance, Quantiles, ReductionError, Stat, _finite_float

__all__ = ["Converged", "Estimate"]


class _Reduced(Protocol):
    """What :meth:`Converged.check` reads of a :class:`~daskbatch.reductions.Reductions`:
    the plan of each reduced output."""

    _plans: dict[str, _Plan]


# --------------------------------------------------------------------------------------
# convergence


@dataclass(frozen=True)
class Estimate:
    """A statistic and its error, as :meth:`Converged.check` finds them.

    Attributes
    ----------
    value
        The statistic (a float, or an array of the kept dims + the output's core shape).
    error
        Half-width of its confidence interval, in the value's units (same shape).
    n
        The fewest values any element has seen (ok samples, NaN skipped).
    met
        Whether every element's error is within tolerance and ``n >= min_n``.
    ratio
        The largest ``error / tolerance`` over the elements (met needs ``ratio <= 1``;
        inf while an element has no estimate).
    exhausted
        Whether ``n`` reached ``max_n`` (the run should stop, met or not).
    """

    value: Any
    error: Any
    n: int
    met: bool
    ratio: float = math.inf
    exhausted: bool = False

    @property
    def done(self) -> bool:
        """Whether to stop: met, or ``max_n`` reached."""
        return self.met or self.exhausted


@dataclass(frozen=True)
class Converged:
    """Run until a statistic of an output is known to a tolerance.

    Parameters
    ----------
    output
        The output whose statistic is watched.
    stat
        ``"mean"`` (error ``z * s / sqrt(n)``, s the standard deviation with ddof=1),
        ``"quantile"`` (needs ``q``; error: half the distance between the digest's
        quantiles at ``q ± z * sqrt(q (1 - q) / n)``) or ``"exceedance"`` (needs
        ``threshold``; error ``z * sqrt(p (1 - p) / n)``, i.e. relative error
        ``z * sqrt((1 - p) / (n p))``; with p 0 or 1 the Wilson interval's half-width),
        or ``"sobol"`` (a :class:`~daskbatch.Saltelli` design's first-order and total
        indices of the stored output, :func:`~daskbatch.sobol_indices`: error = the
        half-width of their bootstrap intervals at ``confidence``; give ``atol``).
    rtol, atol
        Met when ``error <= atol + rtol * |value|`` for every element (at least one given).
    q
        The quantile, for ``stat="quantile"``.
    threshold
        The threshold, for ``stat="exceedance"``.
    max_n
        The most samples a ``run(..., until=...)`` draws (``n`` doubles up to it),
        even if not met. Default (None): 1024 × the design's first ``n``.
    min_n
        Never met before this many values.
    confidence
        Confidence level of the interval, e.g. 0.95 (z = 1.96).
    above
        For ``stat="exceedance"``: the probability of values above (True) or below.

    Examples
    --------
    Give the rule to :func:`daskbatch.run` as ``until=``: the design's ``n`` (here 1000)
    is the first round, and ``n`` doubles until the mean of ``y`` is known to 1% (at 95%
    confidence), here at 32,000 samples; the store grows, the samples computed stay.

    >>> import os, tempfile
    >>> import daskbatch as db
    >>> @db.kernel(outputs={"y": db.Output()}, per_sample=False)
    ... def square(x):
    ...     return x**2
    >>> store = os.path.join(tempfile.mkdtemp(), "mc.zarr")
    >>> space = db.MonteCarlo({"x": db.Uniform(0, 2)}, n=1000, seed=0)
    >>> result = db.run(square, space, store, cluster="serial", progress=False,
    ...                 until=db.Converged("y", rtol=0.01))
    >>> int(result.reductions.y_count), round(float(result.reductions.y_mean), 2)
    (32000, 1.34)
    """

    output: str
    stat: str = "mean"
    rtol: float | None = None
    atol: float | None = None
    q: float | None = None
    threshold: float | None = None
    max_n: int | None = None
    min_n: int = 1000
    confidence: float = 0.95
    above: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.output, str) or not self.output:
            raise ReductionError(
                f"Converged: output={self.output!r} must be the name of an output, e.g. 'response'"
            )
        if self.stat not in ("mean", "quantile", "exceedance", "sobol"):
            raise ReductionError(
                f"Converged: stat={self.stat!r} is not supported; use 'mean', 'quantile' (with q=), "
                "'exceedance' (with threshold=) or 'sobol' (a Saltelli design's indices)"
            )
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if v is not None and (_finite_float(v) is None or v < 0):
                raise ReductionError(
                    f"Converged: {name}={v!r} must be a finite number >= 0, e.g. {name}=0.01"
                )
        if self.rtol is None and self.atol is None:
            raise ReductionError(
                "Converged: rtol=None and atol=None; give a tolerance, e.g. rtol=0.01 (1% of the value)"
            )
        if self.stat == "quantile":
            if self.q is None or _finite_float(self.q) is None or not 0 < self.q < 1:
                raise ReductionError(
                    f"Converged: q={self.q!r} must be a probability strictly between 0 and 1 with "
                    "stat='quantile', e.g. q=0.95"
                )
        elif self.q is not None:
            raise ReductionError(f"Converged: q={self.q!r} is only for stat='quantile' (stat={self.stat!r})")
        if self.stat == "exceedance":
            if self.threshold is None or _finite_float(self.threshold) is None:
                raise ReductionError(
                    f"Converged: threshold={self.threshold!r} must be a finite number with "
                    "stat='exceedance', e.g. threshold=1e-3"
                )
        elif self.threshold is not None:
            raise ReductionError(
                f"Converged: threshold={self.threshold!r} is only for stat='exceedance' (stat={self.stat!r})"
            )
        if isinstance(self.min_n, bool) or not isinstance(self.min_n, int | np.integer) or self.min_n < 1:
            raise ReductionError(f"Converged: min_n={self.min_n!r} must be an integer >= 1, e.g. min_n=1000")
        if self.max_n is not None and (
            isinstance(self.max_n, bool)
            or not isinstance(self.max_n, int | np.integer)
            or self.max_n < self.min_n
        ):
            raise ReductionError(
                f"Converged: max_n={self.max_n!r} must be an integer >= min_n={self.min_n}, "
                "or None (no limit)"
            )
        c = _finite_float(self.confidence)
        if c is None or not 0 < c < 1:
            raise ReductionError(
                f"Converged: confidence={self.confidence!r} must be strictly between 0 and 1, e.g. 0.95"
            )
        if not isinstance(self.above, bool | np.bool_):
            raise ReductionError(f"Converged: above={self.above!r} must be True or False")

    @property
    def z(self) -> float:
        """The normal quantile of the two-sided confidence level (1.96 for 0.95)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)

    def needed(self) -> Stat:
        """The statistic this criterion needs reduced."""
        if self.stat == "quantile":
            return Quantiles([float(self.q)])  # type: ignore[arg-type]
        if self.stat == "exceedance":
            return Exceedance(float(self.threshold), self.above)  # type: ignore[arg-type]
        if self.stat == "sobol":  # the indices are computed from the stored output
            return "count"
        return "mean"

    def spec(self) -> dict[str, Any]:
        """The criterion as JSON-ready values."""
        return {
            "output": self.output,
            "stat": self.stat,
            "rtol": self.rtol,
            "atol": self.atol,
            "q": self.q,
            "threshold": self.threshold,
            "above": self.above,
            "max_n": None if self.max_n is None else int(self.max_n),
            "min_n": int(self.min_n),
            "confidence": self.confidence,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Converged:
        """The criterion :meth:`spec` describes (as a store records it)."""
        return cls(**dict(spec))

    def describe(self, estimate: Estimate) -> str:
        """One line: the statistic, its estimate and error, the tolerance, n."""
        parts = (f"atol {self.atol:g}" if self.atol else "", f"rtol {self.rtol:g}" if self.rtol else "")
        tol = " + ".join(t for t in parts if t)
        if self.stat == "sobol":
            return (
                f"Sobol indices of {self.output!r}: widest {100 * self.confidence:g}% interval "
                f"± {_widest(estimate.error)}, asked {tol or 'tolerance 0'}: "
                f"{'met' if estimate.met else 'not met'} at {estimate.n:,} samples"
            )
        if self.stat == "quantile":
            what = f"q{self.q:g}"
        elif self.stat == "exceedance":
            what = f"P({'>' if self.above else '<'}{self.threshold:g})"
        else:
            what = "mean"
        value, error = np.asarray(estimate.value, dtype=float), np.asarray(estimate.error, dtype=float)
        if value.size == 1:
            shown = f"{float(value.ravel()[0]):.6g} ± {float(error.ravel()[0]):.3g}"
        else:
            shown = f"{value.size} values, worst error/tolerance {estimate.ratio:.3g}"
        state = "met" if estimate.met else "not met"
        return (
            f"{what} of {self.output!r} = {shown} ({100 * self.confidence:g}% interval), "
            f"asked {tol or 'tolerance 0'}: {state} at {estimate.n:,} values"
        )

    def check(self, reductions: _Reduced, merged: Merged) -> Estimate:
        """The statistic's estimate and error from merged states, and whether it is met."""
        plan = reductions._plans.get(self.output)
        if plan is None:
            raise ReductionError(
                f"Converged.check: output {self.output!r} is not reduced; make the reductions with "
                f"parse_reduce(..., until=this criterion) (reduced: {sorted(reductions._plans)})"
            )
        acc = merged.states[self.output]
        n = acc["n"]
        z = self.z
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.stat == "mean":
                if not plan.moments:
                    raise ReductionError(f"Converged.check: output {self.output!r} has no 'mean' reduced")
                inf = acc["inf"].sum(-1) if "inf" in acc else np.zeros(n.shape, np.int64)
                value = np.where(n > 0, acc["mean"], np.nan)
                s2 = np.where(n > 1, acc["m2"] / np.maximum(n - 1, 1), np.inf)
                error = z * np.sqrt(s2 / np.maximum(n, 1))
                if inf.any():  # the mean is infinite (NaN with both signs): never met
                    pos, neg = acc["inf"][..., 1] > 0, acc["inf"][..., 0] > 0
                    value = np.where(
                        inf > 0, np.where(pos & neg, np.nan, np.where(pos, np.inf, -np.inf)), value
                    )
                    error = np.where(inf > 0, np.inf, error)
            elif self.stat == "quantile":
                if plan.quantiles is None:
                    raise ReductionError(f"Converged.check: output {self.output!r} has no Quantiles reduced")
                q = float(self.q)  # type: ignore[arg-type]
                nn = np.maximum(n, 1)
                d = z * np.sqrt(q * (1 - q) / nn)
                value = plan.quantile(acc, [q])[0]
                error = np.full(n.shape, np.inf)
                for idx in np.ndindex(n.shape):
                    digest = acc["digest"][idx]
                    if digest is None or n[idx] == 0:
                        continue
                    lo_hi = digest.quantile([max(q - d[idx], 0.0), min(q + d[idx], 1.0)])
                    error[idx] = (lo_hi[1] - lo_hi[0]) / 2
            else:
                which = [
                    i
                    for i, e in enumerate(plan.exceedances)
                    if e.threshold == float(self.threshold) and e.above == self.above  # type: ignore[arg-type]
                ]
                if not which:
                    raise ReductionError(
                        f"Converged.check: output {self.output!r} has no Exceedance({self.threshold}) reduced"
                    )
                k = acc["exceed"][..., which[0]]
                nn = np.maximum(n, 1)
                value = np.where(n > 0, k / nn, np.nan)
                wald = z * np.sqrt(value * (1 - value) / nn)
                wilson = z / (1 + z * z / nn) * np.sqrt(value * (1 - value) / nn + z * z / (4 * nn * nn))
                error = np.where((k == 0) | (k == n), wilson, wald)
                error = np.where(n > 0, error, np.inf)
            tol = (self.atol or 0.0) + (self.rtol or 0.0) * np.abs(value)
            ratio = np.where(error == 0, 0.0, error / tol)
            ratio = np.where(
                np.isnan(ratio) | ~np.isfinite(value), np.inf, ratio
            )  # an infinite estimate: never met
        worst = float(ratio.max()) if ratio.size else math.inf
        fewest = int(n.min()) if n.size else 0
        met = bool(worst <= 1 and fewest >= self.min_n)
        exhausted = self.max_n is not None and fewest >= self.max_n
        if value.ndim == 0:
            value, error = float(value), float(error)
        return Estimate(value=value, error=error, n=fewest, met=met, ratio=worst, exhausted=bool(exhausted))


def _widest(error: Any) -> str:
    """The widest finite half-width (an element with no variance has none)."""
    finite = np.asarray(error, dtype=float)
    finite = finite[np.isfinite(finite)]
    return f"{float(finite.max()):.3g}" if finite.size else "none yet"
