"""Where a source's shards are read: inside the decode actors when each gets at least two shards."""

from __future__ import annotations

import pytest

from raylpclip.config import DataConfig
from raylpclip.runtime.data.read_plan import ROWS_PER_BLOCK, SEPARATE_READS, read_plan


@pytest.mark.parametrize("image_size, rows", [(64, 1024), (224, 256)])
def test_enough_shards_are_read_by_the_decode_actors_in_decode_calls(image_size, rows):
    cfg = DataConfig(image_size=image_size, decode_concurrency=3, decode_cpus=0.5)
    plan = read_plan(6, cfg)
    assert plan.in_decoders
    # one read task per shard (Ray Data fuses only unsplit reads) reserving what an actor reserves
    assert plan.read_args == {"override_num_blocks": 6, "num_cpus": 0.5}
    assert plan.rows_per_block == rows == cfg.decode_rows()


@pytest.mark.parametrize("shards, cfg", [
    (5, DataConfig(decode_concurrency=3)),  # fewer than 2 shards per actor: some actors would idle
    (100, DataConfig(read_in_decoders=False)),
    (100, None),  # no decode settings given (a plain read)
])
def test_otherwise_separate_read_tasks(shards, cfg):
    plan = read_plan(shards, cfg)
    assert plan == SEPARATE_READS and not plan.in_decoders and plan.read_args == {}
    assert plan.rows_per_block == ROWS_PER_BLOCK


def test_only_a_remote_shard_read_by_an_actor_is_read_ahead():
    inside, remote = read_plan(4, DataConfig()), object()
    assert inside.datasource_args(remote) == {"rows_per_block": 1024, "read_ahead": True}
    assert inside.datasource_args(None)["read_ahead"] is False  # local: the page cache answers at once
    assert SEPARATE_READS.datasource_args(remote)["read_ahead"] is False  # a read task has nothing to overlap
