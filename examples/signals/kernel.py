"""Amplitude, frequency and rise time of one signal capture: the kernel of the signals example.

``measure(path, sample_rate)`` loads one ``.npy`` capture (volts) and measures it the
way a scope does (after IEEE 181):

- the two state levels are the modes of the histogram of the lower and the upper
  half of the range (a spike or overshoot does not move them); ``amplitude`` is
  their difference;
- a capture whose levels are within 20 times the noise (estimated from the
  differences of successive samples) is refused as having no signal;
- ``frequency`` from the rising crossings of the 50 % reference level, interpolated
  between samples, that hold the low state for ``HOLD`` (16) samples before and the
  high state for as many after (a glitch is not an edge): (crossings − 1) / (time
  from the first to the last);
- ``rise_time``: the median over the rising edges of the time from the 10 % to the
  90 % level.

numpy only, and no state shared between calls: the kernel is declared
``threadsafe=True``, so daskbatch runs it on several threads of one process at once
(``cluster = "threads"`` in the spec files). A capture with fewer than two rising
edges (a dead channel) or a file that is not a readable ``.npy`` raises
``ValueError``: that sample is marked failed with the message, and the others go on.
"""

from __future__ import annotations

import numpy as np

import daskbatch as db

#: a rising edge holds the low state for this many samples before its 50 % crossing
#: and the high state for as many after: a glitch of a few samples is not an edge
HOLD = 16


def state_levels(v: np.ndarray, bins: int = 200) -> tuple[float, float]:
    """The low and high state levels: histogram modes of the lower and upper halves."""
    counts, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    half = bins // 2
    low_bin = int(np.argmax(counts[:half]))
    high_bin = half + int(np.argmax(counts[half:]))
    width = edges[1] - edges[0]
    levels = []
    for b in (low_bin, high_bin):  # the median of the samples within two bins of the mode
        near = v[np.abs(v - centres[b]) <= 2 * width]
        levels.append(float(np.median(near)))
    return levels[0], levels[1]


def crossings(v: np.ndarray, level: float, hold: int = 1) -> np.ndarray:
    """Fractional sample indices where ``v`` rises through ``level``, interpolated.

    With ``hold`` > 1 only the crossings where ``v`` stays below ``level`` for ``hold``
    samples before and above it for ``hold`` samples after count: a glitch does not.
    """
    above = v > level
    i = np.flatnonzero(~above[:-1] & above[1:])
    if hold > 1:
        ups = np.concatenate([[0], np.cumsum(above)])  # ups[b] - ups[a]: samples above in [a, b)
        i = i[(i >= hold - 1) & (i + 1 + hold <= len(v))]
        i = i[(ups[i + 1] - ups[i + 1 - hold] == 0) & (ups[i + 1 + hold] - ups[i + 1] == hold)]
    return i + (level - v[i]) / (v[i + 1] - v[i])


@db.kernel(
    outputs={
        "amplitude": db.Output(units="V"),
        "frequency": db.Output(units="kHz"),
        "rise_time": db.Output(units="us"),
    },
    threadsafe=True,
)
def measure(path, sample_rate=10e6):
    """Amplitude (V), frequency (kHz) and 10-90 % rise time (µs) of the capture at ``path``.

    Parameters
    ----------
    path
        A ``.npy`` file holding one capture: a 1-D array of volts.
    sample_rate
        Samples per second (Hz).

    Returns
    -------
    dict
        ``amplitude``, ``frequency`` and ``rise_time``.
    """
    v = np.load(path).astype(np.float64)
    if v.ndim != 1 or len(v) < 16:
        raise ValueError(f"a capture is a 1-D array of at least 16 samples; this one has shape {v.shape}")
    low, high = state_levels(v)
    amplitude = high - low
    # white noise from the sample-to-sample differences (robust: edges are few)
    noise = float(np.median(np.abs(np.diff(v)))) / (0.6745 * np.sqrt(2))
    if amplitude <= 20 * noise:
        raise ValueError(
            f"no signal: the levels are {amplitude:.3g} V apart, within the noise ({noise:.2g} V rms); "
            "a dead channel?"
        )
    mid = crossings(v, low + 0.5 * amplitude, hold=HOLD)
    if len(mid) < 2:
        raise ValueError(f"{len(mid)} rising edge in {len(v)} samples: the frequency needs two at least")
    period = (mid[-1] - mid[0]) / (len(mid) - 1)
    # each edge: the last 10 % crossing before its 50 % crossing, the first 90 % one after
    up10, up90 = crossings(v, low + 0.1 * amplitude), crossings(v, low + 0.9 * amplitude)
    rises = []
    for m in mid:
        before = up10[(up10 <= m) & (up10 > m - period / 2)]
        after = up90[(up90 >= m) & (up90 < m + period / 2)]
        if len(before) and len(after):
            rises.append(after[0] - before[-1])
    if not rises:
        raise ValueError(f"no whole rising edge among {len(mid)}: the capture starts or ends on every one")
    return {
        "amplitude": amplitude,
        "frequency": sample_rate / period / 1e3,
        "rise_time": float(np.median(rises)) / sample_rate * 1e6,
    }
