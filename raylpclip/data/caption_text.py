"""A sample's caption as the tokenizer gets it: text, "" when there is none, None when what is there is
not a caption (bytes that are not UTF-8, a number from a parquet column of the wrong type).

Why not decode leniently: img2dataset writes every caption from a Python str, so a `.txt` member that
is not UTF-8 has been damaged (a flipped bit, a cut), and a caption of U+FFFD marks or of "5.0" would
be trained on as if it were the real one. Such a sample is skipped and counted as `bad_caption`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A caption longer than CHARS_PER_TOKEN x context_length characters is cut to that before tokenizing:
# the tokenizer keeps context_length tokens anyway, and no BPE token is that long, so the kept tokens
# are the same, while a 1 MB caption costs the tokenizer about a second (0.6-1.9 s on 2 cores).
CHARS_PER_TOKEN = 64


def missing(value: Any) -> bool:
    """None, or the NaN that stands for null: pandas' where a webdataset sample lacks a member, and Ray
    Data's float32 one for a parquet column of Arrow's null type (not a Python float)."""
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def caption_text(value: Any) -> str | None:
    """The stripped caption; "" when missing or blank; None when `value` is no caption at all."""
    if missing(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
    return None


def clip_caption(text: str, context_length: int, truncation_side: str = "right") -> str:
    """`text` cut to what the tokenizer can keep of it (CHARS_PER_TOKEN), at the side it keeps."""
    limit = CHARS_PER_TOKEN * context_length
    if len(text) <= limit:
        return text
    return text[-limit:] if truncation_side == "left" else text[:limit]
