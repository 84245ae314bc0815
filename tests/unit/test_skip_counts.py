"""What the skip counts mean: distinct bad samples (by shard and key) and how often they were read, and
decode calls that hand Ray Data fixed-shape tensor columns whatever rows they skipped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from ray.data.block import BlockAccessor

from raylpclip import batch_schema
from raylpclip.data.decode import BatchDecoder, skip_id
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import train_tokenizer
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.counters import SkipTally
from raylpclip.runtime.data.decode_pool import CountingDecoder
from raylpclip.runtime.data.webdataset_source import WebDatasetShards
from raylpclip.runtime.train.worker_hooks import WorkerHooks

SIZE = 16


@pytest.fixture(scope="module")
def samples():
    return list(generate_samples(6, spec=SyntheticSpec(image_size=24), seed=0))


@pytest.fixture(scope="module")
def tokenizer(samples, tmp_path_factory):
    return train_tokenizer([s.caption for s in samples] * 5, vocab_size=300, out_dir=str(tmp_path_factory.mktemp("tok")))


def _parquet_rows(samples, *, shard: str = "/data/00000.parquet", bad=(), no_caption=()) -> dict:
    """Rows as the parquet reader gives them: img2dataset's `key`/`jpg`/`caption`, null images of failed
    downloads, the shard's `path`."""
    return {
        "key": np.array([f"0000{i:05d}" for i in range(len(samples))], dtype=object),
        "jpg": np.array([None if i in bad else s.jpg for i, s in enumerate(samples)], dtype=object),
        "caption": np.array(["" if i in no_caption else s.caption for i, s in enumerate(samples)], dtype=object),
        "status": np.array(["failed_to_download" if i in bad else "success" for i in range(len(samples))], dtype=object),
        "path": np.array([shard] * len(samples), dtype=object),
    }


class FakeCounter:
    """A SkipCounter handle without Ray: `add.remote` goes straight to a SkipTally."""

    def __init__(self):
        self.tally = SkipTally()
        self.add = self

    def remote(self, counts, ids=None):
        self.tally.add(counts, ids)


def test_two_bad_rows_read_in_three_epochs_are_two_distinct_and_six_sightings(samples, tokenizer):
    counter = FakeCounter()
    decoder = CountingDecoder(tokenizer=tokenizer, image_size=SIZE, context_length=12, train=True, counter=counter)
    for _epoch in range(3):
        decoder(_parquet_rows(samples, bad={1, 3}))
    assert (counter.tally.totals(), counter.tally.sightings()) == ({"bad_image": 2}, {"bad_image": 6})
    counter = FakeCounter()  # the reasons stay apart
    decoder = CountingDecoder(tokenizer=tokenizer, image_size=SIZE, context_length=12, train=True, counter=counter)
    for _epoch in range(3):
        decoder(_parquet_rows(samples, bad={1}, no_caption={4}))
    assert counter.tally.report() == {"skipped": {"bad_image": 1, "no_caption": 1},
                                      "skipped_sightings": {"bad_image": 3, "no_caption": 3}}


def test_the_same_key_in_another_shard_is_another_sample(samples, tokenizer):
    decoder = BatchDecoder(tokenizer=tokenizer, image_size=SIZE, context_length=12, train=False)
    tally = SkipTally()
    for shard in ("/data/00000.parquet", "/data/00001.parquet", "/data/00000.parquet"):
        decoder(_parquet_rows(samples, shard=shard, bad={2}))
        tally.add(dict(decoder.skipped), decoder.take_skipped_ids())
        decoder.skipped.clear()
    assert (tally.totals(), tally.sightings()) == ({"bad_image": 2}, {"bad_image": 3})
    assert decoder.take_skipped_ids() == {}  # taken: nothing piles up in a long-lived actor


def test_rows_without_key_are_named_by_position_or_counted_as_sightings(samples, tokenizer):
    decoder = BatchDecoder(tokenizer=tokenizer, image_size=SIZE, context_length=12, train=False)
    rows = _parquet_rows(samples, bad={0})
    del rows["key"]
    decoder({**rows, batch_schema.POSITION: np.arange(6, dtype=np.int64)})
    assert decoder.take_skipped_ids() == {"bad_image": [skip_id("/data/00000.parquet", "@0")]}
    decoder(rows)  # neither key nor position: no identity, the skip still counts
    assert decoder.take_skipped_ids() == {}
    tally = SkipTally()
    tally.add({"bad_image": 2}, {})
    tally.add({"bad_image": 2}, {})
    assert (tally.totals(), tally.sightings()) == ({"bad_image": 4}, {"bad_image": 4})


