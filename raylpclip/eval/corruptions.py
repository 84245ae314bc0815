"""Corrupted copies of images in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), in numpy + PIL.

Severity parameters are CIFAR-10-C's, from the authors' generator `make_cifar_c.py`
(github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py); each table below cites it. The
reference needs skimage, scipy, OpenCV and ImageMagick; here every operation is re-derived in numpy/PIL
(HSV edits in closed form, filters as shift-and-add, zooms with Pillow, the elastic warp as a bilinear
gather), so outputs match
the reference in kind and strength, not bit for bit. Left out: glass_blur (a sequential pixel-swap loop),
frost (needs the authors' frost photos) and spatter (Canny + distance transforms).

Sizes: the parameters are for 32x32. Intensity parameters (noise levels, contrast, brightness,
saturation, JPEG quality, pixelation ratio, zoom factors) do not depend on size; spatial ones (blur
radii and sigmas, motion and snow streak lengths) scale with min(H, W) / 32, so an upsampled CIFAR
image receives the same relative corruption. Elastic parameters are already fractions of the size.

Determinism: the random stream of each call is seeded from blake2b(name, severity, key), never from
Python's salted hash(), so (image, name, severity, key) gives the same bytes in every process and run.
Pixel arithmetic is element-wise numpy in a fixed order or Pillow's C loops, never BLAS, FFT or
threaded reductions, so results cannot depend on thread counts. Across machines, identical bytes need
the same numpy and Pillow builds (numpy does not promise Generator streams across versions, and SIMD
variants of exp may differ in the last bit).
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Callable

import numpy as np
from PIL import Image

from raylpclip.data.transforms import decode_image

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 32  # CIFAR-10-C's parameters are tuned for 32x32 images

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------- helpers


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) * np.float32(1.0 / 255.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # Round rather than truncate (the reference's np.uint8 cast floors, darkening every image by half a level).
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _scale(img: np.ndarray) -> float:
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


def _gaussian_filter(x: np.ndarray, sigma: float, *, truncate: float, mode: str, axes: tuple[int, int]) -> np.ndarray:
    """Separable Gaussian blur over `axes` (skimage/scipy convention: radius = int(truncate * sigma + 0.5))."""
    taps = _gaussian_taps(sigma, int(truncate * sigma + 0.5))
    return _filter_axis(_filter_axis(x, taps, axes[0], mode), taps, axes[1], mode)


def _filter2d(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
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


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample HxWxC `x` at float (rows, cols) (H', W') with bilinear weights, mirrored outside."""
    h, w = x.shape[:2]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0).astype(np.float32)[..., None], (cols - c0).astype(np.float32)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    ra, rb, ca, cb = _reflect101(r0, h), _reflect101(r0 + 1, h), _reflect101(c0, w), _reflect101(c0 + 1, w)
    top = x[ra, ca] * (1 - fc) + x[ra, cb] * fc
    bottom = x[rb, ca] * (1 - fc) + x[rb, cb] * fc
    return top * (1 - fr) + bottom * fr


def _line_blur(x: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
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


def _zoom(img: Image.Image, factor: float) -> Image.Image:
    """Enlarge about the centre by `factor`, keeping the size (the reference's clipped_zoom): PIL's
    bilinear resize of a fractional centre box, in C."""
    w, h = img.size
    half_w, half_h = w / (2.0 * factor), h / (2.0 * factor)
    box = (w / 2.0 - half_w, h / 2.0 - half_h, w / 2.0 + half_w, h / 2.0 + half_h)
    return img.resize((w, h), Image.BILINEAR, box=box)


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """size x size (power of two) diamond-square heightmap in [0, 1], periodic like the reference's.

    The reference multiplies its uniform(-wibble, wibble) draws by wibble again, so the noise amplitude
    is wibble**2 and falls by decay**2 per octave; kept, because it sets how smooth the fog looks."""
    m = np.zeros((size, size), dtype=np.float64)
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = m[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        m[half::step, half::step] = square / 4 + rng.uniform(-wibble, wibble, square.shape) * wibble
        centres = m[half::step, half::step]
        # Points on horizontal edges: corners left/right, centres above/below (wrapping around).
        top = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=0)
        m[0::step, half::step] = top / 4 + rng.uniform(-wibble, wibble, top.shape) * wibble
        # Points on vertical edges: corners above/below, centres left/right.
        left = corners + np.roll(corners, -1, axis=0) + centres + np.roll(centres, 1, axis=1)
        m[half::step, 0::step] = left / 4 + rng.uniform(-wibble, wibble, left.shape) * wibble
        step, wibble = half, wibble / decay
    m -= m.min()
    return m / m.max()


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


# ---------------------------------------------------------------- noise


def gaussian_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]  # make_cifar_c.py gaussian_noise
    x = _to_float(img)
    return _to_uint8(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma))


