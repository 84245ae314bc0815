"""`raylpclip shards contexts` and `raylpclip shards procedural` through the Ray writer: the shards read
back hold the labels, contexts and captions the sources decided, and the pixels edited (contexts) or
drawn (procedural) inside the writer tasks are the ones a single process makes."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylpclip import cli
from raylpclip.data.context_world import ContextWorldSpec, context_world_samples
from raylpclip.data.metadata import iter_records, label_names
from raylpclip.data.shard_files import list_shards, read_stats
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.ray

CLASSES = ("airplane", "cat", "ship")
PER_CLASS = 20


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    """3 classes x 20 CIFAR-10 test images, or drawn 32x32 images where the real data is absent."""
    root = tmp_path_factory.mktemp("world") / "test"
    archive = SHARED_DATA / "cifar10" / "test.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[1] in CLASSES
                       and int(Path(m.name).stem) < PER_CLASS]
            tar.extractall(root.parent, members=members, filter="data")
    else:
        rng = np.random.default_rng(0)
        for name in CLASSES:
            (root / name).mkdir(parents=True)
            for i in range(PER_CLASS):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i:04d}.jpg")
    assert sum(1 for _ in root.rglob("*.jpg")) == len(CLASSES) * PER_CLASS
    return root


def _tar_samples(paths: list[str]) -> dict[str, tuple[bytes, dict]]:
    """image_id -> (stored JPEG, metadata) from webdataset tars."""
    found: dict[str, dict[str, bytes]] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    out = {}
    for parts in found.values():
        meta = json.loads(parts["json"])
        out[meta["image_id"]] = (parts["jpg"], meta)
    return out


def test_context_world_shards_hold_the_decided_contexts_captions_and_pixels(ray_session, class_folder, tmp_path):
    out = tmp_path / "ctx"
    assert cli.main(["shards", "contexts", str(class_folder), str(out), "--mismatch-fraction", "0.2",
                     "--mention-p", "0.8", "--seed", "1", "--samples-per-shard", "25", "--parallelism", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 60 and summary["shards"] == 3 and summary["mismatched"] == 12
    assert summary["classnames"] == list(CLASSES) and sum(summary["context_counts"].values()) == 60

    shards = list_shards(str(out), "webdataset")
    assert read_stats(str(out)) == 60 and label_names(shards, fmt="webdataset") == list(CLASSES)
    records = list(iter_records(shards, fmt="webdataset"))
    assert Counter(r["meta"]["label"] for r in records) == {0: 20, 1: 20, 2: 20}
    assert sum(r["meta"]["caption_mismatched"] for r in records) == 12
    # The same split made in one process: every caption, context list and edited JPEG must match.
    expected = {s.meta["image_id"]: s for s in context_world_samples(class_folder, ContextWorldSpec(
        mismatch_fraction=0.2, mention_p=0.8, seed=1))}
    stored = _tar_samples(shards)
    assert stored.keys() == expected.keys()
    for image_id, (jpg, meta) in stored.items():
        want = expected[image_id]
        assert jpg == want.jpg, image_id
        assert meta["caption"] == want.caption and meta["contexts"] == want.meta["contexts"]
        assert meta["label_name"] == CLASSES[meta["label"]]
        if not meta["caption_mismatched"]:  # a caption names only contexts its own image has
            assert set(meta["mentioned"]) <= set(meta["contexts"])
        named = [c for c in CLASSES if re.search(rf"\b{c}\b", meta["caption"])]
        assert named == [CLASSES[meta["caption_label"]]], meta["caption"]
    assert any(meta["contexts"] for _, meta in stored.values())

    ood = tmp_path / "ood"
    assert cli.main(["shards", "contexts", str(class_folder), str(ood), "--contexts", "sketch",
                     "--exact-contexts", "1", "--format", "parquet", "--samples-per-shard", "60"]) == 0
    rows = list(iter_records(list_shards(str(ood), "parquet"), fmt="parquet"))
    assert len(rows) == 60 and all(json.loads(r["meta"]["contexts"]) == ["sketch"] for r in rows)


def test_procedural_world_shards_are_the_generated_samples(ray_session, tmp_path):
    out = tmp_path / "proc"
    assert cli.main(["shards", "procedural", str(out), "--samples", "120", "--styles", "plain,outline,pixel",
                     "--caption-mode", "subset", "--mention-p", "0.7", "--mismatch-fraction", "0.1",
                     "--image-size", "32", "--seed", "2", "--samples-per-shard", "50", "--format", "parquet",
                     "--parallelism", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 120 and summary["shards"] == 3 and summary["image_size"] == 32
    spec = SyntheticSpec(image_size=32, styles=("plain", "outline", "pixel"), caption_mode="subset", mention_p=0.7)
    expected = list(generate_samples(120, spec=spec, seed=2, mismatch_fraction=0.1))
    tables = [pq.read_table(p) for p in list_shards(str(out), "parquet")]
    rows = [row for t in tables for row in t.to_pylist()]
    assert [r["txt"] for r in rows] == [s.caption for s in expected]  # index order, not shuffled
    assert [r["jpg"] for r in rows] == [s.jpg for s in expected]
    assert [r["style"] for r in rows] == [s.meta["style"] for s in expected]
    assert {r["style"] for r in rows} == {"plain", "outline", "pixel"}
    # Exactly 10 of each full block of 100 indices; the partial block 100..119 holds what falls there.
    assert sum(r["caption_mismatched"] for r in rows) == sum(s.meta["caption_mismatched"] for s in expected) >= 10
    for r in rows:
        if not r["caption_mismatched"]:
            assert r["colour"] in r["txt"] and r["shape"] in r["txt"]
    assert Image.open(io.BytesIO(rows[0]["jpg"])).size == (32, 32)
