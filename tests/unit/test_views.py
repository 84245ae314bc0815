"""Views for batch inference: deterministic per sample key, corruption views equal eval/corruptions,
bad images skipped and counted, labels passed through untouched."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from raylpclip.data.decode import DataError
from raylpclip.data.transforms import eval_transform
from raylpclip.data.views import ViewDecoder, corruption_views, parse_view
from raylpclip.eval.corruptions import corrupt

VIEWS = ["clean", "weak", "strong", "fog@5", "gaussian_noise@1"]


def _jpg(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((40, 48, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _batch(keys, labels=None, jpgs=None):
    jpgs = jpgs or [_jpg(i) for i in range(len(keys))]
    meta = [json.dumps({} if labels is None else {"label": labels[i]}).encode() for i in range(len(keys))]
    return {"__key__": list(keys), "jpg": jpgs, "txt": [b"a photo"] * len(keys), "json": meta}


def test_views_depend_on_the_sample_not_on_its_batch():
    decode = ViewDecoder(views=VIEWS, image_size=32, seed=3)
    jpgs = [_jpg(i) for i in range(3)]
    whole = decode(_batch(["a", "b", "c"], jpgs=jpgs))
    alone = decode(_batch(["c"], jpgs=[jpgs[2]]))  # the same sample, in another batch and position
    for view in VIEWS:
        assert np.array_equal(whole[f"view_{view}"][2], alone[f"view_{view}"][0]), view
    # Another key gets other random views of the same image; the clean view does not depend on the key.
    renamed = decode(_batch(["z"], jpgs=[jpgs[2]]))
    assert not np.array_equal(renamed["view_strong"][0], alone["view_strong"][0])
    assert np.array_equal(renamed["view_clean"][0], alone["view_clean"][0])
    assert whole["view_weak"].dtype == np.uint8 and whole["view_weak"].shape == (3, 3, 32, 32)


def test_corruption_view_is_the_corrupted_clean_view():
    jpg = _jpg(7)
    out = ViewDecoder(views=["clean", "fog@5"], image_size=32)(_batch(["k7"], jpgs=[jpg]))
    clean = eval_transform(Image.open(io.BytesIO(jpg)).convert("RGB"), size=32)
    assert np.array_equal(out["view_clean"][0], clean)
    expected = corrupt(clean.transpose(1, 2, 0), "fog", 5, key="k7").transpose(2, 0, 1)
    assert np.array_equal(out["view_fog@5"][0], expected)


def test_bad_images_are_skipped_and_counted_labels_pass_through():
    decode = ViewDecoder(views=["clean"], image_size=32)
    batch = _batch(["a", "b", "c"], labels=[4, 1, 7], jpgs=[_jpg(0), b"not a jpeg", _jpg(2)])
    out = decode(batch)
    assert list(out["key"]) == ["a", "c"] and list(out["label"]) == [4, 7]
    assert decode.skipped == {"bad_image": 1}
    unlabelled = decode(_batch(["x"]))
    assert list(unlabelled["label"]) == [-1]


def test_nothing_usable_stops_with_the_shard_named():
    decode = ViewDecoder(views=["clean"], image_size=32, fail_after_bad=2)
    batch = {**_batch(["a", "b"], jpgs=[b"x", b"y"]), "__url__": ["/data/s/00000.tar"] * 2}
    with pytest.raises(DataError, match="00000.tar"):
        decode(batch)


def test_wrong_member_names_are_an_error_naming_the_keys():
    with pytest.raises(DataError, match=r"keys \[__key__, input.jpg\]"):
        ViewDecoder(views=["clean"], image_size=32)({"__key__": ["a"], "input.jpg": [_jpg(0)]})


def test_view_names_are_checked():
    assert parse_view("fog@5") == ("fog", 5) and parse_view("strong") is None
    assert corruption_views(["fog"], [1, 2]) == ["fog@1", "fog@2"]
    for bad in ("fog@6", "fog", "frost@1", "blurry"):
        with pytest.raises(ValueError, match="unknown view"):
            parse_view(bad)
