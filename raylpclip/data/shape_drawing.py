"""Drawing the procedural world's images: a coloured shape on a plain or textured background, in one of a
few *styles* that act as domains (the same scene drawn filled, as an outline, at low resolution, under
heavy noise or with a drop shadow). raylpclip.data.synthetic decides what to draw; this module draws it.

"plain" is the original rendering, byte for byte: its random draws (background, colour jitter, radius,
centre, angle, noise) come from the sample's generator in a fixed order. Every other style takes its
extra randomness from a generator of its own, so the scene's draws stay the same in every style.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

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
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
STYLES = ("plain", "outline", "pixel", "noisy", "shadowed")
PIXEL_FACTOR = 3  # "pixel": drawn at 1/3 of the side (10x10 for 32 px), scaled back up: blocks, shape still legible
NOISY_SIGMA = 40.0  # "noisy": Gaussian noise (of 255) on top of the usual mild noise: grainy at any size
JPEG_QUALITY = 90


def background(name: str, rng: np.random.Generator, size: int) -> Image.Image:
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


def polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
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


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, *,
                fill: tuple[int, ...], outline_width: int = 0) -> None:
    """The shape filled, or with `outline_width` only its outline (the inside shows the background)."""
    kw = {"outline": fill, "width": outline_width} if outline_width else {"fill": fill}
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)
    else:
        draw.polygon(polygon(shape, cx, cy, r, angle), **kw)


def _shadow_fill(canvas: Image.Image, cx: float, cy: float) -> tuple[int, int, int]:
    """A shadow is the background under the shape, darkened: visible on white, gray, black and textures."""
    x, y = min(max(int(cx), 0), canvas.width - 1), min(max(int(cy), 0), canvas.height - 1)
    base = np.asarray(canvas.getpixel((x, y)), np.float32)
    # On a black background a darker black is invisible: there the shadow is a dark gray instead.
    return tuple(int(v) for v in (base * 0.35 if base.mean() > 60 else base + 70))


def render(attrs: dict[str, str], rng: np.random.Generator, size: int, *, style: str = "plain",
           style_rng: np.random.Generator | None = None) -> bytes:
    """The JPEG of one scene (`attrs`: shape, colour, size, position, background) in `style`."""
    if style not in STYLES:
        raise ValueError(f"style {style!r}; expected one of {STYLES}")
    canvas = background(attrs["background"], rng, size)
    colour = np.clip(np.array(RGB[attrs["colour"]]) + rng.integers(-12, 13, size=3), 0, 255)
    r = SIZE_RADIUS[attrs["size"]] * size * float(rng.uniform(0.9, 1.1))
    fx, fy = POSITION_XY[attrs["position"]]
    cx, cy = (np.array([fx, fy]) + rng.uniform(-0.04, 0.04, size=2)) * size
    angle = float(rng.uniform(-0.26, 0.26))  # about +-15 degrees: a square stays a square
    fill = tuple(int(v) for v in colour)
    draw = ImageDraw.Draw(canvas)
    if style == "shadowed":  # offset down-right by a third of the radius, as a light from the top left casts it
        off = max(2.0, 0.35 * r)
        _draw_shape(draw, attrs["shape"], cx + off, cy + off, r, angle, fill=_shadow_fill(canvas, cx + off, cy + off))
    # An outline of about a quarter of the radius: a ring even for a small shape at 32 px.
    width = max(1, round(0.28 * r)) if style == "outline" else 0
    _draw_shape(draw, attrs["shape"], cx, cy, r, angle, fill=fill, outline_width=width)
    if style == "pixel":
        low = max(2, size // PIXEL_FACTOR)
        canvas = canvas.resize((low, low), Image.BOX).resize((size, size), Image.NEAREST)
    # Uniform noise in [-8, 7]; raw random bytes are several times faster than rng.integers.
    noise = (np.frombuffer(rng.bytes(size * size * 3), np.uint8) & 15).reshape(size, size, 3)
    noisy = np.asarray(canvas, np.int16) + noise.astype(np.int16) - 8
    if style == "noisy":
        extra = (style_rng or np.random.default_rng(0)).normal(0.0, NOISY_SIGMA, size=(size, size, 3))
        noisy = noisy + np.round(extra).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
