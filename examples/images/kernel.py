"""The curvature of the outline of the object in one image: the kernel of the images example.

``curvature(path, pixel_size)`` reads one 8- or 16-bit binary PGM image with numpy,
finds the bright object (Gaussian blur, threshold half way between background and
object, the largest connected piece), samples its outline along 720 rays from its
centroid (the outermost crossing of the threshold on each ray, interpolated between
pixels), and differentiates ``r(θ)`` spectrally:

    κ = (r² + 2 r'² − r r'') / (r² + r'²)^(3/2)

It returns the curvature profile sampled every pixel of arc length (a ragged output:
its length is the perimeter in pixels, different for every image) and its statistics,
in micrometres given ``pixel_size`` (µm per pixel). A file that is not a PGM image, is
cut short, or holds no object raises ``ValueError`` naming the problem: daskbatch keeps
the message and marks that sample failed, and the others go on.

numpy and scipy only. For objects that are not star-shaped around their centroid the
rays give the outline's radial hull; a real pipeline would trace the contour instead
(``skimage.measure.find_contours``) and keep the rest of this function.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

import daskbatch as db

#: rays from the centroid; the outline's r(θ) is sampled on them
ANGLES = 720
#: mode k of r(θ) (k waves around the outline) is damped by exp(-(k / SMOOTHING)^4):
#: pixel noise, which the second derivative amplifies by k², is in the high modes
SMOOTHING = 10.0
_HEADER = re.compile(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s")


def read_pgm(path: str | Path) -> np.ndarray:
    """A binary (``P5``) PGM image as floats in [0, 1]; ``ValueError`` if it is not one."""
    data = Path(path).read_bytes()
    head = _HEADER.match(data)
    if head is None:
        raise ValueError(
            f"not a binary PGM image: it starts with {data[:12]!r}, expected b'P5 <width> <height> <max>'"
        )
    width, height, maxval = (int(g) for g in head.groups())
    if not 0 < maxval < 65536 or width == 0 or height == 0:
        raise ValueError(f"bad PGM header: width {width}, height {height}, maxval {maxval}")
    dtype = np.dtype(">u2" if maxval > 255 else "u1")
    pixels = data[head.end() : head.end() + width * height * dtype.itemsize]
    if len(pixels) < width * height * dtype.itemsize:
        raise ValueError(
            f"truncated image: {len(pixels)} of {width * height * dtype.itemsize} bytes of pixels"
        )
    return np.frombuffer(pixels, dtype).reshape(height, width) / maxval


def outline_radii(image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The object's outline as r(θ) on ANGLES rays from its centroid, in pixels."""
    smooth = ndimage.gaussian_filter(image.astype(float), 1.0)
    low, high = np.percentile(smooth, [1, 99])
    if high - low < 0.05:
        raise ValueError(f"no object: the image is uniform (contrast {high - low:.3f} of full scale)")
    level = (low + high) / 2
    labels, n = ndimage.label(smooth > level)
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(smooth), labels, np.arange(1, n + 1))))
    mask = labels == largest
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        raise ValueError("the object touches the image border: its outline is not whole")
    cy, cx = ndimage.center_of_mass(mask)
    # along each ray, steps of a quarter pixel out to the image's far corner
    far = np.hypot(max(cy, image.shape[0] - cy), max(cx, image.shape[1] - cx))
    steps = np.arange(0, far, 0.25)
    theta = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)
    ys = cy + np.sin(theta)[:, None] * steps
    xs = cx + np.cos(theta)[:, None] * steps
    profile = ndimage.map_coordinates(smooth, [ys, xs], order=1, mode="nearest") - level
    above = profile > 0
    # the outermost step above the level on each ray, then linear interpolation to the crossing
    last = above.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
    if not above[np.arange(ANGLES), 0].all() or (last >= len(steps) - 1).any():
        raise ValueError("no closed outline around the object's centroid")
    rows = np.arange(ANGLES)
    inner, outer = profile[rows, last], profile[rows, last + 1]
    radii = steps[last] + 0.25 * inner / (inner - outer)
    return radii, (cy, cx)


def curvature_profile(radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed curvature (1/px) at each ray, and the arc length (px) each ray stands for."""
    k = np.arange(len(radii) // 2 + 1)
    spectrum = np.fft.rfft(radii) * np.exp(-((k / SMOOTHING) ** 4))
    r = np.fft.irfft(spectrum, len(radii))
    dr = np.fft.irfft(1j * k * spectrum, len(radii))
    ddr = np.fft.irfft(-(k**2) * spectrum, len(radii))
    speed = np.hypot(r, dr)  # ds / dθ
    kappa = (r**2 + 2 * dr**2 - r * ddr) / speed**3
    return kappa, speed * (2 * np.pi / len(radii))


@db.kernel(
    outputs={
        "curvature": db.Output(dims=("point",), shape=(None,), units="1/um"),
        "mean_curvature": db.Output(units="1/um"),
        "max_curvature": db.Output(units="1/um"),
        "perimeter": db.Output(units="um"),
        "area": db.Output(units="um^2"),
        "n_points": db.Output(dtype="int64"),
    }
)
def curvature(path, pixel_size=1.0):
    """Curvature statistics and profile of the object in the image at ``path``.

    Parameters
    ----------
    path
        A binary PGM image holding one bright object on a dark background.
    pixel_size
        Micrometres per pixel.

    Returns
    -------
    dict
        ``curvature`` (1/µm, every pixel of arc length, counter-clockwise from the
        ray at θ = 0), its mean absolute value ``mean_curvature`` and maximum
        ``max_curvature``, the ``perimeter`` (µm), the enclosed ``area`` (µm²) and
        ``n_points``, the length of the profile.
    """
    radii, _ = outline_radii(read_pgm(path))
    kappa, ds = curvature_profile(radii)
    perimeter = float(ds.sum())
    # resampled every pixel of arc length along the outline
    n_points = max(3, round(perimeter))
    s = np.concatenate([[0.0], np.cumsum(ds)])
    at = np.linspace(0, perimeter, n_points, endpoint=False)
    profile = np.interp(at, s, np.append(kappa, kappa[0])) / pixel_size
    return {
        "curvature": profile,
        "mean_curvature": float(np.mean(np.abs(profile))),
        "max_curvature": float(profile.max()),
        "perimeter": perimeter * pixel_size,
        "area": float(0.5 * np.sum(radii**2) * 2 * np.pi / len(radii)) * pixel_size**2,
        "n_points": n_points,
    }
