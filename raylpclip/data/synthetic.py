"""Procedurally drawn shapes with compositional captions: a dataset that exists on any machine.

The demo has to show CLIP learning on a 2-core CPU in minutes, and score zero-shot on labelled
classes, without downloading anything. A coloured shape on a plain or textured background is
learnable by a tiny model, and every caption names the colour and the shape, so the prompt
"a {colour} {shape}." is a fair zero-shot classifier.

Every sample is a pure function of (seed, index): shards can be generated in parallel, in any
chunking, and come out byte-identical.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from raylpclip.data.sample import Sample

LABEL_BY = ("colour_shape", "shape", "colour")

# Far apart in RGB so a little jitter and JPEG never make two colours look alike.
RGB = {
    "red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 220), "yellow": (235, 215, 40),
    "purple": (135, 45, 175), "orange": (245, 135, 25), "white": (245, 245, 245),
    "gray": (128, 128, 128), "black": (20, 20, 20),
}
TEXTURES = {"striped": ((230, 230, 230), (165, 165, 165)), "dotted": ((232, 232, 232), (140, 140, 140))}

SIZE_RADIUS = {"small": 0.13, "large": 0.23}  # shape radius as a fraction of the image side
POSITION_XY = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
               "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}

# Templates vary the phrasing and which attributes appear; all name colour and shape.
CAPTION_TEMPLATES = (
    "{a_size} {colour} {shape} on a {background} background",
    "{a_size} {colour} {shape} {pos_in}",
    "{colour} {shape}, {size}, {position}, {background} background",
    "there is {a_colour} {shape} {pos_at}",
    "{a_colour} {shape}",
    "the {shape} is {colour} and {size}",
    "a picture of {a_size} {colour} {shape} {pos_in} on a {background} background",
    "{a_colour} {shape} drawn on a {background} background",
    "{size} {colour} {shape} {pos_at}",
)
MISMATCH_BLOCK = 100  # mismatched captions are counted exactly within blocks of this many indices
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")


@dataclass
class SyntheticSpec:
    """What can appear in an image. Each attribute is drawn uniformly, except that a background
    equal to the shape's colour is redrawn."""

    image_size: int = 64
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "large")
    positions: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
    backgrounds: tuple[str, ...] = ("white", "gray", "black", "striped", "dotted")
    label_by: str = "colour_shape"


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
             "positions": tuple(POSITION_XY), "backgrounds": tuple(RGB) + tuple(TEXTURES)}
    for field, allowed in known.items():
        unknown = [v for v in getattr(spec, field) if v not in allowed]
        if unknown or not getattr(spec, field):
            raise ValueError(f"SyntheticSpec.{field} has {unknown or 'no values'}; expected values from {allowed}")
    class_names(spec)  # validates label_by
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


