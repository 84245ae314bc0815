"""Image decoding and augmentation in numpy + PIL (no torch): this runs in Ray Data `map_batches`
on CPU workers. Outputs are uint8 (3, size, size); normalisation happens next to the model
(`raylpclip.models.clip.normalize_images`), except in `clip_preprocess`, which matches CLIP's
float preprocessing end to end."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # same values as raylpclip.models.clip, kept torch-free
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(jpg: bytes, *, draft: int | None = None) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, ...) -> RGB PIL image. Corrupt or truncated bytes raise ValueError,
    as does an image of more than PIL's `Image.MAX_IMAGE_PIXELS` pixels to decode.

    `draft`: the side in pixels that both dimensions must keep. A JPEG at least twice that is decoded by
    libjpeg at 1/2, 1/4 or 1/8 scale (the smallest that keeps `draft`), in its DCT, at a fraction of the
    full decode's cost: web images are several times the training size, and decoding every pixel of
    them only for the resize to throw most away was most of a decode actor's time. Other formats, and
    None, decode whole.

    Why the pixel limit here: PIL refuses an image only beyond twice its limit (DecompressionBombError)
    and merely warns between the two, so a PNG that declares 10000 x 10000 pixels in 100 KB was decoded
    whole (~1 GB and 2 s in a decode actor); it is checked after the draft, which a large JPEG may pass."""
    try:
        with Image.open(io.BytesIO(jpg)) as img:
            if draft:
                img.draft("RGB", (draft, draft))  # a no-op for anything but JPEG
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise ValueError(f"image of {img.width}x{img.height} pixels, over the {limit} of "
                                 "PIL.Image.MAX_IMAGE_PIXELS (a decompression bomb?)")
            img.load()  # decode now, so truncated data fails here rather than later
            return _rgb(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image ({len(jpg)} bytes): {err}") from err


def _rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode; 16-bit grey (PNG, TIFF) by its top 8 bits, where PIL's convert clips every value
    above 255 to white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        shift = 8 if img.mode != "I" or values.max(initial=0) > 255 else 0  # (mode I: 16-bit data, or 8-bit)
        img = Image.fromarray((np.clip(values, 0, 65535) >> shift).clip(0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _to_chw(img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
    """PIL image -> uint8 (3, H, W) RGB, written into `out` when given (a row of a batch array): the pixels
    are copied out of PIL, then written transposed, where a separate array to stack later needs two
    copies more (~120 us a sample at 224 px). An RGB image is not converted: PIL's convert() to the
    same mode copies it."""
    hwc = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    if out is None:
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))
    out[...] = hwc.transpose(2, 0, 1)
    return out


def _center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred crop x crop window, rounding as torchvision does."""
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


EVAL_RESIZE_LIMIT = 64  # (resized pixels / kept pixels) beyond which eval_transform resizes only what it keeps


def eval_transform(img: Image.Image, *, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """CLIP's eval preprocessing: bicubic resize of the short side to `size`, centre crop -> uint8 (3, size, size)
    (written into `out` when given)."""
    w, h = img.size
    # torchvision's Resize(int): short side = size, long side = int(size * long / short) (floored).
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    box = _center_crop_box(new_w, new_h, size)
    if new_w * new_h > EVAL_RESIZE_LIMIT * size * size:
        # A 1 x 60000 image (60 KB of PNG) resized whole at 224 px would take 9 GB: resize only the part
        # of it that the crop keeps, at the same scale (the filter's windows, placed from another origin,
        # may round to other pixels: values differ a little; images of aspect < 64 are as before).
        sx, sy = w / new_w, h / new_h
        kept = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return _to_chw(img.resize((size, size), Image.BICUBIC, box=kept), out)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    return _to_chw(img.crop(box), out)


_BOX_TRIES = 10


def _random_resized_box(
    width: int, height: int, *, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: the first of 10 tries whose box fits, else a centre crop
    at a clamped ratio. The uniforms of all tries and of the box's position come from one `rng` call (22
    numbers, used or not): one call per try cost ~15 us a box at the default scale (0.9, 1.0), where most
    tries do not fit (any aspect away from 1 needs more than the whole width or height), ~8% of decoding
    a 64 px sample; now ~5 us. The distribution is torchvision's; the stream of draws differs from it."""
    u = rng.random(2 * _BOX_TRIES + 2).tolist()
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for i in range(_BOX_TRIES):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * i])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * i + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[-2] * (height - h + 1))  # uniform over 0 .. height - h, as rng.integers would draw
            left = int(u[-1] * (width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_draft_side(size: int, *, scale: tuple[float, float] = (0.9, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> int:
    """The `decode_image(draft=...)` side for `train_transform`: the smallest image side whose every box
    the crop may draw still holds `size` pixels across, so that the resize after a draft decode only ever
    shrinks, as it does after a full one. A box's shorter side is at least sqrt(area fraction * aspect)
    of the image's shorter side (aspect taken towards the narrow end)."""
    shrink = math.sqrt(scale[0] * min(ratio[0], 1 / ratio[1]))
    return math.ceil(size / shrink)


def train_transform(
    img: Image.Image,
    *,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Random-resized crop (area fraction in `scale`, aspect in `ratio`), bicubic resize to `size`
    -> uint8 (3, size, size) (written into `out` when given). Flipping is off by default because
    captions mention left and right. Deterministic given the state of `rng`."""
    box = _random_resized_box(*img.size, rng=rng, scale=scale, ratio=ratio)
    resized = img.resize((size, size), Image.BICUBIC, box=box)
    if hflip and rng.random() < 0.5:
        resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_chw(resized, out)


def clip_preprocess(img: Image.Image, *, size: int = 224) -> np.ndarray:
    """CLIP's full eval preprocessing in numpy: `eval_transform`, /255, per-channel mean/std -> float32 (3, size, size)."""
    x = eval_transform(img, size=size).astype(np.float32) / 255.0
    mean = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def strong_transform(img: Image.Image, *, size: int, rng: np.random.Generator,
                     scale: tuple[float, float] = (0.35, 1.0), jitter: float = 0.4,
                     grayscale_p: float = 0.2, hflip: bool = True) -> np.ndarray:
    """A strong view for LP-CLIP's student (the FixMatch/SimCLR family): random-resized crop over a wide
    area range, horizontal flip, brightness/contrast/saturation jitter in [1 - jitter, 1 + jitter] in a
    random order, random grayscale -> uint8 (3, size, size). Deterministic given the state of `rng`."""
    from PIL import ImageEnhance

    box = _random_resized_box(*img.size, rng=rng, scale=scale, ratio=(3 / 4, 4 / 3))
    out = img.resize((size, size), Image.BICUBIC, box=box)
    flip = rng.random() < 0.5  # drawn either way: the draws after it stay where they were
    if hflip and flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    for index in rng.permutation(len(enhancers)):
        out = enhancers[index](out).enhance(float(rng.uniform(1.0 - jitter, 1.0 + jitter)))
    if rng.random() < grayscale_p:
        out = out.convert("L").convert("RGB")
    return _to_chw(out)
