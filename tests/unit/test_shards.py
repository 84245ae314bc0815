"""Shard writing/listing in img2dataset's layouts, checked against img2dataset's own rules."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylpclip.data.sample import Sample
from raylpclip.data.shard_files import _expand_braces, list_shards, read_stats, resolve_shards
from raylpclip.data.shard_writer import oom_sample_per_shard, sample_key, write_shard, write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return list(generate_samples(25, spec=SyntheticSpec(image_size=32), seed=3, mismatch_fraction=0.2))


def _img2dataset_key(key: int, shard_id: int, number_sample_per_shard: int, oom_shard_count: int = 5) -> str:
    """img2dataset's downloader: oom_sample_per_shard = ceil(log10(n)), then compute_key."""
    oom_sample_per_shard = math.ceil(math.log10(number_sample_per_shard))
    true_key = (10**oom_sample_per_shard) * shard_id + key
    return "{true_key:0{key_format}d}".format(true_key=true_key, key_format=oom_sample_per_shard + oom_shard_count)


@pytest.mark.parametrize("per_shard", [1, 7, 10, 999, 1000, 1001, 10000])
@pytest.mark.parametrize("shard_id,index", [(0, 0), (3, 0), (12, 5)])
def test_keys_match_img2dataset(per_shard, shard_id, index):
    index = min(index, per_shard - 1)
    assert sample_key(shard_id, index, samples_per_shard=per_shard) == _img2dataset_key(index, shard_id, per_shard)


def test_key_digit_examples():
    assert oom_sample_per_shard(10000) == 4 and sample_key(0, 0, samples_per_shard=10000) == "000000000"
    assert oom_sample_per_shard(1000) == 3 and sample_key(3, 7, samples_per_shard=1000) == "00003007"
    assert sample_key(0, 999, samples_per_shard=1000) == "00000999"


def _tar_members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_webdataset_files_are_named_like_img2dataset(samples, tmp_path):
    paths = write_shards(samples, str(tmp_path), samples_per_shard=10)
    assert paths == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"0000{i}{suffix}" for i in range(3) for suffix in (".tar", ".parquet", "_stats.json"))


def test_tar_members_are_contiguous_per_key_in_fixed_order(samples, tmp_path):
    write_shards(samples, str(tmp_path), samples_per_shard=10)
    names = [m.name for m in _tar_members(str(tmp_path / "00001.tar"))]
    keys = [f"0000{10 + i}" for i in range(10)]  # shard 1, 1 digit per in-shard index
    assert names == [f"{k}.{ext}" for k in keys for ext in ("jpg", "json", "txt")]
    assert all(m.mtime == 0 and m.isreg() for m in _tar_members(str(tmp_path / "00001.tar")))


def test_keys_have_img2dataset_width_for_1000_and_10000_per_shard(samples, tmp_path):
    write_shard(samples[:2], str(tmp_path / "a"), shard_id=4, samples_per_shard=1000)
    write_shard(samples[:2], str(tmp_path / "b"), shard_id=0, samples_per_shard=10000)
    assert [m.name for m in _tar_members(str(tmp_path / "a" / "00004.tar"))][::3] == ["00004000.jpg", "00004001.jpg"]
    assert _tar_members(str(tmp_path / "b" / "00000.tar"))[0].name == "000000000.jpg"


def test_tar_readable_json_metadata_and_images_decode(samples, tmp_path):
    write_shard(samples[:10], str(tmp_path), shard_id=0, samples_per_shard=10)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for i, sample in enumerate(samples[:10]):
        key = f"00000{i}"
        jpg, meta = files[f"{key}.jpg"], json.loads(files[f"{key}.json"])
        assert jpg == sample.jpg
        assert files[f"{key}.txt"].decode("utf-8") == sample.caption == meta["caption"]
        assert meta["sha256"] == hashlib.sha256(jpg).hexdigest()
        assert meta["key"] == key and meta["status"] == "success" and meta["error_message"] is None
        assert (meta["width"], meta["height"]) == (meta["original_width"], meta["original_height"]) == (32, 32)
        assert "url" in meta and meta["exif"] is None
        assert meta["label"] == sample.meta["label"] and meta["label_name"] == sample.meta["label_name"]
        image = Image.open(io.BytesIO(jpg))
        image.load()
        assert image.size == (32, 32)


