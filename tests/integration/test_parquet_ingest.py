"""img2dataset's parquet output through the training reader: failed downloads (null images) and
undecodable ones skipped and counted once per sample however many epochs read them, and the decoded
images reaching the trainer as a fixed-shape uint8 tensor column, never as pickled Python objects."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylpclip import batch_schema
from raylpclip.config import DataConfig
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import train_tokenizer
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.data.decode_pool import train_source

pytestmark = pytest.mark.ray
SIZE = 32
ROWS = 12  # per shard

# img2dataset 1.47's parquet columns (output_format=parquet, encode_format=jpg), in its order.
SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("width", pa.int64()),
    ("height", pa.int64()), ("original_width", pa.int64()), ("original_height", pa.int64()),
    ("status", pa.string()), ("error_message", pa.string()), ("exif", pa.string()), ("sha256", pa.string()),
    ("jpg", pa.binary()),
])


def _rows(shard: int, samples, *, failed=(), corrupt=()) -> list[dict]:
    """A shard as img2dataset writes it: every URL of its share is a row; a failed download keeps its key,
    caption and URL, with status and error and null image columns; a corrupt image passed as a success."""
    rows = []
    for i, s in enumerate(samples):
        jpg = s.jpg if i not in corrupt else s.jpg[: len(s.jpg) // 3]
        ok = i not in failed
        side = Image.open(io.BytesIO(s.jpg)).size[0]
        rows.append({
            "key": f"{shard:05d}{i:04d}", "caption": s.caption, "url": f"http://127.0.0.1/{shard}/{i}.jpg",
            "width": side if ok else None, "height": side if ok else None, "original_width": 2 * side if ok else None,
            "original_height": 2 * side if ok else None, "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else "HTTP Error 404: Not Found", "exif": "{}" if ok else None,
            "sha256": f"{i:064x}" if ok else None, "jpg": jpg if ok else None,
        })
    return rows


@pytest.fixture(scope="module")
def img2dataset_parquet(tmp_path_factory) -> Path:
    """4 shards: one whose every download failed (a dead host: a decode call with no usable row), one
    with a failed download, one with a truncated JPEG, one clean."""
    root = tmp_path_factory.mktemp("img2dataset")
    samples = list(generate_samples(4 * ROWS, spec=SyntheticSpec(image_size=48), seed=4))
    bad = {0: {"failed": range(ROWS)}, 1: {"failed": {5}}, 2: {"corrupt": {7}}, 3: {}}
    for shard, damage in bad.items():
        rows = _rows(shard, samples[shard * ROWS:(shard + 1) * ROWS], **damage)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / f"{shard:05d}.parquet")
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    captions = [s.caption for s in generate_samples(200, spec=SyntheticSpec(), seed=1)]
    return train_tokenizer(captions, vocab_size=400, out_dir=str(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def no_pickle_fallback():
    """Ray Data raises where it would fall back to pickled objects (by default it only logs, once)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before, ctx.enable_fallback_to_arrow_object_ext_type = ctx.enable_fallback_to_arrow_object_ext_type, False
    yield
    ctx.enable_fallback_to_arrow_object_ext_type = before


def _settled(counter, sightings: int) -> dict:
    """The counts once `sightings` skips arrived (a decode actor's counter.add is fire-and-forget)."""
    deadline = time.monotonic() + 20
    while sum((report := counters.report(counter))["skipped_sightings"].values()) < sightings:
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    return report


def test_img2dataset_parquet_trains_as_tensors_and_counts_what_failed(ray_session, img2dataset_parquet, tokenizer,
                                                                    no_pickle_fallback):
    files, fmt = resolve_shards(str(img2dataset_parquet))
    counter = counters.new_counter()
    ds = train_source(files, fmt=fmt, cfg=DataConfig(image_size=SIZE), tokenizer=tokenizer, counter=counter)
    rows = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        image = block.schema.field(batch_schema.IMAGE).type
        assert isinstance(image, pa.ExtensionType) and "tensor" in image.extension_name, image
        assert image.shape == (3, SIZE, SIZE) and image.storage_type.value_type == pa.uint8()
        images = block.column(batch_schema.IMAGE).combine_chunks().to_numpy()
        assert images.dtype == np.uint8 and images.shape == (block.num_rows, 3, SIZE, SIZE)
        rows += block.num_rows
    # The decode actors read the shards themselves: shard 0 is one decode call, every row of it skipped.
    assert "ReadReadParquetShards->MapBatches(CountingDecoder)" in ds.stats()
    assert rows == 3 * ROWS - 2
    report = _settled(counter, ROWS + 2)
    assert report == {"skipped": {"bad_image": ROWS + 2}, "skipped_sightings": {"bad_image": ROWS + 2}}


def test_two_bad_rows_read_in_three_epochs_count_two_samples_and_six_sightings(ray_session, img2dataset_parquet,
                                                                               tokenizer, no_pickle_fallback):
    files = resolve_shards(str(img2dataset_parquet))[0][1:]  # the failed download and the truncated JPEG
    counter = counters.new_counter()
    ds = train_source(files, fmt="parquet", cfg=DataConfig(image_size=SIZE), tokenizer=tokenizer, counter=counter)
    per_epoch = [sum(len(b[batch_schema.LABEL]) for b in ds.iter_batches(batch_size=16)) for _epoch in range(3)]
    assert per_epoch == [3 * ROWS - 2] * 3
    assert _settled(counter, 6) == {"skipped": {"bad_image": 2}, "skipped_sightings": {"bad_image": 6}}
