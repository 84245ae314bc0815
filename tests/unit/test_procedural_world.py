"""The procedural world with headroom (data/synthetic.py, shape_drawing.py, shape_captions.py): the default
spec's samples are byte-identical to the code before styles existed, styles render differently over the
same scenes, subset captions always name colour and shape and the rest with mention_p, and the
Ray writer's GeneratedItem draws the very samples generate_samples does."""

from __future__ import annotations

import hashlib
import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from raylpclip.data.shape_captions import STYLE_PHRASES
from raylpclip.data.shape_drawing import STYLES
from raylpclip.data.sources import GeneratedItem, load_sample
from raylpclip.data.synthetic import SyntheticRecipe, SyntheticSpec, generate_samples

# sha256 over (jpg, caption, sorted meta) of samples written by data/synthetic.py BEFORE styles and
# subset captions were added (commit 21e1d9c), with this venv's Pillow/libjpeg. A new libjpeg may
# change JPEG bytes; then recompute these with the old code, never with the new one.
ORIGINAL_HASHES = {
    ("default64", 7, 0, 20, 0.3): "af8d3f8c72c06dd823fada18c983dd9c7f613a6bfeb7d2c770cecc8b6a2296fe",
    ("default32", 0, 0, 20, 0.0): "280328b443bb1be4557bca7582390a658039161078c6b1742ddf695bf5715037",
    ("shape32", 3, 150, 10, 0.5): "0b3a0c10ddaae9f05ac4adfe71ecc53bf5abe8b53246f13ec35e243d42af650a",
}
SPECS = {"default64": SyntheticSpec(), "default32": SyntheticSpec(image_size=32),
         "shape32": SyntheticSpec(image_size=32, label_by="shape")}


def _digest(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.jpg)
        h.update(s.caption.encode())
        h.update(repr(sorted(s.meta.items())).encode())
    return h.hexdigest()


@pytest.mark.parametrize("key", list(ORIGINAL_HASHES))
def test_the_default_world_is_byte_identical_to_the_original(key):
    name, seed, start, n, mismatch = key
    samples = generate_samples(n, spec=SPECS[name], seed=seed, start_index=start, mismatch_fraction=mismatch)
    assert _digest(samples) == ORIGINAL_HASHES[key]


def test_first_default_samples_keep_their_captions_and_metadata():
    first = next(generate_samples(1, spec=SyntheticSpec(image_size=32), seed=0))
    assert first.caption == "a large yellow diamond on a gray background"
    assert first.meta == {"shape": "diamond", "colour": "yellow", "size": "large", "position": "top right",
                          "background": "gray", "label": 23, "label_name": "yellow diamond",
                          "caption_mismatched": False}  # no "style": the original metadata


def _pixels(sample) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample.jpg)).convert("RGB"), np.float32)


def test_styles_render_the_same_scenes_differently():
    by_style = {st: list(generate_samples(12, spec=SyntheticSpec(image_size=32, styles=(st,)), seed=4))
                for st in STYLES}
    plain = by_style["plain"]
    for st, samples in by_style.items():
        for a, b in zip(plain, samples):  # the scene (attributes, label) does not depend on the style
            assert {k: v for k, v in a.meta.items() if k != "style"} == {k: v for k, v in b.meta.items() if k != "style"}
            assert b.meta.get("style", "plain") == st  # the original world (plain only) names no style
    for i, a in enumerate(STYLES):
        for b in STYLES[i + 1:]:
            change = np.mean([np.abs(_pixels(x) - _pixels(y)).mean() for x, y in zip(by_style[a], by_style[b])])
            assert change > 3.0, (a, b, change)
    # The plain style of a styled world is the original rendering, pixel for pixel.
    assert [s.jpg for s in plain] == [s.jpg for s in generate_samples(12, spec=SyntheticSpec(image_size=32), seed=4)]


def test_a_mixed_style_world_draws_every_style_and_a_heldout_style_split_only_its_own():
    spec = SyntheticSpec(image_size=16, styles=("plain", "outline", "pixel"))
    styles = [s.meta["style"] for s in generate_samples(300, spec=spec, seed=1)]
    assert {st: styles.count(st) for st in spec.styles} == pytest.approx({st: 100 for st in spec.styles}, abs=35)
    ood = SyntheticSpec(image_size=16, styles=("noisy",))
    assert {s.meta["style"] for s in generate_samples(50, spec=ood, seed=2)} == {"noisy"}


def _says_style(caption: str, style: str) -> bool:
    adjectives, after = STYLE_PHRASES[style]
    return any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", caption) for p in adjectives + after)


def test_subset_captions_always_name_colour_and_shape_and_the_rest_with_mention_p():
    spec = SyntheticSpec(image_size=16, styles=STYLES, caption_mode="subset", mention_p=0.6)
    samples = list(generate_samples(600, spec=spec, seed=3))
    for s in samples:
        m, said = s.meta, set(s.meta["mentioned"])
        assert re.search(rf"\b{m['colour']}\b", s.caption) and re.search(rf"\b{m['shape']}\b", s.caption), s.caption
        assert bool(re.search(rf"\b{m['size']}\b", s.caption)) == ("size" in said), s.caption
        assert bool(re.search(rf"\b{m['background']} background\b", s.caption)) == ("background" in said), s.caption
        assert (m["position"] in s.caption) == ("position" in said), s.caption
        assert _says_style(s.caption, m["style"]) == ("style" in said), s.caption
    n = 4 * len(samples)
    share = sum(len(s.meta["mentioned"]) for s in samples) / n
    assert abs(share - 0.6) < 4 * math.sqrt(0.6 * 0.4 / n)
    assert len({s.caption for s in samples}) > 400


def test_subset_captions_show_the_template_worlds_images():
    a = generate_samples(10, spec=SyntheticSpec(image_size=16), seed=8)
    b = generate_samples(10, spec=SyntheticSpec(image_size=16, caption_mode="subset"), seed=8)
    assert [s.jpg for s in a] == [s.jpg for s in b]


def test_a_mismatched_subset_caption_names_another_colour_or_shape():
    spec = SyntheticSpec(image_size=16, caption_mode="subset", styles=("plain", "outline"))
    samples = list(generate_samples(200, spec=spec, seed=5, mismatch_fraction=0.25))
    wrong = [s for s in samples if s.meta["caption_mismatched"]]
    assert len(wrong) == 50
    for s in wrong:
        assert not (re.search(rf"\b{s.meta['colour']}\b", s.caption) and re.search(rf"\b{s.meta['shape']}\b", s.caption))


def test_generated_items_draw_the_same_samples_in_any_order():
    spec = SyntheticSpec(image_size=16, styles=("plain", "noisy"), caption_mode="subset")
    recipe = SyntheticRecipe(spec, seed=6, mismatch_fraction=0.2)
    expected = list(generate_samples(30, spec=spec, seed=6, mismatch_fraction=0.2))
    for i in (29, 0, 17):
        got = load_sample(GeneratedItem(recipe, i))
        assert (got.jpg, got.caption, got.meta) == (expected[i].jpg, expected[i].caption, expected[i].meta)


@pytest.mark.parametrize("change, field", [({"styles": ("plain", "watercolour")}, "styles"),
                                           ({"styles": ()}, "styles"),
                                           ({"caption_mode": "poetry"}, "caption_mode"),
                                           ({"mention_p": 1.2}, "mention_p")])
def test_bad_specs_name_the_field(change, field):
    with pytest.raises(ValueError, match=f"SyntheticSpec.{field}"):
        SyntheticRecipe(SyntheticSpec(**change), seed=0)
