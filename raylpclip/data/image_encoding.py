"""A source image's bytes as the JPEG a shard stores (img2dataset's encoding: JPEG, "keep_ratio" resize)."""

from __future__ import annotations

import io
from typing import Callable

from PIL import Image

JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO (camera multi-picture files) is a JPEG with extra frames
JPEG_QUALITY = 95  # img2dataset's default encode_quality


def _jpeg_ready(img: Image.Image) -> Image.Image:
    """A mode JPEG can hold: RGB or L; transparency is flattened onto white, as a viewer shows it."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(data: bytes, *, image_size: int | None = None,
                 edit: Callable[[Image.Image], Image.Image] | None = None) -> tuple[bytes, int, int]:
    """(JPEG bytes, original width, original height) for encoded image `data`.

    With `image_size`, an image whose shorter side is longer is downscaled (bicubic) to that shorter
    side, keeping its aspect ratio (img2dataset's "keep_ratio" mode): no pixels are cropped away, as
    the loader's random-resized-crop (train) and centre crop (eval) do the cropping. Smaller images
    are never upscaled. The original bytes are kept as they are unless resized, edited or not JPEG,
    so nothing is lost to a second JPEG compression. `edit` (RGB in, RGB out) changes the image after
    the resize, i.e. the image as stored, which is what an edit's strength is meant for. Raises
    ValueError for unreadable data.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: truncated files fail here, not in a training step
            width, height = img.size
            short = min(width, height)
            resize = image_size is not None and short > image_size
            if not resize and edit is None and img.format in JPEG_FORMATS:
                return data, width, height
            out = _jpeg_ready(img)
            if resize:
                if width <= height:
                    size = (image_size, max(1, round(height * image_size / width)))
                else:
                    size = (max(1, round(width * image_size / height)), image_size)
                out = out.resize(size, Image.BICUBIC)
            if edit is not None:
                out = edit(out.convert("RGB"))
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=JPEG_QUALITY)
            return buf.getvalue(), width, height
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image: {err}") from err
