"""The context world's *contexts*: image operations that a caption can name ("a blurry grayscale photo of
a cat"), each strong enough to be seen at 32x32 (tests/unit/test_context_world.py holds every one to a
stated mean pixel change). raylpclip.data.context_world decides which images get which; `ContextEdit` is
the picklable edit a Ray writer task applies where the image is encoded (raylpclip.data.image_encoding).

Strengths are relative to the image's size, so that a context means the same on a 32 px CIFAR image
as on a 256 px photo. A horizontal flip is not a context: nobody could see it, so naming it would only
be caption noise; upside-down (a vertical flip) is.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

# The canonical order is the order of application: geometry first (a close-up of the noise would
# enlarge the grain), then the drawing style and colour, then light, then the camera's faults.
CONTEXTS = ("close-up", "upside-down", "sketch", "grayscale", "warm", "dark", "bright", "blurry",
            "pixelated", "noisy")
# Pairs that undo or contradict each other ("a dark, bright photo"; a reddish black-and-white photo is
# no longer black and white; a sketch is already gray): never applied together.
EXCLUSIVE = (frozenset({"dark", "bright"}), frozenset({"grayscale", "warm"}), frozenset({"grayscale", "sketch"}))
CLOSE_UP_KEEP = 0.6  # the central 60% of each side, enlarged back: objects at 1.7x
PIXEL_FACTOR = 4  # 32 px -> 8 px blocks of 4
NOISE_SIGMA = 40.0  # of 255


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.float32)


def _image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")


def _close_up(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * CLOSE_UP_KEEP)), max(1, round(h * CLOSE_UP_KEEP))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def _upside_down(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def _sketch(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Dark edge lines on white paper: the gradient magnitude of a lightly smoothed gray image, scaled
    by its own 90th percentile so that flat and busy images both get lines."""
    gray = np.asarray(img.convert("L").filter(ImageFilter.GaussianBlur(0.6)), np.float32)
    gy, gx = np.gradient(gray)
    magnitude = np.hypot(gx, gy)
    lines = np.clip(magnitude / (np.percentile(magnitude, 90) + 1e-6), 0.0, 1.0)
    paper = 250.0 - 220.0 * lines
    return _image(np.repeat(paper[..., None], 3, axis=2))


def _grayscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.convert("L").convert("RGB")


def _warm(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A strong red-orange cast: red lifted, blue cut, as an old print or a sunset light."""
    return _image(_array(img) * np.array([1.1, 0.92, 0.6]) + np.array([45.0, 12.0, 0.0]))


def _dark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _image(_array(img) * 0.4)


def _bright(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Over-exposed: every pixel moved 60% of the way to white (washed out, highlights kept)."""
    return _image(255.0 - (255.0 - _array(img)) * 0.4)


def _blurry(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(max(1.5, min(img.size) / 16)))  # radius 2 at 32 px


def _pixelated(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    low = (max(1, w // PIXEL_FACTOR), max(1, h // PIXEL_FACTOR))
    return img.resize(low, Image.BOX).resize((w, h), Image.NEAREST)


def _noisy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = _array(img)
    return _image(arr + rng.normal(0.0, NOISE_SIGMA, size=arr.shape))


OPERATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "close-up": _close_up, "upside-down": _upside_down, "sketch": _sketch, "grayscale": _grayscale,
    "warm": _warm, "dark": _dark, "bright": _bright, "blurry": _blurry, "pixelated": _pixelated, "noisy": _noisy,
}


def check_contexts(names: Sequence[str], *, key: str = "contexts") -> tuple[str, ...]:
    """`names` checked (known, each once) and put in the canonical order; errors name `key`."""
    if isinstance(names, str):
        raise ValueError(f"{key}={names!r}: expected a list of context names, not one string")
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise ValueError(f"{key} has unknown contexts {unknown}; expected names from {list(CONTEXTS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{key} names {repeated} more than once; expected each context at most once")
    return tuple(n for n in CONTEXTS if n in names)


def compatible(names: Sequence[str]) -> bool:
    """Whether these contexts may be applied together (no EXCLUSIVE pair among them)."""
    chosen = set(names)
    return not any(pair <= chosen for pair in EXCLUSIVE)


def largest_compatible(names: Sequence[str]) -> int:
    """How many of `names` at most can be applied to one image together (10 names: 1,024 subsets)."""
    for k in range(len(names), 0, -1):
        if any(compatible(c) for c in combinations(names, k)):
            return k
    return 0


@dataclass(frozen=True)
class ContextEdit:
    """Apply `contexts` in the canonical order; `seed` fixes the only random one (the noise), so an
    image's edit is a pure function of (seed, contexts). Picklable: it travels inside a SourceItem."""

    contexts: tuple[str, ...]
    seed: int

    def __post_init__(self) -> None:
        if check_contexts(self.contexts) != tuple(self.contexts):
            raise ValueError(f"ContextEdit.contexts={self.contexts}; expected the canonical order {CONTEXTS}")
        if not compatible(self.contexts):
            raise ValueError(f"ContextEdit.contexts={self.contexts} holds an exclusive pair {EXCLUSIVE}")

    def __call__(self, image: Image.Image) -> Image.Image:
        rng = np.random.default_rng(self.seed)
        image = image.convert("RGB")
        for name in self.contexts:
            image = OPERATIONS[name](image, rng)
        return image
