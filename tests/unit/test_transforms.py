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
