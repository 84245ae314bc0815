"""Captions of the procedural world's scenes (raylpclip.data.synthetic).

Two modes. "templates" (the original): one of nine templates, every one naming colour and shape and
some of the other attributes. "subset": colour and shape always, and each of size, position, background
and style named with probability `mention_p`, in varied phrasings and orders: partial descriptions, as
web captions are, so that a CLIP learns some attributes from captions that rarely name them.
"""

from __future__ import annotations

import numpy as np

CAPTION_MODES = ("templates", "subset")
OPTIONAL_ATTRIBUTES = ("size", "position", "background", "style")  # what a subset caption may leave out

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

# Per style: adjectives (before the object) and phrases after it; one is drawn per caption.
STYLE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "plain": (("solid", "filled", "flat"), ("filled in", "in solid colour")),
    "outline": (("outlined", "hollow"), ("drawn as an outline", "in outline")),
    "pixel": (("pixelated", "pixel-art", "blocky"), ("in pixel art", "at low resolution")),
    "noisy": (("grainy", "noisy"), ("with heavy noise", "under film grain")),
    "shadowed": (("shadowed",), ("with a drop shadow", "casting a shadow")),
}

# Subset frames; {obj} is "[size] colour shape", the other fields are "" when not mentioned, else carry
# their own leading separator, so a frame reads well with any subset.
SUBSET_FRAMES = (
    "{a_styled_obj}{pos_in}{on_bg}",
    "{a_obj}{on_bg}{pos_in}{style_after}",
    "there is {a_obj}{pos_at}{on_bg}{style_after}",
    "{obj}{c_style}{c_position}{c_background}",
    "a picture of {a_styled_obj}{on_bg}{pos_in}",
    "{a_obj}{style_after}{pos_at}{against_bg}",
    "the {shape} is {colour}{and_size}{pos_in}{on_bg}{style_after}",
)


def with_article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _pos_in(position: str) -> str:
    return "in the center" if position == "center" else f"in the {position} corner"


def _pos_at(position: str) -> str:
    return "at the center" if position == "center" else f"at the {position}"


def template_caption(attrs: dict[str, str], rng: np.random.Generator) -> str:
    """The original caption: one template, drawn with one integer from `rng` (the sample's generator)."""
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    position = attrs["position"]
    return template.format(
        **attrs, a_size=with_article(attrs["size"]), a_colour=with_article(attrs["colour"]),
        pos_in=_pos_in(position), pos_at=_pos_at(position))


def mentioned_attributes(rng: np.random.Generator, mention_p: float) -> list[str]:
    """Which optional attributes a subset caption names: each independently with `mention_p`."""
    draws = rng.random(len(OPTIONAL_ATTRIBUTES))
    return [name for name, u in zip(OPTIONAL_ATTRIBUTES, draws) if u < mention_p]


def subset_caption(attrs: dict[str, str], style: str, mentioned: list[str], rng: np.random.Generator) -> str:
    """A caption naming colour, shape and exactly the `mentioned` optional attributes."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    says = set(mentioned)
    size = attrs["size"] if "size" in says else ""
    obj = f"{size} {attrs['colour']} {attrs['shape']}".strip()
    style_adj, style_after = pick(STYLE_PHRASES[style][0]), pick(STYLE_PHRASES[style][1])
    styled = f"{style_adj} {obj}" if "style" in says else obj
    position, bg = attrs["position"], attrs["background"]
    fields = {
        "obj": obj, "a_obj": with_article(obj), "a_styled_obj": with_article(styled), "shape": attrs["shape"],
        "colour": attrs["colour"],
        "pos_in": f" {_pos_in(position)}" if "position" in says else "",
        "pos_at": f" {_pos_at(position)}" if "position" in says else "",
        "on_bg": f" on a {bg} background" if "background" in says else "",
        "against_bg": f" against a {bg} background" if "background" in says else "",
        "style_after": f", {style_after}" if "style" in says else "",
        "c_style": f", {style_adj}" if "style" in says else "",
        "c_position": f", {position}" if "position" in says else "",
        "c_background": f", {bg} background" if "background" in says else "",
        "and_size": f" and {attrs['size']}" if "size" in says else "",
    }
    return pick(SUBSET_FRAMES).format(**fields)
