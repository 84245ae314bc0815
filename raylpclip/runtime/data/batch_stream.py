"""A Train worker's batches, and the run's position in its data stream (what a resume skips).

Each source is read epoch after epoch. Every row arrives with its `position`; the batches handed to
the training loop are recorded per source and epoch (`PositionTracker`), gathered from all workers at
each checkpoint and saved with it (`data_position.json`). A run that restores a checkpoint first
finishes that checkpoint's epoch with a one-off dataset of the rows nobody had consumed (consumed
shards are not opened, consumed rows are dropped as they are read, before decoding), split evenly
over the current workers, then goes on with full epochs.

Guarantee: with one source, no sample is trained on twice in an epoch except those of the steps run
after the restored checkpoint and before the failure (at most `train.checkpoint_every` steps, plus the
step in flight), and none of the epoch is lost except the rows `streaming_split(equal=True)` and
`drop_last` leave over when the remainder does not divide evenly into micro-batches (fewer than
`num_workers * (micro-batch + 1)` rows). It holds whatever the number of workers before and after (an
elastic restart may change it), the parallel read/decode order and the per-epoch shard order, since
skipping goes by sample identity, not by count. With several sources (`data.sources`), each source's
rows that the mixer had pulled but not yet used at a checkpoint count as consumed (at most one
micro-batch per source and worker is skipped unseen).
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import ray.train
import torch
from ray.data.block import BlockAccessor

from raylpclip import batch_schema
from raylpclip.config import DataConfig
from raylpclip.data.mixing import mix_batches
from raylpclip.data.shuffle import shuffled
from raylpclip.data.stream_position import PositionTracker, SourcePosition, files_fingerprint, merge
from raylpclip.distributed import gather_objects
from raylpclip.runtime.data.decode_pool import train_source


def source_names(n: int) -> list[str]:
    """Ray Train dataset names of the training sources (see runtime/train/pretrain_driver.py build_trainer)."""
    return ["train"] if n == 1 else [f"train_{i}" for i in range(n)]


class TrainStreams:
    """The batches of one Train worker and the bookkeeping of what they consumed."""

    def __init__(self, data: DataConfig, *, files: list[list[str]], formats: list[str], tokenizer,
                 restored: list[SourcePosition] | None = None, counter=None, trace=None, filesystems: list | None = None,
                 say: Callable[[str], None] = print):
        ctx = ray.train.get_context()
        self.data, self.files, self.formats, self.tokenizer, self.counter = data, files, formats, tokenizer, counter
        self.filesystems = filesystems or [None] * len(files)  # the driver's (see positioned.read_positioned)
        self.rank, self.world, self.trace, self.say = ctx.get_world_rank(), ctx.get_world_size(), trace, say
        self.names = source_names(len(files))
        self.positions = self._start_positions(restored)
        self.trackers = [PositionTracker(p) for p in self.positions]

    def _start_positions(self, restored: list[SourcePosition] | None) -> list[SourcePosition]:
        prints = [files_fingerprint(f) for f in self.files]
        fresh = [SourcePosition(fingerprint=fp) for fp in prints]
        if restored is None:
            return fresh
        if len(restored) != len(prints) or any(p.fingerprint != fp for p, fp in zip(restored, prints)):
            if self.rank == 0:
                self.say("[raylpclip] warning: the training shards differ from the checkpoint's; the data "
                         "position is not restored (this epoch starts over)")
            return [SourcePosition(epoch=p.epoch, fingerprint=fp) for p, fp in zip(restored, prints)] \
                if len(restored) == len(prints) else fresh
        return restored

    def batches(self, micro_batch: int) -> Iterator[dict]:
        # Every worker builds (and broadcasts) the remainder splits here, before the first step, in
        # source order: they are collectives, and the mixer pulls sources in a per-rank order.
        remainders = [self._remainder(i) for i in range(len(self.files))]
        streams = [self._stream(i, micro_batch, remainders[i]) for i in range(len(self.files))]
        if len(streams) == 1:
            return streams[0]
        weights = [s.weight for s in self.data.train_sources()]
        return mix_batches(streams, weights, batch_size=micro_batch, seed=self.data.shuffle_seed + self.rank)

    def _remainder(self, i: int):
        """This worker's split of the rest of source i's restored epoch, or None when there is none."""
        pos = self.positions[i]
        if not len(pos.consumed):
            return None  # the same on every rank: all restored the same checkpoint
        splits = None
        if self.rank == 0:
            ds = train_source(self.files[i], fmt=self.formats[i], cfg=self.data, tokenizer=self.tokenizer,
                              counter=self.counter, skip=pos.consumed, shuffle_seed=self.data.shuffle_seed + pos.epoch,
                              filesystem=self.filesystems[i])
            splits = None if ds is None else ds.streaming_split(self.world, equal=True)
            self.say(f"[raylpclip] data: epoch {pos.epoch} of {self.names[i]} resumes without the "
                     f"{len(pos.consumed)} samples consumed before the checkpoint")
        splits = gather_objects(splits)[0]
        return None if splits is None else splits[self.rank]

    def _stream(self, i: int, micro_batch: int, remainder) -> Iterator[dict]:
        """Source i's batches: the restored epoch's remainder (if any), then full epochs forever."""
        if remainder is not None:
            yield from self._epoch(i, remainder, micro_batch)
            self.trackers[i].next_epoch()
        while True:
            produced = yield from self._epoch(i, ray.train.get_dataset_shard(self.names[i]), micro_batch)
            if produced == 0:
                raise RuntimeError(
                    f"training data {self.data.train_sources()[i].path!r} gave worker no full batch of "
                    f"{micro_batch} samples in an epoch: too few usable samples for train.batch_size and "
                    "train.num_workers")
            self.trackers[i].next_epoch()

    def _epoch(self, i: int, shard, micro_batch: int) -> Iterator[dict]:
        """One pass over `shard` in fixed-size batches (drop_last: the gathered loss needs equal
        shapes on every worker); returns the number of batches."""
        produced = 0
        for batch in shard_batches(shard, micro_batch=micro_batch, buffer=self.data.shuffle_buffer,
                                   seed=self.data.shuffle_seed + self.trackers[i].epoch):
            positions = batch.pop(batch_schema.POSITION, None)
            if positions is not None:
                # Yielded means consumed: the loop asks for a batch only to train on it right away.
                self.trackers[i].consumed(positions.numpy())
                if self.trace is not None:
                    self.trace.consumed(i, self.trackers[i].epoch, positions)
            produced += 1
            yield batch
        return produced

    def checkpoint_positions(self) -> list[SourcePosition]:
        """Collective (every worker calls it at every checkpoint): the run's position, from every
        worker's batches since the last checkpoint. Meaningful on rank 0."""
        news = gather_objects([t.take_news() for t in self.trackers])
        self.positions = [merge(pos, [worker[i] for worker in news]) for i, pos in enumerate(self.positions)]
        return self.positions


