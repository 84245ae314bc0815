"""Digital corruptions in the style of CIFAR-10-C: contrast, brightness, saturate (HSV edits in closed
form), pixelate, JPEG compression and the elastic transform. Parameters cite the reference generator,
make_cifar_c.py (see raylpclip.eval.corruptions)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from raylpclip.eval.image_filters import bilinear, gaussian_filter, to_float, to_uint8


def contrast(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]  # make_cifar_c.py contrast: towards per-channel means
    x = to_float(img)
    means = x.mean(axis=(0, 1), keepdims=True)
    return to_uint8((x - means) * np.float32(factor) + means)


def brightness(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]  # make_cifar_c.py brightness: HSV value + c
    x = to_float(img)
    # hsv2rgb is linear in V at fixed hue and saturation, so V -> min(V + c, 1) scales RGB by V' / V;
    # black (V = 0, saturation 0 by skimage's convention) becomes grey V'.
    v = x.max(axis=2, keepdims=True)
    v_new = np.minimum(v + np.float32(shift), 1.0)
    scaled = x * (v_new / np.maximum(v, np.float32(1e-12)))
    return to_uint8(np.where(v > 0, scaled, v_new))


def saturate(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # make_cifar_c.py saturate: HSV saturation * a + b. Severities 1-2 desaturate and 3-5 oversaturate,
    # so the distance from the clean image is not monotone in severity (as in CIFAR-10-C).
    gain, offset = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))[severity - 1]
    x = to_float(img)
    v = x.max(axis=2, keepdims=True)
    sat = np.where(v > 0, (v - x.min(axis=2, keepdims=True)) / np.maximum(v, np.float32(1e-12)), 0)
    sat_new = np.clip(sat * np.float32(gain) + np.float32(offset), 0, 1)
    # At fixed hue and value each channel is V - (V - c) * S' / S. Grey pixels have hue 0 (red) in
    # skimage, so an added offset tints them red: (V, V(1 - S'), V(1 - S')).
    coloured = v - (v - x) * (sat_new / np.maximum(sat, np.float32(1e-12)))
    grey = np.concatenate([v, v * (1 - sat_new), v * (1 - sat_new)], axis=2)
    return to_uint8(np.where(sat > 0, coloured, grey))


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
    field = gaussian_filter(field, sigma * size, truncate=3.0, mode="symmetric", axes=(1, 2))
    field *= np.float32(alpha * size)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    # The reference warps (bilinear, REFLECT_101) and then displaces (bilinear, scipy 'reflect'); composing
    # both into one lookup resamples once, which avoids a second round of interpolation blur.
    xd, yd = xs + field[0], ys + field[1]
    src_x = xd * inv[0, 0] + yd * inv[1, 0] + inv[2, 0]
    src_y = xd * inv[0, 1] + yd * inv[1, 1] + inv[2, 1]
    return to_uint8(bilinear(to_float(img), src_y, src_x))
