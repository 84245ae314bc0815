"""The synthetic shapes dataset: determinism, caption content, labels, noisy correspondence."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from raylpclip.data.sample import Sample
from raylpclip.data.synthetic import SyntheticSpec, class_names, generate_samples, is_mismatched, zeroshot_templates

SPEC = SyntheticSpec()


def _gen(n: int, **kw) -> list[Sample]:
    kw.setdefault("spec", SPEC)
    kw.setdefault("seed", 7)
    return list(generate_samples(n, **kw))


def test_chunked_generation_is_byte_identical_to_one_call():
    whole = _gen(40, mismatch_fraction=0.3)
    chunks = _gen(13, mismatch_fraction=0.3) + _gen(27, start_index=13, mismatch_fraction=0.3)
    assert [s.jpg for s in whole] == [s.jpg for s in chunks]
    assert [s.caption for s in whole] == [s.caption for s in chunks]
    assert [s.meta for s in whole] == [s.meta for s in chunks]


def test_seed_changes_the_samples_and_images_are_not_duplicates():
    a, b = _gen(50, seed=1), _gen(50, seed=2)
    assert [s.jpg for s in a] != [s.jpg for s in b]
    assert len({s.jpg for s in a}) == 50  # jitter + noise: no two images identical


def test_images_are_rgb_jpegs_of_the_spec_size():
    spec = SyntheticSpec(image_size=48)
    for s in _gen(10, spec=spec):
        assert s.jpg[:2] == b"\xff\xd8"
        image = Image.open(io.BytesIO(s.jpg))
        assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "RGB"
        assert s.key == ""  # the shard writer assigns keys


def test_every_caption_names_its_colour_and_shape_in_varied_phrasing():
    samples = _gen(300)
    structures = set()
    for s in samples:
        assert re.search(rf"\b{s.meta['colour']}\b", s.caption), s.caption
        assert re.search(rf"\b{s.meta['shape']}\b", s.caption), s.caption
        structure = s.caption
        for field in ("colour", "shape", "size", "position", "background"):
            structure = structure.replace(s.meta[field], f"<{field}>")
        structures.add(re.sub(r"\ban?\b", "a", structure))
    assert len(structures) >= 6, structures


def test_some_captions_mention_size_position_and_background():
    samples = _gen(200)
    for field in ("size", "position", "background"):
        assert any(s.meta[field] in s.caption for s in samples), field


def test_shape_colour_is_never_the_background():
    spec = SyntheticSpec(colours=("red", "green"), backgrounds=("red", "green", "striped"))
    samples = _gen(300, spec=spec)
    assert all(s.meta["colour"] != s.meta["background"] for s in samples)
    assert {s.meta["background"] for s in samples} == {"red", "green", "striped"}


def test_class_names_per_label_by():
    assert len(class_names(SPEC)) == 36
    assert class_names(SPEC)[:2] == ["red circle", "red square"]
    assert class_names(SyntheticSpec(label_by="shape")) == list(SPEC.shapes)
    assert class_names(SyntheticSpec(label_by="colour")) == list(SPEC.colours)
    with pytest.raises(ValueError, match="label_by"):
        class_names(SyntheticSpec(label_by="size"))


@pytest.mark.parametrize("label_by", ["colour_shape", "shape", "colour"])
def test_labels_index_class_names(label_by):
    spec = SyntheticSpec(label_by=label_by)
    names = class_names(spec)
    for s in _gen(100, spec=spec):
        expected = {"colour_shape": f"{s.meta['colour']} {s.meta['shape']}",
                    "shape": s.meta["shape"], "colour": s.meta["colour"]}[label_by]
        assert s.meta["label_name"] == expected
        assert names[s.meta["label"]] == expected


def test_all_classes_appear():
    assert {s.meta["label"] for s in _gen(1000)} == set(range(36))


def test_mismatch_fraction_swaps_exactly_that_many_captions_and_keeps_true_labels():
    clean = _gen(1000)
    noisy = _gen(1000, mismatch_fraction=0.3)
    flags = [s.meta["caption_mismatched"] for s in noisy]
    assert sum(flags) == 300
    assert 0 < sum(flags[:500]) < 300  # spread out, not one contiguous run
    for c, n in zip(clean, noisy):
        assert n.jpg == c.jpg and n.meta["label"] == c.meta["label"]  # image and label stay true
        if n.meta["caption_mismatched"]:
            both = c.meta["colour"] in n.caption and re.search(rf"\b{c.meta['shape']}\b", n.caption)
            assert not both, (n.caption, c.meta)
        else:
            assert n.caption == c.caption


def test_mismatch_is_off_at_zero_and_all_at_one():
    assert not any(s.meta["caption_mismatched"] for s in _gen(100))
    assert all(s.meta["caption_mismatched"] for s in _gen(100, mismatch_fraction=1.0))
    assert sum(is_mismatched(i, seed=3, fraction=0.25) for i in range(400)) == 100
    with pytest.raises(ValueError, match="mismatch_fraction"):
        _gen(1, mismatch_fraction=1.5)


def test_meta_is_json_serialisable():
    import json

    meta = _gen(1, mismatch_fraction=1.0)[0].meta
    assert json.loads(json.dumps(meta)) == meta
    assert set(meta) >= {"shape", "colour", "size", "position", "background", "label", "label_name",
                         "caption_mismatched"}


def test_zeroshot_templates_take_one_class_name():
    templates = zeroshot_templates()
    assert len(templates) >= 4
    assert all(t.count("{}") == 1 for t in templates)
    assert "a red circle." in {t.format("red circle") for t in templates}


def test_unknown_spec_values_raise_naming_the_field():
    with pytest.raises(ValueError, match="colours.*pink"):
        _gen(1, spec=SyntheticSpec(colours=("red", "pink")))
    with pytest.raises(ValueError, match="shapes.*hexagon"):
        _gen(1, spec=SyntheticSpec(shapes=("hexagon",)))
    with pytest.raises(ValueError, match="two colour/shape pairs"):
        _gen(1, spec=SyntheticSpec(colours=("red",), shapes=("star",)), mismatch_fraction=0.5)
