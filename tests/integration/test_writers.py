"""`raylpclip shards` on real data through the Ray writer: a CIFAR-10 image folder (with wrong
captions and a corrupt file), a Flickr8k captions CSV split by image, and an S3 (moto) output."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylpclip.commands.shards import cmd_shards
from raylpclip.data.metadata import iter_records, label_names
from raylpclip.data.shard_files import list_shards, read_stats

pytestmark = pytest.mark.ray

CLASSES = ("airplane", "automobile")
PER_CLASS = 200
FLICKR_IMAGES = 100


def _extract(archive: Path, dest: Path, keep) -> None:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and keep(m.name)]
        tar.extractall(dest, members=members, filter="data")


@pytest.fixture(scope="module")
def cifar_subset(shared_data, tmp_path_factory) -> Path:
    """2 classes x 200 CIFAR-10 test images, plus one corrupt file."""
    dest = tmp_path_factory.mktemp("cifar")
    _extract(shared_data / "cifar10" / "test.tar.gz", dest,
             lambda name: name.split("/")[1] in CLASSES and int(Path(name).stem) < PER_CLASS)
    (dest / "test" / "automobile" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return dest / "test"


@pytest.fixture(scope="module")
def flickr_subset(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """The first 100 Flickr8k-1k images with their 5 captions each."""
    dest = tmp_path_factory.mktemp("flickr")
    with open(shared_data / "flickr8k-1k" / "captions.txt", newline="") as f:
        rows = list(csv.DictReader(f))
    images = list(dict.fromkeys(r["image"] for r in rows))[:FLICKR_IMAGES]
    wanted = set(images)
    _extract(shared_data / "flickr8k-1k" / "images.tar.gz", dest, lambda name: Path(name).name in wanted)
    with open(dest / "captions.txt", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(r for r in rows if r["image"] in wanted)
    return dest / "captions.txt", dest / "images"


def test_cifar_folder_with_wrong_captions(ray_session, cifar_subset, tmp_path, capsys):
    out = tmp_path / "cifar"
    path = cmd_shards(["folder", str(cifar_subset), str(out), "--samples-per-shard", "100",
                       "--mismatch-fraction", "0.25", "--seed", "1", "--parallelism", "2"])
    assert path == out / "summary.json"
    summary = json.loads(path.read_text())
    assert summary["samples"] == 400 and summary["shards"] == 5 and summary["skipped"] == {"unreadable": 1}
    assert summary["mismatched"] == round(401 * 0.25) and summary["classnames"] == list(CLASSES)
    assert "shards 5/5 written" in capsys.readouterr().out

    shards = list_shards(str(out), "webdataset")
    assert len(shards) == 5 and read_stats(str(out)) == 400
    assert label_names(shards, fmt="webdataset") == list(CLASSES)
    records = list(iter_records(shards, fmt="webdataset"))
    assert len({r["meta"]["key"] for r in records}) == 400
    assert Counter(r["meta"]["label"] for r in records) == {0: 200, 1: 200}
    wrong = [r for r in records if r["meta"]["caption_mismatched"]]
    assert len(wrong) in (99, 100)  # the corrupt file may have been one of the 100
    for r in records:  # a wrong caption names the other class, a right one the true class
        named = CLASSES[1 - r["meta"]["label"] if r["meta"]["caption_mismatched"] else r["meta"]["label"]]
        unnamed = CLASSES[CLASSES.index(named) - 1]
        assert named in r["caption"] and unnamed not in r["caption"]
    # Shuffled before sharding: each shard mixes both classes.
    first = [r["meta"]["label"] for r in iter_records(shards[:1], fmt="webdataset")]
    assert 20 < sum(first) < 80

    with pytest.raises(ValueError, match="already holds"):
        cmd_shards(["folder", str(cifar_subset), str(out)])


def test_flickr_csv_split_by_image_to_parquet(ray_session, flickr_subset, tmp_path):
    captions, images = flickr_subset
    common = ["--image-root", str(images), "--holdout-fraction", "0.2", "--image-size", "64", "--format", "parquet",
              "--samples-per-shard", "250", "--parallelism", "2"]
    ids = {}
    for split in ("train", "eval"):
        out = tmp_path / split
        summary = json.loads(cmd_shards(["csv", str(captions), str(out), "--split", split, *common]).read_text())
        shards = list_shards(str(out), "parquet")
        records = list(iter_records(shards, fmt="parquet"))
        assert summary["samples"] == len(records) == read_stats(shards) == 5 * summary["images"]
        per_image = Counter(r["meta"]["image_id"] for r in records)
        assert set(per_image.values()) == {5}
        assert sorted(Counter(r["meta"]["caption_index"] for r in records).values()) == [summary["images"]] * 5
        assert all(r["caption"] for r in records)
        ids[split] = set(per_image)
        table = pq.read_table(shards[0], columns=["jpg", "source_width", "source_height"]).to_pylist()
        for row in table[:20]:
            width, height = Image.open(io.BytesIO(row["jpg"])).size
            assert min(width, height) == 64 and max(row["source_width"], row["source_height"]) > 64
    assert len(ids["eval"]) == 20 and len(ids["train"]) == 80 and not ids["train"] & ids["eval"]


def test_s3_output_with_an_endpoint(ray_session, cifar_subset, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import fsspec

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://{}:{}".format(*server.get_host_and_port())
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
        fs = fsspec.filesystem("s3", **options)
        fs.mkdir("shards-bucket")
        local = cmd_shards(["folder", str(cifar_subset), "s3://shards-bucket/cifar", "--s3-endpoint", endpoint,
                            "--samples-per-shard", "200", "--summary-dir", str(tmp_path / "summary")])
        assert local == tmp_path / "summary" / "summary.json"
        assert json.loads(local.read_text())["samples"] == 400
        assert json.loads(fs.cat("shards-bucket/cifar/summary.json"))["shards"] == 3
        monkeypatch.setitem(fsspec.config.conf, "s3", options)  # the readers take plain URLs
        shards = list_shards("s3://shards-bucket/cifar", "webdataset")
        assert len(shards) == 3 and read_stats(shards) == 400
    finally:
        server.stop()
