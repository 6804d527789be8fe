"""Draw the first 256 points of each design in two dimensions, as SVG files for docs/designs.md.

    python docs/design_pictures.py          # writes docs/img/design-*.svg

The points are the designs' own (daskbatch's code, seed 1), drawn as plain SVG so
that the docs need no plotting library. The tests run this script and check that
the pictures in the repository are what it draws today.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import daskbatch as db

HERE = Path(__file__).resolve().parent
OUT = HERE / "img"
N = 256
SIZE = 300
PAD = 20


def designs() -> dict[str, db.Space]:
    dists = {"x": db.Uniform(0, 1), "y": db.Uniform(0, 1)}
    return {
        "montecarlo": db.MonteCarlo(dists, n=N, seed=1),
        "latinhypercube": db.LatinHypercube(dists, n=N, seed=1),
        "sobol": db.Sobol(dists, n=N, seed=1),
        "halton": db.Halton(dists, n=N, seed=1),
        "grid": db.Grid(x=(np.arange(16) + 0.5) / 16, y=(np.arange(16) + 0.5) / 16),
    }


def svg(name: str, x: np.ndarray, y: np.ndarray) -> str:
    inner = SIZE - 2 * PAD
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE + 20}" '
        f'viewBox="0 0 {SIZE} {SIZE + 20}">',
        f'<rect x="{PAD}" y="{PAD}" width="{inner}" height="{inner}" fill="white" stroke="#444"/>',
    ]
    for k in range(1, 4):  # quarter lines, to see the balance
        p = PAD + inner * k / 4
        lines.append(f'<line x1="{p:.1f}" y1="{PAD}" x2="{p:.1f}" y2="{PAD + inner}" stroke="#ddd"/>')
        lines.append(f'<line x1="{PAD}" y1="{p:.1f}" x2="{PAD + inner}" y2="{p:.1f}" stroke="#ddd"/>')
    for a, b in zip(x, y, strict=True):
        cx, cy = PAD + inner * a, PAD + inner * (1 - b)
        lines.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.2" fill="#1f77b4"/>')
    lines.append(
        f'<text x="{SIZE / 2}" y="{SIZE + 8}" font-family="sans-serif" font-size="14" '
        f'text-anchor="middle">{name}, first {len(x)} points</text>'
    )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def pictures() -> dict[str, str]:
    out = {}
    for name, space in designs().items():
        values = space.block(tuple(slice(0, n) for n in space.batch_shape))
        if name == "grid":
            x, y = (a.ravel() for a in np.meshgrid(values["x"], values["y"], indexing="ij"))
        else:
            x, y = values["x"], values["y"]
        out[f"design-{name}.svg"] = svg(name, x, y)
    return out


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for file, text in pictures().items():
        (OUT / file).write_text(text)
        print(f"wrote {OUT / file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
