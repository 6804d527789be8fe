"""Make a folder of synthetic embryo images: grayscale outlines, a few files broken on purpose.

    python make_data.py data                 # 300 images of 192 x 192 pixels
    python make_data.py data --n 10 --bad 3  # 10 images, 3 of them unreadable or empty

Each image is a binary PGM file (``P5``, 8 bits; any image viewer opens it) holding one
bright blob on a dark background, its outline ``r(θ) = r0 (1 + Σ a_k cos(k θ + φ_k))``
drawn anti-aliased (4 × 4 subpixels) with a little noise. Every tenth image, the first
included, is a plain disc, whose outline has curvature 1 / r0 everywhere. ``--bad`` of
the files cannot be measured, spread over the folder in turn: a file cut short, a file
of random bytes, an empty file, and an image with no object. The same arguments give
the same files, byte for byte.

``truth.csv`` (beside the images, not matched by ``*.pgm``) lists each file with its
kind (``disc``, ``blob`` or what is wrong with it) and its ``r0`` in pixels.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

#: what is wrong with the broken files, in the order they are placed
BROKEN = ("truncated", "garbage", "empty", "blank")
BACKGROUND, FOREGROUND, NOISE = 0.15, 0.75, 0.012


def write_pgm(path: Path, image: np.ndarray) -> None:
    """Write a 2-D array of values in [0, 1] as an 8-bit binary PGM file."""
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    height, width = pixels.shape
    path.write_bytes(b"P5\n%d %d\n255\n" % (width, height) + pixels.tobytes())


def blob(size: int, r0: float, harmonics: list[tuple[int, float, float]], rng: np.random.Generator):
    """A bright blob whose outline is r0 (1 + sum a cos(k θ + φ)), centred, anti-aliased."""
    sub = 4
    coords = (np.arange(size * sub) + 0.5) / sub - size / 2  # subpixel centres
    y, x = np.meshgrid(coords, coords, indexing="ij")
    theta = np.arctan2(y, x)
    radius = np.full_like(theta, r0)
    for k, a, phi in harmonics:
        radius += r0 * a * np.cos(k * theta + phi)
    inside = (np.hypot(x, y) <= radius).reshape(size, sub, size, sub).mean(axis=(1, 3))
    image = BACKGROUND + (FOREGROUND - BACKGROUND) * inside
    return image + rng.normal(0, NOISE, image.shape)


def make(folder: Path, n: int = 300, size: int = 192, bad: int | None = None, seed: int = 1) -> list[dict]:
    """Write ``n`` images into ``folder`` (made if need be); returns the rows of truth.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    if bad is None:
        bad = max(1, round(0.02 * n))
    # the broken files, spread over the folder, never the first (a disc)
    broken = {int(i): BROKEN[j % len(BROKEN)] for j, i in enumerate(np.linspace(3, n - 1, bad).round())}
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        path = folder / f"embryo_{i:04d}.pgm"
        kind = broken.get(i, "disc" if i % 10 == 0 else "blob")
        r0 = float(rng.uniform(0.15, 0.3) * size)
        if kind == "disc":
            image = blob(size, r0, [], rng)
        elif kind in ("blob", "truncated"):
            harmonics = [
                (k, float(rng.uniform(0, 0.3 / k)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 4)
            ]
            image = blob(size, r0, harmonics, rng)
        else:
            image = BACKGROUND + rng.normal(0, NOISE, (size, size))
        if kind == "garbage":
            path.write_bytes(rng.bytes(size * size // 2))
        elif kind == "empty":
            path.write_bytes(b"")
        else:
            write_pgm(path, image)
            if kind == "truncated":  # a copy that stopped half way
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
        rows.append(
            {"file": path.name, "kind": kind, "r0_px": round(r0, 6) if kind in ("disc", "blob") else ""}
        )
    with open(folder / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "kind", "r0_px"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="where to write the images (made if need be)")
    p.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--size", type=int, default=192, help="width and height in pixels (default 192)")
    p.add_argument("--bad", type=int, default=None, help="broken files among them (default 2%%, at least 1)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rows = make(args.folder, args.n, args.size, args.bad, args.seed)
    broken = sum(r["kind"] in BROKEN for r in rows)
    print(f"{len(rows)} images in {args.folder} ({broken} broken on purpose); truth.csv lists them")


if __name__ == "__main__":
    main()
