"""JPEG draft decoding (`data.jpeg_draft`): web-sized JPEGs decoded at 1/2, 1/4 or 1/8 scale before the
resize, never below what the crop needs, close to the full decode, cheaper, and the same in the bench's
references as in the decode actors."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from raylpclip import batch_schema
from raylpclip.bench import decode_limits
from raylpclip.bench.ingest_bench_config import IngestBenchConfig, check
from raylpclip.bench.ingest_inputs import decoder_kwargs
from raylpclip.bench.ingest_report import format_table, summarize
from raylpclip.bench.rate_meter import Rate
from raylpclip.config import ConfigError, DataConfig, PretrainConfig, load_config
from raylpclip.config.checks import validate
from raylpclip.data import decode as decode_module
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.data.transforms import _random_resized_box, decode_image, train_draft_side, train_transform
from raylpclip.models.bpe_tokenizer import train_tokenizer

SIZE = 64
# Mean absolute pixel difference (0-255 scale) allowed between draft and full decodes of the same 512 px
# JPEG at 64 px: measured 0.4-2.0 on synthetic scenes and smooth noisy photos-alike; a wrong scale or a
# misplaced crop gives tens.
MAX_MEAN_ABS_DIFF = 3.0


@pytest.fixture(scope="module")
def web_samples():
    """512 px JPEGs: scenes of the synthetic world at the size web images come in."""
    return list(generate_samples(6, spec=SyntheticSpec(image_size=512), seed=3))


@pytest.fixture(scope="module")
def tokenizer(web_samples, tmp_path_factory):
    return train_tokenizer([s.caption for s in web_samples] * 5, vocab_size=300, out_dir=str(tmp_path_factory.mktemp("tok")))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_draft_decodes_at_the_smallest_scale_that_keeps_the_side(web_samples):
    jpg = web_samples[0].jpg
    assert decode_image(jpg).size == (512, 512)
    assert decode_image(jpg, draft=64).size == (64, 64)  # 1/8
    assert decode_image(jpg, draft=100).size == (128, 128)  # 1/4: 1/8 would leave 64 < 100
    assert decode_image(jpg, draft=300).size == (512, 512)  # not twice the side: decoded whole
    wide = _encoded(decode_image(jpg).resize((512, 256)), "JPEG")
    assert decode_image(wide, draft=64).size == (128, 64)  # the short side decides
    png = _encoded(decode_image(jpg), "PNG")
    assert decode_image(png, draft=64).size == (512, 512)  # only JPEG has a draft mode


def test_every_crop_box_of_a_draft_side_image_holds_the_training_size():
    """The resize after a draft decode only shrinks: no box the crop can draw is under `size` across."""
    rng = np.random.default_rng(0)
    for scale_min in (0.08, 0.35, 0.9, 1.0):
        side = train_draft_side(SIZE, scale=(scale_min, 1.0))
        for width, height in ((side, side), (side, 2 * side), (3 * side, side)):
            for _ in range(300):
                left, top, right, bottom = _random_resized_box(width, height, rng=rng, scale=(scale_min, 1.0),
                                                               ratio=(3 / 4, 4 / 3))
                assert min(right - left, bottom - top) >= SIZE, (scale_min, width, height)
    assert train_draft_side(SIZE) == 78  # default crop (0.9-1.0 of the area): a 512 px JPEG decodes at 1/4


def _rows(samples) -> dict:
    return {"key": np.array([f"{i:09d}" for i in range(len(samples))], dtype=object),
            "jpg": np.array([s.jpg for s in samples], dtype=object),
            "caption": np.array([s.caption for s in samples], dtype=object)}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_draft_pixels_are_close_to_the_full_decode_and_the_draft_is_applied(web_samples, tokenizer, monkeypatch, train):
    sizes = []
    real_decode = decode_module.decode_image

    def recording(data, **kw):
        img = real_decode(data, **kw)
        sizes.append(img.size)
        return img

    monkeypatch.setattr(decode_module, "decode_image", recording)
    common = {"tokenizer": tokenizer, "image_size": SIZE, "context_length": 12, "train": train, "seed": 7}
    full = BatchDecoder(**common, jpeg_draft=False)(_rows(web_samples))[batch_schema.IMAGE].astype(int)
    assert set(sizes) == {(512, 512)}
    sizes.clear()
    draft = BatchDecoder(**common, jpeg_draft=True)(_rows(web_samples))[batch_schema.IMAGE].astype(int)
    # Decoded before the resize at 1/4 (train: every crop box keeps 64 px) or 1/8 (eval: the short side).
    assert set(sizes) == ({(128, 128)} if train else {(64, 64)})
    assert draft.shape == full.shape == (len(web_samples), 3, SIZE, SIZE)
    assert np.abs(draft - full).mean() < MAX_MEAN_ABS_DIFF
    assert np.abs(draft - full).mean(axis=(1, 2, 3)).max() < 2 * MAX_MEAN_ABS_DIFF  # no one image far off


def _photo_like(seed: int) -> bytes:
    """A 512 px JPEG with a photo's texture (smooth shading and sensor noise): the synthetic scenes are flat
    colour, which costs libjpeg little to decode at any scale."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512] / 512
    pixels = np.stack([128 + 100 * np.sin(6 * x + rng.uniform(0, 6)), 128 + 100 * np.cos(5 * y + 3 * x), 255 * x * y], -1)
    pixels += rng.normal(0, 8, pixels.shape)
    return _encoded(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG")


def test_draft_costs_measurably_less_cpu():
    """Decode and crop/resize as training does; CPU time of this process (not wall time: the machine may
    be busy). Measured 2.5x less at 512 -> 64 px."""
    jpgs = [_photo_like(seed) for seed in range(6)]

    def cpu_per_pass(draft):
        best = float("inf")
        for _ in range(3):
            rng, start = np.random.default_rng(0), time.process_time()
            for jpg in jpgs:
                train_transform(decode_image(jpg, draft=draft), size=SIZE, rng=rng)
            best = min(best, time.process_time() - start)
        return best

    assert cpu_per_pass(train_draft_side(SIZE)) < 0.7 * cpu_per_pass(None)


def test_jpeg_draft_is_a_checked_config_key():
    assert DataConfig().jpeg_draft is True
    assert load_config(PretrainConfig, None, ["data.jpeg_draft=false"]).data.jpeg_draft is False
    with pytest.raises(ConfigError, match="'data.jpeg_draft'"):
        load_config(PretrainConfig, None, ["data.jpeg_draft=sometimes"])
    with pytest.raises(ConfigError, match=r"config key 'data.jpeg_draft': got 'yes', expected true or false"):
        validate(PretrainConfig(data=DataConfig(jpeg_draft="yes")))


@pytest.mark.parametrize("jpeg_draft", [True, False])
def test_the_bench_references_decode_as_the_actors_do(web_samples, monkeypatch, jpeg_draft):
    data = DataConfig(image_size=SIZE, jpeg_draft=jpeg_draft)
    assert decoder_kwargs(data, tokenizer=None)["jpeg_draft"] is jpeg_draft  # BatchDecoder limit, DataLoader
    drafts = []
    monkeypatch.setattr(decode_limits, "decode_image", lambda jpg, draft=None: drafts.append(draft) or decode_image(jpg))
    decode_limits.decode_limit([s.jpg for s in web_samples], data, warmup=1)
    assert set(drafts) == {train_draft_side(SIZE) if jpeg_draft else None}


def test_the_bench_summary_says_whether_jpegs_were_drafted():
    cfg = load_config(IngestBenchConfig, None, ["synthetic.image_size=512", "data.jpeg_draft=false"])
    rate = Rate(100, 100, 1.0, cpu_s=1.0)
    s = summarize(cfg, cpus=1, samples=1000, files=["a.tar"],
                  rounds={name: [rate] for name in ("decode_limit", "batch_decoder_limit", "dataloader", "ours")})
    assert (s["jpeg_draft"], s["stored_image_size"], s["image_size"]) == (False, 512, 64)
    assert "JPEG draft off" in format_table(s)
    with pytest.raises(ConfigError, match="'synthetic.image_size'"):
        check(load_config(IngestBenchConfig, None, ["synthetic.image_size=0"]))


def test_with_draft_the_bench_also_times_the_full_decode_and_says_the_speedup():
    cfg = load_config(IngestBenchConfig, None, ["synthetic.image_size=512"])
    rounds = {name: [Rate(100, 100, 1.0, cpu_s=1.0)] for name in ("decode_limit", "batch_decoder_limit", "dataloader", "ours")}
    rounds["full_decode_limit"] = [Rate(25, 100, 4.0, cpu_s=4.0)]  # 25/s on one core, the draft's 100/s
    s = summarize(cfg, cpus=2, samples=1000, files=["a.tar"], rounds=rounds)
    assert s["draft_speedup"] == pytest.approx(4.0) and s["full_decode_limit_samples_per_s"] == pytest.approx(50)
    table = format_table(s)
    assert "decode limit without JPEG draft" in table and "decode limit 4.00x the full decode's (512 px JPEGs" in table
    del rounds["full_decode_limit"]  # draft off: no such row, no speedup
    s = summarize(cfg, cpus=2, samples=1000, files=["a.tar"], rounds=rounds)
    assert "draft_speedup" not in s and "without JPEG draft" not in format_table(s)
