"""The context world (data/context_world.py, image_contexts.py, context_captions.py): every context is
visible at 32x32 and deterministic, context counts follow their weights, mention_p holds, captions name
exactly the mentioned contexts, wrong captions name another class, exact-context (OOD) splits."""

from __future__ import annotations

import io
import math
import re
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from raylpclip.data.context_captions import context_caption, context_phrasings
from raylpclip.data.context_world import (ContextWorldSpec, context_world_items, context_world_samples, count_weights,
                                          draw_contexts)
from raylpclip.data.image_contexts import CONTEXTS, EXCLUSIVE, ContextEdit, compatible
from raylpclip.data.image_encoding import JPEG_QUALITY

VISIBLE = 10.0  # mean absolute pixel change (of 255) every context makes on the test scene
CLASSES = ("cat", "dog", "ship")  # words that no context phrasing contains


def _scene() -> Image.Image:
    """32x32, colourful, with edges and an up/down asymmetry: what a CIFAR image has, made here."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    img = Image.fromarray(np.clip(np.stack([x * 8, y * 8, 255 - (x + y) * 4], axis=2), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([4, 4, 16, 16], fill=(240, 200, 20))
    draw.rectangle([18, 6, 28, 26], fill=(20, 30, 160))
    draw.polygon([(4, 28), (14, 18), (16, 30)], fill=(200, 20, 40))
    return img


def _change(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("name", CONTEXTS)
def test_every_context_visibly_changes_a_32px_image_and_is_deterministic(name):
    img = _scene()
    out = ContextEdit((name,), seed=5)(img)
    assert out.size == (32, 32) and out.mode == "RGB"
    assert _change(img, out) > VISIBLE, name
    assert out.tobytes() == ContextEdit((name,), seed=5)(img).tobytes()


def test_contexts_are_visible_on_real_cifar_images(shared_data):
    with tarfile.open(shared_data / "cifar10" / "test.tar.gz") as tar:
        images = []
        for member in tar:
            if member.isfile() and member.name.endswith("/0000.jpg"):
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            if len(images) == 10:
                break
    assert len(images) == 10
    for name in CONTEXTS:  # on average over the classes: a gray airplane hardly changes in grayscale alone
        assert np.mean([_change(img, ContextEdit((name,), seed=0)(img)) for img in images]) > 8.0, name


def test_noise_depends_on_the_seed_and_contexts_apply_in_canonical_order():
    img = _scene()
    assert ContextEdit(("noisy",), seed=1)(img).tobytes() != ContextEdit(("noisy",), seed=2)(img).tobytes()
    with pytest.raises(ValueError, match="canonical order"):
        ContextEdit(("noisy", "blurry"), seed=0)
    with pytest.raises(ValueError, match="exclusive"):
        ContextEdit(("dark", "bright"), seed=0)


def test_context_counts_follow_the_weights_within_binomial_tolerance():
    spec = ContextWorldSpec(contexts_per_image=(0.3, 0.45, 0.25))
    weights, n = count_weights(spec), 2000
    draws = [draw_contexts(spec, np.random.default_rng([9, i]), weights) for i in range(n)]
    counts = Counter(len(d) for d in draws)
    for k, p in enumerate((0.3, 0.45, 0.25)):
        assert abs(counts[k] - n * p) < 4 * math.sqrt(n * p * (1 - p)), (k, counts)
    assert all(len(set(d)) == len(d) and compatible(d) and list(d) == [c for c in CONTEXTS if c in d] for d in draws)
    used = Counter(c for d in draws for c in d)
    assert set(used) == set(CONTEXTS)  # every context drawn, none starved by the exclusions
    # Uniform choice: each context's share within a broad band of the mean.
    assert max(used.values()) < 2 * min(used.values()), used


@pytest.fixture
def folder(tmp_path):
    """3 classes x 300 tiny images (distinct pixels per image)."""
    root = tmp_path / "world"
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(300):
            colour = (label * 80 + 20, i % 256, (i * 7) % 256)
            Image.new("RGB", (4, 4), colour).save(root / name / f"{i:04d}.png")
    return root


def _named(caption: str) -> set[str]:
    """The contexts whose phrasings appear in `caption` (the phrasings of distinct contexts never overlap)."""
    found = set()
    for name, phrases in context_phrasings().items():
        if any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", caption) for p in phrases):
            found.add(name)
    return found


def test_mention_p_holds_and_captions_name_exactly_the_mentioned_contexts(folder):
    items = context_world_items(folder, ContextWorldSpec(mention_p=0.6, seed=3))
    applied = sum(len(i.meta["contexts"]) for i in items)
    mentioned = sum(len(i.meta["mentioned"]) for i in items)
    assert applied > 600
    assert abs(mentioned / applied - 0.6) < 4 * math.sqrt(0.6 * 0.4 / applied)
    for item in items:
        assert set(item.meta["mentioned"]) <= set(item.meta["contexts"])
        assert _named(item.caption) == set(item.meta["mentioned"]), item.caption
        assert re.search(rf"\b{item.meta['label_name']}\b", item.caption), item.caption  # class_p = 1
    assert len({i.caption for i in items}) > 200  # varied phrasings, not a handful of templates


def test_a_mismatched_caption_names_another_class_and_the_count_is_exact(folder):
    items = context_world_items(folder, ContextWorldSpec(mismatch_fraction=0.3, seed=1))
    wrong = [i for i in items if i.meta["caption_mismatched"]]
    assert len(wrong) == round(900 * 0.3)
    for item in items:
        said = [c for c in CLASSES if re.search(rf"\b{c}\b", item.caption)]
        assert said == [CLASSES[item.meta["caption_label"]]], item.caption
        assert (item.meta["caption_label"] != item.meta["label"]) == item.meta["caption_mismatched"]


def test_exact_contexts_give_ood_and_clean_splits(folder):
    ood = context_world_items(folder, ContextWorldSpec(contexts=("sketch", "noisy"), exact_contexts=1, seed=2))
    assert all(len(i.meta["contexts"]) == 1 and i.meta["contexts"][0] in ("sketch", "noisy") for i in ood)
    assert Counter(i.meta["contexts"][0] for i in ood).keys() == {"sketch", "noisy"}
    clean = context_world_items(folder, ContextWorldSpec(exact_contexts=0))
    assert all(i.meta["contexts"] == [] and _named(i.caption) == set() for i in clean)


def test_draws_are_deterministic_per_seed_and_image(folder):
    spec = ContextWorldSpec(seed=4, mismatch_fraction=0.1)
    a, b = context_world_items(folder, spec), context_world_items(folder, spec)
    assert [(i.caption, i.meta, i.edit) for i in a] == [(i.caption, i.meta, i.edit) for i in b]
    other = context_world_items(folder, ContextWorldSpec(seed=5, mismatch_fraction=0.1))
    assert [i.meta["contexts"] for i in a] != [i.meta["contexts"] for i in other]
    # An image's draws depend on its own id, not on the rest of the folder.
    half = context_world_items(folder, ContextWorldSpec(seed=4, max_images=450))
    by_id = {i.meta["image_id"]: i.meta["contexts"] for i in a}
    assert len(half) == 450 and all(by_id[i.meta["image_id"]] == i.meta["contexts"] for i in half)


def test_samples_carry_the_edited_pixels(tmp_path):
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    _scene().save(root / "cat" / "a.png")
    _scene().save(root / "dog" / "b.png")
    spec = ContextWorldSpec(contexts=("upside-down",), exact_contexts=1)
    expected = io.BytesIO()
    _scene().transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(expected, format="JPEG", quality=JPEG_QUALITY)
    for sample in context_world_samples(root, spec):
        assert sample.jpg == expected.getvalue()  # the flipped image, encoded once
        assert sample.meta["contexts"] == ["upside-down"] and sample.meta["source_width"] == 32


@pytest.mark.parametrize("spec, key", [
    (ContextWorldSpec(contexts=("blurry", "foggy")), "unknown contexts"),
    (ContextWorldSpec(contexts=("dark", "bright"), contexts_per_image=(0, 0, 1)), "contexts_per_image"),
    (ContextWorldSpec(contexts=("dark",), exact_contexts=2), "exact_contexts"),
    (ContextWorldSpec(contexts_per_image=(-1, 2)), "contexts_per_image"),
    (ContextWorldSpec(mention_p=1.5), "mention_p"),
    (ContextWorldSpec(mismatch_fraction=-0.1), "mismatch_fraction"),
])
def test_bad_specs_name_the_field(folder, spec, key):
    with pytest.raises(ValueError, match=key):
        context_world_items(folder, spec)


def test_unnamed_class_and_phrasings_cover_every_context():
    assert set(context_phrasings()) == set(CONTEXTS) and all(len(p) >= 3 for p in context_phrasings().values())
    assert all(len(pair) == 2 and pair <= set(CONTEXTS) for pair in EXCLUSIVE)
    caption = context_caption(None, ["blurry"], np.random.default_rng(0))
    assert not any(c in caption for c in CLASSES) and _named(caption) == {"blurry"}
