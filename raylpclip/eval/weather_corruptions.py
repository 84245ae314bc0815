"""Weather corruptions in the style of CIFAR-10-C: fog (a plasma-fractal haze) and snow (zoomed,
thresholded, motion-blurred flakes). Parameters cite the reference generator, make_cifar_c.py (see
raylpclip.eval.corruptions). Frost and spatter are left out (see there)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from raylpclip.eval.image_filters import centre_zoom, line_blur, size_scale, to_float, to_uint8


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


def fog(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py fog: (haze strength, fractal decay); larger decay = smoother haze.
    strength, decay = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))[severity - 1]
    h, w = img.shape[:2]
    size = 1 << (max(h, w) - 1).bit_length()  # diamond-square needs a power of two; crop after
    haze = _plasma_fractal(size, decay, rng)[:h, :w, None].astype(np.float32)
    x = to_float(img)
    peak = x.max()
    # Rescale by peak / (peak + strength) so the output stays within the clean image's brightest level:
    # the haze washes contrast out instead of clipping everything to white.
    return to_uint8((x + np.float32(strength) * haze) * (peak / (peak + np.float32(strength))))


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
    s = size_scale(img)
    layer = rng.normal(mean, std, (h, w)).astype(np.float32)
    if zoom != 1.0:
        layer = np.asarray(centre_zoom(Image.fromarray(layer), zoom), dtype=np.float32)
    layer = np.where(layer < threshold, np.float32(0), np.clip(layer, 0, 1))[..., None]
    layer = line_blur(layer, radius * s, sigma * s, float(rng.uniform(-135.0, -45.0)))
    x = to_float(img)
    grey = 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]  # cv2.COLOR_RGB2GRAY weights
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return to_uint8(x + layer + layer[::-1, ::-1])