def shot_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = (500, 250, 100, 75, 50)[severity - 1]  # make_cifar_c.py shot_noise: Poisson(x * c) / c
    x = _to_float(img)
    return _to_uint8(rng.poisson(x * photons).astype(np.float32) / np.float32(photons))


def impulse_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]  # make_cifar_c.py impulse_noise (skimage 's&p')
    # Like skimage's salt & pepper, each channel value is hit independently, half to 0 and half to 255.
    u = rng.random((2,) + img.shape, dtype=np.float32)
    out = img.copy()
    hit = u[0] < amount
    out[hit & (u[1] < 0.5)] = 255
    out[hit & (u[1] >= 0.5)] = 0
    return out


def speckle_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.06, 0.10, 0.12, 0.16, 0.20)[severity - 1]  # make_cifar_c.py speckle_noise: x + x * N(0, c)
    x = _to_float(img)
    return _to_uint8(x + x * rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma))


# ---------------------------------------------------------------- blur


def gaussian_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]  # make_cifar_c.py gaussian_blur (skimage, mode 'nearest')
    x = _gaussian_filter(_to_float(img), sigma * _scale(img), truncate=4.0, mode="edge", axes=(0, 1))
    return _to_uint8(x)


def defocus_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py defocus_blur: (disk radius, anti-alias sigma); cv2.filter2D borders are REFLECT_101.
    radius, alias_blur = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    kernel = _sparse_taps(_magnify_kernel(_disk_kernel(radius, alias_blur), _scale(img)))
    return _to_uint8(_filter2d(_to_float(img), kernel, mode="reflect"))


def motion_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py motion_blur: ImageMagick motion blur (radius, sigma), angle ~ U(-45, 45) degrees.
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[severity - 1]
    s = _scale(img)
    angle = float(rng.uniform(-45.0, 45.0))
    return _to_uint8(_line_blur(_to_float(img), radius * s, sigma * s, angle))


def zoom_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py zoom_blur: mean of the image and its zooms by 1.00, 1.01, ... up to this maximum.
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    factors = np.arange(1.0, top, 0.01)
    pil = Image.fromarray(img)
    # Each zoom is rounded to uint8 (PIL's RGB resize); averaging 7-27 of them shrinks that rounding
    # error well below one level, and the C resize is ~20x faster than a numpy gather per factor.
    total = img.astype(np.uint32)
    for factor in factors:
        total += np.asarray(_zoom(pil, float(factor)), dtype=np.uint8)
    return _to_uint8(total.astype(np.float32) / np.float32(255 * (len(factors) + 1)))


# ---------------------------------------------------------------- weather


def fog(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py fog: (haze strength, fractal decay); larger decay = smoother haze.
    strength, decay = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))[severity - 1]
    h, w = img.shape[:2]
    size = 1 << (max(h, w) - 1).bit_length()  # diamond-square needs a power of two; crop after
    haze = _plasma_fractal(size, decay, rng)[:h, :w, None].astype(np.float32)
    x = _to_float(img)
    peak = x.max()
    # Rescale by peak / (peak + strength) so the output stays within the clean image's brightest level:
    # the haze washes contrast out instead of clipping everything to white.
    return _to_uint8((x + np.float32(strength) * haze) * (peak / (peak + np.float32(strength))))


def snow(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py snow: (flake mean, flake std, flake zoom, threshold, streak radius, streak sigma,
    # image weight); the reference zooms a N(mean, std) layer, keeps values over the threshold as flakes,
    # motion-blurs them into streaks at U(-135, -45) degrees, and washes the image towards white.
    mean, std, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10, 4, 0.90),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.90),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.80),
    )[severity - 1]
    h, w = img.shape[:2]
    s = _scale(img)
    layer = rng.normal(mean, std, (h, w)).astype(np.float32)
    if zoom != 1.0:
        layer = np.asarray(_zoom(Image.fromarray(layer), zoom), dtype=np.float32)
    layer = np.where(layer < threshold, np.float32(0), np.clip(layer, 0, 1))[..., None]
    layer = _line_blur(layer, radius * s, sigma * s, float(rng.uniform(-135.0, -45.0)))
    x = _to_float(img)
    grey = 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]  # cv2.COLOR_RGB2GRAY weights
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return _to_uint8(x + layer + layer[::-1, ::-1])


# ---------------------------------------------------------------- digital


def contrast(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]  # make_cifar_c.py contrast: towards per-channel means
    x = _to_float(img)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * np.float32(factor) + means)


def brightness(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]  # make_cifar_c.py brightness: HSV value + c
    x = _to_float(img)
    # hsv2rgb is linear in V at fixed hue and saturation, so V -> min(V + c, 1) scales RGB by V' / V;
    # black (V = 0, saturation 0 by skimage's convention) becomes grey V'.
    v = x.max(axis=2, keepdims=True)
    v_new = np.minimum(v + np.float32(shift), 1.0)
    scaled = x * (v_new / np.maximum(v, np.float32(1e-12)))
    return _to_uint8(np.where(v > 0, scaled, v_new))


