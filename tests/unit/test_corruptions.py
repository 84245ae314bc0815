"""CIFAR-10-C style corruptions: shapes, determinism across processes, keys, severity ordering, the
closed-form HSV edits against colorsys, parameter sanity, errors, and real CIFAR-10 images."""

from __future__ import annotations

import colorsys
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from raylpclip.eval.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corrupt_jpeg

NAMES = sorted(CORRUPTIONS)
# Corruptions that draw random numbers, so the sample key changes their output.
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog", "snow",
          "elastic_transform"}
# Severity must order the damage for these: their parameters grow monotonically in CIFAR-10-C and no
# random choice (angle, fractal) can reorder them. Not listed: saturate (severities 1-2 desaturate,
# 3-5 oversaturate), elastic_transform (severity 1 has the largest affine jitter), motion_blur
# (random angle), fog and snow (random layers, non-monotone parameters).
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
            "zoom_blur", "contrast", "brightness", "pixelate", "jpeg_compression"]


def _scene(size: int = 32, seed: int = 0, height: int | None = None) -> np.ndarray:
    """A natural-looking uint8 image: smooth colour gradients, a disc and a bar with hard edges, mild
    texture; values stay off 0 and 255 so noise is not clipped away."""
    h, w = height or size, size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.3 + 0.4 * x, 0.5 - 0.2 * y, 0.35 + 0.3 * x * y], axis=-1)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    base[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0.15, 0.85, 3)
    base[:, int(w * 0.1) : int(w * 0.2)] *= 0.6
    base += 0.03 * rng.standard_normal(base.shape)
    return np.clip(np.rint(base * 255), 10, 245).astype(np.uint8)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", NAMES)
def test_every_severity_keeps_shape_dtype_and_input(name):
    for img in (_scene(32), _scene(40, seed=1, height=24)):  # square CIFAR size, and non-square
        before = img.copy()
        for severity in SEVERITIES:
            out = corrupt(img, name, severity, key="k")
            assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(img, before)  # the input is never modified


def test_at_least_ten_corruptions():
    assert len(CORRUPTIONS) >= 10 and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_bytes_and_key_dependence(name):
    img = _scene(32)
    out = corrupt(img, name, 3, key="sample-7")
    assert corrupt(img, name, 3, key="sample-7").tobytes() == out.tobytes()
    other = corrupt(img, name, 3, key="sample-8")
    if name in RANDOM:
        assert other.tobytes() != out.tobytes()
    else:  # deterministic corruptions ignore the key
        assert other.tobytes() == out.tobytes()


_DIGEST_SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {repo!r})
from raylpclip.eval.corruptions import CORRUPTIONS, corrupt
from tests.unit.test_corruptions import _scene
h = hashlib.sha256()
for name in sorted(CORRUPTIONS):
    for severity in (1, 5):
        h.update(corrupt(_scene(32), name, severity, key="cross-process").tobytes())
