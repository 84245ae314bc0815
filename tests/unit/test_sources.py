"""Image-folder and captions-CSV sources: captions, labels, wrong captions, resizing, skips, splits."""

import io
from collections import Counter

import pytest
from PIL import Image

from raylpclip.data.caption_csv import caption_csv_items, caption_csv_samples, holdout_image_ids
from raylpclip.data.caption_templates import DEFAULT_TEMPLATES, check_templates
from raylpclip.data.image_encoding import encode_image
from raylpclip.data.image_folder import image_folder_items, image_folder_samples
from raylpclip.data.sources import SourceStats, shuffled

TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{} in the picture."]


def _jpg(path, size=(8, 8), colour=(200, 30, 30), fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    """3 classes x 20 images; the class folders are created out of sorted order."""
    root = tmp_path / "train"
    for name in ("sea_lion", "cat", "dog"):
        for i in range(20):
            _jpg(root / name / f"{i:04d}.jpg")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def _captions_for(name, templates=TEMPLATES):
    return {t.format(name) for t in templates}


def test_labels_follow_sorted_folders_and_templates_fill_the_class_name(folder):
    samples = list(image_folder_samples(folder, templates=TEMPLATES, seed=0))
    assert len(samples) == 60  # notes.txt is not an image
    names = {s.meta["label"]: s.meta["label_name"] for s in samples}
    assert names == {0: "cat", 1: "dog", 2: "sea lion"}  # underscores -> spaces
    for s in samples:
        assert s.caption in _captions_for(s.meta["label_name"])
        assert s.meta["caption_mismatched"] is False
        assert s.meta["image_id"].split("/")[0].replace("_", " ") == s.meta["label_name"]
    assert len({s.caption for s in samples if s.meta["label"] == 0}) > 1  # templates vary per image


def test_template_choice_is_deterministic_per_seed(folder):
    a = [i.caption for i in image_folder_items(folder, templates=TEMPLATES, seed=3)]
    b = [i.caption for i in image_folder_items(folder, templates=TEMPLATES, seed=3)]
    c = [i.caption for i in image_folder_items(folder, templates=TEMPLATES, seed=4)]
    assert a == b and a != c


def test_mismatch_fraction_is_exact_deterministic_and_never_the_true_class(folder):
    items = image_folder_items(folder, templates=TEMPLATES, mismatch_fraction=0.3, seed=1)
    again = image_folder_items(folder, templates=TEMPLATES, mismatch_fraction=0.3, seed=1)
    assert items == again
    wrong = [i for i in items if i.meta["caption_mismatched"]]
    assert len(wrong) == round(60 * 0.3)
    names = ["cat", "dog", "sea lion"]
    for item in items:
        true = _captions_for(item.meta["label_name"])
        if item.meta["caption_mismatched"]:
            assert item.caption not in true
            assert any(item.caption in _captions_for(n) for n in names if n != item.meta["label_name"])
        else:
            assert item.caption in true
    assert len({i.meta["label"] for i in wrong}) > 1  # drawn from all classes, not one block


def test_mismatch_needs_two_classes_and_a_valid_fraction(tmp_path):
    _jpg(tmp_path / "only" / "a.jpg")
    with pytest.raises(ValueError, match="two classes"):
        image_folder_items(tmp_path, mismatch_fraction=0.1)
    _jpg(tmp_path / "other" / "b.jpg")
    with pytest.raises(ValueError, match="mismatch_fraction"):
        image_folder_items(tmp_path, mismatch_fraction=1.5)


def test_bad_templates_and_classnames_are_refused(folder):
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["a photo of {name}."])
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["{} and {}"])
    assert check_templates(DEFAULT_TEMPLATES) == list(DEFAULT_TEMPLATES)
    with pytest.raises(ValueError, match="3 class folders"):
        image_folder_items(folder, classnames=["a", "b"])
    items = image_folder_items(folder, templates=["{}"], classnames={"sea_lion": "seal"})
    assert {i.caption for i in items} == {"cat", "dog", "seal"}


def test_resize_keeps_aspect_with_the_shorter_side_at_image_size(tmp_path):
    _jpg(tmp_path / "wide" / "a.jpg", size=(120, 60))
    _jpg(tmp_path / "tall" / "b.png", size=(30, 90), fmt="PNG")
    _jpg(tmp_path / "tiny" / "c.jpg", size=(10, 12))
    stats = SourceStats()
    samples = {s.meta["label_name"]: s for s in image_folder_samples(tmp_path, image_size=20, stats=stats)}
    sizes = {name: Image.open(io.BytesIO(s.jpg)).size for name, s in samples.items()}
    assert sizes == {"wide": (40, 20), "tall": (20, 60), "tiny": (10, 12)}  # never upscaled
    assert (samples["wide"].meta["source_width"], samples["wide"].meta["source_height"]) == (120, 60)
    assert all(Image.open(io.BytesIO(s.jpg)).format == "JPEG" for s in samples.values())  # PNG re-encoded
    assert stats.samples == 3 and stats.total_skipped == 0


