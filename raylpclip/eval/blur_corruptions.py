"""Blur corruptions in the style of CIFAR-10-C: gaussian, defocus (disk), motion and zoom blur. Parameters
cite the reference generator, make_cifar_c.py (see raylpclip.eval.corruptions); spatial ones scale with
the image size."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from raylpclip.eval.image_filters import (centre_zoom, filter2d, gaussian_filter, line_blur, size_scale, to_float,
                                          to_uint8)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's 32 px defocus kernel: a normalised binary disk x^2 + y^2 <= radius^2, anti-aliased
    by a 3x3 Gaussian of sigma `alias_blur` (cv2.GaussianBlur, ksize 3)."""
    n = math.ceil(radius) + 1  # one pixel of margin so the 3x3 smoothing loses no mass
    t = np.arange(-n, n + 1, dtype=np.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius * radius).astype(np.float64)
    g = np.exp(-0.5 * (np.arange(-1, 2) / alias_blur) ** 2)
    g /= g.sum()
    padded = np.pad(disk / disk.sum(), 1)
    rows = sum(g[i] * padded[i : i + 2 * n + 1, :] for i in range(3))
    return sum(g[i] * rows[:, i : i + 2 * n + 1] for i in range(3))


def _magnify_kernel(kernel: np.ndarray, scale: float) -> np.ndarray:
    """Resample a centred 2-D kernel `scale` times larger (bilinear, zero outside), renormalised.

    Used instead of scaling the disk radius: a binary disk of radius 0.5 is one pixel but of radius 1.0 a
    plus sign, so scaled radii would make the blur jump and break its ordering across severities."""
    if scale == 1.0:
        return kernel
    half = kernel.shape[0] // 2
    n = max(0, math.ceil(half * scale))
    pos = np.arange(-n, n + 1) / scale + half  # output taps in the reference kernel's index space
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    m = np.zeros((2 * n + 1, kernel.shape[0]))
    for col, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (col >= 0) & (col < kernel.shape[0])
        m[np.nonzero(ok)[0], col[ok]] += weight[ok]
    out = np.einsum("ai,ij,bj->ab", m, kernel, m)  # einsum without optimize: no BLAS, fixed order
    return out / out.sum()


def _sparse_taps(kernel: np.ndarray) -> np.ndarray:
    """float32 kernel with taps under 1e-4 of the peak zeroed (each moves an output by < 0.03 levels
    and only costs a shifted add), renormalised."""
    kernel = np.where(kernel < 1e-4 * kernel.max(), 0.0, kernel)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]  # make_cifar_c.py gaussian_blur (skimage, mode 'nearest')
    x = gaussian_filter(to_float(img), sigma * size_scale(img), truncate=4.0, mode="edge", axes=(0, 1))
    return to_uint8(x)


def defocus_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py defocus_blur: (disk radius, anti-alias sigma); cv2.filter2D borders are REFLECT_101.
    radius, alias_blur = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    kernel = _sparse_taps(_magnify_kernel(_disk_kernel(radius, alias_blur), size_scale(img)))
    return to_uint8(filter2d(to_float(img), kernel, mode="reflect"))


def motion_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py motion_blur: ImageMagick motion blur (radius, sigma), angle ~ U(-45, 45) degrees.
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[severity - 1]
    s = size_scale(img)
    angle = float(rng.uniform(-45.0, 45.0))
    return to_uint8(line_blur(to_float(img), radius * s, sigma * s, angle))


def zoom_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py zoom_blur: mean of the image and its zooms by 1.00, 1.01, ... up to this maximum.
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    factors = np.arange(1.0, top, 0.01)
    pil = Image.fromarray(img)
    # Each zoom is rounded to uint8 (PIL's RGB resize); averaging 7-27 of them shrinks that rounding
    # error well below one level, and the C resize is ~20x faster than a numpy gather per factor.
    total = img.astype(np.uint32)
    for factor in factors:
        total += np.asarray(centre_zoom(pil, float(factor)), dtype=np.uint8)
    return to_uint8(total.astype(np.float32) / np.float32(255 * (len(factors) + 1)))
