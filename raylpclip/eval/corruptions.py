"""Corrupted copies of images in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), in numpy + PIL.

Severity parameters are CIFAR-10-C's, from the authors' generator `make_cifar_c.py`
(github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py); each family's table cites it. The
reference needs skimage, scipy, OpenCV and ImageMagick; here every operation is re-derived in numpy/PIL
(HSV edits in closed form, filters as shift-and-add, zooms with Pillow, the elastic warp as a bilinear
gather), so outputs match the reference in kind and strength, not bit for bit. Left out: glass_blur (a
sequential pixel-swap loop), frost (needs the authors' frost photos) and spatter (Canny + distance
transforms).

This module is the registry and the entry point (`CORRUPTIONS`, `SEVERITIES`, `corrupt`, `corrupt_jpeg`);
the corruptions live by family in noise_corruptions, blur_corruptions, weather_corruptions and
digital_corruptions, on the shared primitives of image_filters.

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
from typing import Callable

import numpy as np
from PIL import Image

from raylpclip.data.transforms import decode_image
from raylpclip.eval.blur_corruptions import defocus_blur, gaussian_blur, motion_blur, zoom_blur
from raylpclip.eval.digital_corruptions import (brightness, contrast, elastic_transform, jpeg_compression, pixelate,
                                                saturate)
from raylpclip.eval.noise_corruptions import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from raylpclip.eval.weather_corruptions import fog, snow

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

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