def test_jpeg_bytes_are_kept_unless_resized():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="JPEG")
    data = buf.getvalue()
    assert encode_image(data, image_size=None) == (data, 16, 16)
    assert encode_image(data, image_size=16)[0] == data
    assert encode_image(data, image_size=8)[0] != data


def test_corrupt_and_truncated_images_are_skipped_and_counted(folder):
    (folder / "dog" / "0000.jpg").write_bytes(b"not a jpeg at all")
    whole = (folder / "dog" / "0001.jpg").read_bytes()
    (folder / "dog" / "0001.jpg").write_bytes(whole[: len(whole) // 2])
    stats = SourceStats()
    samples = list(image_folder_samples(folder, stats=stats))
    assert len(samples) == 58 and stats.samples == 58
    assert stats.skipped == Counter(unreadable=2)
    assert any("0000.jpg" in e for e in stats.examples)


def test_an_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder_items(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class subfolders"):
        image_folder_items(tmp_path)


@pytest.fixture
def flickr(tmp_path):
    """6 images with 3 captions each (one caption quoted with a comma), as Flickr8k's captions.txt."""
    images = tmp_path / "images"
    rows = ["image,caption"]
    for i in range(6):
        _jpg(images / f"img{i}.jpg", size=(40, 30))
        rows += [f"img{i}.jpg,a dog number {i} runs .", f'img{i}.jpg,"dog {i} , on grass"', f"img{i}.jpg,caption {i}c"]
    csv_path = tmp_path / "captions.txt"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path, images


def test_csv_keeps_one_sample_per_caption_with_the_image_id(flickr):
    csv_path, images = flickr
    samples = list(caption_csv_samples(csv_path, image_root=images, image_size=15))
    assert len(samples) == 18
    by_image = Counter(s.meta["image_id"] for s in samples)
    assert by_image == {f"img{i}.jpg": 3 for i in range(6)}
    assert samples[1].caption == "dog 0 , on grass" and samples[1].meta["caption_index"] == 1
    assert Image.open(io.BytesIO(samples[0].jpg)).size == (20, 15)
    first = list(caption_csv_samples(csv_path, image_root=images, captions="first"))
    assert [s.caption for s in first] == [f"a dog number {i} runs ." for i in range(6)]


def test_csv_missing_column_names_the_columns_found(flickr):
    csv_path, images = flickr
    with pytest.raises(ValueError, match=r"\['text'\].*columns found: \['image', 'caption'\]"):
        caption_csv_items(csv_path, image_root=images, caption_col="text")


def test_csv_missing_images_name_the_file_and_root(flickr):
    csv_path, images = flickr
    (images / "img3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img3.jpg"):
        caption_csv_items(csv_path, image_root=images)
    with pytest.raises(FileNotFoundError, match="6 of 6"):
        caption_csv_items(csv_path)  # default root: the CSV's folder, where the images are not


def test_csv_unreadable_images_and_empty_captions_are_skipped_and_counted(flickr):
    csv_path, images = flickr
    (images / "img2.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with open(csv_path, "a") as f:
        f.write("img0.jpg,\n")
    stats = SourceStats()
    samples = list(caption_csv_samples(csv_path, image_root=images, stats=stats))
    assert len(samples) == 15
    assert stats.skipped == Counter(unreadable=3, empty_caption=1)


def test_holdout_groups_by_image_is_exact_and_deterministic(flickr):
    csv_path, images = flickr
    kwargs = dict(image_root=images, holdout_fraction=0.34, seed=5)
    train = caption_csv_items(csv_path, split="train", **kwargs)
    held = caption_csv_items(csv_path, split="eval", **kwargs)
    train_ids = {i.meta["image_id"] for i in train}
    eval_ids = {i.meta["image_id"] for i in held}
    assert not train_ids & eval_ids and len(train_ids | eval_ids) == 6
    assert len(eval_ids) == 2 and len(held) == 6  # every caption of a held-out image goes with it
    assert caption_csv_items(csv_path, split="eval", **kwargs) == held
    assert holdout_image_ids(reversed(sorted(train_ids | eval_ids)), fraction=0.34, seed=5) == eval_ids
    other_seed = {i.meta["image_id"] for i in caption_csv_items(csv_path, split="eval", image_root=images,
                                                                holdout_fraction=0.34, seed=6)}
    assert len(other_seed) == 2
    with pytest.raises(ValueError, match="split="):
        caption_csv_items(csv_path, image_root=images, holdout_fraction=0.2)


def test_holdout_ids_fraction_and_bounds():
    ids = [f"im{i}" for i in range(1000)]
    assert len(holdout_image_ids(ids, fraction=0.2)) == 200
    assert len(holdout_image_ids(ids[:3], fraction=0.01)) == 1  # asked for a holdout: never empty
    assert holdout_image_ids(ids, fraction=0.0) == frozenset()
    with pytest.raises(ValueError):
        holdout_image_ids(ids, fraction=1.0)


def test_shuffled_is_a_seeded_permutation(folder):
    items = image_folder_items(folder)
    a, b = shuffled(items, seed=1), shuffled(items, seed=1)
    assert a == b and a != items and sorted(a, key=lambda i: i.path) == sorted(items, key=lambda i: i.path)