def test_same_samples_give_identical_tar_bytes(samples, tmp_path):
    write_shard(samples, str(tmp_path / "a"), shard_id=0, samples_per_shard=100)
    write_shard(samples, str(tmp_path / "b"), shard_id=0, samples_per_shard=100)
    assert (tmp_path / "a" / "00000.tar").read_bytes() == (tmp_path / "b" / "00000.tar").read_bytes()
    assert not [p for p in os.listdir(tmp_path / "a") if p.endswith(".tmp")]


def test_webdataset_parquet_holds_metadata_without_images(samples, tmp_path):
    write_shard(samples[:5], str(tmp_path), shard_id=0, samples_per_shard=10)
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.num_rows == 5 and "jpg" not in table.column_names
    assert table.column("key").to_pylist() == [f"00000{i}" for i in range(5)]
    assert {"caption", "sha256", "status", "width", "label", "label_name", "caption_mismatched"} <= set(table.column_names)


def test_parquet_format_columns(samples, tmp_path):
    paths = write_shards(samples, str(tmp_path), fmt="parquet", samples_per_shard=20)
    assert paths == [str(tmp_path / "00000.parquet"), str(tmp_path / "00001.parquet")]
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"]
    table = pq.read_table(paths[1])
    assert table.column_names[:3] == ["key", "jpg", "txt"]
    assert {"label", "label_name", "shape", "colour", "sha256", "status"} <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [f"0000{100 + i}" for i in range(5)]  # shard 1, 2-digit index
    assert [r["jpg"] for r in rows] == [s.jpg for s in samples[20:]]
    assert [r["txt"] for r in rows] == [s.caption for s in samples[20:]]
    assert [r["label"] for r in rows] == [s.meta["label"] for s in samples[20:]]


def test_nested_meta_becomes_json_string_in_parquet(tmp_path):
    sample = Sample(key="", jpg=next(generate_samples(1, spec=SyntheticSpec(), seed=0)).jpg,
                    caption="a red circle", meta={"boxes": {"a": [1, 2]}})
    write_shard([sample], str(tmp_path), shard_id=0, fmt="parquet", samples_per_shard=1)
    assert json.loads(pq.read_table(tmp_path / "00000.parquet").column("boxes")[0].as_py()) == {"a": [1, 2]}


def test_stats_files(samples, tmp_path):
    stats = write_shard(samples[:7], str(tmp_path), shard_id=2, samples_per_shard=10)
    on_disk = json.loads((tmp_path / "00002_stats.json").read_text())
    assert on_disk == stats
    assert stats["count"] == stats["successes"] == 7
    assert stats["failed_to_download"] == stats["failed_to_resize"] == 0
    assert stats["status_dict"] == {"success": 7}
    assert stats["end_time"] >= stats["start_time"] and stats["duration"] >= 0


def test_list_shards_dir_glob_and_brace(samples, tmp_path):
    write_shards(samples, str(tmp_path), samples_per_shard=5, start_shard=8)  # shards 8..12
    expected = [str(tmp_path / f"{i:05d}.tar") for i in range(8, 13)]
    assert list_shards(str(tmp_path), "webdataset") == expected
    assert list_shards(str(tmp_path / "*.tar"), "webdataset") == expected
    assert list_shards(str(tmp_path / "{00008..00012}.tar"), "webdataset") == expected
    assert list_shards(str(tmp_path / "{00009..00010}.tar"), "webdataset") == expected[1:3]
    assert list_shards(str(tmp_path / "{00011,00008}.tar"), "webdataset") == [expected[0], expected[3]]
    assert list_shards(str(tmp_path / "{00010..00099}.tar"), "webdataset") == expected[2:]  # gaps allowed
    assert list_shards(str(tmp_path), "parquet") == [p[:-4] + ".parquet" for p in expected]


