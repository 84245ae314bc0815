"""Odd and damaged sample payloads for the fuzzed shard corpus (shard_fuzz.py): images, captions and
`.json` members, each with what a correct reader does with the sample that carries it.

A payload's verdict: "good", the sample is delivered exactly once with the caption, pixels and label
given; "bad", it is counted and never delivered; "either", one or the other, whichever the bytes allow
(random bytes behind an image format's magic may well decode into some picture).
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

WORDS = ("a", "photo", "of", "red", "blue", "green", "circle", "square", "dog", "cat", "on", "the", "grass", "under",
         "sky", "small", "large", "striped", "wooden", "metal", "old", "new", "bright", "dark", "tree", "house", "car",
         "boat", "bird", "flower")


@dataclass(frozen=True)
class Item:
    """One sample's members, as bytes, and what a correct reader delivers of it (None: cannot be known)."""

    key: str
    jpg: bytes | None
    txt: bytes | None
    json: bytes | None
    caption: str | None  # the delivered caption
    ref: bytes | None  # an image file whose pixels (PIL's RGB) the delivered image equals
    label: int | None


def image_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def random_image(rng: np.random.Generator, mode: str = "RGB", size: tuple[int, int] = (32, 32)) -> Image.Image:
    """Smooth random colours (a noise field JPEG compresses poorly and no photo looks like)."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BILINEAR).convert(mode)


def caption(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def bomb_png(side: int, *, whole: bool) -> bytes:
    """A greyscale PNG declaring side x side pixels in a few hundred KB at most: all of its rows
    (`whole`: a true bomb, that decodes), or only the first (PIL refuses the larger ones at open)."""
    rows, compressor = side if whole else 1, zlib.compressobj(9)
    row = b"\0" + bytes(side)
    idat = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@cache
def long_caption(kind: str) -> str:
    """A 1 MB caption: words, or a single 'word' (which BPE merges in one piece: the costly kind)."""
    rng = random.Random(kind)
    text = " ".join(rng.choices(WORDS, k=200_000)) if kind == "words" else "".join(rng.choices("abcdefgh", k=1 << 20))
    return text[: 1 << 20]


MAGIC = (b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"RIFF\0\0\0\0WEBPVP8 ", b"\0\0\1\0", b"8BPS", b"P6\n",
         b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\0\0\0\x0cjP  ", b"%!PS", b"\x0a\x05\x01\x08")
CAPTION_KINDS = ("caption_1mb_words", "caption_1mb_oneword", "caption_not_utf8", "caption_cut_utf8",
                 "caption_empty", "caption_blank", "caption_nul")
IMAGE_KINDS = ("image_empty", "image_1x1_png", "image_1x1_jpeg", "image_1x5000", "image_cmyk", "image_16bit",
               "image_rgba", "image_palette", "image_la", "image_bomb_30000", "image_bomb_10000", "image_cut",
               "image_bitflip", "image_random", "image_magic", "image_text")
JSON_KINDS = ("json_garbage", "json_list", "json_label_inf", "json_label_huge", "json_label_text", "json_deep",
              "json_surrogate_id", "json_empty")
KINDS = CAPTION_KINDS + IMAGE_KINDS + JSON_KINDS


def damage(item: Item, kind: str, rng: random.Random) -> tuple[Item, str]:
    """`item` carrying payload `kind`, and its verdict."""
    nprng = np.random.default_rng(rng.getrandbits(32))
    if kind.startswith("caption_"):
        return _caption(item, kind, rng)
    if kind.startswith("json_"):
        return _json(item, kind), "good"
    good = {  # images a reader must decode: (the member's bytes, the reference it must equal)
        "image_1x1_png": lambda: image_bytes(random_image(nprng, size=(1, 1)), "PNG"),
        "image_1x1_jpeg": lambda: image_bytes(random_image(nprng, size=(1, 1)), "JPEG"),
        "image_1x5000": lambda: image_bytes(random_image(nprng, size=(1, 5000)), "PNG"),
        "image_cmyk": lambda: image_bytes(random_image(nprng, "CMYK"), "JPEG"),
        "image_rgba": lambda: image_bytes(random_image(nprng, "RGBA"), "PNG"),
        "image_palette": lambda: image_bytes(random_image(nprng, "P"), "PNG"),
        "image_la": lambda: image_bytes(random_image(nprng, "LA"), "PNG"),
    }
    if kind in good:
        data = good[kind]()
        return _with(item, jpg=data, ref=data), "good"
    if kind == "image_16bit":  # 16-bit grey: its top 8 bits are the picture
        grey = nprng.integers(0, 65536, (4, 4)).astype(np.uint16).repeat(8, 0).repeat(8, 1)
        data = image_bytes(Image.fromarray(grey), "PNG")  # (PIL writes and reads back mode I;16)
        return _with(item, jpg=data, ref=image_bytes(Image.fromarray((grey >> 8).astype(np.uint8)), "PNG")), "good"
    bad = {
        "image_empty": lambda: b"",
        "image_bomb_30000": lambda: bomb_png(30000, whole=False),
        "image_bomb_10000": lambda: bomb_png(10000, whole=True),
        "image_cut": lambda: item.jpg[: rng.randrange(1, len(item.jpg) * 3 // 4)],
    }
    if kind in bad:
        return _with(item, jpg=bad[kind](), ref=None), "bad"
    if kind == "image_bitflip":
        jpg = bytearray(item.jpg)
        jpg[rng.randrange(len(jpg))] ^= 1 << rng.randrange(8)
        data = bytes(jpg)
    elif kind == "image_random":
        data = rng.randbytes(rng.choice((1, 10, 100, 2000)))
    elif kind == "image_magic":
        data = rng.choice(MAGIC) + rng.randbytes(rng.choice((0, 20, 600)))
    elif kind == "image_text":
        data = item.txt
    else:
        raise ValueError(f"unknown payload {kind!r}")
    return _with(item, jpg=data, ref=None), "either"


def _with(item: Item, **changes) -> Item:
    return Item(**{**item.__dict__, **changes})


def _caption(item: Item, kind: str, rng: random.Random) -> tuple[Item, str]:
    if kind.startswith("caption_1mb_"):
        text = long_caption(kind.removeprefix("caption_1mb_"))
        return _with(item, txt=text.encode(), caption=text), "good"
    if kind == "caption_nul":
        text = f"{caption(rng, 3)}\0{caption(rng, 3)}"
        return _with(item, txt=text.encode(), caption=text), "good"
    raw = {
        "caption_not_utf8": lambda: caption(rng).encode("latin-1") + b" caf\xe9",
        "caption_cut_utf8": lambda: (caption(rng) + " \u20ac").encode()[:-1],  # a 3-byte character cut short
        "caption_empty": lambda: b"",
        "caption_blank": lambda: b" \n\t ",
    }[kind]()
    return _with(item, txt=raw, caption=None), "bad"


def _json(item: Item, kind: str) -> Item:
    raw = {
        "json_garbage": b"\x93{\"label\": \xff",
        "json_list": b"[1, 2, 3]",
        "json_label_inf": b'{"label": 1e400}',
        "json_label_huge": b'{"label": 1000000000000000000000000000000}',
        "json_label_text": b'{"label": "cat"}',
        "json_deep": b"[" * 100_000 + b"]" * 100_000,
        "json_surrogate_id": json.dumps({"label": item.label, "image_id": "\udce9"}).encode(),
        "json_empty": b"",
    }[kind]
    return _with(item, json=raw, label=item.label if kind == "json_surrogate_id" else -1)
