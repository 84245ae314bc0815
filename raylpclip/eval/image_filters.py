"""The numpy/PIL image primitives the corruption families share (raylpclip.eval.corruptions).

Filters are shift-and-add in a fixed order and resampling is Pillow's C code or an explicit bilinear
gather, never BLAS, FFT or threaded reductions: that is what makes every corruption give the same bytes
whatever the thread count (see the determinism note in raylpclip.eval.corruptions).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

REFERENCE_SIZE = 32  # CIFAR-10-C's parameters are tuned for 32x32 images


def to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) * np.float32(1.0 / 255.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    # Round rather than truncate (the reference's np.uint8 cast floors, darkening every image by half a level).
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def size_scale(img: np.ndarray) -> float:
    return min(img.shape[0], img.shape[1]) / REFERENCE_SIZE


def _gaussian_taps(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian weights at offsets -radius..radius."""
    if sigma <= 0:
        return np.ones(1, dtype=np.float32)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_axis(x: np.ndarray, taps: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Correlate `x` along `axis` with centred `taps`, padding with np.pad `mode`. Shift-and-add keeps the
    float summation order fixed (a BLAS or FFT path could vary with threads or CPU)."""
    r = len(taps) // 2
    if r == 0:
        return x * taps[0]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode=mode)
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i, w in enumerate(taps):
        out += w * _slice_axis(padded, axis, i, i + n)
    return out


def _slice_axis(x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def gaussian_filter(x: np.ndarray, sigma: float, *, truncate: float, mode: str, axes: tuple[int, int]) -> np.ndarray:
    """Separable Gaussian blur over `axes` (skimage/scipy convention: radius = int(truncate * sigma + 0.5))."""
    taps = _gaussian_taps(sigma, int(truncate * sigma + 0.5))
    return _filter_axis(_filter_axis(x, taps, axes[0], mode), taps, axes[1], mode)


def filter2d(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Correlate HxWxC `x` with a (2r+1)x(2r+1) kernel; zero taps are skipped."""
    r = kernel.shape[0] // 2
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode=mode)
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for (dy, dx), weight in np.ndenumerate(kernel):
        if weight != 0:
            out += weight * padded[dy : dy + h, dx : dx + w]
    return out


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Fold integer indices into [0, n) by mirroring about the edge pixel (OpenCV BORDER_REFLECT_101,
    numpy 'reflect'), for any distance outside."""
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * n - 2)
    return np.where(i < n, i, 2 * n - 2 - i)


def bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample HxWxC `x` at float (rows, cols) (H', W') with bilinear weights, mirrored outside."""
    h, w = x.shape[:2]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0).astype(np.float32)[..., None], (cols - c0).astype(np.float32)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    ra, rb, ca, cb = _reflect101(r0, h), _reflect101(r0 + 1, h), _reflect101(c0, w), _reflect101(c0 + 1, w)
    top = x[ra, ca] * (1 - fc) + x[ra, cb] * fc
    bottom = x[rb, ca] * (1 - fc) + x[rb, cb] * fc
    return top * (1 - fr) + bottom * fr


def line_blur(x: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage (used by the reference through Wand): a one-sided half-Gaussian of
    2*ceil(radius)+1 taps along `angle_deg`, offsets rounded to whole pixels, edge pixels repeated."""
    width = 2 * math.ceil(radius) + 1
    theta = math.radians(angle_deg)
    weights: dict[tuple[int, int], float] = {}
    for i in range(width):
        offset = (math.ceil(i * math.sin(theta) - 0.5), math.ceil(i * math.cos(theta) - 0.5))  # (dy, dx)
        # Rounding maps some taps to the same pixel: merge them so each shift is added once.
        weights[offset] = weights.get(offset, 0.0) + math.exp(-(i * i) / (2.0 * sigma * sigma))
    total = sum(weights.values())
    p = max(max(abs(dy), abs(dx)) for dy, dx in weights)
    pad = ((p, p), (p, p)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x, pad, mode="edge")
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for (dy, dx), wt in weights.items():
        out += np.float32(wt / total) * padded[p + dy : p + dy + h, p + dx : p + dx + w]
    return out


def centre_zoom(img: Image.Image, factor: float) -> Image.Image:
    """Enlarge about the centre by `factor`, keeping the size (the reference's clipped_zoom): PIL's
    bilinear resize of a fractional centre box, in C."""
    w, h = img.size
    half_w, half_h = w / (2.0 * factor), h / (2.0 * factor)
    box = (w / 2.0 - half_w, h / 2.0 - half_h, w / 2.0 + half_w, h / 2.0 + half_h)
    return img.resize((w, h), Image.BILINEAR, box=box)

