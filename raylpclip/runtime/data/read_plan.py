"""Where a source's shards are read: in Ray Data read tasks of their own, or inside the decode actors."""

from __future__ import annotations

from dataclasses import dataclass, field

from raylpclip.config import DataConfig
from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK

# Shards per decode actor from which a source's shards are read inside the decode actors: each actor
# then reads whole shards, so with fewer, some actors would idle.
FUSED_MIN_SHARDS_PER_ACTOR = 2


@dataclass(frozen=True)
class ReadPlan:
    """Where a source's shards are read: in Ray Data read tasks of their own (Ray Data's default), or
    inside the decode actors, one shard per actor task, each block it yields one decode call.

    Why inside: the separate read tasks cost more than the reading. They run in pool worker processes that
    each import Ray Data at their first task (about a CPU-second each; five started on 2 CPUs), every
    block of raw bytes makes a trip through the object store, and Ray Data cuts each read into small
    blocks for the decode actors to bundle again. Ray Data fuses a read into the actor pool after it when
    there is one read task per file (nothing to cut), the read reserves what the actors reserve, and the
    actors take whole blocks (no `batch_size`): `read_args` and `decoded` arrange that. The reader's
    blocks are then the decode calls, so they are cut to `decode_rows`."""

    rows_per_block: int = ROWS_PER_BLOCK
    read_args: dict = field(default_factory=dict)  # for ray.data.read_datasource

    @property
    def in_decoders(self) -> bool:
        return bool(self.read_args)

    def datasource_args(self, filesystem) -> dict:
        # A remote shard read by a decode actor is read ahead in a thread: the actor decodes meanwhile.
        return dict(rows_per_block=self.rows_per_block, read_ahead=self.in_decoders and filesystem is not None)


SEPARATE_READS = ReadPlan()


def read_plan(n_shards: int, cfg: DataConfig | None) -> ReadPlan:
    if cfg is None or not cfg.read_in_decoders or n_shards < FUSED_MIN_SHARDS_PER_ACTOR * cfg.decode_concurrency:
        return SEPARATE_READS
    return ReadPlan(rows_per_block=cfg.decode_rows(),
                    read_args=dict(override_num_blocks=n_shards, num_cpus=cfg.decode_cpus))
