"""Noise corruptions in the style of CIFAR-10-C: gaussian, shot (Poisson), impulse (salt & pepper) and
speckle noise. Parameters cite the reference generator, make_cifar_c.py (see raylpclip.eval.corruptions)."""

from __future__ import annotations

import numpy as np

from raylpclip.eval.image_filters import to_float, to_uint8


def gaussian_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]  # make_cifar_c.py gaussian_noise
    x = to_float(img)
    return to_uint8(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma))


def shot_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = (500, 250, 100, 75, 50)[severity - 1]  # make_cifar_c.py shot_noise: Poisson(x * c) / c
    x = to_float(img)
    return to_uint8(rng.poisson(x * photons).astype(np.float32) / np.float32(photons))


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
    x = to_float(img)
    return to_uint8(x + x * rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma))
