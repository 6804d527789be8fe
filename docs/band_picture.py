"""Draw the README's picture: the p10 / p50 / p90 band of 2,000 DC soundings, as SVG.

    python docs/band_picture.py          # writes docs/img/band.svg

The sweep is the README's example (the shipped ``dcsounding`` model over random
three-layer earths, seed 42), run with daskbatch in this process, its band read with
``daskbatch.summarize``. Plain SVG, so that the README needs no plotting library.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import daskbatch as db
from daskbatch.models.dcsounding import AB2, apparent_resistivity

OUT = Path(__file__).resolve().parent / "img" / "band.svg"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 520, 300, 62, 16, 28, 44


@db.kernel(outputs={"rhoa": db.Output(dims=("ab2",), shape=(31,), coords={"ab2": AB2})})
def sounding(resistivity, thickness):
    return apparent_resistivity(resistivity, thickness)


def band() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    space = db.MonteCarlo(
        {
            "resistivity": db.LogNormal(2, 0.5, base=10, size=3, dim="layer"),
            "thickness": db.Normal([10, 30], [3, 8], dim="interface"),
        },
        n=2_000,
        seed=42,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.zarr"
        db.run(sounding, space, store, cluster="serial", progress=False)
        s = db.summarize(store).rhoa
        return np.asarray(AB2), {k: s.sel(stat=k).values for k in ("p10", "p50", "p90")}


def svg(x: np.ndarray, q: dict[str, np.ndarray]) -> str:
    lx, ly = np.log10(x), {k: np.log10(v) for k, v in q.items()}
    x0, x1 = np.floor(lx.min()), np.ceil(lx.max())
    y0, y1 = np.floor(min(v.min() for v in ly.values())), np.ceil(max(v.max() for v in ly.values()))

    def px(v: np.ndarray) -> np.ndarray:
        return PAD_L + (v - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def py(v: np.ndarray) -> np.ndarray:
        return H - PAD_B - (v - y0) / (y1 - y0) * (H - PAD_T - PAD_B)

    def points(xs: np.ndarray, ys: np.ndarray) -> str:
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=True))

    X = px(lx)
    poly = points(np.concatenate([X, X[::-1]]), np.concatenate([py(ly["p10"]), py(ly["p90"])[::-1]]))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    for e in range(int(x0), int(x1) + 1):
        gx = px(np.array(e))
        out.append(f'<line x1="{gx:.1f}" y1="{PAD_T}" x2="{gx:.1f}" y2="{H - PAD_B}" stroke="#ddd"/>')
        out.append(
            f'<text x="{gx:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">10<tspan dy="-5" '
            f'font-size="9">{e}</tspan></text>'
        )
    for e in range(int(y0), int(y1) + 1):
        gy = py(np.array(e))
        out.append(f'<line x1="{PAD_L}" y1="{gy:.1f}" x2="{W - PAD_R}" y2="{gy:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{PAD_L - 6}" y="{gy + 4:.1f}" text-anchor="end">10<tspan dy="-5" '
            f'font-size="9">{e}</tspan></text>'
        )
    out += [
        f'<polygon points="{poly}" fill="#9ecae1" fill-opacity="0.7" stroke="none"/>',
        f'<polyline points="{points(X, py(ly["p50"]))}" fill="none" stroke="#08519c" stroke-width="2"/>',
        f'<text x="{(PAD_L + W - PAD_R) / 2:.0f}" y="{H - 8}" text-anchor="middle">AB/2 (m)</text>',
        f'<text x="14" y="{(PAD_T + H - PAD_B) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(PAD_T + H - PAD_B) / 2:.0f})">apparent resistivity (ohm m)</text>',
        f'<text x="{PAD_L}" y="18">2,000 soundings: median (line) and p10 to p90 (band)</text>',
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    x, q = band()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(svg(x, q))
    print(f"written {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
