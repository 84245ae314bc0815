"""Decoding and augmentation (numpy + PIL), and CLIP's preprocessing against a golden fixture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raylpclip.data import transforms as T
from raylpclip.data.transforms import clip_preprocess, decode_image, eval_transform, train_transform

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GOLDEN_IMAGE = DATA / "clip" / "franz-kafka.jpg"
GOLDEN_ARRAY = DATA / "clip" / "expected_preprocessed_image.npy"


def _jpeg(width: int = 80, height: int = 50, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_decode_image_rgb():
    img = decode_image(_jpeg())
    assert img.mode == "RGB" and img.size == (80, 50)
    gray = io.BytesIO()
    Image.new("L", (7, 9), 128).save(gray, format="PNG")
    assert decode_image(gray.getvalue()).mode == "RGB"


@pytest.mark.parametrize("data", [b"", b"not an image at all", _jpeg()[: len(_jpeg()) // 2]])
def test_decode_image_corrupt_raises_value_error(data):
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(data)


def test_16_bit_grey_is_read_by_its_top_8_bits_not_clipped_to_white():
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    img = decode_image(buf.getvalue())
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16" and img.mode == "RGB"
    assert np.array_equal(np.asarray(img)[..., 0], (grey >> 8).astype(np.uint8))


def _bomb_png(side: int) -> bytes:
    """A greyscale PNG of side x side black pixels: ~100 KB for 10000 x 10000."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\0" + bytes(side)) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_over_pils_pixel_limit_is_refused_before_it_is_decoded(monkeypatch):
    """PIL only warns between MAX_IMAGE_PIXELS and twice that: a 100 KB PNG of 10000 x 10000 decoded whole."""
    import resource

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 * 1000)  # the same case at 1/100 of the memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValueError, match="1200x1200 pixels, over"):
        decode_image(_bomb_png(1200))
    with pytest.raises(ValueError, match="cannot decode image"):  # over twice the limit: PIL's own refusal
        decode_image(_bomb_png(2500))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 5 * 1024  # KB: nothing decoded


def test_eval_transform_of_a_thin_strip_resizes_only_what_it_keeps():
    """A 1 x 60000 PNG resized whole at 224 px would be 224 x 13.4 M pixels (9 GB)."""
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60000, 1, 3), dtype=np.uint8))
    assert eval_transform(strip, size=224).shape == (3, 224, 224)
    moderate = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 1, 3), dtype=np.uint8))
    full = np.asarray(moderate.resize((16, 3200), Image.BICUBIC).crop((0, 1592, 16, 1608))).transpose(2, 0, 1)
    assert np.abs(eval_transform(moderate, size=16).astype(int) - full).max() <= 2  # the same scale and crop