def saturate(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py saturate: HSV saturation * a + b. Severities 1-2 desaturate and 3-5 oversaturate,
    # so the distance from the clean image is not monotone in severity (as in CIFAR-10-C).
    gain, offset = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))[severity - 1]
    x = _to_float(img)
    v = x.max(axis=2, keepdims=True)
    sat = np.where(v > 0, (v - x.min(axis=2, keepdims=True)) / np.maximum(v, np.float32(1e-12)), 0)
    sat_new = np.clip(sat * np.float32(gain) + np.float32(offset), 0, 1)
    # At fixed hue and value each channel is V - (V - c) * S' / S. Grey pixels have hue 0 (red) in
    # skimage, so an added offset tints them red: (V, V(1 - S'), V(1 - S')).
    coloured = v - (v - x) * (sat_new / np.maximum(sat, np.float32(1e-12)))
    grey = np.concatenate([v, v * (1 - sat_new), v * (1 - sat_new)], axis=2)
    return _to_uint8(np.where(sat > 0, coloured, grey))


def pixelate(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    ratio = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]  # make_cifar_c.py pixelate: BOX down, BOX up
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, int(w * ratio)), max(1, int(h * ratio))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.uint8).copy()


def jpeg_compression(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (80, 65, 58, 50, 40)[severity - 1]  # make_cifar_c.py jpeg_compression (PIL, default 4:2:0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"), dtype=np.uint8).copy()


def elastic_transform(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py elastic_transform, as fractions of the image size: (displacement alpha, its smoothing
    # sigma, affine jitter of three anchor points). Severity 1 is a pure affine jitter.
    alpha, sigma, jitter = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[severity - 1]
    h, w = img.shape[:2]
    size = min(h, w)
    centre = np.array([w // 2, h // 2], dtype=np.float64)  # (x, y)
    side = size // 3
    src = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + rng.uniform(-jitter * size, jitter * size, size=src.shape)
    # The output pixel p shows the input at A^-1 p, with A the affine map src -> dst; solving the
    # inverse directly (dst -> src) avoids inverting a matrix.
    inv = np.linalg.solve(np.hstack([dst, np.ones((3, 1))]), src)  # (3, 2): [x y 1] @ inv
    field = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    field = _gaussian_filter(field, sigma * size, truncate=3.0, mode="symmetric", axes=(1, 2))
    field *= np.float32(alpha * size)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    # The reference warps (bilinear, REFLECT_101) and then displaces (bilinear, scipy 'reflect'); composing
    # both into one lookup resamples once, which avoids a second round of interpolation blur.
    xd, yd = xs + field[0], ys + field[1]
    src_x = xd * inv[0, 0] + yd * inv[1, 0] + inv[2, 0]
    src_y = xd * inv[0, 1] + yd * inv[1, 1] + inv[2, 1]
    return _to_uint8(_bilinear(_to_float(img), src_y, src_x))


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "snow": snow,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "elastic_transform": elastic_transform,
}


# ---------------------------------------------------------------- public entry points


def corruption_rng(name: str, severity: int, key: str) -> np.random.Generator:
    """The random stream of one (corruption, severity, sample key). blake2b is stable across processes and
    machines, unlike hash(); name and severity come first and contain no '|', so the encoding is unambiguous."""
    digest = hashlib.blake2b(f"{name}|{severity}|{key}".encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(sorted(CORRUPTIONS))}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int, *, key: str) -> np.ndarray:
    """uint8 (H, W, 3) -> a corrupted uint8 (H, W, 3) copy; the input is not modified.

    `key` identifies the sample (e.g. its shard key): the same (image, name, severity, key) always gives
    the same bytes, and different keys give independent noise."""
    _check(name, severity)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"corrupt expects a uint8 (H, W, 3) array, got {got}")
    out = CORRUPTIONS[name](np.ascontiguousarray(image), int(severity), corruption_rng(name, int(severity), key))
    return np.ascontiguousarray(out, dtype=np.uint8)


def corrupt_jpeg(jpg: bytes, name: str, severity: int, *, key: str, quality: int = 95) -> bytes:
    """Encoded image bytes (a shard row's jpg) -> JPEG bytes of the corrupted image.

    Re-encoding uses 4:4:4 chroma so the shard copy adds as little as possible on top of the corruption
    (jpeg_compression's own 4:2:0 loss is already in the pixels). Undecodable bytes raise ValueError."""
    _check(name, severity)
    pixels = np.asarray(decode_image(jpg), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(corrupt(pixels, name, severity, key=key)).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
