"""Procedurally drawn shapes with compositional captions: a dataset that exists on any machine.

The demo has to show CLIP learning on a 2-core CPU in minutes, and score zero-shot on labelled
classes, without downloading anything. A coloured shape on a plain or textured background is
learnable by a tiny model, and every caption names the colour and the shape, so the prompt
"a {colour} {shape}." is a fair zero-shot classifier.

Every sample is a pure function of (seed, index): shards can be generated in parallel, in any
chunking, and come out byte-identical.

The procedural world with headroom (issue 24) adds two things, both off by default so that the
original world stays byte-identical: *styles* that act as domains (raylpclip.data.shape_drawing:
plain, outline, pixel, noisy, shadowed; a style left out of training is an OOD test split), and
"subset" captions that always name colour and shape but each other attribute only with probability
`mention_p` (raylpclip.data.shape_captions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

from raylpclip.data.sample import Sample
from raylpclip.data.shape_captions import CAPTION_MODES, mentioned_attributes, subset_caption, template_caption
from raylpclip.data.shape_drawing import POSITION_XY, RGB, SHAPES, SIZE_RADIUS, STYLES, TEXTURES, render

LABEL_BY = ("colour_shape", "shape", "colour")
MISMATCH_BLOCK = 100  # mismatched captions are counted exactly within blocks of this many indices
STYLE_STREAM, CAPTION_STREAM = 0x7374, 0x6361  # generators of their own: the scene's draws never move


@dataclass
class SyntheticSpec:
    """What can appear in an image. Each attribute (and the style) is drawn uniformly, except that a
    background equal to the shape's colour is redrawn. `caption_mode`: "templates" (the original) or
    "subset" (colour and shape always, size/position/background/style each with `mention_p`)."""

    image_size: int = 64
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "large")
    positions: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
    backgrounds: tuple[str, ...] = ("white", "gray", "black", "striped", "dotted")
    label_by: str = "colour_shape"
    styles: tuple[str, ...] = ("plain",)
    caption_mode: str = "templates"
    mention_p: float = 0.7


def is_original(spec: SyntheticSpec) -> bool:
    """Whether `spec` draws the original world (plain style, template captions), whose samples and
    metadata are kept exactly as they were; every other world's metadata also names the `style`."""
    return tuple(spec.styles) == ("plain",) and spec.caption_mode == "templates"


def class_names(spec: SyntheticSpec) -> list[str]:
    """Class names indexed by `meta["label"]`; 36 "{colour} {shape}" names by default."""
    if spec.label_by == "colour_shape":
        return [f"{colour} {shape}" for colour in spec.colours for shape in spec.shapes]
    if spec.label_by == "shape":
        return list(spec.shapes)
    if spec.label_by == "colour":
        return list(spec.colours)
    raise ValueError(f"label_by={spec.label_by!r}; expected one of {LABEL_BY}")


def zeroshot_templates() -> list[str]:
    """Prompt templates ("{}" is the class name) that describe these drawings."""
    return ["a {}.", "a drawing of a {}.", "a {} on a plain background.", "a picture of a {}.",
            "a simple {} shape.", "there is a {} in the image."]


def _check_spec(spec: SyntheticSpec, *, mismatch_fraction: float) -> None:
    """Fail before drawing anything on a name the renderer cannot draw."""
    known = {"shapes": SHAPES, "colours": tuple(RGB), "sizes": tuple(SIZE_RADIUS),
             "positions": tuple(POSITION_XY), "backgrounds": tuple(RGB) + tuple(TEXTURES), "styles": STYLES}
    for field, allowed in known.items():
        unknown = [v for v in getattr(spec, field) if v not in allowed]
        if unknown or not getattr(spec, field):
            raise ValueError(f"SyntheticSpec.{field} has {unknown or 'no values'}; expected values from {allowed}")
    class_names(spec)  # validates label_by
    if spec.caption_mode not in CAPTION_MODES:
        raise ValueError(f"SyntheticSpec.caption_mode={spec.caption_mode!r}; expected one of {CAPTION_MODES}")
    if not 0.0 <= spec.mention_p <= 1.0:
        raise ValueError(f"SyntheticSpec.mention_p={spec.mention_p}; expected a probability in [0, 1]")
    if not 0.0 <= mismatch_fraction <= 1.0:
        raise ValueError(f"mismatch_fraction={mismatch_fraction}; expected a value in [0, 1]")
    if mismatch_fraction > 0 and len(spec.colours) * len(spec.shapes) < 2:
        raise ValueError("mismatch_fraction > 0 needs at least two colour/shape pairs to swap captions between")


def _label_name(attrs: dict[str, str], spec: SyntheticSpec) -> str:
    if spec.label_by == "colour_shape":
        return f"{attrs['colour']} {attrs['shape']}"
    return attrs["shape"] if spec.label_by == "shape" else attrs["colour"]


def _draw_attributes(rng: np.random.Generator, spec: SyntheticSpec) -> dict[str, str]:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    attrs = {"shape": pick(spec.shapes), "colour": pick(spec.colours), "size": pick(spec.sizes),
             "position": pick(spec.positions), "background": pick(spec.backgrounds)}
    # A shape painted in its background's colour is invisible; such a pair is never drawn.
    if all(b == attrs["colour"] for b in spec.backgrounds):
        raise ValueError(f"every background equals colour {attrs['colour']!r}; nothing is drawable")
    while attrs["background"] == attrs["colour"]:
        attrs["background"] = pick(spec.backgrounds)
    return attrs