def shard_batches(shard, *, micro_batch: int, buffer: int, seed: int) -> Iterator[dict]:
    """One pass over a Ray Data shard in tensor batches of `micro_batch` rows (drop_last: the gathered
    loss needs equal shapes on every worker), through a `buffer`-row shuffle buffer (0: none).

    Ray hands over its blocks as they are (`batch_size=None`) and the shuffle buffer (data/shuffle.py)
    cuts the batches: with `iter_torch_batches(batch_size=...)` Ray would first concatenate the block
    slices of every batch that spans two blocks or two chunks of one, and the decode actors' blocks
    have two chunks (a full decode call and the rest of the input bundle). That copy held a third of
    a py-spy profile of the Train worker in `bench ingest` at 224 px, for rows the buffer copies anyway."""
    blocks = shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    return shuffled(block_tensors(blocks), batch_size=micro_batch, capacity=buffer, seed=seed)


def block_tensors(tables: Iterable) -> Iterator[dict[str, torch.Tensor]]:
    """Each record batch of each Arrow block as tensors that share its memory (the object store's;
    read-only, which the shuffle buffer never writes to). A record batch has one chunk per column,
    so Ray's conversion to numpy copies nothing."""
    for table in tables:
        for record_batch in table.to_batches():
            if record_batch.num_rows:
                arrays = BlockAccessor.for_block(pa.Table.from_batches([record_batch])).to_numpy()
                yield {name: _shared_tensor(name, array) for name, array in arrays.items()}


def _shared_tensor(name: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype == object:
        raise TypeError(f"training batches need numeric columns; column {name!r} holds Python objects "
                        f"(e.g. {type(array[0]).__name__})")
    with warnings.catch_warnings():
        # torch warns that it cannot mark a read-only array read-only; the buffer only reads it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
