"""One image-caption record, the unit that generators produce and the shard writer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """An encoded image with its caption.

    Attributes:
        key: the img2dataset sample key; generators leave it "" and the shard writer assigns it.
        jpg: JPEG-encoded image bytes.
        caption: the text paired with the image (possibly a deliberately wrong one).
        meta: JSON-serialisable extra fields, written as metadata columns; may hold `label` (int)
            and `label_name` (str) for labelled (zero-shot eval) sets.
    """

    key: str
    jpg: bytes
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
