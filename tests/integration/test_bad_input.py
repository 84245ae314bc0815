"""Dirty data: corrupt JPEGs, missing captions, truncated and empty tars, null parquet images, wrong
member names, nothing usable. Bad samples are skipped and counted; hopeless input stops the run fast
with the path and the keys found."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylpclip import batch_schema
from raylpclip.config import DataConfig, PretrainConfig, load_config
from raylpclip.data.decode import DataError
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.shard_writer import sample_key, write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import train_tokenizer
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.data.decode_pool import train_source
from raylpclip.runtime.train.pretrain_driver import run_pretrain

from .conftest import small_run

pytestmark = pytest.mark.ray
PER_SHARD = 100
TRUNCATE_AT = 40  # the truncated shard keeps samples 0..39: it ends inside sample 40's image


def _rewrite_tar(path: Path, edit) -> None:
    """Copy a tar member by member through edit(name, data) -> data | None (None drops the member)."""
    out = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src.getmembers():
            data = edit(info.name, src.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def _member_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset


@pytest.fixture(scope="module")
def dirty_shards(tmp_path_factory) -> Path:
    """4 webdataset shards of 100: one with a corrupt JPEG and an empty caption, one truncated in the
    middle of sample 40's JPEG (an interrupted download), one empty file, one clean."""
    root = tmp_path_factory.mktemp("dirty")
    write_shards(generate_samples(4 * PER_SHARD, spec=SyntheticSpec(), seed=5), str(root), samples_per_shard=PER_SHARD)
    key = lambda shard, i: sample_key(shard, i, samples_per_shard=PER_SHARD)  # noqa: E731
    bad_jpg, empty_txt = f"{key(0, 3)}.jpg", f"{key(0, 7)}.txt"
    _rewrite_tar(root / "00000.tar", lambda name, data: {bad_jpg: b"\xff\xd8garbage", empty_txt: b""}.get(name, data))
    truncated = root / "00001.tar"
    cut = _member_offset(truncated, f"{key(1, TRUNCATE_AT)}.jpg") + 512 + 300  # header, then 300 bytes of data
    truncated.write_bytes(truncated.read_bytes()[:cut])
    (root / "00002.tar").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    captions = [s.caption for s in generate_samples(200, spec=SyntheticSpec(), seed=1)]
    return train_tokenizer(captions, vocab_size=400, out_dir=str(tmp_path_factory.mktemp("tok")))


def _rows_and_skips(path: str, tokenizer, *, read_in_decoders: bool = True, fused: bool | None = None) -> tuple[int, dict]:
    counter = counters.new_counter()
    cfg = DataConfig(image_size=32, read_in_decoders=read_in_decoders)
    files, fmt = resolve_shards(path)
    ds = train_source(files, fmt=fmt, cfg=cfg, tokenizer=tokenizer, counter=counter)
    rows = sum(len(b[batch_schema.LABEL]) for b in ds.iter_batches(batch_size=64))
    if fused is not None:  # the decode actors read the shards themselves: Ray Data fused the two
        assert ("ReadReadWebDataset->MapBatches(CountingDecoder)" in ds.stats()) == fused
    time.sleep(0.5)  # the last counter.add from a decode actor is fire-and-forget
    return rows, counters.totals(counter)


@pytest.mark.parametrize("read_in_decoders", [True, False], ids=["read_by_decode_actors", "separate_read_tasks"])
def test_bad_samples_and_shards_are_skipped_and_counted(ray_session, dirty_shards, tokenizer, read_in_decoders):
    rows, skipped = _rows_and_skips(str(dirty_shards), tokenizer, read_in_decoders=read_in_decoders,
                                    fused=read_in_decoders)  # 4 shards, 2 decode actors
    assert skipped == {"bad_image": 1, "no_caption": 1, "bad_shard": 2}
    # Nothing else is lost: 98 of the first shard, the 40 intact samples before the damage, the clean shard.
    assert rows == (PER_SHARD - 2) + TRUNCATE_AT + PER_SHARD


def test_parquet_null_image_is_skipped_and_counted(ray_session, tmp_path, tokenizer):
    write_shards(generate_samples(50, spec=SyntheticSpec(), seed=2), str(tmp_path), fmt="parquet", samples_per_shard=50)
    table = pq.read_table(tmp_path / "00000.parquet")
    jpgs = table.column("jpg").to_pylist()
    jpgs[10] = jpgs[20] = None
    pq.write_table(table.set_column(table.schema.get_field_index("jpg"), "jpg", pa.array(jpgs, pa.binary())),
                   tmp_path / "00000.parquet")
    rows, skipped = _rows_and_skips(str(tmp_path), tokenizer)
    assert (rows, skipped) == (48, {"bad_image": 2})


def test_training_reports_the_skips(ray_session, dirty_shards, synthetic_shards, tmp_path):
    overrides = small_run(synthetic_shards, tmp_path, name="dirty", steps=12)
    overrides = [o for o in overrides if not o.startswith("data.train=")] + [f"data.train={dirty_shards}"]
    summary = run_pretrain(load_config(PretrainConfig, None, overrides))
    assert summary["step"] == 12
    # 238 usable samples per epoch, 384 trained on: the counts of one or two passes over the dirt
    assert set(summary["skipped"]) == {"bad_image", "no_caption", "bad_shard"}
    assert 1 <= summary["skipped"]["bad_image"] <= 2 and 2 <= summary["skipped"]["bad_shard"] <= 4


def _wrong_names(root: Path) -> Path:
    write_shards(generate_samples(64, spec=SyntheticSpec(), seed=3), str(root), samples_per_shard=64)
    renamed = io.BytesIO()
    with tarfile.open(root / "00000.tar") as src, tarfile.open(fileobj=renamed, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            info.name = info.name.replace(".jpg", ".input.jpg")  # `<key>.input.jpg`: column `input.jpg`
            dst.addfile(info, io.BytesIO(data))
    (root / "00000.tar").write_bytes(renamed.getvalue())
    return root


@pytest.mark.parametrize("case", ["wrong_member_names", "nothing_usable"])
def test_hopeless_input_stops_fast_naming_path_and_keys(ray_session, synthetic_shards, tmp_path, case):
    bad = tmp_path / "bad"
    if case == "wrong_member_names":
        _wrong_names(bad)
        expected = r"bad/00000\.tar have keys \[__key__, __url__, input\.jpg, json, txt\]"
    else:
        write_shards(generate_samples(64, spec=SyntheticSpec(), seed=3), str(bad), samples_per_shard=64)
        _rewrite_tar(bad / "00000.tar", lambda name, data: b"not a jpeg" if name.endswith(".jpg") else data)
        expected = r"no usable sample among the first \d+ read from shards .*bad/00000\.tar: skipped \{'bad_image': \d+\}"
    overrides = small_run(synthetic_shards, tmp_path, name=case, steps=5)
    overrides = [o for o in overrides if not o.startswith("data.train=")] + [f"data.train={bad}", "data.fail_after_bad=50"]
    started = time.monotonic()
    with pytest.raises(DataError, match=expected):
        run_pretrain(load_config(PretrainConfig, None, overrides))
    assert time.monotonic() - started < 120  # seconds of Ray startup, not an epoch of garbage or a hang
