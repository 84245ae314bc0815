"""Caption templates for class-labelled images ("a photo of a {}."), and the plain-text files that list
templates or class names (raylpclip shards --templates / --classnames)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

# Plain photo captions: varied phrasing, every one names the class once.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of the {}.",
    "a good photo of a {}.",
    "a bright photo of the {}.",
    "a photo of the small {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "there is a {} in this picture.",
    "a {} in the photo.",
)


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates as a list; each must hold exactly one "{}" and no other format field."""
    if not templates:
        raise ValueError("no caption templates given; expected strings such as 'a photo of a {}.'")
    for template in templates:
        try:
            ok = template.count("{}") == 1 and template.format("x") == template.replace("{}", "x")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"caption template {template!r}: expected exactly one '{{}}' for the class name")
    return list(templates)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment ('#') lines of a text file, stripped: templates or class names files."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
