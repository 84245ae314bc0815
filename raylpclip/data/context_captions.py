"""Captions of the context world: the class and the contexts the caption chooses to mention, in varied
phrasings ("a blurry grayscale photo of a cat", "a cat, in black and white", "close-up of a truck",
"a dark, low resolution picture of a ship"), as web captions describe a picture partially and in many
words. `context_phrasings` lists every context's words (the study report embeds them as text).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Per context: adjectives (before the picture's noun: "a blurry photo") and phrases after the object
# ("a cat, in black and white"). A caption draws one of each context's phrasings.
ADJECTIVES: dict[str, tuple[str, ...]] = {
    "grayscale": ("black and white", "grayscale", "monochrome"),
    "blurry": ("blurry", "out-of-focus", "blurred"),
    "dark": ("dark", "dim", "underexposed"),
    "bright": ("bright", "overexposed", "washed-out"),
    "pixelated": ("pixelated", "low resolution", "low-res"),
    "noisy": ("grainy", "noisy"),
    "close-up": ("close-up", "zoomed-in"),
    "upside-down": ("upside-down",),  # not "flipped": that could be the invisible horizontal flip
    "warm": ("reddish", "warm-toned", "orange-tinted"),
    "sketch": ("sketched", "hand-drawn", "line-drawn"),
}
AFTER: dict[str, tuple[str, ...]] = {
    "grayscale": ("in black and white", "in grayscale", "in monochrome"),
    "blurry": ("out of focus", "blurred"),
    "dark": ("in the dark", "in dim light"),
    "bright": ("overexposed", "in harsh bright light"),
    "pixelated": ("at low resolution", "pixelated"),
    "noisy": ("with heavy grain", "full of noise"),
    "close-up": ("seen up close", "in close-up"),
    "upside-down": ("upside down", "turned upside down", "the wrong way up"),
    "warm": ("with a red tint", "with a warm colour cast"),
    "sketch": ("drawn as a sketch", "as a line drawing"),
}
SKETCH_NOUNS = ("sketch", "line drawing", "pencil drawing")  # a mentioned sketch is the picture's noun
PICTURE_NOUNS = ("photo", "picture", "image", "snapshot")
UNNAMED_CLASS = ("object", "thing")  # when the caption does not name the class (class_p < 1)

# Frames: {a_desc} "a blurry grayscale photo", {desc} without article, {adjs} "blurry, grayscale",
# {after} ", in black and white, out of focus" (its own leading comma), {cls}/{a_cls} the class.
# Frames marked True need at least one mentioned context (otherwise they read badly).
FRAMES: tuple[tuple[str, bool], ...] = (
    ("{a_desc} of {a_cls}.", False),
    ("{a_cls}{after}.", False),
    ("{a_desc} of the {cls}.", False),
    ("{a_cls} in {a_desc}.", False),
    ("there is {a_cls} in this {desc}.", False),
    ("my {desc} of {a_cls}{after}", False),
    ("{a_noun} of {a_cls}{after}.", False),
    ("{a_adj_cls}.", True),
    ("{cls} ({adjs})", True),
    ("{a_cls}, {adjs_and}.", True),
    ("{a_desc} showing {a_cls}.", False),
    ("the {cls}{after}", False),
    ("{desc}: {a_cls}", True),
    ("close-up of {a_cls}{after_rest}", "close-up"),
)


def with_article(phrase: str) -> str:
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def context_phrasings(contexts: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Every context's phrasings (adjectives, then phrases after the object; a sketch's nouns too), in
    the canonical order: what a caption may call it."""
    names = list(ADJECTIVES) if contexts is None else list(contexts)
    unknown = [n for n in names if n not in ADJECTIVES]
    if unknown:
        raise ValueError(f"contexts {unknown} unknown; expected names from {list(ADJECTIVES)}")
    return {n: tuple(dict.fromkeys(ADJECTIVES[n] + AFTER[n] + (SKETCH_NOUNS if n == "sketch" else ())))
            for n in names}


def _join_and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def context_caption(classname: str | None, mentioned: Sequence[str], rng: np.random.Generator) -> str:
    """A caption naming `classname` (None: an unnamed "object") and exactly the `mentioned` contexts,
    in a frame and phrasings drawn from `rng`; the contexts appear in a random order."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    unknown = [n for n in mentioned if n not in ADJECTIVES]
    if unknown:
        raise ValueError(f"mentioned contexts {unknown} unknown; expected names from {list(ADJECTIVES)}")
    order = [mentioned[int(i)] for i in rng.permutation(len(mentioned))]
    cls = classname if classname is not None else pick(UNNAMED_CLASS)
    frame = pick([f for f, needs in FRAMES if needs is False or (needs is True and order) or needs in order])
    # A sketch is the picture's noun when the frame has one ("a blurry sketch of a cat", never "a
    # sketched photo"), else an adjective or a phrase after the object ("a hand-drawn cat").
    sketch_noun = "sketch" in order and any(f"{{{f}}}" in frame for f in ("desc", "a_desc", "a_noun"))
    noun = pick(SKETCH_NOUNS) if sketch_noun else pick(PICTURE_NOUNS)
    described = [c for c in order if not (sketch_noun and c == "sketch")]
    said_after = "{after}" in frame  # these frames name the contexts after the object, never before it too
    adjs = [] if said_after else [pick(ADJECTIVES[c]) for c in described]
    afters = [pick(AFTER[c]) for c in described] if said_after else []
    # "a dark, low resolution picture": comma-joined when an adjective has a space, else run together.
    adj_text = (", " if any(" " in a for a in adjs) else " ").join(adjs)
    desc = f"{adj_text} {noun}".strip()
    fields = {
        "cls": cls, "a_cls": with_article(cls), "desc": desc, "a_desc": with_article(desc),
        "a_noun": with_article(noun), "adjs": ", ".join(adjs), "adjs_and": _join_and(adjs) if adjs else "",
        "a_adj_cls": with_article(f"{adj_text} {cls}".strip()), "after": "".join(f", {a}" for a in afters),
        "after_rest": "".join(f", {pick(AFTER[c])}" for c in described if c != "close-up"),
    }
    return frame.format(**fields)
