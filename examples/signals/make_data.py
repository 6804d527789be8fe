"""Make a batch of synthetic signal captures: clock-like square waves, one ``.npy`` file each.

    python make_data.py batch_a               # 200 captures of batch A
    python make_data.py batch_b --batch B     # 200 captures of batch B (slightly different)
    python make_data.py small --n 10          # 10 captures, for a quick look

Each capture is 20,000 samples (float32, volts) at 10 MHz, 2 ms: a square wave of
about 10 kHz between 0 V and about 3.3 V whose edges go through a first-order RC
filter (10-90 % rise time = ln 9 × τ, about 4.4 µs), with 10 mV of noise. Batch B's
units are slightly different: 2 % higher frequency, 10 % slower edges, 1 % lower
amplitude. Among every 100 captures one has a glitch (a 5 V spike, which the
amplitude ignores, being measured from the two levels), one has edges three times
slower (an outlier of the rise time), one is a dead channel (noise only: it fails)
and one stops short (a truncated file: it fails too). The same
arguments give the same files, byte for byte.

``truth.csv`` beside the captures lists each file with the values it was made with
(``frequency`` Hz, ``amplitude`` V, ``rise_time`` s) and its kind.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 10e6  # Hz
SAMPLES = 20_000
NOISE = 0.01  # V
#: batch: (frequency, amplitude, RC time constant), the means of the units
BATCHES = {"A": (10e3, 3.3, 2.0e-6), "B": (10.2e3, 3.267, 2.2e-6)}


def square_wave(frequency: float, amplitude: float, tau: float, phase: float, rng: np.random.Generator):
    """A square wave between 0 and ``amplitude`` through an RC filter of time constant ``tau``, plus noise."""
    t = np.arange(SAMPLES) / SAMPLE_RATE
    square = amplitude * (np.mod(frequency * t + phase, 1.0) < 0.5)
    a = np.exp(-1 / (SAMPLE_RATE * tau))
    edges = lfilter([1 - a], [1, -a], square, zi=[a * square[0]])[0]
    return edges + rng.normal(0, NOISE, SAMPLES)


def make(folder: Path, n: int = 200, batch: str = "A", seed: int = 7) -> list[dict]:
    """Write ``n`` captures of ``batch`` into ``folder`` (made if need be); returns truth.csv's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    f0, a0, tau0 = BATCHES[batch]
    # in every 100 captures (or fewer, at the end): a glitch, a unit with slow edges, a dead
    # channel and a file cut short
    special = {}
    for start in range(0, n, 100):
        size = min(100, n - start)
        for frac, kind in ((0.37, "glitch"), (0.5, "slow"), (0.61, "dead"), (0.89, "truncated")):
            special[start + min(size - 1, round(frac * size))] = kind
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, ord(batch), i])
        frequency = f0 * (1 + rng.normal(0, 0.01))
        amplitude = a0 * (1 + rng.normal(0, 0.005))
        tau = tau0 * (1 + rng.normal(0, 0.03)) * (3 if special.get(i) == "slow" else 1)
        v = square_wave(frequency, amplitude, tau, rng.uniform(), rng)
        kind = special.get(i, "ok")
        if kind == "glitch":
            v[SAMPLES // 3 : SAMPLES // 3 + 5] = 5.0
        elif kind == "dead":
            v = rng.normal(0, NOISE, SAMPLES)
        path = folder / f"capture_{batch}_{i:04d}.npy"
        np.save(path, v.astype(np.float32))
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
        rows.append(
            {
                "file": path.name,
                "kind": kind,
                "frequency": frequency,
                "amplitude": amplitude,
                "rise_time": np.log(9) * tau,
            }
        )
    with open(folder / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="where to write the captures (made if need be)")
    p.add_argument("--n", type=int, default=200, help="number of captures (default 200)")
    p.add_argument("--batch", choices=sorted(BATCHES), default="A", help="which batch (default A)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    rows = make(args.folder, args.n, args.batch, args.seed)
    print(f"{len(rows)} captures of batch {args.batch} in {args.folder}; truth.csv lists them")


if __name__ == "__main__":
    main()
