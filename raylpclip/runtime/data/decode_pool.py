"""Ray Data pipelines: shards -> decoded, augmented, tokenized batches, streamed, never materialised."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import ray
from ray.data import Dataset, FileShuffleConfig

from raylpclip.config import DataConfig, S3Config, SourceConfig
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import arrow_filesystem
from raylpclip.data.tokenization import text_encoder, tokenize_on_one_thread
from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK, TolerantWebDatasetDatasource


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


def read_shards(paths: list[str], *, fmt: str, s3: S3Config | None = None, shuffle_seed: int | None = None,
                counter=None, plan: ReadPlan = SEPARATE_READS) -> Dataset:
    """Stream img2dataset shards. Shard order is reshuffled every epoch when a seed is given. Rows keep
    the path of their shard (`__url__` / `path`) so that errors can name it. `plan`: where webdataset shards
    are read (`read_plan`); parquet goes through Ray's `read_parquet`, in read tasks of its own."""
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    filesystem = arrow_filesystem(paths, s3 or S3Config())
    if fmt == "webdataset":
        return ray.data.read_datasource(TolerantWebDatasetDatasource(
            paths, counter=counter, filesystem=filesystem, shuffle=shuffle, **plan.datasource_args(filesystem)),
            **plan.read_args)
    return ray.data.read_parquet(paths, filesystem=filesystem, shuffle=shuffle, include_paths=True)


class CountingDecoder(BatchDecoder):
    """BatchDecoder that reports its skips to the run's SkipCounter after each batch that had any."""

    def __init__(self, *, counter=None, nice: int = 0, **kwargs):
        super().__init__(**kwargs)
        tokenize_on_one_thread()  # the actor reserves `data.decode_cpus` CPUs, not the machine
        if nice:
            os.nice(nice)  # this actor's own process (data.decode_nice)
        self.counter = counter
        self.reported: Counter[str] = Counter()

    def __call__(self, batch):
        try:
            return super().__call__(batch)
        finally:
            delta = self.skipped - self.reported
            if delta and self.counter is not None:
                self.counter.add.remote(dict(delta))
                self.reported = self.skipped.copy()


DECODE_TASKS_PER_ACTOR = 4  # batches queued on each decode actor (see `decoded`)


def decoded(ds: Dataset, *, cfg: DataConfig, tokenizer, train: bool, with_keys: bool = False,
            counter=None, plan: ReadPlan = SEPARATE_READS) -> Dataset:
    """Decode/augment/tokenize in a fixed pool of `data.decode_concurrency` CPU actors (one tokenizer
    each); `plan`: how `ds` is read (a read inside the actors gives them whole blocks)."""
    return ds.map_batches(
        CountingDecoder,
        fn_constructor_kwargs=dict(
            # Not the HF tokenizer itself: unpickling it imports transformers and torch in every actor
            # at every epoch's start (see data/tokenization.py).
            tokenizer=text_encoder(tokenizer), image_size=cfg.image_size, context_length=cfg.context_length,
            train=train, aug_scale_min=cfg.aug_scale_min, seed=cfg.shuffle_seed, with_keys=with_keys,
            fail_after_bad=cfg.fail_after_bad, counter=counter, nice=cfg.decode_nice,
        ),
        batch_size=None if plan.in_decoders else cfg.decode_rows(),  # a batch_size stops Ray fusing a read in
        num_cpus=cfg.decode_cpus,
        # A fixed pool, whole from the start: training consumes at full speed from its first step, and an
        # actor started later spends its start-up (imports, tokenizer) on the CPUs the running pipeline
        # needs. Ray's autoscaling pool shrinks while training is the bottleneck (the actors idle, waiting
        # for the output budget) and grows again a few seconds later: `bench train` saw decode actors
        # restarting all through the run, each start costing a CPU-second or more.
        # Four batches queued per actor (Ray's default is two): on a small machine the executor shares the
        # CPUs it keeps busy and is late to hand out the next batch; at 2 CPUs, 64 px, 256-row batches, two
        # left the decode actors idle 10% of the time.
        compute=ray.data.ActorPoolStrategy(size=cfg.decode_concurrency, max_tasks_in_flight_per_actor=DECODE_TASKS_PER_ACTOR),
    )


def source_dataset(src: SourceConfig, cfg: DataConfig, *, tokenizer, counter=None) -> Dataset:
    files, fmt = resolve_shards(src.path, src.format)
    plan = read_plan(len(files), cfg) if fmt == "webdataset" else SEPARATE_READS
    ds = read_shards(files, fmt=fmt, s3=cfg.s3, shuffle_seed=cfg.shuffle_seed, counter=counter, plan=plan)
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=True, counter=counter, plan=plan)


def train_datasets(cfg: DataConfig, *, tokenizer, counter=None) -> dict[str, Dataset]:
    """{"train": ds} for one source; {"train_0": ds, "train_1": ...} for a weighted mix (workers draw
    each batch's rows from the sources in proportion to their weights, see runtime/mixing.py)."""
    sources = cfg.train_sources()
    if len(sources) == 1:
        return {"train": source_dataset(sources[0], cfg, tokenizer=tokenizer, counter=counter)}
    return {f"train_{i}": source_dataset(s, cfg, tokenizer=tokenizer, counter=counter) for i, s in enumerate(sources)}


def eval_dataset(cfg: DataConfig, *, tokenizer, counter=None) -> Dataset:
    files, fmt = resolve_shards(cfg.eval, cfg.format)
    ds = read_shards(files, fmt=fmt, s3=cfg.s3, counter=counter).limit(cfg.eval_max_samples)
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=False, counter=counter)