print(h.hexdigest())
"""


def test_bytes_identical_in_a_fresh_process_with_another_hash_seed():
    here = hashlib.sha256()
    for name in NAMES:
        for severity in (1, 5):
            here.update(corrupt(_scene(32), name, severity, key="cross-process").tobytes())
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a salted hash() would change with this
    out = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT.format(repo=repo)], capture_output=True, text=True,
                         env=env, cwd=repo, check=True)
    assert out.stdout.strip() == here.hexdigest()


@pytest.mark.parametrize("name", MONOTONE)
def test_damage_grows_with_severity(name):
    images = [_scene(32, seed=s) for s in range(4)]
    damage = [np.mean([_mad(corrupt(img, name, sev, key=str(i)), img) for i, img in enumerate(images)])
              for sev in SEVERITIES]
    assert damage[0] > 0 and all(a < b for a, b in zip(damage, damage[1:])), damage


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur"])
def test_blur_order_survives_scaling_to_64px(name):
    # Spatial parameters scale with the image: a 64 px image still gets more blur at higher severity.
    img = _scene(64, seed=3)
    damage = [_mad(corrupt(img, name, sev, key="k"), img) for sev in (1, 3, 5)]
    assert damage[0] < damage[1] < damage[2], damage


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur", "elastic_transform"])
def test_resampling_keeps_a_flat_image_flat(name):
    # Every filter and warp is normalised: a constant image has nothing to blur or move.
    flat = np.full((32, 32, 3), (40, 120, 200), dtype=np.uint8)
    for severity in SEVERITIES:
        assert np.abs(corrupt(flat, name, severity, key="k").astype(int) - flat).max() <= 1


def test_noise_levels_follow_the_cifar_table():
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    for severity, sigma in zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10)):
        diff = corrupt(grey, "gaussian_noise", severity, key="k").astype(float) - 128
        assert diff.std() == pytest.approx(sigma * 255, rel=0.05) and abs(diff.mean()) < 0.5
    for severity, amount in zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07)):
        out = corrupt(grey, "impulse_noise", severity, key="k")
        hit = out != 128
        assert hit.mean() == pytest.approx(amount, abs=0.006) and set(np.unique(out[hit])) <= {0, 255}
    # Poisson(x * c) / c is unbiased with variance x / c.
    diff = corrupt(grey, "shot_noise", 5, key="k").astype(float) - 128
    assert abs(diff.mean()) < 1.0 and diff.std() == pytest.approx(np.sqrt(128 / 255 / 50) * 255, rel=0.05)


def test_contrast_hand_case():
    # Two-valued channels: mean 100, severity 2 (factor .5) maps 50 -> 75 and 150 -> 125.
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[0], img[1] = 50, 150
    out = corrupt(img, "contrast", 2, key="k")
    assert (out[0] == 75).all() and (out[1] == 125).all()


def _hsv_reference(img: np.ndarray, edit) -> np.ndarray:
    """Per pixel through colorsys (same conventions as skimage: grey has hue 0 and saturation 0)."""
    out = np.empty(img.shape, dtype=np.float64)
    for idx in np.ndindex(img.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(img[idx] / 255.0))
        out[idx] = colorsys.hsv_to_rgb(*edit(h, s, v))
    return np.rint(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_and_saturate_match_an_hsv_round_trip(severity):
    rng = np.random.default_rng(severity)
    img = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    img[0, :4] = [[0, 0, 0], [90, 90, 90], [255, 255, 255], [200, 10, 10]]  # black, greys, a saturated red
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    expected = _hsv_reference(img, lambda h, s, v: (h, s, min(v + shift, 1.0)))
    assert np.abs(corrupt(img, "brightness", severity, key="k") - expected).max() <= 1
    gain, offset = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))[severity - 1]
    expected = _hsv_reference(img, lambda h, s, v: (h, min(max(s * gain + offset, 0.0), 1.0), v))
    assert np.abs(corrupt(img, "saturate", severity, key="k") - expected).max() <= 1


def test_pixelate_and_jpeg_match_pil():
    img = _scene(32)
    small = Image.fromarray(img).resize((20, 20), Image.BOX)  # severity 5: int(32 * .65) = 20
    np.testing.assert_array_equal(corrupt(img, "pixelate", 5, key="k"), np.asarray(small.resize((32, 32), Image.BOX)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=40)  # severity 5: quality 40
    expected = np.asarray(Image.open(buf).convert("RGB"))
    np.testing.assert_array_equal(corrupt(img, "jpeg_compression", 5, key="k"), expected)


def test_bad_name_severity_or_image_raise_value_error():
    img = _scene(32)
    with pytest.raises(ValueError, match="unknown corruption 'glass_blur'.*allowed: brightness, contrast"):
        corrupt(img, "glass_blur", 1, key="k")
    for severity in (0, 6, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match=r"severity must be one of 1, 2, 3, 4, 5"):
            corrupt(img, "fog", severity, key="k")
    for bad in (img.astype(np.float32), img[..., 0], img[..., :2], img.tolist()):
        with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
            corrupt(bad, "fog", 1, key="k")
    with pytest.raises(ValueError, match="allowed"):
        corrupt_jpeg(b"not checked yet", "nope", 1, key="k")
    with pytest.raises(ValueError, match="cannot decode image"):
        corrupt_jpeg(b"not an image", "fog", 1, key="k")


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_corrupt_jpeg_round_trip():
    jpg = _jpeg(_scene(32))
    out = corrupt_jpeg(jpg, "gaussian_noise", 4, key="row-1")
    assert out[:2] == b"\xff\xd8" and out == corrupt_jpeg(jpg, "gaussian_noise", 4, key="row-1")
    assert out != corrupt_jpeg(jpg, "gaussian_noise", 4, key="row-2")
    decoded = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
    clean = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    expected = corrupt(clean, "gaussian_noise", 4, key="row-1")
    # Quality 95 with 4:4:4 chroma re-encodes the corrupted pixels closely.
    assert decoded.shape == (32, 32, 3) and _mad(decoded, expected) < 4.0


@pytest.mark.data
def test_real_cifar10_images(shared_data):
    """A handful of real CIFAR-10 test JPEGs: the shard path (corrupt_jpeg) and the severity ordering."""
    archive = shared_data / "cifar10" / "test.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    jpegs: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # stream: stop after the first few files, no full extraction
            if member.isfile() and member.name.endswith(".jpg"):
                jpegs[member.name] = tar.extractfile(member).read()
                if len(jpegs) == 6:
                    break
    assert len(jpegs) == 6
    images = {k: np.asarray(Image.open(io.BytesIO(v)).convert("RGB")) for k, v in jpegs.items()}
    for key, jpg in jpegs.items():
        for name in NAMES:
            out = corrupt_jpeg(jpg, name, 5, key=key)
            assert Image.open(io.BytesIO(out)).size == (32, 32)
    for name in ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression", "zoom_blur"):
        damage = [np.mean([_mad(corrupt(img, name, sev, key=k), img) for k, img in images.items()])
                  for sev in SEVERITIES]
        assert all(a < b for a, b in zip(damage, damage[1:])), (name, damage)