@lru_cache(maxsize=64)
def _mismatched_in_block(seed: int, block: int, fraction: float) -> frozenset[int]:
    """Indices of one block whose captions are swapped; blocks telescope to floor(n * fraction)."""
    count = math.floor((block + 1) * MISMATCH_BLOCK * fraction) - math.floor(block * MISMATCH_BLOCK * fraction)
    order = np.random.default_rng([seed, block, 0x6D69]).permutation(MISMATCH_BLOCK)
    return frozenset(int(block * MISMATCH_BLOCK + i) for i in order[:count])


def is_mismatched(index: int, *, seed: int, fraction: float) -> bool:
    """Whether sample `index` carries another sample's caption.

    Exactly floor(fraction * 100) of every 100 consecutive indices starting at a multiple of 100
    (so floor(fraction * n) of the first n when n is a multiple of 100), placed at random.
    """
    if fraction <= 0.0:
        return False
    return index in _mismatched_in_block(seed, index // MISMATCH_BLOCK, float(fraction))


@dataclass
class _Scene:
    attrs: dict[str, str]
    style: str
    caption: str
    mentioned: list[str]
    rng: np.random.Generator  # the sample's generator, positioned at the pixels' draws
    style_rng: np.random.Generator


def _scene(index: int, spec: SyntheticSpec, seed: int) -> _Scene:
    """What sample `index` shows and says. Draw order is fixed (attributes, template, pixels): a donor
    recomputes the first two. The template is drawn in every caption mode, so that a subset-caption
    world shows the very images of the template world."""
    rng = np.random.default_rng([seed, index])
    attrs = _draw_attributes(rng, spec)
    caption = template_caption(attrs, rng)
    style_rng = np.random.default_rng([seed, index, STYLE_STREAM])
    style = spec.styles[int(style_rng.integers(len(spec.styles)))] if len(spec.styles) > 1 else spec.styles[0]
    mentioned: list[str] = []
    if spec.caption_mode == "subset":
        caption_rng = np.random.default_rng([seed, index, CAPTION_STREAM])
        mentioned = mentioned_attributes(caption_rng, spec.mention_p)
        caption = subset_caption(attrs, style, mentioned, caption_rng)
    return _Scene(attrs, style, caption, mentioned, rng, style_rng)


def _donor(index: int, attrs: dict[str, str], *, spec: SyntheticSpec, seed: int, rng: np.random.Generator) -> _Scene:
    """Another sample whose colour or shape differs, so that taking its caption really is wrong."""
    while True:
        donor = int(rng.integers(2**31))
        if donor == index:
            continue
        scene = _scene(donor, spec, seed)
        if (scene.attrs["colour"], scene.attrs["shape"]) != (attrs["colour"], attrs["shape"]):
            return scene


def _sample(index: int, *, spec: SyntheticSpec, seed: int, mismatch_fraction: float) -> Sample:
    scene = _scene(index, spec, seed)
    jpg = render(scene.attrs, scene.rng, spec.image_size, style=scene.style, style_rng=scene.style_rng)
    caption, mentioned = scene.caption, scene.mentioned
    mismatched = is_mismatched(index, seed=seed, fraction=mismatch_fraction)
    if mismatched:
        donor = _donor(index, scene.attrs, spec=spec, seed=seed, rng=scene.rng)
        caption, mentioned = donor.caption, donor.mentioned
    label_name = _label_name(scene.attrs, spec)
    meta = {**scene.attrs, "label": class_names(spec).index(label_name), "label_name": label_name,
            "caption_mismatched": mismatched}
    if not is_original(spec):  # the original world's metadata stays as it was, byte for byte
        meta["style"] = scene.style
    if spec.caption_mode == "subset":
        meta["mentioned"] = mentioned  # the optional attributes the caption names (a donor's when mismatched)
    return Sample(key="", jpg=jpg, caption=caption, meta=meta)


def generate_samples(n: int, *, spec: SyntheticSpec, seed: int, start_index: int = 0,
                     mismatch_fraction: float = 0.0) -> Iterator[Sample]:
    """Yield samples start_index .. start_index + n - 1; each depends only on (seed, index).

    `mismatch_fraction` of the captions are replaced by a random other sample's caption (noisy
    correspondence); `meta["label"]` always stays the true label of the image.
    """
    _check_spec(spec, mismatch_fraction=mismatch_fraction)
    for index in range(start_index, start_index + n):
        yield _sample(index, spec=spec, seed=seed, mismatch_fraction=mismatch_fraction)


@dataclass(frozen=True)
class SyntheticRecipe:
    """Sample `index` of a world, as a picklable callable: Ray writer tasks draw their shards' samples
    themselves (raylpclip.data.sources.GeneratedItem) instead of receiving the pixels from the driver."""

    spec: SyntheticSpec
    seed: int
    mismatch_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_spec(self.spec, mismatch_fraction=self.mismatch_fraction)

    def __call__(self, index: int) -> Sample:
        return _sample(index, spec=self.spec, seed=self.seed, mismatch_fraction=self.mismatch_fraction)
