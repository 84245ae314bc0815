"""The decode actor pool: shard rows -> decoded, augmented, tokenized batches, streamed, never
materialised; and the training sources and the eval set read through it."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import Dataset
from ray.data.extensions import ArrowTensorArray

from raylpclip.config import DataConfig
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.stream_position import RangeSet
from raylpclip.data.tokenization import text_encoder, tokenize_on_one_thread
from raylpclip.runtime.data.read_plan import SEPARATE_READS, ReadPlan
from raylpclip.runtime.data.shard_reader import read_shards


def arrow_block(columns: dict[str, np.ndarray]) -> pa.Table:
    """A decode call's columns as an Arrow block, every column of arrays (images, token ids) Ray's
    fixed-shape tensor type, even with no rows.

    Why not hand Ray Data the dict: it converts a column of arrays to its tensor type only when the
    column has a first row to look at (`convert_to_pyarrow_array` in
    ray/data/_internal/tensor_extensions/arrow.py); a call whose every row was skipped (img2dataset
    writes its failed downloads as rows with a null image, and a block can hold nothing else) returned a
    (0, 3, S, S) array, which Arrow cannot take as a plain array, so Ray fell back to pickled Python
    objects for the column ("Failed to convert column 'image' into pyarrow array ... falling back to
    serialize as pickled python objects") and the blocks after it were pickled alike."""
    arrays = {}
    for name, values in columns.items():
        if values.ndim > 1:
            arrays[name] = ArrowTensorArray.from_numpy(values, column_name=name)
        elif values.dtype == object:  # the sample keys (with_keys): strings, also when there are none
            arrays[name] = pa.array(values.tolist(), pa.string())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


class CountingDecoder(BatchDecoder):
    """BatchDecoder that returns Arrow blocks (`arrow_block`) and reports its skips, with their
    identities, to the run's SkipCounter after each batch that had any."""

    def __init__(self, *, counter=None, nice: int = 0, **kwargs):
        super().__init__(**kwargs)
        tokenize_on_one_thread()  # the actor reserves `data.decode_cpus` CPUs, not the machine
        if nice:
            os.nice(nice)  # this actor's own process (data.decode_nice)
        self.counter = counter
        self.reported: Counter[str] = Counter()

    def __call__(self, batch) -> pa.Table:
        try:
            return arrow_block(super().__call__(batch))
        finally:
            delta = self.skipped - self.reported
            ids = self.take_skipped_ids()
            if delta and self.counter is not None:
                self.counter.add.remote(dict(delta), ids)
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
            fail_after_bad=cfg.fail_after_bad, counter=counter, nice=cfg.decode_nice, jpeg_draft=cfg.jpeg_draft,
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


def eval_dataset(cfg: DataConfig, *, tokenizer, counter=None) -> Dataset:
    """The labelled (or captioned) eval set `data.eval`, its first `data.eval_max_samples` rows, decoded
    without augmentation."""
    files, fmt = resolve_shards(cfg.eval, cfg.format)
    ds, plan = read_shards(files, fmt=fmt, s3=cfg.s3, counter=counter)
    return decoded(ds.limit(cfg.eval_max_samples), cfg=cfg, tokenizer=tokenizer, train=False, counter=counter,
                   plan=plan)


def train_source(files: list[str], *, fmt: str, cfg: DataConfig, tokenizer, counter=None, skip: RangeSet | None = None,
                 shuffle_seed: int | None = None, filesystem: pafs.FileSystem | None = None) -> Dataset | None:
    """One training source, decoded, rows positioned (and `skip` left out; None when nothing is left)."""
    seed = cfg.shuffle_seed if shuffle_seed is None else shuffle_seed
    read = read_shards(files, fmt=fmt, s3=cfg.s3, filesystem=filesystem, shuffle_seed=seed, counter=counter,
                       positions=True, skip=skip, decode=cfg)
    if read is None:
        return None
    ds, plan = read
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=True, counter=counter, plan=plan)