def test_list_shards_nothing_matches_names_path_and_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"empty.*\.tar"):
        list_shards(str(tmp_path / "empty"), "webdataset")
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"\.parquet"):
        list_shards(str(tmp_path), "parquet")


def test_resolve_shards_auto_prefers_tars_over_their_metadata_parquet(samples, tmp_path):
    write_shards(samples, str(tmp_path / "wds"), samples_per_shard=10)
    write_shards(samples, str(tmp_path / "pq"), fmt="parquet", samples_per_shard=10)
    files, fmt = resolve_shards(str(tmp_path / "wds"))
    assert fmt == "webdataset" and [os.path.basename(f) for f in files] == ["00000.tar", "00001.tar", "00002.tar"]
    files, fmt = resolve_shards(str(tmp_path / "pq"))
    assert fmt == "parquet" and len(files) == 3
    assert resolve_shards(str(tmp_path / "wds"), "parquet")[1] == "parquet"  # explicit format wins
    with pytest.raises(FileNotFoundError, match=r"\(\*\.tar or \*\.parquet\) at .*nowhere"):
        resolve_shards(str(tmp_path / "nowhere"))


def test_brace_expansion():
    assert _expand_braces("d/{00008..00011}.tar") == [f"d/000{i:02d}.tar" for i in range(8, 12)]
    assert _expand_braces("d/{1..3}.tar") == ["d/1.tar", "d/2.tar", "d/3.tar"]
    assert _expand_braces("{a,b}/{0..1}") == ["a/0", "a/1", "b/0", "b/1"]
    assert _expand_braces("plain.tar") == ["plain.tar"]


def test_read_stats_sums_successes(samples, tmp_path):
    paths = write_shards(samples, str(tmp_path), samples_per_shard=10)
    assert read_stats(str(tmp_path)) == 25
    assert read_stats(paths) == 25
    assert read_stats(paths[:2]) == 20
    assert read_stats(str(tmp_path / "{00000..00001}.tar")) == 20
    os.remove(tmp_path / "00002_stats.json")
    assert read_stats(paths) is None  # one shard unsized: the total is unknown
    assert read_stats(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("call", [
    lambda s, d: write_shard(s, d, shard_id=0, fmt="tfrecord", samples_per_shard=10),
    lambda s, d: write_shards(s, d, fmt="tfrecord"),
    lambda s, d: list_shards(d, "tfrecord"),
])
def test_unknown_fmt_raises_naming_fmt(call, samples, tmp_path):
    with pytest.raises(ValueError, match=r"fmt='tfrecord'.*webdataset.*parquet"):
        call(samples, str(tmp_path))


def test_bad_inputs_raise(samples, tmp_path):
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_shard(samples[:11], str(tmp_path), shard_id=0, samples_per_shard=10)
    reserved = Sample(key="", jpg=samples[0].jpg, caption="x", meta={"sha256": "0"})
    with pytest.raises(ValueError, match="sha256"):
        write_shard([reserved], str(tmp_path), shard_id=0, samples_per_shard=10)


def test_fsspec_url_round_trip(samples):
    root = "memory://raylpclip-test/shards"
    try:
        paths = write_shards(samples, root, samples_per_shard=10)
        assert paths == [f"{root}/0000{i}.tar" for i in range(3)]
        assert list_shards(root, "webdataset") == paths
        assert list_shards(f"{root}/{{00000..00001}}.tar", "webdataset") == paths[:2]
        assert read_stats(root) == 25
        with fsspec.open(paths[0], "rb") as f, tarfile.open(fileobj=f) as tar:
            assert tar.getnames()[0] == "000000.jpg"
    finally:
        fsspec.filesystem("memory").rm("/raylpclip-test", recursive=True)