def _with_article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _caption(attrs: dict[str, str], rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    position = attrs["position"]
    return template.format(
        **attrs, a_size=_with_article(attrs["size"]), a_colour=_with_article(attrs["colour"]),
        pos_in="in the center" if position == "center" else f"in the {position} corner",
        pos_at="at the center" if position == "center" else f"at the {position}")


def _background(name: str, rng: np.random.Generator, size: int) -> Image.Image:
    if name not in TEXTURES:
        rgb = RGB.get(name)
        if rgb is None:
            raise ValueError(f"background {name!r}; expected a colour in {sorted(RGB)} or {sorted(TEXTURES)}")
        return Image.new("RGB", (size, size), rgb)
    # Both textures are sums of a row term and a column term: 1-D maths, broadcast once.
    coord = np.arange(size, dtype=np.float32)
    light, dark = (np.array(c, np.uint8) for c in TEXTURES[name])
    if name == "striped":
        period = float(rng.uniform(6, 10))
        angle = float(rng.choice([0.0, 0.5, 0.25, 0.75]) * math.pi)  # horizontal/vertical/diagonal
        phase = (coord[None, :] * math.cos(angle) + coord[:, None] * math.sin(angle)
                 + rng.uniform(0, period)) % period
        mask = phase < period / 2
    else:
        step = float(rng.uniform(7, 10))
        ox, oy = rng.uniform(0, step, size=2)
        dx, dy = (coord + ox) % step - step / 2, (coord + oy) % step - step / 2
        mask = (dx * dx)[None, :] + (dy * dy)[:, None] < (step * 0.18) ** 2
    return Image.fromarray(np.where(mask[..., None], dark, light))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a unit shape scaled by r, rotated by angle (radians), centred at (cx, cy)."""
    if shape == "square":
        pts = [(math.cos(t), math.sin(t)) for t in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(t), math.sin(t)) for t in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(t), (1.0 if k % 2 == 0 else 0.45) * math.sin(t))
               for k, t in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    elif shape == "cross":
        w = 0.33
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
               (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    elif shape == "diamond":  # a rhombus, narrower than tall, so it never looks like a square
        pts = [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    else:
        raise ValueError(f"shape {shape!r}; expected one of {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _render(attrs: dict[str, str], rng: np.random.Generator, size: int) -> bytes:
    canvas = _background(attrs["background"], rng, size)
    colour = np.clip(np.array(RGB[attrs["colour"]]) + rng.integers(-12, 13, size=3), 0, 255)
    r = SIZE_RADIUS[attrs["size"]] * size * float(rng.uniform(0.9, 1.1))
    fx, fy = POSITION_XY[attrs["position"]]
    cx, cy = (np.array([fx, fy]) + rng.uniform(-0.04, 0.04, size=2)) * size
    angle = float(rng.uniform(-0.26, 0.26))  # about +-15 degrees: a square stays a square
    fill = tuple(int(v) for v in colour)
    draw = ImageDraw.Draw(canvas)
    if attrs["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(attrs["shape"], cx, cy, r, angle), fill=fill)
    # Uniform noise in [-8, 7]; raw random bytes are several times faster than rng.integers.
    noise = (np.frombuffer(rng.bytes(size * size * 3), np.uint8) & 15).reshape(size, size, 3)
    noisy = np.asarray(canvas, np.int16) + noise.astype(np.int16) - 8
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


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


def _donor_caption(index: int, attrs: dict[str, str], *, spec: SyntheticSpec, seed: int,
                   rng: np.random.Generator) -> str:
    """The caption of another sample whose colour or shape differs, so the pair really is wrong."""
    while True:
        donor = int(rng.integers(2**31))
        if donor == index:
            continue
        donor_rng = np.random.default_rng([seed, donor])
        donor_attrs = _draw_attributes(donor_rng, spec)
        if (donor_attrs["colour"], donor_attrs["shape"]) != (attrs["colour"], attrs["shape"]):
            return _caption(donor_attrs, donor_rng)


def generate_samples(n: int, *, spec: SyntheticSpec, seed: int, start_index: int = 0,
                     mismatch_fraction: float = 0.0) -> Iterator[Sample]:
    """Yield samples start_index .. start_index + n - 1; each depends only on (seed, index).

    `mismatch_fraction` of the captions are replaced by a random other sample's caption (noisy
    correspondence); `meta["label"]` always stays the true label of the image.
    """
    _check_spec(spec, mismatch_fraction=mismatch_fraction)
    index_of = {name: i for i, name in enumerate(class_names(spec))}
    for index in range(start_index, start_index + n):
        # Draw order is fixed (attributes, caption, pixels): a donor recomputes the first two.
        rng = np.random.default_rng([seed, index])
        attrs = _draw_attributes(rng, spec)
        caption = _caption(attrs, rng)
        jpg = _render(attrs, rng, spec.image_size)
        mismatched = is_mismatched(index, seed=seed, fraction=mismatch_fraction)
        if mismatched:
            caption = _donor_caption(index, attrs, spec=spec, seed=seed, rng=rng)
        label_name = _label_name(attrs, spec)
        meta = {**attrs, "label": index_of[label_name], "label_name": label_name,
                "caption_mismatched": mismatched}
        yield Sample(key="", jpg=jpg, caption=caption, meta=meta)