@pytest.mark.parametrize("width,height", [(80, 50), (50, 80), (20, 20), (300, 301)])
def test_eval_transform_shape_dtype(width, height):
    out = eval_transform(decode_image(_jpeg(width, height)), size=32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8


def test_eval_transform_is_center_crop_of_short_side_resize():
    # Left half black, right half white, 40 px wide: the centre crop of a 40x20 image at size 20
    # keeps columns 10..29, so the first 10 output columns are black and the last 10 white.
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255
    out = eval_transform(Image.fromarray(img), size=20)
    assert (out[:, :, :9] == 0).all() and (out[:, :, 11:] == 255).all()


def test_train_transform_shape_dtype_and_determinism():
    img = decode_image(_jpeg(120, 90))
    a = train_transform(img, size=32, rng=np.random.default_rng(7), scale=(0.3, 1.0))
    b = train_transform(img, size=32, rng=np.random.default_rng(7), scale=(0.3, 1.0))
    c = train_transform(img, size=32, rng=np.random.default_rng(8), scale=(0.3, 1.0))
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _torchvision_box(width, height, rng, scale, ratio):
    """RandomResizedCrop.get_params as torchvision writes it: fresh draws per try (the reference for the
    distribution of transforms._random_resized_box, which draws all its uniforms at once)."""
    area = width * height
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w, h = int(round(np.sqrt(target_area * aspect))), int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    return None  # the centre-crop fallback (tested on its own below)


@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0)])
def test_random_resized_box_has_torchvisions_distribution(scale):
    """Box width, height and position: the same quantiles as torchvision's sequential draws, and every box
    inside the image with its area and aspect in range (up to the rounding to pixels)."""
    width, height, ratio, n = 64, 48, (3 / 4, 4 / 3), 20000
    rng = np.random.default_rng(0)
    ours = np.array([T._random_resized_box(width, height, rng=rng, scale=scale, ratio=ratio) for _ in range(n)])
    rng = np.random.default_rng(1)
    ref = [_torchvision_box(width, height, rng, scale, ratio) for _ in range(n)]
    fallback = (width - 48 * 4 // 3) // 2  # 64x48 is 4:3 already: the fallback is the whole image
    assert fallback == 0
    ref = np.array([box if box is not None else (0, 0, width, height) for box in ref])
    for boxes in (ours, ref):
        left, top, right, bottom = boxes.T
        w, h = right - left, bottom - top
        assert left.min() >= 0 and top.min() >= 0 and right.max() <= width and bottom.max() <= height
        assert (w * h >= scale[0] * width * height - (w + h)).all()  # rounding each side moves the area by < w + h
        # each side is rounded by at most half a pixel
        assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    features = lambda b: {"w": b[:, 2] - b[:, 0], "h": b[:, 3] - b[:, 1], "left": b[:, 0], "top": b[:, 1]}
    for name, got in features(ours).items():
        want = features(ref)[name]
        q = [0.1, 0.25, 0.5, 0.75, 0.9]
        assert np.abs(np.quantile(got, q) - np.quantile(want, q)).max() <= 1, name
        assert abs(got.mean() - want.mean()) < 0.25, name
    # The position covers every offset a box allows, both ends included.
    narrow = ours[(ours[:, 2] - ours[:, 0]) == width - 2]
    if len(narrow):
        assert set(narrow[:, 0]) == {0, 1, 2}


def test_random_resized_box_falls_back_to_a_centred_clamped_crop():
    # 100 x 10 (10:1) and 10 x 100: no box of 90-100% of the area with aspect in [3/4, 4/3] fits, so the centre crop at 4:3.
    box = T._random_resized_box(100, 10, rng=np.random.default_rng(0), scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    assert box == (43, 0, 56, 10)
    box = T._random_resized_box(10, 100, rng=np.random.default_rng(0), scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    assert box == (0, 43, 10, 56)


def test_train_transform_full_scale_keeps_whole_image():
    # scale=(1, 1) and ratio containing the image's aspect: the crop is the whole image.
    img = decode_image(_jpeg(64, 64))
    out = train_transform(img, size=64, rng=np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert np.array_equal(out, np.asarray(img).transpose(2, 0, 1))


def test_train_transform_hflip_only_when_asked():
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, :16] = 255  # left half white
    pil = Image.fromarray(img)
    kwargs = dict(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for seed in range(8):
        assert train_transform(pil, rng=np.random.default_rng(seed), **kwargs)[:, :, 0].min() == 255
    flipped = [train_transform(pil, rng=np.random.default_rng(s), hflip=True, **kwargs)[0, 0, 0] == 0
               for s in range(16)]
    assert any(flipped) and not all(flipped)


def test_clip_preprocess_dtype_and_mean_std_match_model_constants():
    from raylpclip.models import clip as model_clip

    assert T.CLIP_MEAN == model_clip.CLIP_MEAN and T.CLIP_STD == model_clip.CLIP_STD
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    out = clip_preprocess(img, size=16)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(T.CLIP_MEAN)) / np.array(T.CLIP_STD)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=0, atol=1e-6)


@pytest.mark.data
@pytest.mark.skipif(not GOLDEN_ARRAY.is_file(), reason="../shared/data/clip is absent")
def test_clip_preprocess_matches_golden_fixture():
    expected = np.load(GOLDEN_ARRAY)  # (1, 3, 224, 224) float32
    got = clip_preprocess(decode_image(GOLDEN_IMAGE.read_bytes()), size=224)
    assert got.shape == expected.shape[1:] and got.dtype == np.float32
    # Same PIL bicubic resize and crop: measured max abs difference 0.0. The tolerance allows only
    # float32 rounding, far below one uint8 step (1/255/std ~ 0.015).
    np.testing.assert_allclose(got, expected[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_writing_into_a_batch_row_gives_the_returned_array(mode):
    img = decode_image(_jpeg()).convert(mode)
    rgb = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    rows = np.zeros((3, 3, 24, 24), np.uint8)
    want = train_transform(img, size=24, rng=np.random.default_rng(4), hflip=True)
    got = train_transform(img, size=24, rng=np.random.default_rng(4), hflip=True, out=rows[1])
    assert np.shares_memory(got, rows[1])
    assert np.array_equal(rows[1], want) and not rows[0].any() and not rows[2].any()
    assert np.array_equal(eval_transform(img, size=24, out=rows[2]), eval_transform(img, size=24))
    full = eval_transform(img, size=50)  # short side 50 already: a centre crop of the RGB pixels
    assert want.shape == (3, 24, 24) and np.array_equal(full, rgb[:, :, 15:65])