def test_plain_counts_keep_their_meaning_and_many_ids_merge(monkeypatch):
    tally = SkipTally()
    tally.add({"storage_retries": 1})
    tally.add({"storage_retries": 1})
    assert tally.totals() == {"storage_retries": 2}  # no identity: each one counts
    monkeypatch.setattr(counters, "PENDING_IDS", 4)  # merged into the sorted array every 4 identities
    for epoch in range(3):
        tally.add({"bad_image": 10}, {"bad_image": list(range(10))})
    assert tally.totals()["bad_image"] == 10 and tally.sightings()["bad_image"] == 30
    assert counters.report(None) == {"skipped": {}, "skipped_sightings": {}} and counters.totals(None) == {}


def test_a_bad_shard_read_again_is_the_same_shard():
    counter = FakeCounter()
    source = WebDatasetShards.__new__(WebDatasetShards)  # only its counter is used
    source._counter = counter
    for path in ("data/00002.tar", "/data/00002.tar", "data/00003.tar"):
        source._count_bad_shard(path)
    assert (counter.tally.totals(), counter.tally.sightings()) == ({"bad_shard": 2}, {"bad_shard": 3})


def test_progress_line_shows_sightings_only_once_a_sample_was_read_again():
    one_pass = {"skipped_bad_image": 2, "skip_sightings_bad_image": 2}
    assert WorkerHooks.tail(one_pass) == " skipped {'bad_image': 2}"
    again = {"epoch": 3.0, "skipped_bad_image": 2, "skip_sightings_bad_image": 6}
    assert WorkerHooks.tail(again) == " epoch 3.00 skipped {'bad_image': 2} sightings {'bad_image': 6}"


def _is_image_tensor(column_type: pa.DataType, rows: int, table: pa.Table) -> bool:
    return (isinstance(column_type, pa.ExtensionType) and "tensor" in column_type.extension_name
            and column_type.shape == (3, SIZE, SIZE) and column_type.storage_type.value_type == pa.uint8()
            and table.num_rows == rows)


@pytest.mark.parametrize("with_keys", [False, True])
def test_a_call_that_skipped_every_row_still_gives_tensor_columns(samples, tokenizer, with_keys):
    """Ray Data makes pickled Python objects of a 0-row (0, 3, S, S) column (the root cause of the
    "falling back to serialize as pickled python objects" warning); the decode actor's block is typed."""
    decoder = CountingDecoder(tokenizer=tokenizer, image_size=SIZE, context_length=12, train=True, with_keys=with_keys)
    failed = _parquet_rows(samples, bad=set(range(6)))
    assert "pickled" in str(BlockAccessor.batch_to_block(BatchDecoder.__call__(decoder, failed)).schema)  # Ray's own
    empty, full = decoder(failed), decoder(_parquet_rows(samples, bad={2}))
    image = empty.schema.field(batch_schema.IMAGE).type
    assert _is_image_tensor(image, 0, empty) and _is_image_tensor(full.schema.field(batch_schema.IMAGE).type, 5, full)
    assert empty.schema.field(batch_schema.INPUT_IDS).type.shape == (12,)
    assert empty.schema.field(batch_schema.LABEL).type == pa.int64()
    if with_keys:
        assert empty.schema.field(batch_schema.KEY).type == full.schema.field(batch_schema.KEY).type == pa.string()
    both = pa.concat_tables([empty, full])  # as Ray's output buffer joins blocks: one schema, no promotion
    assert both.num_rows == 5 and both.schema == full.schema
    images = BlockAccessor.for_block(both).to_numpy(batch_schema.IMAGE)
    assert images.dtype == np.uint8 and images.shape == (5, 3, SIZE, SIZE)


def test_a_cut_parquet_shard_counts_once_and_the_read_goes_on(tmp_path):
    """The Ray Data parquet reader (runtime/data/parquet_source.py) on a shard cut short (its footer, the index
    of every row group, is gone): no row can be read, the shard counts as one bad_shard, and nothing raises
    (before, the read task failed and took the whole Ray Data read with it). The whole file reads all 8 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylpclip.runtime.data.parquet_source import ParquetShards

    whole = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"key": [f"{i:04d}" for i in range(8)], "txt": ["a cat"] * 8, "jpg": [b"\xff" * 500] * 8}),
                   whole, row_group_size=4)
    cut = tmp_path / "00001.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    counter = FakeCounter()
    source = ParquetShards.__new__(ParquetShards)  # the reader's own read, without a Ray Data read around it
    source._init_positions(None, None, counter)
    source._rows_per_block = 4
    rows = {}
    for path in (whole, cut):
        with open(path, "rb") as f:
            rows[path.name] = sum(block.num_rows for block in source._read_stream(f, str(path)))
    assert rows == {"00000.parquet": 8, "00001.parquet": 0} and counter.tally.totals() == {"bad_shard": 1}
