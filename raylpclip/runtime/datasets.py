"""Ray Data pipelines: shards -> decoded, augmented, tokenized batches, streamed, never materialised."""

from __future__ import annotations

import os
from collections import Counter

import ray
from ray.data import Dataset, FileShuffleConfig

from raylpclip.config import DataConfig, S3Config, SourceConfig
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.shards import resolve_shards
from raylpclip.data.storage import arrow_filesystem
from raylpclip.data.tokens import text_encoder, tokenize_on_one_thread
from raylpclip.runtime.webdataset import TolerantWebDatasetDatasource


def read_shards(paths: list[str], *, fmt: str, s3: S3Config | None = None, shuffle_seed: int | None = None,
                counter=None) -> Dataset:
    """Stream img2dataset shards. Shard order is reshuffled every epoch when a seed is given. Rows keep
    the path of their shard (`__url__` / `path`) so that errors can name it."""
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    filesystem = arrow_filesystem(paths, s3 or S3Config())
    if fmt == "webdataset":
        return ray.data.read_datasource(TolerantWebDatasetDatasource(
            paths, counter=counter, filesystem=filesystem, shuffle=shuffle))
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
            counter=None) -> Dataset:
    """Decode/augment/tokenize in a fixed pool of `data.decode_concurrency` CPU actors (one tokenizer each)."""
    return ds.map_batches(
        CountingDecoder,
        fn_constructor_kwargs=dict(
            # Not the HF tokenizer itself: unpickling it imports transformers and torch in every actor
            # at every epoch's start (see data/tokens.py).
            tokenizer=text_encoder(tokenizer), image_size=cfg.image_size, context_length=cfg.context_length,
            train=train, aug_scale_min=cfg.aug_scale_min, seed=cfg.shuffle_seed, with_keys=with_keys,
            fail_after_bad=cfg.fail_after_bad, counter=counter, nice=cfg.decode_nice,
        ),
        batch_size=cfg.decode_rows(),
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
    ds = read_shards(files, fmt=fmt, s3=cfg.s3, shuffle_seed=cfg.shuffle_seed, counter=counter)
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=True, counter=counter)


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
